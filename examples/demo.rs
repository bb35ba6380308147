//! The whole mesh in one process on loopback: a gateway, three instances
//! (`beta`, `prod`, `dev`) with different inventories, and a handful of
//! leases resolved with `first_valid`.
//!
//! Run: `cargo run --example demo`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use gatemesh_gateway::{CallError, Gateway, GatewayConfig};
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::FindVpsByLeaseRequest;
use gatemesh_runtime::Secret;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::inventory::{Inventory, InventoryError, MemoryInventory, Vps};
use gatemesh_service::{Instance, InstanceHandle, InstanceOptions};
use tokio::net::TcpListener;

const SECRET: &str = "demo-secret";

fn vps(id: &str, mac: &str, ip: &str) -> Vps {
    Vps {
        vps_id: id.into(),
        organization_id: "org-demo".into(),
        mac: mac.into(),
        ip: ip.into(),
    }
}

/// An inventory that takes its time, like a busy database.
struct Slow<I>(I, Duration);

#[async_trait]
impl<I: Inventory> Inventory for Slow<I> {
    async fn find_by_lease(&self, ip: &str, mac: &str) -> Result<Option<Vps>, InventoryError> {
        tokio::time::sleep(self.1).await;
        self.0.find_by_lease(ip, mac).await
    }
}

fn start(
    url: &str,
    id: &str,
    env: &str,
    inventory: Arc<dyn Inventory>,
) -> anyhow::Result<InstanceHandle> {
    let mut registry = Registry::new();
    registry.method::<FindVpsByLease>(FindVpsByLeaseHandler::new(inventory))?;
    let options = InstanceOptions::new(id, env, Secret::new(SECRET));
    Ok(Instance::new(options, registry).start([url]))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = GatewayConfig::with_secret(SECRET);
    config.id = Some("demo-gateway".into());
    let gateway = Gateway::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(gateway.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    println!("gateway demo-gateway listening on {addr}");

    let url = format!("http://{addr}");
    let beta = MemoryInventory::new([
        vps("vps-beta-1", "52:54:00:be:00:01", "10.0.1.11"),
        vps("vps-beta-2", "52:54:00:be:00:02", "10.0.1.12"),
    ]);
    let prod = MemoryInventory::new([
        vps("vps-prod-1", "52:54:00:12:34:56", "10.0.0.5"),
        vps("vps-prod-2", "52:54:00:12:34:57", "10.0.0.6"),
    ]);
    let dev = MemoryInventory::new([vps("vps-dev-1", "52:54:00:de:00:01", "10.0.2.21")]);
    let instances = [
        start(&url, "beta-1", "beta", Arc::new(beta))?,
        start(&url, "prod-1", "prod", Arc::new(prod))?,
        // dev answers slowly: its not-found never delays a lease another
        // instance knows, and its own leases still resolve.
        start(
            &url,
            "dev-1",
            "dev",
            Arc::new(Slow(dev, Duration::from_millis(150))),
        )?,
    ];
    println!("starting instances beta-1, prod-1, dev-1 ...");
    for instance in &instances {
        instance.wait_connected().await;
    }
    gateway.instances().wait_until(|i| i.len() == 3).await;
    println!("{} instances registered\n", gateway.instances().len());

    let leases = [
        ("10.0.0.5", "52:54:00:12:34:56"),
        ("10.0.1.12", "52:54:00:be:00:02"),
        ("10.0.2.21", "52:54:00:de:00:01"),
        ("10.0.0.6", "52:54:00:12:34:57"),
        ("10.0.9.99", "52:54:00:ff:ff:ff"),
    ];
    println!(
        "{:<11} {:<19} {:<12} {:<9} {:>9}",
        "IP", "MAC", "VPS", "ANSWERED", "LATENCY"
    );
    let mesh = gateway.mesh();
    for (ip, mac) in leases {
        let request = FindVpsByLeaseRequest {
            ip: ip.into(),
            mac: mac.into(),
        };
        let started = std::time::Instant::now();
        match mesh
            .call::<FindVpsByLease>(request)
            .timeout(Duration::from_secs(2))
            .first_valid()
            .await
        {
            Ok(answer) => println!(
                "{ip:<11} {mac:<19} {:<12} {:<9} {:>7.2}ms",
                answer.value.vps_id,
                answer.instance,
                started.elapsed().as_secs_f64() * 1e3
            ),
            Err(e @ CallError::NotFound { .. }) => println!(
                "{ip:<11} {mac:<19} {:<12} {:<9} {:>7.2}ms   ({e})",
                "-",
                "nobody",
                started.elapsed().as_secs_f64() * 1e3
            ),
            Err(e) => return Err(e).context("lease lookup failed"),
        }
    }

    println!("\nshutting down");
    for instance in instances {
        instance.shutdown().await;
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}
