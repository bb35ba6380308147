//! The IP allocator through the mesh (issue 16): real `vps-service`
//! processes allocating at once, the environment rule, typed refusals, the
//! admin API and CLI, `/metrics` and `/health`, and a `vps-gateway` killed
//! with SIGKILL in the middle of a burst.

mod common;
mod dnsmasq_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::http::{get, promtool, sample, serve};
use common::process::{Proc, binary, free_port, gateway_env};
use common::{AdminClient, SECRET, TestGateway, admin_call, alloc, config, options};
use dnsmasq_support::TempDir;
use gatemesh_handlers::Registry;
use gatemesh_ipam::{Ipam, table};
use gatemesh_node::{Node, NodeSettings};
use gatemesh_proto::methods::{AllocateIp, ListIPs, ReleaseIp};
use gatemesh_proto::pb;
use gatemesh_service::{GatewayCallError, Instance, InstanceHandle};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tonic::Code;

const T: Duration = Duration::from_secs(10);

fn mac(n: usize) -> String {
    format!("52:54:00:aa:{:02x}:{:02x}", n >> 8, n & 0xff)
}

/// Every reservation, through the admin API's `ListIPs`, paged.
async fn list_all(client: &mut AdminClient) -> Option<Vec<pb::IpReservation>> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page: pb::ListIPsResponse = admin_call(
            client,
            "ListIPs",
            pb::ListIPsRequest {
                page_size: 200,
                page_token: token,
            },
        )
        .await
        .ok()?;
        all.extend(page.reservations);
        if page.next_page_token.is_empty() {
            return Some(all);
        }
        token = page.next_page_token;
    }
}

/// The reservations file as the allocator reads it back.
fn on_disk(path: &Path) -> Vec<pb::IpReservation> {
    let text = std::fs::read_to_string(path).unwrap();
    table::parse(&text)
        .unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
        .iter()
        .map(Into::into)
        .collect()
}

fn write_inventory(path: &Path, env: &str, range: std::ops::Range<usize>) {
    let entries: Vec<serde_json::Value> = range
        .map(|i| {
            serde_json::json!({
                "vps_id": format!("vps-{env}-{i}"),
                "organization_id": "org-1",
                "mac": mac(i),
                "ip": "",
            })
        })
        .collect();
    std::fs::write(path, serde_json::json!({ "vps": entries }).to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vps_service_processes_allocate_500_addresses_at_once() {
    let dir = TempDir::new("ipam-two");
    let reservations = dir.join("vps.dhcp-hosts");
    let port = free_port();
    let mut env = gateway_env(port, SECRET);
    env.extend([
        ("GATEWAY_IP_POOL", "10.20.0.0/23".to_string()),
        (
            "GATEWAY_IP_POOL_EXCLUDE",
            "10.20.0.0,10.20.1.255".to_string(),
        ),
        (
            "GATEWAY_IP_RESERVATIONS_FILE",
            reservations.display().to_string(),
        ),
    ]);
    let _gateway = Proc::spawn("vps-gateway", &binary("vps-gateway"), &env);
    let url = format!("http://127.0.0.1:{port}");
    let mut services = Vec::new();
    for (env, range) in [("beta", 0..250), ("prod", 250..500)] {
        let inventory = dir.join(&format!("{env}.json"));
        write_inventory(&inventory, env, range);
        services.push(Proc::spawn(
            env,
            &binary("vps-service"),
            &[
                ("VPS_GATEWAY_URL", url.clone()),
                ("VPS_GATEWAY_API_SECRET", SECRET.to_string()),
                ("VPS_INSTANCE_ID", format!("{env}-1")),
                ("VPS_ENVIRONMENT", env.to_string()),
                ("VPS_INVENTORY_FILE", inventory.display().to_string()),
                ("VPS_ALLOCATE_IPS", "true".to_string()),
                ("VPS_RECONNECT_BASE_MS", "50".to_string()),
            ],
        ));
    }
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect_lazy();
    let mut admin = AdminClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let listed = loop {
        match list_all(&mut admin).await {
            Some(all) if all.len() >= 500 => break all,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for 500 reservations"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.len(), 500);
    let ips: BTreeSet<&str> = listed.iter().map(|r| r.ip.as_str()).collect();
    assert_eq!(ips.len(), 500, "every address unique");
    assert!(!ips.contains("10.20.0.0") && !ips.contains("10.20.1.255"));
    for r in &listed {
        let env = if r.vps_id.starts_with("vps-beta-") {
            "beta"
        } else {
            "prod"
        };
        assert_eq!(r.environment, env, "{r:?}");
    }
    assert_eq!(
        on_disk(&reservations),
        listed,
        "the file holds what was answered"
    );
    let text = std::fs::read_to_string(&reservations).unwrap();
    let dnsmasq_lines: BTreeMap<&str, &str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split(',');
            (f.next().unwrap(), f.next().unwrap())
        })
        .collect();
    assert_eq!(dnsmasq_lines.len(), 500, "one dnsmasq line per reservation");
    for r in &listed {
        assert_eq!(dnsmasq_lines[r.mac.as_str()], r.ip);
    }
}

/// A gateway with the allocator on, as `vps-gateway` composes it; and
/// the allocator.
async fn gateway_with_pool(dir: &TempDir, pool: &str) -> (TestGateway, Ipam) {
    let mut settings = NodeSettings::new(config());
    settings.ipam.ip_pool = Some(pool.into());
    settings.ipam.ip_reservations_file = Some(dir.join("vps.dhcp-hosts"));
    let node = Node::start(settings).unwrap();
    let ipam = node.ipam.clone().expect("on with GATEWAY_IP_POOL");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (TestGateway::serve(node.gateway, listener), ipam)
}

fn caller(gw: &TestGateway, id: &str, env: &str) -> InstanceHandle {
    Instance::new(options(id, env), Registry::new()).start([gw.url()])
}

fn code<T: std::fmt::Debug>(result: Result<T, GatewayCallError>) -> Code {
    result.unwrap_err().code()
}

#[tokio::test]
async fn instances_allocate_typed_and_only_their_environment_releases() {
    let dir = TempDir::new("ipam-typed");
    let (gw, _ipam) = gateway_with_pool(&dir, "10.30.0.10-10.30.0.12").await;
    let prod = caller(&gw, "prod-1", "prod");
    let beta = caller(&gw, "beta-1", "beta");
    prod.wait_connected().await;
    beta.wait_connected().await;

    let a = prod
        .call::<AllocateIp>(alloc("vps-a", "52:54:00:00:00:01"), T)
        .await
        .unwrap();
    let r = a.reservation.clone().unwrap();
    assert_eq!(
        (r.ip.as_str(), r.environment.as_str()),
        ("10.30.0.10", "prod")
    );
    assert!(!a.existing);
    assert_eq!(a.pool.unwrap().used, 1);
    let again = prod
        .call::<AllocateIp>(alloc("vps-a", "52:54:00:00:00:01"), T)
        .await
        .unwrap();
    assert!(again.existing, "a retry answers the same reservation");
    assert_eq!(again.reservation, a.reservation);

    let release_a = pb::ReleaseIpRequest {
        vps_id: "vps-a".into(),
        mac: String::new(),
    };
    assert_eq!(
        code(beta.call::<ReleaseIp>(release_a.clone(), T).await),
        Code::PermissionDenied
    );
    for (request, expected) in [
        (alloc("vps-b", "52:54:00:00:00"), Code::InvalidArgument),
        (alloc("vps b", "52:54:00:00:00:02"), Code::InvalidArgument),
        (
            pb::AllocateIpRequest {
                ip: "10.30.0.99".into(),
                ..alloc("vps-b", "52:54:00:00:00:02")
            },
            Code::InvalidArgument,
        ),
        (
            pb::AllocateIpRequest {
                ip: "10.30.0.10".into(),
                ..alloc("vps-b", "52:54:00:00:00:02")
            },
            Code::AlreadyExists,
        ),
    ] {
        assert_eq!(code(beta.call::<AllocateIp>(request, T).await), expected);
    }
    beta.call::<AllocateIp>(alloc("vps-b", "52:54:00:00:00:02"), T)
        .await
        .unwrap();
    beta.call::<AllocateIp>(alloc("vps-c", "52:54:00:00:00:03"), T)
        .await
        .unwrap();
    assert_eq!(
        code(
            beta.call::<AllocateIp>(alloc("vps-d", "52:54:00:00:00:04"), T)
                .await
        ),
        Code::ResourceExhausted
    );
    // Each environment lists its own reservations only; the pool is the
    // node's, the same for all.
    let listed = prod
        .call::<ListIPs>(pb::ListIPsRequest::default(), T)
        .await
        .unwrap();
    let envs: Vec<&str> = listed
        .reservations
        .iter()
        .map(|r| r.environment.as_str())
        .collect();
    assert_eq!(envs, ["prod"]);
    assert_eq!(listed.pool.unwrap().size, 3);
    let listed = beta
        .call::<ListIPs>(pb::ListIPsRequest::default(), T)
        .await
        .unwrap();
    assert_eq!(listed.reservations.len(), 2);
    assert!(listed.reservations.iter().all(|r| r.environment == "beta"));

    // /health and /metrics see it.
    let http = serve(&gw.gateway).await;
    let (_, health) = get(http, "/health").await;
    assert!(
        health.contains("ipam: pool nearly exhausted: 3 of 3 addresses reserved"),
        "{health}"
    );
    let (_, metrics) = get(http, "/metrics").await;
    if let Some((ok, report)) = promtool(&metrics) {
        assert!(ok, "promtool refused /metrics: {report}");
    }
    let m = |name: &str, labels: &str| sample(&metrics, name, labels);
    assert_eq!(m("gatemesh_gateway_ipam_pool_size", ""), 3.0);
    assert_eq!(m("gatemesh_gateway_ipam_used", ""), 3.0);
    assert_eq!(m("gatemesh_gateway_ipam_allocations_total", ""), 3.0);
    for (reason, n) in [
        ("environment", 1.0),
        ("bad_mac", 1.0),
        ("bad_id", 1.0),
        ("outside_pool", 1.0),
        ("taken", 1.0),
        ("exhausted", 1.0),
        ("not_found", 0.0),
    ] {
        assert_eq!(
            m(
                "gatemesh_gateway_ipam_refusals_total",
                &format!("reason=\"{reason}\"")
            ),
            n,
            "{reason}"
        );
    }

    prod.call::<ReleaseIp>(release_a.clone(), T).await.unwrap();
    assert_eq!(
        code(prod.call::<ReleaseIp>(release_a, T).await),
        Code::NotFound,
        "released twice"
    );
    let (_, health) = get(http, "/health").await;
    assert!(!health.contains("ipam"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_cli_allocate_with_no_environment() {
    let dir = TempDir::new("ipam-admin");
    let (gw, ipam) = gateway_with_pool(&dir, "10.31.0.10-10.31.0.20").await;
    let url = gw.url();
    let cli = move |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gatemesh"))
            .env_clear()
            .env("GATEWAY_API_SECRET", SECRET)
            .args(["--gateway", &url])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (status, stdout, stderr) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || {
            cli(&[
                "call",
                "AllocateIP",
                "--json",
                r#"{"vps_id":"vps-cli","organization_id":"org-1","mac":"52:54:00:00:00:0a"}"#,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(status, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let reservation = &json["results"][0]["payload"]["reservation"];
    assert_eq!(reservation["ip"], "10.31.0.10", "{stdout}");
    assert_eq!(reservation["environment"], "", "the admin API has none");

    // An instance cannot release what the admin API allocated.
    let prod = caller(&gw, "prod-1", "prod");
    prod.wait_connected().await;
    let release = pb::ReleaseIpRequest {
        vps_id: "vps-cli".into(),
        mac: String::new(),
    };
    assert_eq!(
        code(prod.call::<ReleaseIp>(release, T).await),
        Code::PermissionDenied
    );
    let (status, _, stderr) = tokio::task::spawn_blocking({
        let cli = cli.clone();
        move || cli(&["call", "ReleaseIP", "--json", r#"{"vps_id":"nobody"}"#])
    })
    .await
    .unwrap();
    assert_eq!(status, Some(64 + 5), "64 + NOT_FOUND");
    assert!(stderr.starts_with("error: NOT_FOUND: "), "{stderr}");
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        cli(&[
            "call",
            "ReleaseIP",
            "--json",
            r#"{"mac":"52-54-00-00-00-0A"}"#,
        ])
    })
    .await
    .unwrap();
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stdout.contains("vps-cli"), "{stdout}");
    assert!(ipam.table().is_empty());
}

/// A `vps-gateway` killed with SIGKILL while allocations stream in: after
/// the restart no address is held twice, every acknowledged allocation is
/// there with its address, and every VPS asked for gets one on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_burst_keeps_every_acknowledged_allocation() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

    let dir = TempDir::new("ipam-kill");
    let reservations = dir.join("vps.dhcp-hosts");
    let port = free_port();
    let mut env = gateway_env(port, SECRET);
    env.extend([
        ("GATEWAY_IP_POOL", "10.40.0.0/22".to_string()),
        (
            "GATEWAY_IP_RESERVATIONS_FILE",
            reservations.display().to_string(),
        ),
    ]);
    let mut gateway = Proc::spawn("vps-gateway", &binary("vps-gateway"), &env);
    let url = format!("http://127.0.0.1:{port}");
    let instance = Arc::new(Instance::new(options("prod-1", "prod"), Registry::new()).start([url]));
    instance.wait_connected().await;

    // Sixteen callers, each asking for the next VPS as soon as its last
    // call ended, until the kill.
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (instance, acked) = (instance.clone(), acked.clone());
            let (next, stop) = (next.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    let i = next.fetch_add(1, SeqCst);
                    let vps = format!("vps-{i}");
                    if let Ok(answer) = instance
                        .call::<AllocateIp>(alloc(&vps, &mac(i)), Duration::from_secs(5))
                        .await
                    {
                        acked.lock().insert(vps, answer.reservation.unwrap().ip);
                    }
                }
            })
        })
        .collect();
    common::eventually("allocations acknowledged", || acked.lock().len() >= 100).await;
    stop.store(true, SeqCst);
    gateway.signal("KILL");
    gateway.wait();
    for worker in workers {
        worker.await.unwrap();
    }
    let asked = next.load(SeqCst);
    let acked = acked.lock().clone();

    // The file as the crash left it: consistent, every acknowledgement in it.
    let held: BTreeMap<String, String> = on_disk(&reservations)
        .into_iter()
        .map(|r| (r.vps_id, r.ip))
        .collect();
    for (vps, ip) in &acked {
        assert_eq!(held.get(vps), Some(ip), "{vps} was acknowledged {ip}");
    }

    let _gateway = Proc::spawn("vps-gateway", &binary("vps-gateway"), &env);
    instance.wait_connects(2).await;
    // Everyone asks again, 32 at a time (under the per-instance limit).
    let mut after = BTreeMap::new();
    for chunk in (0..asked).collect::<Vec<_>>().chunks(32) {
        let retries: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let instance = instance.clone();
                tokio::spawn(async move {
                    let vps = format!("vps-{i}");
                    let answer = instance
                        .call::<AllocateIp>(alloc(&vps, &mac(i)), T)
                        .await
                        .unwrap();
                    (vps, answer.reservation.unwrap().ip)
                })
            })
            .collect();
        for retry in retries {
            let (vps, ip) = retry.await.unwrap();
            after.insert(vps, ip);
        }
    }
    for (vps, ip) in &acked {
        assert_eq!(&after[vps], ip, "{vps} kept its address");
    }
    let unique: BTreeSet<&String> = after.values().collect();
    assert_eq!(unique.len(), asked, "no address held twice");
    let file: BTreeMap<String, String> = on_disk(&reservations)
        .into_iter()
        .map(|r| (r.vps_id, r.ip))
        .collect();
    assert_eq!(file, after);
}
