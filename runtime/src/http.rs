//! The HTTP server of the operator endpoints, with deadlines: a
//! connection must send a request's headers within `timeout` of
//! connecting (or of its previous answer, when kept alive), or it is
//! closed. `axum::serve` has no such deadline, so a silent or half-sent
//! request would hold a descriptor forever.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// The status both ends' `/health` report: the one spelling operators
/// and their probes see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Serving, nothing wrong.
    Healthy,
    /// Serving, but something is wrong (the reasons say what).
    Degraded,
    /// Not serving (draining, or no link up): take it out of rotation.
    Unhealthy,
}

impl HealthStatus {
    /// The HTTP status `/health` answers with: 503 only when unhealthy.
    pub fn http_code(self) -> axum::http::StatusCode {
        match self {
            Self::Unhealthy => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Self::Healthy | Self::Degraded => axum::http::StatusCode::OK,
        }
    }
}

/// What the server counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed because no complete request header arrived in
    /// time (silent, half-sent, or idle after an answer).
    pub timeouts: AtomicU64,
    /// `accept` failures (out of descriptors, ...).
    pub accept_errors: AtomicU64,
    /// Requests refused for lacking a credential (the caller counts).
    pub unauthorized: AtomicU64,
    logged_timeout: AtomicBool,
}

impl HttpStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    timeout: Duration,
    stats: Arc<HttpStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_failing = false;
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_failing = false;
                    accepted
                }
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if !accept_failing {
                        tracing::warn!(error = %e, "HTTP endpoints cannot accept connections; retrying");
                        accept_failing = true;
                    }
                    // Out of descriptors: waiting beats spinning on accept.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        // Handlers that log or count by peer take its address from the
        // `ConnectInfo<SocketAddr>` extractor.
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(remote))),
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await
                && e.is_timeout()
            {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                // Scanners and half-open clients are routine: log once.
                if !stats.logged_timeout.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        timeout_ms = timeout.as_millis() as u64,
                        "HTTP connection closed: no request header in time (logged once; counted in /metrics)"
                    );
                }
            }
        });
    }
    drop(listener);
    // Requests in flight finish; idle connections close at once.
    graceful.shutdown().await;
    Ok(())
}
