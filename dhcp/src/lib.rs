//! The DHCP lease manager of a node: watches dnsmasq's leases, asks the
//! mesh which VPS holds each, and keeps dnsmasq's `addn-hosts` file in
//! step. It knows dnsmasq (through `gatemesh-dnsmasq`) and resolves
//! through a small trait of its own ([`Resolver`]), not through the
//! gateway: the node plugs it in.
//!
//! - [`settings`]: [`DhcpSettings`], the `GATEWAY_DHCP_*` section.
//! - [`config`]: [`DhcpConfig`], what the manager runs with.
//! - [`resolver`]: [`Resolver`], how the manager asks who holds a lease
//!   and hears of instances registering.
//! - [`manager`]: [`DhcpManager`], the supervised task (restarted with
//!   backoff when it panics), and [`DhcpService`], one running.
//! - `owner`: the task itself, in parts that each own one concern (the
//!   lease table, the lease file, the resolutions, the hosts file).
//! - [`handle`]: [`DhcpHandle`], how others read the task's state.
//! - [`status`]: [`DhcpStatus`], what operators see, and [`Problem`],
//!   why `/health` is degraded.
//! - [`hosts`]: the hosts file's content.
//! - [`methods`]: [`register`], `GetLeases` on a `GatewayRegistry`.
//! - [`metrics`]: the manager's `/metrics` families, a collector.
//!
//! Trust: root writes the lease file, but the tenant's VM writes the
//! hostname and client id in it; an instance writes the VPS id. None of
//! them is trusted: a lease is named only by an instance's answer that
//! passes [`Namespace::check`] (or, opted in with `trust_hostnames`, by a
//! hostname that does).
//!
//! Wiring, as the node (`gatemesh-node`, the composition root) does it:
//!
//! ```ignore
//! let (manager, handle) = DhcpManager::new(dhcp_config);
//! let mut registry = GatewayRegistry::new();
//! gatemesh_dhcp::register(&mut registry, handle.clone())?;
//! let gateway = Gateway::with_handlers(config, registry)?;
//! gateway.metrics().register_collector(gatemesh_dhcp::metrics::collector(handle.clone()));
//! let service = DhcpService::spawn(manager, handle, MeshResolver::new(gateway.mesh()));
//! ```

#![forbid(unsafe_code)]

pub mod config;
pub mod handle;
pub mod hosts;
pub mod manager;
pub mod methods;
pub mod metrics;
mod owner;
pub mod resolver;
pub mod settings;
pub mod status;

pub use config::DhcpConfig;
pub use gatemesh_dnsmasq::{NameRefusal, Namespace};
pub use handle::{DhcpHandle, PageError};
pub use manager::{DhcpManager, DhcpService};
pub use methods::register;
pub use resolver::{ResolveError, Resolved, Resolver};
pub use settings::DhcpSettings;
pub use status::{DhcpStatus, Problem, problem};
