//! What `/health` and `/ready` report: the gateway's own state (see
//! `Shared::health`) plus the checks components register ([`Checks`]),
//! each failing one named.

use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

/// A component's check: `None` when fine, `Some(reason)` when not.
pub type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Checks {
    pub(crate) health: RwLock<Vec<(String, Check)>>,
    pub(crate) readiness: RwLock<Vec<(String, Check)>>,
}

impl Checks {
    pub(crate) fn add_health(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        let entry = (name.into(), Arc::new(check) as Check);
        self.health.write().push(entry);
    }

    pub(crate) fn add_readiness(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        let entry = (name.into(), Arc::new(check) as Check);
        self.readiness.write().push(entry);
    }
}

impl std::fmt::Debug for Checks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |list: &RwLock<Vec<(String, Check)>>| {
            list.read()
                .iter()
                .map(|(n, _)| n.clone())
                .collect::<Vec<_>>()
        };
        f.debug_struct("Checks")
            .field("health", &names(&self.health))
            .field("readiness", &names(&self.readiness))
            .finish()
    }
}

/// Runs the checks (copied out of the lock first) and names each failure.
pub(crate) fn failures(list: &RwLock<Vec<(String, Check)>>) -> Vec<String> {
    let checks = list.read().clone();
    checks
        .iter()
        .filter_map(|(name, check)| check().map(|why| format!("{name}: {why}")))
        .collect()
}

pub use gatemesh_runtime::http::HealthStatus;

/// The body of `GET /health`.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub instances: usize,
    pub gateway_id: String,
    pub uptime_ms: u64,
    /// Why the status is not `healthy`; empty when it is.
    pub reasons: Vec<String>,
}

/// The body of `GET /ready`.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub reasons: Vec<String>,
}
