//! The instance end of gatemesh: a VPS service instance that dials one or
//! more gateways, serves its registered handlers over each stream, calls
//! the gateway's methods back, and reconnects on its own.
//!
//! - [`config`]: [`ServiceConfig`], read from `VPS_*` variables.
//! - [`instance`]: [`Instance`] and [`InstanceHandle`]: one link per gateway,
//!   each with its own reconnect state.
//! - [`link`]: one gateway's stream: handshake, frame loop, heartbeats.
//! - [`http`]: the operator endpoints (`/health`, `/metrics`) and
//!   [`ServiceMetrics`], the handler counters behind them.
//! - [`tls`]: [`ClientTls`](tls::ClientTls), TLS and the client
//!   certificate for `https://` gateways.
//! - [`inventory`]: the VPS inventory behind `FindVPSByLease`.
//! - [`handlers`]: the handlers `vps-service` registers.
//! - [`allocate`]: `VPS_ALLOCATE_IPS`, addresses for the inventory's VPSs
//!   reserved on the gateway through `AllocateIP`.

#![forbid(unsafe_code)]

pub mod allocate;
pub mod config;
pub mod handlers;
pub mod http;
pub mod instance;
pub mod inventory;
pub mod link;
pub mod tls;

pub use config::ServiceConfig;
pub use http::ServiceMetrics;
pub use instance::{Instance, InstanceHandle, InstanceOptions};
pub use link::{GatewayCallError, LinkStatus};
