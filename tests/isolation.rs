//! One misbehaving peer costs only itself: an instance that floods the
//! gateway with calls and never reads, a gateway that floods an instance
//! and never reads, a gateway that asks an instance to stay away for 49
//! days.

mod common;

use std::pin::Pin;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::*;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_message::Kind;
use gatemesh_proto::pb::instance_message::Kind as Out;
use gatemesh_service::{Instance, InstanceHandle};
use prost::Message;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// What the fake gateway does after its welcome.
#[derive(Clone, Copy)]
enum Script {
    /// GoAway asking for the longest absence the field can carry, then end.
    GoAwayForever,
    /// This many requests, never reading a frame the instance sends.
    FloodWithoutReading(u64),
}

struct FakeGateway(Script);

type Outbound =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::GatewayMessage, Status>> + Send>>;

fn frame(kind: Kind) -> Result<pb::GatewayMessage, Status> {
    Ok(pb::GatewayMessage { kind: Some(kind) })
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for FakeGateway {
    type RegisterGatewayStream = Outbound;

    async fn register_gateway(
        &self,
        request: Request<Streaming<pb::InstanceMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let _hello = inbound.message().await?;
        let welcome = frame(Kind::Welcome(pb::Welcome {
            gateway_id: "fake".into(),
            heartbeat_interval_ms: 60_000,
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
            max_missed_heartbeats: 3,
            methods: vec![],
            max_message_bytes: 4 << 20,
        }));
        use tokio_stream::StreamExt as _;
        let stream: Outbound = match self.0 {
            Script::GoAwayForever => Box::pin(tokio_stream::iter([
                welcome,
                frame(Kind::GoAway(pb::GoAway {
                    reason: "stay away".into(),
                    reconnect_after_ms: u32::MAX,
                })),
            ])),
            Script::FloodWithoutReading(n) => {
                let payload: bytes::Bytes = lease("10.0.0.1", "aa").encode_to_vec().into();
                let requests = (1..=n).map(move |id| {
                    frame(Kind::Request(pb::Request {
                        id,
                        method: "FindVPSByLease".into(),
                        payload: payload.clone(),
                        timeout_ms: 1_000,
                        metadata: Vec::new(),
                    }))
                });
                // `inbound` is kept alive and never polled: the instance's
                // frames pile up unread.
                tokio::spawn(async move {
                    let _inbound = inbound;
                    std::future::pending::<()>().await
                });
                let never_read = tokio_stream::pending();
                Box::pin(
                    tokio_stream::iter(std::iter::once(welcome).chain(requests)).chain(never_read),
                )
            }
        };
        Ok(Response::new(stream))
    }
}

async fn fake_gateway(script: Script) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::gateway_server::GatewayServer::new(FakeGateway(script)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    url
}

fn instance(urls: Vec<String>) -> InstanceHandle {
    let mut registry = gatemesh_handlers::Registry::new();
    registry
        .method::<FindVpsByLease>(knows("aa", "vps-1"))
        .unwrap();
    Instance::new(options("inst", "prod"), registry).start(urls)
}

#[tokio::test]
async fn a_gateways_reconnect_after_is_capped_by_the_instances_own_maximum() {
    let url = fake_gateway(Script::GoAwayForever).await;
    let inst = instance(vec![url]);
    // options() caps reconnects at 200 ms; the fake asks for 49 days.
    let mut status = inst.links()[0].watch();
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.connects >= 3),
    )
    .await
    .expect("the instance came back despite reconnect_after_ms = u32::MAX")
    .unwrap();
    inst.shutdown().await;
}

#[tokio::test]
async fn a_gateway_that_floods_and_never_reads_costs_only_its_own_link() {
    let gw = TestGateway::start().await;
    // Enough answers (about 35 bytes each) to overflow the HTTP/2 window
    // the fake gateway grants (1 MiB) and then the link's own queue.
    let flood = fake_gateway(Script::FloodWithoutReading(60_000)).await;
    let inst = instance(vec![flood, gw.url()]);
    gw.wait_instances(1).await;
    let flood_link = inst.links()[0].clone();
    let mut status = flood_link.watch();
    let dropped = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("does not read its answers"))
        }),
    )
    .await
    .expect("the flooding gateway's link is dropped")
    .unwrap()
    .clone();
    assert!(!dropped.connected);
    // The real gateway was served throughout and still is.
    for _ in 0..10 {
        let answer = gw
            .gateway
            .mesh()
            .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
            .timeout(Duration::from_secs(30))
            .first_valid()
            .await
            .unwrap();
        assert_eq!(answer.value.vps_id, "vps-1");
    }
    assert!(inst.links()[1].status().connected);
    inst.kill();
}

#[tokio::test]
async fn a_deaf_instance_flooding_gateway_calls_does_not_starve_another() {
    let mut config = config();
    config.max_concurrency = 32;
    config.max_concurrency_per_instance = 8;
    config.queue_capacity = 8;
    let gw = TestGateway::start_with(config).await;
    // Registers, floods requests and never reads a frame.
    let deaf = RawPeer::connect(&gw.url(), "deaf", "prod", &[])
        .await
        .unwrap();
    gw.wait_instances(1).await;
    let flood = tokio::spawn(async move {
        for id in 1..=2_000u64 {
            let request = pb::Request {
                id,
                method: "GetGatewayInfo".into(),
                payload: Bytes::new(),
                timeout_ms: 60_000,
                metadata: Vec::new(),
            };
            let frame = pb::InstanceMessage {
                kind: Some(Out::Request(request)),
            };
            if deaf.tx.send(frame).await.is_err() {
                break;
            }
        }
        deaf
    });
    let served = AtomicUsize::new(0);
    let inst = start_instance(&gw, "polite", "prod", knows("aa", "vps-1"));
    inst.wait_connected().await;
    for _ in 0..20 {
        let info = inst
            .call::<gatemesh_proto::methods::GetGatewayInfo>(
                pb::GetGatewayInfoRequest {},
                Duration::from_secs(30),
            )
            .await
            .expect("another instance's calls are served");
        assert_eq!(info.gateway_id, "gw-test");
        served.fetch_add(1, Ordering::Relaxed);
    }
    let _deaf = flood.await.unwrap();
    assert_eq!(served.load(Ordering::Relaxed), 20);
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The long flood, run by hand (figures in BENCHMARKS.md):
/// `cargo test --release --test isolation -- --ignored --nocapture`.
/// 100,000 requests from a gateway that never reads: the instance drops
/// that link, its other gateway is served, and memory stays flat (the
/// dispatcher holds at most its per-gateway share; refusals are never
/// queued behind a full queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long flood; run by hand"]
async fn a_100k_flood_without_reading_leaves_the_instance_flat() {
    let gw = TestGateway::start().await;
    let flood = fake_gateway(Script::FloodWithoutReading(100_000)).await;
    let before = rss_kib();
    let inst = instance(vec![flood, gw.url()]);
    gw.wait_instances(1).await;
    let mut status = inst.links()[0].watch();
    tokio::time::timeout(
        Duration::from_secs(120),
        status.wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("does not read its answers"))
        }),
    )
    .await
    .expect("the flooding gateway's link is dropped")
    .unwrap();
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
        .timeout(Duration::from_secs(30))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "vps-1");
    let after = rss_kib();
    let grown = after.saturating_sub(before);
    eprintln!("RSS before {before} KiB, after {after} KiB: +{grown} KiB");
    assert!(grown < 64 * 1024, "the instance grew by {grown} KiB");
    inst.kill();
}
