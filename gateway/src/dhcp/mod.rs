//! The DHCP manager: watches dnsmasq's leases, resolves each to a VPS id
//! through the mesh, and keeps dnsmasq's `addn-hosts` file in step.
//!
//! - [`leases`]: the lease file parser.
//! - [`hosts`]: rendering, atomic writing, and the SIGHUP to dnsmasq.
//! - [`manager`]: [`DhcpManager`], the one task that owns the state, and
//!   [`DhcpHandle`], how others read it.
//!
//! Wiring, as `vps-gateway` does it:
//!
//! ```ignore
//! let (manager, handle) = DhcpManager::new(DhcpConfig::from_gateway(&config).unwrap());
//! let mut registry = Registry::new();
//! gatemesh_gateway::dhcp::register(&mut registry, handle.clone())?;
//! let gateway = Gateway::with_handlers(config, registry)?;
//! gateway.attach_dhcp(handle);
//! tokio::spawn(manager.run(gateway.mesh(), shutdown));
//! ```
//!
//! [`gateway_with_dhcp`] does all of that from the `GATEWAY_*` settings.

pub mod hosts;
pub mod leases;
pub mod manager;

use std::path::PathBuf;
use std::time::Duration;

use gatemesh_handlers::{GatewayRegistry, HandlerError, Registry, RegistryError};
use gatemesh_proto::methods::GetLeases;
use gatemesh_proto::pb;

pub use manager::{DhcpHandle, DhcpManager, DhcpStatus};

use crate::{Gateway, GatewayConfig};

/// The manager's settings; see the `GATEWAY_DHCP_*` fields of
/// [`GatewayConfig`].
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
    /// Empty: every lease is resolved through the mesh.
    pub hostname_prefix: String,
    /// After a change, the longest the file waits for resolutions still in
    /// flight, so a burst of leases gives a few writes rather than one each.
    pub flush_delay: Duration,
    /// Quiet time after a file event before the lease file is read, so a
    /// rewrite in progress is not read half-done.
    pub settle: Duration,
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
            hostname_prefix: "vps-".into(),
            flush_delay: Duration::from_millis(200),
            settle: Duration::from_millis(20),
            cache_ttl: Duration::from_secs(600),
        }
    }

    /// The manager's settings when `GATEWAY_DHCP_LEASES_FILE` is set.
    pub fn from_gateway(config: &GatewayConfig) -> Option<Self> {
        let leases = config.dhcp_leases_file.clone()?;
        let hosts = config.dhcp_hosts_file.clone()?;
        Some(Self {
            pid_file: config.dnsmasq_pid_file.clone(),
            reconcile: Duration::from_millis(config.dhcp_reconcile_ms),
            concurrency: config.dhcp_concurrency,
            call_timeout: Duration::from_millis(config.dhcp_call_timeout_ms),
            retry_max: Duration::from_millis(config.dhcp_retry_max_ms),
            hostname_prefix: config.dhcp_vps_hostname_prefix.clone(),
            ..Self::new(leases, hosts)
        })
    }
}

/// A running manager, as `vps-gateway` holds it.
pub struct DhcpService {
    pub handle: DhcpHandle,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl DhcpService {
    /// Stops the manager and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// A gateway that runs the DHCP manager when `config` turns it on
/// (`GATEWAY_DHCP_LEASES_FILE`): `GetLeases` is registered, the state is
/// attached for [`Gateway::dhcp`], and the manager is spawned on the
/// current runtime.
pub fn gateway_with_dhcp(
    config: GatewayConfig,
) -> Result<(Gateway, Option<DhcpService>), RegistryError> {
    let Some(dhcp) = DhcpConfig::from_gateway(&config) else {
        return Ok((Gateway::with_handlers(config, Registry::new())?, None));
    };
    let (manager, handle) = DhcpManager::new(dhcp);
    let mut registry = Registry::new();
    register(&mut registry, handle.clone())?;
    let gateway = Gateway::with_handlers(config, registry)?;
    gateway.attach_dhcp(handle.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(manager.run(gateway.mesh(), stop.clone().cancelled_owned()));
    Ok((gateway, Some(DhcpService { handle, stop, task })))
}

/// Why the manager makes the gateway degraded, if it does: it is not
/// running, or leases stay unresolved and the last attempt failed.
pub fn problem(status: &DhcpStatus) -> Option<String> {
    if !status.running {
        return Some("the manager is not running".into());
    }
    match &status.last_error {
        Some(error) if status.pending > 0 => Some(format!(
            "{} lease(s) unresolved; last error: {error}",
            status.pending
        )),
        _ => None,
    }
}

/// Registers `GetLeases`, served from `handle`.
pub fn register(registry: &mut GatewayRegistry, handle: DhcpHandle) -> Result<(), RegistryError> {
    registry.method::<GetLeases>(
        move |ctx: gatemesh_handlers::Context, _req: pb::GetLeasesRequest| {
            let handle = handle.clone();
            async move {
                tokio::time::timeout(ctx.remaining(), handle.leases())
                    .await
                    .map_err(|_| {
                        HandlerError::deadline_exceeded("the DHCP manager did not answer")
                    })?
                    .ok_or_else(|| HandlerError::unavailable("the DHCP manager is not running"))
            }
        },
    )?;
    Ok(())
}
