//! The whole mesh in one process on loopback: a gateway, three instances
//! (`beta`, `prod`, `dev`) with different inventories, a handful of leases
//! resolved with `first_valid`, then the gateway's DHCP manager turning a
//! changing dnsmasq lease file into the hosts file dnsmasq serves, and last
//! a new VPS's life on the node: an instance allocates its address, the VM
//! takes its lease, the lease resolves to the VPS id, the instance releases.
//!
//! Run: `cargo run --example demo`

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use gatemesh_dhcp::{DhcpConfig, DhcpManager};
use gatemesh_gateway::{CallError, Gateway, GatewayConfig};
use gatemesh_handlers::Registry;
use gatemesh_node::{MeshResolver, Node, NodeSettings};
use gatemesh_proto::methods::{AllocateIp, FindVpsByLease, ReleaseIp};
use gatemesh_proto::pb::{AllocateIpRequest, FindVpsByLeaseRequest, ReleaseIpRequest};
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

/// The job the mesh exists for: the gateway's DHCP manager watches a
/// dnsmasq lease file, resolves each lease through the mesh, and writes the
/// hosts file dnsmasq serves. (No dnsmasq runs here, so nothing is reloaded.)
async fn dhcp_flow(gateway: &Gateway) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("gatemesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let leases = dir.join("dnsmasq.leases");
    let hosts = dir.join("vps.hosts");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let line = |mac: &str, ip: &str, host: &str| format!("{expiry} {mac} {ip} {host} *\n");
    let first = [
        line("52:54:00:12:34:56", "10.0.0.5", "*"),
        line("52:54:00:be:00:02", "10.0.1.12", "*"),
        line("52:54:00:de:00:01", "10.0.2.21", "*"),
        // A tenant's VM calling itself another VPS's name: the hostname is
        // the tenant's word, never a VPS id, so it gets no name.
        line("52:54:00:77:00:07", "10.0.3.7", "vps-prod-2"),
        // Nobody knows this one yet: it waits, retried with backoff.
        line("52:54:00:ff:ff:ff", "10.0.9.99", "*"),
    ];
    std::fs::write(&leases, first.concat())?;
    println!("\nDHCP manager: watching {}", leases.display());
    let (manager, handle) = DhcpManager::new(DhcpConfig::new(&leases, &hosts));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(manager.run(
        MeshResolver::new(gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));
    handle
        .wait_until(|s| s.resolved == 3 && s.calls >= 5 && s.in_flight == 0 && s.hosts_entries == 3)
        .await;
    println!(
        "{} leases seen, resolved through beta/prod/dev; {} now reads:",
        handle.status().leases_seen,
        hosts.display()
    );
    print!("{}", std::fs::read_to_string(&hosts)?);
    println!("(10.0.3.7 calls itself vps-prod-2: a tenant's hostname names nothing)");

    // dnsmasq rewrites its lease file: the beta VM's lease is gone, a new
    // prod VM got one.
    let writes = handle.status().hosts_writes;
    let second = [
        first[0].clone(),
        first[2].clone(),
        first[3].clone(),
        first[4].clone(),
        line("52:54:00:12:34:57", "10.0.0.6", "*"),
    ];
    std::fs::write(&leases, second.concat())?;
    println!("\nlease file changed: 10.0.1.12 released, 10.0.0.6 leased");
    handle
        .wait_until(|s| {
            s.hosts_writes > writes && s.resolved == 3 && s.hosts_entries == 3 && s.in_flight == 0
        })
        .await;
    print!("{}", std::fs::read_to_string(&hosts)?);
    let status = handle.status();
    println!(
        "status: {} leases, {} resolved, {} pending, {} lookups through the mesh, hosts file written {} times",
        status.leases_seen, status.resolved, status.pending, status.calls, status.hosts_writes
    );
    stop.cancel();
    task.await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// The other direction: the prod instance, as the control service creating
/// `vps-prod-3`, asks the gateway for an address; the gateway writes the
/// dnsmasq reservation. The VM then takes its lease (written here by hand,
/// as no dnsmasq runs), the DHCP manager names it, and the instance
/// releases the address when the VPS is deleted.
async fn ipam_flow(gateway: &Gateway, prod: &InstanceHandle, dir: &Path) -> anyhow::Result<()> {
    let reservations = dir.join("vps.dhcp-hosts");
    let timeout = Duration::from_secs(5);
    println!(
        "
IP allocator: pool 10.0.5.10-10.0.5.20, reservations in {}",
        reservations.display()
    );
    let mac = "52:54:00:12:34:58";
    let answer = prod
        .call::<AllocateIp>(
            AllocateIpRequest {
                vps_id: "vps-prod-3".into(),
                organization_id: "org-demo".into(),
                mac: mac.into(),
                ip: String::new(),
            },
            timeout,
        )
        .await
        .context("AllocateIP")?;
    let reservation = answer
        .reservation
        .context("an answer names its reservation")?;
    let ip = reservation.ip;
    println!(
        "prod-1 allocated {ip} for vps-prod-3 ({mac}), recorded for environment {:?}; the file dnsmasq reads:",
        reservation.environment
    );
    print!("{}", std::fs::read_to_string(&reservations)?);

    let leases = dir.join("ipam.leases");
    let hosts = dir.join("ipam.hosts");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    std::fs::write(&leases, format!("{expiry} {mac} {ip} * *\n"))?;
    println!("the VM boots and dnsmasq leases it {ip}");
    let (manager, handle) = DhcpManager::new(DhcpConfig::new(&leases, &hosts));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(manager.run(
        MeshResolver::new(gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));
    handle
        .wait_until(|s| s.resolved == 1 && s.hosts_entries == 1)
        .await;
    println!("the lease resolves to its VPS id; DNS will answer:");
    print!("{}", std::fs::read_to_string(&hosts)?);
    stop.cancel();
    task.await?;

    let released = prod
        .call::<ReleaseIp>(
            ReleaseIpRequest {
                vps_id: "vps-prod-3".into(),
                mac: String::new(),
            },
            timeout,
        )
        .await
        .context("ReleaseIP")?;
    println!(
        "vps-prod-3 deleted: prod-1 released {}; {} of {} addresses in use",
        released.reservation.map(|r| r.ip).unwrap_or_default(),
        released.pool.as_ref().map_or(0, |p| p.used),
        released.pool.as_ref().map_or(0, |p| p.size),
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let dir = std::env::temp_dir().join(format!("gatemesh-demo-ipam-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut config = GatewayConfig::with_secret(SECRET);
    config.id = Some("demo-gateway".into());
    let mut settings = NodeSettings::new(config);
    settings.ipam.ip_pool = Some("10.0.5.10-10.0.5.20".into());
    settings.ipam.ip_reservations_file = Some(dir.join("vps.dhcp-hosts"));
    let gateway = Node::start(settings)?.gateway;
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
        // Being created: no address yet (see `ipam_flow`).
        vps("vps-prod-3", "52:54:00:12:34:58", ""),
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

    dhcp_flow(&gateway).await?;
    ipam_flow(&gateway, &instances[1], &dir).await?;
    std::fs::remove_dir_all(&dir).ok();

    println!("\nshutting down");
    for instance in instances {
        instance.shutdown().await;
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}
