//! DHCP manager benchmark: 10,000 leases in a dnsmasq lease file, resolved
//! through a three-instance in-process mesh (`beta`, `prod`, `dev`, each
//! knowing a third of the VPS), timed from the manager's start to a
//! complete hosts file.
//!
//! Run: `cargo run --release --example dhcp_bench [LEASES] [CONCURRENCY]`

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use gatemesh_dhcp::{DhcpConfig, DhcpManager};
use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::Registry;
use gatemesh_node::MeshResolver;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_runtime::Secret;
use gatemesh_service::inventory::{Inventory, MemoryInventory, Vps};
use gatemesh_service::{Instance, InstanceOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret";

fn mac(i: usize) -> String {
    format!(
        "52:54:00:{:02x}:{:02x}:{:02x}",
        i >> 16,
        (i >> 8) & 0xff,
        i & 0xff
    )
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 0xff, i & 0xff)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let leases: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(64), |a| a.parse())?;

    let mut config = GatewayConfig::with_secret(SECRET);
    config.id = Some("gw-bench".into());
    let gateway = Gateway::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop_gateway = CancellationToken::new();
    let server = tokio::spawn(
        gateway
            .clone()
            .serve(listener, stop_gateway.clone().cancelled_owned()),
    );

    // Each environment holds every third VPS.
    let mut instances = Vec::new();
    for (n, env) in ["beta", "prod", "dev"].into_iter().enumerate() {
        let inventory = Arc::new(MemoryInventory::new(
            (0..leases).filter(|i| i % 3 == n).map(|i| Vps {
                vps_id: format!("vps-{env}-{i}"),
                organization_id: "org-bench".into(),
                mac: mac(i),
                ip: ip(i),
            }),
        ));
        let mut registry = Registry::new();
        registry.method::<FindVpsByLease>(move |_ctx, req: FindVpsByLeaseRequest| {
            let inventory = inventory.clone();
            async move {
                let found = inventory
                    .find_by_lease(&req.ip, &req.mac)
                    .await
                    .ok()
                    .flatten();
                Ok::<_, tonic::Status>(
                    found
                        .map(|v| FindVpsByLeaseResponse {
                            vps_id: v.vps_id,
                            organization_id: v.organization_id,
                        })
                        .unwrap_or_default(),
                )
            }
        })?;
        let mut options = InstanceOptions::new(format!("{env}-1"), env, Secret::new(SECRET));
        options.max_concurrency = 4096;
        instances.push(Instance::new(options, registry).start([url.clone()]));
    }
    gateway.instances().wait_until(|i| i.len() == 3).await;

    let dir = std::env::temp_dir().join(format!("gatemesh-dhcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let lease_file = dir.join("dnsmasq.leases");
    let hosts_file = dir.join("hosts");
    let expires = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let text: String = (0..leases)
        .map(|i| format!("{expires} {} {} host-{i} *\n", mac(i), ip(i)))
        .collect();
    std::fs::write(&lease_file, text)?;

    let mut dhcp = DhcpConfig::new(&lease_file, &hosts_file);
    dhcp.concurrency = concurrency;
    dhcp.call_timeout = Duration::from_secs(10);
    let (manager, handle) = DhcpManager::new(dhcp);
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(manager.run(
        MeshResolver::new(gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));
    let complete = handle.wait_until(|s| s.hosts_entries == leases).await;
    let elapsed = started.elapsed();
    anyhow::ensure!(complete, "the manager stopped early");
    let status = handle.status();
    let written = std::fs::read_to_string(&hosts_file).context("hosts file")?;
    anyhow::ensure!(
        written.lines().filter(|l| !l.starts_with('#')).count() == leases,
        "the hosts file is incomplete"
    );

    println!(
        "{leases} leases, 3 instances, concurrency {concurrency}: complete hosts file in {:.1} ms \
         ({:.0} leases/s); {} calls, {} writes",
        elapsed.as_secs_f64() * 1e3,
        leases as f64 / elapsed.as_secs_f64(),
        status.calls,
        status.hosts_writes,
    );

    stop.cancel();
    task.await?;
    for instance in instances {
        instance.shutdown().await;
    }
    stop_gateway.cancel();
    server.await??;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
