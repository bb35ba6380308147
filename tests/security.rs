//! Strict frames (issue 5), each rule driven by a scripted raw peer:
//! hello first and once, answers only for ids sent to that very stream,
//! duplicate ids, unknown and badly named methods, payload and frame
//! limits, and the disconnection of a peer that keeps breaking the rules.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use gatemesh_gateway::stats::Stats;
use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::{Context, Registry, RequestHandler, Status};
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::gateway_message::Kind as GwKind;
use gatemesh_proto::pb::instance_message::Kind;
use gatemesh_proto::pb::{self, FindVpsByLeaseResponse};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

const FIND: &str = "FindVPSByLease";
/// A gateway method that runs until it is cancelled.
const SLOW: &str = "Slow";

struct Slow;

#[async_trait]
impl RequestHandler for Slow {
    async fn handle(&self, ctx: Context, _: &str, _: Bytes) -> Result<Bytes, Status> {
        ctx.cancelled().await;
        Err(Status::new(Code::Cancelled, "cancelled"))
    }
}

fn small_config() -> GatewayConfig {
    let mut config = config();
    config.max_message_bytes = 1024;
    config
}

async fn gateway_with_slow(config: GatewayConfig) -> TestGateway {
    let mut registry = Registry::new();
    registry.register_raw(SLOW, Slow).unwrap();
    let gateway = Gateway::with_handlers(config, registry).unwrap();
    TestGateway::serve(gateway, TcpListener::bind("127.0.0.1:0").await.unwrap())
}

fn violations(gw: &TestGateway) -> u64 {
    Stats::get(&gw.gateway.stats().violations)
}

async fn send(peer: &RawPeer, kind: Kind) {
    peer.tx
        .send(pb::InstanceMessage { kind: Some(kind) })
        .await
        .unwrap();
}

fn request(id: u64, method: &str, payload: Vec<u8>) -> Kind {
    Kind::Request(pb::Request {
        id,
        method: method.into(),
        payload: payload.into(),
        timeout_ms: 5_000,
        metadata: Vec::new(),
    })
}

fn answer(id: u64, vps_id: &str) -> Kind {
    let payload = FindVpsByLeaseResponse {
        vps_id: vps_id.into(),
        organization_id: "org".into(),
    };
    Kind::Response(pb::Response {
        id,
        result: Some(pb::response::Result::Payload(
            payload.encode_to_vec().into(),
        )),
    })
}

/// A raw peer past its welcome.
async fn registered(gw: &TestGateway, id: &str, methods: &[&str]) -> RawPeer {
    let mut peer = RawPeer::connect(&gw.url(), id, "dev", methods)
        .await
        .unwrap();
    assert!(matches!(peer.next().await, Some(GwKind::Welcome(_))));
    peer
}

/// The next response the gateway sends the peer, as (id, status code).
async fn next_response(peer: &mut RawPeer) -> (u64, Option<Code>) {
    loop {
        match peer.next().await {
            Some(GwKind::Response(r)) => {
                let code = match r.result {
                    Some(pb::response::Result::Status(s)) => Some(s.code()),
                    _ => None,
                };
                return (r.id, code);
            }
            Some(_) => continue,
            None => panic!("stream ended before a response"),
        }
    }
}

/// The next request the gateway sends the peer.
async fn next_request(peer: &mut RawPeer) -> pb::Request {
    loop {
        match peer.next().await {
            Some(GwKind::Request(r)) => return r,
            Some(_) => continue,
            None => panic!("stream ended before a request"),
        }
    }
}

/// How the gateway ended the peer's stream: the status, if it gave one.
async fn end_of_stream(peer: &mut RawPeer) -> Option<tonic::Status> {
    loop {
        match peer.inbound.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

#[tokio::test]
async fn the_first_message_must_be_hello() {
    let gw = TestGateway::start().await;
    let mut client = pb::gateway_client::GatewayClient::connect(gw.url())
        .await
        .unwrap();
    let ping = pb::InstanceMessage {
        kind: Some(Kind::Ping(pb::Ping { nonce: 1 })),
    };
    let mut request = tonic::Request::new(tokio_stream::StreamExt::chain(
        tokio_stream::iter([ping]),
        tokio_stream::pending(),
    ));
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
    let err = client.register_gateway(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(gw.gateway.instances().len(), 0);
}

#[tokio::test]
async fn a_second_hello_is_counted_and_changes_nothing() {
    let gw = TestGateway::start().await;
    let mut peer = registered(&gw, "once", &[FIND]).await;
    let hello = pb::Hello {
        instance_id: "someone-else".into(),
        environment: "prod".into(),
        version: "x".into(),
        methods: vec!["Other".into()],
        protocol_version: gatemesh_proto::PROTOCOL_VERSION,
    };
    send(&peer, Kind::Hello(hello)).await;
    eventually("the second hello is counted", || violations(&gw) == 1).await;
    let only = gw.gateway.instances().snapshot();
    assert_eq!(only.len(), 1);
    assert_eq!(&**only[0].id(), "once");
    // The stream still works under its first identity.
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.1", "m"))
            .to("once")
            .await
    });
    let req = next_request(&mut peer).await;
    send(&peer, answer(req.id, "vps-1")).await;
    assert_eq!(call.await.unwrap().unwrap().value.vps_id, "vps-1");
}

#[tokio::test]
async fn an_answer_for_another_streams_call_is_dropped_and_counted() {
    let gw = TestGateway::start().await;
    let mut a = registered(&gw, "a", &[FIND]).await;
    let b = registered(&gw, "b", &[FIND]).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.2", "m"))
            .timeout(Duration::from_secs(30))
            .to("a")
            .await
    });
    let req = next_request(&mut a).await;
    // B answers (and cancels) the id the gateway sent to A.
    send(&b, answer(req.id, "vps-forged")).await;
    send(
        &b,
        Kind::Cancel(pb::Cancel {
            id: req.id,
            reason: "forged".into(),
        }),
    )
    .await;
    eventually("B's forged answer and cancel are counted", || {
        violations(&gw) == 1 && Stats::get(&gw.gateway.stats().stray_cancels) == 1
    })
    .await;
    assert!(!call.is_finished(), "A's call is still waiting for A");
    send(&a, answer(req.id, "vps-real")).await;
    let answer = call.await.unwrap().unwrap();
    assert_eq!(answer.value.vps_id, "vps-real");
    assert_eq!(&*answer.instance, "a");
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn a_duplicate_request_id_gets_invalid_argument() {
    let gw = gateway_with_slow(config()).await;
    let mut peer = registered(&gw, "dup", &[]).await;
    send(&peer, request(7, SLOW, vec![])).await;
    send(&peer, request(7, SLOW, vec![])).await;
    assert_eq!(
        next_response(&mut peer).await,
        (7, Some(Code::InvalidArgument))
    );
    eventually("the duplicate is counted", || violations(&gw) == 1).await;
    // The first request is still running; cancelling it ends it quietly.
    send(
        &peer,
        Kind::Cancel(pb::Cancel {
            id: 7,
            reason: "done".into(),
        }),
    )
    .await;
    let only = gw.gateway.instances().snapshot();
    eventually("the first request ends", || {
        only[0].conn.dispatcher().in_flight() == 0
    })
    .await;
}

#[tokio::test]
async fn unknown_methods_are_unimplemented_and_bad_names_invalid() {
    let gw = TestGateway::start().await;
    let mut peer = registered(&gw, "names", &[]).await;
    send(&peer, request(1, "NoSuchMethod", vec![])).await;
    assert_eq!(
        next_response(&mut peer).await,
        (1, Some(Code::Unimplemented))
    );
    assert_eq!(violations(&gw), 0, "an unknown method is not a violation");
    send(&peer, request(2, "", vec![])).await;
    assert_eq!(
        next_response(&mut peer).await,
        (2, Some(Code::InvalidArgument))
    );
    send(&peer, request(3, &"x".repeat(129), vec![])).await;
    assert_eq!(
        next_response(&mut peer).await,
        (3, Some(Code::InvalidArgument))
    );
    eventually("both bad names are counted", || violations(&gw) == 2).await;
}

#[tokio::test]
async fn payloads_over_the_limit_get_resource_exhausted_both_ways() {
    let gw = TestGateway::start_with(small_config()).await;
    let mut peer = registered(&gw, "big", &[FIND]).await;
    // A request from the instance.
    send(&peer, request(1, "GetGatewayInfo", vec![0; 2048])).await;
    assert_eq!(
        next_response(&mut peer).await,
        (1, Some(Code::ResourceExhausted))
    );
    // An answer from the instance.
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.3", "m"))
            .to("big")
            .await
    });
    let req = next_request(&mut peer).await;
    send(
        &peer,
        Kind::Response(pb::Response {
            id: req.id,
            result: Some(pb::response::Result::Payload(vec![0; 2048].into())),
        }),
    )
    .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn a_frame_over_the_grpc_limit_ends_that_stream_clearly_and_nothing_else() {
    let gw = TestGateway::start_with(small_config()).await;
    let mut bystander = registered(&gw, "bystander", &[FIND]).await;
    let mut peer = registered(&gw, "huge", &[FIND]).await;
    // Past the gRPC decode limit (payload limit plus the envelope's room).
    send(&peer, request(1, "GetGatewayInfo", vec![0; 256 * 1024])).await;
    let status = end_of_stream(&mut peer)
        .await
        .expect("a status, not a clean end");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("frame refused"), "{status:?}");
    gw.wait_instances(1).await;
    // The gateway goes on serving the other instance.
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.4", "m"))
            .to("bystander")
            .await
    });
    let req = next_request(&mut bystander).await;
    send(&bystander, answer(req.id, "vps-4")).await;
    assert_eq!(call.await.unwrap().unwrap().value.vps_id, "vps-4");
}

#[tokio::test]
async fn a_peer_that_keeps_sending_garbage_is_disconnected() {
    let gw = TestGateway::start().await;
    let mut peer = registered(&gw, "garbage", &[FIND]).await;
    for _ in 0..20 {
        // An empty frame, then a response nobody asked for.
        if peer
            .tx
            .send(pb::InstanceMessage { kind: None })
            .await
            .is_err()
        {
            break;
        }
        let _ = peer
            .tx
            .send(pb::InstanceMessage {
                kind: Some(answer(999_999, "x")),
            })
            .await;
    }
    let status = end_of_stream(&mut peer)
        .await
        .expect("a status, not a clean end");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("16 protocol violations"),
        "{status:?}"
    );
    gw.wait_instances(0).await;
    assert!(violations(&gw) >= 16);
    // Others can still register.
    registered(&gw, "next", &[FIND]).await;
}

#[tokio::test]
async fn ids_zero_are_violations() {
    let gw = TestGateway::start().await;
    let peer = registered(&gw, "zero", &[FIND]).await;
    send(&peer, request(0, "GetGatewayInfo", vec![])).await;
    send(
        &peer,
        Kind::Cancel(pb::Cancel {
            id: 0,
            reason: String::new(),
        }),
    )
    .await;
    send(&peer, answer(0, "x")).await;
    eventually("three violations", || violations(&gw) == 3).await;
}

#[tokio::test]
async fn an_instance_answer_over_the_limit_fails_that_call_and_keeps_the_link() {
    let gw = TestGateway::start_with(small_config()).await;
    let instance = start_instance(
        &gw,
        "verbose",
        "prod",
        |_ctx, req: pb::FindVpsByLeaseRequest| async move {
            // Far past the gateway's gRPC frame limit when asked for "big".
            let size = if req.mac == "big" { 512 * 1024 } else { 4 };
            Ok(FindVpsByLeaseResponse {
                vps_id: "v".repeat(size),
                organization_id: "org".into(),
            })
        },
    );
    gw.wait_instances(1).await;
    let err = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.5", "big"))
        .to("verbose")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.to_string().contains("exceeds the limit of 1024 bytes"),
        "{err}"
    );
    // The same stream still answers.
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.5", "small"))
        .to("verbose")
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "vvvv");
    assert_eq!(instance.status()[0].connects, 1, "the link never dropped");
}
