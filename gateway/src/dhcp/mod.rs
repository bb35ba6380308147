//! The DHCP manager: watches dnsmasq's leases, resolves each to a VPS id
//! through the mesh, and keeps dnsmasq's `addn-hosts` file in step.
//!
//! - [`leases`]: the lease file parser; takes any bytes, never fails.
//! - [`names`]: which names may reach dnsmasq (RFC 1123, the VPS namespace,
//!   the environments allowed to name leases).
//! - [`hosts`]: rendering, atomic writing, and the SIGHUP to dnsmasq (only
//!   to a process that is dnsmasq).
//! - [`manager`]: [`DhcpManager`], the one supervised task that owns the
//!   state, and [`DhcpHandle`], how others read it.
//! - [`metrics`]: the manager's `/metrics` families.
//!
//! Trust: root writes the lease file, but the tenant's VM writes the
//! hostname and client id in it; an instance writes the VPS id. None of
//! them is trusted: a lease is named only by an instance's answer that
//! passes [`names::Namespace::check`] (or, opted in with
//! `trust_hostnames`, by a hostname that does).
//!
//! Wiring, as [`crate::Gateway::from_config`] (the one composition root)
//! does it from the `GATEWAY_*` settings:
//!
//! ```ignore
//! let (manager, handle) = DhcpManager::new(dhcp_config);
//! let mut registry = GatewayRegistry::new();
//! gatemesh_gateway::dhcp::register(&mut registry, handle.clone())?;
//! let gateway = Gateway::with_handlers(config, registry)?;
//! gateway.attach_dhcp(handle.clone());
//! let service = DhcpService::spawn(manager, handle, gateway.mesh());
//! ```

pub mod hosts;
pub mod leases;
pub mod manager;
pub mod metrics;
pub mod names;

use std::path::PathBuf;
use std::time::Duration;

use gatemesh_handlers::{GatewayRegistry, HandlerError, RegistryError};
use gatemesh_proto::methods::GetLeases;
use gatemesh_proto::pb;

pub use manager::{DhcpHandle, DhcpManager, DhcpStatus, PageError, Problem};
pub use names::{Namespace, Refusal};

/// The manager's settings; see the `GATEWAY_DHCP_*` fields of
/// [`crate::GatewayConfig`].
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
}

/// A running manager, as `vps-gateway` holds it.
pub struct DhcpService {
    pub handle: DhcpHandle,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl DhcpService {
    /// Runs `manager` on the current runtime, resolving through `mesh`.
    pub fn spawn(manager: DhcpManager, handle: DhcpHandle, mesh: crate::Mesh) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(manager.run(mesh, stop.clone().cancelled_owned()));
        Self { handle, stop, task }
    }

    /// Stops the manager and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Why the manager makes the gateway degraded, if it does (see
/// [`DhcpStatus::problems`]): the reasons, joined.
pub fn problem(status: &DhcpStatus) -> Option<String> {
    let problems = status.problems();
    (!problems.is_empty()).then(|| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// Registers `GetLeases`, served from `handle`, one bounded page per call.
pub fn register(registry: &mut GatewayRegistry, handle: DhcpHandle) -> Result<(), RegistryError> {
    registry.method::<GetLeases>(
        move |ctx: gatemesh_handlers::Context, req: pb::GetLeasesRequest| {
            let handle = handle.clone();
            async move {
                tokio::time::timeout(ctx.remaining(), handle.leases_page(req))
                    .await
                    .map_err(|_| {
                        HandlerError::deadline_exceeded("the DHCP manager did not answer")
                    })?
                    .ok_or_else(|| HandlerError::unavailable("the DHCP manager is not running"))?
                    .map_err(|e| HandlerError::invalid_argument(e.to_string()))
            }
        },
    )?;
    Ok(())
}
