//! README "Calling from any language", run as written: a grpcio client
//! with stubs generated from `methods.proto` calls `FindVPSByLease` on the
//! gateway's port with a Bearer secret, routed by `gatemesh-environment`,
//! and sees `NOT_FOUND` and `UNAUTHENTICATED` as status codes; grpcurl,
//! with no proto file at hand, lists and calls it through reflection.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::e2e::{self, Need};
use common::{SECRET, TestGateway, knows, start_instance};

const README: &str = include_str!("../README.md");
const SCRIPT: &str = include_str!("../examples/python/find_vps.py");
const MAC: &str = "52:54:00:12:34:56";
/// The README's grpcurl lines, with `$GATEWAY_API_SECRET` and the address
/// the test's gateway has.
const GRPCURL_LIST: &str =
    r#"grpcurl -plaintext -H "authorization: Bearer $GATEWAY_API_SECRET" 127.0.0.1:1537 list"#;
const GRPCURL_CALL: &str = r#"grpcurl -plaintext -H "authorization: Bearer $GATEWAY_API_SECRET" -H "gatemesh-environment: prod" -d '{"mac":"52:54:00:12:34:56"}' 127.0.0.1:1537 gatemesh.v1.InstanceMethods/FindVPSByLease"#;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .unwrap()
}

/// Runs one of the README's shell lines with `sh`, the gateway's address
/// in place of the default one.
async fn shell(line: &str, address: &str) -> Output {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(line.replace("127.0.0.1:1537", address))
        .env("GATEWAY_API_SECRET", SECRET);
    run(command).await
}

#[tokio::test]
async fn the_readmes_python_client_calls_find_vps_by_lease_as_plain_grpc() {
    if !e2e::require(&[Need::PythonGrpc]) {
        return;
    }
    assert!(
        README.contains(SCRIPT.trim()),
        "README shows examples/python/find_vps.py as it is"
    );
    let gw = TestGateway::start().await;
    let _prod = start_instance(&gw, "prod-1", "prod", knows(MAC, "vps-42"));
    let _beta = start_instance(&gw, "beta-1", "beta", knows("none", "x"));
    gw.wait_instances(2).await;
    // The README's protoc line, into a directory of the test's own.
    let work: PathBuf =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("py-{}", std::process::id()));
    std::fs::create_dir_all(work.join("gen")).unwrap();
    let mut protoc = Command::new("python3");
    protoc
        .current_dir(&work)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root().join("proto/proto"))
        .args([
            "--python_out=gen",
            "--grpc_python_out=gen",
            "gatemesh/v1/methods.proto",
            "gatemesh/v1/options.proto",
        ]);
    let out = run(protoc).await;
    assert!(
        out.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = |secret: &str, environment: &str| {
        let mut command = Command::new("python3");
        command
            .current_dir(&work)
            .arg(root().join("examples/python/find_vps.py"))
            .args([&gw.addr.to_string(), secret, environment, MAC]);
        run(command)
    };
    let out = client(SECRET, "prod").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "vps-42 (answered by prod-1)");
    // Only beta is asked, and beta does not hold it.
    let out = client(SECRET, "beta").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("NOT_FOUND: not found: 1 instance(s) answered"),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(64 + 5));
    let out = client("wrong", "prod").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "UNAUTHENTICATED: wrong secret");
    assert_eq!(out.status.code(), Some(64 + 16));
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn the_readmes_grpcurl_lines_list_and_call_through_reflection() {
    if !e2e::require(&[Need::Grpcurl]) {
        return;
    }
    assert!(README.contains(GRPCURL_LIST), "README has: {GRPCURL_LIST}");
    let call_line = GRPCURL_CALL
        .replace(
            " -H \"gatemesh-environment",
            " \\\n  -H \"gatemesh-environment",
        )
        .replace(" -d '", " \\\n  -d '");
    assert!(README.contains(&call_line), "README has:\n{call_line}");
    let gw = TestGateway::start().await;
    let _prod = start_instance(&gw, "prod-1", "prod", knows(MAC, "vps-42"));
    gw.wait_instances(1).await;
    let address = gw.addr.to_string();
    let out = shell(GRPCURL_LIST, &address).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: Vec<&str> = stdout.lines().collect();
    for service in ["gatemesh.v1.InstanceMethods", "gatemesh.v1.GatewayMethods"] {
        assert!(services.contains(&service), "{service} listed: {stdout}");
    }
    let out = shell(GRPCURL_CALL, &address).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(answer["vpsId"], "vps-42", "{stdout}");
    // A status is grpcurl's exit status too: 64 + the code.
    let out = shell(&GRPCURL_CALL.replace("prod", "beta"), &address).await;
    assert_eq!(
        out.status.code(),
        Some(64 + 14),
        "no beta instance: UNAVAILABLE; {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
