//! [`DhcpManager`]: the one task that owns the leases, their answers and
//! the hosts file; [`DhcpHandle`]: how everyone else reads that state.
//!
//! The task wakes on a file event (the lease file's directory is watched,
//! since a file can be replaced), a finished resolution, an instance
//! registering, a query, or a timer: the periodic reconcile, the next
//! retry, the next lease expiry, the flush deadline, a lease missing long
//! enough to be gone, or a failed write's retry. Nothing else touches the
//! state, so there is no lock to hold across an `.await`.
//!
//! The task is supervised: a panic in it is caught, logged, counted and
//! shown in `/health`, and the task starts again with backoff from the
//! files on disk. A panic in a resolution costs only that attempt.
//!
//! dnsmasq rewrites its lease file in place (truncate, then write), so a
//! read can see half a file on any path: every read waits until two reads
//! a settle time apart agree and the file ends with a newline, and a lease
//! that is missing from a read is kept until it has been missing for
//! [`DhcpConfig::vanish_grace`], so a writer paused mid-file longer than
//! the settle time still flaps no name.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_runtime::Backoff;
use notify::Watcher as _;
use prost::Message as _;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

use super::DhcpConfig;
use super::hosts::{self, HostsError};
use super::leases::{self, Hardware, Lease};
use super::names::{Namespace, Refusal, short};
use crate::call::Answer;
use crate::{CallError, Mesh};

/// What a lease's error or the status's `last_error` keeps of a peer's or
/// the system's words.
const MAX_REASON: usize = 160;
/// Leases per `GetLeases` page when the request names no size, and at most.
pub const DEFAULT_PAGE: usize = 1000;
pub const MAX_PAGE: usize = 5000;
/// Encoded bytes of leases per page at most, well under any frame limit
/// whatever the leases hold.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// How often the state's size is measured for `/metrics`.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// What operators see of the manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpStatus {
    /// Whether the task is running.
    pub running: bool,
    /// Active leases known, from the last read of the lease file.
    pub leases_seen: usize,
    /// Leases with a VPS id, by answer or by trusted hostname.
    pub resolved: usize,
    /// Leases still without one: resolving or waiting to retry.
    pub pending: usize,
    /// Leases whose last attempt failed at the holder (an error, a
    /// disconnect, a deadline, no instance), not with "nobody has it".
    pub holder_failing: usize,
    /// Resolutions in flight now.
    pub in_flight: usize,
    /// Resolution calls sent through the mesh, in all.
    pub calls: u64,
    /// Resolutions that failed at the holder, in all.
    pub holder_failures: u64,
    /// Answers refused, by reason, in all.
    pub refused: BTreeMap<Refusal, u64>,
    pub lease_reads: u64,
    /// Reads where the lease file did not settle (it kept changing, or
    /// its last line had no newline) within the attempts allowed.
    pub unsettled_reads: u64,
    /// Lines skipped as malformed in the last read.
    pub malformed_lines: usize,
    /// Lines skipped as malformed, in all.
    pub malformed_total: u64,
    /// Leases over [`DhcpConfig::max_leases`] left out of the last read.
    pub leases_dropped: usize,
    /// The lease table's estimated memory, in bytes.
    pub state_bytes: usize,
    /// Lines of the hosts file as last written.
    pub hosts_entries: usize,
    pub hosts_writes: u64,
    pub write_failures: u64,
    /// Times the hosts file on disk was found changed or gone and rewritten.
    pub hosts_repairs: u64,
    /// SIGHUPs delivered to dnsmasq.
    pub reloads: u64,
    pub reload_failures: u64,
    /// Panics of the manager task, in all.
    pub crashes: u64,
    /// Panics of resolution tasks, in all.
    pub task_panics: u64,
    /// The latest of any problem below, for a quick look.
    pub last_error: Option<String>,
    /// Why the hosts file could not be written, until it is.
    pub write_error: Option<String>,
    /// Why dnsmasq could not be reloaded, until it is.
    pub reload_error: Option<String>,
    /// Why the lease file could not be read, until it is.
    pub read_error: Option<String>,
    /// Why the lease file is not watched.
    pub watch_error: Option<String>,
    /// The latest holder failure.
    pub holder_error: Option<String>,
    /// The latest crash and when; shown in `/health` for
    /// [`DhcpConfig::crash_report`].
    pub last_crash: Option<(String, Instant)>,
    /// The task crashed and waits to start again.
    pub restarting: bool,
    /// How long a crash stays in `/health`.
    pub crash_report: Duration,
    /// [`DhcpConfig::max_leases`], for the reason text.
    pub max_leases: usize,
}

/// Why the manager makes the gateway degraded. Made from the status; a
/// `/health` reason at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotRunning,
    Restarting {
        crashes: u64,
        reason: String,
    },
    Crashed {
        crashes: u64,
        reason: String,
    },
    /// Leases whose holder failed (or no instance could be asked).
    Unresolved {
        leases: usize,
        last_error: String,
    },
    HostsNotWritten(String),
    ReloadFailed(String),
    LeaseFileUnreadable(String),
    NotWatched(String),
    TooManyLeases {
        dropped: usize,
        max: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotRunning => f.write_str("the manager is not running"),
            Self::Restarting { crashes, reason } => write!(
                f,
                "the manager crashed ({crashes} time(s)) and is restarting: {reason}"
            ),
            Self::Crashed { crashes, reason } => write!(
                f,
                "the manager crashed ({crashes} time(s)) and restarted; last: {reason}"
            ),
            Self::Unresolved { leases, last_error } => {
                write!(f, "{leases} lease(s) unresolved; last error: {last_error}")
            }
            Self::HostsNotWritten(e) => write!(f, "hosts file not written: {e}"),
            Self::ReloadFailed(e) => write!(f, "dnsmasq not reloaded: {e}"),
            Self::LeaseFileUnreadable(e) => write!(f, "lease file unreadable: {e}"),
            Self::NotWatched(e) => write!(f, "lease file not watched: {e}"),
            Self::TooManyLeases { dropped, max } => write!(
                f,
                "{dropped} lease(s) over the limit of {max} are not served"
            ),
        }
    }
}

impl DhcpStatus {
    /// Every reason the manager is not well, now.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.restarting {
            let reason = self.last_crash.as_ref().map(|c| c.0.clone());
            problems.push(Problem::Restarting {
                crashes: self.crashes,
                reason: reason.unwrap_or_default(),
            });
        } else if !self.running {
            problems.push(Problem::NotRunning);
        } else if let Some((reason, at)) = &self.last_crash
            && at.elapsed() < self.crash_report
        {
            problems.push(Problem::Crashed {
                crashes: self.crashes,
                reason: reason.clone(),
            });
        }
        if self.holder_failing > 0 {
            problems.push(Problem::Unresolved {
                leases: self.holder_failing,
                last_error: self.holder_error.clone().unwrap_or_default(),
            });
        }
        if let Some(e) = &self.write_error {
            problems.push(Problem::HostsNotWritten(e.clone()));
        }
        if let Some(e) = &self.reload_error {
            problems.push(Problem::ReloadFailed(e.clone()));
        }
        if let Some(e) = &self.read_error {
            problems.push(Problem::LeaseFileUnreadable(e.clone()));
        }
        if let Some(e) = &self.watch_error {
            problems.push(Problem::NotWatched(e.clone()));
        }
        if self.leases_dropped > 0 {
            problems.push(Problem::TooManyLeases {
                dropped: self.leases_dropped,
                max: self.max_leases,
            });
        }
        problems
    }
}

/// A `GetLeases` request the manager cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page_token {0:?} is not one this gateway gave")]
    BadToken(String),
}

/// The read side of a manager; cheap to clone.
#[derive(Clone)]
pub struct DhcpHandle {
    status: watch::Receiver<DhcpStatus>,
    queries: mpsc::Sender<Query>,
}

impl DhcpHandle {
    /// The latest status.
    pub fn status(&self) -> DhcpStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes with the status.
    pub fn watch(&self) -> watch::Receiver<DhcpStatus> {
        self.status.clone()
    }

    /// Resolves once `condition` holds; `false` if the manager is gone first.
    pub async fn wait_until(&self, condition: impl Fn(&DhcpStatus) -> bool) -> bool {
        let mut status = self.status.clone();
        status.wait_for(|s| condition(s)).await.is_ok()
    }

    /// The first page of leases and what they resolved to; `None` when
    /// the manager is not running.
    pub async fn leases(&self) -> Option<pb::GetLeasesResponse> {
        self.leases_page(pb::GetLeasesRequest::default())
            .await?
            .ok()
    }

    /// One page of leases, sorted by IP: `page_size` of them at most
    /// ([`DEFAULT_PAGE`] when 0, [`MAX_PAGE`] at most, and never more than
    /// [`MAX_PAGE_BYTES`]), after `page_token`. `None` when the manager is
    /// not running.
    pub async fn leases_page(
        &self,
        request: pb::GetLeasesRequest,
    ) -> Option<Result<pb::GetLeasesResponse, PageError>> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Leases(request, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Makes the manager task panic, to exercise its supervision.
    #[doc(hidden)]
    pub async fn inject_crash(&self) {
        let _ = self.queries.send(Query::Crash).await;
    }
}

enum Query {
    Leases(
        pb::GetLeasesRequest,
        oneshot::Sender<Result<pb::GetLeasesResponse, PageError>>,
    ),
    Crash,
}

/// The manager, before it runs.
pub struct DhcpManager {
    config: DhcpConfig,
    status: watch::Sender<DhcpStatus>,
    queries: mpsc::Receiver<Query>,
}

impl DhcpManager {
    pub fn new(config: DhcpConfig) -> (Self, DhcpHandle) {
        let (status, status_rx) = watch::channel(DhcpStatus {
            crash_report: config.crash_report,
            max_leases: config.max_leases,
            ..DhcpStatus::default()
        });
        let (queries_tx, queries) = mpsc::channel(16);
        let handle = DhcpHandle {
            status: status_rx,
            queries: queries_tx,
        };
        (
            Self {
                config,
                status,
                queries,
            },
            handle,
        )
    }

    /// Runs until `shutdown` resolves, restarting the task with backoff
    /// whenever it panics. Resolutions still in flight at the end are
    /// dropped, which cancels them.
    pub async fn run(self, mesh: Mesh, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            status,
            mut queries,
        } = self;
        tokio::pin!(shutdown);
        let mut backoff =
            Backoff::new(config.restart_base, config.restart_max, config.crash_report);
        loop {
            backoff.connected();
            let base = status.borrow().clone();
            let owner = Owner::new(config.clone(), mesh.clone(), &status, base);
            let run = AssertUnwindSafe(owner.run(&mut queries, shutdown.as_mut()));
            let panic = match run.catch_unwind().await {
                Ok(()) => break,
                Err(panic) => panic_message(&*panic),
            };
            let delay = backoff.next_delay();
            tracing::error!(
                reason = %panic,
                restart_in_ms = delay.as_millis() as u64,
                "DHCP manager crashed; restarting"
            );
            status.send_modify(|s| {
                s.crashes += 1;
                s.last_crash = Some((panic.clone(), Instant::now()));
                s.last_error = Some(format!("the manager crashed: {panic}"));
                s.running = false;
                s.restarting = true;
                s.in_flight = 0;
            });
            tokio::select! {
                _ = shutdown.as_mut() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        status.send_modify(|s| {
            s.running = false;
            s.restarting = false;
            s.in_flight = 0;
        });
        tracing::info!("DHCP manager stopped");
    }
}

/// The text of a caught panic, cut short.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    short(text, MAX_REASON)
}

/// A lease is known by its address and its hardware identity: the same
/// address handed to another machine is another lease. Ordered by address,
/// which is the order `GetLeases` pages in.
type Key = (IpAddr, Hardware);

enum State {
    /// The hostname is the VPS id (only with `trust_hostnames`).
    Named(String),
    Resolved(String),
    Resolving,
    Waiting {
        due: Instant,
    },
}

/// Why a lease has no VPS id: short by construction, whatever a peer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LeaseError {
    /// Every instance asked said "not mine".
    NotFound,
    /// The holder failed: an error status, a disconnect, a deadline, or
    /// no instance to ask.
    Holder { code: Code, reason: String },
    /// An answer that may not reach dnsmasq.
    Refused {
        refusal: Refusal,
        instance: String,
        environment: String,
    },
    /// The resolution task panicked.
    Panicked,
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => f.write_str("not found: no instance holds this lease"),
            Self::Holder { code, reason } => write!(f, "{}: {reason}", code_label(*code)),
            Self::Refused {
                refusal,
                instance,
                environment,
            } => write!(
                f,
                "answer from {instance} ({environment}) refused: {refusal}"
            ),
            Self::Panicked => f.write_str("the resolution task panicked"),
        }
    }
}

fn code_label(code: Code) -> &'static str {
    gatemesh_handlers::dispatch::code_name(code)
}

struct Entry {
    lease: Lease,
    state: State,
    /// Between attempts at a lease nobody has, or whose answer was refused.
    backoff: Backoff,
    /// Between attempts after the holder failed: short, since the answer
    /// exists and the failure is probably passing.
    holder_backoff: Backoff,
    error: Option<LeaseError>,
    /// Tells the result of an earlier incarnation of this lease (it
    /// vanished and came back while resolving) from the current one.
    generation: u64,
    /// Since when the lease file has not listed this lease.
    missing_since: Option<Instant>,
}

impl Entry {
    fn vps_id(&self) -> Option<&str> {
        match &self.state {
            State::Named(id) | State::Resolved(id) => Some(id),
            State::Resolving | State::Waiting { .. } => None,
        }
    }

    /// Estimated bytes, heap included.
    fn bytes(&self) -> usize {
        let strings = [
            self.lease.hostname.as_deref(),
            self.lease.client_id.as_deref(),
            self.vps_id(),
        ];
        let hardware = match &self.lease.hardware {
            Hardware::Mac(s) | Hardware::Other(s) => s.capacity() * 2,
            Hardware::Iaid { .. } => 0,
        };
        let error = match &self.error {
            Some(LeaseError::Holder { reason, .. }) => reason.capacity(),
            Some(LeaseError::Refused {
                instance,
                environment,
                ..
            }) => instance.capacity() + environment.capacity(),
            _ => 0,
        };
        // The key holds a copy of the hardware address, hence twice.
        std::mem::size_of::<(Key, Entry)>()
            + strings.iter().flatten().map(|s| s.len()).sum::<usize>()
            + hardware
            + error
    }
}

/// A resolution's outcome, or its panic.
type Outcome = Result<Result<Answer<pb::FindVpsByLeaseResponse>, CallError>, String>;
type Resolution = (Key, u64, Outcome);

struct Owner<'s> {
    config: DhcpConfig,
    namespace: Namespace,
    mesh: Mesh,
    status_tx: &'s watch::Sender<DhcpStatus>,
    status: DhcpStatus,
    entries: BTreeMap<Key, Entry>,
    /// Leases waiting for an attempt, earliest first; an item whose entry
    /// moved on since it was pushed is skipped when popped.
    due: BinaryHeap<Reverse<(Instant, Key)>>,
    resolving: JoinSet<Resolution>,
    /// Answers for leases that vanished, kept in case they come back.
    cache: HashMap<Key, (String, Instant)>,
    generation: u64,
    resolved: usize,
    holder_failing: usize,
    /// The hosts file's content as last written or found on disk.
    written: Option<String>,
    dirty_since: Option<Instant>,
    write_backoff: Backoff,
    write_retry_at: Option<Instant>,
    /// Earliest expiry among the entries, in Unix seconds.
    next_expiry: Option<u64>,
    reread_at: Option<Instant>,
    first_event: Option<Instant>,
    measured_at: Option<Instant>,
    /// The malformed lines of the last read, so each is logged once.
    last_warnings: Vec<leases::ParseWarning>,
}

impl<'s> Owner<'s> {
    fn new(
        config: DhcpConfig,
        mesh: Mesh,
        status_tx: &'s watch::Sender<DhcpStatus>,
        base: DhcpStatus,
    ) -> Self {
        let write_backoff = short_backoff(&config);
        Self {
            namespace: config.namespace.clone(),
            config,
            mesh,
            status_tx,
            status: DhcpStatus {
                running: true,
                restarting: false,
                in_flight: 0,
                holder_failing: 0,
                write_error: None,
                watch_error: None,
                ..base
            },
            entries: BTreeMap::new(),
            due: BinaryHeap::new(),
            resolving: JoinSet::new(),
            cache: HashMap::new(),
            generation: 0,
            resolved: 0,
            holder_failing: 0,
            written: None,
            dirty_since: None,
            write_backoff,
            write_retry_at: None,
            next_expiry: None,
            reread_at: None,
            first_event: None,
            measured_at: None,
            last_warnings: Vec::new(),
        }
    }

    async fn run(
        mut self,
        queries: &mut mpsc::Receiver<Query>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) {
        let changed = Arc::new(Notify::new());
        let _watcher = match watch_file(&self.config.leases_file, changed.clone()) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                let message = short(
                    &format!(
                        "cannot watch {}: {e}; relying on the periodic reconcile",
                        self.config.leases_file.display()
                    ),
                    MAX_REASON,
                );
                tracing::warn!(error = %message, "lease file not watched");
                self.status.last_error = Some(message.clone());
                self.status.watch_error = Some(message);
                None
            }
        };
        let mut registrations = self.mesh.instances().subscribe();
        self.written = self.read_hosts().await;
        tracing::info!(
            leases = %self.config.leases_file.display(),
            hosts = %self.config.hosts_file.display(),
            trust_hostnames = self.config.trust_hostnames,
            "DHCP manager started"
        );
        self.reread().await;
        self.mark_dirty();
        let mut reconcile_at = Instant::now() + self.config.reconcile;
        loop {
            let now = Instant::now();
            if reconcile_at <= now {
                reconcile_at = now + self.config.reconcile;
                self.reconcile().await;
            }
            if self.reread_at.is_some_and(|t| t <= Instant::now()) {
                self.reread_at = None;
                self.first_event = None;
                self.reread().await;
            }
            if self.write_retry_at.is_some_and(|t| t <= Instant::now()) {
                self.write_retry_at = None;
                self.mark_dirty();
            }
            self.expire(unix_now());
            let now = Instant::now();
            self.start_due(now);
            self.flush_if_ready(now).await;
            self.publish();
            let wake = [
                Some(reconcile_at),
                self.reread_at,
                self.write_retry_at,
                self.next_due(),
                self.dirty_since.map(|t| t + self.config.flush_delay),
                self.expiry_instant(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(reconcile_at);
            tokio::select! {
                _ = shutdown.as_mut() => break,
                _ = changed.notified() => self.file_event(),
                Some(done) = self.resolving.join_next(), if !self.resolving.is_empty() => {
                    // Resolutions catch their own panics; an error here is
                    // an abort, which only shutdown does.
                    if let Ok(resolution) = done {
                        self.finished(resolution);
                    }
                }
                Ok(()) = registrations.changed() => self.retry_all_now(),
                Some(query) = queries.recv() => self.answer(query),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.resolving.abort_all();
    }

    fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// The safety net: the lease file read again, the hosts file compared
    /// with what is on disk (deleted or edited by hand: rewritten), a
    /// failed reload tried again, old cached answers dropped.
    async fn reconcile(&mut self) {
        let ttl = self.config.cache_ttl;
        self.cache.retain(|_, (_, since)| since.elapsed() < ttl);
        self.reread_at = Some(Instant::now());
        let on_disk = self.read_hosts().await;
        if self.written.is_some() && on_disk != self.written {
            self.status.hosts_repairs += 1;
            tracing::warn!(
                file = %self.config.hosts_file.display(),
                found = if on_disk.is_some() { "changed" } else { "missing" },
                "hosts file changed behind the manager; rewriting it"
            );
        }
        self.written = on_disk;
        self.mark_dirty();
        if self.status.reload_error.is_some() && self.status.write_error.is_none() {
            self.reload();
        }
    }

    async fn read_hosts(&self) -> Option<String> {
        let path = self.config.hosts_file.clone();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// A burst of events gives one read, once the file has been quiet for
    /// the settle time (or the flush delay after the first event).
    fn file_event(&mut self) {
        let now = Instant::now();
        let first = *self.first_event.get_or_insert(now);
        let at = (now + self.config.settle).min(first + self.config.flush_delay);
        self.reread_at = Some(self.reread_at.map_or(at, |t| t.min(at)));
    }

    fn hostname_id(&self, lease: &Lease) -> Option<String> {
        if !self.config.trust_hostnames {
            return None;
        }
        lease
            .hostname
            .as_ref()
            .filter(|h| self.namespace.check(h).is_ok())
            .cloned()
    }

    /// The lease file once it has settled: two reads a settle time apart
    /// agree and it ends with a newline. `None` when it cannot be read
    /// (reported); a missing file is an empty one (dnsmasq has not written
    /// one yet).
    async fn read_settled(&mut self) -> Option<Vec<u8>> {
        let mut previous = self.read_leases().await?;
        for _ in 0..self.config.read_attempts {
            tokio::time::sleep(self.config.settle).await;
            let next = self.read_leases().await?;
            let settled = next == previous && next.last().is_none_or(|b| *b == b'\n');
            previous = next;
            if settled {
                return Some(previous);
            }
        }
        self.status.unsettled_reads += 1;
        tracing::warn!(
            file = %self.config.leases_file.display(),
            "lease file still changing after {} reads; using the last one",
            self.config.read_attempts + 1
        );
        Some(previous)
    }

    async fn read_leases(&mut self) -> Option<Vec<u8>> {
        let path = self.config.leases_file.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
        match read {
            Ok(Ok(bytes)) => Some(bytes),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
            Ok(Err(e)) => {
                let message = short(
                    &format!(
                        "cannot read lease file {}: {e}",
                        self.config.leases_file.display()
                    ),
                    MAX_REASON,
                );
                if self.status.read_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "lease file unreadable; keeping the leases known");
                }
                self.status.last_error = Some(message.clone());
                self.status.read_error = Some(message);
                None
            }
            Err(_) => None,
        }
    }

    async fn reread(&mut self) {
        let Some(mut bytes) = self.read_settled().await else {
            return;
        };
        // dnsmasq ends every line with a newline: a last line without one
        // is being written (its address or MAC may be cut short), so it
        // waits for the next read.
        if bytes.last().is_some_and(|b| *b != b'\n') {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(
                file = %self.config.leases_file.display(),
                "lease file ends mid-line; that line waits for the next read"
            );
            bytes.truncate(keep);
        }
        if self.status.read_error.take().is_some() {
            tracing::info!(file = %self.config.leases_file.display(), "lease file readable again");
        }
        let mut parsed = leases::parse_bytes(&bytes, unix_now());
        drop(bytes);
        self.status.lease_reads += 1;
        self.status.malformed_lines = parsed.malformed;
        self.status.malformed_total += parsed.malformed as u64;
        // The same bad lines read again (every reconcile, every rewrite)
        // are not logged again.
        if parsed.warnings != self.last_warnings {
            for warning in &parsed.warnings {
                tracing::warn!(
                    file = %self.config.leases_file.display(),
                    line = warning.line,
                    reason = %warning.message,
                    "malformed lease line skipped"
                );
            }
            if parsed.malformed > parsed.warnings.len() {
                tracing::warn!(
                    more = parsed.malformed - parsed.warnings.len(),
                    "more malformed lease lines skipped"
                );
            }
            self.last_warnings = std::mem::take(&mut parsed.warnings);
        }
        let dropped = parsed.leases.len().saturating_sub(self.config.max_leases);
        if dropped > 0 && self.status.leases_dropped == 0 {
            tracing::warn!(
                dropped,
                max = self.config.max_leases,
                "more leases than GATEWAY_DHCP_MAX_LEASES; the rest are not served"
            );
        }
        self.status.leases_dropped = dropped;
        parsed.leases.truncate(self.config.max_leases);
        let mut current: HashMap<Key, Lease> = parsed
            .leases
            .into_iter()
            .map(|lease| ((lease.ip, lease.hardware.clone()), lease))
            .collect();
        let now = Instant::now();
        let grace = self.config.vanish_grace;
        let mut gone = Vec::new();
        let mut recheck: Option<Instant> = None;
        for (key, entry) in &mut self.entries {
            if current.contains_key(key) {
                entry.missing_since = None;
                continue;
            }
            let since = *entry.missing_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                gone.push(key.clone());
            } else {
                let at = since + grace;
                recheck = Some(recheck.map_or(at, |t| t.min(at)));
            }
        }
        for key in gone {
            self.remove(&key);
        }
        if let Some(at) = recheck {
            self.reread_at = Some(self.reread_at.map_or(at, |t| t.min(at)));
        }
        for (key, lease) in current.drain() {
            let named = self.hostname_id(&lease);
            match self.entries.get_mut(&key) {
                Some(entry) => {
                    let was_resolved = entry.vps_id().is_some();
                    match (named, &entry.state) {
                        (Some(new), State::Named(old)) if *old == new => {}
                        (Some(new), _) => {
                            entry.state = State::Named(new);
                            set_error(&mut self.holder_failing, entry, None);
                            self.resolved += usize::from(!was_resolved);
                            self.dirty_since.get_or_insert(now);
                        }
                        (None, State::Named(_)) => {
                            entry.state = State::Waiting { due: now };
                            self.due.push(Reverse((now, key.clone())));
                            self.resolved -= 1;
                            self.dirty_since.get_or_insert(now);
                        }
                        (None, _) => {}
                    }
                    entry.lease = lease;
                }
                None => {
                    let cached = self
                        .cache
                        .remove(&key)
                        .filter(|(_, since)| since.elapsed() < self.config.cache_ttl);
                    let state = match (named, cached) {
                        (Some(id), _) => State::Named(id),
                        (None, Some((id, _))) => State::Resolved(id),
                        (None, None) => {
                            self.due.push(Reverse((now, key.clone())));
                            State::Waiting { due: now }
                        }
                    };
                    self.generation += 1;
                    let entry = Entry {
                        lease,
                        state,
                        backoff: Backoff::new(
                            self.config.retry_base,
                            self.config.retry_max,
                            Duration::MAX,
                        ),
                        holder_backoff: short_backoff(&self.config),
                        error: None,
                        generation: self.generation,
                        missing_since: None,
                    };
                    if entry.vps_id().is_some() {
                        self.resolved += 1;
                        self.dirty_since.get_or_insert(now);
                    }
                    self.entries.insert(key, entry);
                }
            }
        }
        self.next_expiry = self.entries.values().filter_map(|e| e.lease.expires).min();
        self.measure();
    }

    fn remove(&mut self, key: &Key) {
        let Some(mut entry) = self.entries.remove(key) else {
            return;
        };
        set_error(&mut self.holder_failing, &mut entry, None);
        if entry.vps_id().is_some() {
            self.resolved -= 1;
            self.mark_dirty();
        }
        if let State::Resolved(id) = entry.state
            && self.cache.len() < self.config.max_leases
        {
            self.cache.insert(key.clone(), (id, Instant::now()));
        }
    }

    /// Drops leases whose time ran out, without waiting for dnsmasq to
    /// rewrite its file.
    fn expire(&mut self, now_unix: u64) {
        if self.next_expiry.is_none_or(|t| t > now_unix) {
            return;
        }
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.lease.is_active(now_unix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            self.remove(key);
        }
        self.next_expiry = self.entries.values().filter_map(|e| e.lease.expires).min();
    }

    fn expiry_instant(&self) -> Option<Instant> {
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(self.next_expiry?))?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Instant::now().checked_add(left)
    }

    fn next_due(&self) -> Option<Instant> {
        if self.resolving.len() >= self.config.concurrency {
            return None;
        }
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    fn start_due(&mut self, now: Instant) {
        while self.resolving.len() < self.config.concurrency {
            match self.due.peek() {
                Some(Reverse((due, _))) if *due <= now => {}
                _ => break,
            }
            let Some(Reverse((due, key))) = self.due.pop() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if !matches!(entry.state, State::Waiting { due: d } if d == due) {
                continue;
            }
            entry.state = State::Resolving;
            let request = pb::FindVpsByLeaseRequest {
                ip: key.0.to_string(),
                mac: entry.lease.mac().unwrap_or_default(),
            };
            let generation = entry.generation;
            let mesh = self.mesh.clone();
            let timeout = self.config.call_timeout;
            let environments = self.namespace.environments.clone();
            self.status.calls += 1;
            self.resolving.spawn(async move {
                let call = resolve(mesh, request, timeout, environments);
                let outcome = AssertUnwindSafe(call)
                    .catch_unwind()
                    .await
                    .map_err(|panic| panic_message(&*panic));
                (key, generation, outcome)
            });
        }
    }

    fn finished(&mut self, (key, generation, outcome): Resolution) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if entry.generation != generation || !matches!(entry.state, State::Resolving) {
            return;
        }
        let ip = key.0;
        let (error, delay) = match outcome {
            Ok(Ok(answer)) => {
                let checked = if self.namespace.allows_environment(&answer.environment) {
                    self.namespace.check(&answer.value.vps_id)
                } else {
                    Err(Refusal::Environment)
                };
                match checked {
                    Ok(()) => {
                        let vps_id = answer.value.vps_id;
                        tracing::debug!(%ip, vps_id = %vps_id, instance = %answer.instance, "lease resolved");
                        entry.state = State::Resolved(vps_id);
                        set_error(&mut self.holder_failing, entry, None);
                        self.resolved += 1;
                        self.mark_dirty();
                        return;
                    }
                    Err(refusal) => {
                        *self.status.refused.entry(refusal).or_default() += 1;
                        let error = LeaseError::Refused {
                            refusal,
                            instance: short(&answer.instance, 64),
                            environment: short(&answer.environment, 32),
                        };
                        // Once per lease and cause, not once per retry.
                        if entry.error.as_ref() != Some(&error) {
                            tracing::warn!(
                                %ip,
                                instance = %answer.instance,
                                environment = %answer.environment,
                                reason = refusal.as_str(),
                                answer = %short(&answer.value.vps_id, 64),
                                "answer refused: only VPS names reach dnsmasq"
                            );
                        }
                        (error, entry.backoff.next_delay())
                    }
                }
            }
            Ok(Err(CallError::NotFound { .. })) => {
                (LeaseError::NotFound, entry.backoff.next_delay())
            }
            Ok(Err(e)) => {
                self.status.holder_failures += 1;
                let reason = short(&e.to_string(), MAX_REASON);
                let message = format!("resolving {ip}: {reason}");
                if !matches!(entry.error, Some(LeaseError::Holder { .. })) {
                    tracing::warn!(%ip, code = code_label(e.code()), error = %reason, "lease holder failed; retrying soon");
                }
                self.status.holder_error = Some(message.clone());
                self.status.last_error = Some(message);
                let error = LeaseError::Holder {
                    code: e.code(),
                    reason,
                };
                (error, entry.holder_backoff.next_delay())
            }
            Err(panic) => {
                self.status.task_panics += 1;
                tracing::error!(%ip, reason = %panic, "lease resolution panicked; retrying soon");
                (LeaseError::Panicked, entry.holder_backoff.next_delay())
            }
        };
        let due = Instant::now() + delay;
        tracing::debug!(%ip, error = %error, "lease not resolved; will retry");
        entry.state = State::Waiting { due };
        set_error(&mut self.holder_failing, entry, Some(error));
        self.due.push(Reverse((due, key)));
    }

    /// An instance came or went: every lease still waiting is tried now,
    /// since the newcomer may know it.
    fn retry_all_now(&mut self) {
        let now = Instant::now();
        for (key, entry) in &mut self.entries {
            if let State::Waiting { due } = &mut entry.state
                && *due > now
            {
                *due = now;
                self.due.push(Reverse((now, key.clone())));
            }
        }
    }

    /// Writes the hosts file once nothing more is about to change (no
    /// resolution in flight or due), or once the flush delay has passed;
    /// and only if its content differs from what is there.
    async fn flush_if_ready(&mut self, now: Instant) {
        let Some(since) = self.dirty_since else {
            return;
        };
        let busy = !self.resolving.is_empty() || self.next_due().is_some_and(|t| t <= now);
        if busy && now < since + self.config.flush_delay {
            return;
        }
        self.dirty_since = None;
        let content = hosts::render(
            self.entries
                .iter()
                .filter_map(|((ip, _), e)| e.vps_id().map(|id| (*ip, id))),
        );
        if self.written.as_deref() == Some(content.as_str()) {
            return;
        }
        let lines = content.lines().count().saturating_sub(1);
        let path = self.config.hosts_file.clone();
        let text = content.clone();
        let written =
            tokio::task::spawn_blocking(move || hosts::write_atomically(&path, &text)).await;
        match written {
            Ok(Ok(())) => {
                self.written = Some(content);
                self.status.hosts_writes += 1;
                self.status.hosts_entries = lines;
                self.write_retry_at = None;
                self.write_backoff = short_backoff(&self.config);
                if self.status.write_error.take().is_some() {
                    tracing::info!(file = %self.config.hosts_file.display(), "hosts file written again");
                }
                tracing::info!(file = %self.config.hosts_file.display(), entries = lines, "hosts file written");
            }
            Ok(Err(e)) => {
                self.status.write_failures += 1;
                let delay = self.write_backoff.next_delay();
                self.write_retry_at = Some(Instant::now() + delay);
                let message = short(&e.to_string(), MAX_REASON);
                if self.status.write_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "hosts file not written; retrying");
                }
                self.status.last_error = Some(message.clone());
                self.status.write_error = Some(message);
                return;
            }
            Err(_) => return,
        }
        self.reload();
    }

    /// SIGHUP to dnsmasq, if a pid file is configured and names dnsmasq.
    fn reload(&mut self) {
        let Some(pid_file) = &self.config.pid_file else {
            return;
        };
        match hosts::reload(pid_file) {
            Ok(pid) => {
                self.status.reloads += 1;
                if self.status.reload_error.take().is_some() {
                    tracing::info!(pid, "dnsmasq reloaded again");
                }
                tracing::info!(pid, "dnsmasq reloaded");
            }
            Err(e) => {
                self.status.reload_failures += 1;
                let message = short(&e.to_string(), MAX_REASON);
                if self.status.reload_error.as_ref() != Some(&message) {
                    match &e {
                        HostsError::NotDnsmasq { .. } => tracing::warn!(
                            error = %message,
                            "pid file does not name dnsmasq; no signal sent, the hosts file is written"
                        ),
                        _ => {
                            tracing::warn!(error = %message, kind = e.kind(), "dnsmasq not reloaded; the hosts file is written")
                        }
                    }
                }
                self.status.last_error = Some(message.clone());
                self.status.reload_error = Some(message);
            }
        }
    }

    fn answer(&mut self, query: Query) {
        match query {
            Query::Leases(request, reply) => {
                let page = self.page(&request);
                let _ = reply.send(page);
            }
            Query::Crash => panic!("crash injected through DhcpHandle::inject_crash"),
        }
    }

    fn page(&mut self, request: &pb::GetLeasesRequest) -> Result<pb::GetLeasesResponse, PageError> {
        let after = match request.page_token.as_str() {
            "" => None,
            token => {
                Some(decode_token(token).ok_or_else(|| PageError::BadToken(short(token, 64)))?)
            }
        };
        let size = match request.page_size as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let range = match &after {
            Some(key) => self.entries.range((Bound::Excluded(key), Bound::Unbounded)),
            None => self.entries.range(..),
        };
        let mut leases = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        let mut more = false;
        for (key, e) in range {
            if leases.len() == size || bytes >= MAX_PAGE_BYTES {
                more = true;
                break;
            }
            let (vps_id, state) = match &e.state {
                State::Named(id) => (id.clone(), "hostname"),
                State::Resolved(id) => (id.clone(), "resolved"),
                State::Resolving => (String::new(), "resolving"),
                State::Waiting { .. } => (String::new(), "pending"),
            };
            let lease = pb::DhcpLease {
                ip: key.0.to_string(),
                mac: e.lease.mac().unwrap_or_default(),
                hostname: e.lease.hostname.clone().unwrap_or_default(),
                expires: e.lease.expires.unwrap_or(0),
                vps_id,
                state: state.into(),
                last_error: e
                    .error
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            };
            bytes += lease.encoded_len() + 4;
            leases.push(lease);
            last = Some(key);
        }
        let next_page_token = match (more, last) {
            (true, Some(key)) => encode_token(key),
            _ => String::new(),
        };
        self.measure();
        Ok(pb::GetLeasesResponse {
            leases,
            leases_seen: self.entries.len() as u64,
            resolved: self.resolved as u64,
            pending: (self.entries.len() - self.resolved) as u64,
            reloads: self.status.reloads,
            last_error: self.status.last_error.clone().unwrap_or_default(),
            next_page_token,
            state_bytes: self.status.state_bytes as u64,
        })
    }

    /// Re-estimates the lease table's memory.
    fn measure(&mut self) {
        self.measured_at = Some(Instant::now());
        let cache: usize = self
            .cache
            .iter()
            .map(|(_, (id, _))| std::mem::size_of::<(Key, (String, Instant))>() + id.len())
            .sum();
        self.status.state_bytes = self.entries.values().map(Entry::bytes).sum::<usize>() + cache;
    }

    fn publish(&mut self) {
        if self
            .measured_at
            .is_none_or(|t| t.elapsed() >= MEASURE_EVERY)
        {
            self.measure();
        }
        self.status.leases_seen = self.entries.len();
        self.status.resolved = self.resolved;
        self.status.pending = self.entries.len() - self.resolved;
        self.status.holder_failing = self.holder_failing;
        if self.holder_failing == 0 {
            self.status.holder_error = None;
        }
        self.status.in_flight = self.resolving.len();
        let status = &self.status;
        self.status_tx.send_if_modified(|current| {
            if current == status {
                false
            } else {
                current.clone_from(status);
                true
            }
        });
    }
}

/// The retry delays after a holder or a write failed: short, since the
/// cause is probably passing.
fn short_backoff(config: &DhcpConfig) -> Backoff {
    Backoff::new(
        config.retry_base.min(config.holder_retry_max),
        config.holder_retry_max,
        Duration::MAX,
    )
}

/// Sets a lease's error, keeping the count of holder failures right.
fn set_error(failing: &mut usize, entry: &mut Entry, error: Option<LeaseError>) {
    let is_holder = |e: &Option<LeaseError>| {
        matches!(e, Some(LeaseError::Holder { .. } | LeaseError::Panicked))
    };
    if is_holder(&entry.error) {
        *failing -= 1;
    }
    if is_holder(&error) {
        *failing += 1;
    }
    entry.error = error;
}

/// One resolution: `first_valid` among every instance, or among the
/// allowed environments' only. With several environments, one call per
/// environment; the first valid answer wins, `NotFound` only when every
/// environment said so (or had no instance), and any other failure is the
/// holder's.
async fn resolve(
    mesh: Mesh,
    request: pb::FindVpsByLeaseRequest,
    timeout: Duration,
    environments: Vec<String>,
) -> Result<Answer<pb::FindVpsByLeaseResponse>, CallError> {
    use futures_util::StreamExt as _;
    use futures_util::stream::FuturesUnordered;

    let call = |env: Option<String>| {
        let mesh = mesh.clone();
        let request = request.clone();
        async move {
            let call = mesh.call::<FindVpsByLease>(request).timeout(timeout);
            match env {
                Some(env) => call.env(env).first_valid().await,
                None => call.first_valid().await,
            }
        }
    };
    if environments.len() <= 1 {
        return call(environments.into_iter().next()).await;
    }
    let mut calls: FuturesUnordered<_> = environments.into_iter().map(|e| call(Some(e))).collect();
    let mut asked = 0;
    let mut failure = None;
    let mut none_serve = None;
    while let Some(outcome) = calls.next().await {
        match outcome {
            Ok(answer) => return Ok(answer),
            Err(CallError::NotFound { asked: n }) => asked += n,
            Err(e @ CallError::NoResponders { .. }) => none_serve = Some(e),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match (failure, asked, none_serve) {
        (Some(e), _, _) => Err(e),
        (None, 1.., _) => Err(CallError::NotFound { asked }),
        (None, 0, Some(e)) => Err(e),
        (None, 0, None) => Err(CallError::NotFound { asked: 0 }),
    }
}

/// A page token: the last key of the page, as `<ip> <hardware>`.
fn encode_token((ip, hardware): &Key) -> String {
    match hardware {
        Hardware::Mac(mac) => format!("{ip} mac {mac}"),
        Hardware::Other(other) => format!("{ip} other {other}"),
        Hardware::Iaid { iaid, temporary } => {
            format!("{ip} iaid {}{iaid}", if *temporary { "T" } else { "" })
        }
    }
}

fn decode_token(token: &str) -> Option<Key> {
    let mut parts = token.splitn(3, ' ');
    let ip: IpAddr = parts.next()?.parse().ok()?;
    let hardware = match (parts.next()?, parts.next()?) {
        ("mac", mac) => Hardware::Mac(mac.into()),
        ("other", other) => Hardware::Other(other.into()),
        ("iaid", iaid) => match iaid.strip_prefix('T') {
            Some(n) => Hardware::Iaid {
                iaid: n.parse().ok()?,
                temporary: true,
            },
            None => Hardware::Iaid {
                iaid: iaid.parse().ok()?,
                temporary: false,
            },
        },
        _ => return None,
    };
    Some((ip, hardware))
}

/// Unix seconds now, as dnsmasq's lease file counts them.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Watches the directory that holds `path` (dnsmasq may replace the file,
/// which a watch on the file itself would lose) and signals `changed` on
/// any event about that file other than a read.
fn watch_file(path: &Path, changed: Arc<Notify>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let name: Option<OsString> = path.file_name().map(OsString::from);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // The watch lost events: read the file to be sure.
            changed.notify_one();
            return;
        };
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if relevant && event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            changed.notify_one();
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let keys: [Key; 4] = [
            (
                "10.0.0.1".parse().unwrap(),
                Hardware::Mac("52:54:00:00:00:01".into()),
            ),
            (
                "10.0.0.2".parse().unwrap(),
                Hardware::Other("20-00:11".into()),
            ),
            (
                "fd00::1".parse().unwrap(),
                Hardware::Iaid {
                    iaid: 7,
                    temporary: true,
                },
            ),
            (
                "fd00::2".parse().unwrap(),
                Hardware::Iaid {
                    iaid: 8,
                    temporary: false,
                },
            ),
        ];
        for key in keys {
            assert_eq!(decode_token(&encode_token(&key)), Some(key));
        }
        for bad in ["", "x", "10.0.0.1", "10.0.0.1 iaid x", "10.0.0.1 what 1"] {
            assert_eq!(decode_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn problems_say_what_is_wrong() {
        let mut status = DhcpStatus {
            running: true,
            ..DhcpStatus::default()
        };
        assert!(status.problems().is_empty());
        status.holder_failing = 2;
        status.holder_error = Some("resolving 10.0.0.1: unavailable".into());
        status.write_error = Some("cannot write".into());
        let text: Vec<String> = status.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "2 lease(s) unresolved; last error: resolving 10.0.0.1: unavailable",
                "hosts file not written: cannot write"
            ]
        );
        status.running = false;
        status.restarting = true;
        status.crashes = 1;
        status.last_crash = Some(("boom".into(), Instant::now()));
        assert!(
            status.problems()[0]
                .to_string()
                .contains("restarting: boom")
        );
    }
}
