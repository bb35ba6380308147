//! [`Resolutions`]: the resolutions in flight, at most the configured
//! concurrency, each asked through the [`Resolver`] with its deadline and
//! the environments allowed. A panic in one costs only that attempt.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt as _;
use gatemesh_proto::pb;
use tokio::task::JoinSet;

use super::lease::Key;
use super::panic_message;
use super::table::Outcome;
use crate::{DhcpConfig, Resolver};

/// A finished resolution: the lease, its generation when asked, and what
/// came back.
pub(crate) type Resolution = ((Key, u64), Outcome);

pub(crate) struct Resolutions<'r, R> {
    resolver: &'r R,
    running: JoinSet<Resolution>,
    concurrency: usize,
    timeout: Duration,
    environments: Vec<String>,
}

impl<'r, R: Resolver> Resolutions<'r, R> {
    pub(crate) fn new(resolver: &'r R, config: &DhcpConfig) -> Self {
        Self {
            resolver,
            running: JoinSet::new(),
            concurrency: config.concurrency,
            timeout: config.call_timeout,
            environments: config.namespace.environments.clone(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.running.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Whether another may start.
    pub(crate) fn has_room(&self) -> bool {
        self.running.len() < self.concurrency
    }

    /// Asks who holds `key`'s lease.
    pub(crate) fn start(&mut self, key: Key, generation: u64, request: pb::FindVpsByLeaseRequest) {
        let call =
            self.resolver
                .find_vps_by_lease(request, self.timeout, self.environments.clone());
        self.running.spawn(async move {
            let outcome = AssertUnwindSafe(call)
                .catch_unwind()
                .await
                .map_err(|panic| panic_message(&*panic));
            ((key, generation), outcome)
        });
    }

    /// The next resolution to finish; `None` when none runs. Resolutions
    /// catch their own panics; a join error is an abort, which only
    /// shutdown does.
    pub(crate) async fn next(&mut self) -> Option<Resolution> {
        self.running.join_next().await?.ok()
    }

    /// Drops every resolution in flight, which cancels it.
    pub(crate) fn abort_all(&mut self) {
        self.running.abort_all();
    }
}
