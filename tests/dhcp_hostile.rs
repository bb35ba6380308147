//! The DHCP manager on a hostile node (issue 11): poisoned lease files, a
//! crash, tenants naming themselves, instances naming anything, a /16 of
//! leases, dnsmasq rewriting its file in place, a stale pid file, an
//! unwritable or vandalised hosts file, a failing holder. Each test runs a
//! real gateway with real instances over loopback and reads the real files.

mod common;
mod dnsmasq_support;

use std::collections::HashSet;
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::http::{get_json, sample, serve};
use common::*;
use dnsmasq_support::*;
use gatemesh_dhcp::{self as dhcp, DhcpConfig, DhcpHandle, DhcpManager, DhcpStatus, hosts};
use gatemesh_dnsmasq::unix_now;
use gatemesh_gateway::Gateway;
use gatemesh_handlers::{Registry, Status};
use gatemesh_node::{MeshResolver, NodeSettings};
use gatemesh_proto::methods::GetLeases;
use gatemesh_proto::pb;
use gatemesh_service::Instance;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn lease(expires: u64, mac: &str, ip: &str, hostname: &str) -> String {
    format!("{expires} {mac} {ip} {hostname} *\n")
}

/// A gateway with the manager attached (so `/health`, `/metrics` and
/// `GetLeases` see it) and running on `config`.
struct Node {
    gw: TestGateway,
    handle: DhcpHandle,
    stop: CancellationToken,
    dir: TempDir,
    leases: PathBuf,
    hosts: PathBuf,
}

impl Node {
    async fn start(name: &str, tweak: impl FnOnce(&mut DhcpConfig, &TempDir)) -> Self {
        init_logs();
        let dir = TempDir::new(name);
        let leases = dir.join("dnsmasq.leases");
        let hosts = dir.join("hosts");
        let mut config = DhcpConfig::new(&leases, &hosts);
        config.retry_base = Duration::from_millis(20);
        config.retry_max = Duration::from_millis(200);
        config.reconcile = Duration::from_secs(3600);
        tweak(&mut config, &dir);
        let hosts = config.hosts_file.clone();
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
        Self {
            gw,
            handle,
            stop,
            dir,
            leases,
            hosts,
        }
    }

    /// Waits for `condition`; fails the test after 20 s with the status.
    async fn wait(&self, what: &str, condition: impl Fn(&DhcpStatus) -> bool) {
        let waited =
            tokio::time::timeout(Duration::from_secs(20), self.handle.wait_until(condition)).await;
        assert!(
            waited == Ok(true),
            "timed out waiting for: {what}; {:?}",
            self.handle.status()
        );
    }

    fn hosts_text(&self) -> String {
        std::fs::read_to_string(&self.hosts).unwrap_or_default()
    }

    fn health_reasons(&self) -> Vec<String> {
        self.gw.gateway.health().reasons
    }

    fn metrics(&self) -> String {
        self.gw.gateway.metrics().render()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Answers `vps-<ip with dashes>` for every MAC starting with `prefix`,
/// "not mine" for the rest.
fn by_ip(
    prefix: &'static str,
) -> impl Fn(
    gatemesh_handlers::Context,
    pb::FindVpsByLeaseRequest,
) -> std::future::Ready<Result<pb::FindVpsByLeaseResponse, Status>>
+ Send
+ Sync
+ 'static {
    move |_ctx, req| {
        std::future::ready(Ok(if req.mac.starts_with(prefix) {
            pb::FindVpsByLeaseResponse {
                vps_id: format!("vps-{}", req.ip.replace(['.', ':'], "-")),
                organization_id: "org".into(),
            }
        } else {
            pb::FindVpsByLeaseResponse::default()
        }))
    }
}

#[tokio::test]
async fn a_poisoned_line_and_a_non_utf8_byte_cost_only_their_lines() {
    let node = Node::start("dhcp-poison", |_, _| {}).await;
    let _prod = start_instance(&node.gw, "prod-1", "prod", by_ip("52:54:00:a0"));
    node.gw.wait_instances(1).await;
    let later = unix_now() + 3600;
    let mut bytes = lease(later, "52:54:00:a0:00:01", "10.11.0.1", "*").into_bytes();
    // The expiry that overflowed SystemTime and killed a worker.
    bytes.extend(lease(u64::MAX, "52:54:00:a0:00:02", "10.11.0.2", "*").bytes());
    // One byte that is not UTF-8 once rejected the whole file.
    bytes.extend(b"1732243600 52:54:00:a0:00:03 10.11.0.3 caf\xe9 *\n");
    std::fs::write(&node.leases, &bytes).unwrap();
    node.wait("the good lease resolves", |s| {
        s.resolved == 1 && s.hosts_entries == 1
    })
    .await;
    let status = node.handle.status();
    assert_eq!(status.malformed_lines, 2, "{status:?}");
    assert!(node.hosts_text().ends_with("10.11.0.1 vps-10-11-0-1\n"));
    let metrics = node.metrics();
    assert_eq!(
        sample(&metrics, "gatemesh_gateway_dhcp_malformed_lines", ""),
        2.0
    );
    assert!(
        sample(
            &metrics,
            "gatemesh_gateway_dhcp_malformed_lines_seen_total",
            ""
        ) >= 2.0
    );

    // The poison stays in the file, and new leases still resolve.
    bytes.extend(lease(later, "52:54:00:a0:00:04", "10.11.0.4", "*").bytes());
    bytes.extend(b"\xff\xfe\x00 garbage\n");
    std::fs::write(&node.leases, &bytes).unwrap();
    node.wait("the new lease resolves", |s| {
        s.resolved == 2 && s.hosts_entries == 2
    })
    .await;
    assert!(node.hosts_text().ends_with("10.11.0.4 vps-10-11-0-4\n"));
    let status = node.handle.status();
    assert_eq!(status.malformed_lines, 3, "{status:?}");
    assert!(status.running && status.crashes == 0, "{status:?}");
}

#[tokio::test]
async fn a_crashed_manager_reports_and_recovers() {
    let node = Node::start("dhcp-crash", |c, _| {
        c.restart_base = Duration::from_millis(50);
        c.restart_max = Duration::from_millis(200);
    })
    .await;
    let _prod = start_instance(&node.gw, "prod-1", "prod", by_ip("52:54:00:c0"));
    node.gw.wait_instances(1).await;
    let later = unix_now() + 3600;
    let one = lease(later, "52:54:00:c0:00:01", "10.12.0.1", "*");
    write_file(&node.leases, &one);
    node.wait("the first lease resolves", |s| s.hosts_entries == 1)
        .await;

    node.handle.inject_crash().await;
    node.wait("the crash is counted and the manager is back", |s| {
        s.crashes == 1 && s.running
    })
    .await;
    let reasons = node.health_reasons();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("dhcp: the manager crashed (1 time(s))")
                && r.contains("crash injected")),
        "{reasons:?}"
    );
    assert_eq!(
        sample(&node.metrics(), "gatemesh_gateway_dhcp_crashes_total", ""),
        1.0
    );

    // Back from the files on disk: the old name stays, a new lease resolves.
    let two = [one, lease(later, "52:54:00:c0:00:02", "10.12.0.2", "*")].concat();
    write_file(&node.leases, &two);
    node.wait("the new lease resolves after the restart", |s| {
        s.resolved == 2 && s.hosts_entries == 2
    })
    .await;
    assert!(node.hosts_text().contains("10.12.0.1 vps-10-12-0-1\n"));
    assert!(node.hosts_text().contains("10.12.0.2 vps-10-12-0-2\n"));
}

#[tokio::test]
async fn a_tenant_cannot_name_itself() {
    const MAC_GOOD: &str = "52:54:00:d0:00:01";
    const MAC_TENANT: &str = "52:54:00:d0:00:02";
    let node = Node::start("dhcp-tenant", |_, _| {}).await;
    let _prod = start_instance(&node.gw, "prod-1", "prod", knows(MAC_GOOD, "vps-good"));
    node.gw.wait_instances(1).await;
    let later = unix_now() + 3600;
    // The tenant's VM sends the DHCP hostname of another VPS.
    let text = [
        lease(later, MAC_GOOD, "10.9.0.19", "*"),
        lease(later, MAC_TENANT, "10.9.1.1", "vps-good"),
    ]
    .concat();
    write_file(&node.leases, &text);
    node.wait("both leases were asked about", |s| {
        s.resolved == 1 && s.calls >= 2 && s.in_flight == 0 && s.hosts_entries == 1
    })
    .await;
    assert_eq!(
        node.hosts_text(),
        format!("{}10.9.0.19 vps-good\n", hosts::HEADER),
        "the tenant's hostname named nothing"
    );

    // The opt-in for trusted networks has an off switch that works, and an
    // empty prefix does not turn the shortcut on.
    let dir = TempDir::new("dhcp-tenant-config");
    let base = |extra: &[(&str, &str)]| {
        let mut vars = vec![
            ("GATEWAY_API_SECRET".to_string(), SECRET.to_string()),
            (
                "GATEWAY_DHCP_LEASES_FILE".into(),
                dir.join("leases").to_string_lossy().into_owned(),
            ),
            (
                "GATEWAY_DHCP_HOSTS_FILE".into(),
                dir.join("hosts").to_string_lossy().into_owned(),
            ),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        NodeSettings::from_vars(vars).unwrap().dhcp().unwrap()
    };
    assert!(!base(&[]).trust_hostnames);
    assert!(!base(&[("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", "")]).trust_hostnames);
    assert!(!base(&[("GATEWAY_DHCP_TRUST_HOSTNAMES", "false")]).trust_hostnames);
    assert!(base(&[("GATEWAY_DHCP_TRUST_HOSTNAMES", "true")]).trust_hostnames);
}

#[tokio::test]
async fn only_vps_names_reach_the_hosts_file_and_refusals_stay_small() {
    let huge: &'static str = Box::leak(format!("vps-{}", "a".repeat(4_000_000)).into_boxed_str());
    let answers: Arc<Vec<(&'static str, &'static str)>> = Arc::new(vec![
        ("52:54:00:e0:00:01", "localhost"),
        ("52:54:00:e0:00:02", "www.example.com"),
        ("52:54:00:e0:00:03", "vps-x\n10.0.0.99 evil"),
        ("52:54:00:e0:00:04", huge),
        ("52:54:00:e0:00:05", huge),
        ("52:54:00:e0:00:06", "."),
        ("52:54:00:e0:00:07", ".."),
        ("52:54:00:e0:00:08", "vps-ok"),
    ]);
    let node = Node::start("dhcp-names", |c, _| {
        c.namespace.environments = vec!["prod".into(), "beta".into()];
    })
    .await;
    let table = answers.clone();
    let _prod = start_instance(&node.gw, "prod-1", "prod", move |_ctx, req| {
        let vps_id = table
            .iter()
            .find(|(mac, _)| *mac == req.mac)
            .map(|(_, id)| id.to_string())
            .unwrap_or_default();
        std::future::ready(Ok(pb::FindVpsByLeaseResponse {
            vps_id,
            organization_id: "org".into(),
        }))
    });
    // A dev instance claims a lease: dev may not name leases on this node.
    let _dev = start_instance(
        &node.gw,
        "dev-1",
        "dev",
        knows("52:54:00:e0:00:09", "vps-dev-claims"),
    );
    node.gw.wait_instances(2).await;
    let later = unix_now() + 3600;
    let text: String = (1..=9)
        .map(|i| {
            lease(
                later,
                &format!("52:54:00:e0:00:{i:02x}"),
                &format!("10.13.0.{i}"),
                "*",
            )
        })
        .collect();
    write_file(&node.leases, &text);
    node.wait("every answer was judged", |s| {
        s.resolved == 1 && s.refused.values().sum::<u64>() >= 7 && s.hosts_entries == 1
    })
    .await;
    assert_eq!(
        node.hosts_text(),
        format!("{}10.13.0.8 vps-ok\n", hosts::HEADER)
    );
    let metrics = node.metrics();
    let refused = |reason: &str| {
        sample(
            &metrics,
            "gatemesh_gateway_dhcp_refused_answers_total",
            &format!("reason=\"{reason}\""),
        )
    };
    assert!(refused("outside_namespace") >= 2.0, "{metrics}");
    assert!(refused("not_dns_name") >= 3.0, "{metrics}");
    assert!(refused("too_long") >= 2.0, "{metrics}");

    // What the manager keeps of the refusals is small: a code and a short
    // reason per lease, whatever the instance sent.
    let instance =
        Instance::new(options("reader-1", "prod"), Registry::new()).start([node.gw.url()]);
    instance.wait_connected().await;
    let answer = instance
        .call::<GetLeases>(pb::GetLeasesRequest::default(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(answer.leases.len(), 9);
    for lease in &answer.leases {
        assert!(lease.last_error.len() <= 200, "{lease:?}");
        assert!(lease.vps_id.is_empty() || lease.vps_id == "vps-ok");
    }
    let huge_error = &answer
        .leases
        .iter()
        .find(|l| l.ip == "10.13.0.4")
        .unwrap()
        .last_error;
    assert!(
        huge_error.contains("prod-1") && huge_error.contains("longer"),
        "{huge_error}"
    );
    assert!(
        answer.state_bytes < 16 * 1024,
        "{} bytes",
        answer.state_bytes
    );
    let dev = answer.leases.iter().find(|l| l.ip == "10.13.0.9").unwrap();
    assert!(dev.vps_id.is_empty(), "{dev:?}");
}

#[tokio::test]
async fn get_leases_pages_a_slash_16_without_killing_the_callers_stream() {
    const LEASES: usize = 70_000;
    let node = Node::start("dhcp-pages", |c, _| {
        // Named by hostname, so that 70,000 leases need no 70,000 calls.
        c.trust_hostnames = true;
    })
    .await;
    let text: String = (0..LEASES)
        .map(|i| {
            let (top, hi, lo) = (i >> 16, (i >> 8) & 0xff, i & 0xff);
            lease(
                0,
                &format!("52:54:00:{top:02x}:{hi:02x}:{lo:02x}"),
                &format!("10.{}.{hi}.{lo}", 100 + top),
                &format!("vps-{i}"),
            )
        })
        .collect();
    write_file(&node.leases, &text);
    node.wait("every lease is named", |s| s.resolved == LEASES)
        .await;

    let instance =
        Instance::new(options("reader-1", "prod"), Registry::new()).start([node.gw.url()]);
    instance.wait_connected().await;
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = instance
            .call::<GetLeases>(
                pb::GetLeasesRequest {
                    page_size: 5000,
                    page_token: token.clone(),
                },
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        pages += 1;
        assert!(page.leases.len() <= 5000);
        assert_eq!(page.leases_seen, LEASES as u64);
        for lease in page.leases {
            assert!(seen.insert(lease.ip), "no lease twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), LEASES);
    assert_eq!(pages, LEASES.div_ceil(5000));

    // No size given: a default page. Too large a size: capped.
    let page = instance
        .call::<GetLeases>(pb::GetLeasesRequest::default(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(page.leases.len(), 1000);
    let page = instance
        .call::<GetLeases>(
            pb::GetLeasesRequest {
                page_size: u32::MAX,
                page_token: String::new(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(page.leases.len(), 5000);
    // A forged token is a clear error, and the stream lives on.
    let e = instance
        .call::<GetLeases>(
            pb::GetLeasesRequest {
                page_size: 10,
                page_token: "not a token".into(),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("InvalidArgument"), "{e:?}");
    let link = &instance.status()[0];
    assert!(
        link.connected && link.connects == 1,
        "the caller kept its stream: {link:?}"
    );
    assert_eq!(node.gw.gateway.instances().len(), 1);
}

/// Rewrites `path` the way dnsmasq does: the same file, rewound and
/// truncated, then written; here in `pieces` with a pause after each, so
/// any reader in between sees a prefix of the new file.
fn rewrite_in_place(path: &Path, content: &[u8], pieces: usize, pause: Duration) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.rewind().unwrap();
    file.set_len(0).unwrap();
    for chunk in content.chunks(content.len().div_ceil(pieces)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(pause);
    }
}

/// The other order, which older dnsmasq and hand-written tools use:
/// rewind, write over the old bytes, truncate at the end.
fn overwrite_then_truncate(path: &Path, content: &[u8], pieces: usize, pause: Duration) {
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.rewind().unwrap();
    for chunk in content.chunks(content.len().div_ceil(pieces)) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(pause);
    }
    file.set_len(content.len() as u64).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_file_rewritten_in_place_never_flaps_a_name() {
    const N: usize = 41;
    let node = Node::start("dhcp-torn", |c, _| {
        // The reconcile reads mid-rewrite too.
        c.reconcile = Duration::from_millis(70);
    })
    .await;
    let _prod = start_instance(&node.gw, "prod-1", "prod", by_ip("52:54:00:70"));
    node.gw.wait_instances(1).await;
    let later = unix_now() + 3600;
    let render = |round: usize| -> Vec<u8> {
        let mut lines: Vec<String> = (0..N)
            .map(|i| {
                // Hostnames change length from round to round, so an
                // overwrite leaves torn lines behind, as a real one can.
                let host = if (i + round).is_multiple_of(3) {
                    "*".to_string()
                } else {
                    format!("guest-{}", "x".repeat((i * 7 + round) % 13))
                };
                lease(
                    later + round as u64,
                    &format!("52:54:00:70:00:{i:02x}"),
                    &format!("10.14.0.{}", i + 1),
                    &host,
                )
            })
            .collect();
        lines.rotate_left(round % N);
        lines.concat().into_bytes()
    };
    std::fs::write(&node.leases, render(0)).unwrap();
    node.wait("all leases written", |s| s.hosts_entries == N)
        .await;
    let expected: Vec<String> = (1..=N)
        .map(|i| format!("10.14.0.{i} vps-10-14-0-{i}\n"))
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, samples, hosts) = (done.clone(), samples.clone(), node.hosts.clone());
        let expected = expected.clone();
        std::thread::spawn(move || -> Result<(), String> {
            while !done.load(Ordering::SeqCst) {
                let text = std::fs::read_to_string(&hosts).map_err(|e| e.to_string())?;
                if let Some(missing) = expected.iter().find(|line| !text.contains(line.as_str())) {
                    return Err(format!("{missing:?} vanished from the hosts file:\n{text}"));
                }
                samples.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        })
    };
    let writer = {
        let path = node.leases.clone();
        let rounds: Vec<Vec<u8>> = (1..=8).map(render).collect();
        tokio::task::spawn_blocking(move || {
            for (round, content) in rounds.iter().enumerate() {
                // Pauses longer than the settle time, as a busy node has.
                let pause = Duration::from_millis(45);
                if round.is_multiple_of(2) {
                    rewrite_in_place(&path, content, 6, pause);
                } else {
                    overwrite_then_truncate(&path, content, 6, pause);
                }
            }
        })
    };
    writer.await.unwrap();
    // The last rewrite is read in full before the sampling stops.
    let reads = node.handle.status().lease_reads;
    node.wait("the final file was read", |s| s.lease_reads > reads + 1)
        .await;
    done.store(true, Ordering::SeqCst);
    let sampled = sampler.join().unwrap();
    assert_eq!(sampled, Ok(()));
    assert!(
        samples.load(Ordering::SeqCst) > 50,
        "the hosts file was sampled throughout"
    );
    // A line torn by an overwrite may have looked like a lease for a
    // moment; it is gone once the grace has passed.
    node.wait("exactly the real leases remain", |s| {
        s.leases_seen == N && s.resolved == N
    })
    .await;
    let status = node.handle.status();
    assert!(
        status.lease_reads > 10,
        "the torn file was read many times: {status:?}"
    );
}

#[tokio::test]
async fn a_pid_file_naming_another_process_gets_no_signal() {
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = sleeper.id();
    let node = Node::start("dhcp-pid", |c, dir| {
        let pid_file = dir.join("dnsmasq.pid");
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
        c.pid_file = Some(pid_file);
    })
    .await;
    let _prod = start_instance(&node.gw, "prod-1", "prod", by_ip("52:54:00:b0"));
    node.gw.wait_instances(1).await;
    write_file(
        &node.leases,
        &lease(0, "52:54:00:b0:00:01", "10.15.0.1", "*"),
    );
    node.wait("the file is written and the reload refused", |s| {
        s.hosts_entries == 1 && s.reload_failures >= 1
    })
    .await;
    assert!(sleeper.try_wait().unwrap().is_none(), "sleep survived");
    let status = node.handle.status();
    assert_eq!(status.reloads, 0);
    let reasons = node.health_reasons();
    assert!(
        reasons.iter().any(|r| r.starts_with("dhcp:")
            && r.contains("dnsmasq not reloaded")
            && r.contains(&format!("pid {pid}"))
            && r.contains("\"sleep\", not dnsmasq")),
        "{reasons:?}"
    );
    assert!(
        sample(
            &node.metrics(),
            "gatemesh_gateway_dhcp_reload_failures_total",
            ""
        ) >= 1.0
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[tokio::test]
async fn an_unwritable_or_vandalised_hosts_file_shows_and_is_repaired() {
    let node = Node::start("dhcp-repair", |c, dir| {
        // A directory that is not there (root writes anywhere else).
        c.hosts_file = dir.join("missing/hosts");
        c.reconcile = Duration::from_millis(100);
        c.holder_retry_max = Duration::from_millis(100);
    })
    .await;
    let http = serve(&node.gw.gateway).await;
    let _prod = start_instance(&node.gw, "prod-1", "prod", by_ip("52:54:00:f0"));
    node.gw.wait_instances(1).await;
    write_file(
        &node.leases,
        &lease(0, "52:54:00:f0:00:01", "10.16.0.1", "*"),
    );
    node.wait("the write fails, again", |s| {
        s.resolved == 1 && s.write_failures >= 2
    })
    .await;
    let (_, health) = get_json(http, "/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("dhcp: hosts file not written"),
        "{reasons}"
    );
    assert!(reasons.contains("missing/hosts"), "{reasons}");
    assert!(
        sample(
            &node.metrics(),
            "gatemesh_gateway_dhcp_write_failures_total",
            ""
        ) >= 2.0
    );

    // The directory appears: the file is written without any lease change.
    std::fs::create_dir_all(node.dir.join("missing")).unwrap();
    node.wait("the file is written", |s| {
        s.hosts_entries == 1 && s.write_error.is_none()
    })
    .await;
    let want = format!("{}10.16.0.1 vps-10-16-0-1\n", hosts::HEADER);
    assert_eq!(node.hosts_text(), want);
    let (_, health) = get_json(http, "/health").await;
    assert!(!health["reasons"].to_string().contains("dhcp:"), "{health}");

    // Deleted: rewritten, and counted.
    std::fs::remove_file(&node.hosts).unwrap();
    node.wait("the deleted file is repaired", |s| s.hosts_repairs >= 1)
        .await;
    eventually("the file is back", || node.hosts_text() == want).await;
    // Edited by hand: rewritten too.
    std::fs::write(&node.hosts, format!("{want}10.16.0.99 vps-intruder\n")).unwrap();
    node.wait("the edited file is repaired", |s| s.hosts_repairs >= 2)
        .await;
    eventually("the edit is gone", || node.hosts_text() == want).await;
    assert!(
        sample(
            &node.metrics(),
            "gatemesh_gateway_dhcp_hosts_repairs_total",
            ""
        ) >= 2.0
    );
}

#[tokio::test]
async fn a_failing_holder_is_retried_soon_and_reported() {
    const MAC: &str = "52:54:00:f1:00:01";
    let node = Node::start("dhcp-holder", |c, _| {
        // "Nobody has it" would wait an hour; a failed holder must not.
        c.retry_base = Duration::from_secs(3600);
        c.retry_max = Duration::from_secs(3600);
        c.holder_retry_max = Duration::from_millis(50);
    })
    .await;
    let failures = Arc::new(AtomicUsize::new(0));
    let healed = Arc::new(AtomicBool::new(false));
    let (f, h) = (failures.clone(), healed.clone());
    let _prod = start_instance(&node.gw, "prod-1", "prod", move |_ctx, req| {
        let (f, h) = (f.clone(), h.clone());
        async move {
            if !h.load(Ordering::SeqCst) {
                f.fetch_add(1, Ordering::SeqCst);
                return Err(Status::unavailable("inventory database unreachable"));
            }
            Ok(pb::FindVpsByLeaseResponse {
                vps_id: if req.mac == MAC {
                    "vps-held".into()
                } else {
                    String::new()
                },
                organization_id: "org".into(),
            })
        }
    });
    node.gw.wait_instances(1).await;
    write_file(&node.leases, &lease(0, MAC, "10.17.0.1", "*"));
    node.wait("the holder failed twice", |s| {
        s.holder_failures >= 2 && s.holder_failing == 1
    })
    .await;
    let reasons = node.health_reasons();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("dhcp: 1 lease(s) unresolved")
                && r.contains("inventory database unreachable")),
        "{reasons:?}"
    );
    let metrics = node.metrics();
    assert!(sample(&metrics, "gatemesh_gateway_dhcp_holder_failures_total", "") >= 2.0);
    assert_eq!(
        sample(&metrics, "gatemesh_gateway_dhcp_holder_failing", ""),
        1.0
    );

    healed.store(true, Ordering::SeqCst);
    node.wait("resolved once the holder recovers", |s| {
        s.resolved == 1 && s.holder_failing == 0
    })
    .await;
    assert!(!node.health_reasons().iter().any(|r| r.starts_with("dhcp:")));
}

/// The holder fails while another instance says "not mine": that is a
/// holder failure too, retried soon. Needs `first_valid` to tell "nobody
/// has it" from "the holder failed" (issue 12).
#[tokio::test]
async fn a_holder_failing_beside_a_not_mine_is_still_a_holder_failure() {
    let node = Node::start("dhcp-holder-mixed", |c, _| {
        c.retry_base = Duration::from_secs(3600);
        c.retry_max = Duration::from_secs(3600);
        c.holder_retry_max = Duration::from_millis(50);
    })
    .await;
    let _beta = start_instance(&node.gw, "beta-1", "beta", by_ip("none"));
    let _prod = start_instance(&node.gw, "prod-1", "prod", |_ctx, _req| {
        std::future::ready(Err::<pb::FindVpsByLeaseResponse, _>(Status::unavailable(
            "inventory database unreachable",
        )))
    });
    node.gw.wait_instances(2).await;
    write_file(
        &node.leases,
        &lease(0, "52:54:00:f2:00:01", "10.18.0.1", "*"),
    );
    node.wait("the holder failure is seen as one", |s| {
        s.holder_failures >= 2 && s.holder_failing == 1
    })
    .await;
}
