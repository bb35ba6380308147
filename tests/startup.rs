//! How the real binaries refuse a bad start: one line on stderr naming the
//! variable, a non-zero exit, no panic, no backtrace, no retrying forever.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{binary, free_port};

/// A secret the daemons start with (at least 16 characters, no placeholder).
const OK_SECRET: &str = "startup-test-secret";

/// Runs `name` with exactly `env` and returns its exit code and stderr.
/// A binary still running after 60 s (it should have refused to start) is
/// killed and fails the test.
fn run(name: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let (code, _, stderr) = run_with(name, &[], env);
    (code, stderr)
}

/// [`run`] with command-line arguments; also returns stdout.
fn run_with(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut command = Command::new(binary(name));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
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
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--help` and `--version` answer and exit 0 before anything is read or
/// bound (the gRPC port here is held by the test: a binary that tried to
/// bind it would fail), and an unknown argument is a usage error, 2.
#[test]
fn both_binaries_answer_help_and_version_and_refuse_unknown_arguments() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let env: [(&str, &[(&str, &str)]); 2] = [
        (
            "vps-gateway",
            &[
                ("GATEWAY_API_SECRET", OK_SECRET),
                ("GATEWAY_BIND", "127.0.0.1"),
                ("GATEWAY_GRPC_PORT", &port),
            ],
        ),
        (
            "vps-service",
            &[
                ("VPS_GATEWAY_URL", "http://127.0.0.1:1"),
                ("VPS_GATEWAY_API_SECRET", OK_SECRET),
            ],
        ),
    ];
    for (name, env) in env {
        let (code, stdout, stderr) = run_with(name, &["--help"], env);
        assert_eq!(code, Some(0), "{name} --help: {stderr}");
        assert!(stdout.starts_with("The "), "{name} --help: {stdout}");
        let prefix = if name == "vps-gateway" {
            "GATEWAY_"
        } else {
            "VPS_"
        };
        assert!(
            stdout.contains(prefix),
            "{name} --help names its settings: {stdout}"
        );
        assert!(stdout.contains("--version"), "{stdout}");
        let (code, stdout, _) = run_with(name, &["--version"], env);
        assert_eq!(code, Some(0), "{name} --version");
        assert_eq!(
            stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
        let (code, _, stderr) = run_with(name, &["--bogus"], env);
        assert_eq!(code, Some(2), "{name} --bogus: {stderr}");
        assert!(stderr.contains("--bogus"), "{stderr}");
    }
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
        ("GATEWAY_API_SECRET", OK_SECRET),
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
    // deploy/env/vps-gateway.env.example's value, copied unchanged.
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_API_SECRET", "change-me")]),
        &["GATEWAY_API_SECRET: a placeholder"],
    );
    assert_refused(
        "vps-gateway",
        &with(&[("GATEWAY_API_SECRET", "s3cret")]),
        &["GATEWAY_API_SECRET: too short to be a secret (6 characters, at least 16)"],
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
        ("VPS_GATEWAY_API_SECRET", OK_SECRET),
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
        &with(&[("VPS_GATEWAY_API_SECRET", "change-me")]),
        &["VPS_GATEWAY_API_SECRET: a placeholder"],
    );
    assert_refused(
        "vps-service",
        &with(&[("VPS_GATEWAY_API_SECRET", "s3cret")]),
        &["VPS_GATEWAY_API_SECRET: too short to be a secret (6 characters"],
    );
    assert_refused(
        "vps-service",
        &with(&[("VPS_RECONECT_MAX_MS", "1000")]),
        &["did you mean VPS_RECONNECT_MAX_MS?"],
    );
}

/// `GET /health` on `addr`; `None` when it does not answer in 10 s.
fn health(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (_, body) = raw.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

#[test]
fn the_gateway_raises_its_fd_limit_and_health_says_when_it_runs_short() {
    use std::io::BufRead;
    if !common::e2e::require(&[common::e2e::Need::Prlimit]) {
        return;
    }
    let http_port = free_port();
    let mut child = Command::new("prlimit")
        .arg("--nofile=32:64")
        .arg("--")
        .arg(binary("vps-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("GATEWAY_API_SECRET", OK_SECRET)
        .env("GATEWAY_BIND", "127.0.0.1")
        .env("GATEWAY_GRPC_PORT", free_port().to_string())
        .env("GATEWAY_HTTP_PORT", http_port.to_string())
        .env("GATEWAY_HTTP_TIMEOUT_MS", "600000")
        // The HTTP port's cap (by default an eighth of the limit: 8 here)
        // would keep idle connections from using the descriptors up: lift
        // it, so they can show what /health says when they run short.
        .env("GATEWAY_HTTP_MAX_CONNECTIONS", "1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // Killed however the test ends.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let raised = loop {
        let line = seen
            .recv_timeout(Duration::from_secs(60))
            .expect("the gateway logs its descriptor limit at start");
        if line.contains("file descriptor limit") {
            break line;
        }
    };
    assert!(
        raised.contains("soft=64") && raised.contains("was=32"),
        "{raised}"
    );

    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let started = Instant::now();
    while health(addr).is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "no /health");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Idle connections, one at a time, until /health says why it is
    // degraded; it must say so before the last descriptor is gone.
    let mut held = Vec::new();
    let reason = loop {
        let body = health(addr).expect("/health answers while descriptors remain");
        let reasons = body["reasons"].as_array().unwrap().clone();
        if let Some(r) = reasons
            .iter()
            .filter_map(|r| r.as_str())
            .find(|r| r.contains("file descriptors open"))
        {
            break r.to_string();
        }
        assert!(
            held.len() < 64,
            "64 connections held and /health never said so: {body}"
        );
        held.push(std::net::TcpStream::connect(addr).unwrap());
    };
    assert!(reason.ends_with("of 64 file descriptors open"), "{reason}");
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_fields_are_json_values() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let http = free_port().to_string();
    let base = [
        ("GATEWAY_API_SECRET", OK_SECRET),
        ("GATEWAY_BIND", "127.0.0.1"),
        ("GATEWAY_GRPC_PORT", port.as_str()),
        ("GATEWAY_HTTP_PORT", http.as_str()),
        ("RUST_LOG", "info"),
    ];
    // Text, piped: no colour codes for files and the journal.
    let (code, stderr) = run("vps-gateway", &base);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("file descriptor limit"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "colour codes off a terminal: {stderr:?}"
    );
    // JSON: numbers stay numbers.
    let mut env = base.to_vec();
    env.push(("GATEWAY_LOG_FORMAT", "json"));
    let (code, stderr) = run("vps-gateway", &env);
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("file descriptor limit"))
        .unwrap_or_else(|| panic!("{stderr}"));
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(event["soft"].is_u64() && event["hard"].is_u64(), "{event}");
}
