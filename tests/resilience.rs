//! Lifecycle and resilience (issue 4): liveness on both sides, duplicate
//! ids, slow and stuck peers, graceful drain, several gateways, limits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use gatemesh_gateway::{CallError, Route, Strategy};
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::gateway_message::Kind;
use gatemesh_proto::pb::{self, FindVpsByLeaseResponse};
use tokio::sync::Notify;
use tonic::Code;

const FIND: &str = "FindVPSByLease";

fn fast_config() -> gatemesh_gateway::GatewayConfig {
    let mut c = config();
    c.heartbeat_interval_ms = 50;
    c.max_missed_heartbeats = 3;
    c
}

#[tokio::test]
async fn a_re_registering_id_replaces_the_live_stream_and_old_cleanup_keeps_the_new() {
    let gw = TestGateway::start().await;
    let mut old = RawPeer::connect(&gw.url(), "twin", "prod", &[FIND])
        .await
        .unwrap();
    assert!(matches!(old.next().await, Some(Kind::Welcome(_))));
    gw.wait_instances(1).await;
    let old_conn = gw.gateway.instances().get("twin").unwrap().conn_id();

    let new = start_instance(&gw, "twin", "prod", knows("m", "vps-new"));
    new.wait_connected().await;
    // The old stream is told why and ends.
    match old.next().await {
        Some(Kind::GoAway(g)) => assert!(g.reason.contains("replaced"), "{}", g.reason),
        other => panic!("expected go_away, got {other:?}"),
    }
    assert!(old.next().await.is_none(), "old stream ended");
    drop(old);
    // The old stream's cleanup has run (its disconnect is counted) and the
    // new stream is still the one registered, and it answers.
    let stats = gw.gateway.stats().clone();
    eventually("old stream cleaned up", || {
        gatemesh_gateway::stats::Stats::get(&stats.disconnects) == 1
    })
    .await;
    let current = gw.gateway.instances().get("twin").unwrap();
    assert_ne!(current.conn_id(), old_conn);
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "vps-new");
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_removed_and_its_calls_fail_at_once() {
    let gw = TestGateway::start_with(fast_config()).await;
    // Registers, then never sends another frame (and never reads).
    let _mute = RawPeer::connect(&gw.url(), "mute", "dev", &[FIND])
        .await
        .unwrap();
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("1", "m"))
            .timeout(Duration::from_secs(3600))
            .first_valid()
            .await
    });
    gw.wait_instances(0).await;
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::Disconnected(_)), "{err:?}");
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn a_peer_that_never_reads_fails_fast_does_not_slow_others_and_is_disconnected() {
    let mut config = config();
    config.queue_capacity = 4;
    config.stuck_timeout_ms = 300;
    config.heartbeat_interval_ms = 50;
    // Only the stuck rule may remove it, not the liveness rule.
    config.max_missed_heartbeats = 100_000;
    let gw = TestGateway::start_with(config).await;
    // Reads nothing after hello: HTTP/2 flow control backs up into its queue.
    let stuck = RawPeer::connect(&gw.url(), "stuck", "beta", &[FIND])
        .await
        .unwrap();
    let _good = start_instance(&gw, "good", "prod", knows("m", "vps-1"));
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    // Large requests fill the stream's flow-control window, then its queue.
    let big = Bytes::from(vec![0u8; 1024 * 1024]);
    let to_stuck = Route {
        strategy: Strategy::One,
        instance: Some("stuck".into()),
        timeout: Some(Duration::from_millis(50)),
        ..Route::default()
    };
    let mut overloaded = None;
    for _ in 0..64 {
        match mesh.call_raw(FIND, big.clone(), &to_stuck).await {
            Err(e @ CallError::Overloaded(_)) => {
                overloaded = Some(e);
                break;
            }
            Err(CallError::DeadlineExceeded(_)) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    let overloaded = overloaded.expect("the queue of a peer that never reads fills up");
    assert_eq!(overloaded.code(), Code::ResourceExhausted);
    // first_valid still gets its answer from the healthy instance.
    let answer = mesh
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(&*answer.instance, "good");
    // Stuck past the limit: disconnected.
    gw.gateway
        .instances()
        .wait_until(|i| i.get("stuck").is_none())
        .await;
    assert_eq!(gw.gateway.instances().len(), 1);
    drop(stuck);
}

#[tokio::test]
async fn a_blackholed_connection_is_dropped_by_both_sides_and_the_instance_comes_back() {
    let gw = TestGateway::start_with(fast_config()).await;
    let proxy = Proxy::start(gw.addr).await;
    let mut registry = gatemesh_handlers::Registry::new();
    registry
        .method::<FindVpsByLease>(knows("m", "vps-1"))
        .unwrap();
    let instance =
        gatemesh_service::Instance::new(options("far", "prod"), registry).start([proxy.url()]);
    instance.wait_connects(1).await;
    gw.wait_instances(1).await;
    let first_conn = gw.gateway.instances().get("far").unwrap().conn_id();

    proxy.blackhole_existing();
    // The instance notices the silence and dials again (through a fresh,
    // working connection); the gateway drops the silent stream.
    instance.wait_connects(2).await;
    gw.gateway
        .instances()
        .wait_until(|i| i.get("far").is_some_and(|p| p.conn_id() != first_conn))
        .await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(&*answer.instance, "far");
    let status = &instance.status()[0];
    assert!(status.connected);
}

#[tokio::test]
async fn an_instance_refuses_work_beyond_its_concurrency_limit() {
    let gw = TestGateway::start().await;
    let started = Arc::new(Notify::new());
    let mut options = options("busy", "prod");
    options.max_concurrency = 2;
    let mut registry = gatemesh_handlers::Registry::new();
    let s = started.clone();
    registry
        .method::<FindVpsByLease>(move |_ctx, _req| {
            let s = s.clone();
            async move {
                s.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, tonic::Status>(FindVpsByLeaseResponse::default())
            }
        })
        .unwrap();
    let _busy = gatemesh_service::Instance::new(options, registry).start([gw.url()]);
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    let mut hanging = Vec::new();
    for _ in 0..2 {
        let mesh = mesh.clone();
        hanging.push(tokio::spawn(async move {
            mesh.call::<FindVpsByLease>(lease("1", "m"))
                .timeout(Duration::from_secs(3600))
                .to("busy")
                .await
        }));
        started.notified().await;
    }
    let err = mesh
        .call::<FindVpsByLease>(lease("1", "m"))
        .timeout(Duration::from_secs(3600))
        .to("busy")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    for call in hanging {
        call.abort();
    }
}

#[tokio::test]
async fn gateway_drain_finishes_calls_in_flight_refuses_new_ones_and_spreads_returns() {
    let gw = TestGateway::start().await;
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (s, r) = (started.clone(), release.clone());
    let _slow = start_instance(&gw, "slow", "prod", move |_ctx, _req| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            s.notify_one();
            r.notified().await;
            Ok(FindVpsByLeaseResponse {
                vps_id: "vps-finished".into(),
                organization_id: "o".into(),
            })
        }
    });
    let mut watcher = RawPeer::connect(&gw.url(), "watcher", "dev", &["Other"])
        .await
        .unwrap();
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    let in_flight = tokio::spawn({
        let mesh = mesh.clone();
        async move {
            mesh.call::<FindVpsByLease>(lease("1", "m"))
                .timeout(Duration::from_secs(3600))
                .first_valid()
                .await
        }
    });
    started.notified().await;
    let gateway = gw.gateway.clone();
    let drain = tokio::spawn(async move { gateway.drain().await });
    // New calls are refused while draining.
    eventually("draining", || gw.gateway.is_draining()).await;
    let refused = mesh
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap_err();
    assert!(matches!(refused, CallError::Draining), "{refused:?}");
    assert_eq!(refused.code(), Code::Unavailable);
    // The call in flight still gets its answer.
    release.notify_one();
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.value.vps_id, "vps-finished");
    drain.await.unwrap();
    // Instances are told to come back after a delay within the spread.
    loop {
        match watcher.next().await {
            Some(Kind::GoAway(g)) => {
                assert!(g.reconnect_after_ms as u64 <= config().reconnect_spread_ms);
                assert!(g.reason.contains("shutting down"));
                break;
            }
            Some(_) => continue,
            None => panic!("stream ended without go_away"),
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn instance_shutdown_stops_new_routing_and_finishes_handlers_in_flight() {
    let gw = TestGateway::start().await;
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (s, r) = (started.clone(), release.clone());
    let instance = start_instance(&gw, "leaving", "prod", move |ctx, _req| {
        let (s, r) = (s.clone(), r.clone());
        async move {
            s.notify_one();
            // Finishes on its own once shutdown has begun.
            r.notified().await;
            assert!(!ctx.is_cancelled());
            Ok(FindVpsByLeaseResponse {
                vps_id: "vps-done".into(),
                organization_id: "o".into(),
            })
        }
    });
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    let in_flight = tokio::spawn({
        let mesh = mesh.clone();
        async move {
            mesh.call::<FindVpsByLease>(lease("1", "m"))
                .timeout(Duration::from_secs(3600))
                .first_valid()
                .await
        }
    });
    started.notified().await;
    let stopping = tokio::spawn(instance.shutdown());
    // Once the gateway has heard the goodbye, nothing new is routed there.
    eventually("instance draining", || {
        gw.gateway
            .instances()
            .get("leaving")
            .is_none_or(|p| p.is_draining())
    })
    .await;
    let err = mesh
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::NoResponders { .. }), "{err:?}");
    release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap().value.vps_id, "vps-done");
    stopping.await.unwrap();
    gw.wait_instances(0).await;
}

#[tokio::test]
async fn an_instance_keeps_one_stream_per_gateway_with_its_own_state() {
    let gw1 = TestGateway::start().await;
    let gw2 = TestGateway::start().await;
    let mut registry = gatemesh_handlers::Registry::new();
    registry
        .method::<FindVpsByLease>(knows("m", "vps-1"))
        .unwrap();
    let instance = gatemesh_service::Instance::new(options("both", "prod"), registry)
        .start([gw1.url(), gw2.url()]);
    instance.wait_connected().await;
    gw1.wait_instances(1).await;
    gw2.wait_instances(1).await;
    for gw in [&gw1, &gw2] {
        let a = gw
            .gateway
            .mesh()
            .call::<FindVpsByLease>(lease("1", "m"))
            .first_valid()
            .await
            .unwrap();
        assert_eq!(&*a.instance, "both");
    }
    let url1 = gw1.url();
    gw1.stop().await;
    let mut link1 = instance.links()[0].watch();
    let _ = link1.wait_for(|s| !s.connected).await;
    let status = instance.status();
    assert_eq!(status[0].url, url1);
    assert!(!status[0].connected);
    assert!(
        status[1].connected,
        "the other gateway's link is unaffected"
    );
    let a = gw2
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(&*a.instance, "both");
    // Calls from the instance go to a connected gateway.
    let info = instance
        .call::<gatemesh_proto::methods::GetGatewayInfo>(
            pb::GetGatewayInfoRequest {},
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(info.connected_instances, 1);
}
