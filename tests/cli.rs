//! The `gatemesh` CLI run as a process against a real `vps-gateway` and
//! real `vps-service` processes, each instance with its own inventory.
//!
//! `vps-gateway` and `vps-service` belong to other packages, so cargo does
//! not pass their paths to this package's tests: the shared harness builds
//! them first (`cargo build`, a no-op when they are fresh).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const SECRET: &str = "gatemesh-cli-test-secret";
const PROD_MAC: &str = "52:54:00:12:34:56";

/// A child process, killed when dropped.
struct Proc(Child);

impl Proc {
    fn spawn(program: &Path, env: &[(&str, String)]) -> Self {
        let child = Command::new(program)
            .env_clear()
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gatemesh-cli-test-{}-{}",
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

/// One instance to start: id, environment, and the one VPS it knows.
struct Spec {
    id: &'static str,
    env: &'static str,
    vps: (&'static str, &'static str, &'static str, &'static str),
}

const INSTANCES: [Spec; 3] = [
    Spec {
        id: "beta-1",
        env: "beta",
        vps: ("vps-beta-7", "org-b", "52:54:00:00:00:0b", "10.0.0.11"),
    },
    Spec {
        id: "dev-1",
        env: "dev",
        vps: ("vps-dev-1", "org-d", "52:54:00:00:00:0d", "10.0.0.13"),
    },
    Spec {
        id: "prod-1",
        env: "prod",
        vps: ("vps-prod-42", "org-p", PROD_MAC, "10.0.0.5"),
    },
];

/// A `vps-gateway` process and `vps-service` processes dialing it.
struct Mesh {
    url: String,
    // Dropped in order: instances, then the gateway, then their files.
    _services: Vec<Proc>,
    _gateway: Proc,
    _dir: TempDir,
}

impl Mesh {
    fn start() -> Self {
        let dir = TempDir::new();
        let port = free_port();
        let gateway = Proc::spawn(
            &common::process::binary("vps-gateway"),
            &[
                ("GATEWAY_API_SECRET", SECRET.into()),
                ("GATEWAY_BIND", "127.0.0.1".into()),
                ("GATEWAY_GRPC_PORT", port.to_string()),
                ("GATEWAY_HTTP_PORT", free_port().to_string()),
                ("GATEWAY_ID", "gw-cli".into()),
            ],
        );
        let url = format!("http://127.0.0.1:{port}");
        let service = common::process::binary("vps-service");
        let services = INSTANCES
            .iter()
            .map(|spec| {
                let (vps_id, org, mac, ip) = spec.vps;
                let inventory = dir.0.join(format!("{}.json", spec.id));
                let json = serde_json::json!({"vps": [
                    {"vps_id": vps_id, "organization_id": org, "mac": mac, "ip": ip}
                ]});
                std::fs::write(&inventory, json.to_string()).unwrap();
                Proc::spawn(
                    &service,
                    &[
                        ("VPS_GATEWAY_URL", url.clone()),
                        ("VPS_GATEWAY_API_SECRET", SECRET.into()),
                        ("VPS_INSTANCE_ID", spec.id.into()),
                        ("VPS_ENVIRONMENT", spec.env.into()),
                        ("VPS_INVENTORY_FILE", inventory.display().to_string()),
                        ("VPS_RECONNECT_BASE_MS", "20".into()),
                        ("VPS_RECONNECT_MAX_MS", "200".into()),
                    ],
                )
            })
            .collect();
        let mesh = Self {
            url,
            _services: services,
            _gateway: gateway,
            _dir: dir,
        };
        mesh.wait_instances(INSTANCES.len());
        mesh
    }

    /// Polls `gatemesh instances --json` until `n` instances are listed.
    fn wait_instances(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(&["instances", "--json"]);
            if out.status.success() && stdout_json(&out).as_array().map(Vec::len) == Some(n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} instances never connected; last attempt: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `gatemesh --gateway URL ARGS` with the secret in the environment.
    fn cli(&self, args: &[&str]) -> Output {
        gatemesh(
            &[("GATEWAY_API_SECRET", SECRET)],
            &with_gateway(&self.url, args),
        )
    }
}

fn with_gateway<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--gateway", url];
    all.extend_from_slice(args);
    all
}

fn gatemesh(env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatemesh"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run gatemesh")
}

/// `gatemesh` with `input` on its standard input.
fn gatemesh_with_stdin(env: &[(&str, &str)], args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatemesh"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gatemesh");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().expect("wait for gatemesh")
}

/// The field names of `message NAME { ... }` in the admin API's proto, so
/// the CLI's JSON is checked against the contract rather than a copy of it.
fn proto_fields(message: &str) -> Vec<String> {
    let proto = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/proto/gatemesh/v1/mesh.proto"),
    )
    .unwrap();
    let start = proto
        .find(&format!("message {message} {{"))
        .unwrap_or_else(|| panic!("message {message} not in mesh.proto"));
    let body = &proto[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find("\n}").unwrap()];
    body.lines()
        .map(|l| l.split("//").next().unwrap().trim())
        .filter(|l| l.ends_with(';') && l.contains('='))
        .filter(|l| !l.starts_with("oneof"))
        .map(|l| {
            let before_eq = l.split('=').next().unwrap();
            before_eq.split_whitespace().last().unwrap().to_string()
        })
        .collect()
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The answer of a successful call, as JSON.
fn ok_json(out: Output) -> Value {
    assert!(
        out.status.success(),
        "gatemesh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no chatter when stderr is not a terminal"
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

/// `(instance, environment, vps_id)` of each result.
fn results(answer: &Value) -> Vec<(String, String, String)> {
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            assert!(r["latency_us"].is_u64(), "{r}");
            (
                r["instance_id"].as_str().unwrap().to_string(),
                r["environment"].as_str().unwrap().to_string(),
                r["payload"]["vps_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn triple(a: &str, b: &str, c: &str) -> (String, String, String) {
    (a.into(), b.into(), c.into())
}

#[test]
fn instances_lists_every_connected_instance_as_a_table_and_as_json() {
    let mesh = Mesh::start();
    let listed = ok_json(mesh.cli(&["instances", "--json"]));
    let listed = listed.as_array().unwrap();
    let ids: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| {
            (
                i["instance_id"].as_str().unwrap(),
                i["environment"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [("beta-1", "beta"), ("dev-1", "dev"), ("prod-1", "prod")]
    );
    for info in listed {
        assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            info["methods"],
            serde_json::json!(["FindVPSByLease", "Ping"])
        );
        assert!(
            info["remote_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        assert!(info["connected_since_ms"].as_u64().unwrap() > 0);
        for counter in ["in_flight", "calls_served", "errors"] {
            assert!(info[counter].is_u64(), "{counter} in {info}");
        }
    }

    let out = mesh.cli(&["instances"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and one row per instance:\n{table}"
    );
    let header: Vec<&str> = lines[0].split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        header.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        [
            "ID",
            "ENV",
            "VERSION",
            "METHODS",
            "REMOTE",
            "CONNECTED",
            "LAST SEEN",
            "IN FLIGHT",
            "SERVED",
            "ERRORS"
        ]
    );
    for (line, spec) in lines[1..].iter().zip(&INSTANCES) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &cells[..4],
            [
                spec.id,
                spec.env,
                env!("CARGO_PKG_VERSION"),
                "FindVPSByLease,Ping"
            ]
        );
        assert!(line.contains(" ago"), "{line}");
    }
}

#[test]
fn call_routes_by_every_strategy_and_filter() {
    let mesh = Mesh::start();
    let request = format!(r#"{{"ip":"10.0.0.5","mac":"{PROD_MAC}"}}"#);
    let call = |extra: &[&str]| {
        let mut args = vec!["call", "FindVPSByLease", "--json", request.as_str()];
        args.extend_from_slice(extra);
        mesh.cli(&args)
    };

    // first_valid is the default (first-valid is accepted as well); the
    // answer shows every field.
    for extra in [
        &[][..],
        &["--strategy", "first-valid", "--timeout", "2s"],
        &["--strategy", "first_valid"],
    ] {
        let answer = ok_json(call(extra));
        assert_eq!(answer["method"], "FindVPSByLease");
        assert_eq!(answer["strategy"], "first_valid");
        assert_eq!(results(&answer), [triple("prod-1", "prod", "vps-prod-42")]);
        assert_eq!(answer["results"][0]["payload"]["organization_id"], "org-p");
    }

    let answer = ok_json(call(&["--strategy", "all"]));
    assert_eq!(
        results(&answer),
        [
            triple("beta-1", "beta", ""),
            triple("dev-1", "dev", ""),
            triple("prod-1", "prod", "vps-prod-42"),
        ],
        "one result per instance, \"not mine\" included"
    );

    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let answer = ok_json(call(&["--strategy", "one"]));
        let results = results(&answer);
        assert_eq!(results.len(), 1);
        served_by.insert(results[0].0.clone());
    }
    assert_eq!(served_by.len(), 3, "one spreads calls: {served_by:?}");

    let answer = ok_json(call(&["--strategy", "all", "--instance", "dev-1"]));
    assert_eq!(results(&answer), [triple("dev-1", "dev", "")]);
    let answer = ok_json(call(&["--strategy", "all", "--env", "beta"]));
    assert_eq!(results(&answer), [triple("beta-1", "beta", "")]);

    // Errors from the gateway: one line, its code and its words.
    assert_eq!(
        error_line(call(&["--env", "beta"])),
        "error: NOT_FOUND: not found: 1 instance(s) answered, none with a valid answer"
    );
    let nobody = mesh.cli(&[
        "call",
        "FindVPSByLease",
        "--json",
        r#"{"mac":"00:00:00:00:00:00"}"#,
    ]);
    assert_eq!(nobody.status.code(), Some(64 + 5), "64 + NOT_FOUND");
    assert_eq!(
        error_line(nobody),
        "error: NOT_FOUND: not found: 3 instance(s) answered, none with a valid answer"
    );
    let staging = call(&["--env", "staging"]);
    assert_eq!(staging.status.code(), Some(64 + 14), "64 + UNAVAILABLE");
    assert_eq!(
        error_line(staging),
        "error: UNAVAILABLE: no instance in environment \"staging\" serves FindVPSByLease"
    );
    assert_eq!(
        error_line(call(&["--instance", "gone-1"])),
        "error: UNAVAILABLE: instance gone-1 is not connected"
    );
    let wrong_secret = gatemesh(
        &[],
        &with_gateway(&mesh.url, &["--secret", "nope", "instances"]),
    );
    assert_eq!(
        wrong_secret.status.code(),
        Some(64 + 16),
        "64 + UNAUTHENTICATED"
    );
    assert_eq!(
        error_line(wrong_secret),
        "error: UNAUTHENTICATED: wrong secret"
    );
}

#[test]
fn call_errors_are_one_clear_line_and_a_failing_exit_code() {
    // Closed port: nothing listens there.
    let url = format!("http://127.0.0.1:{}", free_port());
    let run =
        |args: &[&str]| gatemesh(&[("GATEWAY_API_SECRET", SECRET)], &with_gateway(&url, args));

    let line = error_line(run(&["call", "FindVpsByLeas", "--json", "{}"]));
    assert!(
        line.starts_with("error: unknown method \"FindVpsByLeas\"; known methods: ")
            && line.contains(" FindVPSByLease, "),
        "{line}"
    );
    let line = error_line(run(&["call", "findvpsbylease"]));
    assert!(line.contains("did you mean \"FindVPSByLease\"?"), "{line}");

    let line = error_line(run(&[
        "call",
        "FindVPSByLease",
        "--json",
        r#"{"ip": "10.0.0.5""#,
    ]));
    assert!(
        line.starts_with("error: invalid JSON for gatemesh.v1.FindVPSByLeaseRequest (the request of FindVPSByLease): "),
        "{line}"
    );
    assert!(line.contains("EOF"), "names the problem: {line}");
    let line = error_line(run(&[
        "call",
        "FindVPSByLease",
        "--json",
        r#"{"ipaddr":"10.0.0.5"}"#,
    ]));
    assert!(line.contains("unrecognized field name 'ipaddr'"), "{line}");
    assert!(line.ends_with("its fields are: ip, mac"), "{line}");

    let line = error_line(gatemesh(&[], &with_gateway(&url, &["instances"])));
    assert_eq!(
        line,
        "error: no secret: set GATEWAY_API_SECRET or pass --secret"
    );

    let refused = run(&["instances"]);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a local error, not a status"
    );
    let line = error_line(refused);
    assert!(
        line.starts_with(&format!("error: cannot connect to the gateway at {url}: ")),
        "{line}"
    );

    let bad_timeout = run(&["call", "FindVPSByLease", "--timeout", "soon"]);
    assert_eq!(bad_timeout.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&bad_timeout.stderr).contains("--timeout"));
}

#[test]
fn json_output_uses_the_admin_api_field_names() {
    let mesh = Mesh::start();
    let instance_fields = proto_fields("InstanceInfo");
    assert!(instance_fields.contains(&"last_seen_ms".to_string()));
    let listed = ok_json(mesh.cli(&["instances", "--json"]));
    for info in listed.as_array().unwrap() {
        let keys: Vec<&String> = info.as_object().unwrap().keys().collect();
        let mut expected: Vec<&String> = instance_fields.iter().collect();
        expected.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, expected, "InstanceInfo's names exactly: {info}");
    }

    let result_fields = proto_fields("InstanceResult");
    let answer = ok_json(mesh.cli(&[
        "call",
        "FindVPSByLease",
        "--json",
        r#"{"mac":"52:54:00:00:00:0d"}"#,
        "--strategy",
        "all",
        "--timeout",
        "5s",
    ]));
    for result in answer["results"].as_array().unwrap() {
        for key in result.as_object().unwrap().keys() {
            assert!(
                result_fields.contains(key),
                "{key} is not an InstanceResult field ({result_fields:?}): {result}"
            );
        }
    }
}

#[test]
fn call_reads_the_request_from_stdin_or_a_file_and_takes_host_port() {
    let mesh = Mesh::start();
    let address = mesh.url.trim_start_matches("http://").to_string();
    let secret = [("GATEWAY_API_SECRET", SECRET)];
    let request = format!(r#"{{"mac":"{PROD_MAC}"}}"#);

    // host:port, no scheme: http://.
    let from_stdin = gatemesh_with_stdin(
        &secret,
        &[
            "--gateway",
            &address,
            "call",
            "FindVPSByLease",
            "--json",
            "-",
        ],
        &format!("{request}\n"),
    );
    assert_eq!(
        results(&ok_json(from_stdin)),
        [triple("prod-1", "prod", "vps-prod-42")]
    );

    let dir = TempDir::new();
    let file = dir.0.join("request.json");
    std::fs::write(&file, &request).unwrap();
    let at_file = format!("@{}", file.display());
    let answer = ok_json(mesh.cli(&["call", "FindVPSByLease", "--json", &at_file]));
    assert_eq!(results(&answer), [triple("prod-1", "prod", "vps-prod-42")]);

    // A file that is not there, and bad JSON on stdin: named, one line.
    let missing = dir.0.join("missing.json");
    let line = error_line(mesh.cli(&[
        "call",
        "FindVPSByLease",
        "--json",
        &format!("@{}", missing.display()),
    ]));
    assert!(
        line.starts_with(&format!(
            "error: --json @{0}: cannot read {0}: ",
            missing.display()
        )),
        "{line}"
    );
    let line = error_line(gatemesh_with_stdin(
        &secret,
        &with_gateway(&mesh.url, &["call", "FindVPSByLease", "--json", "-"]),
        "{\"ip\":",
    ));
    assert!(
        line.starts_with("error: invalid JSON for gatemesh.v1.FindVPSByLeaseRequest"),
        "{line}"
    );
}

#[test]
fn connection_errors_name_each_cause_once() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let line = error_line(gatemesh(
        &[("GATEWAY_API_SECRET", SECRET)],
        &with_gateway(&url, &["instances"]),
    ));
    let causes: Vec<&str> = line.split(": ").collect();
    for pair in causes.windows(2) {
        assert_ne!(pair[0], pair[1], "a cause repeated: {line}");
    }
    let mut seen = std::collections::HashSet::new();
    for cause in &causes {
        assert!(seen.insert(cause), "{cause:?} twice in: {line}");
    }

    // host:port with no gateway there names the URL it made of it.
    let address = url.trim_start_matches("http://");
    let line = error_line(gatemesh(
        &[("GATEWAY_API_SECRET", SECRET)],
        &["--gateway", address, "instances"],
    ));
    assert!(
        line.starts_with(&format!("error: cannot connect to the gateway at {url}: ")),
        "{line}"
    );
    let line = error_line(gatemesh(
        &[("GATEWAY_API_SECRET", SECRET)],
        &["--gateway", "ftp://gw:1", "instances"],
    ));
    assert!(
        line.starts_with("error: --gateway ftp://gw:1: expected http://, https:// or host:port"),
        "{line}"
    );
}

#[test]
fn bash_completion_completes_commands_and_flags() {
    let out = gatemesh(&[], &["completions", "bash"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = TempDir::new();
    let script = dir.0.join("gatemesh.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // Ask bash itself, as a shell would on <TAB>.
    let complete = |words: &[&str]| -> Vec<String> {
        let line = words.join(" ");
        let program = format!(
            r#"source {script}
COMP_WORDS=({line})
COMP_CWORD={cword}
COMP_LINE="{line}"
COMP_POINT=${{#COMP_LINE}}
_gatemesh gatemesh "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            script = script.display(),
            cword = words.len() - 1,
        );
        let out = Command::new("bash")
            .args(["--norc", "--noprofile", "-c", &program])
            .env_clear()
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let commands = complete(&["gatemesh", "''"]);
    for command in ["instances", "call", "methods", "completions"] {
        assert!(
            commands.iter().any(|c| c == command),
            "{command} in {commands:?}"
        );
    }
    let flags = complete(&["gatemesh", "--tls"]);
    for flag in ["--tls-ca", "--tls-cert", "--tls-key"] {
        assert!(flags.iter().any(|c| c == flag), "{flag} in {flags:?}");
    }
    let strategies = complete(&["gatemesh", "call", "FindVPSByLease", "--strategy", "''"]);
    assert!(strategies.iter().any(|c| c == "all"), "{strategies:?}");

    let out = gatemesh(&[], &["completions", "tcsh"]);
    assert!(!out.status.success());
}

#[test]
fn a_bad_header_is_one_line_naming_the_flag_before_any_connection() {
    // Nothing listens on the gateway address: the header is refused first.
    let url = format!("http://127.0.0.1:{}", free_port());
    for (header, expected) in [
        (
            "Bad=1",
            "error: --header Bad=1: metadata key \"Bad\": only a-z, 0-9, '-', '_' and '.' are allowed\n",
        ),
        ("novalue", "error: --header novalue: expected KEY=VALUE\n"),
        (
            "grpc-timeout=1S",
            "error: --header grpc-timeout=1S: metadata key \"grpc-timeout\": the grpc- prefix is reserved\n",
        ),
    ] {
        let out = gatemesh(
            &[("GATEWAY_API_SECRET", SECRET)],
            &["--gateway", &url, "call", "Ping", "--header", header],
        );
        assert_eq!(out.status.code(), Some(1), "{header}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
    }
}
