//! The operator HTTP endpoints, on their own plain-HTTP listener
//! (`GATEWAY_HTTP_PORT`) so health checks need no client certificate even
//! when the gRPC port uses mTLS:
//!
//! - `GET /health`: [`Health`] as JSON; 200 when `healthy` or `degraded`,
//!   503 when `unhealthy` (draining or shutting down).
//! - `GET /ready`: 200 once the gRPC server serves and every readiness
//!   check passes, else 503 with the reasons.
//! - `GET /instances`: the connected instances, as [`InstanceView`]s, with
//!   the admin API's `InstanceInfo` field names. It tells as much as the
//!   secret-protected `ListInstances`, so on any address but loopback it
//!   asks for the secret too (`Authorization: Bearer <secret>` or the
//!   gRPC API's `x-gatemesh-secret` header).
//! - `GET /metrics`: Prometheus text, or OpenMetrics when the `Accept`
//!   header prefers it (see [`crate::metrics`]).
//!
//! A connection must send its request headers within
//! `GATEWAY_HTTP_TIMEOUT_MS` (also the idle limit between requests).
//!
//! # Health and readiness hooks
//!
//! Components that run beside the mesh (the DHCP manager, ...) report
//! through two hooks on [`Gateway`]; a check is a cheap, non-blocking
//! closure that returns `None` when all is well and `Some(reason)`
//! otherwise:
//!
//! ```ignore
//! let manager = dhcp.clone();
//! gateway.add_health_check("dhcp", move || manager.problem());
//! // `/health` turns `degraded`, with the reason "dhcp: <reason>".
//! let manager = dhcp.clone();
//! gateway.add_readiness_check("dhcp", move || (!manager.started()).then(|| "starting".into()));
//! // `/ready` answers 503 "dhcp: starting" until it has started.
//! ```
//!
//! Checks run on every request to the endpoint, outside any lock.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::RwLock;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::Gateway;

/// A component's check: `None` when fine, `Some(reason)` when not.
pub type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Default)]
pub(crate) struct Checks {
    health: RwLock<Vec<(String, Check)>>,
    readiness: RwLock<Vec<(String, Check)>>,
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
fn failures(list: &RwLock<Vec<(String, Check)>>) -> Vec<String> {
    let checks = list.read().clone();
    checks
        .iter()
        .filter_map(|(name, check)| check().map(|why| format!("{name}: {why}")))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Serving with at least one instance and no failing check.
    Healthy,
    /// Serving, but no instance is connected or a check fails.
    Degraded,
    /// Draining or shut down: take this gateway out of rotation.
    Unhealthy,
}

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

/// One entry of `GET /instances`: the fields of the admin API's
/// `InstanceInfo`, spelt the same, and two more.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub instance_id: String,
    pub environment: String,
    pub version: String,
    pub methods: Vec<String>,
    /// Empty when unknown, as in `InstanceInfo`.
    pub remote_addr: String,
    /// Unix milliseconds.
    pub connected_since_ms: u64,
    /// Unix milliseconds of the last frame (heartbeat or other) received.
    pub last_seen_ms: u64,
    pub in_flight: u64,
    pub calls_served: u64,
    pub errors: u64,
    pub queue_depth: usize,
    pub draining: bool,
}

impl Gateway {
    /// A component's health check; a failing one makes `/health` degraded.
    pub fn add_health_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        let entry = (name.into(), Arc::new(check) as Check);
        self.shared.checks.health.write().push(entry);
    }

    /// A component's start-up check; `/ready` answers 503 while it fails.
    pub fn add_readiness_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        let entry = (name.into(), Arc::new(check) as Check);
        self.shared.checks.readiness.write().push(entry);
    }

    pub fn health(&self) -> Health {
        let shared = &self.shared;
        let instances = shared.instances.len();
        let (status, reasons) = if shared.is_draining() {
            (HealthStatus::Unhealthy, vec!["draining".to_string()])
        } else {
            let mut reasons = Vec::new();
            if !shared.serving.load(std::sync::atomic::Ordering::Relaxed) {
                reasons.push("gRPC server not serving yet".to_string());
            }
            if instances == 0 {
                reasons.push("no instance connected".to_string());
            }
            if let Some(pressure) = gatemesh_runtime::limits::fd_pressure() {
                reasons.push(pressure);
            }
            reasons.extend(failures(&shared.checks.health));
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
            gateway_id: shared.gateway_id.clone(),
            uptime_ms: shared.started.elapsed().as_millis() as u64,
            reasons,
        }
    }

    pub fn readiness(&self) -> Readiness {
        let shared = &self.shared;
        let mut reasons = Vec::new();
        if shared.is_draining() {
            reasons.push("draining".to_string());
        } else if !shared.serving.load(std::sync::atomic::Ordering::Relaxed) {
            reasons.push("gRPC server not serving yet".to_string());
        }
        reasons.extend(failures(&shared.checks.readiness));
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }

    /// Every connected instance, sorted by id.
    pub fn instance_views(&self) -> Vec<InstanceView> {
        self.shared
            .instances
            .snapshot()
            .iter()
            .map(|peer| {
                let info = crate::admin::instance_info(peer);
                InstanceView {
                    instance_id: info.instance_id,
                    environment: info.environment,
                    version: info.version,
                    methods: info.methods,
                    remote_addr: info.remote_addr,
                    connected_since_ms: info.connected_since_ms,
                    last_seen_ms: info.last_seen_ms,
                    in_flight: info.in_flight,
                    calls_served: info.calls_served,
                    errors: info.errors,
                    queue_depth: peer.queue_depth(),
                    draining: peer.is_draining(),
                }
            })
            .collect()
    }

    /// The operator endpoints, for serving or embedding in another
    /// router; `/instances` asks for the secret.
    pub fn http_router(&self) -> axum::Router {
        self.router(Exposure::SecretRequired)
    }

    fn router(&self, exposure: Exposure) -> axum::Router {
        axum::Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route(
                "/instances",
                get(move |state, headers| instances(state, headers, exposure)),
            )
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// Serves the operator endpoints on `listener` until `shutdown`
    /// resolves. Run it beside [`Gateway::serve`] and stop it after, so
    /// `/health` reports the drain. On a loopback address `/instances` is
    /// open; on any other it asks for the secret.
    pub async fn serve_http(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let local = listener.local_addr().context("HTTP listener address")?;
        let exposure = if local.ip().is_loopback() {
            Exposure::Open
        } else {
            Exposure::SecretRequired
        };
        gatemesh_runtime::http::serve(
            listener,
            self.router(exposure),
            self.config().http_timeout(),
            self.metrics().http_stats(),
            shutdown,
        )
        .await
        .context("HTTP server failed")
    }

    /// Whether `headers` carry the shared secret, as a bearer token or the
    /// gRPC API's metadata header.
    fn http_authorized(&self, headers: &HeaderMap) -> bool {
        let secret = &self.config().api_secret;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let custom = headers
            .get(gatemesh_proto::SECRET_METADATA_KEY)
            .map(|v| v.as_bytes());
        bearer.or(custom).is_some_and(|given| secret.matches(given))
    }
}

/// Who may read `/instances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exposure {
    /// Anyone who reaches the port: it is loopback.
    Open,
    /// Only callers that present the shared secret.
    SecretRequired,
}

async fn health(State(gateway): State<Gateway>) -> Response {
    let health = gateway.health();
    let code = match health.status {
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Healthy | HealthStatus::Degraded => StatusCode::OK,
    };
    (code, Json(health)).into_response()
}

async fn ready(State(gateway): State<Gateway>) -> Response {
    let readiness = gateway.readiness();
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

async fn instances(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    exposure: Exposure,
) -> Response {
    if exposure == Exposure::SecretRequired && !gateway.http_authorized(&headers) {
        let stats = gateway.metrics().http_stats();
        if stats
            .unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            tracing::warn!(
                "GET /instances without the secret refused (logged once; counted in /metrics)"
            );
        }
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "/instances needs the gateway secret: Authorization: Bearer <GATEWAY_API_SECRET>\n",
        )
            .into_response();
    }
    Json(gateway.instance_views()).into_response()
}

async fn metrics(State(gateway): State<Gateway>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = gatemesh_runtime::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        gateway.metrics().render_as(format),
    )
        .into_response()
}
