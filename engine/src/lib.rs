//! The stream engine: what both ends of a gatemesh stream do, written once.
//!
//! A gateway and an instance hold one long-lived bidirectional stream and
//! behave the same on it: each sends requests and answers the other's,
//! cancels, pings, drains and cleans up. Each end adds only what differs
//! (the gateway's hello and routing, the instance's dialing and
//! reconnect) through [`Direction`] and [`End`].
//!
//! - [`wire`]: [`Direction`], the two envelopes and the frames both carry
//!   ([`Frame`]); [`AtGateway`] and [`AtInstance`].
//! - [`conn`]: [`Conn`], one stream: its bounded outbound queue, its
//!   pending calls, the dispatcher of the peer's requests, and its
//!   [`Lifecycle`].
//! - [`outbound`]: [`Outbound`], the writer: the queue as the stream's
//!   half, ended as the close asks (flush, `GoAway`, status).
//! - [`reader`]: [`serve`], the read loop (bounded batches under tokio's
//!   cooperative budget, heartbeats, cancels, violations) and the one
//!   cleanup every exit runs.
//! - [`pending`]: [`Pending`], this end's calls awaiting their answers.
//! - [`disconnect`]: [`Disconnect`], why a stream ended.

#![forbid(unsafe_code)]

pub mod conn;
pub mod disconnect;
pub mod outbound;
pub mod pending;
pub mod reader;
pub mod wire;

pub use conn::{Conn, ConnConfig, Lifecycle, Phase, SendError, StreamObserver, Unobserved};
pub use disconnect::Disconnect;
pub use outbound::Outbound;
pub use pending::{Completion, Outcome, Pending};
pub use reader::{End, Heartbeat, MAX_DROPPED_ANSWERS, MAX_VIOLATIONS, Session, serve};
pub use wire::{AtGateway, AtInstance, Direction, Frame, FromGateway, FromInstance};
