//! The operator HTTP port as operators' tools see it: `promtool` accepts
//! `/metrics` of a live gateway and a live instance, the format follows the
//! `Accept` header, labelled counters exist before their first event,
//! `/instances` asks for the secret off loopback, and a silent or
//! half-sent request is closed instead of holding a descriptor.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::http::{get, promtool};
use common::*;
use gatemesh_handlers::dispatch::code_name;
use gatemesh_proto::methods::FindVpsByLease;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `GET path` with extra headers; the status, the header block and the body.
async fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn has_line(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
}

#[tokio::test]
async fn promtool_accepts_the_metrics_of_a_live_gateway_and_a_live_instance() {
    init_logs();
    let gw = TestGateway::start().await;
    let http = common::http::serve(&gw.gateway).await;
    let (instance, _, instance_http) = common::http::serve_instance(&gw, "inst-a", "prod").await;
    gw.wait_instances(1).await;
    let _ = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "aa:aa"))
        .first_valid()
        .await
        .unwrap();

    for (who, addr) in [("gateway", http), ("instance", instance_http)] {
        // What promtool and plain curl get: the Prometheus text format.
        let (status, head, body) = request(addr, "/metrics", &[]).await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{who}: {head}"
        );
        assert!(!body.contains("# EOF"), "{who}");
        assert!(body.contains("process_resident_memory_bytes "), "{who}");
        assert!(body.contains("process_open_fds "), "{who}");
        assert!(body.contains("_build_info{version=\""), "{who}");
        if let Some((ok, report)) = promtool(&body) {
            assert!(
                ok,
                "promtool rejects the {who}'s metrics:\n{report}\n{body}"
            );
            assert!(
                report.trim().is_empty(),
                "promtool lints the {who}'s metrics:\n{report}"
            );
        }
        // What Prometheus asks for.
        let accept =
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (status, head, body) = request(addr, "/metrics", &[("Accept", accept)]).await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{who}: {head}"
        );
        assert!(body.ends_with("# EOF\n"), "{who}");
    }
    instance.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn labelled_counters_exist_before_their_first_event() {
    init_logs();
    let gw = TestGateway::start().await;
    let http = common::http::serve(&gw.gateway).await;
    let (_, body) = get(http, "/metrics").await;
    for strategy in ["first_valid", "all", "one"] {
        for code in [tonic::Code::NotFound, tonic::Code::DeadlineExceeded] {
            let line = format!(
                r#"gatemesh_gateway_calls_total{{method="FindVPSByLease",strategy="{strategy}",outcome="{}"}} 0"#,
                code_name(code)
            );
            assert!(has_line(&body, &line), "{line} missing:\n{body}");
        }
    }
    for reason in [
        "closed_by_instance",
        "heartbeat_timeout",
        "stuck",
        "stream_error",
    ] {
        let line = format!(r#"gatemesh_gateway_disconnects_total{{reason="{reason}"}} 0"#);
        assert!(has_line(&body, &line), "{line} missing");
    }
    let line = format!(
        r#"gatemesh_gateway_served_calls_total{{method="GetGatewayInfo",outcome="{}"}} 0"#,
        code_name(tonic::Code::ResourceExhausted)
    );
    assert!(has_line(&body, &line), "{line} missing");
    gw.stop().await;
}

#[tokio::test]
async fn per_instance_series_can_be_switched_off_for_large_fleets() {
    init_logs();
    let mut config = config();
    config.metrics_per_instance = false;
    let gw = TestGateway::start_with(config).await;
    let http = common::http::serve(&gw.gateway).await;
    let _a = start_instance(&gw, "inst-a", "prod", knows("aa:aa", "vps-a"));
    gw.wait_instances(1).await;
    let (_, body) = get(http, "/metrics").await;
    assert!(has_line(&body, "gatemesh_gateway_instances 1"), "{body}");
    assert!(!body.contains("instance_id=\"inst-a\""), "{body}");
    assert!(
        !body.contains("gatemesh_gateway_instance_in_flight"),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn instances_off_loopback_needs_the_secret() {
    init_logs();
    let gw = TestGateway::start().await;
    let _a = start_instance(&gw, "inst-a", "prod", knows("aa:aa", "vps-a"));
    gw.wait_instances(1).await;
    // Every address: not loopback, so the listing is protected.
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        gw.gateway
            .clone()
            .serve_http(listener, std::future::pending::<()>()),
    );
    let http = SocketAddr::from(([127, 0, 0, 1], port));

    let (status, head, _) = request(http, "/instances", &[]).await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let (status, _, _) = request(http, "/instances", &[("Authorization", "Bearer nope")]).await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {SECRET}");
    let (status, _, body) = request(http, "/instances", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["instance_id"], "inst-a");
    let (status, _, _) = request(
        http,
        "/instances",
        &[(gatemesh_proto::SECRET_METADATA_KEY, SECRET)],
    )
    .await;
    assert_eq!(status, 200);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(request(http, "/health", &[]).await.0, 200);
    let (status, _, metrics) = request(http, "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(
        has_line(&metrics, "gatemesh_gateway_http_unauthorized_total 2"),
        "{metrics}"
    );
    gw.stop().await;
}

/// Waits until the server closes `stream`, reading whatever it sends
/// first. The outer timeout only keeps a broken server from hanging the
/// test; the server's own deadline is far shorter.
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

async fn assert_deadlines(addr: SocketAddr, who: &str) {
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "{who}");
    assert!(
        closed_by_server(silent).await,
        "{who}: a silent connection stays open"
    );
    assert!(
        closed_by_server(half).await,
        "{who}: a half-sent request stays open"
    );
    assert!(
        closed_by_server(idle).await,
        "{who}: an idle keep-alive connection stays open"
    );
}

#[tokio::test]
async fn silent_half_sent_and_idle_http_connections_are_closed() {
    use gatemesh_handlers::Registry;
    use gatemesh_service::http::HttpState;
    use gatemesh_service::{Instance, ServiceMetrics};

    init_logs();
    let mut config = config();
    config.ops.http_timeout_ms = 200;
    let gw = TestGateway::start_with(config).await;
    let http = common::http::serve(&gw.gateway).await;
    assert_deadlines(http, "gateway").await;
    let (_, metrics) = get(http, "/metrics").await;
    assert!(
        has_line(&metrics, "gatemesh_gateway_http_timeouts_total 2")
            || has_line(&metrics, "gatemesh_gateway_http_timeouts_total 3"),
        "{metrics}"
    );

    let registry = Registry::new();
    let metrics = Arc::new(ServiceMetrics::for_instance());
    let instance = Instance::new(options("inst-a", "prod"), registry).start([gw.url()]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = HttpState::new(instance.id(), instance.links(), metrics)
        .with_timeout(Duration::from_millis(200));
    tokio::spawn(gatemesh_service::http::serve(
        state,
        listener,
        std::future::pending(),
    ));
    assert_deadlines(addr, "instance").await;
    instance.shutdown().await;
    gw.stop().await;
}
