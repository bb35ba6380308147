//! [`DhcpConfig`]: what the manager runs with.

use std::path::PathBuf;
use std::time::Duration;

use gatemesh_dnsmasq::{Namespace, Settle};

/// What the manager runs with: the paths and limits of the
/// `GATEWAY_DHCP_*` section ([`crate::DhcpSettings::config`]), and the
/// timings tests shorten.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub leases_file: PathBuf,
    pub hosts_file: PathBuf,
    /// No reload is sent when `None`.
    pub pid_file: Option<PathBuf>,
    pub reconcile: Duration,
    pub concurrency: usize,
    /// Deadline of one resolution.
    pub call_timeout: Duration,
    /// First retry delay ceiling for a lease nobody knows yet.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// The names that may be written, and who may name leases.
    pub namespace: Namespace,
    /// A lease whose DHCP hostname is inside the namespace is named by it,
    /// without a call. The hostname is the tenant's choice: only for
    /// networks whose VMs are trusted. Off by default.
    pub trust_hostnames: bool,
    /// Leases tracked at most; the rest of a larger file is not served.
    pub max_leases: usize,
    /// After a change, the longest the file waits for resolutions still in
    /// flight, so a burst of leases gives a few writes rather than one each.
    pub flush_delay: Duration,
    /// Quiet time after a file event before the lease file is read, and
    /// between the reads that must agree before a read is used.
    pub settle: Duration,
    /// Reads, after the first, that may be spent waiting for the lease
    /// file to settle.
    pub read_attempts: usize,
    /// How long a lease must be missing from the lease file before its
    /// name goes: a rewrite paused mid-file must not flap DNS.
    pub vanish_grace: Duration,
    /// Retry cap after the holder failed (or a write failed): short.
    pub holder_retry_max: Duration,
    /// Restart delays after the manager task panicked.
    pub restart_base: Duration,
    pub restart_max: Duration,
    /// How long a crash stays in `/health` after the restart.
    pub crash_report: Duration,
    /// How long the answer for a lease that vanished is kept, in case it
    /// comes back.
    pub cache_ttl: Duration,
}

impl DhcpConfig {
    /// Defaults around the two paths.
    pub fn new(leases_file: impl Into<PathBuf>, hosts_file: impl Into<PathBuf>) -> Self {
        Self {
            leases_file: leases_file.into(),
            hosts_file: hosts_file.into(),
            pid_file: None,
            reconcile: Duration::from_secs(30),
            concurrency: 64,
            call_timeout: Duration::from_secs(2),
            retry_base: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            namespace: Namespace::default(),
            trust_hostnames: false,
            max_leases: 262_144,
            flush_delay: Duration::from_millis(200),
            settle: Duration::from_millis(20),
            read_attempts: 50,
            vanish_grace: Duration::from_secs(2),
            holder_retry_max: Duration::from_secs(5),
            restart_base: Duration::from_millis(500),
            restart_max: Duration::from_secs(30),
            crash_report: Duration::from_secs(300),
            cache_ttl: Duration::from_secs(600),
        }
    }

    /// How a read of the lease file waits for dnsmasq to finish a rewrite.
    pub fn lease_settle(&self) -> Settle {
        Settle {
            pause: self.settle,
            attempts: self.read_attempts,
        }
    }
}
