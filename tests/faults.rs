//! Faults under load, with real processes (issue 4): a `vps-gateway` and
//! four `vps-service` processes; while calls run steadily, one instance is
//! killed, one frozen, one blackholed, and the gateway restarts. Every call
//! ends by its deadline with an answer or a typed status, every instance
//! comes back, and the gateway's pending table ends empty.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::process::{Proc, binary, free_port, gateway_env, loopback};
use common::{Proxy, SECRET};
use gatemesh_proto::pb::gateway_admin_client::GatewayAdminClient;
use gatemesh_proto::{SECRET_METADATA_KEY, pb};
use parking_lot::Mutex;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const CALL_TIMEOUT_MS: u32 = 1000;

type Admin = GatewayAdminClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

fn with_secret(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request
        .metadata_mut()
        .insert(SECRET_METADATA_KEY, SECRET.parse().unwrap());
    Ok(request)
}

fn admin(port: u16) -> Admin {
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    GatewayAdminClient::with_interceptor(channel, with_secret as fn(_) -> _)
}

fn start_gateway(port: u16) -> Proc {
    let mut env = gateway_env(port, SECRET);
    env.extend([
        ("GATEWAY_HEARTBEAT_INTERVAL_MS", "100".to_string()),
        ("GATEWAY_MAX_MISSED_HEARTBEATS", "3".to_string()),
        ("GATEWAY_RECONNECT_SPREAD_MS", "200".to_string()),
        ("GATEWAY_DRAIN_GRACE_MS", "1000".to_string()),
    ]);
    Proc::spawn("vps-gateway", &binary("vps-gateway"), &env)
}

fn start_instance(id: &str, env: &str, url: &str, inventory: &std::path::Path) -> Proc {
    Proc::spawn(
        id,
        &binary("vps-service"),
        &[
            ("VPS_GATEWAY_URL", url.to_string()),
            ("VPS_GATEWAY_API_SECRET", SECRET.to_string()),
            ("VPS_INSTANCE_ID", id.to_string()),
            ("VPS_ENVIRONMENT", env.to_string()),
            ("VPS_INVENTORY_FILE", inventory.display().to_string()),
            ("VPS_RECONNECT_BASE_MS", "50".to_string()),
            ("VPS_RECONNECT_MAX_MS", "500".to_string()),
        ],
    )
}

/// The connected instances by id, with their connection start and calls in flight.
async fn instances(admin: &mut Admin) -> Option<Vec<pb::InstanceInfo>> {
    admin
        .list_instances(pb::ListInstancesRequest {})
        .await
        .ok()
        .map(|r| r.into_inner().instances)
}

/// Polls the gateway until `condition` holds on its instance list.
async fn wait_for(admin: &mut Admin, what: &str, condition: impl Fn(&[pb::InstanceInfo]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(list) = instances(admin).await
            && condition(&list)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn has(list: &[pb::InstanceInfo], id: &str) -> bool {
    list.iter().any(|i| i.instance_id == id)
}

/// What became of one call of the steady load.
#[derive(Debug)]
enum Outcome {
    Answered,
    Typed(Code, String),
    /// The call outlived its deadline by far: a hang.
    Hung,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_ends_and_every_instance_returns_through_kill_freeze_blackhole_and_restart() {
    let dir = std::env::temp_dir().join(format!("gatemesh-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inventory = dir.join("inventory.json");
    std::fs::write(
        &inventory,
        r#"[{"vps_id":"vps-shared","organization_id":"o","mac":"52:54:00:00:00:01","ip":"10.0.0.1"}]"#,
    )
    .unwrap();

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut gateway = start_gateway(port);
    let proxy = Proxy::start(loopback(port)).await;
    let mut killed = start_instance("inst-kill", "beta", &url, &inventory);
    let frozen = start_instance("inst-freeze", "prod", &url, &inventory);
    let _steady = start_instance("inst-steady", "prod", &url, &inventory);
    let _far = start_instance("inst-far", "dev", &proxy.url(), &inventory);
    let mut admin = admin(port);
    wait_for(&mut admin, "four instances", |l| l.len() == 4).await;

    // Steady load: eight callers, each call with its own deadline.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let request = pb::FindVpsByLeaseRequest {
        ip: "10.0.0.1".into(),
        mac: "52:54:00:00:00:01".into(),
    }
    .encode_to_vec();
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (stop, outcomes, request) = (stop.clone(), outcomes.clone(), request.clone());
            let mut admin = self::admin(port);
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let call = admin.call(pb::CallRequest {
                        method: "FindVPSByLease".into(),
                        payload: request.clone().into(),
                        timeout_ms: CALL_TIMEOUT_MS,
                        ..Default::default()
                    });
                    // Generous: a call that ends at all ends well before this.
                    let bound =
                        Duration::from_millis(u64::from(CALL_TIMEOUT_MS)) + Duration::from_secs(10);
                    let outcome = match tokio::time::timeout(bound, call).await {
                        Err(_) => Outcome::Hung,
                        Ok(Ok(_)) => Outcome::Answered,
                        Ok(Err(status)) => {
                            Outcome::Typed(status.code(), status.message().to_string())
                        }
                    };
                    let failed = !matches!(outcome, Outcome::Answered);
                    outcomes.lock().push(outcome);
                    if failed {
                        // The gateway may be down; do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    let answered = || {
        outcomes
            .lock()
            .iter()
            .filter(|o| matches!(o, Outcome::Answered))
            .count()
    };
    common::eventually("load answered", || answered() > 50).await;

    // 1. SIGKILL an instance: the gateway drops it; a new process returns.
    killed.child.kill().unwrap();
    killed.wait();
    wait_for(&mut admin, "killed instance gone", |l| !has(l, "inst-kill")).await;
    let _killed = start_instance("inst-kill", "beta", &url, &inventory);
    wait_for(&mut admin, "killed instance back", |l| has(l, "inst-kill")).await;

    // 2. SIGSTOP an instance: silent, so the gateway declares it dead; once
    //    it runs again it notices and registers anew.
    frozen.signal("STOP");
    wait_for(&mut admin, "frozen instance dropped", |l| {
        !has(l, "inst-freeze")
    })
    .await;
    let before = answered();
    common::eventually("calls still answered while one is frozen", || {
        answered() > before + 20
    })
    .await;
    frozen.signal("CONT");
    wait_for(&mut admin, "frozen instance back", |l| {
        has(l, "inst-freeze")
    })
    .await;

    // 3. Blackhole one instance's connection: no bytes, no reset. Both
    //    sides notice the silence; the instance comes back on a new one.
    let since = instances(&mut admin)
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.instance_id == "inst-far")
        .unwrap()
        .connected_since_ms;
    proxy.blackhole_existing();
    wait_for(&mut admin, "blackholed instance on a new connection", |l| {
        l.iter()
            .any(|i| i.instance_id == "inst-far" && i.connected_since_ms > since)
    })
    .await;

    // 4. Restart the gateway (SIGTERM: graceful), then start it again.
    gateway.signal("TERM");
    let status = gateway.wait();
    assert!(
        status.success(),
        "gateway exits cleanly on SIGTERM: {status:?}"
    );
    gateway = start_gateway(port);
    wait_for(&mut admin, "all four back after the restart", |l| {
        l.len() == 4
    })
    .await;
    let before = answered();
    common::eventually("calls answered after the restart", || {
        answered() > before + 20
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock());
    let hung = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Hung))
        .count();
    assert_eq!(hung, 0, "every call ends by its deadline");
    for outcome in outcomes.iter() {
        if let Outcome::Typed(code, message) = outcome {
            // A request written onto a connection just as the restarting
            // gateway closes it fails in the client's HTTP/2 layer; no
            // gateway can answer over a closed connection. Every status the
            // gateway itself sends must be one of the typed outcomes.
            let connection_lost = matches!(code, Code::Internal | Code::Unknown)
                && (message.contains("h2 protocol error") || message.contains("transport error"));
            assert!(
                connection_lost
                    || matches!(
                        code,
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::NotFound
                            | Code::ResourceExhausted
                            | Code::Cancelled
                    ),
                "unexpected status {code:?}: {message}"
            );
        }
    }
    // Nothing left pending once the load has stopped.
    wait_for(&mut admin, "pending table empty", |l| {
        l.len() == 4 && l.iter().all(|i| i.in_flight == 0)
    })
    .await;
    drop(gateway);
    std::fs::remove_dir_all(&dir).ok();
}
