//! A call's life at its edges: a handler that panics, an instance that
//! fails while others say "not mine", a call that must not run twice, one
//! named instance, deadlines out of range, a drain racing a registration.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use gatemesh_gateway::call::Route;
use gatemesh_gateway::{CallError, Strategy};
use gatemesh_handlers::Status;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_proto::pb::FindVpsByLeaseResponse;
use gatemesh_proto::pb::gateway_message::Kind;
use gatemesh_proto::pb::instance_message::Kind as Out;
use tokio::sync::Notify;
use tonic::Code;

/// Long enough that a call which waits for its deadline fails the test's
/// assertions on the code rather than passing by luck.
const PATIENT: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_panicking_handler_is_answered_internal_at_once() {
    let gw = TestGateway::start().await;
    let _inst = start_instance(&gw, "buggy", "prod", |_ctx, req| async move {
        if req.mac == "boom" {
            panic!("a handler bug");
        }
        Ok(FindVpsByLeaseResponse::default())
    });
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    let err = mesh
        .call::<FindVpsByLease>(lease("10.0.0.1", "boom"))
        .timeout(PATIENT)
        .first_valid()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err}");
    // The instance is still whole: the next call is answered.
    let err = mesh
        .call::<FindVpsByLease>(lease("10.0.0.1", "fine"))
        .timeout(PATIENT)
        .first_valid()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn first_valid_says_the_holder_failed_instead_of_not_found() {
    let gw = TestGateway::start().await;
    let _prod = start_instance(&gw, "prod-1", "prod", |_ctx, _req| async move {
        Err::<FindVpsByLeaseResponse, _>(Status::unavailable("inventory database down"))
    });
    let _dev = start_instance(&gw, "dev-1", "dev", knows("aa", "vps-dev"));
    let _beta = start_instance(&gw, "beta-1", "beta", knows("aa", "vps-beta"));
    gw.wait_instances(3).await;
    let err = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.2", "bb"))
        .timeout(PATIENT)
        .first_valid()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let CallError::NoValidAnswer {
        asked,
        not_mine,
        failed,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!((*asked, *not_mine, failed.len()), (3, 2, 1));
    let text = err.to_string();
    assert!(
        text.contains("prod-1") && text.contains("inventory database down"),
        "{text}"
    );
    assert!(text.contains("2 answered not mine"), "{text}");
}

#[tokio::test]
async fn first_valid_says_the_holder_disconnected() {
    let gw = TestGateway::start().await;
    let started = Arc::new(Notify::new());
    let holder = {
        let started = started.clone();
        start_instance(&gw, "prod-1", "prod", move |_ctx, _req| {
            let started = started.clone();
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
                Ok(FindVpsByLeaseResponse::default())
            }
        })
    };
    let release = Arc::new(Notify::new());
    let _dev = {
        let release = release.clone();
        start_instance(&gw, "dev-1", "dev", move |_ctx, _req| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(FindVpsByLeaseResponse::default())
            }
        })
    };
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.3", "cc"))
            .timeout(PATIENT)
            .first_valid()
            .await
    });
    started.notified().await;
    holder.kill();
    gw.wait_instances(1).await;
    release.notify_one();
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("prod-1 disconnected before answering")
            && text.contains("1 answered not mine"),
        "{text}"
    );
}

#[tokio::test]
async fn a_named_instance_returns_its_answer_whatever_the_strategy() {
    let gw = TestGateway::start().await;
    let _dev = start_instance(&gw, "dev-1", "dev", knows("aa", "vps-dev"));
    gw.wait_instances(1).await;
    let payload: Bytes = prost::Message::encode_to_vec(&lease("10.0.0.4", "zz")).into();
    let route = Route {
        strategy: Strategy::FirstValid,
        instance: Some("dev-1".into()),
        ..Route::default()
    };
    let replies = gw
        .gateway
        .mesh()
        .call_raw("FindVPSByLease", payload, &route)
        .await
        .expect("the instance's own answer, not mine included");
    assert_eq!(replies.len(), 1);
    assert_eq!(&*replies[0].instance, "dev-1");
    let answer: FindVpsByLeaseResponse =
        prost::Message::decode(replies[0].outcome.clone().unwrap()).unwrap();
    assert!(answer.vps_id.is_empty());
}

#[tokio::test]
async fn a_timeout_out_of_range_saturates() {
    let gw = TestGateway::start().await;
    let _inst = start_instance(&gw, "i", "prod", knows("aa", "vps-1"));
    gw.wait_instances(1).await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.5", "aa"))
        .timeout(Duration::MAX)
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "vps-1");
}

/// Two raw instances serving a method outside the catalogue (so not
/// declared idempotent); returns them and the `one` call in flight.
async fn two_raw_peers(
    gw: &TestGateway,
) -> (
    RawPeer,
    RawPeer,
    tokio::task::JoinHandle<Result<Vec<gatemesh_gateway::Reply<Bytes>>, CallError>>,
) {
    let a = RawPeer::connect(&gw.url(), "a", "prod", &["Charge"])
        .await
        .unwrap();
    let b = RawPeer::connect(&gw.url(), "b", "prod", &["Charge"])
        .await
        .unwrap();
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        let route = Route {
            strategy: Strategy::One,
            timeout: Some(PATIENT),
            ..Route::default()
        };
        mesh.call_raw("Charge", Bytes::from_static(b"once"), &route)
            .await
    });
    (a, b, call)
}

async fn next_request(peer: &mut RawPeer) -> pb::Request {
    loop {
        match peer.next().await {
            Some(Kind::Request(r)) => return r,
            Some(_) => continue,
            None => panic!("the stream ended"),
        }
    }
}

/// The first request either peer receives, and which peer got it.
async fn first_request(a: &mut RawPeer, b: &mut RawPeer) -> (bool, pb::Request) {
    tokio::select! {
        r = next_request(a) => (true, r),
        r = next_request(b) => (false, r),
    }
}

#[tokio::test]
async fn one_never_runs_a_call_twice_after_it_was_sent() {
    let gw = TestGateway::start().await;
    let (mut a, mut b, call) = two_raw_peers(&gw).await;
    let (a_got_it, request) = first_request(&mut a, &mut b).await;
    assert_eq!(request.payload, Bytes::from_static(b"once"));
    let (gone, mut other) = if a_got_it { (a, b) } else { (b, a) };
    drop(gone);
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::Disconnected(_)), "{err:?}");
    assert!(
        err.to_string().contains("before answering"),
        "the error must not claim the handler never ran: {err}"
    );
    // The other instance never saw the call: the next request it gets is
    // a new one.
    let other_id = if a_got_it { "b" } else { "a" };
    let mesh = gw.gateway.mesh();
    let probe = tokio::spawn(async move {
        let route = Route {
            strategy: Strategy::One,
            instance: Some(other_id.into()),
            timeout: Some(PATIENT),
            ..Route::default()
        };
        mesh.call_raw("Charge", Bytes::from_static(b"probe"), &route)
            .await
    });
    let next = next_request(&mut other).await;
    assert_eq!(next.payload, Bytes::from_static(b"probe"));
    drop(other);
    let _ = probe.await;
}

#[tokio::test]
async fn one_sends_a_refused_call_elsewhere() {
    let gw = TestGateway::start().await;
    let (mut a, mut b, call) = two_raw_peers(&gw).await;
    let (a_got_it, request) = first_request(&mut a, &mut b).await;
    let (first, mut second) = if a_got_it { (a, b) } else { (b, a) };
    let refusal = pb::Response {
        id: request.id,
        result: Some(pb::response::Result::Status(pb::Status::refused(
            Code::ResourceExhausted,
            "too many requests in flight",
        ))),
    };
    first
        .tx
        .send(pb::InstanceMessage {
            kind: Some(Out::Response(refusal)),
        })
        .await
        .unwrap();
    let retried = next_request(&mut second).await;
    assert_eq!(retried.payload, Bytes::from_static(b"once"));
    let answer = pb::Response {
        id: retried.id,
        result: Some(pb::response::Result::Payload(Bytes::from_static(b"done"))),
    };
    second
        .tx
        .send(pb::InstanceMessage {
            kind: Some(Out::Response(answer)),
        })
        .await
        .unwrap();
    let replies = call.await.unwrap().unwrap();
    assert_eq!(
        replies[0].outcome.as_ref().unwrap(),
        &Bytes::from_static(b"done")
    );
}

#[tokio::test]
async fn answers_queued_when_a_drain_closes_the_stream_arrive_before_the_goaway() {
    // Calls from an instance to the gateway, answered while the drain
    // closes the stream: every answer must reach the instance, then the
    // GoAway.
    let gw = TestGateway::start().await;
    let mut peer = RawPeer::connect(&gw.url(), "asker", "prod", &[])
        .await
        .unwrap();
    gw.wait_instances(1).await;
    const N: u64 = 50;
    for id in 1..=N {
        let request = pb::Request {
            id,
            method: "GetGatewayInfo".into(),
            payload: Bytes::new(),
            timeout_ms: 60_000,
            metadata: Vec::new(),
        };
        peer.tx
            .send(pb::InstanceMessage {
                kind: Some(Out::Request(request)),
            })
            .await
            .unwrap();
    }
    // Every request reached its handler before the drain begins; their
    // answers are queued or on their way when the stream closes.
    eventually("the gateway took every request", || {
        gw.gateway.served().calls("GetGatewayInfo", "OK") == N
    })
    .await;
    let gateway = gw.gateway.clone();
    let drain = tokio::spawn(async move { gateway.drain().await });
    let mut answered = 0;
    let mut saw_goaway = false;
    while let Some(kind) = peer.next().await {
        match kind {
            Kind::Response(r) => {
                assert!(!saw_goaway, "answer {} after the GoAway", r.id);
                assert!(matches!(
                    r.result,
                    Some(pb::response::Result::Payload(_))
                        | Some(pb::response::Result::Status(pb::Status { code: 14, .. }))
                ));
                answered += 1;
            }
            Kind::GoAway(_) => saw_goaway = true,
            _ => {}
        }
    }
    drain.await.unwrap();
    assert!(saw_goaway);
    assert_eq!(
        answered, N,
        "every request got its answer before the stream ended"
    );
}
