//! Operations: the HTTP endpoints (`/health`, `/ready`, `/instances`,
//! `/metrics`), gRPC health checking and reflection, on a real gateway with
//! real instances over loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::http::{get, get_json, sample};
use common::*;
use gatemesh_gateway::Gateway;
use gatemesh_handlers::dispatch::code_name;
use gatemesh_proto::methods::FindVpsByLease;
use serde_json::Value;
use tokio::net::TcpListener;

const CALLS_OK: &str = r#"method="FindVPSByLease",strategy="first_valid",outcome="OK""#;

async fn channel(gw: &TestGateway) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(gw.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn reasons(body: &Value) -> Vec<String> {
    body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn endpoints_follow_instances_calls_and_departures() {
    init_logs();
    let gw = TestGateway::start().await;
    let http = common::http::serve(&gw.gateway).await;
    eventually("the gateway serves", || gw.gateway.readiness().ready).await;

    let (status, health) = get_json(http, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["instances"], 0);
    assert_eq!(health["gateway_id"], "gw-test");
    assert!(health["uptime_ms"].is_u64());
    assert_eq!(reasons(&health), ["no instance connected"]);

    let a = start_instance(&gw, "inst-a", "prod", knows("aa:aa", "vps-a"));
    let b = start_instance(&gw, "inst-b", "beta", knows("bb:bb", "vps-b"));
    gw.wait_instances(2).await;

    let (status, health) = get_json(http, "/health").await;
    assert_eq!((status, &health["status"]), (200, &Value::from("healthy")));
    assert_eq!(health["instances"], 2);
    assert!(reasons(&health).is_empty());
    let (status, ready) = get_json(http, "/ready").await;
    assert_eq!((status, &ready["ready"]), (200, &Value::from(true)));

    let (status, list) = get_json(http, "/instances").await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["instance_id"], "inst-a");
    assert_eq!(list[0]["environment"], "prod");
    assert_eq!(list[1]["instance_id"], "inst-b");
    assert_eq!(list[1]["environment"], "beta");
    for entry in list {
        assert_eq!(entry["methods"], serde_json::json!(["FindVPSByLease"]));
        assert!(!entry["version"].as_str().unwrap().is_empty());
        assert!(
            entry["remote_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        assert!(entry["connected_since_ms"].as_u64().unwrap() > 0);
        assert!(entry["last_seen_ms"].as_u64().unwrap() > 0);
        assert_eq!(entry["in_flight"], 0);
        assert_eq!(entry["calls_served"], 0);
        assert_eq!(entry["errors"], 0);
    }

    let (status, metrics) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "gatemesh_gateway_calls_total", CALLS_OK),
        0.0
    );
    assert_eq!(
        sample(&metrics, "gatemesh_gateway_registrations_total", ""),
        2.0
    );
    assert_eq!(sample(&metrics, "gatemesh_gateway_instances", ""), 2.0);
    assert!(metrics.contains(
        r#"gatemesh_gateway_instance_in_flight{instance_id="inst-a",environment="prod"} 0"#
    ));
    for environment in ["prod", "beta"] {
        assert!(metrics.contains(&format!(
            "gatemesh_gateway_environment_instances{{environment=\"{environment}\"}} 1\n"
        )));
    }
    assert!(metrics.contains("gatemesh_gateway_queue_depth "));
    assert!(metrics.contains("gatemesh_gateway_late_responses_total "));
    assert!(metrics.contains("gatemesh_gateway_protocol_violations_total "));

    let mesh = gw.gateway.mesh();
    const N: usize = 3;
    for _ in 0..N {
        let answer = mesh
            .call::<FindVpsByLease>(lease("10.0.0.1", "bb:bb"))
            .first_valid()
            .await
            .unwrap();
        assert_eq!(answer.value.vps_id, "vps-b");
    }
    let missing = mesh
        .call::<FindVpsByLease>(lease("10.0.0.9", "zz:zz"))
        .first_valid()
        .await;
    assert!(missing.is_err());

    let (_, metrics) = get(http, "/metrics").await;
    assert_eq!(
        sample(&metrics, "gatemesh_gateway_calls_total", CALLS_OK),
        N as f64
    );
    assert_eq!(
        sample(
            &metrics,
            "gatemesh_gateway_calls_total",
            &format!(
                r#"method="FindVPSByLease",strategy="first_valid",outcome="{}""#,
                code_name(tonic::Code::NotFound)
            )
        ),
        1.0
    );
    assert_eq!(
        sample(
            &metrics,
            "gatemesh_gateway_call_duration_seconds_count",
            r#"method="FindVPSByLease",strategy="first_valid""#
        ),
        (N + 1) as f64
    );
    let (_, list) = get_json(http, "/instances").await;
    assert_eq!(list[1]["calls_served"], (N + 1) as u64);

    // An environment whose last instance left is still there, at 0, for
    // the alert on it.
    a.shutdown().await;
    gw.wait_instances(1).await;
    let (_, metrics) = get(http, "/metrics").await;
    assert!(metrics.contains("gatemesh_gateway_environment_instances{environment=\"prod\"} 0\n"));
    assert!(metrics.contains("gatemesh_gateway_environment_instances{environment=\"beta\"} 1\n"));

    // The last instance leaving turns the gateway degraded.
    b.shutdown().await;
    gw.wait_instances(0).await;
    let (status, health) = get_json(http, "/health").await;
    assert_eq!((status, &health["status"]), (200, &Value::from("degraded")));
    assert_eq!(reasons(&health), ["no instance connected"]);
    let (_, metrics) = get(http, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            "gatemesh_gateway_disconnects_total",
            r#"reason="closed_by_instance""#
        ),
        2.0
    );
    for environment in ["prod", "beta"] {
        assert!(metrics.contains(&format!(
            "gatemesh_gateway_environment_instances{{environment=\"{environment}\"}} 0\n"
        )));
    }
    gw.stop().await;
}

#[tokio::test]
async fn ready_only_after_start_up_and_unhealthy_while_draining() {
    init_logs();
    let gateway = Gateway::new(config());
    let http = common::http::serve(&gateway).await;

    // Before the gRPC server runs: not ready, and health says why.
    let (status, ready) = get_json(http, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(reasons(&ready), ["gRPC server not serving yet"]);

    // A component that has not started yet holds readiness back.
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    gateway.add_readiness_check("dhcp", move || {
        (!flag.load(Ordering::Relaxed)).then(|| "starting".to_string())
    });
    let failing = Arc::new(AtomicBool::new(true));
    let flag = failing.clone();
    gateway.add_health_check("dhcp", move || {
        flag.load(Ordering::Relaxed)
            .then(|| "lease file unreadable".to_string())
    });

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway.clone(), listener);
    eventually("the gRPC server serves", || {
        gateway.readiness().reasons == ["dhcp: starting"]
    })
    .await;
    let (status, ready) = get_json(http, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(reasons(&ready), ["dhcp: starting"]);
    started.store(true, Ordering::Relaxed);
    let (status, _) = get_json(http, "/ready").await;
    assert_eq!(status, 200);

    let instance = start_instance(&gw, "inst-a", "prod", knows("aa:aa", "vps-a"));
    gw.wait_instances(1).await;
    let (status, health) = get_json(http, "/health").await;
    assert_eq!((status, &health["status"]), (200, &Value::from("degraded")));
    assert_eq!(reasons(&health), ["dhcp: lease file unreadable"]);
    failing.store(false, Ordering::Relaxed);
    let (_, health) = get_json(http, "/health").await;
    assert_eq!(health["status"], "healthy");

    // Draining: unhealthy (503) and not ready, and gRPC health says so.
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(channel(&gw).await);
    gateway.drain().await;
    let (status, health) = get_json(http, "/health").await;
    assert_eq!(
        (status, &health["status"]),
        (503, &Value::from("unhealthy"))
    );
    assert_eq!(reasons(&health), ["draining"]);
    let (status, ready) = get_json(http, "/ready").await;
    assert_eq!(status, 503);
    assert_eq!(reasons(&ready), ["draining"]);
    let answer = health_client
        .check(tonic_health::pb::HealthCheckRequest {
            service: "gatemesh.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    drop(instance);
    gw.stop().await;
}

#[tokio::test]
async fn grpc_health_serves_and_reflection_lists_the_gateway() {
    init_logs();
    let gw = TestGateway::start().await;
    eventually("the gateway serves", || gw.gateway.readiness().ready).await;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&gw).await);
    for service in ["", "gatemesh.v1.Gateway"] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel(&gw).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "gatemesh.v1.Gateway",
        "gatemesh.v1.GatewayAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }

    // Clients that speak only v1alpha (older grpcurl, some IDEs) too.
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaMessage;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaAnswer;
    let mut alpha = AlphaClient::new(channel(&gw).await);
    let request = AlphaRequest {
        host: String::new(),
        message_request: Some(AlphaMessage::ListServices(String::new())),
    };
    let answer = alpha
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1alpha reflection is served")
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(AlphaAnswer::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "gatemesh.v1.GatewayAdmin"),
        "{list:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn instance_health_and_metrics_follow_its_links_and_handlers() {
    init_logs();
    let gw = TestGateway::start().await;
    let (instance, metrics, http) = common::http::serve_instance(&gw, "inst-a", "prod").await;
    instance.wait_connected().await;
    gw.wait_instances(1).await;

    let (status, health) = get_json(http, "/health").await;
    assert_eq!((status, &health["status"]), (200, &Value::from("healthy")));
    assert_eq!(health["instance_id"], "inst-a");
    let link = &health["links"][0];
    assert_eq!(link["gateway"], gw.url());
    assert_eq!(link["connected"], true);
    assert_eq!(link["gateway_id"], "gw-test");
    assert_eq!(link["connects"], 1);

    let mesh = gw.gateway.mesh();
    for mac in ["aa:aa", "aa:aa", "zz:zz"] {
        let _ = mesh
            .call::<FindVpsByLease>(lease("10.0.0.1", mac))
            .first_valid()
            .await;
    }
    // The handler answered all three (a "not mine" is a valid answer).
    let (status, text) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "gatemesh_service_handler_calls_total",
            r#"method="FindVPSByLease",outcome="OK""#
        ),
        3.0
    );
    assert_eq!(metrics.calls("FindVPSByLease", "OK"), 3);
    assert_eq!(
        sample(&text, "gatemesh_service_handlers_in_flight", ""),
        0.0
    );
    let gateway = format!(r#"gateway="{}""#, gw.url());
    assert_eq!(sample(&text, "gatemesh_service_link_up", &gateway), 1.0);
    assert_eq!(
        sample(&text, "gatemesh_service_link_connects_total", &gateway),
        1.0
    );

    // Its only gateway gone, the instance is unhealthy.
    let url = gw.url();
    gw.stop().await;
    let mut watch = instance.links()[0].watch();
    watch.wait_for(|s| !s.connected).await.unwrap();
    let (status, health) = get_json(http, "/health").await;
    assert_eq!(
        (status, &health["status"]),
        (503, &Value::from("unhealthy"))
    );
    assert_eq!(health["links"][0]["connected"], false);
    let (_, text) = get(http, "/metrics").await;
    let gateway = format!(r#"gateway="{url}""#);
    assert_eq!(sample(&text, "gatemesh_service_link_up", &gateway), 0.0);
    assert_eq!(
        sample(&text, "gatemesh_service_link_disconnects_total", &gateway),
        1.0
    );
    instance.shutdown().await;
}
