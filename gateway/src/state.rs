//! [`Shared`]: the one home of the state every stream and call of one
//! gateway shares. Built once by [`crate::Gateway`]; the stream loop and the
//! services read it, and each field says who writes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use gatemesh_handlers::{DispatchConfig, GatewayRegistry, Handlers, RegistryError};
use gatemesh_proto::methods::Catalogue;
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

impl Shared {
    /// Everything a gateway shares, built from its settings and the
    /// methods it serves (plus its own `GetGatewayInfo`).
    pub(crate) fn new(
        config: GatewayConfig,
        mut registry: GatewayRegistry,
        catalogue: Catalogue,
    ) -> Result<Self, RegistryError> {
        let gateway_id = config.gateway_id();
        let started = Instant::now();
        let instances = Arc::new(Instances::new());
        let stats = Arc::new(Stats::default());
        crate::info::register(
            &mut registry,
            gateway_id.clone(),
            started,
            Arc::downgrade(&instances),
        )?;
        let mesh = Mesh::new(
            instances.clone(),
            stats.clone(),
            config.call_timeout(),
            config.max_message_bytes,
            Arc::new(catalogue),
        );
        let served = Arc::new(Served::for_gateway());
        let refusals = Arc::new(Refusals::default());
        let metrics = Metrics::new(
            stats.clone(),
            Arc::downgrade(&instances),
            started,
            &served,
            refusals.clone(),
        );
        metrics.set_per_instance(config.metrics_per_instance);
        let dispatch = DispatchConfig {
            default_timeout: config.call_timeout(),
            observer: Some(served.clone()),
            max_in_flight_per_stream: config.max_concurrency_per_instance,
            // The gateway holds its own answers to the rule it holds
            // instances to: over the limit, that call fails, not the stream.
            max_answer_bytes: config.max_message_bytes,
            ..DispatchConfig::default()
        };
        Ok(Self {
            permits: Arc::new(Semaphore::new(config.max_concurrency)),
            credentials: Arc::new(Credentials::from_config(&config)),
            refusals,
            config,
            gateway_id,
            instances,
            stats,
            mesh,
            registry: Arc::new(registry.into_handlers()),
            dispatch,
            tasks: TaskTracker::new(),
            next_conn: AtomicU64::new(1),
            serving: AtomicBool::new(false),
            started,
            metrics,
            served,
            checks: Checks::default(),
            health: tonic_health::server::HealthReporter::new(),
        })
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
            reasons.extend(gatemesh_runtime::telemetry::export_problem());
            reasons.extend(self.metrics.http_stats().problem());
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
