//! The IP allocator with a real lease (issue 16): two network namespaces
//! joined by a veth pair, dnsmasq as DHCP and DNS server in one, busybox
//! `udhcpc` as the VM in the other. An instance allocates an address for
//! the VM's MAC through the mesh; the VM gets exactly that address; its VPS
//! id then resolves through dnsmasq; after the release and the lease's end
//! it no longer does.
//!
//! Needs root, `ip netns`, dnsmasq and busybox: where one is missing the
//! test says so and skips, or fails under `GATEMESH_REQUIRE_E2E=1`.

mod common;
mod dnsmasq_support;

use std::process::Command;
use std::time::Duration;

use common::*;
use dnsmasq_support::*;
use gatemesh_node::{Node, NodeSettings};
use gatemesh_proto::methods::{AllocateIp, ReleaseIp};
use gatemesh_proto::pb;
use tokio::net::TcpListener;

/// Times dnsmasq logged reading its `dhcp-hostsfile` (at start and on each
/// SIGHUP); its `addn-hosts` line has a count after the name, this one not.
fn host_reads(dnsmasq: &Dnsmasq, path: &std::path::Path) -> usize {
    let needle = format!("read {}", path.display());
    dnsmasq
        .log
        .lock()
        .iter()
        .filter(|l| l.ends_with(&needle))
        .count()
}

/// busybox `udhcpc` in the VM's namespace: asks for a lease and leaves
/// (`-q`), running `script` on it. With `release`, the script configures
/// the leased address (the DHCPRELEASE is sent from it) and `-R` releases
/// the lease on the way out: the lease ends now rather than in an hour.
async fn udhcpc(ns: &str, dev: &str, script: &std::path::Path, release: bool) -> String {
    let (ns, dev) = (ns.to_string(), dev.to_string());
    let script = script.display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut args = vec![
            "timeout", "60", "ip", "netns", "exec", &ns, "busybox", "udhcpc", "-i", &dev, "-q",
            "-n", "-t", "10", "-T", "1", "-s", &script,
        ];
        if release {
            args.push("-R");
        }
        run(&args)
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "udhcpc got no lease: {text}");
    text
}

/// What `nslookup name` answers from inside `ns`: the address, if any.
async fn lookup(ns: &str, name: &str, server: &str) -> Option<String> {
    let needle = format!("Name:\t{name}");
    let (ns, name, server) = (ns.to_string(), name.to_string(), server.to_string());
    let out = tokio::task::spawn_blocking(move || {
        run(&[
            "timeout", "5", "ip", "netns", "exec", &ns, "busybox", "nslookup", &name, &server,
        ])
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (_, answer) = text.split_once(&needle)?;
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Address: "))
        .map(|a| a.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocated_address_is_the_vms_lease_and_its_name_until_released() {
    init_logs();
    let tag = rand_suffix();
    let tag = &tag[tag.len().saturating_sub(6)..];
    if !e2e::require(NETNS_NEEDS) {
        return;
    }
    let (server, client) = (format!("gis{tag}"), format!("gic{tag}"));
    let (veth_s, veth_c) = (format!("gi{tag}s"), format!("gi{tag}c"));
    let namespaces = Namespaces(vec![server.clone(), client.clone()]);
    must(&["ip", "netns", "add", &server]);
    must(&["ip", "netns", "add", &client]);
    must(&[
        "ip", "link", "add", &veth_s, "type", "veth", "peer", "name", &veth_c,
    ]);
    must(&["ip", "link", "set", &veth_s, "netns", &server]);
    must(&["ip", "link", "set", &veth_c, "netns", &client]);
    let mac = "52:54:00:1b:0e:16";
    must(&["ip", "-n", &client, "link", "set", &veth_c, "address", mac]);
    must(&[
        "ip",
        "-n",
        &server,
        "addr",
        "add",
        "10.216.0.1/24",
        "dev",
        &veth_s,
    ]);
    // Outside the DHCP range, so the VM can ask DNS without its lease.
    must(&[
        "ip",
        "-n",
        &client,
        "addr",
        "add",
        "10.216.0.9/24",
        "dev",
        &veth_c,
    ]);
    for (ns, dev) in [(&server, &veth_s), (&client, &veth_c)] {
        must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        must(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }

    let dir = TempDir::new("ipam-netns");
    let leases = dir.join("dnsmasq.leases");
    let hosts_file = dir.join("hosts");
    let reservations = dir.join("vps.dhcp-hosts");
    let pid_file = dir.join("dnsmasq.pid");
    std::fs::write(&hosts_file, "").unwrap();

    // The gateway as vps-gateway composes it: the allocator and the DHCP
    // manager side by side, both reloading the same dnsmasq. The pool is
    // the top of dnsmasq's range, far from where it would pick on its own.
    let mut settings = NodeSettings::new(config());
    settings.ipam.ip_pool = Some("10.216.0.140-10.216.0.149".into());
    settings.ipam.ip_pool_exclude = Some("10.216.0.140".into());
    settings.ipam.ip_reservations_file = Some(reservations.clone());
    settings.dhcp.dhcp_leases_file = Some(leases.clone());
    settings.dhcp.dhcp_hosts_file = Some(hosts_file.clone());
    settings.dnsmasq.dnsmasq_pid_file = Some(pid_file.clone());
    let node = Node::start(settings).unwrap();
    let (dhcp, ipam) = (node.dhcp.unwrap(), node.ipam.unwrap());
    let gw = TestGateway::serve(
        node.gateway,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let vps_id = format!("vps-ipam-{tag}");
    let known: &'static str = Box::leak(vps_id.clone().into_boxed_str());
    let instance = start_instance(&gw, "prod-1", "prod", knows(mac, known));
    instance.wait_connected().await;

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
            "--dhcp-range=10.216.0.50,10.216.0.150,255.255.255.0,1h".into(),
            format!("--dhcp-leasefile={}", leases.display()),
            format!("--dhcp-hostsfile={}", reservations.display()),
            format!("--addn-hosts={}", hosts_file.display()),
            format!("--pid-file={}", pid_file.display()),
        ],
    );
    eventually("dnsmasq is up", || {
        dnsmasq.reads_of(&hosts_file) >= 1
            && host_reads(&dnsmasq, &reservations) >= 1
            && pid_file.exists()
    })
    .await;

    // Allocate through the mesh: the next free address of the pool.
    let answer = instance
        .call::<AllocateIp>(
            pb::AllocateIpRequest {
                vps_id: vps_id.clone(),
                organization_id: "org-16".into(),
                mac: mac.into(),
                ip: String::new(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let ip = answer.reservation.unwrap().ip;
    assert_eq!(ip, "10.216.0.141");
    assert_eq!(
        ipam.stats()
            .reloads
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    eventually("dnsmasq reread the reservations", || {
        host_reads(&dnsmasq, &reservations) >= 2
    })
    .await;

    // The VM boots and takes exactly that address.
    let text = udhcpc(&client, &veth_c, std::path::Path::new("/bin/true"), false).await;
    assert!(
        text.contains(&format!("lease of {ip} obtained")),
        "the VM did not get {ip}: {text}\ndnsmasq:\n{}",
        dnsmasq.log_text()
    );

    // The lease resolves to the VPS id and DNS answers its name.
    assert!(dhcp.handle.wait_until(|s| s.resolved == 1).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while lookup(&client, &vps_id, "10.216.0.1").await.as_deref() != Some(ip.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{vps_id} does not resolve to {ip}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The VPS is deleted: the address is released, and the lease ends.
    instance
        .call::<ReleaseIp>(
            pb::ReleaseIpRequest {
                vps_id: vps_id.clone(),
                mac: String::new(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(ipam.table().is_empty());
    assert!(
        !std::fs::read_to_string(&reservations)
            .unwrap()
            .contains(mac)
    );
    eventually("dnsmasq reread the reservations", || {
        host_reads(&dnsmasq, &reservations) >= 3
    })
    .await;
    // The VM stops: busybox udhcpc, in the foreground with its address
    // configured (the DHCPRELEASE goes out from it), releases its lease on
    // SIGTERM (-R), so the lease ends now rather than in an hour.
    let script = dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\"\nexit 0\n",
    )
    .unwrap();
    must(&["chmod", "+x", script.to_str().unwrap()]);
    let acks = || {
        dnsmasq
            .log
            .lock()
            .iter()
            .filter(|l| l.contains("DHCPACK"))
            .count()
    };
    let before = acks();
    let mut vm = Command::new("ip")
        .args([
            "netns", "exec", &client, "busybox", "udhcpc", "-f", "-R", "-i", &veth_c,
        ])
        .args(["-t", "10", "-T", "1", "-s", script.to_str().unwrap()])
        .stdout(std::fs::File::create(dir.join("vm.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("vm.err")).unwrap())
        .spawn()
        .unwrap();
    eventually("the VM took a lease again", || {
        acks() > before
            && ["vm.log", "vm.err"].iter().any(|f| {
                std::fs::read_to_string(dir.join(f))
                    .unwrap_or_default()
                    .contains("obtained")
            })
    })
    .await;
    must(&["kill", "-TERM", &vm.id().to_string()]);
    vm.wait().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !dnsmasq.log.lock().iter().any(|l| l.contains("DHCPRELEASE")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dnsmasq saw no release; the VM said:\n{}{}",
            std::fs::read_to_string(dir.join("vm.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("vm.err")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while lookup(&client, &vps_id, "10.216.0.1").await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{vps_id} still resolves after the release and the lease's end\nleases: {}\nhosts: {}\ndnsmasq:\n{}",
            std::fs::read_to_string(&leases).unwrap_or_default(),
            std::fs::read_to_string(&hosts_file).unwrap_or_default(),
            dnsmasq.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    dhcp.stop().await;
    drop(dnsmasq);
    drop(namespaces);
}
