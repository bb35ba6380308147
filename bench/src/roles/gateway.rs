//! A gateway on loopback, which also calls the mesh in-process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatemesh_gateway::{Gateway, GatewayConfig, Mesh};
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::FindVpsByLeaseResponse;
use parking_lot::Mutex;
use tokio::net::TcpListener;

use crate::args::Args;
use crate::protocol::{Command, FanoutResult, Reply, Target, WaitResult};
use crate::{SECRET, load, payload};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const FANOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let port: u16 = args.get("port", 0)?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let listening = Instant::now();
    let port = listener.local_addr()?.port();
    let mut config = GatewayConfig::with_secret(SECRET);
    config.id = Some("bench-gateway".into());
    config.reconnect_spread_ms = args.get("reconnect-spread-ms", config.reconnect_spread_ms)?;
    let gateway = Gateway::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    super::ready(port);
    let mesh = gateway.mesh();
    super::serve_commands(|command| {
        let gateway = gateway.clone();
        let mesh = mesh.clone();
        async move {
            Ok(match command {
                Command::Run {
                    target,
                    concurrency,
                    duration_ms,
                } => Reply::Load(
                    mesh_load(
                        mesh,
                        target,
                        concurrency,
                        Duration::from_millis(duration_ms),
                    )
                    .await?,
                ),
                Command::Wait { count, timeout_ms } => {
                    let mut result = wait(&gateway, count, timeout_ms, Instant::now()).await;
                    result.samples.clear();
                    Reply::Wait(result)
                }
                Command::Watch { count, timeout_ms } => {
                    Reply::Wait(wait(&gateway, count, timeout_ms, listening).await)
                }
                Command::Fanout { runs } => Reply::Fanout(fanout(&mesh, runs).await),
                Command::Quit => Reply::Done,
            })
        }
    })
    .await?;
    let _ = stop.send(());
    server.await??;
    Ok(())
}

fn check(answer: &FindVpsByLeaseResponse) -> Result<(), String> {
    if answer.vps_id == payload::LEASE_VPS {
        Ok(())
    } else {
        Err(format!("wrong answer {:?}", answer.vps_id))
    }
}

async fn mesh_load(
    mesh: Mesh,
    target: Target,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<load::LoadResult> {
    Ok(match target {
        Target::MeshTo(instance) => {
            let instance: Arc<str> = instance.into();
            load::run(concurrency, duration, move || {
                let mesh = mesh.clone();
                let instance = instance.clone();
                async move {
                    let answer = mesh
                        .call::<FindVpsByLease>(payload::request())
                        .timeout(CALL_TIMEOUT)
                        .to(&*instance)
                        .await
                        .map_err(|e| e.to_string())?;
                    check(&answer.value)
                }
            })
            .await
        }
        Target::MeshFirstValid => {
            load::run(concurrency, duration, move || {
                let mesh = mesh.clone();
                async move {
                    let answer = mesh
                        .call::<FindVpsByLease>(payload::request())
                        .timeout(CALL_TIMEOUT)
                        .first_valid()
                        .await
                        .map_err(|e| e.to_string())?;
                    check(&answer.value)
                }
            })
            .await
        }
        other => anyhow::bail!("the gateway cannot run {other:?}"),
    })
}

/// Waits until `count` instances are registered; with `since` the moment
/// the gateway started listening, the samples show when each registered.
async fn wait(gateway: &Gateway, count: usize, timeout_ms: u64, since: Instant) -> WaitResult {
    let samples = Mutex::new(Vec::new());
    let reached = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        gateway.instances().wait_until(|i| {
            let n = i.len();
            let mut samples = samples.lock();
            if samples.last().is_none_or(|&(_, last)| last != n) {
                samples.push((since.elapsed().as_secs_f64() * 1e3, n));
            }
            n >= count
        }),
    )
    .await
    .is_ok();
    WaitResult {
        count: gateway.instances().len(),
        reached,
        ms: since.elapsed().as_secs_f64() * 1e3,
        samples: samples.into_inner(),
    }
}

async fn fanout(mesh: &Mesh, runs: usize) -> FanoutResult {
    let mut result = FanoutResult {
        instances: mesh.instances().len(),
        ..FanoutResult::default()
    };
    for _ in 0..runs {
        let started = Instant::now();
        let answer = mesh
            .call::<FindVpsByLease>(payload::request())
            .timeout(FANOUT_TIMEOUT)
            .first_valid()
            .await;
        result
            .first_valid_ms
            .push(started.elapsed().as_secs_f64() * 1e3);
        if let Err(e) = answer
            .map_err(|e| e.to_string())
            .and_then(|a| check(&a.value))
        {
            result.first_error.get_or_insert(e);
        }
    }
    for _ in 0..runs {
        let started = Instant::now();
        let replies = mesh
            .call::<FindVpsByLease>(payload::request())
            .timeout(FANOUT_TIMEOUT)
            .all()
            .await;
        result.all_ms.push(started.elapsed().as_secs_f64() * 1e3);
        match replies {
            Ok(replies) => {
                result.all_answered = replies.iter().filter(|r| r.outcome.is_ok()).count();
            }
            Err(e) => {
                result.first_error.get_or_insert(e.to_string());
            }
        }
    }
    result
}
