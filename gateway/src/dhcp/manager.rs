//! [`DhcpManager`]: the one task that owns the leases, their answers and
//! the hosts file; [`DhcpHandle`]: how everyone else reads that state.
//!
//! The task wakes on a file event (the lease file's directory is watched,
//! since a file can be replaced), a finished resolution, an instance
//! registering, a query, or a timer: the periodic reconcile, the next
//! retry, the next lease expiry, or the flush deadline. Nothing else
//! touches the state, so there is no lock to hold across an `.await`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::ffi::OsString;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_runtime::Backoff;
use notify::Watcher as _;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::DhcpConfig;
use super::hosts;
use super::leases::{self, Hardware, Lease};
use crate::{CallError, Mesh};

/// What operators see of the manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhcpStatus {
    /// Whether the task is running.
    pub running: bool,
    /// Active leases known, from the last read of the lease file.
    pub leases_seen: usize,
    /// Leases with a VPS id, by answer or by hostname.
    pub resolved: usize,
    /// Leases still without one: resolving or waiting to retry.
    pub pending: usize,
    /// Resolutions in flight now.
    pub in_flight: usize,
    /// Resolution calls sent through the mesh, in all.
    pub calls: u64,
    pub lease_reads: u64,
    /// Lines skipped as malformed in the last read.
    pub malformed_lines: usize,
    /// Lines of the hosts file as last written.
    pub hosts_entries: usize,
    pub hosts_writes: u64,
    /// SIGHUPs delivered to dnsmasq.
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_error: Option<String>,
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

    /// Every lease and what it resolved to; `None` when the manager is not
    /// running.
    pub async fn leases(&self) -> Option<pb::GetLeasesResponse> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Leases(tx)).await.ok()?;
        rx.await.ok()
    }
}

enum Query {
    Leases(oneshot::Sender<pb::GetLeasesResponse>),
}

/// The manager, before it runs.
pub struct DhcpManager {
    config: DhcpConfig,
    status: watch::Sender<DhcpStatus>,
    queries: mpsc::Receiver<Query>,
}

impl DhcpManager {
    pub fn new(config: DhcpConfig) -> (Self, DhcpHandle) {
        let (status, status_rx) = watch::channel(DhcpStatus::default());
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

    /// Runs until `shutdown` resolves. Resolutions still in flight then are
    /// dropped, which cancels them.
    pub async fn run(self, mesh: Mesh, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            status,
            queries,
        } = self;
        Owner::new(config, mesh, status)
            .run(queries, shutdown)
            .await
    }
}

/// A lease is known by its address and its hardware identity: the same
/// address handed to another machine is another lease.
type Key = (IpAddr, Hardware);

enum State {
    /// The hostname is the VPS id.
    Named(String),
    Resolved(String),
    Resolving,
    Waiting {
        due: Instant,
    },
}

struct Entry {
    lease: Lease,
    state: State,
    backoff: Backoff,
    last_error: Option<String>,
    /// Tells the result of an earlier incarnation of this lease (it
    /// vanished and came back while resolving) from the current one.
    generation: u64,
}

impl Entry {
    fn vps_id(&self) -> Option<&str> {
        match &self.state {
            State::Named(id) | State::Resolved(id) => Some(id),
            State::Resolving | State::Waiting { .. } => None,
        }
    }
}

type Resolution = (Key, u64, Result<String, CallError>);

struct Owner {
    config: DhcpConfig,
    mesh: Mesh,
    status_tx: watch::Sender<DhcpStatus>,
    status: DhcpStatus,
    entries: HashMap<Key, Entry>,
    /// Leases waiting for an attempt, earliest first; an item whose entry
    /// moved on since it was pushed is skipped when popped.
    due: BinaryHeap<Reverse<(Instant, Key)>>,
    resolving: JoinSet<Resolution>,
    /// Answers for leases that vanished, kept in case they come back.
    cache: HashMap<Key, (String, Instant)>,
    generation: u64,
    resolved: usize,
    /// The hosts file's content as last written or found.
    written: Option<String>,
    dirty_since: Option<Instant>,
    /// Earliest expiry among the entries, in Unix seconds.
    next_expiry: Option<u64>,
    reread_at: Option<Instant>,
    first_event: Option<Instant>,
}

impl Owner {
    fn new(config: DhcpConfig, mesh: Mesh, status_tx: watch::Sender<DhcpStatus>) -> Self {
        Self {
            config,
            mesh,
            status_tx,
            status: DhcpStatus {
                running: true,
                ..DhcpStatus::default()
            },
            entries: HashMap::new(),
            due: BinaryHeap::new(),
            resolving: JoinSet::new(),
            cache: HashMap::new(),
            generation: 0,
            resolved: 0,
            written: None,
            dirty_since: None,
            next_expiry: None,
            reread_at: None,
            first_event: None,
        }
    }

    async fn run(mut self, mut queries: mpsc::Receiver<Query>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let changed = Arc::new(Notify::new());
        let _watcher = match watch_file(&self.config.leases_file, changed.clone()) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                let message = format!(
                    "cannot watch {}: {e}; relying on the periodic reconcile",
                    self.config.leases_file.display()
                );
                tracing::warn!(error = %message, "lease file not watched");
                self.status.last_error = Some(message);
                None
            }
        };
        let mut registrations = self.mesh.instances().subscribe();
        let hosts_file = self.config.hosts_file.clone();
        self.written = tokio::task::spawn_blocking(move || std::fs::read_to_string(hosts_file))
            .await
            .ok()
            .and_then(Result::ok);
        tracing::info!(
            leases = %self.config.leases_file.display(),
            hosts = %self.config.hosts_file.display(),
            "DHCP manager started"
        );
        self.reread().await;
        self.mark_dirty();
        let mut reconcile_at = Instant::now() + self.config.reconcile;
        loop {
            let now = Instant::now();
            if reconcile_at <= now {
                reconcile_at = now + self.config.reconcile;
                let ttl = self.config.cache_ttl;
                self.cache.retain(|_, (_, since)| since.elapsed() < ttl);
                self.reread_at = Some(now);
                // Rewrites the file if it failed last time.
                self.mark_dirty();
            }
            if self.reread_at.is_some_and(|t| t <= now) {
                self.reread_at = None;
                self.first_event = None;
                self.reread().await;
            }
            self.expire(unix_now());
            let now = Instant::now();
            self.start_due(now);
            self.flush_if_ready(now).await;
            self.publish();
            let wake = [
                Some(reconcile_at),
                self.reread_at,
                self.next_due(),
                self.dirty_since.map(|t| t + self.config.flush_delay),
                self.expiry_instant(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(reconcile_at);
            tokio::select! {
                _ = &mut shutdown => break,
                _ = changed.notified() => self.file_event(),
                Some(done) = self.resolving.join_next(), if !self.resolving.is_empty() => {
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
        self.status.running = false;
        self.status.in_flight = 0;
        self.publish();
        tracing::info!("DHCP manager stopped");
    }

    fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// A burst of events gives one read, once the file has been quiet for
    /// the settle time (or the flush delay after the first event).
    fn file_event(&mut self) {
        let now = Instant::now();
        let first = *self.first_event.get_or_insert(now);
        self.reread_at = Some((now + self.config.settle).min(first + self.config.flush_delay));
    }

    fn hostname_id(&self, lease: &Lease) -> Option<String> {
        let prefix = &self.config.hostname_prefix;
        lease
            .hostname
            .as_ref()
            .filter(|h| {
                !prefix.is_empty() && h.len() > prefix.len() && h.starts_with(prefix.as_str())
            })
            .cloned()
    }

    async fn reread(&mut self) {
        let path = self.config.leases_file.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&path)).await;
        let text = match read {
            Ok(Ok(text)) => text,
            // dnsmasq has not written one yet: no leases.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Ok(Err(e)) => {
                let message = format!(
                    "cannot read lease file {}: {e}",
                    self.config.leases_file.display()
                );
                tracing::warn!(error = %message, "lease file unreadable; keeping the leases known");
                self.status.last_error = Some(message);
                return;
            }
            Err(_) => return,
        };
        let parsed = leases::parse(&text, unix_now());
        self.status.lease_reads += 1;
        self.status.malformed_lines = parsed.warnings.len();
        for warning in parsed.warnings.iter().take(10) {
            tracing::warn!(
                file = %self.config.leases_file.display(),
                line = warning.line,
                reason = %warning.message,
                "malformed lease line skipped"
            );
        }
        let mut current: HashMap<Key, Lease> = parsed
            .leases
            .into_iter()
            .map(|lease| ((lease.ip, lease.hardware.clone()), lease))
            .collect();
        let vanished: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for key in vanished {
            self.remove(&key);
        }
        let now = Instant::now();
        for (key, lease) in current.drain() {
            let named = self.hostname_id(&lease);
            match self.entries.get_mut(&key) {
                Some(entry) => {
                    let was_resolved = entry.vps_id().is_some();
                    match (named, &entry.state) {
                        (Some(new), State::Named(old)) if *old == new => {}
                        (Some(new), _) => {
                            entry.state = State::Named(new);
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
                        last_error: None,
                        generation: self.generation,
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
    }

    fn remove(&mut self, key: &Key) {
        let Some(entry) = self.entries.remove(key) else {
            return;
        };
        if entry.vps_id().is_some() {
            self.resolved -= 1;
            self.mark_dirty();
        }
        if let State::Resolved(id) = entry.state {
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
        let at = UNIX_EPOCH + Duration::from_secs(self.next_expiry?);
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Some(Instant::now() + left)
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
            self.status.calls += 1;
            self.resolving.spawn(async move {
                let result = mesh
                    .call::<FindVpsByLease>(request)
                    .timeout(timeout)
                    .first_valid()
                    .await
                    .map(|answer| answer.value.vps_id);
                (key, generation, result)
            });
        }
    }

    fn finished(&mut self, (key, generation, result): Resolution) {
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        if entry.generation != generation || !matches!(entry.state, State::Resolving) {
            return;
        }
        let error = match result {
            Ok(vps_id) if leases::is_hostname(&vps_id) => {
                tracing::debug!(ip = %key.0, vps_id = %vps_id, "lease resolved");
                entry.state = State::Resolved(vps_id);
                entry.last_error = None;
                self.resolved += 1;
                self.mark_dirty();
                return;
            }
            Ok(vps_id) => format!("answer {vps_id:?} is not a name a hosts file can hold"),
            Err(e) => {
                let quiet = matches!(e, CallError::NotFound { .. });
                let message = e.to_string();
                if !quiet {
                    self.status.last_error = Some(format!("resolving {}: {message}", key.0));
                }
                message
            }
        };
        let due = Instant::now() + entry.backoff.next_delay();
        tracing::debug!(ip = %key.0, error = %error, attempts = entry.backoff.attempts(), "lease not resolved; will retry");
        entry.state = State::Waiting { due };
        entry.last_error = Some(error);
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
                tracing::info!(file = %self.config.hosts_file.display(), entries = lines, "hosts file written");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "hosts file not written; retrying at the next change or reconcile");
                self.status.last_error = Some(e.to_string());
                return;
            }
            Err(_) => return,
        }
        let Some(pid_file) = &self.config.pid_file else {
            return;
        };
        match hosts::reload(pid_file) {
            Ok(pid) => {
                self.status.reloads += 1;
                tracing::info!(pid, "dnsmasq reloaded");
            }
            Err(e) => {
                self.status.reload_failures += 1;
                tracing::warn!(error = %e, "dnsmasq not reloaded; the hosts file is written");
                self.status.last_error = Some(e.to_string());
            }
        }
    }

    fn answer(&self, query: Query) {
        match query {
            Query::Leases(reply) => {
                let mut leases: Vec<pb::DhcpLease> = self
                    .entries
                    .iter()
                    .map(|((ip, _), e)| {
                        let (vps_id, state) = match &e.state {
                            State::Named(id) => (id.clone(), "hostname"),
                            State::Resolved(id) => (id.clone(), "resolved"),
                            State::Resolving => (String::new(), "resolving"),
                            State::Waiting { .. } => (String::new(), "pending"),
                        };
                        pb::DhcpLease {
                            ip: ip.to_string(),
                            mac: e.lease.mac().unwrap_or_default(),
                            hostname: e.lease.hostname.clone().unwrap_or_default(),
                            expires: e.lease.expires.unwrap_or(0),
                            vps_id,
                            state: state.into(),
                            last_error: e.last_error.clone().unwrap_or_default(),
                        }
                    })
                    .collect();
                leases.sort_by(|a, b| {
                    let ip = |s: &str| s.parse::<IpAddr>().ok();
                    ip(&a.ip).cmp(&ip(&b.ip)).then_with(|| a.mac.cmp(&b.mac))
                });
                let _ = reply.send(pb::GetLeasesResponse {
                    leases,
                    leases_seen: self.entries.len() as u64,
                    resolved: self.resolved as u64,
                    pending: (self.entries.len() - self.resolved) as u64,
                    reloads: self.status.reloads,
                    last_error: self.status.last_error.clone().unwrap_or_default(),
                });
            }
        }
    }

    fn publish(&mut self) {
        self.status.leases_seen = self.entries.len();
        self.status.resolved = self.resolved;
        self.status.pending = self.entries.len() - self.resolved;
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

fn unix_now() -> u64 {
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
