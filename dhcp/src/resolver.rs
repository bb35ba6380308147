//! [`Resolver`]: the one thing the manager needs from the mesh, and all
//! it knows of it: ask the instances who holds a lease, and hear when
//! instances come or go. The node implements it over the gateway's call
//! API; tests implement it over anything.

use std::future::Future;
use std::time::Duration;

use gatemesh_proto::pb;
use tokio::sync::watch;
use tonic::Code;

/// Who holds a lease, by an instance's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The answer: a VPS id, not yet checked against the namespace.
    pub vps_id: String,
    /// The instance that answered, and its environment as the mesh knows
    /// it (from its hello, bound to its certificate under mTLS).
    pub instance: String,
    pub environment: String,
}

/// Why a lease has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Every instance asked said "not mine" (or none was there to ask).
    #[error("not found: no instance holds this lease")]
    NotFound,
    /// The holder may exist but did not answer: an error status, a
    /// disconnect, a deadline, no instance serving the method.
    #[error("{reason}")]
    Failed {
        /// The failure's gRPC code, a label in logs and lease errors.
        code: Code,
        /// The failure in words, as the mesh put it.
        reason: String,
    },
}

/// How the manager resolves leases.
pub trait Resolver: Send + Sync + 'static {
    /// Asks `FindVPSByLease` of the instances, taking the first valid
    /// answer (a non-empty VPS id): of every instance, or only of those in
    /// `environments` when it is not empty; within `timeout`.
    fn find_vps_by_lease(
        &self,
        request: pb::FindVpsByLeaseRequest,
        timeout: Duration,
        environments: Vec<String>,
    ) -> impl Future<Output = Result<Resolved, ResolveError>> + Send + 'static;

    /// Changes whenever an instance registers or leaves: a newcomer may
    /// hold the leases still waiting, so they are asked again at once.
    fn changes(&self) -> watch::Receiver<u64>;
}
