//! Metadata travels with each call (issue #17): set by the caller
//! (`Call::metadata`, the admin API's gRPC headers, `Instance::call_with`),
//! read by the handler from its `Context`, in both directions; bounded and
//! validated, a bad frame being a protocol violation; and a peer that does
//! not know the field still works.

mod common;

use std::time::Duration;

use common::*;
use gatemesh_gateway::stats::Stats;
use gatemesh_gateway::{Gateway, Route, Strategy};
use gatemesh_handlers::metadata::MAX_ENTRIES;
use gatemesh_handlers::{Context, Metadata, MetadataError, Registry};
use gatemesh_proto::methods::{FindVpsByLease, GetLeases};
use gatemesh_proto::pb::gateway_message::Kind as GwKind;
use gatemesh_proto::pb::instance_message::Kind;
use gatemesh_proto::pb::{self, FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_proto::{Method, SECRET_METADATA_KEY};
use prost::Message;
use tokio::net::TcpListener;
use tonic::Code;

/// What a handler saw, as `k=v` pairs joined by `,`.
fn seen(ctx: &Context) -> String {
    ctx.metadata()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An instance whose answer is the metadata its handler saw.
fn echo_instance(gw: &TestGateway, id: &str) -> gatemesh_service::InstanceHandle {
    start_instance(
        gw,
        id,
        "dev",
        |ctx: Context, _req: FindVpsByLeaseRequest| {
            let vps_id = format!("seen:{}", seen(&ctx));
            async move {
                Ok(FindVpsByLeaseResponse {
                    vps_id,
                    organization_id: String::new(),
                })
            }
        },
    )
}

#[tokio::test]
async fn metadata_set_on_a_mesh_call_reaches_the_instance_handler() {
    let gw = TestGateway::start().await;
    let _instance = echo_instance(&gw, "dev-1");
    gw.wait_instances(1).await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
        .metadata("x-request-id", "r-42")
        .unwrap()
        .metadata("tenant", "acme")
        .unwrap()
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "seen:x-request-id=r-42,tenant=acme");
    // Without metadata the handler sees none.
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "seen:");
    // Raw calls carry the route's metadata, with every strategy.
    let mut metadata = Metadata::new();
    metadata.insert("x-request-id", "raw").unwrap();
    for strategy in [Strategy::FirstValid, Strategy::All, Strategy::One] {
        let route = Route {
            strategy,
            metadata: metadata.clone(),
            ..Route::default()
        };
        let payload = lease("10.0.0.1", "aa").encode_to_vec().into();
        let replies = gw
            .gateway
            .mesh()
            .call_raw(FindVpsByLease::NAME, payload, &route)
            .await
            .unwrap();
        let vps_id = FindVpsByLeaseResponse::decode(replies[0].outcome.clone().unwrap())
            .unwrap()
            .vps_id;
        assert_eq!(vps_id, "seen:x-request-id=raw", "{strategy:?}");
    }
}

#[tokio::test]
async fn metadata_set_by_an_instance_reaches_the_gateway_handler() {
    let mut registry = Registry::new();
    registry
        .method::<GetLeases>(|ctx: Context, _req| {
            let last_error = seen(&ctx);
            async move {
                Ok::<_, tonic::Status>(pb::GetLeasesResponse {
                    last_error,
                    ..Default::default()
                })
            }
        })
        .unwrap();
    let gateway = Gateway::with_handlers(config(), registry).unwrap();
    let gw = TestGateway::serve(gateway, TcpListener::bind("127.0.0.1:0").await.unwrap());
    let instance = echo_instance(&gw, "dev-1");
    instance.wait_connected().await;
    let mut metadata = Metadata::new();
    metadata.insert("x-request-id", "from-instance").unwrap();
    let answer = instance
        .call_with::<GetLeases>(Default::default(), Duration::from_secs(5), metadata)
        .await
        .unwrap();
    assert_eq!(answer.last_error, "x-request-id=from-instance");
    let answer = instance
        .call::<GetLeases>(Default::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.last_error, "");
}

#[tokio::test]
async fn the_admin_api_passes_the_callers_grpc_headers_on_but_not_the_transports() {
    // Only the headers the operator names cross (and the trace context):
    // see tests/trust_edges.rs for what never does.
    let mut config = config();
    config.forward =
        gatemesh_gateway::headers::ForwardHeaders::parse("x-request-id,x-long").unwrap();
    let gw = TestGateway::start_with(config).await;
    let _instance = echo_instance(&gw, "dev-1");
    gw.wait_instances(1).await;
    let mut client = pb::gateway_admin_client::GatewayAdminClient::connect(gw.url())
        .await
        .unwrap();
    let call = pb::CallRequest {
        method: FindVpsByLease::NAME.into(),
        payload: lease("10.0.0.1", "aa").encode_to_vec().into(),
        timeout_ms: 5_000,
        ..Default::default()
    };
    let mut request = tonic::Request::new(call.clone());
    request
        .metadata_mut()
        .insert(SECRET_METADATA_KEY, SECRET.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", "admin-7".parse().unwrap());
    let response = client.call(request).await.unwrap().into_inner();
    let Some(pb::instance_result::Outcome::Payload(p)) = &response.results[0].outcome else {
        panic!("{response:?}")
    };
    let vps_id = FindVpsByLeaseResponse::decode(p.clone()).unwrap().vps_id;
    // No secret, user-agent, te, content-type or grpc-timeout: only what the
    // caller meant for the handler.
    assert_eq!(vps_id, "seen:x-request-id=admin-7");

    // A header that is no valid metadata key is refused with a clear status.
    let mut request = tonic::Request::new(call);
    request
        .metadata_mut()
        .insert(SECRET_METADATA_KEY, SECRET.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-long", "v".repeat(5000).parse().unwrap());
    let status = client.call(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("metadata value of \"x-long\""),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn bad_metadata_is_refused_by_the_caller_and_a_violation_on_the_wire() {
    let gw = TestGateway::start().await;
    let mesh = gw.gateway.mesh();
    let refused = mesh
        .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
        .metadata("Not A Key", "v");
    assert!(matches!(refused, Err(MetadataError::BadKey { .. })));
    let mut many = Metadata::new();
    for i in 0..MAX_ENTRIES {
        many.insert(format!("k{i}"), "v").unwrap();
    }
    assert_eq!(
        many.insert("one-more", "v"),
        Err(MetadataError::TooManyEntries)
    );

    // A raw peer sends the gateway requests whose metadata breaks the rules:
    // each is answered INVALID_ARGUMENT and counted as a violation.
    let mut peer = RawPeer::connect(&gw.url(), "raw-1", "dev", &[])
        .await
        .unwrap();
    assert!(matches!(peer.next().await, Some(GwKind::Welcome(_))));
    let bad = [
        vec![("Upper", "v")],
        vec![("k", "new\nline")],
        vec![("k", "1"), ("k", "2")],
    ];
    for (i, pairs) in bad.iter().enumerate() {
        let metadata = pairs
            .iter()
            .map(|(k, v)| pb::MetadataEntry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect();
        let request = pb::Request {
            id: i as u64 + 1,
            method: "GetGatewayInfo".into(),
            payload: Default::default(),
            timeout_ms: 5_000,
            metadata,
        };
        peer.tx
            .send(pb::InstanceMessage {
                kind: Some(Kind::Request(request)),
            })
            .await
            .unwrap();
        let status = loop {
            match peer.next().await {
                Some(GwKind::Response(r)) => match r.result {
                    Some(pb::response::Result::Status(s)) => break s,
                    other => panic!("{other:?}"),
                },
                Some(_) => continue,
                None => panic!("stream ended"),
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message.starts_with("metadata"), "{}", status.message);
    }
    eventually("three violations counted", || {
        Stats::get(&gw.gateway.stats().violations) == 3
    })
    .await;
}

/// `Request` as peers built before the field existed know it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldRequest {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(bytes = "vec", tag = "3")]
    payload: Vec<u8>,
    #[prost(uint32, tag = "4")]
    timeout_ms: u32,
}

#[tokio::test]
async fn a_peer_without_the_field_still_works_both_ways() {
    // An old peer reads a request that carries metadata: it skips the field.
    let new = pb::Request {
        id: 7,
        method: "FindVPSByLease".into(),
        payload: vec![1, 2, 3].into(),
        timeout_ms: 99,
        metadata: vec![pb::MetadataEntry {
            key: "traceparent".into(),
            value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        }],
    };
    let old = OldRequest::decode(new.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        (old.id, old.method.as_str(), old.timeout_ms),
        (7, "FindVPSByLease", 99)
    );
    assert_eq!(old.payload, vec![1, 2, 3]);

    // An old peer's request (no field) is served, and a raw peer that never
    // sends metadata answers a call that carries some.
    let gw = TestGateway::start().await;
    let mut peer = RawPeer::connect(&gw.url(), "old-1", "dev", &[FindVpsByLease::NAME])
        .await
        .unwrap();
    assert!(matches!(peer.next().await, Some(GwKind::Welcome(_))));
    let old_request = OldRequest {
        id: 1,
        method: "GetGatewayInfo".into(),
        payload: Vec::new(),
        timeout_ms: 5_000,
    };
    let as_new = pb::Request::decode(old_request.encode_to_vec().as_slice()).unwrap();
    assert!(as_new.metadata.is_empty());
    peer.tx
        .send(pb::InstanceMessage {
            kind: Some(Kind::Request(as_new)),
        })
        .await
        .unwrap();
    loop {
        match peer.next().await {
            Some(GwKind::Response(r)) => {
                assert!(
                    matches!(r.result, Some(pb::response::Result::Payload(_))),
                    "{r:?}"
                );
                break;
            }
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    }
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
            .metadata("x-request-id", "to-old")
            .unwrap()
            .first_valid()
            .await
    });
    let request = loop {
        match peer.next().await {
            Some(GwKind::Request(r)) => break r,
            Some(_) => continue,
            None => panic!("stream ended"),
        }
    };
    let answer = FindVpsByLeaseResponse {
        vps_id: "vps-old".into(),
        organization_id: String::new(),
    };
    peer.tx
        .send(pb::InstanceMessage {
            kind: Some(Kind::Response(pb::Response {
                id: request.id,
                result: Some(pb::response::Result::Payload(answer.encode_to_vec().into())),
            })),
        })
        .await
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap().value.vps_id, "vps-old");
}
