//! The instance's operator HTTP endpoints, on `VPS_HTTP_PORT` (off when
//! unset):
//!
//! - `GET /health`: each gateway link's state as JSON; `healthy` when every
//!   link is up, `degraded` when some are, `unhealthy` (503) when none is.
//! - `GET /metrics`: Prometheus text (OpenMetrics when the `Accept` header
//!   prefers it): handler calls by method and outcome, their latency,
//!   handlers in flight, link connects and disconnects, the span export's
//!   counters, `process_*`.
//!
//! A connection must send its request headers within `VPS_HTTP_TIMEOUT_MS`
//! (also the idle limit between requests).
//!
//! [`ServiceMetrics`] counts handler calls as the dispatcher's
//! [`DispatchObserver`](gatemesh_handlers::DispatchObserver): set it in [`InstanceOptions::dispatch`](crate::InstanceOptions)
//! before the instance starts.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gatemesh_runtime::http::{HttpLimits, HttpStats};
use gatemesh_runtime::metrics::{BuildInfo, Format, ProcessCollector};
use gatemesh_runtime::{Served, ServedNames};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::link::Link;

/// Handler metrics of one instance: [`Served`] for the instance side,
/// the same counters the gateway keeps for the requests it serves.
pub type ServiceMetrics = Served;

/// Link gauges and counters, read from the links when scraped.
struct LinkCollector(Vec<Arc<Link>>);

impl std::fmt::Debug for LinkCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LinkCollector").field(&self.0.len()).finish()
    }
}

impl Collector for LinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let statuses: Vec<_> = self.0.iter().map(|l| l.status()).collect();
        let mut up = encoder.encode_descriptor(
            "link_up",
            "1 while the link to this gateway is connected",
            None,
            MetricType::Gauge,
        )?;
        for s in &statuses {
            let labels = [("gateway", s.url.as_str())];
            ConstGauge::new(i64::from(s.connected)).encode(up.encode_family(&labels)?)?;
        }
        let mut connects = encoder.encode_descriptor(
            "link_connects",
            "Successful handshakes with this gateway",
            None,
            MetricType::Counter,
        )?;
        for s in &statuses {
            let labels = [("gateway", s.url.as_str())];
            ConstCounter::new(s.connects).encode(connects.encode_family(&labels)?)?;
        }
        let mut disconnects = encoder.encode_descriptor(
            "link_disconnects",
            "Connections to this gateway that ended",
            None,
            MetricType::Counter,
        )?;
        for s in &statuses {
            let labels = [("gateway", s.url.as_str())];
            let ended = s.connects - u64::from(s.connected && s.connects > 0);
            ConstCounter::new(ended).encode(disconnects.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

pub use gatemesh_runtime::http::HealthStatus;

#[derive(Debug, Clone, Serialize)]
pub struct LinkView {
    pub gateway: String,
    pub connected: bool,
    pub gateway_id: Option<String>,
    pub connects: u64,
    pub last_error: Option<String>,
}

/// The body of the instance's `GET /health`.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceHealth {
    pub status: HealthStatus,
    pub instance_id: String,
    pub links: Vec<LinkView>,
    /// Why the status is not `healthy`; empty when it is.
    pub reasons: Vec<String>,
}

/// What the endpoints read: the instance's links and its metrics.
#[derive(Clone)]
pub struct HttpState {
    instance_id: String,
    links: Vec<Arc<Link>>,
    registry: Arc<Registry>,
    http: Arc<HttpStats>,
    limits: HttpLimits,
}

/// The HTTP server's counters, read when scraped.
#[derive(Debug)]
struct HttpCollector(Arc<HttpStats>);

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.0.encode(&mut encoder)
    }
}

impl HttpState {
    pub fn new(
        instance_id: impl Into<String>,
        links: &[Arc<Link>],
        metrics: Arc<ServiceMetrics>,
    ) -> Self {
        let http = Arc::new(HttpStats::default());
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("gatemesh_service");
        registry.register_collector(Box::new(BuildInfo {
            name: "build_info".into(),
            version: env!("CARGO_PKG_VERSION"),
        }));
        registry.register_collector(Box::new(HttpCollector(http.clone())));
        metrics.register(
            registry,
            ServedNames {
                calls: "handler_calls",
                seconds: "handler_duration_seconds",
                in_flight: "handlers_in_flight",
            },
        );
        registry.register_collector(Box::new(LinkCollector(links.to_vec())));
        // The span export's counters (0 while export is off).
        registry.register_collector(Box::new(
            gatemesh_runtime::telemetry::ExportCollector::default(),
        ));
        Self {
            instance_id: instance_id.into(),
            links: links.to_vec(),
            registry: Arc::new(root),
            http,
            limits: HttpLimits::default(),
        }
    }

    /// The request-header deadline (`VPS_HTTP_TIMEOUT_MS`); 5 s unless
    /// set.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.limits.header_timeout = timeout;
        self
    }

    /// The deadlines and the connection cap (`VPS_HTTP_TIMEOUT_MS`,
    /// `VPS_HTTP_IDLE_TIMEOUT_MS`, `VPS_HTTP_MAX_CONNECTIONS`).
    pub fn with_limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn health(&self) -> InstanceHealth {
        let links: Vec<LinkView> = self
            .links
            .iter()
            .map(|l| {
                let s = l.status();
                LinkView {
                    gateway: s.url,
                    connected: s.connected,
                    gateway_id: s.gateway_id,
                    connects: s.connects,
                    last_error: s.last_error,
                }
            })
            .collect();
        let up = links.iter().filter(|l| l.connected).count();
        let mut reasons: Vec<String> = links
            .iter()
            .filter(|l| !l.connected)
            .map(|l| format!("{}: not connected", l.gateway))
            .collect();
        reasons.extend(gatemesh_runtime::limits::fd_pressure());
        reasons.extend(gatemesh_runtime::telemetry::export_problem());
        reasons.extend(self.http.problem());
        reasons.extend(
            self.links
                .first()
                .and_then(|l| l.tls_problem())
                .map(|p| format!("tls: {p}")),
        );
        let status = if up == 0 {
            HealthStatus::Unhealthy
        } else if reasons.is_empty() {
            HealthStatus::Healthy
        } else {
            HealthStatus::Degraded
        };
        InstanceHealth {
            status,
            instance_id: self.instance_id.clone(),
            links,
            reasons,
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render_metrics(&self) -> String {
        self.render_metrics_as(Format::Prometheus)
    }

    /// The exposition in `format`.
    pub fn render_metrics_as(&self, format: Format) -> String {
        gatemesh_runtime::metrics::render(&self.registry, format)
    }

    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .with_state(self)
    }
}

/// Serves the instance's endpoints on `listener` until `shutdown` resolves.
pub async fn serve(
    state: HttpState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (limits, stats) = (state.limits, state.http.clone());
    gatemesh_runtime::http::serve(listener, state.router(), limits, stats, shutdown)
        .await
        .context("HTTP server failed")
}

async fn health(State(state): State<HttpState>) -> Response {
    let health = state.health();
    let code = health.status.http_code();
    (code, Json(health)).into_response()
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        state.render_metrics_as(format),
    )
        .into_response()
}
