//! Soak: steady first-valid load on an in-process gateway with three
//! instances for a given time, sampling memory and the pending-call table
//! every second, to show both stay flat. Not part of the test suite.
//!
//! Run: `cargo run --release --example soak -- [SECONDS] [CONCURRENCY]`
//! (defaults: 60 s, 64 callers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::FindVpsByLeaseRequest;
use gatemesh_runtime::Secret;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::inventory::{MemoryInventory, Vps};
use gatemesh_service::{Instance, InstanceOptions};
use tokio::net::TcpListener;

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let concurrency: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway = Gateway::new(GatewayConfig::with_secret("soak"));
    tokio::spawn(gateway.clone().serve(listener, std::future::pending()));
    let mut instances = Vec::new();
    for (i, env) in ["beta", "prod", "dev"].into_iter().enumerate() {
        // Each instance knows a third of the leases; the others say "not mine".
        let inventory = MemoryInventory::new((0..300).filter(|n| n % 3 == i).map(|n| Vps {
            vps_id: format!("vps-{n}"),
            organization_id: "org".into(),
            mac: format!("52:54:00:00:{:02x}:{:02x}", n / 256, n % 256),
            ip: format!("10.0.{}.{}", n / 256, n % 256),
        }));
        let mut registry = Registry::new();
        registry.method::<FindVpsByLease>(FindVpsByLeaseHandler::new(Arc::new(inventory)))?;
        let options = InstanceOptions::new(format!("{env}-1"), env, Secret::new("soak"));
        instances.push(Instance::new(options, registry).start([url.clone()]));
    }
    gateway.instances().wait_until(|i| i.len() == 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..concurrency)
        .map(|c| {
            let (mesh, stop, ok, failed) =
                (gateway.mesh(), stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    n = (n + 7) % 300;
                    let request = FindVpsByLeaseRequest {
                        ip: format!("10.0.{}.{}", n / 256, n % 256),
                        mac: format!("52:54:00:00:{:02x}:{:02x}", n / 256, n % 256),
                    };
                    let result = mesh
                        .call::<FindVpsByLease>(request)
                        .timeout(Duration::from_secs(2))
                        .first_valid()
                        .await;
                    match result {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    println!("soak: {seconds} s, {concurrency} callers, first_valid over 3 instances");
    println!(
        "{:>5} {:>10} {:>8} {:>9} {:>8}",
        "t(s)", "calls/s", "failed", "rss(KiB)", "pending"
    );
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut last_ok = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    for t in 1..=seconds {
        ticker.tick().await;
        let now_ok = ok.load(Ordering::Relaxed);
        let sample = (
            t,
            now_ok - last_ok,
            failed.load(Ordering::Relaxed),
            rss_kib(),
            gateway.instances().pending_calls(),
        );
        last_ok = now_ok;
        println!(
            "{:>5} {:>10} {:>8} {:>9} {:>8}",
            sample.0, sample.1, sample.2, sample.3, sample.4
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    let pending_after = gateway.instances().pending_calls();
    let warm = samples.get(samples.len() / 10).map_or(0, |s| s.3);
    let end = samples.last().map_or(0, |s| s.3);
    let peak_pending = samples.iter().map(|s| s.4).max().unwrap_or(0);
    println!(
        "\n{} calls in {:.0} s ({} failed); rss {} KiB after warm-up -> {} KiB at end ({:+.1}%); \
         pending peak {} (bounded by {} callers), {} after the load",
        ok.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
        warm,
        end,
        if warm > 0 {
            (end as f64 - warm as f64) * 100.0 / warm as f64
        } else {
            0.0
        },
        peak_pending,
        concurrency * 3,
        pending_after,
    );
    for instance in instances {
        instance.shutdown().await;
    }
    Ok(())
}
