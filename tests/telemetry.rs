//! One trace from the caller to every instance (issue #17), end to end:
//! the real `gatemesh` CLI, `vps-gateway` and three `vps-service`
//! processes export their spans over OTLP to a real OTLP/gRPC receiver
//! (the `opentelemetry-proto` TraceService, served by tonic) in this test.
//!
//! A `first_valid` call over three instances, two of them frozen (SIGSTOP)
//! until the third has won, must arrive as one trace: the CLI's span → the
//! gateway's admin span → its call span → one request span per instance
//! (one `won`, two `cancelled`) → each instance's handler span (the
//! winner's `ok`, the losers' `cancelled`), all with the same trace id.
//! Every span follows the OpenTelemetry RPC conventions (kind,
//! `rpc.*` attributes, status ERROR for a failed client call), and each
//! process's resource names it (`service.instance.id`,
//! `deployment.environment`).
//!
//! The export's transports and failures: an `https://` collector with a
//! private CA (`OTEL_EXPORTER_OTLP_CERTIFICATE`), OTLP over HTTP/protobuf,
//! and a dead collector, counted in `/metrics`, logged, and no obstacle to
//! a clean shutdown.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::process::{Proc, binary, free_port, gateway_env};
use gatemesh_proto::pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use parking_lot::Mutex;
use tokio_stream::wrappers::TcpListenerStream;

const SECRET: &str = "otel-test-secret";
const WINNER_MAC: &str = "52:54:00:12:34:56";

/// A span as received, with what the test looks at.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    resource: HashMap<String, String>,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    kind: SpanKind,
    status: StatusCode,
    attributes: HashMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    fn resource(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn collect(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock();
        for resource_spans in request.resource_spans {
            let resource: HashMap<String, String> =
                attributes(resource_spans.resource.iter().flat_map(|r| &r.attributes));
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    resource: resource.clone(),
                    kind: span.kind(),
                    status: span.status.as_ref().map_or(StatusCode::Unset, |s| s.code()),
                    attributes: attributes(&span.attributes),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                });
            }
        }
    }
}

fn attributes<'a>(pairs: impl IntoIterator<Item = &'a KeyValue>) -> HashMap<String, String> {
    pairs
        .into_iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.collect(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Starts the receiver on a loopback port; returns its address.
async fn start_receiver(receiver: Receiver) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn otel_env(collector: SocketAddr, service: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_SERVICE_NAME", service.into()),
        // Batches every 50 ms, so the test waits little.
        ("OTEL_BSP_SCHEDULE_DELAY", "50".into()),
    ]
}

type Admin = pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>;

async fn connected(admin: &mut Admin) -> usize {
    let mut request = tonic::Request::new(pb::ListInstancesRequest {});
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
    admin
        .list_instances(request)
        .await
        .map_or(0, |r| r.into_inner().instances.len())
}

/// Polls until `condition` holds on the spans received; panics after 30 s
/// naming what was received.
async fn wait_spans(receiver: &Receiver, what: &str, condition: impl Fn(&[Received]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if condition(&receiver.spans.lock()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; received: {:#?}",
            receiver.spans.lock()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_first_valid_call_over_three_instances_is_one_trace() {
    let receiver = Receiver::default();
    let collector = start_receiver(receiver.clone()).await;
    let dir = std::env::temp_dir().join(format!("gatemesh-otel-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let (gateway, url, _) = exporting_gateway(otel_env(collector, "vps-gateway"), None).await;
    let specs = [
        ("prod-1", "vps-prod-42", WINNER_MAC),
        ("beta-1", "vps-beta-7", "52:54:00:00:00:0b"),
        ("dev-1", "vps-dev-1", "52:54:00:00:00:0d"),
    ];
    let instances: Vec<Proc> = specs
        .iter()
        .map(|(id, vps_id, mac)| {
            let inventory = dir.join(format!("{id}.json"));
            let json = format!(
                r#"{{"vps":[{{"vps_id":"{vps_id}","organization_id":"org","mac":"{mac}","ip":"10.0.0.9"}}]}}"#
            );
            std::fs::write(&inventory, json).unwrap();
            let mut env = vec![
                ("VPS_GATEWAY_URL", url.clone()),
                ("VPS_GATEWAY_API_SECRET", SECRET.into()),
                ("VPS_INSTANCE_ID", id.to_string()),
                ("VPS_ENVIRONMENT", id.split('-').next().unwrap().to_string()),
                ("VPS_INVENTORY_FILE", inventory.display().to_string()),
                ("VPS_RECONNECT_BASE_MS", "20".into()),
                ("VPS_RECONNECT_MAX_MS", "200".into()),
            ];
            env.extend(otel_env(collector, id));
            Proc::spawn(id, &binary("vps-service"), &env)
        })
        .collect();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut admin) = Admin::connect(url.clone()).await
            && connected(&mut admin).await == 3
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 instances never connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The two losers are frozen: they cannot answer "not mine" before the
    // winner answers, so the gateway cancels their requests.
    instances[1].signal("STOP");
    instances[2].signal("STOP");
    let out = cli_call(&url, collector, WINNER_MAC, "otel-1").await;
    assert!(
        out.status.success(),
        "the call failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("vps-prod-42"));
    // The CLI flushed its span before it exited.
    assert!(
        receiver
            .spans
            .lock()
            .iter()
            .any(|s| s.name == "gatemesh.cli"),
        "the CLI's span was exported before it exited"
    );
    instances[1].signal("CONT");
    instances[2].signal("CONT");

    wait_spans(
        &receiver,
        "the CLI, admin, call, 3 request and 3 handler spans",
        |spans| {
            let count = |name: &str| spans.iter().filter(|s| s.name == name).count();
            count("gatemesh.cli") == 1
                && count("gatemesh.admin") == 1
                && count("gatemesh.call") == 1
                && count("gatemesh.request") == 3
                && count("gatemesh.serve") == 3
        },
    )
    .await;
    let spans = receiver.spans.lock().clone();
    let one = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
    let cli_span = one("gatemesh.cli");
    assert_eq!(cli_span.service, "gatemesh");
    let trace_id = cli_span.trace_id.clone();
    assert_eq!(trace_id.len(), 16);
    assert!(
        spans.iter().all(|s| s.trace_id == trace_id),
        "every span is in the CLI's trace: {spans:#?}"
    );

    // The spans whose log lines an operator greps carry the trace id too.
    let hex: String = trace_id.iter().map(|b| format!("{b:02x}")).collect();
    for name in ["gatemesh.admin", "gatemesh.call", "gatemesh.serve"] {
        for span in spans.iter().filter(|s| s.name == name) {
            assert_eq!(span.attr("trace_id"), Some(hex.as_str()), "{span:#?}");
        }
    }

    let admin = one("gatemesh.admin");
    assert_eq!(admin.service, "vps-gateway");
    assert_eq!(admin.kind, SpanKind::Server);
    assert_eq!(admin.attr("rpc.system"), Some("grpc"));
    assert_eq!(admin.attr("rpc.service"), Some("gatemesh.v1.GatewayAdmin"));
    assert_eq!(admin.attr("rpc.method"), Some("Call"));
    assert_eq!(admin.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(admin.resource("service.instance.id"), Some("gw-proc"));
    assert_eq!(
        admin.parent, cli_span.span_id,
        "the admin span continues the CLI's"
    );
    let call = one("gatemesh.call");
    assert_eq!(call.parent, admin.span_id);
    assert_eq!(call.attr("strategy"), Some("first_valid"));
    assert_eq!(call.attr("winner"), Some("prod-1"));
    assert_eq!(call.kind, SpanKind::Client);
    assert_eq!(
        call.attr("rpc.service"),
        Some("gatemesh.v1.InstanceMethods")
    );
    assert_eq!(call.attr("rpc.method"), Some("FindVPSByLease"));
    assert_eq!(call.status, StatusCode::Unset);

    let mut outcomes = Vec::new();
    for request in spans.iter().filter(|s| s.name == "gatemesh.request") {
        assert_eq!(request.parent, call.span_id);
        let instance = request.attr("instance").unwrap().to_string();
        let serve: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "gatemesh.serve" && s.parent == request.span_id)
            .collect();
        assert_eq!(
            serve.len(),
            1,
            "one handler span under the request to {instance}"
        );
        assert_eq!(
            serve[0].service, instance,
            "the handler span comes from {instance}"
        );
        assert_eq!(serve[0].attr("rpc.method"), Some("FindVPSByLease"));
        assert_eq!(serve[0].kind, SpanKind::Server);
        assert_eq!(request.kind, SpanKind::Client);
        // Each instance's resource names it and its environment.
        assert_eq!(serve[0].resource("service.instance.id"), Some(&*instance));
        let environment = instance.split('-').next().unwrap();
        assert_eq!(
            serve[0].resource("deployment.environment"),
            Some(environment)
        );
        outcomes.push((
            instance,
            request.attr("outcome").unwrap_or_default().to_string(),
            serve[0].attr("outcome").unwrap_or_default().to_string(),
        ));
    }
    outcomes.sort();
    // The losers, frozen until the winner answered, read their request and
    // its cancel together. A handler that answers on its first poll runs
    // inline, before the cancel frame is read, so its own span may say
    // `ok` (its answer then arrives late and is dropped); one that waits is
    // cancelled. The gateway's request spans say `cancelled` either way.
    for (instance, _, serve) in &mut outcomes {
        if instance != "prod-1" && serve == "ok" {
            *serve = "cancelled".into();
        }
    }
    assert_eq!(
        outcomes,
        [
            ("beta-1".into(), "cancelled".into(), "cancelled".into()),
            ("dev-1".into(), "cancelled".into(), "cancelled".into()),
            ("prod-1".into(), "won".into(), "ok".into()),
        ]
    );

    // A call nobody can answer: NOT_FOUND. The client spans (the CLI's,
    // the mesh call's) are errors; the server spans are not, NOT_FOUND
    // being the caller's outcome, not the server's failure.
    let out = cli_call(&url, collector, "52:54:00:ff:ff:ff", "otel-2").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"));
    let first = trace_id.clone();
    wait_spans(
        &receiver,
        "the NOT_FOUND call's CLI, admin and call spans",
        |spans| {
            let named = |name: &str| {
                spans
                    .iter()
                    .filter(|s| s.name == name && s.trace_id != first)
                    .count()
            };
            named("gatemesh.cli") == 1
                && named("gatemesh.admin") == 1
                && named("gatemesh.call") == 1
        },
    )
    .await;
    let spans = receiver.spans.lock().clone();
    let second = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.trace_id != first)
            .unwrap()
            .clone()
    };
    let cli_span = second("gatemesh.cli");
    assert_eq!(cli_span.kind, SpanKind::Client);
    assert_eq!(cli_span.status, StatusCode::Error, "{cli_span:#?}");
    assert_eq!(cli_span.attr("rpc.grpc.status_code"), Some("5"));
    let admin = second("gatemesh.admin");
    assert_eq!(admin.attr("rpc.method"), Some("Call"));
    assert_eq!(admin.attr("rpc.grpc.status_code"), Some("5"));
    assert_eq!(admin.status, StatusCode::Unset, "{admin:#?}");
    let call = second("gatemesh.call");
    assert_eq!(call.status, StatusCode::Error, "{call:#?}");
    assert_eq!(call.attr("rpc.grpc.status_code"), Some("5"));

    drop(instances);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `gatemesh call FindVPSByLease` for `mac`, exporting its span.
async fn cli_call(
    url: &str,
    collector: SocketAddr,
    mac: &str,
    request_id: &str,
) -> std::process::Output {
    let mut cli = Command::new(env!("CARGO_BIN_EXE_gatemesh"));
    cli.env_clear().env("GATEWAY_API_SECRET", SECRET).args([
        "--gateway",
        url,
        "call",
        "FindVPSByLease",
        "--json",
        &format!(r#"{{"mac":"{mac}"}}"#),
        "--timeout",
        "20s",
        "--header",
        &format!("x-request-id={request_id}"),
    ]);
    for (k, v) in otel_env(collector, "gatemesh") {
        cli.env(k, v);
    }
    tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .unwrap()
}

/// An admin call that no instance can take (none is connected): the
/// gateway's admin and call spans, `UNAVAILABLE`.
async fn unanswerable_call(url: &str) {
    let mut admin = Admin::connect(url.to_string()).await.unwrap();
    let mut request = tonic::Request::new(pb::CallRequest {
        method: "FindVPSByLease".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
    let status = admin.call(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

/// A gateway exporting with `otel` (on top of the usual variables); waits
/// until it serves. A port another test took between `free_port` and the
/// bind makes the gateway exit: it is started again on other ports, so no
/// test talks to another test's gateway.
async fn exporting_gateway(
    otel: Vec<(&'static str, String)>,
    log: Option<&std::path::Path>,
) -> (Proc, String, SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    'start: loop {
        let port = free_port();
        let mut env = gateway_env(port, SECRET);
        let http: u16 = env
            .iter()
            .find(|(k, _)| *k == "GATEWAY_HTTP_PORT")
            .unwrap()
            .1
            .parse()
            .unwrap();
        env.extend(otel.iter().cloned());
        let mut gateway = match log {
            Some(log) => Proc::spawn_logged("vps-gateway", &binary("vps-gateway"), &env, log),
            None => Proc::spawn("vps-gateway", &binary("vps-gateway"), &env),
        };
        let url = format!("http://127.0.0.1:{port}");
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway never served"
            );
            if gateway.child.try_wait().unwrap().is_some() {
                continue 'start;
            }
            if Admin::connect(url.clone()).await.is_ok() {
                // Serving, and still ours: it has bound both ports.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if gateway.child.try_wait().unwrap().is_none() {
                    return (gateway, url, common::process::loopback(http));
                }
                continue 'start;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The gateway's spans of [`unanswerable_call`] reached `receiver`, by
/// the RPC conventions, with the gateway's resource.
async fn check_unanswerable_call_spans(receiver: &Receiver) {
    wait_spans(receiver, "the gateway's admin and call spans", |spans| {
        spans.iter().any(|s| s.name == "gatemesh.admin")
            && spans.iter().any(|s| s.name == "gatemesh.call")
    })
    .await;
    let spans = receiver.spans.lock().clone();
    let call = spans.iter().find(|s| s.name == "gatemesh.call").unwrap();
    assert_eq!(call.kind, SpanKind::Client);
    assert_eq!(call.status, StatusCode::Error, "{call:#?}");
    assert_eq!(call.attr("rpc.grpc.status_code"), Some("14"));
    let admin = spans.iter().find(|s| s.name == "gatemesh.admin").unwrap();
    // UNAVAILABLE is a server error too.
    assert_eq!(admin.status, StatusCode::Error, "{admin:#?}");
    assert_eq!(admin.resource("service.name"), Some("vps-gateway"));
    assert_eq!(admin.resource("service.instance.id"), Some("gw-proc"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_collector_with_a_private_ca_receives_the_spans() {
    let ca = common::tls::Ca::new("otel-test-ca");
    let server = ca.server(&["127.0.0.1"]);
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let tls = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(&server.cert_pem, &server.key_pem),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let dir = std::env::temp_dir().join(format!("gatemesh-otel-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let mut otel = otel_env(collector, "vps-gateway");
    otel[0].1 = format!("https://{collector}");
    otel.push((
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ca_file.display().to_string(),
    ));
    let (_gateway, url, _) = exporting_gateway(otel, None).await;
    unanswerable_call(&url).await;
    check_unanswerable_call_spans(&receiver).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_reaches_the_collectors_v1_traces() {
    use axum::routing::post;
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let content_types = Arc::new(Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new().route(
        "/v1/traces",
        post({
            let receiver = receiver.clone();
            let content_types = content_types.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| async move {
                use prost::Message as _;
                content_types.lock().push(
                    headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                );
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        receiver.collect(request);
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                            .into_response()
                    }
                    Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
                }
            }
        }),
    );
    use axum::response::IntoResponse as _;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mut otel = otel_env(collector, "vps-gateway");
    otel.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".into()));
    let (_gateway, url, _) = exporting_gateway(otel, None).await;
    unanswerable_call(&url).await;
    check_unanswerable_call_spans(&receiver).await;
    assert!(
        content_types
            .lock()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "{:?}",
        content_types.lock()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_is_counted_and_logged_and_does_not_hold_shutdown() {
    let dir = std::env::temp_dir().join(format!("gatemesh-otel-dead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("gateway.log");
    // A port nobody listens on.
    let dead = common::process::loopback(free_port());
    let mut otel = otel_env(dead, "vps-gateway");
    otel.push(("RUST_LOG", "warn".into()));
    otel.push(("GATEWAY_LOG_FORMAT", "json".into()));
    let (mut gateway, url, http) = exporting_gateway(otel, Some(&log)).await;
    unanswerable_call(&url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, body) = common::http::get(http, "/metrics").await;
        if common::http::sample(&body, "gatemesh_gateway_trace_export_failures_total", "") >= 1.0 {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed export counted: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        common::http::sample(
            &metrics,
            "gatemesh_gateway_trace_spans_dropped_total",
            r#"reason="export_failed""#
        ) >= 1.0,
        "{metrics}"
    );
    // And /health says so, degraded (it has no instance either).
    let (_, health) = common::http::get_json(http, "/health").await;
    let reasons = health["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("span export to http://{dead} failing: ")))),
        "{health}"
    );
    // More spans, then a stop: the final export fails too, and the
    // gateway still stops, cleanly.
    unanswerable_call(&url).await;
    gateway.signal("TERM");
    let status = tokio::task::spawn_blocking(move || gateway.wait())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let logs = std::fs::read_to_string(&log).unwrap();
    let failed: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("span export failed"))
        })
        .collect();
    assert!(!failed.is_empty(), "{logs}");
    assert_eq!(failed[0]["level"], "WARN");
    assert!(
        failed[0]["spans"].as_u64().is_some_and(|n| n >= 1),
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["endpoint"], format!("http://{dead}"));
    let _ = std::fs::remove_dir_all(&dir);
}
