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
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use parking_lot::Mutex;
use tokio_stream::wrappers::TcpListenerStream;

const SECRET: &str = "otel-test-secret";
const WINNER_MAC: &str = "52:54:00:12:34:56";

/// A span as received, with what the test looks at.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attributes: HashMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                    })
                    .collect();
                spans.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent: span.parent_span_id,
                    attributes,
                });
            }
        }
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

    let port = free_port();
    let mut env = gateway_env(port, SECRET);
    env.extend(otel_env(collector, "vps-gateway"));
    let gateway = Proc::spawn("vps-gateway", &binary("vps-gateway"), &env);
    let url = format!("http://127.0.0.1:{port}");
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
    let mut cli = Command::new(env!("CARGO_BIN_EXE_gatemesh"));
    cli.env_clear().env("GATEWAY_API_SECRET", SECRET).args([
        "--gateway",
        &url,
        "call",
        "FindVPSByLease",
        "--json",
        &format!(r#"{{"mac":"{WINNER_MAC}"}}"#),
        "--timeout",
        "20s",
        "--header",
        "x-request-id=otel-1",
    ]);
    for (k, v) in otel_env(collector, "gatemesh") {
        cli.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .unwrap();
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
    assert_eq!(
        admin.parent, cli_span.span_id,
        "the admin span continues the CLI's"
    );
    let call = one("gatemesh.call");
    assert_eq!(call.parent, admin.span_id);
    assert_eq!(call.attr("strategy"), Some("first_valid"));
    assert_eq!(call.attr("winner"), Some("prod-1"));

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
        assert_eq!(serve[0].attr("method"), Some("FindVPSByLease"));
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
    drop(instances);
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
