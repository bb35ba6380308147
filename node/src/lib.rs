//! A gatemesh node: the `vps-gateway` binary's library, and the one
//! composition root. It alone knows the gateway, the DHCP manager, the IP
//! allocator and dnsmasq together: it reads their settings, builds a
//! [`Gateway`], and plugs the others into the gateway's extension points
//! (gateway methods, metrics collectors, health checks). `main` only parses
//! the settings, binds the sockets, installs signal handling and calls
//! [`run`], so tests drive the same code.
//!
//! - [`settings`]: [`NodeSettings`], every `GATEWAY_*` section read by one
//!   loader, and the checks that span sections.
//! - [`resolver`]: [`MeshResolver`], the DHCP manager's [`Resolver`] over
//!   the gateway's call API.
//! - [`plug`]: how a running component joins a gateway's `/metrics` and
//!   `/health`.
//!
//! [`Resolver`]: gatemesh_dhcp::Resolver

#![forbid(unsafe_code)]

pub mod plug;
pub mod resolver;
pub mod settings;

use std::future::Future;

use anyhow::Context as _;
use gatemesh_dhcp::{DhcpManager, DhcpService};
use gatemesh_gateway::Gateway;
use gatemesh_handlers::{GatewayRegistry, RegistryError};
use gatemesh_ipam::{Ipam, IpamError};
use tokio::net::TcpListener;

pub use resolver::MeshResolver;
pub use settings::NodeSettings;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Two handlers under one method name. (Not called `Registry`: a
    /// variant of that name would make rustc spell out
    /// `gatemesh_handlers::Registry` in every error about it.)
    #[error(transparent)]
    Handlers(#[from] RegistryError),
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

/// A gateway and what its settings turn on beside it.
pub struct Node {
    pub gateway: Gateway,
    /// The DHCP manager, running, with `GATEWAY_DHCP_LEASES_FILE`.
    pub dhcp: Option<DhcpService>,
    /// The IP allocator, running, with `GATEWAY_IP_POOL`.
    pub ipam: Option<Ipam>,
}

impl Node {
    /// Builds the node on the current runtime. With
    /// `GATEWAY_DHCP_LEASES_FILE`, the DHCP manager runs: `GetLeases` is
    /// served, its state is in `/metrics` and `/health`, and it resolves
    /// leases through the gateway's mesh. With `GATEWAY_IP_POOL`, the IP
    /// allocator starts from its reservations file and serves
    /// `AllocateIP`, `ReleaseIP` and `ListIPs`.
    pub fn start(settings: NodeSettings) -> Result<Self, StartError> {
        let mut registry = GatewayRegistry::new();
        let ipam = match settings.ipam() {
            Some(config) => {
                let ipam = Ipam::start(config)?;
                gatemesh_ipam::register(&mut registry, ipam.clone())?;
                Some(ipam)
            }
            None => None,
        };
        let dhcp = match settings.dhcp() {
            Some(config) => {
                let (manager, handle) = DhcpManager::new(config);
                gatemesh_dhcp::register(&mut registry, handle.clone())?;
                Some((manager, handle))
            }
            None => None,
        };
        let gateway = Gateway::with_handlers(settings.gateway, registry)?;
        if let Some(ipam) = &ipam {
            plug::ipam(&gateway, ipam);
        }
        let dhcp = dhcp.map(|(manager, handle)| {
            plug::dhcp(&gateway, &handle);
            DhcpService::spawn(manager, handle, MeshResolver::new(gateway.mesh()))
        });
        Ok(Self {
            gateway,
            dhcp,
            ipam,
        })
    }

    /// Stops what runs beside the gateway (the DHCP manager) and waits
    /// for it; the gateway itself stops when its `serve` is told to.
    pub async fn stop(self) {
        if let Some(dhcp) = self.dhcp {
            dhcp.stop().await;
        }
    }
}

/// Serves `node` until `shutdown` resolves: the gRPC port on `grpc` (then
/// its drain), the operator endpoints on `http`. The endpoints outlive the
/// drain, so `/health` reports it; they stop once the gateway and the DHCP
/// manager have.
pub async fn run(
    node: Node,
    grpc: TcpListener,
    http: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let gateway = node.gateway.clone();
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let endpoints = tokio::spawn(gateway.clone().serve_http(http, async {
        let _ = http_stopped.await;
    }));
    let served = gateway.serve(grpc, shutdown).await;
    node.stop().await;
    let _ = http_stop.send(());
    endpoints.await.context("HTTP server task")??;
    served
}
