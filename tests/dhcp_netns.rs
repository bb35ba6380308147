//! The DHCP manager with a real lease (issue 7): two network namespaces
//! joined by a veth pair, dnsmasq as DHCP and DNS server in one, busybox
//! `udhcpc` as the VM in the other. The lease dnsmasq writes is resolved
//! through the mesh, and the VM then finds its VPS id in DNS.
//!
//! Needs root, `ip netns`, dnsmasq and busybox: where one is missing the
//! test says so and skips, or fails under `GATEMESH_REQUIRE_E2E=1`.

mod common;
mod dnsmasq_support;

use std::process::Command;
use std::time::Duration;

use common::*;
use dnsmasq_support::*;
use gatemesh_dhcp::{DhcpConfig, DhcpManager};
use gatemesh_node::MeshResolver;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_real_dhcp_lease_becomes_resolvable_by_vps_id() {
    init_logs();
    let tag = rand_suffix();
    let tag = &tag[tag.len().saturating_sub(6)..];
    if !e2e::require(NETNS_NEEDS) {
        return;
    }
    let (server, client) = (format!("gms{tag}"), format!("gmc{tag}"));
    let (veth_s, veth_c) = (format!("gv{tag}s"), format!("gv{tag}c"));
    let namespaces = Namespaces(vec![server.clone(), client.clone()]);
    must(&["ip", "netns", "add", &server]);
    must(&["ip", "netns", "add", &client]);
    must(&[
        "ip", "link", "add", &veth_s, "type", "veth", "peer", "name", &veth_c,
    ]);
    must(&["ip", "link", "set", &veth_s, "netns", &server]);
    must(&["ip", "link", "set", &veth_c, "netns", &client]);
    // The VM's MAC, which the inventory knows.
    let mac = "52:54:00:4e:7e:01";
    must(&["ip", "-n", &client, "link", "set", &veth_c, "address", mac]);
    must(&[
        "ip",
        "-n",
        &server,
        "addr",
        "add",
        "10.213.0.1/24",
        "dev",
        &veth_s,
    ]);
    // An address outside the DHCP range, so the VM can ask DNS without
    // configuring the leased one.
    must(&[
        "ip",
        "-n",
        &client,
        "addr",
        "add",
        "10.213.0.9/24",
        "dev",
        &veth_c,
    ]);
    for (ns, dev) in [(&server, &veth_s), (&client, &veth_c)] {
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        must(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }

    let dir = TempDir::new("dhcp-netns");
    let leases = dir.join("dnsmasq.leases");
    let hosts_file = dir.join("hosts");
    let pid_file = dir.join("dnsmasq.pid");
    std::fs::write(&hosts_file, "").unwrap();

    let gw = TestGateway::start().await;
    let vps_id = format!("vps-netns-{tag}");
    let known: &'static str = Box::leak(vps_id.clone().into_boxed_str());
    let _prod = start_instance(&gw, "prod-1", "prod", knows(mac, known));
    gw.wait_instances(1).await;
    let mut config = DhcpConfig::new(&leases, &hosts_file);
    config.pid_file = Some(pid_file.clone());
    let (manager, handle) = DhcpManager::new(config);
    let stop = CancellationToken::new();
    let task = tokio::spawn(manager.run(
        MeshResolver::new(gw.gateway.mesh()),
        stop.clone().cancelled_owned(),
    ));

    let mut command = Command::new("ip");
    command.args(["netns", "exec", &server, DNSMASQ]);
    let dnsmasq = Dnsmasq::spawn_with(
        command,
        &[
            format!("--interface={veth_s}"),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-negcache".into(),
            "--dhcp-authoritative".into(),
            "--dhcp-range=10.213.0.50,10.213.0.150,255.255.255.0,1h".into(),
            format!("--dhcp-leasefile={}", leases.display()),
            format!("--addn-hosts={}", hosts_file.display()),
            format!("--pid-file={}", pid_file.display()),
        ],
    );
    eventually("dnsmasq is up", || {
        dnsmasq.reads_of(&hosts_file) >= 1 && pid_file.exists()
    })
    .await;

    // The VM asks for a lease, gets one, and leaves (-q) without
    // configuring it (-s /bin/true).
    let (c, v) = (client.clone(), veth_c.clone());
    let dhcp = tokio::task::spawn_blocking(move || {
        run(&[
            "timeout",
            "60",
            "ip",
            "netns",
            "exec",
            &c,
            "busybox",
            "udhcpc",
            "-i",
            &v,
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "1",
            "-s",
            "/bin/true",
            "-x",
            "hostname:vm-guest",
        ])
    })
    .await
    .unwrap();
    assert!(
        dhcp.status.success(),
        "udhcpc got no lease: {}{}\ndnsmasq:\n{}",
        String::from_utf8_lossy(&dhcp.stdout),
        String::from_utf8_lossy(&dhcp.stderr),
        dnsmasq.log_text()
    );

    // dnsmasq wrote the lease; the manager resolved it through the mesh.
    assert!(
        handle
            .wait_until(|s| s.resolved == 1 && s.reloads >= 1)
            .await
    );
    let lease = handle.leases().await.unwrap().leases.remove(0);
    assert_eq!(lease.mac, mac);
    assert_eq!(lease.vps_id, vps_id);
    assert_eq!(lease.hostname, "vm-guest");
    let ip = lease.ip.clone();
    assert!(ip.starts_with("10.213.0."), "{ip}");

    // From inside the VM's namespace, DNS answers the VPS id with its IP.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (c, name) = (client.clone(), vps_id.clone());
        let out = tokio::task::spawn_blocking(move || {
            run(&[
                "timeout",
                "5",
                "ip",
                "netns",
                "exec",
                &c,
                "busybox",
                "nslookup",
                &name,
                "10.213.0.1",
            ])
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let answer = text.split_once(&format!("Name:\t{vps_id}")).map(|(_, a)| a);
        if answer.is_some_and(|a| a.contains(&format!("Address: {ip}"))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{vps_id} does not resolve to {ip}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stop.cancel();
    task.await.unwrap();
    drop(dnsmasq);
    drop(namespaces);
}
