//! Handlers: what a developer implements to serve a mesh method, and the
//! dispatcher that runs the requests a stream brings on them.
//!
//! - [`handler`]: the [`RequestHandler`] trait, the [`Context`] it gets,
//!   and [`Caller`], who sent the request and its [`Proof`].
//! - [`typed`]: [`MethodHandler`], the typed layer over a [`Method`](gatemesh_proto::Method).
//! - [`registry`]: [`Registry`], method name to handler for one side of the
//!   stream (only that side's methods compile), and [`Handlers`], the
//!   side-free table it turns into for the dispatcher.
//! - [`Status`]: what a handler fails with, tonic's own code and message.
//! - [`dispatch`]: [`Dispatcher`], runs incoming requests with deadline,
//!   cancellation and a concurrency limit.
//! - [`metadata`]: [`Metadata`], the bounded, validated key/value pairs
//!   that travel with a call.
//! - [`trace`]: W3C trace context in that metadata, and the span a served
//!   request runs in.

#![forbid(unsafe_code)]

pub mod dispatch;
pub mod handler;
pub mod metadata;
pub mod registry;
mod serve;
pub mod trace;
pub mod typed;

pub use dispatch::{DispatchConfig, DispatchObserver, Dispatcher};
pub use handler::{Caller, Context, Proof, RequestHandler};
pub use metadata::{Metadata, MetadataError};
pub use registry::{GatewayRegistry, Handlers, InstanceRegistry, Registry, RegistryError};
/// What a handler fails with: tonic's own status, so existing tonic code
/// moves over as it is.
pub use tonic::{Code, Status};
pub use typed::MethodHandler;

/// Longest method name accepted on the wire or in a registry.
pub const MAX_METHOD_NAME_LEN: usize = 128;
