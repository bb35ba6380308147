//! The operator HTTP endpoints, on their own plain-HTTP listener
//! (`GATEWAY_HTTP_PORT`) so health checks need no client certificate even
//! when the gRPC port uses mTLS:
//!
//! - `GET /health`: [`Health`](crate::health::Health) as JSON; 200 when `healthy` or `degraded`,
//!   503 when `unhealthy` (draining or shutting down).
//! - `GET /ready`: 200 once the gRPC server serves and every readiness
//!   check passes, else 503 with the reasons.
//! - `GET /instances`: the connected instances, as [`InstanceView`]s, with
//!   the admin API's `InstanceInfo` field names. It tells as much as the
//!   secret-protected `ListInstances`, so on any address but loopback it
//!   asks for a caller secret too (`Authorization: Bearer <secret>` or the
//!   gRPC API's `x-gatemesh-secret` header), and lists only the instances
//!   of the environments that secret may reach. A refusal is counted in
//!   `gatemesh_auth_refused_total{port="http"}`.
//! - `GET /metrics`: Prometheus text, or OpenMetrics when the `Accept`
//!   header prefers it (see [`crate::metrics`]).
//!
//! A connection must send its request headers within
//! `GATEWAY_HTTP_TIMEOUT_MS` (also the idle limit between requests); one
//! on which nothing moves for `GATEWAY_HTTP_IDLE_TIMEOUT_MS` is closed; and
//! at `GATEWAY_HTTP_MAX_CONNECTIONS` the connection idle the longest is
//! closed to make room, so `/health` answers under a flood of idle sockets
//! (see `gatemesh_runtime::http`).
//!
//! # Health and readiness hooks
//!
//! Components that run beside the mesh (the DHCP manager, the IP
//! allocator, ...) report through two hooks on [`crate::Gateway`] (see
//! [`crate::health`]); a check is a cheap, non-blocking closure that
//! returns `None` when all is well and `Some(reason)` otherwise:
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
//! use gatemesh_gateway::{Gateway, GatewayConfig};
//!
//! let gateway = Gateway::new(GatewayConfig::with_secret("s3cret"));
//! // A component that loads something at start, and counts failed writes.
//! let loaded = Arc::new(AtomicBool::new(false));
//! let failed_writes = Arc::new(AtomicU64::new(0));
//! let flag = loaded.clone();
//! gateway.add_readiness_check("loader", move || {
//!     (!flag.load(Ordering::Relaxed)).then(|| "still loading".to_string())
//! });
//! let failures = failed_writes.clone();
//! gateway.add_health_check("loader", move || match failures.load(Ordering::Relaxed) {
//!     0 => None,
//!     n => Some(format!("{n} writes failed")),
//! });
//! // `/ready` answers 503 "loader: still loading" until it has loaded.
//! assert!(gateway.readiness().reasons.contains(&"loader: still loading".to_string()));
//! loaded.store(true, Ordering::Relaxed);
//! assert!(!gateway.readiness().reasons.iter().any(|r| r.starts_with("loader")));
//! // `/health` turns `degraded`, with the reason "loader: 2 writes failed".
//! failed_writes.store(2, Ordering::Relaxed);
//! assert!(gateway.health().reasons.contains(&"loader: 2 writes failed".to_string()));
//! ```
//!
//! Checks run on every request to the endpoint, outside any lock.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::credentials::{Principal, Scope};
use crate::refusal::{Port, Refusal};
use crate::state::Shared;

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
    /// How its id and environment were proven (`InstanceInfo.proof`).
    pub proof: String,
    pub queue_depth: usize,
    pub draining: bool,
}

/// Every connected instance, sorted by id.
pub(crate) fn instance_views(shared: &Shared) -> Vec<InstanceView> {
    shared
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
                proof: info.proof,
                queue_depth: peer.queue_depth(),
                draining: peer.is_draining(),
            }
        })
        .collect()
}

/// The operator endpoints; `/instances` open or behind the secret.
pub(crate) fn router(shared: Arc<Shared>, exposure: Exposure) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route(
            "/instances",
            get(move |state, remote, headers| instances(state, remote, headers, exposure)),
        )
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves the operator endpoints on `listener` until `shutdown` resolves.
/// On a loopback address `/instances` is open; on any other it asks for
/// the secret.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("HTTP listener address")?;
    let exposure = if local.ip().is_loopback() {
        Exposure::Open
    } else {
        Exposure::SecretRequired
    };
    let limits = shared.config.ops.http_limits();
    let stats = shared.metrics.http_stats();
    gatemesh_runtime::http::serve(listener, router(shared, exposure), limits, stats, shutdown)
        .await
        .context("HTTP server failed")
}

/// The caller of an HTTP request: the secret it presents as a bearer
/// token or the gRPC API's metadata header, matched as a caller secret.
fn principal(shared: &Shared, headers: &HeaderMap) -> Result<Principal, Refusal> {
    shared
        .credentials
        .caller(crate::auth::presented(headers), None)
}

/// Who may read `/instances`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exposure {
    /// Anyone who reaches the port: it is loopback.
    Open,
    /// Only callers that present the shared secret.
    SecretRequired,
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let health = shared.health();
    let code = health.status.http_code();
    (code, Json(health)).into_response()
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = shared.readiness();
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

async fn instances(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    exposure: Exposure,
) -> Response {
    let scope = match exposure {
        Exposure::Open => Scope::Any,
        Exposure::SecretRequired => match principal(&shared, &headers) {
            Ok(principal) => principal.scope,
            Err(refusal) => {
                shared.refusals.record(Port::Http, &refusal, Some(remote));
                let stats = shared.metrics.http_stats();
                stats
                    .unauthorized
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "/instances needs a caller secret: Authorization: Bearer <secret>\n",
                )
                    .into_response();
            }
        },
    };
    let mut views = instance_views(&shared);
    views.retain(|view| scope.allows(&view.environment));
    Json(views).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = gatemesh_runtime::metrics::Format::negotiate(accept);
    (
        [(header::CONTENT_TYPE, format.content_type())],
        shared.metrics.render_as(format),
    )
        .into_response()
}
