//! The DHCP manager end to end with a real dnsmasq serving DNS from the
//! hosts file the manager writes (issue 7).

mod common;
mod dnsmasq_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use dnsmasq_support::*;
use gatemesh_dhcp::{self as dhcp, DhcpConfig, DhcpManager, hosts};
use gatemesh_dnsmasq::unix_now;
use gatemesh_gateway::Gateway;
use gatemesh_handlers::Registry;
use gatemesh_node::{MeshResolver, Node, NodeSettings};
use gatemesh_proto::methods::{FindVpsByLease, GetLeases};
use gatemesh_proto::pb;
use gatemesh_service::Instance;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn lease(expires: u64, mac: &str, ip: &str, hostname: &str) -> String {
    format!("{expires} {mac} {ip} {hostname} *\n")
}

const MAC_KNOWN: &str = "52:54:00:e2:e0:01";
const MAC_NAMED: &str = "52:54:00:e2:e0:02";
const MAC_UNKNOWN: &str = "52:54:00:e2:e0:03";

#[tokio::test]
async fn dnsmasq_answers_for_each_lease_and_forgets_it_once_gone() {
    init_logs();
    if !e2e::require(&[e2e::Need::Dnsmasq]) {
        return;
    }
    let dir = TempDir::new("dhcp-e2e");
    let leases = dir.join("dnsmasq.leases");
    let hosts_file = dir.join("hosts");
    let pid_file = dir.join("dnsmasq.pid");
    write_file(&leases, "");
    let gw = TestGateway::start().await;
    let mut config = DhcpConfig::new(&leases, &hosts_file);
    config.pid_file = Some(pid_file.clone());
    config.retry_base = Duration::from_millis(20);
    config.retry_max = Duration::from_millis(200);
    config.reconcile = Duration::from_secs(3600);
    // The opt-in for trusted networks: a hostname inside the VPS namespace
    // names its lease.
    config.trust_hostnames = true;
    // A vanished lease's name goes at once, rather than after the grace
    // that protects against half-written lease files.
    config.vanish_grace = Duration::from_millis(100);
    let (manager, handle) = DhcpManager::new(config);
    let stop = CancellationToken::new();
    let task = tokio::spawn(manager.run(
        MeshResolver::new(gw.gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));

    // dnsmasq is not running yet: the file is written all the same and the
    // failed reload is reported.
    assert!(
        handle
            .wait_until(|s| s.hosts_writes == 1 && s.reload_failures == 1)
            .await
    );
    assert_eq!(std::fs::read_to_string(&hosts_file).unwrap(), hosts::HEADER);
    let error = handle.status().last_error.unwrap();
    assert!(error.contains("dnsmasq.pid"), "{error}");

    let port = free_port();
    let dnsmasq = Dnsmasq::dns(port, &hosts_file, &pid_file);
    eventually("dnsmasq read the hosts file at start", || {
        dnsmasq.reads_of(&hosts_file) == 1 && pid_file.exists()
    })
    .await;

    let _prod = start_instance(&gw, "prod-1", "prod", knows(MAC_KNOWN, "vps-e2e-1"));
    gw.wait_instances(1).await;
    let later = unix_now() + 3600;

    // A lease appears: resolved through the mesh, one write, one reload.
    write_file(&leases, &lease(later, MAC_KNOWN, "10.77.0.5", "*"));
    assert!(
        handle
            .wait_until(|s| s.resolved == 1 && s.reloads == 1)
            .await
    );
    wait_dns(port, "vps-e2e-1", &[Ipv4Addr::new(10, 77, 0, 5)]).await;

    // Two more: one named by its (trusted) hostname, no call needed; one that no
    // instance knows (retried, never written).
    let three = [
        lease(later, MAC_KNOWN, "10.77.0.5", "*"),
        lease(later, MAC_NAMED, "10.77.0.6", "vps-direct-7"),
        lease(later, MAC_UNKNOWN, "10.77.0.7", "desktop"),
    ]
    .concat();
    write_file(&leases, &three);
    assert!(
        handle
            .wait_until(|s| s.leases_seen == 3 && s.resolved == 2 && s.reloads == 2)
            .await
    );
    wait_dns(port, "vps-direct-7", &[Ipv4Addr::new(10, 77, 0, 6)]).await;
    let calls = handle.status().calls;
    assert!(
        handle.wait_until(|s| s.calls >= calls + 2).await,
        "the unknown lease is retried"
    );
    assert_eq!(handle.status().pending, 1);
    assert_eq!(
        std::fs::read_to_string(&hosts_file).unwrap(),
        format!(
            "{}10.77.0.5 vps-e2e-1\n10.77.0.6 vps-direct-7\n",
            hosts::HEADER
        )
    );

    // Renewals change the lease file but not the hosts file: no write, no
    // reload.
    let reads = handle.status().lease_reads;
    let renewed = three.replace(&later.to_string(), &(later + 600).to_string());
    write_file(&leases, &renewed);
    assert!(handle.wait_until(|s| s.lease_reads > reads).await);
    let status = handle.status();
    assert_eq!((status.hosts_writes, status.reloads), (3, 2), "{status:?}");

    // The first lease vanishes: its name goes.
    // Long enough to outlive the next step, short enough to expire soon.
    let short = unix_now() + 3;
    let remaining = [
        lease(short, MAC_NAMED, "10.77.0.6", "vps-direct-7"),
        lease(later, MAC_UNKNOWN, "10.77.0.7", "desktop"),
    ]
    .concat();
    write_file(&leases, &remaining);
    assert!(handle.wait_until(|s| s.reloads == 3).await);
    wait_dns(port, "vps-e2e-1", &[]).await;

    // The second expires while the file still lists it: its name goes too.
    assert!(
        handle
            .wait_until(|s| s.reloads == 4 && s.resolved == 0)
            .await
    );
    wait_dns(port, "vps-direct-7", &[]).await;
    assert_eq!(std::fs::read_to_string(&hosts_file).unwrap(), hosts::HEADER);

    // Exactly one reload per change: dnsmasq read the file once at start
    // and once for each of the four changes.
    eventually("dnsmasq reread the hosts file four times", || {
        dnsmasq.reads_of(&hosts_file) == 5
    })
    .await;
    let status = handle.status();
    assert_eq!(status.reloads, 4, "{status:?}");
    assert_eq!(status.hosts_writes, 5, "{status:?}");
    assert_eq!(status.reload_failures, 1, "{status:?}");
    assert_eq!(dnsmasq.reads_of(&hosts_file), 5, "{}", dnsmasq.log_text());

    stop.cancel();
    task.await.unwrap();
    assert!(!handle.status().running);
}

#[tokio::test]
async fn leases_wait_for_an_instance_and_get_leases_reports_them() {
    init_logs();
    let dir = TempDir::new("dhcp-wait");
    let leases = dir.join("dnsmasq.leases");
    let hosts_file = dir.join("hosts");
    let mut config = DhcpConfig::new(&leases, &hosts_file);
    // Were registration not to trigger a retry, the next attempt would be
    // up to an hour away and this test would time out.
    config.retry_base = Duration::from_secs(3600);
    config.retry_max = Duration::from_secs(3600);
    config.reconcile = Duration::from_secs(3600);
    let (manager, handle) = DhcpManager::new(config);
    let mut registry = Registry::new();
    dhcp::register(&mut registry, handle.clone()).unwrap();
    let gateway = Gateway::with_handlers(common::config(), registry).unwrap();
    gatemesh_node::plug::dhcp(&gateway, &handle);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(gateway, listener);
    let stop = CancellationToken::new();
    tokio::spawn(manager.run(
        MeshResolver::new(gw.gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));

    // No instance: the lease waits, and the reason is reported.
    write_file(&leases, &lease(0, MAC_KNOWN, "10.78.0.5", "*"));
    assert!(
        handle
            .wait_until(|s| s.leases_seen == 1 && s.calls == 1 && s.in_flight == 0)
            .await
    );
    let status = handle.status();
    assert_eq!((status.resolved, status.pending), (0, 1));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("10.78.0.5"),
        "{status:?}"
    );
    // Operators see it: /health names the waiting lease, /metrics counts it.
    let health = gw.gateway.health();
    assert!(
        health
            .reasons
            .iter()
            .any(|r| r.starts_with("dhcp: 1 lease(s) unresolved")),
        "{health:?}"
    );
    let metrics = gw.gateway.metrics().render();
    assert!(
        metrics.contains("gatemesh_gateway_dhcp_pending 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatemesh_gateway_dhcp_running 1"),
        "{metrics}"
    );

    // An instance registers: the lease is resolved at once.
    let mut registry = Registry::new();
    registry
        .method::<FindVpsByLease>(knows(MAC_KNOWN, "vps-waited"))
        .unwrap();
    let instance = Instance::new(options("late-1", "prod"), registry).start([gw.url()]);
    assert!(handle.wait_until(|s| s.resolved == 1).await);
    assert_eq!(
        std::fs::read_to_string(&hosts_file).unwrap(),
        format!("{}10.78.0.5 vps-waited\n", hosts::HEADER)
    );

    // The instance asks the gateway for its leases over its stream.
    instance.wait_connected().await;
    let answer = instance
        .call::<GetLeases>(pb::GetLeasesRequest::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (answer.leases_seen, answer.resolved, answer.pending),
        (1, 1, 0)
    );
    let lease = &answer.leases[0];
    assert_eq!(lease.ip, "10.78.0.5");
    assert_eq!(lease.mac, MAC_KNOWN);
    assert_eq!(lease.vps_id, "vps-waited");
    assert_eq!(lease.state, "resolved");
    assert_eq!(lease.expires, 0, "infinite");
    let health = gw.gateway.health();
    assert!(
        !health.reasons.iter().any(|r| r.starts_with("dhcp:")),
        "{health:?}"
    );
    let metrics = gw.gateway.metrics().render();
    assert!(
        metrics.contains("gatemesh_gateway_dhcp_resolved 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatemesh_gateway_dhcp_pending 0"),
        "{metrics}"
    );
    stop.cancel();
}

#[tokio::test]
async fn vps_gateway_config_turns_the_manager_on() {
    let dir = TempDir::new("dhcp-config");
    let vars = [
        ("GATEWAY_API_SECRET", SECRET),
        (
            "GATEWAY_DHCP_LEASES_FILE",
            &*dir.join("leases").to_string_lossy(),
        ),
        (
            "GATEWAY_DHCP_HOSTS_FILE",
            &*dir.join("hosts").to_string_lossy(),
        ),
        ("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", "vm-"),
        ("GATEWAY_DHCP_TRUST_HOSTNAMES", "true"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let node = Node::start(NodeSettings::from_vars(vars).unwrap()).unwrap();
    let service = node
        .dhcp
        .as_ref()
        .expect("enabled by GATEWAY_DHCP_LEASES_FILE");
    write_file(
        &dir.join("leases"),
        &lease(0, MAC_NAMED, "10.79.0.1", "vm-named"),
    );
    assert!(
        service
            .handle
            .wait_until(|s| s.resolved == 1 && s.hosts_writes >= 1)
            .await
    );
    eventually("the named lease is written", || {
        std::fs::read_to_string(dir.join("hosts"))
            .is_ok_and(|h| h.ends_with("10.79.0.1 vm-named\n"))
    })
    .await;
    assert!(
        node.gateway
            .metrics()
            .render()
            .contains("gatemesh_gateway_dhcp_running 1"),
        "its metrics are the gateway's"
    );
    node.stop().await;

    let node = Node::start(NodeSettings::new(common::config())).unwrap();
    assert!(node.dhcp.is_none() && node.ipam.is_none());
    assert!(!node.gateway.metrics().render().contains("dhcp_"));
}

#[tokio::test]
async fn resolutions_are_bounded_and_a_silent_instance_costs_only_its_deadline() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const STUCK: &str = "52:54:00:5f:00:00";
    let dir = TempDir::new("dhcp-bounded");
    let leases = dir.join("dnsmasq.leases");
    let hosts_file = dir.join("hosts");
    let gw = TestGateway::start().await;
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (n, m) = (now.clone(), max.clone());
    let _instance = start_instance(
        &gw,
        "slow-1",
        "prod",
        move |_ctx, req: pb::FindVpsByLeaseRequest| {
            let (now, max) = (n.clone(), m.clone());
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(running, Ordering::SeqCst);
                if req.mac == STUCK {
                    // Never answers; only the call's deadline ends it.
                    now.fetch_sub(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(pb::FindVpsByLeaseResponse {
                    vps_id: format!("vps-{}", req.ip.replace('.', "-")),
                    organization_id: "org".into(),
                })
            }
        },
    );
    gw.wait_instances(1).await;
    let mut text = lease(0, STUCK, "10.80.1.1", "*");
    for i in 0..40 {
        text.push_str(&lease(
            0,
            &format!("52:54:00:5f:01:{i:02x}"),
            &format!("10.80.0.{i}"),
            "*",
        ));
    }
    write_file(&leases, &text);
    let mut config = DhcpConfig::new(&leases, &hosts_file);
    config.concurrency = 4;
    config.call_timeout = Duration::from_millis(300);
    config.retry_base = Duration::from_millis(20);
    config.retry_max = Duration::from_millis(100);
    let (manager, handle) = DhcpManager::new(config);
    let stop = CancellationToken::new();
    tokio::spawn(manager.run(
        MeshResolver::new(gw.gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));

    assert!(handle.wait_until(|s| s.resolved == 40).await);
    let status = handle.status();
    assert_eq!((status.leases_seen, status.pending), (41, 1), "{status:?}");
    let peak = max.load(Ordering::SeqCst);
    assert!((1..=4).contains(&peak), "{peak} resolutions ran at once");
    // The silent lease timed out and is being retried.
    assert!(handle.wait_until(|s| s.calls >= 42).await);
    let leases = handle.leases().await.unwrap();
    let stuck = leases.leases.iter().find(|l| l.mac == STUCK).unwrap();
    assert!(stuck.vps_id.is_empty());
    assert!(
        stuck.last_error.contains("deadline") || stuck.state == "resolving",
        "{stuck:?}"
    );
    let written = std::fs::read_to_string(&hosts_file).unwrap();
    assert_eq!(
        written
            .lines()
            .filter(|l| l.starts_with("10.80.0."))
            .count(),
        40
    );
    assert!(!written.contains("10.80.1.1"));
    stop.cancel();
}
