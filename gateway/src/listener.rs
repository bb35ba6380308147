//! The gRPC port before a connection proves itself.
//!
//! A connection goes through stages: the TLS handshake (when TLS is on,
//! run by the gateway itself: [`crate::tls::TlsIncoming`] over the sockets
//! accepted here), the HTTP/2 preface, then requests. Until one of its
//! requests carries a secret the gateway knows (or, under
//! `GATEWAY_TLS_SECRET_OPTIONAL`, a verified client certificate), it is
//! *unauthenticated*, and two limits apply to it:
//!
//! - **A deadline** (`GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS`) from accept: a
//!   connection that sends nothing, half a preface or half a TLS handshake,
//!   that opens no stream, or whose requests never authenticate, is closed
//!   when it passes, counted by the [`Stage`] it had reached.
//! - **A cap** on unauthenticated connections
//!   (`GATEWAY_CONN_MAX_UNAUTHENTICATED`): accepting one more closes the
//!   *oldest* unauthenticated connection, so a flood of silent sockets
//!   cannot hold the descriptors a real instance needs; the newest arrival
//!   (likely a real instance reconnecting) always gets its chance.
//!
//! Authenticated connections are never closed here; HTTP/2 keepalive and
//! the stream's own heartbeats watch them.
//!
//! The accept loop ([`Incoming`]) backs off (10 ms doubling to 1 s) when
//! accept fails for want of descriptors or memory, instead of retrying a
//! listener that stays readable in a tight loop.
//!
//! Each refusal is logged at debug per connection and at warn once per
//! burst, counted in `/metrics`, and a burst still going shows in
//! `/health`.
//!
//! Tonic has no option for any of this: its TLS handshake timeout covers
//! only TLS, hyper has no HTTP/2 preface or first-request deadline, and
//! its accept loop retries EMFILE at once. So the listener is wrapped
//! here ([`ConnIo`] around each accepted socket, under the TLS), and an
//! interceptor layer ([`Track`]) tells a connection when a request on it
//! authenticated.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::Stream;
use nix::errno::Errno;
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic::service::interceptor::InterceptorLayer;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::GatewayConfig;
use crate::credentials::Credentials;
use crate::state::Shared;

/// The cap on unauthenticated connections when none is set, unless half
/// the open-file limit is lower.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 1024;
/// First pause after a failed accept; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Events closer together than this belong to one burst: logged once at
/// warn, and shown by `/health` until this much time has passed quietly.
const QUIET: Duration = Duration::from_secs(10);
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// How far a connection had got when its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The TLS handshake had not finished.
    Tls,
    /// Cleartext: the 24-byte HTTP/2 preface had not fully arrived.
    Preface,
    /// Connected, but no request yet.
    Idle,
    /// Requests came, none with the secret.
    Unauthenticated,
}

impl Stage {
    const ALL: [Stage; 4] = [
        Stage::Tls,
        Stage::Preface,
        Stage::Idle,
        Stage::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Tls => "tls",
            Stage::Preface => "preface",
            Stage::Idle => "idle",
            Stage::Unauthenticated => "unauthenticated",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why accept failed, for the ones worth a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptFailure {
    /// EMFILE or ENFILE: the process or the system is out of descriptors.
    Descriptors,
    /// ENOBUFS or ENOMEM.
    Memory,
    /// Anything else that is not about one aborted connection.
    Other,
}

impl AcceptFailure {
    const ALL: [AcceptFailure; 3] = [
        AcceptFailure::Descriptors,
        AcceptFailure::Memory,
        AcceptFailure::Other,
    ];

    /// `None` for errors that concern one connection only (it was reset
    /// or aborted before accept): take the next one at once.
    pub fn classify(error: &io::Error) -> Option<Self> {
        if let Some(code) = error.raw_os_error() {
            match Errno::from_raw(code) {
                Errno::EMFILE | Errno::ENFILE => return Some(Self::Descriptors),
                Errno::ENOBUFS | Errno::ENOMEM => return Some(Self::Memory),
                _ => {}
            }
        }
        match error.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut => None,
            _ => Some(Self::Other),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AcceptFailure::Descriptors => "descriptors",
            AcceptFailure::Memory => "memory",
            AcceptFailure::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The limits of [the module](self), resolved at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub deadline: Duration,
    pub max_unauthenticated: usize,
    pub tls: bool,
}

impl Limits {
    /// From the settings; an unset cap is [`DEFAULT_MAX_UNAUTHENTICATED`]
    /// or half of `fd_limit`, whichever is lower, so the cap bites before
    /// descriptors run out.
    pub fn new(config: &GatewayConfig, fd_limit: Option<u64>) -> Self {
        let max_unauthenticated = config.conn_max_unauthenticated.unwrap_or_else(|| {
            let half =
                fd_limit.map_or(usize::MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
            DEFAULT_MAX_UNAUTHENTICATED.min(half).max(1)
        });
        Self {
            deadline: Duration::from_millis(config.conn_handshake_timeout_ms),
            max_unauthenticated,
            tls: config.tls.is_some(),
        }
    }
}

/// This process's soft limit on open files, from `/proc/self/limits`;
/// `None` where that cannot be read or says "unlimited".
pub fn fd_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A run of events no further apart than [`QUIET`].
#[derive(Debug, Default)]
struct Burst(Mutex<Option<Run>>);

#[derive(Debug, Clone, Copy)]
struct Run {
    last: Instant,
    count: u64,
}

impl Burst {
    /// Records one event; true when it starts a new burst (the one to log).
    fn hit(&self) -> bool {
        let now = Instant::now();
        let mut run = self.0.lock();
        match &mut *run {
            Some(r) if now.duration_since(r.last) < QUIET => {
                r.last = now;
                r.count += 1;
                false
            }
            _ => {
                *run = Some(Run {
                    last: now,
                    count: 1,
                });
                true
            }
        }
    }

    /// Events in the burst still going, if one is.
    fn current(&self) -> Option<u64> {
        let run = *self.0.lock();
        run.filter(|r| r.last.elapsed() < QUIET).map(|r| r.count)
    }
}

/// How far an accepted connection has come. It only moves forward, and
/// ends either authenticated or evicted, never both: the two are decided
/// by one compare-and-swap each, so the cap can never close a connection
/// whose request has authenticated, and an evicted connection's request
/// is refused rather than let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
enum Progress {
    /// Accepted; the TLS handshake (if any) is under way.
    Accepted = 0,
    /// Tonic took the connection over: after the TLS handshake, or at once
    /// without TLS.
    Connected = 1,
    /// Requests came, none with the secret.
    Requested = 2,
    /// A request carried the secret: the deadline and the cap are lifted.
    Authenticated = 3,
    /// Closed to make room under the cap.
    Evicted = 4,
}

impl Progress {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Accepted,
            1 => Self::Connected,
            2 => Self::Requested,
            3 => Self::Authenticated,
            _ => Self::Evicted,
        }
    }

    fn settled(self) -> bool {
        self >= Self::Authenticated
    }
}

/// One accepted connection, as [`Connections`] and its [`ConnIo`] see it.
#[derive(Debug)]
struct Conn {
    id: u64,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    /// A [`Progress`]; changed only through [`Conn::step`].
    progress: AtomicU8,
    /// Cancelled on eviction, to wake the connection's I/O to fail.
    evicted: CancellationToken,
}

impl Conn {
    fn progress(&self) -> Progress {
        Progress::from_u8(self.progress.load(Ordering::Acquire))
    }

    /// Moves to `to` when `allowed` says so of the current progress;
    /// returns the progress it found.
    fn step(&self, to: Progress, allowed: impl Fn(Progress) -> bool) -> Result<Progress, Progress> {
        let mut current = self.progress.load(Ordering::Acquire);
        loop {
            let found = Progress::from_u8(current);
            if !allowed(found) {
                return Err(found);
            }
            match self.progress.compare_exchange_weak(
                current,
                to as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(found),
                Err(now) => current = now,
            }
        }
    }

    /// Forward to `to`, unless already there, past it, or settled.
    fn reach(&self, to: Progress) {
        let _ = self.step(to, |p| p < to && !p.settled());
    }

    /// A request on it carried the secret; false once it was evicted.
    fn authenticate(&self) -> bool {
        match self.step(Progress::Authenticated, |p| !p.settled()) {
            Ok(_) => true,
            Err(found) => found == Progress::Authenticated,
        }
    }

    /// Closes it for the cap; false once it has authenticated.
    fn evict(&self) -> bool {
        let evicted = self.step(Progress::Evicted, |p| !p.settled()).is_ok();
        if evicted {
            self.evicted.cancel();
        }
        evicted
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// By (local, remote) address: what a request's connect info names.
    by_addr: HashMap<(Option<SocketAddr>, SocketAddr), Arc<Conn>>,
    /// Unauthenticated connections, oldest first (ids only grow).
    unauthenticated: BTreeMap<u64, Arc<Conn>>,
}

/// The gRPC port's connections and what happened to them: the table the
/// cap works on, the counters `/metrics` shows and the bursts `/health`
/// reports.
#[derive(Debug, Default)]
pub struct Connections {
    table: Mutex<Table>,
    /// The cap in force, for `/metrics` and `/health`; 0 until serving.
    cap: AtomicUsize,
    closed: [AtomicU64; 4],
    evicted: AtomicU64,
    accept_errors: [AtomicU64; 3],
    /// [`AcceptFailure::index`] of the latest failed accept.
    last_failure: AtomicUsize,
    deadlines: Burst,
    evictions: Burst,
    exhaustion: Burst,
}

impl Connections {
    /// Connections closed at the deadline, by stage.
    pub fn closed(&self, stage: Stage) -> u64 {
        self.closed[stage.index()].load(Ordering::Relaxed)
    }

    /// Connections closed to make room under the cap.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn accept_errors(&self, failure: AcceptFailure) -> u64 {
        self.accept_errors[failure.index()].load(Ordering::Relaxed)
    }

    /// Open connections that have not authenticated.
    pub fn unauthenticated(&self) -> usize {
        self.table.lock().unauthenticated.len()
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.table.lock().by_addr.len()
    }

    /// Registers a new connection; beyond `cap`, the oldest
    /// unauthenticated ones are told to close.
    fn admit(&self, local: Option<SocketAddr>, remote: SocketAddr, cap: usize) -> Arc<Conn> {
        let mut evicted = Vec::new();
        let conn = {
            let mut table = self.table.lock();
            table.next_id += 1;
            let conn = Arc::new(Conn {
                id: table.next_id,
                local,
                remote: Some(remote),
                progress: AtomicU8::new(Progress::Accepted as u8),
                evicted: CancellationToken::new(),
            });
            table.by_addr.insert((local, remote), conn.clone());
            table.unauthenticated.insert(conn.id, conn.clone());
            while table.unauthenticated.len() > cap {
                let Some((_, oldest)) = table.unauthenticated.pop_first() else {
                    break;
                };
                // One that authenticated a moment ago is on its way out of
                // this set: it stays open.
                if oldest.evict() {
                    evicted.push(oldest);
                }
            }
            conn
        };
        for old in evicted {
            self.evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                remote = old.remote.map(tracing::field::display),
                conn = old.id,
                "closing the oldest unauthenticated connection to make room"
            );
            if self.evictions.hit() {
                tracing::warn!(
                    cap,
                    "unauthenticated gRPC connections at the cap (GATEWAY_CONN_MAX_UNAUTHENTICATED); \
                     closing the oldest to make room"
                );
            }
        }
        conn
    }

    fn lookup(&self, local: Option<SocketAddr>, remote: SocketAddr) -> Option<Arc<Conn>> {
        self.table.lock().by_addr.get(&(local, remote)).cloned()
    }

    /// A request on `conn` carried the secret: it leaves the cap's set.
    /// False when the cap evicted it first (its request is then refused).
    fn authenticated(&self, conn: &Conn) -> bool {
        if !conn.authenticate() {
            return false;
        }
        self.table.lock().unauthenticated.remove(&conn.id);
        true
    }

    /// The connection is gone; its entries go if they are still its own.
    fn forget(&self, conn: &Conn) {
        let mut table = self.table.lock();
        if let Some(remote) = conn.remote {
            let key = (conn.local, remote);
            if table.by_addr.get(&key).is_some_and(|c| c.id == conn.id) {
                table.by_addr.remove(&key);
            }
        }
        table.unauthenticated.remove(&conn.id);
    }

    fn deadline_passed(&self, conn: &Conn, stage: Stage, deadline: Duration) {
        self.closed[stage.index()].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            remote = conn.remote.map(tracing::field::display),
            conn = conn.id,
            stage = stage.as_str(),
            "closing a connection that did not authenticate in time"
        );
        if self.deadlines.hit() {
            tracing::warn!(
                stage = stage.as_str(),
                deadline_ms = deadline.as_millis() as u64,
                "closing gRPC connections that did not authenticate within \
                 GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS"
            );
        }
    }

    fn accept_failed(&self, failure: AcceptFailure, error: &io::Error, pause: Duration) {
        self.accept_errors[failure.index()].fetch_add(1, Ordering::Relaxed);
        self.last_failure.store(failure.index(), Ordering::Relaxed);
        if self.exhaustion.hit() {
            tracing::warn!(
                kind = failure.as_str(),
                error = %error,
                pause_ms = pause.as_millis() as u64,
                "gRPC accept failing; backing off until it succeeds again"
            );
        } else {
            tracing::debug!(kind = failure.as_str(), error = %error, "gRPC accept failed");
        }
    }

    /// The `/health` reason while accept keeps failing.
    pub fn accept_problem(&self) -> Option<String> {
        let failures = self.exhaustion.current()?;
        let what = match AcceptFailure::ALL.get(self.last_failure.load(Ordering::Relaxed)) {
            Some(AcceptFailure::Descriptors) => "out of file descriptors",
            Some(AcceptFailure::Memory) => "out of memory",
            _ => "unexpected errors",
        };
        Some(format!(
            "accept failing, {what} ({failures} failures in this burst); backing off"
        ))
    }

    /// The `/health` reason while the cap keeps closing connections.
    pub fn cap_problem(&self) -> Option<String> {
        let closed = self.evictions.current()?;
        Some(format!(
            "unauthenticated connections at the cap of {}: {closed} oldest closed to make room",
            self.cap.load(Ordering::Relaxed)
        ))
    }
}

/// The counters and gauges of [`Connections`] for `/metrics`.
#[derive(Debug)]
pub(crate) struct ConnMetrics(pub(crate) Arc<Connections>);

impl Collector for ConnMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let c = &self.0;
        let mut family = encoder.encode_descriptor(
            "connections_closed",
            "gRPC connections closed for not authenticating within \
             GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS, by the stage they had reached",
            None,
            MetricType::Counter,
        )?;
        for stage in Stage::ALL {
            ConstCounter::new(c.closed(stage))
                .encode(family.encode_family(&[("stage", stage.as_str())])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "accept_errors",
            "Failed accepts on the gRPC port that paused the accept loop, by kind",
            None,
            MetricType::Counter,
        )?;
        for failure in AcceptFailure::ALL {
            ConstCounter::new(c.accept_errors(failure))
                .encode(family.encode_family(&[("kind", failure.as_str())])?)?;
        }
        let evicted = ConstCounter::new(c.evicted());
        evicted.encode(encoder.encode_descriptor(
            "connections_evicted",
            "Unauthenticated gRPC connections closed to stay under GATEWAY_CONN_MAX_UNAUTHENTICATED",
            None,
            evicted.metric_type(),
        )?)?;
        for (name, help, value) in [
            ("connections_open", "Open gRPC connections", c.open() as i64),
            (
                "connections_unauthenticated",
                "Open gRPC connections with no authenticated request yet",
                c.unauthenticated() as i64,
            ),
            (
                "connections_unauthenticated_cap",
                "The cap on unauthenticated gRPC connections in force",
                c.cap.load(Ordering::Relaxed) as i64,
            ),
            (
                "accept_backing_off",
                "1 while failed accepts on the gRPC port keep the accept loop pausing",
                i64::from(c.exhaustion.current().is_some()),
            ),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// Wraps `listener` for `serve_with_incoming_shutdown`, and hooks the
/// health checks of the module into `shared`.
pub(crate) fn incoming(
    shared: &Shared,
    connections: Arc<Connections>,
    listener: TcpListener,
) -> Incoming {
    let fd_limit = fd_soft_limit();
    let limits = Limits::new(&shared.config, fd_limit);
    connections
        .cap
        .store(limits.max_unauthenticated, Ordering::Relaxed);
    if let Some(fds) = fd_limit
        && limits.max_unauthenticated as u64 >= fds
    {
        tracing::warn!(
            max_unauthenticated = limits.max_unauthenticated,
            fd_limit = fds,
            "GATEWAY_CONN_MAX_UNAUTHENTICATED is not below the open-file limit: \
             silent connections can exhaust descriptors before the cap bites"
        );
    }
    tracing::info!(
        deadline_ms = limits.deadline.as_millis() as u64,
        max_unauthenticated = limits.max_unauthenticated,
        fd_limit,
        "gRPC connections must authenticate in time"
    );
    let c = connections.clone();
    shared
        .checks
        .add_health("grpc_port", move || c.accept_problem());
    let c = connections.clone();
    shared
        .checks
        .add_health("grpc_port", move || c.cap_problem());
    Incoming {
        listener,
        connections,
        limits,
        backoff: BACKOFF_MIN,
        pause: None,
    }
}

/// The layer that marks connections whose requests authenticate; goes on
/// the server builder.
pub(crate) fn layer(shared: &Shared, connections: Arc<Connections>) -> InterceptorLayer<Track> {
    InterceptorLayer::new(Track {
        connections,
        credentials: shared.credentials.clone(),
    })
}

/// The addresses of a request's connection, cleartext or TLS.
fn tcp_info(extensions: &tonic::Extensions) -> Option<&TcpConnectInfo> {
    extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    })
}

/// Sees every request before the services do and refuses none for its
/// credentials (each service checks its own role's); a request that
/// carries a credential lifts its connection's deadline and takes it out
/// of the cap. The one refusal: a connection the cap evicted a moment
/// before.
#[derive(Clone)]
pub(crate) struct Track {
    connections: Arc<Connections>,
    credentials: Arc<Credentials>,
}

impl tonic::service::Interceptor for Track {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let conn = tcp_info(request.extensions())
            .and_then(|info| self.connections.lookup(info.local_addr, info.remote_addr?));
        let Some(conn) = conn else {
            return Ok(request);
        };
        let evicted = match conn.progress() {
            Progress::Authenticated => false,
            Progress::Evicted => true,
            _ => {
                conn.reach(Progress::Requested);
                let has_certificate = request.peer_certs().is_some_and(|c| !c.is_empty());
                self.credentials.authenticates(
                    crate::auth::presented(request.metadata().as_ref()),
                    has_certificate,
                ) && !self.connections.authenticated(&conn)
            }
        };
        if evicted {
            return Err(Status::unavailable(
                "connection closed to make room under the cap on unauthenticated connections; \
                 connect again",
            ));
        }
        Ok(request)
    }
}

/// The gRPC port's accepted connections, for `serve_with_incoming_shutdown`.
/// It never yields an error: failed accepts pause it instead.
pub struct Incoming {
    listener: TcpListener,
    connections: Arc<Connections>,
    limits: Limits,
    backoff: Duration,
    pause: Option<Pin<Box<Sleep>>>,
}

impl Stream for Incoming {
    type Item = io::Result<ConnIo>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((stream, remote)) => {
                    this.backoff = BACKOFF_MIN;
                    let _ = stream.set_nodelay(true);
                    let local = stream.local_addr().ok();
                    let conn =
                        this.connections
                            .admit(local, remote, this.limits.max_unauthenticated);
                    return Poll::Ready(Some(Ok(ConnIo::new(
                        stream,
                        conn,
                        this.connections.clone(),
                        this.limits,
                    ))));
                }
                Err(error) => {
                    let Some(failure) = AcceptFailure::classify(&error) else {
                        continue;
                    };
                    this.connections
                        .accept_failed(failure, &error, this.backoff);
                    this.pause = Some(Box::pin(tokio::time::sleep(this.backoff)));
                    this.backoff = (this.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Why [`ConnIo`] ended its connection.
#[derive(Debug, Clone, Copy)]
enum Closed {
    Deadline(Stage),
    Evicted,
}

impl Closed {
    fn error(self) -> io::Error {
        match self {
            Closed::Deadline(stage) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no authenticated request within the handshake deadline (stage {})",
                    stage.as_str()
                ),
            ),
            Closed::Evicted => io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room under the cap on unauthenticated connections",
            ),
        }
    }
}

/// An accepted socket that fails its reads and writes once its deadline
/// passes or the cap evicts it, until a request on it authenticates; the
/// connection's server (TLS or HTTP/2) then drops it, closing the socket.
pub struct ConnIo {
    stream: TcpStream,
    conn: Arc<Conn>,
    connections: Arc<Connections>,
    tls: bool,
    deadline_after: Duration,
    /// Bytes read so far, up to the preface's length.
    read: usize,
    watch: Watch,
}

/// What [`ConnIo`] still watches for.
enum Watch {
    /// Unauthenticated: the deadline and the eviction.
    Limits {
        deadline: Pin<Box<Sleep>>,
        evicted: Pin<Box<WaitForCancellationFutureOwned>>,
    },
    /// Authenticated: nothing any more.
    Free,
    /// Ended; every read and write fails with this.
    Closed(Closed),
}

impl ConnIo {
    fn new(
        stream: TcpStream,
        conn: Arc<Conn>,
        connections: Arc<Connections>,
        limits: Limits,
    ) -> Self {
        let watch = Watch::Limits {
            deadline: Box::pin(tokio::time::sleep(limits.deadline)),
            evicted: Box::pin(conn.evicted.clone().cancelled_owned()),
        };
        Self {
            stream,
            conn,
            connections,
            tls: limits.tls,
            deadline_after: limits.deadline,
            read: 0,
            watch,
        }
    }

    /// The peer's address.
    pub(crate) fn remote(&self) -> Option<SocketAddr> {
        self.conn.remote
    }

    fn stage(&self) -> Stage {
        let progress = self.conn.progress();
        if progress >= Progress::Requested {
            Stage::Unauthenticated
        } else if self.tls && progress < Progress::Connected {
            Stage::Tls
        } else if !self.tls && self.read < PREFACE_LEN {
            Stage::Preface
        } else {
            Stage::Idle
        }
    }

    /// Fails once the connection must close; registers the waker with the
    /// deadline and the eviction so that a silent connection is woken to
    /// fail.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let closed = match &mut self.watch {
            Watch::Free => return Ok(()),
            Watch::Closed(closed) => return Err(closed.error()),
            Watch::Limits { deadline, evicted } => match self.conn.progress() {
                Progress::Authenticated => None,
                Progress::Evicted => Some(Closed::Evicted),
                _ if evicted.as_mut().poll(cx).is_ready() => Some(Closed::Evicted),
                _ if deadline.as_mut().poll(cx).is_ready() => {
                    let stage = self.stage();
                    self.connections
                        .deadline_passed(&self.conn, stage, self.deadline_after);
                    Some(Closed::Deadline(stage))
                }
                _ => return Ok(()),
            },
        };
        match closed {
            None => {
                self.watch = Watch::Free;
                Ok(())
            }
            Some(closed) => {
                self.watch = Watch::Closed(closed);
                Err(closed.error())
            }
        }
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        self.connections.forget(&self.conn);
    }
}

impl Connected for ConnIo {
    type ConnectInfo = TcpConnectInfo;

    /// Tonic asks once it serves the connection, after any TLS handshake:
    /// the handshake stage is over.
    fn connect_info(&self) -> TcpConnectInfo {
        self.conn.reach(Progress::Connected);
        self.stream.connect_info()
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if self.read < PREFACE_LEN {
            self.read += buf.filled().len() - before;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<GatewayConfig, String> {
        let mut all = vec![("GATEWAY_API_SECRET".to_string(), "s".to_string())];
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        GatewayConfig::from_vars(all).map_err(|e| e.to_string())
    }

    #[test]
    fn settings_default_and_range_checks_name_the_variable() {
        let c = config(&[]).unwrap();
        assert_eq!(c.conn_handshake_timeout_ms, 5_000);
        assert_eq!(c.conn_max_unauthenticated, None);
        for (var, bad) in [
            ("GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS", "0"),
            ("GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS", "600001"),
            ("GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS", "-1"),
            ("GATEWAY_CONN_MAX_UNAUTHENTICATED", "0"),
            ("GATEWAY_CONN_MAX_UNAUTHENTICATED", "1000001"),
            ("GATEWAY_CONN_MAX_UNAUTHENTICATED", "18446744073709551616"),
        ] {
            let e = config(&[(var, bad)]).unwrap_err();
            assert!(e.starts_with(var), "{var}={bad}: {e}");
        }
    }

    #[test]
    fn the_default_cap_stays_under_half_the_descriptor_limit() {
        let c = config(&[("GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS", "1000")]).unwrap();
        let limits = Limits::new(&c, Some(1024));
        assert_eq!(limits.max_unauthenticated, 512);
        assert_eq!(limits.deadline, Duration::from_secs(1));
        assert!(!limits.tls);
        assert_eq!(Limits::new(&c, Some(65_536)).max_unauthenticated, 1024);
        assert_eq!(Limits::new(&c, None).max_unauthenticated, 1024);
        assert_eq!(Limits::new(&c, Some(1)).max_unauthenticated, 1);
        let c = config(&[("GATEWAY_CONN_MAX_UNAUTHENTICATED", "4096")]).unwrap();
        assert_eq!(Limits::new(&c, Some(1024)).max_unauthenticated, 4096);
        assert!(fd_soft_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn accept_errors_that_pause_and_those_that_do_not() {
        let os = |e: Errno| io::Error::from_raw_os_error(e as i32);
        assert_eq!(
            AcceptFailure::classify(&os(Errno::EMFILE)),
            Some(AcceptFailure::Descriptors)
        );
        assert_eq!(
            AcceptFailure::classify(&os(Errno::ENFILE)),
            Some(AcceptFailure::Descriptors)
        );
        assert_eq!(
            AcceptFailure::classify(&os(Errno::ENOBUFS)),
            Some(AcceptFailure::Memory)
        );
        assert_eq!(
            AcceptFailure::classify(&os(Errno::EINVAL)),
            Some(AcceptFailure::Other)
        );
        assert_eq!(AcceptFailure::classify(&os(Errno::ECONNABORTED)), None);
        assert_eq!(AcceptFailure::classify(&os(Errno::EINTR)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_logged_once_and_shown_until_it_has_been_quiet() {
        let burst = Burst::default();
        assert_eq!(burst.current(), None);
        assert!(burst.hit());
        tokio::time::advance(QUIET / 2).await;
        assert!(!burst.hit());
        assert_eq!(burst.current(), Some(2));
        tokio::time::advance(QUIET).await;
        assert_eq!(burst.current(), None);
        assert!(burst.hit(), "a new burst after a quiet period");
    }

    /// Authentication and eviction race on a busy port: the request of a
    /// connection arrives as the accept loop makes room. Whichever comes
    /// first decides, and a connection is never both.
    #[test]
    fn the_cap_never_evicts_an_authenticated_connection() {
        let c = Connections::default();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let local = Some(addr(1537));
        let early = c.admit(local, addr(1), 1);
        // Its request authenticates before the next connection comes.
        assert!(c.authenticated(&early));
        let late = c.admit(local, addr(2), 1);
        let _third = c.admit(local, addr(3), 1);
        assert_eq!(early.progress(), Progress::Authenticated);
        assert!(!early.evicted.is_cancelled());
        // `late` was evicted first; its request, arriving now, is refused.
        assert_eq!(late.progress(), Progress::Evicted);
        assert!(!c.authenticated(&late));
        assert_eq!(late.progress(), Progress::Evicted, "never both");
        // One authenticated while still in the cap's set is passed over.
        let c = Connections::default();
        let raced = c.admit(local, addr(4), 1);
        assert!(
            raced.authenticate(),
            "authenticated, not yet out of the set"
        );
        let _next = c.admit(local, addr(5), 1);
        assert_eq!(raced.progress(), Progress::Authenticated);
        assert_eq!(c.evicted(), 0);
    }

    #[test]
    fn an_evicted_connections_request_is_refused_and_an_authenticated_one_passes() {
        use tonic::service::Interceptor as _;
        let c = Arc::new(Connections::default());
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let local = Some(addr(1537));
        let evicted = c.admit(local, addr(1), 1);
        let kept = c.admit(local, addr(2), 1);
        assert_eq!(evicted.progress(), Progress::Evicted);
        let mut track = Track {
            connections: c.clone(),
            credentials: Arc::new(Credentials::from_config(&GatewayConfig::with_secret("s"))),
        };
        let request = |remote| {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert(gatemesh_proto::SECRET_METADATA_KEY, "s".parse().unwrap());
            request.extensions_mut().insert(TcpConnectInfo {
                local_addr: local,
                remote_addr: Some(remote),
            });
            request
        };
        let refused = track.call(request(addr(1))).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert_eq!(evicted.progress(), Progress::Evicted);
        track.call(request(addr(2))).unwrap();
        assert_eq!(kept.progress(), Progress::Authenticated);
        assert_eq!(c.unauthenticated(), 0);
    }

    #[test]
    fn past_the_cap_the_oldest_unauthenticated_connection_is_told_to_close() {
        let c = Connections::default();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let local = Some(addr(1537));
        let first = c.admit(local, addr(1), 2);
        let second = c.admit(local, addr(2), 2);
        assert!(c.authenticated(&first));
        let third = c.admit(local, addr(3), 2);
        assert_eq!(first.progress(), Progress::Authenticated, "exempt");
        assert_eq!(c.unauthenticated(), 2);
        let fourth = c.admit(local, addr(4), 2);
        assert_eq!(second.progress(), Progress::Evicted, "the oldest");
        assert!(second.evicted.is_cancelled());
        assert!(!third.evicted.is_cancelled() && !fourth.evicted.is_cancelled());
        assert_eq!((c.evicted(), c.unauthenticated(), c.open()), (1, 2, 4));
        assert!(c.cap_problem().is_some());
        assert!(c.lookup(local, addr(3)).is_some_and(|x| x.id == third.id));
        assert!(c.lookup(Some(addr(80)), addr(3)).is_none());
        c.forget(&second);
        c.forget(&third);
        assert_eq!((c.unauthenticated(), c.open()), (1, 2));
    }
}
