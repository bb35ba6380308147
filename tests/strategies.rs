//! Every way to route a call (issue 3): `all`, `one`, `to`, the environment
//! filter, deadlines and cancels reaching the handler, calls from an
//! instance to the gateway, and the external `GatewayAdmin` API.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use gatemesh_gateway::{CallError, Gateway};
use gatemesh_handlers::{Context, Registry, Status};
use gatemesh_proto::methods::{FindVpsByLease, GetGatewayInfo};
use gatemesh_proto::pb::{self, FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_proto::{Method, SECRET_METADATA_KEY};
use gatemesh_service::{Instance, InstanceHandle};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;

const LONG: Duration = Duration::from_secs(3600);

fn found(vps_id: &str) -> FindVpsByLeaseResponse {
    FindVpsByLeaseResponse {
        vps_id: vps_id.into(),
        organization_id: "org".into(),
    }
}

/// An instance that answers with its own id as the VPS id and counts the
/// calls it served.
fn start_echo(gw: &TestGateway, id: &'static str, env: &str) -> (InstanceHandle, Arc<AtomicUsize>) {
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let handle = start_instance(gw, id, env, move |_ctx, _req| {
        counter.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(found(id)))
    });
    (handle, served)
}

/// A handler that never answers.
fn hangs(
    _ctx: Context,
    _req: FindVpsByLeaseRequest,
) -> impl std::future::Future<Output = Result<FindVpsByLeaseResponse, Status>> {
    std::future::pending()
}

#[tokio::test]
async fn all_gathers_one_result_per_instance_and_returns_once_all_answered() {
    let gw = TestGateway::start().await;
    let _b = start_instance(&gw, "beta-1", "beta", knows("52:54:00:00:00:01", "vps-b"));
    let _p = start_instance(&gw, "prod-1", "prod", knows("other", "vps-p"));
    let _d = start_instance(&gw, "dev-1", "dev", knows("other", "vps-d"));
    gw.wait_instances(3).await;
    // With an hour's deadline, only "every instance answered" ends the call.
    let replies = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "52:54:00:00:00:01"))
        .timeout(LONG)
        .all()
        .await
        .unwrap();
    let got: Vec<(&str, &str, String)> = replies
        .iter()
        .map(|r| {
            (
                &*r.instance,
                &*r.environment,
                r.outcome.as_ref().unwrap().vps_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("beta-1", "beta", "vps-b".to_string()),
            ("dev-1", "dev", String::new()),
            ("prod-1", "prod", String::new()),
        ],
        "one result per instance, sorted by instance id, not-mine answers kept"
    );
}

#[tokio::test]
async fn all_marks_an_instance_that_misses_the_deadline_and_keeps_the_others() {
    let gw = TestGateway::start().await;
    let _a = start_instance(&gw, "fast-a", "prod", knows("m", "vps-a"));
    let _b = start_instance(&gw, "fast-b", "prod", |_ctx, _req| async {
        Err::<FindVpsByLeaseResponse, _>(Status::unavailable("database down"))
    });
    let _slow = start_instance(&gw, "slow", "prod", hangs);
    gw.wait_instances(3).await;
    let timeout = Duration::from_millis(300);
    let replies = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .timeout(timeout)
        .all()
        .await
        .unwrap();
    assert_eq!(replies.len(), 3);
    let by_id: HashMap<&str, _> = replies.iter().map(|r| (&*r.instance, r)).collect();
    assert_eq!(
        by_id["fast-a"].outcome.as_ref().unwrap().vps_id,
        "vps-a",
        "an answer that came in time is kept"
    );
    let err = by_id["fast-b"].outcome.as_ref().unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.to_string().contains("database down"), "{err}");
    assert_eq!(
        by_id["slow"].outcome.as_ref().unwrap_err(),
        &CallError::DeadlineExceeded(timeout)
    );
    // The late instance was told to stop: nothing stays pending.
    let instances = gw.gateway.instances().clone();
    eventually("no pending calls", || instances.pending_calls() == 0).await;
}

#[tokio::test]
async fn one_spreads_sequential_calls_over_every_instance() {
    let gw = TestGateway::start().await;
    let (_a, a) = start_echo(&gw, "one-a", "prod");
    let (_b, b) = start_echo(&gw, "one-b", "prod");
    let (_c, c) = start_echo(&gw, "one-c", "prod");
    gw.wait_instances(3).await;
    let mesh = gw.gateway.mesh();
    let mut answered_by = BTreeMap::<String, usize>::new();
    for i in 0..30 {
        let answer = mesh
            .call::<FindVpsByLease>(lease(&format!("10.0.0.{i}"), "m"))
            .one()
            .await
            .unwrap();
        assert_eq!(answer.value.vps_id, &*answer.instance);
        *answered_by.entry(answer.instance.to_string()).or_default() += 1;
    }
    assert_eq!(
        answered_by.keys().collect::<Vec<_>>(),
        ["one-a", "one-b", "one-c"],
        "{answered_by:?}"
    );
    let served = [&a, &b, &c].map(|n| n.load(Ordering::Relaxed));
    assert_eq!(
        served.iter().sum::<usize>(),
        30,
        "each call went to one instance"
    );
    assert!(served.iter().all(|&n| n > 0), "{served:?}");
}

#[tokio::test]
async fn one_spreads_concurrent_calls_by_load() {
    let gw = TestGateway::start().await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut handles = Vec::new();
    for id in ["busy-a", "busy-b", "busy-c"] {
        let gate = gate.clone();
        handles.push(start_instance(&gw, id, "prod", move |_ctx, _req| {
            let gate = gate.clone();
            async move {
                let _permit = gate.acquire().await;
                Ok(found(id))
            }
        }));
    }
    gw.wait_instances(3).await;
    let mesh = gw.gateway.mesh();
    const CALLS: usize = 30;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move {
                mesh.call::<FindVpsByLease>(lease("10.0.0.1", "m"))
                    .timeout(LONG)
                    .one()
                    .await
            })
        })
        .collect();
    let instances = gw.gateway.instances().clone();
    eventually("every call in flight", || {
        instances.pending_calls() == CALLS
    })
    .await;
    // Least in flight, round robin among equals: an even spread.
    for id in ["busy-a", "busy-b", "busy-c"] {
        let in_flight = instances.get(id).unwrap().in_flight();
        assert_eq!(
            in_flight,
            CALLS / 3,
            "{id}'s share of {CALLS} concurrent calls"
        );
    }
    gate.add_permits(CALLS);
    let mut answered_by = BTreeMap::<String, usize>::new();
    for call in calls {
        let answer = call.await.unwrap().unwrap();
        *answered_by.entry(answer.instance.to_string()).or_default() += 1;
    }
    assert_eq!(answered_by.len(), 3, "{answered_by:?}");
}

#[tokio::test]
async fn one_retries_on_another_instance_when_the_chosen_one_disconnects() {
    let gw = TestGateway::start().await;
    let invocations = Arc::new(AtomicUsize::new(0));
    let (chosen_tx, mut chosen_rx) = mpsc::unbounded_channel::<&'static str>();
    let mut handles = HashMap::new();
    for id in ["retry-a", "retry-b"] {
        let invocations = invocations.clone();
        let chosen = chosen_tx.clone();
        let handle = start_instance(&gw, id, "prod", move |_ctx, _req| {
            let first = invocations.fetch_add(1, Ordering::SeqCst) == 0;
            let chosen = chosen.clone();
            async move {
                if first {
                    // The first instance asked takes the call and never answers.
                    let _ = chosen.send(id);
                    std::future::pending::<()>().await;
                }
                Ok(found(id))
            }
        });
        handles.insert(id, handle);
    }
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.1", "m"))
            .timeout(LONG)
            .one()
            .await
    });
    let victim = chosen_rx.recv().await.unwrap();
    handles.remove(victim).unwrap().kill();
    let answer = call.await.unwrap().unwrap();
    assert_ne!(&*answer.instance, victim, "retried elsewhere");
    assert_eq!(answer.value.vps_id, &*answer.instance);
    assert_eq!(invocations.load(Ordering::SeqCst), 2);
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn to_reaches_exactly_that_instance() {
    let gw = TestGateway::start().await;
    let (_a, a) = start_echo(&gw, "to-a", "prod");
    let (_b, b) = start_echo(&gw, "to-b", "prod");
    let (_c, c) = start_echo(&gw, "to-c", "beta");
    // Connected, but serving no method at all.
    let _idle = Instance::new(options("idle", "prod"), Registry::new()).start([gw.url()]);
    gw.wait_instances(4).await;
    let mesh = gw.gateway.mesh();
    for (id, count) in [("to-b", 1), ("to-b", 2), ("to-c", 1)] {
        let answer = mesh
            .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
            .to(id)
            .await
            .unwrap();
        assert_eq!((&*answer.instance, answer.value.vps_id.as_str()), (id, id));
        let served = if id == "to-b" { &b } else { &c };
        assert_eq!(served.load(Ordering::Relaxed), count);
    }
    assert_eq!(a.load(Ordering::Relaxed), 0, "no other instance was asked");

    let err = mesh
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .to("nobody")
        .await
        .unwrap_err();
    assert_eq!(err, CallError::NotConnected("nobody".into()));
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);

    let err = mesh
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .to("idle")
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::NotServed { .. }), "{err:?}");
    assert_eq!(tonic::Status::from(err).code(), Code::Unimplemented);
}

#[tokio::test]
async fn the_environment_filter_holds_for_first_valid_all_and_one() {
    let gw = TestGateway::start().await;
    const MAC: &str = "52:54:00:12:34:56";
    // Only beta knows the lease; prod must never reach it.
    let beta_served = Arc::new(AtomicUsize::new(0));
    let counter = beta_served.clone();
    let _beta = start_instance(&gw, "beta-1", "beta", move |ctx, req| {
        counter.fetch_add(1, Ordering::Relaxed);
        knows(MAC, "vps-beta")(ctx, req)
    });
    let _p1 = start_instance(&gw, "prod-1", "prod", knows("other", "x"));
    let _p2 = start_instance(&gw, "prod-2", "prod", knows("other", "x"));
    gw.wait_instances(3).await;
    let mesh = gw.gateway.mesh();
    let call = || mesh.call::<FindVpsByLease>(lease("10.0.0.5", MAC));

    let err = call()
        .env("prod")
        .timeout(LONG)
        .first_valid()
        .await
        .unwrap_err();
    assert_eq!(err, CallError::NotFound { asked: 2 });

    let replies = call().env("prod").all().await.unwrap();
    let envs: Vec<(&str, &str)> = replies
        .iter()
        .map(|r| (&*r.instance, &*r.environment))
        .collect();
    assert_eq!(envs, [("prod-1", "prod"), ("prod-2", "prod")]);

    for _ in 0..6 {
        let answer = call().env("prod").one().await.unwrap();
        assert_eq!(&*answer.environment, "prod");
        assert!(answer.value.vps_id.is_empty());
    }
    assert_eq!(
        beta_served.load(Ordering::Relaxed),
        0,
        "beta was never asked"
    );

    let answer = call().env("beta").first_valid().await.unwrap();
    assert_eq!(
        (&*answer.instance, answer.value.vps_id.as_str()),
        ("beta-1", "vps-beta")
    );

    let err = call().env("staging").first_valid().await.unwrap_err();
    assert!(matches!(err, CallError::NoResponders { .. }), "{err:?}");
    assert_eq!(err.code(), Code::Unavailable);
}

/// What an observing handler saw.
#[derive(Debug)]
enum Seen {
    Started { deadline: Instant, at: Instant },
    Stopped { cancelled: bool, at: Instant },
}

/// An instance whose handler reports its start, then waits for its
/// cancellation and reports that.
fn start_observer(
    gw: &TestGateway,
    id: &str,
    env: &str,
) -> (InstanceHandle, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = start_instance(gw, id, env, move |ctx: Context, _req| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Seen::Started {
                deadline: ctx.deadline(),
                at: Instant::now(),
            });
            ctx.cancelled().await;
            let _ = tx.send(Seen::Stopped {
                cancelled: ctx.is_cancelled(),
                at: Instant::now(),
            });
            Err::<FindVpsByLeaseResponse, _>(Status::cancelled("stopped"))
        }
    });
    (handle, rx)
}

async fn started(seen: &mut mpsc::UnboundedReceiver<Seen>) -> (Instant, Instant) {
    match seen.recv().await.unwrap() {
        Seen::Started { deadline, at } => (deadline, at),
        other => panic!("expected the handler to start, got {other:?}"),
    }
}

async fn stopped(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Instant {
    match seen.recv().await.unwrap() {
        Seen::Stopped { cancelled, at } => {
            assert!(cancelled, "the handler's context says it was cancelled");
            at
        }
        other => panic!("expected the handler to stop, got {other:?}"),
    }
}

#[tokio::test]
async fn the_callers_deadline_reaches_the_handler_and_stops_it() {
    let gw = TestGateway::start().await;
    let (_slow, mut seen) = start_observer(&gw, "slow", "prod");
    gw.wait_instances(1).await;
    let timeout = Duration::from_millis(300);
    let callers_deadline = Instant::now() + timeout;
    let err = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .timeout(timeout)
        .first_valid()
        .await
        .unwrap_err();
    assert_eq!(err, CallError::DeadlineExceeded(timeout));
    let (deadline, at) = started(&mut seen).await;
    assert!(deadline > at, "the handler starts before its deadline");
    assert!(
        deadline - at <= timeout,
        "the handler's deadline is the caller's, not later: {:?} left of {timeout:?}",
        deadline - at
    );
    let stopped_at = stopped(&mut seen).await;
    assert!(
        stopped_at >= callers_deadline,
        "the handler is stopped by the caller's deadline, not before it"
    );
}

#[tokio::test]
async fn the_loser_of_a_first_valid_race_is_cancelled() {
    let gw = TestGateway::start().await;
    let (_loser, mut seen) = start_observer(&gw, "loser", "prod");
    let _winner = start_instance(&gw, "winner", "beta", knows("m", "vps-1"));
    gw.wait_instances(2).await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .timeout(LONG)
        .first_valid()
        .await
        .unwrap();
    assert_eq!(&*answer.instance, "winner");
    let (deadline, _) = started(&mut seen).await;
    let stopped_at = stopped(&mut seen).await;
    assert!(
        stopped_at < deadline,
        "cancelled by the win, not by its deadline"
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_cancels_the_handler() {
    let gw = TestGateway::start().await;
    let (_slow, mut seen) = start_observer(&gw, "slow", "prod");
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.1", "m"))
            .timeout(LONG)
            .first_valid()
            .await
    });
    let (deadline, _) = started(&mut seen).await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    let stopped_at = stopped(&mut seen).await;
    assert!(
        stopped_at < deadline,
        "cancelled by the caller, not by its deadline"
    );
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

/// A gateway-served method the plain gateway does not serve (it needs the
/// DHCP manager), so this test can serve it with a handler that tells who
/// called. Mesh methods are sealed to `methods.proto`; an unserved one is
/// checked in `tests/methods_admin.rs`.
type WhoAmI = gatemesh_proto::methods::GetLeases;

#[tokio::test]
async fn an_instance_calls_methods_the_gateway_hosts() {
    let mut registry = Registry::new();
    registry
        .method::<WhoAmI>(|ctx: Context, _req| async move {
            Ok::<_, tonic::Status>(pb::GetLeasesResponse {
                last_error: format!("{}/{}", ctx.caller().id(), ctx.caller().environment()),
                ..Default::default()
            })
        })
        .unwrap();
    let gateway = Gateway::with_handlers(config(), registry).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let first = start_instance(&gw, "caller-1", "beta", knows("m", "v"));
    let _second = start_instance(&gw, "caller-2", "prod", knows("m", "v"));
    gw.wait_instances(2).await;
    first.wait_connected().await;

    let info = first
        .call::<GetGatewayInfo>(pb::GetGatewayInfoRequest {}, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(info.gateway_id, "gw-test");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.connected_instances, 2);
    let later = first
        .call::<GetGatewayInfo>(pb::GetGatewayInfoRequest {}, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(later.uptime_ms >= info.uptime_ms, "uptime counts up");

    let me = first
        .call::<WhoAmI>(pb::GetLeasesRequest::default(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        me.last_error, "caller-1/beta",
        "the handler knows which instance called"
    );
}

type AdminClient = pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>;

fn with_secret<T>(message: T, secret: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert(SECRET_METADATA_KEY, secret.parse().unwrap());
    }
    request
}

async fn admin_call(
    client: &mut AdminClient,
    call: pb::CallRequest,
) -> Result<Vec<(String, String, Result<String, Code>)>, tonic::Status> {
    let response = client.call(with_secret(call, Some(SECRET))).await?;
    Ok(response
        .into_inner()
        .results
        .into_iter()
        .map(|r| {
            let outcome = match r.outcome.unwrap() {
                pb::instance_result::Outcome::Payload(p) => {
                    Ok(FindVpsByLeaseResponse::decode(p).unwrap().vps_id)
                }
                pb::instance_result::Outcome::Status(s) => Err(s.code()),
            };
            (r.instance_id, r.environment, outcome)
        })
        .collect())
}

fn find(mac: &str, strategy: pb::Strategy) -> pb::CallRequest {
    pb::CallRequest {
        method: FindVpsByLease::NAME.into(),
        payload: lease("10.0.0.5", mac).encode_to_vec().into(),
        strategy: strategy as i32,
        instance_id: String::new(),
        environment: String::new(),
        timeout_ms: 10_000,
    }
}

fn s(x: &str) -> String {
    x.to_string()
}

#[tokio::test]
async fn the_admin_api_routes_by_every_strategy_and_filter() {
    let gw = TestGateway::start().await;
    let _b = start_instance(&gw, "beta-1", "beta", knows("mac-b", "vps-b"));
    let _p = start_instance(&gw, "prod-1", "prod", knows("mac-p", "vps-p"));
    let _d = start_instance(&gw, "dev-1", "dev", knows("none", "x"));
    gw.wait_instances(3).await;
    let mut client = AdminClient::connect(gw.url()).await.unwrap();

    for strategy in [pb::Strategy::Unspecified, pb::Strategy::FirstValid] {
        let results = admin_call(&mut client, find("mac-p", strategy))
            .await
            .unwrap();
        assert_eq!(results, [(s("prod-1"), s("prod"), Ok(s("vps-p")))]);
    }
    let results = admin_call(&mut client, find("mac-b", pb::Strategy::All))
        .await
        .unwrap();
    assert_eq!(
        results,
        [
            (s("beta-1"), s("beta"), Ok(s("vps-b"))),
            (s("dev-1"), s("dev"), Ok(s(""))),
            (s("prod-1"), s("prod"), Ok(s(""))),
        ]
    );
    let results = admin_call(&mut client, find("mac-b", pb::Strategy::One))
        .await
        .unwrap();
    assert_eq!(results.len(), 1, "{results:?}");

    let mut only_dev = find("mac-b", pb::Strategy::All);
    only_dev.instance_id = "dev-1".into();
    let results = admin_call(&mut client, only_dev).await.unwrap();
    assert_eq!(results, [(s("dev-1"), s("dev"), Ok(s("")))]);

    let mut only_beta = find("mac-b", pb::Strategy::All);
    only_beta.environment = "beta".into();
    let results = admin_call(&mut client, only_beta).await.unwrap();
    assert_eq!(results, [(s("beta-1"), s("beta"), Ok(s("vps-b")))]);

    let err = admin_call(&mut client, find("nobody", pb::Strategy::FirstValid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("3 instance(s) answered"), "{err:?}");

    let mut staging = find("mac-b", pb::Strategy::FirstValid);
    staging.environment = "staging".into();
    let err = admin_call(&mut client, staging).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "no responders: {err:?}");

    let mut unknown = find("mac-b", pb::Strategy::FirstValid);
    unknown.method = "NoSuchMethod".into();
    let err = admin_call(&mut client, unknown).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    for secret in [None, Some("wrong")] {
        let err = client
            .call(with_secret(find("mac-b", pb::Strategy::All), secret))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{secret:?}");
        let err = client
            .list_instances(with_secret(pb::ListInstancesRequest {}, secret))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{secret:?}");
    }
}

#[tokio::test]
async fn the_admin_api_lists_instances_with_their_details() {
    let gw = TestGateway::start().await;
    let _b = start_instance(&gw, "beta-1", "beta", knows("mac-b", "vps-b"));
    let _p = start_instance(&gw, "prod-1", "prod", |_ctx, _req| async {
        Err::<FindVpsByLeaseResponse, _>(Status::unavailable("down"))
    });
    gw.wait_instances(2).await;
    let mut client = AdminClient::connect(gw.url()).await.unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    admin_call(&mut client, find("mac-b", pb::Strategy::All))
        .await
        .unwrap();
    let listed = client
        .list_instances(with_secret(pb::ListInstancesRequest {}, Some(SECRET)))
        .await
        .unwrap()
        .into_inner()
        .instances;
    let ids: Vec<(&str, &str)> = listed
        .iter()
        .map(|i| (i.instance_id.as_str(), i.environment.as_str()))
        .collect();
    assert_eq!(ids, [("beta-1", "beta"), ("prod-1", "prod")]);
    for info in &listed {
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.methods, ["FindVPSByLease"]);
        assert!(info.remote_addr.starts_with("127.0.0.1:"), "{info:?}");
        assert!(
            info.connected_since_ms > 0 && info.connected_since_ms <= before,
            "{info:?}"
        );
        assert!(info.last_seen_ms > 0, "{info:?}");
        assert_eq!(info.in_flight, 0);
    }
    assert_eq!((listed[0].calls_served, listed[0].errors), (1, 0));
    assert_eq!((listed[1].calls_served, listed[1].errors), (0, 1));
}
