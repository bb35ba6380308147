//! Issue 24, second half: nothing crosses a node's boundaries that should
//! not. Each test is an attack tried as someone on one node would try it:
//!
//! - the admin API's caller headers (cookies, proxy credentials, the
//!   proxy's own `x-forwarded-*`) reaching instances of every environment;
//! - the IP pool handing out its network and broadcast addresses and the
//!   node's own, one environment taking the whole pool, the reservations
//!   file deleted or edited under a running gateway, a `-` environment
//!   lost on restart, a record with a key given twice, two VPS ids that
//!   differ only in case sharing one DNS name;
//! - idle sockets pinning the operator HTTP port's descriptors until
//!   `/health` no longer answers;
//! - a `gatemesh --timeout` past the wire's limit, an uppercase
//!   `traceparent`.
//!
//! The identity half of the issue is `tests/trust_boundary.rs`.

mod common;
mod dnsmasq_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fds::{get_within, idle_sockets, room_for, spawn_with_fd_limit, try_get};
use common::process::{Proc, binary, free_port, gateway_env, http_addr, loopback};
use common::*;
use dnsmasq_support::TempDir;
use gatemesh_gateway::GatewayConfig;
use gatemesh_handlers::{Context, Registry};
use gatemesh_node::{Node, NodeSettings};
use gatemesh_proto::methods::{AllocateIp, FindVpsByLease, ListIPs, ReleaseIp};
use gatemesh_proto::pb::{self, FindVpsByLeaseResponse};
use gatemesh_proto::{Method, SECRET_METADATA_KEY};
use gatemesh_service::{GatewayCallError, Instance, InstanceHandle};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

const T: Duration = Duration::from_secs(10);

fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vec![
        ("GATEWAY_API_SECRET".to_string(), SECRET.to_string()),
        ("GATEWAY_ID".to_string(), "gw-edges".to_string()),
    ];
    all.extend(list.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    all
}

fn gateway_config(list: &[(&str, &str)]) -> GatewayConfig {
    GatewayConfig::from_vars(vars(list)).unwrap()
}

// ---------------------------------------------------------------------
// 1. Headers cross by allow-list only.
// ---------------------------------------------------------------------

/// What an instance's handler saw of a call's metadata, `k=v` sorted and
/// joined by `,`, as its answer's `vps_id`.
fn echo_metadata(gw: &TestGateway, id: &str, env: &str) -> InstanceHandle {
    start_instance(gw, id, env, |ctx: Context, _req| {
        let mut seen: Vec<String> = ctx
            .metadata()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        seen.sort();
        let vps_id = format!("seen:{}", seen.join(","));
        async move {
            Ok(FindVpsByLeaseResponse {
                vps_id,
                organization_id: String::new(),
            })
        }
    })
}

/// An admin `Call` of `FindVPSByLease` carrying `headers` as its gRPC
/// headers; what the instance saw.
async fn admin_call_with_headers(gw: &TestGateway, headers: &[(&str, &str)]) -> String {
    let mut client = pb::gateway_admin_client::GatewayAdminClient::connect(gw.url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::CallRequest {
        method: FindVpsByLease::NAME.into(),
        payload: lease("10.0.0.1", "aa").encode_to_vec().into(),
        timeout_ms: 5_000,
        ..Default::default()
    });
    let metadata = request.metadata_mut();
    metadata.insert(SECRET_METADATA_KEY, SECRET.parse().unwrap());
    for (k, v) in headers {
        let key = tonic::metadata::AsciiMetadataKey::from_bytes(k.as_bytes()).unwrap();
        metadata.insert(key, v.parse().unwrap());
    }
    let response = client.call(request).await.unwrap().into_inner();
    let Some(pb::instance_result::Outcome::Payload(p)) = &response.results[0].outcome else {
        panic!("{response:?}")
    };
    FindVpsByLeaseResponse::decode(p.clone()).unwrap().vps_id
}

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// What a proxy in front of the admin API and a browser-based tool add to
/// a call: credentials and the proxy's own headers.
const HOSTILE: &[(&str, &str)] = &[
    ("cookie", "session=operator-session"),
    ("proxy-authorization", "Basic b3BlcmF0b3I6aHVudGVyMg=="),
    ("x-api-key", "ak-operator"),
    ("x-amz-security-token", "FQoGZXIvYXdzE"),
    ("forwarded", "for=192.0.2.60;proto=https"),
    ("x-forwarded-for", "192.0.2.60"),
    ("x-forwarded-host", "admin.example.net"),
    ("x-real-ip", "192.0.2.60"),
    ("x-request-id", "req-42"),
];

#[tokio::test]
async fn admin_headers_reach_instances_by_allow_list_only() {
    let gw = TestGateway::start_with(gateway_config(&[])).await;
    let _prod = echo_metadata(&gw, "prod-1", "prod");
    gw.wait_instances(1).await;
    let mut headers = HOSTILE.to_vec();
    headers.extend([("traceparent", TRACEPARENT), ("baggage", "tenant=acme")]);
    let seen = admin_call_with_headers(&gw, &headers).await;
    assert_eq!(
        seen,
        format!("seen:baggage=tenant=acme,traceparent={TRACEPARENT}"),
        "only the trace context crosses by default"
    );
    gw.stop().await;

    // What the operator names crosses too; credentials never.
    let gw = TestGateway::start_with(gateway_config(&[(
        "GATEWAY_FORWARD_HEADERS",
        "x-request-id",
    )]))
    .await;
    let _prod = echo_metadata(&gw, "prod-1", "prod");
    gw.wait_instances(1).await;
    let seen = admin_call_with_headers(&gw, HOSTILE).await;
    assert_eq!(seen, "seen:x-request-id=req-42");
    gw.stop().await;
}

/// Runs `vps-gateway` with `env` and returns its exit code and stderr.
fn gateway_refusal(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut command = Command::new(binary("vps-gateway"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    let port = free_port().to_string();
    let http = free_port().to_string();
    command
        .env("GATEWAY_API_SECRET", SECRET)
        .env("GATEWAY_BIND", "127.0.0.1")
        .env("GATEWAY_GRPC_PORT", &port)
        .env("GATEWAY_HTTP_PORT", &http);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_credential_or_proxy_header_named_to_forward_stops_the_gateway_in_one_line() {
    for name in [
        "cookie",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "x-amz-security-token",
        "x-gatemesh-secret",
        "forwarded",
        "x-forwarded-for",
        "x-real-ip",
    ] {
        let value = format!("x-request-id,{name}");
        let (code, stderr) = gateway_refusal(&[("GATEWAY_FORWARD_HEADERS", &value)]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
        assert!(
            stderr.starts_with("vps-gateway: GATEWAY_FORWARD_HEADERS: ")
                && stderr.contains(&format!("{name:?}"))
                && stderr.contains("never forwarded"),
            "{name}: {stderr}"
        );
    }
    let (code, stderr) = gateway_refusal(&[("GATEWAY_FORWARD_HEADERS", "X Request")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("vps-gateway: GATEWAY_FORWARD_HEADERS: "),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------
// 2. The IP pool's edges.
// ---------------------------------------------------------------------

/// A node built from `list` (on top of the secret), as `vps-gateway`
/// builds it, serving on loopback; its gRPC and HTTP addresses.
async fn node(list: &[(&str, &str)]) -> (TestGateway, SocketAddr) {
    let settings = NodeSettings::from_vars(vars(list)).unwrap();
    let node = Node::start(settings).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(node.gateway, listener);
    let http = common::http::serve(&gw.gateway).await;
    (gw, http)
}

fn caller(gw: &TestGateway, id: &str, env: &str) -> InstanceHandle {
    Instance::new(options(id, env), Registry::new()).start([gw.url()])
}

fn mac(n: usize) -> String {
    format!("52:54:00:ee:{:02x}:{:02x}", n >> 8, n & 0xff)
}

async fn admin(gw: &TestGateway) -> AdminClient {
    AdminClient::connect(gw.url()).await.unwrap()
}

#[tokio::test]
async fn a_cidr_pool_never_hands_out_its_network_its_broadcast_or_the_nodes_own_address() {
    let dir = TempDir::new("edges-cidr");
    let file = dir.join("vps.dhcp-hosts");
    // 127.0.0.1 is this node's own (loopback) address: always inside.
    let (gw, _) = node(&[
        ("GATEWAY_IP_POOL", "127.0.0.0/29"),
        ("GATEWAY_IP_RESERVATIONS_FILE", file.to_str().unwrap()),
    ])
    .await;
    let mut client = admin(&gw).await;
    let mut handed = Vec::new();
    for n in 0..8 {
        match admin_call::<_, pb::AllocateIpResponse>(
            &mut client,
            "AllocateIP",
            alloc(&format!("vps-{n}"), &mac(n)),
        )
        .await
        {
            Ok(answer) => handed.push(answer.reservation.unwrap().ip),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
        }
    }
    assert_eq!(
        handed,
        [
            "127.0.0.2",
            "127.0.0.3",
            "127.0.0.4",
            "127.0.0.5",
            "127.0.0.6"
        ],
        "not .0 (network), not .7 (broadcast), not .1 (this node's)"
    );
    gw.stop().await;
}

fn code<T: std::fmt::Debug>(result: Result<T, GatewayCallError>) -> (Code, String) {
    let e = result.unwrap_err();
    (e.code(), e.to_string())
}

#[tokio::test]
async fn one_environment_cannot_take_the_whole_pool() {
    let dir = TempDir::new("edges-quota");
    let file = dir.join("vps.dhcp-hosts");
    let (gw, http) = node(&[
        ("GATEWAY_IP_POOL", "10.40.0.10-10.40.0.19"),
        ("GATEWAY_IP_RESERVATIONS_FILE", file.to_str().unwrap()),
        ("GATEWAY_IP_QUOTA", "dev:2,prod:5"),
    ])
    .await;
    let dev = caller(&gw, "dev-1", "dev");
    let prod = caller(&gw, "prod-1", "prod");
    dev.wait_connected().await;
    prod.wait_connected().await;
    for n in 0..2 {
        dev.call::<AllocateIp>(alloc(&format!("vps-dev-{n}"), &mac(n)), T)
            .await
            .unwrap();
    }
    // A retry of an allocation it holds is answered at its quota.
    let again = dev
        .call::<AllocateIp>(alloc("vps-dev-1", &mac(1)), T)
        .await
        .unwrap();
    assert!(again.existing);
    let (c, message) = code(dev.call::<AllocateIp>(alloc("vps-dev-2", &mac(2)), T).await);
    assert_eq!(c, Code::ResourceExhausted, "{message}");
    assert!(
        message.contains("\"dev\""),
        "names the environment: {message}"
    );
    // The pool is not exhausted: prod allocates up to its own quota.
    for n in 10..15 {
        prod.call::<AllocateIp>(alloc(&format!("vps-prod-{n}"), &mac(n)), T)
            .await
            .unwrap();
    }
    assert_eq!(
        code(
            prod.call::<AllocateIp>(alloc("vps-prod-15", &mac(15)), T)
                .await
        )
        .0,
        Code::ResourceExhausted
    );
    // Released, the room comes back.
    dev.call::<ReleaseIp>(
        pb::ReleaseIpRequest {
            vps_id: "vps-dev-0".into(),
            mac: String::new(),
        },
        T,
    )
    .await
    .unwrap();
    dev.call::<AllocateIp>(alloc("vps-dev-2", &mac(2)), T)
        .await
        .unwrap();
    let (_, metrics) = common::http::get(http, "/metrics").await;
    assert_eq!(
        common::http::sample(
            &metrics,
            "gatemesh_gateway_ipam_refusals_total",
            r#"reason="quota""#
        ),
        2.0
    );
    gw.stop().await;
}

/// `/health`'s reasons, as one string.
async fn health_reasons(http: SocketAddr) -> String {
    let (_, health) = common::http::get_json(http, "/health").await;
    health["reasons"].to_string()
}

/// Polls `check` until it passes; after 20 s, fails the test with `what`
/// and the last thing `check` saw.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = match check().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the file at `path` holds exactly `whole`.
async fn file_holds(path: &Path, whole: &str, what: &str) {
    until(what, || async {
        match std::fs::read_to_string(path) {
            Ok(text) if text == whole => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Waits until `/health`'s reasons pass `check`.
async fn health_until(http: SocketAddr, what: &str, check: impl Fn(&str) -> bool) {
    until(what, || async {
        let reasons = health_reasons(http).await;
        if check(&reasons) {
            Ok(())
        } else {
            Err(reasons)
        }
    })
    .await;
}

#[tokio::test]
async fn a_reservations_file_deleted_or_edited_under_a_running_gateway_is_written_again() {
    let dir = TempDir::new("edges-watch");
    let file = dir.join("vps.dhcp-hosts");
    let (gw, http) = node(&[
        ("GATEWAY_IP_POOL", "10.41.0.10-10.41.0.19"),
        ("GATEWAY_IP_RESERVATIONS_FILE", file.to_str().unwrap()),
    ])
    .await;
    let mut client = admin(&gw).await;
    for n in 0..2 {
        admin_call::<_, pb::AllocateIpResponse>(
            &mut client,
            "AllocateIP",
            alloc(&format!("vps-w{n}"), &mac(n)),
        )
        .await
        .unwrap();
    }
    let whole = std::fs::read_to_string(&file).unwrap();
    assert!(whole.contains("vps=vps-w1"), "{whole}");

    std::fs::remove_file(&file).unwrap();
    file_holds(&file, &whole, "the deleted file to be written again").await;
    // An edit that drops a reservation: dnsmasq would forget the VM's
    // address while the allocator still holds it.
    std::fs::write(&file, whole.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    file_holds(&file, &whole, "the edited file to be written again").await;
    // Something that cannot be replaced: `/health` says so until it can.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    std::fs::write(file.join("keep"), "x").unwrap();
    health_until(http, "/health to say the file is not whole", |r| {
        r.contains("ipam: ") && r.contains("reservations file")
    })
    .await;
    std::fs::remove_dir_all(&file).unwrap();
    file_holds(&file, &whole, "the file to be written once it can be").await;
    health_until(http, "/health to be rid of it", |r| !r.contains("ipam: ")).await;
    let (_, metrics) = common::http::get(http, "/metrics").await;
    assert!(
        common::http::sample(&metrics, "gatemesh_gateway_ipam_file_repairs_total", "") >= 3.0,
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_environment_or_organization_named_dash_survives_a_restart() {
    let dir = TempDir::new("edges-dash");
    let file = dir.join("vps.dhcp-hosts");
    let list = [
        ("GATEWAY_IP_POOL", "10.42.0.10-10.42.0.19"),
        ("GATEWAY_IP_RESERVATIONS_FILE", file.to_str().unwrap()),
    ];
    let (gw, _) = node(&list).await;
    let dash = caller(&gw, "dash-1", "-");
    dash.wait_connected().await;
    let mut request = alloc("vps-dash", &mac(1));
    request.organization_id = "-".into();
    dash.call::<AllocateIp>(request, T).await.unwrap();
    dash.shutdown().await;
    gw.stop().await;

    let (gw, _) = node(&list).await;
    let dash = caller(&gw, "dash-1", "-");
    dash.wait_connected().await;
    let list = dash
        .call::<ListIPs>(pb::ListIPsRequest::default(), T)
        .await
        .unwrap();
    let r = &list.reservations[0];
    assert_eq!(
        (r.environment.as_str(), r.organization_id.as_str()),
        ("-", "-")
    );
    // Still its: the environment that made it releases it.
    dash.call::<ReleaseIp>(
        pb::ReleaseIpRequest {
            vps_id: "vps-dash".into(),
            mac: String::new(),
        },
        T,
    )
    .await
    .unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn a_record_with_a_key_given_twice_stops_the_start_naming_the_line() {
    let dir = TempDir::new("edges-dupkey");
    let file = dir.join("vps.dhcp-hosts");
    std::fs::write(
        &file,
        "# written by vps-gateway's IP allocator; edits are overwritten\n\
         # gatemesh-ipam v1 ip=10.43.0.10 mac=52:54:00:00:00:01 vps=vps-a org=- env=prod env=dev at=1\n\
         52:54:00:00:00:01,10.43.0.10,vps-a\n",
    )
    .unwrap();
    let settings = NodeSettings::from_vars(vars(&[
        ("GATEWAY_IP_POOL", "10.43.0.10-10.43.0.19"),
        ("GATEWAY_IP_RESERVATIONS_FILE", file.to_str().unwrap()),
    ]))
    .unwrap();
    let e = Node::start(settings).err().expect("refused").to_string();
    assert!(
        e.contains("line 2") && e.contains("env") && e.contains("twice"),
        "{e}"
    );
}

#[tokio::test]
async fn vps_ids_that_differ_only_in_case_never_share_a_dns_name() {
    // The allocator: dnsmasq's hostname of each reservation.
    let dir = TempDir::new("edges-case");
    let file = dir.join("vps.dhcp-hosts");
    let (gw, _) = node(&[
        ("GATEWAY_IP_POOL", "10.44.0.10-10.44.0.19"),
        ("GATEWAY_IP_RESERVATIONS_FILE", file.to_str().unwrap()),
    ])
    .await;
    let prod = caller(&gw, "prod-1", "prod");
    let dev = caller(&gw, "dev-1", "dev");
    prod.wait_connected().await;
    dev.wait_connected().await;
    prod.call::<AllocateIp>(alloc("vps-web", &mac(1)), T)
        .await
        .unwrap();
    let (c, message) = code(dev.call::<AllocateIp>(alloc("VPS-Web", &mac(2)), T).await);
    assert_eq!(c, Code::AlreadyExists, "{message}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.matches("# gatemesh-ipam v1 ").count(),
        1,
        "one reservation, one hostname:\n{text}"
    );
    gw.stop().await;

    // The DHCP manager: the hosts file dnsmasq answers DNS from.
    let dir = TempDir::new("edges-case-dhcp");
    let leases = dir.join("dnsmasq.leases");
    let hosts = dir.join("vps.hosts");
    let later = gatemesh_dnsmasq::unix_now() + 3600;
    std::fs::write(
        &leases,
        format!(
            "{later} 52:54:00:00:00:01 10.45.0.10 * *\n\
             {later} 52:54:00:00:00:02 10.45.0.11 * *\n"
        ),
    )
    .unwrap();
    let (gw, http) = node(&[
        ("GATEWAY_DHCP_LEASES_FILE", leases.to_str().unwrap()),
        ("GATEWAY_DHCP_HOSTS_FILE", hosts.to_str().unwrap()),
    ])
    .await;
    let _prod = start_instance(&gw, "prod-1", "prod", knows("52:54:00:00:00:01", "vps-web"));
    let _dev = start_instance(&gw, "dev-1", "dev", knows("52:54:00:00:00:02", "VPS-Web"));
    until("the clash refused, one name written", || async {
        let text = std::fs::read_to_string(&hosts).unwrap_or_default();
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        assert!(
            names.len() < 2,
            "two VPS share one DNS name in the hosts file:\n{text}"
        );
        let (_, metrics) = common::http::get(http, "/metrics").await;
        let refused = common::http::sample(
            &metrics,
            "gatemesh_gateway_dhcp_refused_answers_total",
            r#"reason="case_clash""#,
        );
        match names.len() == 1 && refused >= 1.0 {
            true => Ok(()),
            false => Err(format!("{refused} refused; hosts file:\n{text}")),
        }
    })
    .await;
    gw.stop().await;
}

// ---------------------------------------------------------------------
// 3. The operator HTTP port under idle sockets.
// ---------------------------------------------------------------------

/// Probes `/health` `times` times while `idle` more silent sockets arrive
/// between probes; every probe must answer.
fn health_answers_every_time(http: SocketAddr, times: usize, idle: usize) {
    let mut held = Vec::new();
    for probe in 0..times {
        held.extend(idle_sockets(http, idle));
        let body = get_within(http, "/health", Duration::from_secs(20));
        assert!(
            body.as_deref().is_some_and(|b| b.contains("\"status\"")),
            "probe {probe} of {times}: /health did not answer ({body:?}) with {} idle sockets held",
            held.len()
        );
    }
}

#[test]
fn health_answers_every_time_while_idle_sockets_flood_the_http_port() {
    if !e2e::require(&[e2e::Need::Prlimit]) {
        return;
    }
    room_for(2_600);
    // The gateway, with a header deadline long enough that only the
    // connection cap can help.
    let port = free_port();
    let mut env = gateway_env(port, SECRET);
    env.push(("GATEWAY_HTTP_TIMEOUT_MS", "600000".into()));
    let http = http_addr(&env);
    let _gateway = spawn_with_fd_limit("vps-gateway", &binary("vps-gateway"), 512, &env);
    wait_answers(http);
    // Past the descriptor limit, then more between probes.
    held_while_probing(http);

    // The instance's endpoints, the same server.
    let service_http = free_port();
    let _service = spawn_with_fd_limit(
        "vps-service",
        &binary("vps-service"),
        512,
        &[
            ("VPS_GATEWAY_URL", format!("http://127.0.0.1:{port}")),
            ("VPS_GATEWAY_API_SECRET", SECRET.into()),
            ("VPS_INSTANCE_ID", "inst-http".into()),
            ("VPS_HTTP_PORT", service_http.to_string()),
            ("VPS_HTTP_BIND", "127.0.0.1".into()),
            ("VPS_HTTP_TIMEOUT_MS", "600000".into()),
        ],
    );
    let http = loopback(service_http);
    wait_answers(http);
    held_while_probing(http);
}

/// Waits until a just-started binary's `/health` answers; panics after
/// 60 s.
fn wait_answers(http: SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while try_get(http, "/health").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{http}: /health never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn held_while_probing(http: SocketAddr) {
    let flood = idle_sockets(http, 600);
    assert_eq!(flood.len(), 600, "the kernel took every connection");
    health_answers_every_time(http, 8, 50);
    drop(flood);
}

// ---------------------------------------------------------------------
// 4. Smaller edges.
// ---------------------------------------------------------------------

#[test]
fn a_cli_timeout_past_the_wires_limit_is_a_usage_error_not_a_panic() {
    // A gateway that would take the call: the CLI must refuse it first.
    let port = free_port();
    let env = gateway_env(port, SECRET);
    let http = http_addr(&env);
    let _gateway = Proc::spawn("vps-gateway", &binary("vps-gateway"), &env);
    wait_answers(http);
    let out = Command::new(env!("CARGO_BIN_EXE_gatemesh"))
        .env_clear()
        .args([
            "--gateway",
            &format!("http://127.0.0.1:{port}"),
            "--secret",
            SECRET,
            "call",
            "Ping",
            "--timeout",
            "100000000h",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("--timeout") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_uppercase_traceparent_is_treated_as_absent() {
    let gw = TestGateway::start_with(gateway_config(&[])).await;
    let _instance = start_instance(&gw, "prod-1", "prod", |ctx: Context, _req| {
        let traced = gatemesh_handlers::trace::extract(ctx.metadata()).is_some();
        async move {
            Ok(FindVpsByLeaseResponse {
                vps_id: format!("traced:{traced}"),
                organization_id: String::new(),
            })
        }
    });
    gw.wait_instances(1).await;
    let traced = |traceparent: String| {
        let gw = &gw;
        async move {
            let mut metadata = gatemesh_handlers::Metadata::new();
            metadata.insert("traceparent", traceparent).unwrap();
            gw.gateway
                .mesh()
                .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
                .with_metadata(metadata)
                .first_valid()
                .await
                .unwrap()
                .value
                .vps_id
        }
    };
    assert_eq!(traced(TRACEPARENT.into()).await, "traced:true");
    assert_eq!(
        traced(TRACEPARENT.to_ascii_uppercase()).await,
        "traced:false",
        "W3C: lowercase hex only"
    );
    gw.stop().await;
}
