//! Property tests (issue 5): random and adversarial frame sequences fed to
//! both ends of the stream over real loopback connections.
//!
//! Gateway side: scripted raw instances send hellos, answers with random
//! ids and payloads, cancels, pings, requests with random methods, ids and
//! sizes (some past the gRPC frame limit), and empty frames, while the
//! gateway calls them. Afterwards the gateway still serves a well-behaved
//! instance, every call has ended, and the pending table is empty.
//!
//! Instance side: a fake gateway sends welcome and then random frames to a
//! real `Instance`; the instance survives and reconnects for the next one.

mod common;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gatemesh_gateway::stats::Stats;
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_message::Kind as GwKind;
use gatemesh_proto::pb::instance_message::Kind;
use gatemesh_service::{Instance, InstanceHandle};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

const FIND: &str = "FindVPSByLease";
/// A small payload limit, so that oversized payloads are cheap to make.
const MAX_MESSAGE: usize = 1024;
/// Past the gateway's gRPC decode limit (the payload limit plus 64 KiB).
const HUGE: usize = 70 * 1024;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(FIND.to_string()),
        Just("GetGatewayInfo".to_string()),
        Just(String::new()),
        Just("x".repeat(129)),
        "[A-Za-z]{1,12}",
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..64),
        2 => (MAX_MESSAGE - 8..MAX_MESSAGE + 64).prop_map(|n| vec![0u8; n]),
        1 => Just(vec![7u8; HUGE]),
    ]
}

/// Ids around the ones really in use (the gateway numbers its calls to
/// each stream from 1), plus extremes.
fn id() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..8, 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn status() -> impl Strategy<Value = pb::Status> {
    (0i32..20, "[ -~]{0,16}").prop_map(|(code, message)| pb::Status {
        code,
        message,
        refused: false,
    })
}

fn hello(id: String) -> impl Strategy<Value = pb::Hello> {
    (
        prop_oneof![4 => Just(id), 1 => "[ -~]{0,140}"],
        prop_oneof![4 => Just("dev".to_string()), 1 => "[ -~]{0,70}"],
        prop_oneof![
            3 => Just(vec![FIND.to_string()]),
            1 => proptest::collection::vec(method(), 0..3),
        ],
        prop_oneof![4 => Just(gatemesh_proto::PROTOCOL_VERSION), 1 => any::<u32>()],
    )
        .prop_map(
            |(instance_id, environment, methods, protocol_version)| pb::Hello {
                instance_id,
                environment,
                version: "fuzz".into(),
                methods,
                protocol_version,
            },
        )
}

/// One frame from an instance, any kind, valid or not.
fn instance_frame() -> impl Strategy<Value = pb::InstanceMessage> {
    let kind = prop_oneof![
        1 => hello("fuzz".into()).prop_map(Kind::Hello),
        4 => (id(), payload()).prop_map(|(id, p)| Kind::Response(pb::Response {
            id,
            result: Some(pb::response::Result::Payload(p.into())),
        })),
        2 => (id(), status()).prop_map(|(id, s)| Kind::Response(pb::Response {
            id,
            result: Some(pb::response::Result::Status(s)),
        })),
        1 => id().prop_map(|id| Kind::Response(pb::Response { id, result: None })),
        2 => id().prop_map(|id| Kind::Cancel(pb::Cancel { id, reason: "fuzz".into() })),
        1 => any::<u64>().prop_map(|nonce| Kind::Ping(pb::Ping { nonce })),
        1 => any::<u64>().prop_map(|nonce| Kind::Pong(pb::Pong { nonce })),
        4 => (id(), method(), payload(), any::<u32>()).prop_map(|(id, method, p, timeout_ms)| {
            Kind::Request(pb::Request { id, method, payload: p.into(), timeout_ms: timeout_ms % 2_000, metadata: Vec::new() })
        }),
        1 => Just(Kind::Goodbye(pb::Goodbye { reason: "fuzz".into() })),
    ];
    prop_oneof![9 => kind.prop_map(Some), 1 => Just(None)]
        .prop_map(|kind| pb::InstanceMessage { kind })
}

/// A raw stream: the first frame (a hello, mostly), the frames after it,
/// and how many calls the gateway makes to it meanwhile.
#[derive(Debug, Clone)]
struct Script {
    first: pb::InstanceMessage,
    frames: Vec<pb::InstanceMessage>,
    calls: usize,
}

fn script(id: String) -> impl Strategy<Value = Script> {
    (
        prop_oneof![
            6 => hello(id).prop_map(|h| pb::InstanceMessage { kind: Some(Kind::Hello(h)) }),
            1 => instance_frame(),
        ],
        proptest::collection::vec(instance_frame(), 0..40),
        0usize..4,
    )
        .prop_map(|(first, frames, calls)| Script {
            first,
            frames,
            calls,
        })
}

async fn run_gateway_case(gw: &TestGateway, id: &str, script: Script) {
    let mesh = gw.gateway.mesh();
    let (tx, rx) = mpsc::channel(8);
    tx.send(script.first).await.unwrap();
    let mut client = pb::gateway_client::GatewayClient::connect(gw.url())
        .await
        .unwrap();
    let mut request = Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
    let registered = client.register_gateway(request).await;
    // Read whatever the gateway sends, so the peer never looks stuck.
    let reader = registered.ok().map(|response| {
        let mut inbound = response.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} })
    });
    let calls: Vec<_> = (0..script.calls)
        .map(|_| {
            let mesh = mesh.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                mesh.call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
                    .timeout(Duration::from_millis(300))
                    .to(id)
                    .await
            })
        })
        .collect();
    for frame in script.frames {
        if tx.send(frame).await.is_err() {
            break; // the gateway ended the stream
        }
    }
    assert!(
        gw.gateway.instances().pending_calls() <= script.calls,
        "pending table grew past the calls made"
    );
    drop(tx);
    for call in calls {
        // Every call ends, by its deadline at worst.
        tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("a call outlived its deadline")
            .expect("the call task panicked")
            .ok();
    }
    if let Some(reader) = reader {
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    }
    eventually("the pending table empties", || {
        gw.gateway.instances().pending_calls() == 0
    })
    .await;
    eventually("only the steady instance is left", || {
        gw.gateway.instances().len() == 1
    })
    .await;
}

#[test]
fn the_gateway_survives_random_frame_sequences() {
    let rt = runtime();
    let (gw, _steady) = rt.block_on(async {
        let mut config = config();
        config.max_message_bytes = MAX_MESSAGE;
        let gw = TestGateway::start_with(config).await;
        let steady = start_instance(&gw, "steady", "prod", knows("aa", "vps-steady"));
        gw.wait_instances(1).await;
        (gw, steady)
    });
    let case = AtomicU64::new(0);
    runner(48)
        .run(
            &(0u8..1).prop_flat_map(|_| script("fuzz".into())),
            |mut script| {
                // A fresh id per case, so cases never replace each other.
                let id = format!("fuzz-{}", case.fetch_add(1, Ordering::Relaxed));
                if let Some(Kind::Hello(hello)) = &mut script.first.kind
                    && hello.instance_id == "fuzz"
                {
                    hello.instance_id = id.clone();
                }
                rt.block_on(async {
                    run_gateway_case(&gw, &id, script).await;
                    // The gateway still serves a well-behaved instance.
                    let answer = gw
                        .gateway
                        .mesh()
                        .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
                        .to("steady")
                        .await
                        .expect("the steady instance still answers");
                    assert_eq!(answer.value.vps_id, "vps-steady");
                });
                Ok(())
            },
        )
        .unwrap();
    // The cases did reach the stream loop, and broke its rules.
    let stats = gw.gateway.stats();
    assert!(
        Stats::get(&stats.registrations) > 10,
        "too few cases registered"
    );
    assert!(Stats::get(&stats.violations) > 10, "too few violations");
    rt.block_on(gw.stop());
}

/// One frame from a gateway, any kind, valid or not.
fn gateway_frame() -> impl Strategy<Value = pb::GatewayMessage> {
    let kind = prop_oneof![
        4 => (id(), method(), proptest::collection::vec(any::<u8>(), 0..64), 0u32..500).prop_map(
            |(id, method, p, timeout_ms)| GwKind::Request(pb::Request {
                id,
                method,
                payload: p.into(),
                timeout_ms,
                metadata: Vec::new(),
            })
        ),
        2 => (id(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(id, p)| {
            GwKind::Response(pb::Response {
                id,
                result: Some(pb::response::Result::Payload(p.into())),
            })
        }),
        1 => (id(), status()).prop_map(|(id, s)| GwKind::Response(pb::Response {
            id,
            result: Some(pb::response::Result::Status(s)),
        })),
        2 => id().prop_map(|id| GwKind::Cancel(pb::Cancel { id, reason: "fuzz".into() })),
        1 => any::<u64>().prop_map(|nonce| GwKind::Ping(pb::Ping { nonce })),
        1 => any::<u64>().prop_map(|nonce| GwKind::Pong(pb::Pong { nonce })),
        1 => Just(GwKind::Welcome(pb::Welcome::default())),
        1 => (0u32..30).prop_map(|ms| GwKind::GoAway(pb::GoAway {
            reason: "fuzz".into(),
            reconnect_after_ms: ms,
        })),
    ];
    prop_oneof![9 => kind.prop_map(Some), 1 => Just(None)]
        .prop_map(|kind| pb::GatewayMessage { kind })
}

/// Ids the instance answered on one stream.
type Answered = Arc<parking_lot::Mutex<Vec<u64>>>;

/// A fake gateway: each stream gets welcome, then the next script's
/// frames, then ends. The ids the instance answers on that stream are
/// kept, to check that it answers only requests it was sent.
struct FakeGateway {
    scripts: Mutex<mpsc::Receiver<(Vec<pb::GatewayMessage>, Answered)>>,
}

type Outbound =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::GatewayMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for FakeGateway {
    type RegisterGatewayStream = Outbound;

    async fn register_gateway(
        &self,
        request: Request<Streaming<pb::InstanceMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(pb::InstanceMessage {
                kind: Some(Kind::Hello(_)),
            }) => {}
            _ => return Err(Status::invalid_argument("hello first")),
        }
        let (frames, answered) = self
            .scripts
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| Status::unavailable("done"))?;
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(Kind::Response(r)) = frame.kind {
                    answered.lock().push(r.id);
                }
            }
        });
        let welcome = pb::GatewayMessage {
            kind: Some(GwKind::Welcome(pb::Welcome {
                gateway_id: "fake".into(),
                heartbeat_interval_ms: 1_000,
                max_missed_heartbeats: 3,
                protocol_version: gatemesh_proto::PROTOCOL_VERSION,
                methods: vec![],
                max_message_bytes: MAX_MESSAGE as u64,
            })),
        };
        let stream = tokio_stream::iter(std::iter::once(welcome).chain(frames).map(Ok));
        Ok(Response::new(Box::pin(stream)))
    }
}

fn fuzz_instance(url: String) -> InstanceHandle {
    let mut registry = Registry::new();
    registry
        .method::<FindVpsByLease>(knows("aa", "vps-1"))
        .unwrap();
    Instance::new(options("fuzzed", "dev"), registry).start([url])
}

#[test]
fn an_instance_survives_random_frames_from_its_gateway() {
    let rt = runtime();
    let (scripts, instance) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (scripts, rx) = mpsc::channel(1);
        let fake = FakeGateway {
            scripts: Mutex::new(rx),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::gateway_server::GatewayServer::new(fake))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (scripts, fuzz_instance(url))
    });
    let connects = AtomicU64::new(0);
    runner(48)
        .run(
            &proptest::collection::vec(gateway_frame(), 0..40),
            |frames| {
                let sent: HashSet<u64> = frames
                    .iter()
                    .filter_map(|f| match &f.kind {
                        Some(GwKind::Request(r)) => Some(r.id),
                        _ => None,
                    })
                    .collect();
                let answered = Answered::default();
                rt.block_on(async {
                    scripts.send((frames, answered.clone())).await.unwrap();
                    // The instance took this script on a new stream: its link
                    // task is alive, whatever the last script did to it.
                    let connects = connects.fetch_add(1, Ordering::Relaxed) + 1;
                    let link = &instance.links()[0];
                    tokio::time::timeout(
                        Duration::from_secs(20),
                        link.watch().wait_for(|s| s.connects >= connects),
                    )
                    .await
                    .expect("the instance reconnects")
                    .unwrap();
                });
                for id in answered.lock().iter() {
                    assert!(sent.contains(id), "answered id {id} that was never asked");
                }
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(instance.shutdown());
}
