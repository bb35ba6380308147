//! The IP allocator of a node: the gateway hands out the addresses of its
//! node's pool to VPSs, as dnsmasq static reservations, through the
//! gateway-served `AllocateIP`, `ReleaseIP` and `ListIPs`. It knows
//! dnsmasq (through `gatemesh-dnsmasq`) and the handler registry, not the
//! gateway: the node registers its methods, its metrics and its health.
//!
//! - [`pool`]: [`Pool`], the configured ranges less the exclusions (a
//!   CIDR block's network and broadcast addresses, the node's own).
//! - [`host`]: the node's own addresses, read from its interfaces.
//! - [`table`]: the reservations and the rules that change them, and the
//!   file they are (a dnsmasq `dhcp-hostsfile` that also holds the
//!   allocator's records); no I/O, so tests drive every rule directly.
//! - `owner`: the one task that owns the table: requests in arrival order,
//!   each batch checked against one settled read of the lease file,
//!   written atomically and made durable before it is answered, one SIGHUP
//!   to dnsmasq per change; and the file watched, written again when it
//!   is deleted or edited under the gateway.
//! - [`allocator`]: [`Ipam`], how callers reach that task: allocate,
//!   release, list, and what `/health` should say.
//! - [`methods`]: [`register`], the three gateway methods on a
//!   `GatewayRegistry`.
//! - [`metrics`]: the allocator's `/metrics` families, a collector.
//! - [`settings`]: [`IpamSettings`], the `GATEWAY_IP_*` section,
//!   [`Quota`], each environment's share of the pool, and [`IpamConfig`],
//!   what the allocator runs with.
//!
//! Trust: a caller is an authenticated instance (or the admin API, which
//! holds the secret); its environment comes from the mesh, not from the
//! request, and is recorded with the reservation. Every field of a request
//! is validated into a type before the table sees it.
//!
//! Wiring, as the node (`gatemesh-node`, the composition root) does it:
//!
//! ```ignore
//! let ipam = Ipam::start(ipam_config)?;
//! gatemesh_ipam::register(&mut registry, ipam.clone())?;
//! let gateway = Gateway::with_handlers(config, registry)?;
//! gateway.metrics().register_collector(gatemesh_ipam::metrics::collector(ipam.clone()));
//! gateway.add_health_check("ipam", move || ipam.problem());
//! ```

#![forbid(unsafe_code)]

pub mod allocator;
pub mod host;
pub mod methods;
pub mod metrics;
mod owner;
pub mod pool;
pub mod settings;
pub mod table;

pub use allocator::{Ipam, IpamError};
pub use methods::register;
pub use owner::IpamStats;
pub use pool::{Pool, PoolError};
pub use settings::{IpamConfig, IpamSettings, Quota};
pub use table::{IpRefusal, Refused, Reservation, Table};
