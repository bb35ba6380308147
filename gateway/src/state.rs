//! [`Shared`]: the one home of the state every stream and call of one
//! gateway shares. Built once by [`crate::Gateway`]; the stream loop and the
//! services read it, and each field says who writes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gatemesh_handlers::{DispatchConfig, Handlers};
use gatemesh_runtime::Served;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::credentials::Credentials;
use crate::health::{Checks, Health, HealthStatus, Readiness};
use crate::metrics::Metrics;
use crate::refusal::Refusals;
use crate::stats::Stats;
use crate::{GatewayConfig, Instances, Mesh};

pub(crate) struct Shared {
    /// The settings, fixed at start.
    pub(crate) config: GatewayConfig,
    /// Every credential the gateway accepts and what each may name, from
    /// the settings.
    pub(crate) credentials: Arc<Credentials>,
    /// Refusals at the boundary, counted and logged.
    pub(crate) refusals: Arc<Refusals>,
    /// This gateway's name, sent in welcome and `GetGatewayInfo`.
    pub(crate) gateway_id: String,
    /// The connected instances; streams insert and remove themselves.
    pub(crate) instances: Arc<Instances>,
    /// Counters every part bumps; read by `/metrics` and the admin API.
    pub(crate) stats: Arc<Stats>,
    /// The call API, routing over `instances`.
    pub(crate) mesh: Mesh,
    /// Handlers of the methods the gateway serves to instances.
    pub(crate) registry: Arc<Handlers>,
    /// How each stream's dispatcher runs instances' calls to the gateway.
    pub(crate) dispatch: DispatchConfig,
    /// Handlers of instances' calls running at once, over all streams.
    pub(crate) permits: Arc<Semaphore>,
    /// Every stream's task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
    /// The next stream's connection id (ownership checks on cleanup).
    next_conn: AtomicU64,
    /// Set once the gRPC server runs; `/ready` waits for it.
    pub(crate) serving: AtomicBool,
    /// When the gateway started, for uptime.
    pub(crate) started: Instant,
    /// The Prometheus registry behind `/metrics`.
    pub(crate) metrics: Metrics,
    /// The counters of instances' calls to the gateway (the dispatchers'
    /// observer).
    pub(crate) served: Arc<Served>,
    /// Named health checks `/health` runs.
    pub(crate) checks: Checks,
    /// The grpc.health.v1 status, flipped to not serving on drain.
    pub(crate) health: tonic_health::server::HealthReporter,
}

/// The parts of [`Shared`] a caller must build; the rest start empty.
pub(crate) struct Parts {
    pub(crate) config: GatewayConfig,
    pub(crate) refusals: Arc<Refusals>,
    pub(crate) gateway_id: String,
    pub(crate) instances: Arc<Instances>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mesh: Mesh,
    pub(crate) registry: Arc<Handlers>,
    pub(crate) dispatch: DispatchConfig,
    pub(crate) started: Instant,
    pub(crate) metrics: Metrics,
    pub(crate) served: Arc<Served>,
}

impl Shared {
    pub(crate) fn new(parts: Parts) -> Self {
        let permits = Arc::new(Semaphore::new(parts.config.max_concurrency));
        Self {
            credentials: Arc::new(Credentials::from_config(&parts.config)),
            refusals: parts.refusals,
            config: parts.config,
            gateway_id: parts.gateway_id,
            instances: parts.instances,
            stats: parts.stats,
            mesh: parts.mesh,
            registry: parts.registry,
            dispatch: parts.dispatch,
            permits,
            tasks: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            serving: AtomicBool::new(false),
            started: parts.started,
            metrics: parts.metrics,
            served: parts.served,
            checks: Checks::default(),
            health: tonic_health::server::HealthReporter::new(),
        }
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether shutdown has begun: the instance table, closed to new
    /// registrations by the drain, is the one place that says so.
    pub(crate) fn is_draining(&self) -> bool {
        self.instances.is_closed()
    }

    /// What `/health` reports.
    pub(crate) fn health(&self) -> Health {
        let instances = self.instances.len();
        let (status, reasons) = if self.is_draining() {
            (HealthStatus::Unhealthy, vec!["draining".to_string()])
        } else {
            let mut reasons = Vec::new();
            if !self.serving.load(Ordering::Relaxed) {
                reasons.push("gRPC server not serving yet".to_string());
            }
            if instances == 0 {
                reasons.push("no instance connected".to_string());
            }
            if let Some(pressure) = gatemesh_runtime::limits::fd_pressure() {
                reasons.push(pressure);
            }
            reasons.extend(crate::health::failures(&self.checks.health));
            let status = if reasons.is_empty() {
                HealthStatus::Healthy
            } else {
                HealthStatus::Degraded
            };
            (status, reasons)
        };
        Health {
            status,
            instances,
            gateway_id: self.gateway_id.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            reasons,
        }
    }

    pub(crate) fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("draining".to_string());
        } else if !self.serving.load(Ordering::Relaxed) {
            reasons.push("gRPC server not serving yet".to_string());
        }
        reasons.extend(crate::health::failures(&self.checks.readiness));
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}
