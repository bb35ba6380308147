//! One stream engine, both ends: what it guarantees, seen from outside.
//!
//! - a panic anywhere in a stream's task leaves nothing behind, on the
//!   gateway (no instance in the table, no handler counted in flight) and
//!   on an instance (no stream kept for calls, the link comes back);
//! - the concurrency limit is a hard one on both ends: under a limit of 4,
//!   a hundred blocking calls at once never run more than 4 handlers;
//! - an instance's shutdown waits for its own calls to the gateway;
//! - a send refused for a full queue is counted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use gatemesh_gateway::Gateway;
use gatemesh_handlers::{Context, GatewayRegistry, Registry};
use gatemesh_proto::methods::{FindVpsByLease, ListIPs};
use gatemesh_proto::pb;
use gatemesh_proto::pb::instance_message::Kind as Out;
use gatemesh_service::Instance;
use tokio::sync::Notify;
use tracing_subscriber::layer::SubscriberExt as _;

/// A log layer that panics on the first event whose message contains
/// `message`: a bug on the stream's path, at the moment it logs that.
struct PanicOn {
    message: &'static str,
    armed: Arc<AtomicBool>,
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for PanicOn {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains(self.message) && self.armed.swap(false, Ordering::SeqCst) {
            panic!("injected: a bug while logging {:?}", message.0);
        }
    }
}

/// Installs [`PanicOn`] for this thread: the tests run on a current-thread
/// runtime, so every task of the gateway and the instances logs through it.
fn panic_on(message: &'static str) -> (tracing::subscriber::DefaultGuard, Arc<AtomicBool>) {
    let armed = Arc::new(AtomicBool::new(true));
    let subscriber = tracing_subscriber::registry().with(PanicOn {
        message,
        armed: armed.clone(),
    });
    (tracing::subscriber::set_default(subscriber), armed)
}

/// A gateway-served method whose handler waits until released, counting
/// how many run at once.
#[derive(Clone, Default)]
struct Blocking {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    entered: Arc<AtomicUsize>,
    release: Arc<Notify>,
    released: Arc<AtomicBool>,
}

impl Blocking {
    async fn hold(&self, ctx: &Context) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.entered.fetch_add(1, Ordering::SeqCst);
        let released = self.release.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if !self.released.load(Ordering::SeqCst) {
            tokio::select! {
                _ = released => {}
                _ = ctx.cancelled() => {}
            }
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.release.notify_waiters();
    }

    fn registry(&self) -> GatewayRegistry {
        let mut registry = GatewayRegistry::new();
        let blocking = self.clone();
        registry
            .method::<ListIPs>(move |ctx: Context, _req: pb::ListIPsRequest| {
                let blocking = blocking.clone();
                async move {
                    blocking.hold(&ctx).await;
                    Ok::<_, tonic::Status>(pb::ListIPsResponse::default())
                }
            })
            .unwrap();
        registry
    }
}

fn list_ips() -> pb::InstanceMessage {
    pb::InstanceMessage {
        kind: Some(Out::Request(pb::Request {
            id: 1,
            method: "ListIPs".into(),
            payload: Default::default(),
            timeout_ms: 60_000,
            metadata: Vec::new(),
        })),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_the_gateways_stream_task_leaves_nothing_behind() {
    let blocking = Blocking::default();
    let gateway = Gateway::with_handlers(config(), blocking.registry()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let (_logs, armed) = panic_on("protocol violation");
    let peer = RawPeer::connect(&gw.url(), "victim", "prod", &[])
        .await
        .unwrap();
    gw.wait_instances(1).await;
    // A handler of the instance's is running when the stream's task dies.
    peer.tx.send(list_ips()).await.unwrap();
    eventually("the handler runs", || {
        blocking.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(gw.gateway.served().in_flight(), 1);
    // A violation: the stream's task logs it, and the log panics.
    let bad = pb::InstanceMessage {
        kind: Some(Out::Cancel(pb::Cancel {
            id: 0,
            reason: String::new(),
        })),
    };
    peer.tx.send(bad).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), gw.wait_instances(0))
        .await
        .expect("the instance of a stream whose task panicked left the table");
    assert!(!armed.load(Ordering::SeqCst), "the injected panic happened");
    eventually("the handler is cancelled and counted out", || {
        gw.gateway.served().in_flight() == 0 && blocking.running.load(Ordering::SeqCst) == 0
    })
    .await;
    let metrics = gw.gateway.metrics().render();
    assert!(
        metrics.contains("\ngatemesh_gateway_instances 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\ngatemesh_gateway_served_in_flight 0\n"),
        "{metrics}"
    );
    drop(peer);
    gw.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_in_an_instances_stream_task_leaves_nothing_behind_and_the_link_returns() {
    let gw = TestGateway::start().await;
    let inst = start_instance(&gw, "i1", "prod", knows("aa", "vps-1"));
    inst.wait_connected().await;
    let (_logs, armed) = panic_on("gateway says go away");
    // The gateway closes the stream with a GoAway (the instance's id is
    // taken over by a newer stream): the link logs it, and the log panics.
    let _twin = RawPeer::connect(&gw.url(), "i1", "prod", &["FindVPSByLease"])
        .await
        .unwrap();
    let mut status = inst.links()[0].watch();
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.connected))
        .await
        .expect("the link says it is down")
        .unwrap();
    assert!(!armed.load(Ordering::SeqCst), "the injected panic happened");
    assert!(
        matches!(
            inst.call::<gatemesh_proto::methods::GetGatewayInfo>(
                pb::GetGatewayInfoRequest {},
                Duration::from_secs(1)
            )
            .await,
            Err(gatemesh_service::GatewayCallError::NotConnected)
        ),
        "no call goes to the dead stream"
    );
    // The link survives its session's panic and registers again.
    tokio::time::timeout(Duration::from_secs(10), inst.wait_connects(2))
        .await
        .expect("the link reconnected");
    inst.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn under_a_limit_of_four_the_gateway_never_runs_more_than_four_handlers() {
    let blocking = Blocking::default();
    let mut config = config();
    config.max_concurrency = 4;
    let gateway = Gateway::with_handlers(config, blocking.registry()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let instances: Vec<_> = (0..10)
        .map(|i| start_instance(&gw, &format!("i{i}"), "prod", knows("aa", "vps-1")))
        .collect();
    for inst in &instances {
        inst.wait_connected().await;
    }
    let calls = futures_util::future::join_all((0..100).map(|i| {
        let link = instances[i % 10].links()[0].clone();
        async move {
            link.call::<ListIPs>(
                pb::ListIPsRequest::default(),
                Duration::from_secs(30),
                Default::default(),
            )
            .await
        }
    }));
    let release = async {
        eventually("four handlers run", || {
            blocking.entered.load(Ordering::SeqCst) >= 4
        })
        .await;
        // Let every refusal come back before releasing the four.
        eventually("the other calls are refused", || {
            gw.gateway.served().calls("ListIPs", "RESOURCE_EXHAUSTED") == 96
        })
        .await;
        blocking.release();
    };
    let (results, ()) = tokio::join!(calls, release);
    assert_eq!(blocking.most.load(Ordering::SeqCst), 4);
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.code() == tonic::Code::ResourceExhausted)
        })
        .count();
    assert_eq!((ok, refused), (4, 96), "{results:?}");
    for inst in instances {
        inst.shutdown().await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn under_a_limit_of_four_an_instance_never_runs_more_than_four_handlers() {
    let gw = TestGateway::start().await;
    let blocking = Blocking::default();
    let mut registry = Registry::new();
    {
        let blocking = blocking.clone();
        registry
            .method::<FindVpsByLease>(move |ctx: Context, _req| {
                let blocking = blocking.clone();
                async move {
                    blocking.hold(&ctx).await;
                    Ok::<_, tonic::Status>(pb::FindVpsByLeaseResponse::default())
                }
            })
            .unwrap();
    }
    let mut options = options("limited", "prod");
    options.max_concurrency = 4;
    let inst = Instance::new(options, registry).start([gw.url()]);
    inst.wait_connected().await;
    let mesh = gw.gateway.mesh();
    let calls = futures_util::future::join_all((0..100).map(|_| {
        let mesh = mesh.clone();
        async move {
            mesh.call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
                .timeout(Duration::from_secs(30))
                .to("limited")
                .await
        }
    }));
    let release = async {
        eventually("four handlers run", || {
            blocking.entered.load(Ordering::SeqCst) >= 4
        })
        .await;
        eventually("the other calls are answered", || {
            gw.gateway
                .stats()
                .calls("FindVPSByLease", "one", "RESOURCE_EXHAUSTED")
                == 96
        })
        .await;
        blocking.release();
    };
    let (results, ()) = tokio::join!(calls, release);
    assert_eq!(blocking.most.load(Ordering::SeqCst), 4);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    inst.shutdown().await;
    gw.stop().await;
}

#[tokio::test]
async fn an_instances_shutdown_waits_for_its_own_calls_to_the_gateway() {
    let blocking = Blocking::default();
    let gateway = Gateway::with_handlers(config(), blocking.registry()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let inst = start_instance(&gw, "leaving", "prod", knows("aa", "vps-1"));
    inst.wait_connected().await;
    let link = inst.links()[0].clone();
    let call = tokio::spawn(async move {
        link.call::<ListIPs>(
            pb::ListIPsRequest::default(),
            Duration::from_secs(30),
            Default::default(),
        )
        .await
    });
    eventually("the gateway's handler runs", || {
        blocking.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let shutdown = tokio::spawn(inst.shutdown());
    // The instance says goodbye; its call is still out.
    eventually("the instance drains", || {
        gw.gateway
            .instances()
            .get("leaving")
            .is_some_and(|p| p.is_draining())
    })
    .await;
    assert!(!call.is_finished());
    blocking.release();
    call.await
        .unwrap()
        .expect("the call finished during the drain");
    shutdown.await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn a_send_refused_for_a_full_queue_is_counted() {
    let mut config = config();
    config.queue_capacity = 2;
    let gw = TestGateway::start_with(config).await;
    // Registers and never reads a frame.
    let deaf = RawPeer::connect(&gw.url(), "deaf", "prod", &["FindVPSByLease"])
        .await
        .unwrap();
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    // Requests of 1 MiB: a few fill the HTTP/2 window the peer grants,
    // then the queue of two.
    let big = lease("10.0.0.1", &"a".repeat(1 << 20));
    let mut refused = 0;
    for _ in 0..16 {
        let result = mesh
            .call::<FindVpsByLease>(big.clone())
            .timeout(Duration::from_millis(20))
            .to("deaf")
            .await;
        if result.is_err_and(|e| e.code() == tonic::Code::ResourceExhausted) {
            refused += 1;
        }
    }
    assert!(refused > 0, "the deaf instance's queue filled up");
    let counted = gatemesh_gateway::stats::Stats::get(&gw.gateway.stats().queue_full);
    assert!(counted >= refused, "{counted} counted, {refused} refused");
    let metrics = gw.gateway.metrics().render();
    assert!(
        !metrics.contains("\ngatemesh_gateway_queue_full_total 0\n"),
        "{metrics}"
    );
    drop(deaf);
    gw.stop().await;
}
