//! The bench's smoke run: every scenario but NATS, tiny durations, a few
//! instances. Checks that the harness works end to end, not how fast
//! anything is.

use std::process::Command;

#[test]
fn quick_run_reports_every_scenario() {
    let output = Command::new(env!("CARGO_BIN_EXE_gatemesh-bench"))
        .args([
            "--quick",
            "--no-nats",
            "--duration",
            "0.2",
            "--warmup",
            "0.05",
            "--concurrency",
            "1,4",
            "--instances-small",
            "3",
            "--instances",
            "10",
            "--reconnect-spread-ms",
            "100",
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the bench runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{log}\n{report}");
    for row in [
        "| gatemesh reverse call, one instance | 4 |",
        "| gatemesh first_valid, three instances | 4 |",
        "| admin API Call, one instance | 4 |",
        "| admin API Call first_valid, three instances | 4 |",
        "| direct unary gRPC, 1 channel | 4 |",
        "| direct unary gRPC, 4 channels | 4 |",
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row:?} in\n{report}"));
        // The errors column: every call answered with the owner's VPS.
        let errors = line.split('|').nth(6).map(str::trim);
        assert_eq!(errors, Some("0"), "{line}");
    }
    assert!(report.contains("NATS skipped"), "{report}");
    assert!(
        report.contains("`all` answered by 10 of 10 instances"),
        "{report}"
    );
    assert_eq!(
        report.matches("10 of 10 instances back").count(),
        2,
        "both restarts bring every instance back:\n{report}"
    );
}
