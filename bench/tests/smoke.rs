//! The bench's smoke runs: tiny durations, a few instances. Check that the
//! harness works end to end, not how fast anything is. The NATS rows need a
//! real `nats-server`: without it that test says so and skips, or fails
//! under `GATEMESH_REQUIRE_E2E=1`.

use std::process::Command;

#[path = "../../tests/common/e2e.rs"]
mod e2e;

/// Runs the bench with `args`; its report, after checking it succeeded.
fn bench(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_gatemesh-bench"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the bench runs");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{log}\n{report}");
    report
}

/// Asserts the report has a row starting with `row` whose errors column is
/// 0: every call answered by its owner.
fn assert_no_errors(report: &str, row: &str) {
    let line = report
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no row {row:?} in\n{report}"));
    let errors = line.split('|').nth(6).map(str::trim);
    assert_eq!(errors, Some("0"), "{line}");
}

#[test]
fn quick_run_reports_every_scenario() {
    let report = bench(&[
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
    ]);
    for row in [
        "| gatemesh reverse call, one instance | 4 |",
        "| gatemesh first_valid, three instances | 4 |",
        "| admin API Call, one instance | 4 |",
        "| admin API Call first_valid, three instances | 4 |",
        "| direct unary gRPC, 1 channel | 4 |",
        "| direct unary gRPC, 4 channels | 4 |",
    ] {
        assert_no_errors(&report, row);
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

#[test]
fn quick_run_measures_nats_request_reply() {
    if !e2e::require(&[e2e::Need::NatsServer]) {
        return;
    }
    let report = bench(&[
        "--quick",
        "--no-scale",
        "--duration",
        "0.2",
        "--warmup",
        "0.05",
        "--concurrency",
        "1",
        "--instances-small",
        "3",
    ]);
    assert!(!report.contains("NATS skipped"), "{report}");
    for row in [
        "| NATS request-reply, one responder | 1 |",
        "| NATS request-reply, 3 responders | 1 |",
    ] {
        assert_no_errors(&report, row);
    }
}
