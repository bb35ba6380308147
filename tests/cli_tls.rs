//! The `gatemesh` CLI against real `vps-gateway` processes serving TLS and
//! mTLS, with certificates made in the test (rcgen) and written to files,
//! as an operator would have them: `--tls-ca`, `--tls-cert`, `--tls-key`,
//! their `GATEMESH_TLS_*` variables, `host:port` addresses, and one-line
//! refusals when the handshake cannot succeed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::{Proc, binary, free_port, gateway_env};
use common::tls::Ca;
use serde_json::Value;

const SECRET: &str = "gatemesh-cli-tls-secret";

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gatemesh-cli-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS (or, with a client CA, mTLS) gateway process, one instance
/// connected to it over TLS, and the files an operator would hold.
struct TlsMesh {
    port: u16,
    ca: PathBuf,
    /// An operator's client certificate and key (signed by the client CA).
    operator: (PathBuf, PathBuf),
    _instance: Proc,
    _gateway: Proc,
    dir: TempDir,
}

impl TlsMesh {
    fn start(mtls: bool) -> Self {
        let dir = TempDir::new();
        let ca = Ca::new("gatemesh cli test CA");
        let ca_path = ca.write(&dir.0, "ca");
        let (cert, key) = ca
            .server(&["127.0.0.1", "localhost"])
            .write(&dir.0, "gateway");
        let port = free_port();
        let mut env = gateway_env(port, SECRET);
        env.push(("GATEWAY_TLS_CERT", cert.display().to_string()));
        env.push(("GATEWAY_TLS_KEY", key.display().to_string()));
        if mtls {
            env.push(("GATEWAY_TLS_CLIENT_CA", ca_path.display().to_string()));
            env.push(("GATEWAY_TLS_SECRET_OPTIONAL", "true".to_string()));
        }
        let gateway = Proc::spawn("vps-gateway", &binary("vps-gateway"), &env);

        let (instance_cert, instance_key) = ca.instance("prod", "prod-1").write(&dir.0, "prod-1");
        let inventory = dir.0.join("inventory.json");
        std::fs::write(
            &inventory,
            r#"{"vps":[{"vps_id":"vps-42","organization_id":"org-7","mac":"52:54:00:12:34:56","ip":"10.0.0.5"}]}"#,
        )
        .unwrap();
        let mut service_env = vec![
            ("VPS_GATEWAY_URL", format!("https://127.0.0.1:{port}")),
            ("VPS_GATEWAY_API_SECRET", SECRET.to_string()),
            ("VPS_INSTANCE_ID", "prod-1".to_string()),
            ("VPS_ENVIRONMENT", "prod".to_string()),
            ("VPS_INVENTORY_FILE", inventory.display().to_string()),
            ("VPS_RECONNECT_BASE_MS", "20".to_string()),
            ("VPS_RECONNECT_MAX_MS", "200".to_string()),
            ("VPS_TLS_CA", ca_path.display().to_string()),
        ];
        if mtls {
            service_env.push(("VPS_TLS_CERT", instance_cert.display().to_string()));
            service_env.push(("VPS_TLS_KEY", instance_key.display().to_string()));
        }
        let instance = Proc::spawn("vps-service", &binary("vps-service"), &service_env);
        // Without a secret (GATEWAY_TLS_SECRET_OPTIONAL), the certificate
        // binds the caller: an operator of every environment.
        let operator = ca
            .with_uri("spiffe://gatemesh/operator/ops", None, None)
            .write(&dir.0, "operator");
        let mesh = Self {
            port,
            ca: ca_path,
            operator,
            _instance: instance,
            _gateway: gateway,
            dir,
        };
        mesh.wait_for_the_instance();
        mesh
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The flags that make a full mTLS client.
    fn client_flags(&self) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            path(&self.ca),
            "--tls-cert".into(),
            path(&self.operator.0),
            "--tls-key".into(),
            path(&self.operator.1),
        ]
    }

    fn wait_for_the_instance(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut args = vec!["--gateway".to_string(), self.https()];
        args.extend(self.client_flags());
        args.extend(["instances".into(), "--json".into()]);
        loop {
            let out = gatemesh(&[("GATEWAY_API_SECRET", SECRET)], &args, None);
            if out.status.success() && stdout_json(&out).as_array().map(Vec::len) == Some(1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the instance never connected over TLS; last attempt: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn gatemesh<S: AsRef<str>>(env: &[(&str, &str)], args: &[S], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gatemesh"));
    command
        .env_clear()
        .envs(env.iter().copied())
        .args(args.iter().map(AsRef::as_ref))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let Some(input) = stdin else {
        return command.stdin(Stdio::null()).output().expect("run gatemesh");
    };
    let mut child = command.stdin(Stdio::piped()).spawn().expect("run gatemesh");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().expect("wait for gatemesh")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "gatemesh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

/// The one-line error of a failed command.
fn error_line(out: Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    lines[0].to_string()
}

fn listed_ids(answer: &Value) -> Vec<String> {
    answer
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_cli_lists_and_calls_through_a_tls_gateway_with_its_ca() {
    let mesh = TlsMesh::start(false);
    let secret = [("GATEWAY_API_SECRET", SECRET)];
    let ca = path(&mesh.ca);

    let listed = ok_json(gatemesh(
        &secret,
        &[
            "--gateway",
            &mesh.https(),
            "--tls-ca",
            &ca,
            "instances",
            "--json",
        ],
        None,
    ));
    assert_eq!(listed_ids(&listed), ["prod-1"]);

    // The CA from the environment, and host:port: https because TLS is set.
    let with_env = [
        ("GATEWAY_API_SECRET", SECRET),
        ("GATEMESH_TLS_CA", ca.as_str()),
    ];
    let address = format!("127.0.0.1:{}", mesh.port);
    let answer = ok_json(gatemesh(
        &with_env,
        &[
            "--gateway",
            &address,
            "call",
            "FindVPSByLease",
            "--json",
            r#"{"mac":"52:54:00:12:34:56"}"#,
        ],
        None,
    ));
    assert_eq!(answer["results"][0]["instance_id"], "prod-1");
    assert_eq!(answer["results"][0]["payload"]["vps_id"], "vps-42");

    // Without --tls-ca, https:// is checked against the system's roots,
    // which do not know the test CA: a certificate error, on one line.
    let line = error_line(gatemesh(
        &secret,
        &["--gateway", &mesh.https(), "instances"],
        None,
    ));
    assert!(
        line.starts_with(&format!(
            "error: cannot connect to the gateway at {}: ",
            mesh.https()
        )),
        "{line}"
    );
    assert!(
        line.to_lowercase().contains("certificate"),
        "says it is the certificate: {line}"
    );
    assert!(!line.contains("without TLS"), "{line}");

    // Cleartext to a TLS port fails on one line too.
    let line = error_line(gatemesh(
        &secret,
        &[
            "--gateway",
            &format!("http://127.0.0.1:{}", mesh.port),
            "instances",
        ],
        None,
    ));
    assert!(line.starts_with("error: "), "{line}");
}

#[test]
fn the_cli_presents_a_client_certificate_to_an_mtls_gateway() {
    let mesh = TlsMesh::start(true);
    let secret = [("GATEWAY_API_SECRET", SECRET)];

    // Flags (the mesh already listed its instance this way).
    let mut args = vec!["--gateway".to_string(), mesh.https()];
    args.extend(mesh.client_flags());
    args.extend(["call", "FindVPSByLease", "--json", "-"].map(String::from));
    let answer = ok_json(gatemesh(&secret, &args, Some(r#"{"ip":"10.0.0.5"}"#)));
    assert_eq!(answer["results"][0]["payload"]["vps_id"], "vps-42");

    // The same from GATEMESH_TLS_* alone, with host:port.
    let (ca, cert, key) = (
        path(&mesh.ca),
        path(&mesh.operator.0),
        path(&mesh.operator.1),
    );
    let env = [
        ("GATEWAY_API_SECRET", SECRET),
        ("GATEMESH_TLS_CA", ca.as_str()),
        ("GATEMESH_TLS_CERT", cert.as_str()),
        ("GATEMESH_TLS_KEY", key.as_str()),
        ("GATEMESH_GATEWAY", &format!("127.0.0.1:{}", mesh.port)),
    ];
    let listed = ok_json(gatemesh(&env, &["instances", "--json"], None));
    assert_eq!(listed_ids(&listed), ["prod-1"]);

    // GATEWAY_TLS_SECRET_OPTIONAL=true: the certificate stands in for the
    // secret; without either, the CLI says what is missing.
    let listed = ok_json(gatemesh(
        &[],
        &{
            let mut args = vec!["--gateway".to_string(), mesh.https()];
            args.extend(mesh.client_flags());
            args.extend(["instances", "--json"].map(String::from));
            args
        },
        None,
    ));
    assert_eq!(listed_ids(&listed), ["prod-1"]);
    let line = error_line(gatemesh(
        &[("GATEMESH_TLS_CA", ca.as_str())],
        &["--gateway", &mesh.https(), "instances"],
        None,
    ));
    assert_eq!(
        line,
        "error: no secret: set GATEWAY_API_SECRET or pass --secret"
    );

    // No client certificate: the gateway ends the handshake.
    let line = error_line(gatemesh(
        &secret,
        &["--gateway", &mesh.https(), "--tls-ca", &ca, "instances"],
        None,
    ));
    assert!(line.starts_with("error: "), "{line}");

    // A client certificate from another CA: refused as well.
    let stranger = Ca::new("not the client CA").client("operator");
    let (other_cert, other_key) = stranger.write(&mesh.dir.0, "stranger");
    let line = error_line(gatemesh(
        &secret,
        &[
            "--gateway",
            &mesh.https(),
            "--tls-ca",
            &ca,
            "--tls-cert",
            &path(&other_cert),
            "--tls-key",
            &path(&other_key),
            "instances",
        ],
        None,
    ));
    assert!(line.starts_with("error: "), "{line}");
}

#[test]
fn half_given_or_unreadable_tls_settings_are_named() {
    // Nothing listens: every error here is found before dialling.
    let dir = TempDir::new();
    let ca = Ca::new("gatemesh cli test CA");
    let ca_path = path(&ca.write(&dir.0, "ca"));
    let (cert, key) = ca.client("operator").write(&dir.0, "operator");
    let (cert, key) = (path(&cert), path(&key));
    let url = format!("https://127.0.0.1:{}", free_port());
    let secret = [("GATEWAY_API_SECRET", SECRET)];
    let run = |args: &[&str]| {
        let mut all = vec!["--gateway", url.as_str()];
        all.extend_from_slice(args);
        all.push("instances");
        error_line(gatemesh(&secret, &all, None))
    };

    assert_eq!(
        run(&["--tls-cert", &cert]),
        "error: --tls-key (GATEMESH_TLS_KEY) is required with --tls-cert"
    );
    assert_eq!(
        run(&["--tls-key", &key]),
        "error: --tls-cert (GATEMESH_TLS_CERT) is required with --tls-key"
    );
    let line = run(&["--tls-ca", "/nonexistent/ca.crt"]);
    assert!(
        line.starts_with("error: --tls-ca: cannot read /nonexistent/ca.crt"),
        "{line}"
    );
    let line = run(&["--tls-ca", &key]);
    assert!(
        line.starts_with("error: --tls-ca: expected a PEM file with one or more certificates"),
        "{line}"
    );
    let line = run(&[
        "--tls-ca",
        &ca_path,
        "--tls-cert",
        &cert,
        "--tls-key",
        &cert,
    ]);
    assert!(
        line.starts_with("error: --tls-key: expected a PEM private key"),
        "{line}"
    );

    // TLS settings with an http:// URL: a contradiction, not a silent downgrade.
    let plain = format!("http://127.0.0.1:{}", free_port());
    let line = error_line(gatemesh(
        &secret,
        &["--gateway", &plain, "--tls-ca", &ca_path, "instances"],
        None,
    ));
    assert_eq!(
        line,
        format!("error: --gateway {plain}: TLS settings are given, so expected an https:// URL")
    );
}
