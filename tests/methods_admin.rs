//! Gateway-served methods through the `GatewayAdmin` API: answered by the
//! gateway's own registry, with routes that make no sense for one gateway
//! refused, and counted in `/metrics`.

mod common;

use std::time::Duration;

use common::http::{get, sample, serve};
use common::{SECRET, TestGateway, config, knows, start_instance};
use gatemesh_gateway::Gateway;
use gatemesh_handlers::{Context, GatewayRegistry};
use gatemesh_proto::methods::{GetLeases, Ping};
use gatemesh_proto::{SECRET_METADATA_KEY, pb};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

type AdminClient = pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>;

async fn admin(gw: &TestGateway) -> AdminClient {
    AdminClient::connect(gw.url()).await.unwrap()
}

async fn call(
    client: &mut AdminClient,
    call: pb::CallRequest,
) -> Result<pb::CallResponse, tonic::Status> {
    let mut request = tonic::Request::new(call);
    request
        .metadata_mut()
        .insert(SECRET_METADATA_KEY, SECRET.parse().unwrap());
    client.call(request).await.map(|r| r.into_inner())
}

fn info_call() -> pb::CallRequest {
    pb::CallRequest {
        method: "GetGatewayInfo".into(),
        payload: pb::GetGatewayInfoRequest {}.encode_to_vec().into(),
        ..Default::default()
    }
}

fn payload(result: &pb::InstanceResult) -> &[u8] {
    match result.outcome.as_ref().unwrap() {
        pb::instance_result::Outcome::Payload(p) => p,
        pb::instance_result::Outcome::Status(s) => panic!("failed: {s:?}"),
    }
}

#[tokio::test]
async fn the_admin_api_calls_gateway_served_methods_on_the_gateway_itself() {
    let gw = TestGateway::start().await;
    let _one = start_instance(&gw, "prod-1", "prod", knows("m", "v"));
    gw.wait_instances(1).await;
    let mut client = admin(&gw).await;

    for strategy in [pb::Strategy::Unspecified, pb::Strategy::FirstValid] {
        let mut request = info_call();
        request.set_strategy(strategy);
        let response = call(&mut client, request).await.unwrap();
        assert_eq!(response.results.len(), 1, "{strategy:?}");
        let result = &response.results[0];
        assert_eq!(result.instance_id, "gw-test", "the gateway answered");
        let info = pb::GetGatewayInfoResponse::decode(payload(result)).unwrap();
        assert_eq!(info.gateway_id, "gw-test");
        assert_eq!(info.connected_instances, 1);
    }
}

#[tokio::test]
async fn routes_that_pick_instances_are_refused_for_gateway_methods() {
    let gw = TestGateway::start().await;
    let mut client = admin(&gw).await;
    let refused = [
        ("strategy all", {
            let mut c = info_call();
            c.set_strategy(pb::Strategy::All);
            c
        }),
        ("strategy one", {
            let mut c = info_call();
            c.set_strategy(pb::Strategy::One);
            c
        }),
        (
            "instance",
            pb::CallRequest {
                instance_id: "prod-1".into(),
                ..info_call()
            },
        ),
        (
            "environment",
            pb::CallRequest {
                environment: "prod".into(),
                ..info_call()
            },
        ),
    ];
    for (what, request) in refused {
        let status = call(&mut client, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status
                .message()
                .contains("GetGatewayInfo is served by the gateway"),
            "{what}: {}",
            status.message()
        );
    }
    // Counted once each, by method and outcome.
    let http = serve(&gw.gateway).await;
    let (_, body) = get(http, "/metrics").await;
    let refusals: f64 = ["all", "one", "first_valid"]
        .iter()
        .map(|s| {
            sample(
                &body,
                "gatemesh_gateway_calls_total",
                &format!("method=\"GetGatewayInfo\",strategy=\"{s}\",outcome=\"INVALID_ARGUMENT\""),
            )
        })
        .sum();
    assert_eq!(refusals, 4.0, "{body}");
}

/// `GetLeases` is in the catalogue but only a gateway with the DHCP manager
/// serves it: from the admin API and from an instance, a clear
/// `UNIMPLEMENTED` naming the method.
#[tokio::test]
async fn a_gateway_method_the_gateway_does_not_serve_is_unimplemented() {
    let gw = TestGateway::start().await;
    let instance = start_instance(&gw, "prod-1", "prod", knows("m", "v"));
    gw.wait_instances(1).await;
    instance.wait_connected().await;
    let mut client = admin(&gw).await;
    let request = pb::CallRequest {
        method: "GetLeases".into(),
        ..Default::default()
    };
    let status = call(&mut client, request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(
        status.message().contains("GetLeases"),
        "{}",
        status.message()
    );

    let err = instance
        .call::<GetLeases>(pb::GetLeasesRequest::default(), Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

/// A handler error and the caller's deadline travel back as the call's
/// status; the handler sees the deadline as cancellation.
#[tokio::test]
async fn gateway_handler_errors_and_deadlines_reach_the_admin_caller() {
    let mut registry = GatewayRegistry::new();
    registry
        .method::<GetLeases>(|ctx: Context, _req| async move {
            ctx.cancelled().await;
            Err(gatemesh_handlers::Status::internal(format!(
                "{:#}",
                "never seen"
            )))
        })
        .unwrap();
    let gateway = Gateway::with_handlers(config(), registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let mut client = admin(&gw).await;
    let request = pb::CallRequest {
        method: "GetLeases".into(),
        timeout_ms: 50,
        ..Default::default()
    };
    let status = call(&mut client, request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("GetLeases"),
        "{}",
        status.message()
    );
}

/// A gateway handler that panics fails that admin call with `INTERNAL`,
/// naming the method; the admin connection and the next call live on.
#[tokio::test]
async fn a_panicking_gateway_handler_fails_only_its_admin_call() {
    let mut registry = GatewayRegistry::new();
    registry
        .method::<GetLeases>(|_ctx: Context, _req| async move {
            if true {
                panic!("a handler bug");
            }
            Ok::<_, tonic::Status>(Default::default())
        })
        .unwrap();
    let gateway = Gateway::with_handlers(config(), registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let mut client = admin(&gw).await;
    let request = pb::CallRequest {
        method: "GetLeases".into(),
        ..Default::default()
    };
    let status = call(&mut client, request).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("GetLeases"),
        "{}",
        status.message()
    );
    // The same connection serves the next call.
    let answer = call(&mut client, info_call()).await.unwrap();
    assert!(!payload(&answer.results[0]).is_empty());
}

/// Instance-served methods still go to the instances.
#[tokio::test]
async fn instance_methods_still_go_to_instances() {
    let gw = TestGateway::start().await;
    let mut registry = gatemesh_handlers::InstanceRegistry::new();
    registry
        .method::<Ping>(|_ctx, req: pb::PingRequest| async move {
            Ok::<_, tonic::Status>(pb::PingResponse { text: req.text })
        })
        .unwrap();
    let _one = gatemesh_service::Instance::new(common::options("prod-1", "prod"), registry)
        .start([gw.url()]);
    gw.wait_instances(1).await;
    let mut client = admin(&gw).await;
    let mut request = pb::CallRequest {
        method: "Ping".into(),
        payload: pb::PingRequest { text: "hi".into() }.encode_to_vec().into(),
        ..Default::default()
    };
    request.set_strategy(pb::Strategy::All);
    let response = call(&mut client, request).await.unwrap();
    assert_eq!(response.results.len(), 1);
    assert_eq!(response.results[0].instance_id, "prod-1");
    let pong = pb::PingResponse::decode(payload(&response.results[0])).unwrap();
    assert_eq!(pong.text, "hi");
}
