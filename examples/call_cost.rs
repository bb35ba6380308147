//! What one call costs the process, in heap allocations and CPU time:
//! an in-process gateway and three instances on loopback, `first_valid`
//! calls one after another, every allocation of every thread counted.
//! Allocation counts do not depend on the machine's load, so they show
//! what a change adds to the hot path even on a shared machine
//! (BENCHMARKS.md, "Metadata and tracing: the cost of a call").
//!
//! Run: `cargo run --release --example call_cost -- [CALLS]` (default 20000).
//! Export is off (no `OTEL_*` variables): the default.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatemesh_gateway::{Gateway, GatewayConfig, Mesh};
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::FindVpsByLeaseRequest;
use gatemesh_runtime::Secret;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::inventory::{MemoryInventory, Vps};
use gatemesh_service::{Instance, InstanceOptions};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map_or(Vec::new(), |(_, rest)| rest.split(' ').collect());
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn request(n: usize) -> FindVpsByLeaseRequest {
    let n = n % 300;
    FindVpsByLeaseRequest {
        ip: format!("10.0.{}.{}", n / 256, n % 256),
        mac: format!("52:54:00:00:{:02x}:{:02x}", n / 256, n % 256),
    }
}

/// Runs `calls` calls made by `call`; prints allocations and CPU per call.
async fn measure<F, Fut>(label: &str, calls: usize, call: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for n in 0..1000 {
        call(n).await;
    }
    let region = Region::new(GLOBAL);
    let (cpu, wall) = (cpu_time(), Instant::now());
    for n in 0..calls {
        call(n).await;
    }
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    let stats = region.change();
    println!(
        "{label:<36} {:>8.1} allocs/call {:>9.0} bytes/call {:>7.1} µs CPU/call {:>7.1} µs wall/call",
        stats.allocations as f64 / calls as f64,
        stats.bytes_allocated as f64 / calls as f64,
        cpu.as_secs_f64() * 1e6 / calls as f64,
        wall.as_secs_f64() * 1e6 / calls as f64,
    );
}

async fn plain(mesh: &Mesh, n: usize) {
    let _ = mesh
        .call::<FindVpsByLease>(request(n))
        .first_valid()
        .await
        .expect("call");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway = Gateway::new(GatewayConfig::with_secret("cost"));
    tokio::spawn(gateway.clone().serve(listener, std::future::pending()));
    let mut instances = Vec::new();
    for (i, env) in ["beta", "prod", "dev"].into_iter().enumerate() {
        let inventory = MemoryInventory::new((0..300).filter(|n| n % 3 == i).map(|n| Vps {
            vps_id: format!("vps-{n}"),
            organization_id: "org".into(),
            mac: format!("52:54:00:00:{:02x}:{:02x}", n / 256, n % 256),
            ip: format!("10.0.{}.{}", n / 256, n % 256),
        }));
        let mut registry = Registry::new();
        registry.method::<FindVpsByLease>(FindVpsByLeaseHandler::new(Arc::new(inventory)))?;
        let options = InstanceOptions::new(format!("{env}-1"), env, Secret::new("cost"));
        instances.push(Instance::new(options, registry).start([url.clone()]));
    }
    gateway.instances().wait_until(|i| i.len() == 3).await;
    let mesh = gateway.mesh();
    println!("{calls} sequential first_valid calls over 3 in-process instances, export off");
    measure("no metadata", calls, |n| plain(&mesh, n)).await;
    // BEGIN metadata (absent before issue #17)
    measure("one pair (x-request-id)", calls, |n| {
        let mesh = &mesh;
        async move {
            let _ = mesh
                .call::<FindVpsByLease>(request(n))
                .metadata("x-request-id", "0123456789")
                .expect("metadata")
                .first_valid()
                .await
                .expect("call");
        }
    })
    .await;
    measure("traceparent (handler span, no export)", calls, |n| {
        let mesh = &mesh;
        async move {
            let _ = mesh
                .call::<FindVpsByLease>(request(n))
                .metadata(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .expect("metadata")
                .first_valid()
                .await
                .expect("call");
        }
    })
    .await;
    // END metadata
    Ok(())
}
