//! `bench-hotpath`: gatemesh's call path beside the [bare reverse
//! call](crate::bare), in one process and one run, so the mesh's own cost
//! per call is a printed ratio.
//!
//! Layout, the same for both: two tokio runtimes of two workers each, the
//! gateway and its callers on one, the instances on the other; every
//! party talks over loopback gRPC. Scenarios run interleaved (bare, then
//! gatemesh, at each concurrency, `runs` times), so a noisy neighbour
//! weighs on both alike; the report gives medians. CPU is this process's
//! (user + system) over each run, divided by its calls.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use gatemesh_gateway::{Gateway, GatewayConfig, Mesh};
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_runtime::Secret;
use gatemesh_service::{Instance, InstanceHandle, InstanceOptions};
use prost::Message;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use crate::bare::{self, BareGateway};
use crate::load::{self, LoadResult, median};
use crate::{SECRET, payload, procfs};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: Vec<usize>,
    /// Only the scenarios whose label contains every comma-separated term
    /// (`bare`, `gatemesh`, `one`, `three`), e.g. to profile one of them.
    pub only: Option<String>,
    pub command_line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One instance, called by name.
    One,
    /// Three instances, the first valid answer wins.
    FirstValid3,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Self::One => "to one instance",
            Self::FirstValid3 => "first_valid across three",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Bare,
    Mesh,
}

struct Parties {
    bare_one: BareGateway,
    bare_three: BareGateway,
    mesh_one: Mesh,
    mesh_three: Mesh,
    _instances: Vec<InstanceHandle>,
}

#[derive(Debug, Clone, Default)]
struct Sample {
    load: LoadResult,
    cpu_us_per_call: f64,
}

fn runtime(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
}

/// Heap allocations per call, every thread counted: each scenario's
/// `calls` calls made one after another, measured by `count` (which runs
/// its argument and returns the allocations and bytes it made; the binary
/// owns the global allocator). Unlike time, this does not depend on the
/// machine's load, so it shows what a change adds or saves on a noisy box.
pub fn allocations(
    calls: usize,
    count: impl Fn(&mut dyn FnMut()) -> (u64, u64),
) -> anyhow::Result<String> {
    let gateways = runtime("gateway")?;
    let instances = runtime("instances")?;
    let parties = gateways.block_on(start(instances.handle().clone()))?;
    let mut out = String::new();
    let _ = writeln!(out, "| scenario | allocations/call | bytes/call |");
    let _ = writeln!(out, "|---|---:|---:|");
    for shape in [Shape::One, Shape::FirstValid3] {
        for side in [Side::Bare, Side::Mesh] {
            let call = caller(&parties, shape, side);
            let sequential = |n: usize| {
                gateways.block_on(async {
                    for _ in 0..n {
                        call().await.map_err(anyhow::Error::msg)?;
                    }
                    anyhow::Ok(())
                })
            };
            sequential(1000)?;
            let mut result = Ok(());
            let (allocations, bytes) = count(&mut || result = sequential(calls));
            result?;
            let _ = writeln!(
                out,
                "| {side:?} {} | {:.1} | {:.0} |",
                shape.label(),
                allocations as f64 / calls as f64,
                bytes as f64 / calls as f64
            );
        }
    }
    Ok(out.replace("Mesh ", "gatemesh ").replace("Bare ", "bare "))
}

/// Runs every scenario and returns the markdown report.
pub fn run(options: Options) -> anyhow::Result<String> {
    let gateways = runtime("gateway")?;
    let instances = runtime("instances")?;
    let parties = gateways.block_on(start(instances.handle().clone()))?;
    let ticks = gatemesh_runtime::metrics::clock_ticks_per_second();
    let mut samples: Vec<Scenario> = Vec::new();
    for shape in [Shape::One, Shape::FirstValid3] {
        for &c in &options.concurrency {
            for side in [Side::Bare, Side::Mesh] {
                let name = format!("{side:?} {}", shape.label()).to_lowercase();
                let name = name.replace("mesh", "gatemesh");
                if let Some(only) = &options.only
                    && !only.split(',').all(|term| name.contains(term))
                {
                    continue;
                }
                samples.push(((shape, side, c), Vec::new()));
            }
        }
    }
    for run in 0..options.runs {
        for ((shape, side, c), runs) in &mut samples {
            let caller = caller(&parties, *shape, *side);
            gateways.block_on(load::run(*c, options.warmup, caller.clone()));
            let cpu_before = procfs::cpu_seconds(std::process::id(), ticks)?;
            let load = gateways.block_on(load::run(*c, options.duration, caller));
            let cpu = procfs::cpu_seconds(std::process::id(), ticks)? - cpu_before;
            if let Some(e) = &load.first_error {
                anyhow::bail!("{} ({side:?}, c={c}) failed: {e}", shape.label());
            }
            eprintln!(
                "run {}: {} {side:?} c={c}: {:.0} calls/s, p50 {} µs",
                run + 1,
                shape.label(),
                load.calls_per_s,
                load.p50_us
            );
            runs.push(Sample {
                cpu_us_per_call: cpu * 1e6 / load.calls.max(1) as f64,
                load,
            });
        }
    }
    drop(parties);
    Ok(report(&options, &samples))
}

async fn start(instances: tokio::runtime::Handle) -> anyhow::Result<Parties> {
    let bare_one = BareGateway::default();
    let bare_three = BareGateway::default();
    let mut urls = Vec::new();
    for bare in [&bare_one, &bare_three] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        urls.push(format!("http://{}", listener.local_addr()?));
        bare.serve(listener);
    }
    let url_one = urls[0].clone();
    let url_three = urls[1].clone();
    instances
        .spawn(async move {
            bare::instance(url_one, true).await?;
            for owner in [false, true, false] {
                bare::instance(url_three.clone(), owner).await?;
            }
            anyhow::Ok(())
        })
        .await??;

    let mut meshes = Vec::new();
    let mut handles = Vec::new();
    for (name, count) in [("one", 1), ("three", 3)] {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let mut config = GatewayConfig::with_secret(SECRET);
        config.id = Some(format!("hotpath-{name}"));
        let gateway = Gateway::new(config);
        tokio::spawn(
            gateway
                .clone()
                .serve(listener, std::future::pending::<()>()),
        );
        let _entered = instances.enter();
        for i in 0..count {
            // The owner is the middle one of three, as in the bare fan-out.
            let owner = count == 1 || i == 1;
            let mut registry = Registry::new();
            registry.method::<FindVpsByLease>(
                move |_ctx, request: FindVpsByLeaseRequest| async move {
                    let found = owner && request.ip == payload::LEASE_IP;
                    Ok::<_, tonic::Status>(FindVpsByLeaseResponse {
                        vps_id: if found {
                            payload::LEASE_VPS.into()
                        } else {
                            String::new()
                        },
                        organization_id: if found {
                            "org-bench".into()
                        } else {
                            String::new()
                        },
                    })
                },
            )?;
            let options = InstanceOptions::new(format!("{name}-{i}"), "prod", Secret::new(SECRET));
            handles.push(Instance::new(options, registry).start([url.clone()]));
        }
        drop(_entered);
        meshes.push((gateway, count));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = bare_one.connected() == 1
            && bare_three.connected() == 3
            && meshes
                .iter()
                .all(|(gateway, count)| gateway.instances().len() == *count);
        if ready {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "instances did not connect within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Parties {
        bare_one,
        bare_three,
        mesh_one: meshes[0].0.mesh(),
        mesh_three: meshes[1].0.mesh(),
        _instances: handles,
    })
}

type CallFn = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync,
>;

fn caller(parties: &Parties, shape: Shape, side: Side) -> impl Fn() -> CallFuture + Clone + use<> {
    // Both callers do what a real caller does: build the typed request
    // (here, from a lease) and encode it. gatemesh's API takes the typed
    // request and encodes inside; the bare call is handed the bytes.
    let call: CallFn = match (shape, side) {
        (Shape::One, Side::Bare) => {
            let bare = parties.bare_one.clone();
            std::sync::Arc::new(move || {
                let bare = bare.clone();
                let payload = payload::request().encode_to_vec().into();
                Box::pin(async move { check(bare.call_one(0, payload).await) })
            })
        }
        (Shape::FirstValid3, Side::Bare) => {
            let bare = parties.bare_three.clone();
            std::sync::Arc::new(move || {
                let bare = bare.clone();
                let payload = payload::request().encode_to_vec().into();
                Box::pin(async move { check(bare.first_valid(payload).await) })
            })
        }
        (Shape::One, Side::Mesh) => {
            let mesh = parties.mesh_one.clone();
            std::sync::Arc::new(move || {
                let mesh = mesh.clone();
                let request = payload::request();
                Box::pin(async move {
                    mesh.call::<FindVpsByLease>(request)
                        .timeout(CALL_TIMEOUT)
                        .to("one-0")
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|a| valid(&a.value))
                })
            })
        }
        (Shape::FirstValid3, Side::Mesh) => {
            let mesh = parties.mesh_three.clone();
            std::sync::Arc::new(move || {
                let mesh = mesh.clone();
                let request = payload::request();
                Box::pin(async move {
                    mesh.call::<FindVpsByLease>(request)
                        .timeout(CALL_TIMEOUT)
                        .first_valid()
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|a| valid(&a.value))
                })
            })
        }
    };
    move || call()
}

type CallFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

fn check(answer: Result<Bytes, String>) -> Result<(), String> {
    let bytes = answer?;
    let response = FindVpsByLeaseResponse::decode(bytes).map_err(|e| e.to_string())?;
    valid(&response)
}

fn valid(response: &FindVpsByLeaseResponse) -> Result<(), String> {
    if response.vps_id == payload::LEASE_VPS {
        Ok(())
    } else {
        Err(format!("wrong answer {response:?}"))
    }
}

/// Every run of one scenario: its shape, side and concurrency.
type Scenario = ((Shape, Side, usize), Vec<Sample>);

fn report(options: &Options, samples: &[Scenario]) -> String {
    let med =
        |runs: &[Sample], f: fn(&Sample) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let find = |shape, side, c| {
        samples
            .iter()
            .find(|((s, d, cc), _)| *s == shape && *d == side && *cc == c)
            .map(|(_, runs)| runs.as_slice())
            .unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(out, "Command: `{}`", options.command_line);
    let _ = writeln!(
        out,
        "\n{} run(s) of {:.1} s each after {:.1} s of warm-up, medians; CPU is the whole process (both runtimes) per call.\n",
        options.runs,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| shape | c | bare calls/s | gatemesh calls/s | ratio | bare p50 µs | gatemesh p50 µs | p50 ratio | bare p99 µs | gatemesh p99 µs | bare CPU µs/call | gatemesh CPU µs/call |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for shape in [Shape::One, Shape::FirstValid3] {
        for &c in &options.concurrency {
            let bare = find(shape, Side::Bare, c);
            let mesh = find(shape, Side::Mesh, c);
            let (bc, mc) = (
                med(bare, |s| s.load.calls_per_s),
                med(mesh, |s| s.load.calls_per_s),
            );
            let (bp, mp) = (med(bare, |s| s.load.p50_us), med(mesh, |s| s.load.p50_us));
            let _ = writeln!(
                out,
                "| {} | {c} | {bc:.0} | {mc:.0} | **{:.2}×** | {bp:.0} | {mp:.0} | {:.2}× | {:.0} | {:.0} | {:.1} | {:.1} |",
                shape.label(),
                mc / bc,
                mp / bp,
                med(bare, |s| s.load.p99_us),
                med(mesh, |s| s.load.p99_us),
                med(bare, |s| s.cpu_us_per_call),
                med(mesh, |s| s.cpu_us_per_call),
            );
        }
    }
    out
}

/// Parses `--runs`, `--duration`, `--warmup` and `--concurrency`.
pub fn options(args: &crate::args::Args, command_line: String) -> anyhow::Result<Options> {
    let quick = args.flag("quick");
    let concurrency = args.concurrency()?;
    Ok(Options {
        runs: args.get("runs", if quick { 1 } else { 5 })?.max(1),
        duration: Duration::from_secs_f64(args.get("duration", if quick { 0.5 } else { 3.0 })?),
        warmup: Duration::from_secs_f64(args.get("warmup", if quick { 0.2 } else { 0.5 })?),
        concurrency,
        only: args.str("only").map(str::to_lowercase),
        command_line,
    })
}
