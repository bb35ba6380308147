//! A real dnsmasq as a child process, and a DNS query by hand over UDP, for
//! the DHCP manager's end-to-end tests.

#![allow(dead_code)]

use std::io::BufRead as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub use crate::common::e2e::DNSMASQ;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let unique = format!("gatemesh-{name}-{}-{}", std::process::id(), rand_suffix());
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}", nanos ^ (std::process::id() << 8))
}

/// A port free for both UDP and TCP on 127.0.0.1 when this returns.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Replaces a file the way an atomic writer does, so the manager never
/// reads it half-written.
pub fn write_file(path: &Path, content: &str) {
    let tmp = path.with_extension("writing");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A dnsmasq child process; its log (stderr) is collected line by line.
/// Killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub log: Arc<parking_lot::Mutex<Vec<String>>>,
}

impl Dnsmasq {
    /// dnsmasq in the foreground with `args` after the common ones: no
    /// config file, log to stderr, run as root so it can read our files.
    pub fn spawn(args: &[String]) -> Self {
        Self::spawn_with(Command::new(DNSMASQ), args)
    }

    pub fn spawn_with(mut command: Command, args: &[String]) -> Self {
        command
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--log-facility=-",
                "--user=root",
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("dnsmasq starts");
        let stderr = child.stderr.take().unwrap();
        let log: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().push(line);
            }
        });
        Self { child, log }
    }

    /// A DNS server on 127.0.0.1:`port` answering only from `hosts`.
    pub fn dns(port: u16, hosts: &Path, pid_file: &Path) -> Self {
        Self::spawn(&[
            format!("--port={port}"),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--no-negcache".into(),
            format!("--addn-hosts={}", hosts.display()),
            format!("--pid-file={}", pid_file.display()),
        ])
    }

    /// How many times dnsmasq has read `hosts` (once at start, once per
    /// SIGHUP).
    pub fn reads_of(&self, hosts: &Path) -> usize {
        let needle = format!("read {} - ", hosts.display());
        self.log
            .lock()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().join("\n")
    }

    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The A records dnsmasq at 127.0.0.1:`port` gives for `name`; `None` if
/// it did not answer within a second.
pub async fn resolve_a(port: u16, name: &str) -> Option<Vec<Ipv4Addr>> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    static NEXT_ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    socket.send_to(&query(id, name), server).await.ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    parse_a(&buf[..n], id)
}

/// A standard query for the A record of `name`, recursion desired.
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend(label.as_bytes());
    }
    q.push(0);
    q.extend([0, 1, 0, 1]);
    q
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *b.get(i)?;
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        if len == 0 {
            return Some(i + 1);
        }
        i += 1 + len as usize;
    }
}

/// The A records in a response to query `id`.
pub fn parse_a(b: &[u8], id: u16) -> Option<Vec<Ipv4Addr>> {
    if u16_at(b, 0)? != id || b.get(2)? & 0x80 == 0 {
        return None;
    }
    let questions = u16_at(b, 4)?;
    let answers = u16_at(b, 6)?;
    let mut i = 12;
    for _ in 0..questions {
        i = skip_name(b, i)? + 4;
    }
    let mut found = Vec::new();
    for _ in 0..answers {
        i = skip_name(b, i)?;
        let kind = u16_at(b, i)?;
        let len = u16_at(b, i + 8)? as usize;
        i += 10;
        if kind == 1 && len == 4 {
            let r = b.get(i..i + 4)?;
            found.push(Ipv4Addr::new(r[0], r[1], r[2], r[3]));
        }
        i += len;
    }
    Some(found)
}

/// Polls dnsmasq until `name` resolves to exactly `expected` (empty: no
/// address); panics after 20 s.
pub async fn wait_dns(port: u16, name: &str, expected: &[Ipv4Addr]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = resolve_a(port, name).await;
        if got.as_deref() == Some(expected) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} resolves to {got:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// Network namespaces for the tests that run a real DHCP client
// (dhcp_netns, ipam_netns).

/// What a test with a real DHCP client needs: dnsmasq serving one
/// namespace, busybox `udhcpc` in the other, and root to make them.
pub const NETNS_NEEDS: &[crate::common::e2e::Need] = {
    use crate::common::e2e::Need::*;
    &[Dnsmasq, Busybox, Ip, NetworkNamespaces]
};

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces (and with them the veth pair) however the test
/// ends.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}
