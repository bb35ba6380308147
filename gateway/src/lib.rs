//! The gateway end of gatemesh, as a library.
//!
//! Instances dial in and hold one `RegisterGateway` stream each; the gateway
//! routes typed calls to them and serves calls they make back. What runs
//! beside it on a node (the DHCP manager, the IP allocator) plugs in
//! through [`Gateway`]'s extension points: gateway methods on a
//! `GatewayRegistry`, health checks, and metrics collectors. The
//! `vps-gateway` binary that wires them is `gatemesh-node`.
//!
//! - [`config`]: [`GatewayConfig`], read from `GATEWAY_*` variables.
//! - [`credentials`]: what secrets and client certificates prove: the
//!   secrets files, the environments each credential may name, the one
//!   place a secret is matched, and an instance's identity established at
//!   its hello.
//! - [`auth`]: what a request presents, and the admin API's check of it.
//! - [`refusal`]: why a peer was refused, counted
//!   (`gatemesh_auth_refused_total`) and logged once a minute per address.
//! - [`tls`]: [`GatewayTls`], TLS and mTLS on the gRPC port, terminated by
//!   the gateway so its files are reloaded when they change.
//! - [`peer`]: [`Peer`], one connected instance: its outbound queue, its
//!   pending calls, its incoming requests.
//! - [`instances`]: [`Instances`], the registry of connected peers.
//! - [`listener`]: the gRPC port's accept loop, and the deadline and cap
//!   on connections that have not authenticated yet.
//! - [`stream`]: the `RegisterGateway` handshake and per-stream loop.
//! - [`route`]: [`Route`] and [`Strategy`]: how one call picks its
//!   instances and its answer.
//! - [`call`]: [`Mesh`], the typed call API and its routing strategies.
//! - [`error`]: [`CallError`] and its one mapping to gRPC status codes.
//! - [`admin`]: the `GatewayAdmin` unary API for callers outside the process.
//! - [`plain`]: every mesh method as an ordinary gRPC service on the port,
//!   steered by metadata, for any generated client.
//! - [`headers`]: which of a gRPC caller's headers cross into the mesh as
//!   metadata (an allow-list: the trace context and `GATEWAY_FORWARD_HEADERS`).
//! - `trace`: the spans of admin and mesh calls, and the metadata (W3C
//!   trace context included) each request carries.
//! - [`info`]: methods the gateway itself serves to instances.
//! - [`stats`]: counters operators read, and the fixed label sets they use.
//! - [`metrics`]: [`Metrics`], the Prometheus exposition of those counters,
//!   and the collectors components register.
//! - [`health`]: what `/health` and `/ready` report, and the checks
//!   components register.
//! - [`http`]: the operator HTTP endpoints (`/health`, `/ready`,
//!   `/instances`, `/metrics`) and the health-check hook components use.
//! - `state`: the one home of the state every stream and call shares.
//! - [`server`]: [`Gateway`], which wires it all up ([`Gateway::routes`], to
//!   embed in another tonic server) and runs it until shutdown.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod call;
pub mod config;
pub mod credentials;
pub mod error;
pub mod headers;
pub mod health;
pub mod http;
pub mod info;
pub mod instances;
pub mod listener;
pub mod metrics;
pub mod peer;
pub mod plain;
pub mod refusal;
pub mod route;
pub mod server;
mod state;
pub mod stats;
pub mod stream;
pub mod tls;
mod trace;

pub use call::{Answer, Mesh, Reply, Route, Strategy};
pub use config::GatewayConfig;
pub use error::CallError;
pub use gatemesh_engine::Disconnect;
pub use instances::Instances;
pub use metrics::Metrics;
pub use peer::Peer;
pub use server::{BuildError, Gateway, GatewayBuilder};
pub use tls::GatewayTls;
