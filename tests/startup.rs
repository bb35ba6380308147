//! How the real binaries refuse a bad start: one line on stderr naming the
//! variable, a non-zero exit, no panic, no backtrace, no retrying forever.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{binary, free_port};

/// Runs `name` with exactly `env` and returns its exit code and stderr.
/// A binary still running after 60 s (it should have refused to start) is
/// killed and fails the test.
fn run(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(binary(name));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{name} {env:?} still runs instead of refusing to start; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a refusal: exit code 1 and one stderr line holding `needles`.
fn assert_refused(name: &str, env: &[(&str, &str)], needles: &[&str]) {
    let (code, stderr) = run(name, env);
    assert_eq!(code, Some(1), "{name} {env:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{name} {env:?}: one line, got:\n{stderr}"
    );
    assert!(stderr.starts_with(&format!("{name}: ")), "{stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{name} {env:?}: {needle:?} not in {stderr}"
        );
    }
}

#[test]
fn the_gateway_refuses_bad_settings_in_one_line() {
    let port = free_port().to_string();
    let http = free_port().to_string();
    let base = [
        ("GATEWAY_API_SECRET", "s"),
        ("GATEWAY_BIND", "127.0.0.1"),
        ("GATEWAY_GRPC_PORT", port.as_str()),
        ("GATEWAY_HTTP_PORT", http.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        env
    };
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_GRPC_PROT", "44031")]),
        &["GATEWAY_GRPC_PROT", "did you mean GATEWAY_GRPC_PORT?"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_MAX_CONCURRENCY", "18446744073709551615")]),
        &["GATEWAY_MAX_CONCURRENCY=18446744073709551615: expected 1 to 1000000"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_QUEUE_CAPACITY", "18446744073709551615")]),
        &["GATEWAY_QUEUE_CAPACITY"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_STUCK_TIMEOUT_MS", "0")]),
        &["GATEWAY_STUCK_TIMEOUT_MS=0: expected"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_API_SECRET", "two\nlines")]),
        &["GATEWAY_API_SECRET: expected printable ASCII"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("RUST_LOG", "info,gatemesh=loud")]),
        &["RUST_LOG=info,gatemesh=loud"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_BIND", "no-such-host.invalid")]),
        &["GATEWAY_BIND=no-such-host.invalid"],
    );
    // A port already taken: the address and the variables, once. (Logging
    // runs by then; at `warn` the start-up info lines stay out.)
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let mut env = base.to_vec();
    env[2] = ("GATEWAY_GRPC_PORT", taken_port.as_str());
    env.push(("RUST_LOG", "warn"));
    assert_refused(
        "vps-gateway",
        &env,
        &[
            "cannot listen on 127.0.0.1:",
            "(GATEWAY_BIND, GATEWAY_GRPC_PORT)",
        ],
    );
}

#[test]
fn the_instance_checks_its_id_environment_and_secret_before_dialling() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let base = [
        ("VPS_GATEWAY_URL", url.as_str()),
        ("VPS_GATEWAY_API_SECRET", "s"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = base.to_vec();
        env.extend_from_slice(extra);
        env
    };
    assert_refused(
        "vps-service",
        &with(&[("VPS_INSTANCE_ID", "inst 1")]),
        &["VPS_INSTANCE_ID: expected 1 to 128 bytes"],
    );
    assert_refused(
        "vps-service",
        &with(&[("VPS_ENVIRONMENT", "prod beta")]),
        &["VPS_ENVIRONMENT: expected 1 to 64 bytes"],
    );
    assert_refused(
        "vps-service",
        &with(&[("VPS_GATEWAY_API_SECRET", "s\n")]),
        &["VPS_GATEWAY_API_SECRET: expected printable ASCII"],
    );
    assert_refused(
        "vps-service",
        &with(&[("VPS_RECONECT_MAX_MS", "1000")]),
        &["did you mean VPS_RECONNECT_MAX_MS?"],
    );
}
