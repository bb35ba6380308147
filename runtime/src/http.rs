//! The HTTP server of the operator endpoints, bounded so that no client
//! can hold what `/health` needs:
//!
//! - **A header deadline** (`*_HTTP_TIMEOUT_MS`): a connection must send a
//!   request's headers within it of connecting (or of its previous
//!   answer, when kept alive), or it is closed. `axum::serve` has no such
//!   deadline, so a silent or half-sent request would hold a descriptor
//!   forever.
//! - **An idle deadline** (`*_HTTP_IDLE_TIMEOUT_MS`): a connection on which
//!   no byte moves either way for that long, while no request of it is
//!   being handled, is closed: a body that stalls, an answer the client
//!   never reads.
//! - **A cap on connections** (`*_HTTP_MAX_CONNECTIONS`, by default well
//!   under the descriptor limit): one more closes the connection idle the
//!   longest, so a flood of idle sockets can neither exhaust descriptors
//!   nor keep a health probe out. When every connection is in the middle
//!   of a request, the newcomer is closed instead.
//!
//! Each close is counted ([`HttpStats`]) and logged once per burst, and a
//! burst of closes at the cap shows in `/health` ([`HttpStats::problem`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

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

/// The connection cap when none is set: [`MAX_CONNECTIONS_DEFAULT`], or an
/// eighth of the descriptor limit if that is lower (the gRPC port, the
/// instances and the files need the rest), and never under
/// [`MAX_CONNECTIONS_FLOOR`].
pub const MAX_CONNECTIONS_DEFAULT: usize = 256;
pub const MAX_CONNECTIONS_FLOOR: usize = 8;
/// Closes at the cap closer together than this are one burst: logged once,
/// and shown by `/health` until this much time has passed without one.
const QUIET: Duration = Duration::from_secs(10);

/// The default cap under a descriptor limit of `fd_limit` (`None`:
/// unknown).
pub fn default_max_connections(fd_limit: Option<u64>) -> usize {
    let share = fd_limit.map_or(MAX_CONNECTIONS_DEFAULT, |limit| {
        usize::try_from(limit / 8).unwrap_or(usize::MAX)
    });
    share.clamp(MAX_CONNECTIONS_FLOOR, MAX_CONNECTIONS_DEFAULT)
}

/// How the server bounds its connections (see the module's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// `None`: [`default_max_connections`] of the limit in force at start.
    pub max_connections: Option<usize>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: None,
        }
    }
}

/// What the server counts, for `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed at a deadline: no complete request header in
    /// time (silent, half-sent, or idle after an answer), or no byte
    /// moved for the idle deadline.
    pub timeouts: AtomicU64,
    /// `accept` failures (out of descriptors, ...).
    pub accept_errors: AtomicU64,
    /// Requests refused for lacking a credential (the caller counts).
    pub unauthorized: AtomicU64,
    /// Connections closed at the cap to make room: the idle longest.
    pub evicted: AtomicU64,
    /// Connections closed on arrival at the cap: every open one was in
    /// the middle of a request.
    pub refused: AtomicU64,
    /// Connections open now, and the cap in force.
    pub open: AtomicU64,
    pub cap: AtomicU64,
    /// When the last close at the cap happened, for `/health`.
    last_cap_close: Mutex<Option<Instant>>,
    logged_timeout: AtomicBool,
}

impl HttpStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Why `/health` should be degraded: connections were closed at the
    /// cap within the last few seconds.
    pub fn problem(&self) -> Option<String> {
        let last = *self
            .last_cap_close
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        last.filter(|at| at.elapsed() < QUIET).map(|_| {
            format!(
                "HTTP connections at the cap of {}: the longest idle closed to make room",
                Self::get(&self.cap)
            )
        })
    }

    /// A close at the cap; logged once per burst.
    fn at_cap(&self, counter: &AtomicU64, what: &str) {
        counter.fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_cap_close
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() >= QUIET) {
            tracing::warn!(
                cap = Self::get(&self.cap),
                "HTTP connections at the cap: {what} (logged once per burst; counted in /metrics)"
            );
        }
        *last = Some(Instant::now());
    }

    /// The server's families, under the registry's prefix: what both ends
    /// export the same way.
    pub fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let counters: [(&str, &str, &AtomicU64); 5] = [
            (
                "http_connections",
                "Connections accepted by the operator HTTP endpoints",
                &self.connections,
            ),
            (
                "http_timeouts",
                "HTTP connections closed at a deadline: no complete request header in time, or idle too long",
                &self.timeouts,
            ),
            (
                "http_accept_errors",
                "Failed accepts on the HTTP port (out of file descriptors, ...)",
                &self.accept_errors,
            ),
            (
                "http_evicted",
                "HTTP connections closed at the cap to make room (the idle longest)",
                &self.evicted,
            ),
            (
                "http_refused",
                "HTTP connections closed on arrival at the cap, every open one being busy",
                &self.refused,
            ),
        ];
        for (name, help, value) in counters {
            ConstCounter::new(Self::get(value)).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        for (name, help, value) in [
            (
                "http_connections_open",
                "Connections open on the operator HTTP port",
                &self.open,
            ),
            (
                "http_connections_cap",
                "Connections the operator HTTP port holds at most",
                &self.cap,
            ),
        ] {
            let metric = ConstGauge::new(i64::try_from(Self::get(value)).unwrap_or(i64::MAX));
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// Where one connection stands: when a byte last moved on it, and how
/// many of its requests are being handled.
#[derive(Debug)]
struct Activity {
    /// Milliseconds from the server's start.
    last_ms: AtomicU64,
    requests: AtomicUsize,
    since: Instant,
    /// Told when the connection is closed to make room.
    evict: Notify,
}

impl Activity {
    fn new(since: Instant) -> Self {
        let activity = Self {
            last_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            since,
            evict: Notify::new(),
        };
        activity.touch();
        activity
    }

    fn touch(&self) {
        let now = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn busy(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
    }
}

/// A request being handled; the connection is busy until it drops.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.requests.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The open connections, by id; one lock held for a map operation.
struct Open {
    conns: Mutex<HashMap<u64, Arc<Activity>>>,
    cap: usize,
}

/// What the cap made of a new connection.
enum Admitted {
    /// Room, or room made by closing the idle longest.
    In,
    /// Every open connection is busy: the newcomer is closed.
    Full,
}

impl Open {
    fn admit(&self, id: u64, activity: Arc<Activity>, stats: &HttpStats) -> Admitted {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= self.cap {
            // Idle the longest; among those idle since the same
            // millisecond, the one that came first.
            let oldest = conns
                .iter()
                .filter(|(_, a)| !a.busy())
                .min_by_key(|(id, a)| (a.last_ms.load(Ordering::Relaxed), **id))
                .map(|(id, _)| *id);
            let Some(oldest) = oldest else {
                drop(conns);
                stats.at_cap(
                    &stats.refused,
                    "a new connection closed, every open one being busy",
                );
                return Admitted::Full;
            };
            if let Some(evicted) = conns.remove(&oldest) {
                evicted.evict.notify_one();
            }
            stats.at_cap(
                &stats.evicted,
                "the connection idle the longest closed to make room",
            );
        }
        conns.insert(id, activity);
        stats.open.store(conns.len() as u64, Ordering::Relaxed);
        Admitted::In
    }

    fn remove(&self, id: u64, stats: &HttpStats) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.remove(&id);
        stats.open.store(conns.len() as u64, Ordering::Relaxed);
    }
}

/// A connection's socket, noting when a byte moves either way.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Resolves once no byte moved on the connection for `idle` while none of
/// its requests was being handled.
async fn idle_for(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() >= deadline {
            if !activity.busy() {
                return;
            }
            tokio::time::sleep(idle).await;
            continue;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// How a connection ended, for the counters.
enum Ended {
    Done,
    Timeout,
    Evicted,
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cap = limits
        .max_connections
        .unwrap_or_else(|| default_max_connections(crate::limits::fd_limit()));
    stats.cap.store(cap as u64, Ordering::Relaxed);
    tracing::debug!(
        cap,
        header_timeout_ms = limits.header_timeout.as_millis() as u64,
        idle_timeout_ms = limits.idle_timeout.as_millis() as u64,
        "operator HTTP connections bounded"
    );
    let open = Arc::new(Open {
        conns: Mutex::new(HashMap::new()),
        cap,
    });
    let started = Instant::now();
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_failing = false;
    let mut next_id: u64 = 0;
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
        next_id += 1;
        let id = next_id;
        let activity = Arc::new(Activity::new(started));
        if let Admitted::Full = open.admit(id, activity.clone(), &stats) {
            continue;
        }
        // Handlers that log or count by peer take its address from the
        // `ConnectInfo<SocketAddr>` extractor.
        let inner = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(remote))),
        );
        let handling = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = Busy::new(&handling);
            let answer = hyper::service::Service::call(&inner, request);
            async move {
                let answer = answer.await;
                drop(busy);
                answer
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let io = TokioIo::new(Tracked {
            io: stream,
            activity: activity.clone(),
        });
        let connection = graceful.watch(builder.serve_connection(io, service));
        let (stats, open) = (stats.clone(), open.clone());
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            let ended = tokio::select! {
                result = connection => match result {
                    Err(e) if e.is_timeout() => Ended::Timeout,
                    _ => Ended::Done,
                },
                () = idle_for(&activity, idle) => Ended::Timeout,
                () = activity.evict.notified() => Ended::Evicted,
            };
            open.remove(id, &stats);
            if let Ended::Timeout = ended {
                stats.timeouts.fetch_add(1, Ordering::Relaxed);
                // Scanners and half-open clients are routine: log once.
                if !stats.logged_timeout.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        header_timeout_ms = limits.header_timeout.as_millis() as u64,
                        idle_timeout_ms = idle.as_millis() as u64,
                        "HTTP connection closed: no request header in time, or idle too long \
                         (logged once; counted in /metrics)"
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `router` under `limits` on a loopback port.
    async fn start(
        router: axum::Router,
        limits: HttpLimits,
    ) -> (std::net::SocketAddr, Arc<HttpStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(HttpStats::default());
        tokio::spawn(serve(
            listener,
            router,
            limits,
            stats.clone(),
            std::future::pending(),
        ));
        (addr, stats)
    }

    async fn get_ok(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn limits(cap: usize) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(600),
            max_connections: Some(cap),
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room_for_health() {
        let router = axum::Router::new().route("/health", get(|| async { "ok" }));
        let (addr, stats) = start(router, limits(4)).await;
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        until("ten accepted", || HttpStats::get(&stats.connections) == 10).await;
        assert_eq!(HttpStats::get(&stats.open), 4);
        assert_eq!(HttpStats::get(&stats.evicted), 6);
        for _ in 0..3 {
            assert!(get_ok(addr, "/health").await.ends_with("ok"));
        }
        // The first idle sockets were closed by the server.
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(20), idle[0].read(&mut buf)).await;
        assert_eq!(closed.expect("closed by the server").unwrap_or(0), 0);
        assert!(
            stats
                .problem()
                .unwrap()
                .starts_with("HTTP connections at the cap of 4")
        );
        assert_eq!(default_max_connections(Some(1024)), 128);
        assert_eq!(default_max_connections(Some(20)), MAX_CONNECTIONS_FLOOR);
        assert_eq!(default_max_connections(None), MAX_CONNECTIONS_DEFAULT);
    }

    #[tokio::test]
    async fn a_connection_in_the_middle_of_a_request_is_never_the_one_closed() {
        let release = Arc::new(Notify::new());
        let started = Arc::new(AtomicBool::new(false));
        let (waiting, running) = (release.clone(), started.clone());
        let router = axum::Router::new().route(
            "/slow",
            get(move || {
                let (waiting, running) = (waiting.clone(), running.clone());
                async move {
                    running.store(true, Ordering::Relaxed);
                    waiting.notified().await;
                    "slow"
                }
            }),
        );
        let (addr, stats) = start(router, limits(1)).await;
        let slow = tokio::spawn(get_ok(addr, "/slow"));
        until("the slow request handled", || {
            started.load(Ordering::Relaxed)
        })
        .await;
        // Every open connection is busy: the newcomer is the one closed.
        let mut late = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(late.read(&mut buf).await.unwrap_or(0), 0);
        assert_eq!(HttpStats::get(&stats.refused), 1);
        release.notify_one();
        assert!(slow.await.unwrap().ends_with("slow"));
    }

    #[tokio::test]
    async fn an_answer_never_read_is_closed_at_the_idle_deadline() {
        let big = "x".repeat(32 << 20);
        let router =
            axum::Router::new().route("/big", get(move || std::future::ready(big.clone())));
        let mut limits = limits(16);
        limits.idle_timeout = Duration::from_millis(300);
        let (addr, stats) = start(router, limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Nothing is read: the server's writes stall once the buffers fill.
        until("the stalled connection closed", || {
            HttpStats::get(&stats.timeouts) == 1 && HttpStats::get(&stats.open) == 0
        })
        .await;
    }
}
