//! Issue 11 against the real `vps-gateway` binary, configured only by its
//! `GATEWAY_DHCP_*` environment, with real `vps-service` instances: a
//! poisoned lease file, a tenant calling itself another VPS, a dev instance
//! claiming a lease on a prod-only node, and a pid file naming `sleep`.

mod common;
mod dnsmasq_support;

use std::time::{SystemTime, UNIX_EPOCH};

use common::eventually;
use common::http::{get, get_json, sample};
use common::process::{Proc, binary, free_port, loopback};
use dnsmasq_support::TempDir;
use gatemesh_dhcp::hosts::HEADER;

const SECRET: &str = "dhcp-binary-secret";

#[tokio::test]
async fn the_real_gateway_names_only_what_an_allowed_instance_holds() {
    let dir = TempDir::new("dhcp-binary");
    let leases = dir.join("dnsmasq.leases");
    let hosts = dir.join("hosts");
    let pid_file = dir.join("dnsmasq.pid");
    // Built first: a cold build takes minutes, and the sleeper must outlive
    // the test, not the build.
    let (gateway_bin, service) = (binary("vps-gateway"), binary("vps-service"));
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
    let later = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut text = format!("{later} 52:54:00:b1:00:01 10.0.0.5 * *\n").into_bytes();
    // The tenant of another VM calls itself the prod VPS.
    text.extend(format!("{later} 52:54:00:b1:00:02 10.0.0.66 vps-prod-42 *\n").bytes());
    // A lease only the dev instance knows; dev may not name leases here.
    text.extend(format!("{later} 52:54:00:b1:00:03 10.0.0.7 * *\n").bytes());
    text.extend(b"18446744073709551615 52:54:00:b1:00:04 10.0.0.8 * *\n");
    text.extend(b"1732243600 52:54:00:b1:00:05 10.0.0.9 caf\xe9 *\n");
    std::fs::write(&leases, &text).unwrap();

    let port = free_port();
    let http_port = free_port();
    let _gateway = Proc::spawn(
        "vps-gateway",
        &gateway_bin,
        &[
            ("GATEWAY_API_SECRET", SECRET.into()),
            ("GATEWAY_BIND", "127.0.0.1".into()),
            ("GATEWAY_GRPC_PORT", port.to_string()),
            ("GATEWAY_HTTP_PORT", http_port.to_string()),
            ("GATEWAY_DHCP_LEASES_FILE", leases.display().to_string()),
            ("GATEWAY_DHCP_HOSTS_FILE", hosts.display().to_string()),
            ("GATEWAY_DNSMASQ_PID_FILE", pid_file.display().to_string()),
            ("GATEWAY_DHCP_ENVIRONMENTS", "prod".into()),
            ("GATEWAY_DHCP_RETRY_MAX_MS", "200".into()),
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let _services: Vec<Proc> = [
        (
            "prod-1",
            "prod",
            "vps-prod-42",
            "52:54:00:b1:00:01",
            "10.0.0.5",
        ),
        ("dev-1", "dev", "vps-dev-7", "52:54:00:b1:00:03", "10.0.0.7"),
    ]
    .into_iter()
    .map(|(id, env, vps_id, mac, ip)| {
        let inventory = dir.join(&format!("{id}.json"));
        let json = serde_json::json!({"vps": [
            {"vps_id": vps_id, "organization_id": "org", "mac": mac, "ip": ip}
        ]});
        std::fs::write(&inventory, json.to_string()).unwrap();
        Proc::spawn(
            id,
            &service,
            &[
                ("VPS_GATEWAY_URL", url.clone()),
                ("VPS_GATEWAY_API_SECRET", SECRET.into()),
                ("VPS_INSTANCE_ID", id.into()),
                ("VPS_ENVIRONMENT", env.into()),
                ("VPS_INVENTORY_FILE", inventory.display().to_string()),
                ("VPS_RECONNECT_BASE_MS", "20".into()),
                ("VPS_RECONNECT_MAX_MS", "200".into()),
            ],
        )
    })
    .collect();

    let want = format!("{HEADER}10.0.0.5 vps-prod-42\n");
    eventually("the prod lease, and only it, is written", || {
        std::fs::read_to_string(&hosts).is_ok_and(|h| h == want)
    })
    .await;
    let http = loopback(http_port);
    // The reload is tried right after the write the test just saw.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let metrics = loop {
        let (_, metrics) = get(http, "/metrics").await;
        if sample(&metrics, "gatemesh_gateway_dhcp_reload_failures_total", "") >= 1.0 {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload refused: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(
        sample(&metrics, "gatemesh_gateway_dhcp_malformed_lines", ""),
        2.0,
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "gatemesh_gateway_dhcp_leases", ""), 3.0);
    let (_, health) = get_json(http, "/health").await;
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("dhcp: dnsmasq not reloaded") && reasons.contains("not dnsmasq"),
        "{health}"
    );
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep survived");

    // More leases later, the poison still there: they resolve.
    text.extend(format!("{later} 52:54:00:b1:00:01 10.0.0.15 * *\n").bytes());
    std::fs::write(&leases, &text).unwrap();
    let want = format!("{HEADER}10.0.0.5 vps-prod-42\n10.0.0.15 vps-prod-42\n");
    eventually("the new lease is written", || {
        std::fs::read_to_string(&hosts).is_ok_and(|h| h == want)
    })
    .await;
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}
