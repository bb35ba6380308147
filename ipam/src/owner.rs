//! The allocator's one owner: a task that takes requests from a bounded
//! queue, applies each to the table in arrival order, and makes every
//! change durable before anyone hears of it.
//!
//! Requests that arrive together are applied together: one lease-file
//! read, one write of the reservations file, one SIGHUP to dnsmasq for the
//! whole batch (group commit). Nothing is answered before the write that
//! holds it is on disk, and a failed write answers every request of its
//! batch `UNAVAILABLE` and leaves the table as it was.
//!
//! The reservations file is dnsmasq's and the allocator's at once, so it
//! is watched: deleted or edited under a running gateway, it is written
//! again from the table (checked on every change the watch reports and
//! every [`CHECK_EVERY`], should the watch miss one), and `/health` says
//! so until it is whole again.
//!
//! The lease file is read the one way the DHCP manager reads it too
//! ([`gatemesh_dnsmasq::read_settled`]): a snapshot taken while dnsmasq
//! rewrites it could hide a lease, and an address would go to two VMs. A
//! lease file that cannot be read refuses the batch's allocations
//! (`UNAVAILABLE`) rather than pass for one without leases.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use gatemesh_dnsmasq::{DnsmasqError, leases, read_settled, unix_now, watch_file};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::IpamConfig;
use crate::pool::Pool;
use crate::table::{self, Allocate, Done, IpRefusal, Mac, Refused, Release, Table};

/// Requests applied in one batch at most.
const MAX_BATCH: usize = 512;
/// Requests waiting for the owner at most; beyond, callers wait for room.
pub(crate) const QUEUE: usize = 4096;
/// How often the reservations file is compared with the table, besides
/// every change its watch reports.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Addresses held by active IPv4 leases, and their MACs.
type Leased = HashMap<Ipv4Addr, Mac>;

pub(crate) enum Op {
    Allocate(Allocate),
    Release(Release),
}

pub(crate) struct Job {
    pub(crate) op: Op,
    pub(crate) environment: String,
    pub(crate) reply: oneshot::Sender<Result<Done, Refused>>,
}

/// What the allocator counts; read by `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct IpamStats {
    pub allocations: AtomicU64,
    pub releases: AtomicU64,
    pub refusals: [AtomicU64; IpRefusal::ALL.len()],
    pub writes: AtomicU64,
    pub write_failures: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The last failed write, until one succeeds.
    pub write_error: Mutex<Option<String>>,
    /// The last failed reload, until one succeeds.
    pub reload_error: Mutex<Option<String>>,
    /// Why the lease file could not be read, until it can.
    pub lease_error: Mutex<Option<String>>,
    /// Times the reservations file was found deleted or edited and was
    /// written again from the table.
    pub file_repairs: AtomicU64,
    /// The reservations file does not hold the table and could not be
    /// written again, until it is.
    pub file_problem: Mutex<Option<String>>,
    /// Why the reservations file is not watched (then only the periodic
    /// check sees it change), until it is.
    pub watch_error: Mutex<Option<String>>,
}

impl IpamStats {
    pub fn refused(&self, reason: IpRefusal) -> u64 {
        let i = IpRefusal::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.refusals[i].load(Relaxed)
    }

    pub(crate) fn count_refusal(&self, reason: IpRefusal) {
        if let Some(i) = IpRefusal::ALL.iter().position(|r| *r == reason) {
            self.refusals[i].fetch_add(1, Relaxed);
        }
    }
}

pub(crate) struct Owner {
    pub(crate) pool: Arc<Pool>,
    pub(crate) config: IpamConfig,
    pub(crate) table: Arc<RwLock<Arc<Table>>>,
    pub(crate) stats: Arc<IpamStats>,
}

/// The reservations file's table; an absent file is an empty table. Left
/// temporary files of a write cut short are removed: the rename never
/// happened, so they hold nothing acknowledged.
pub(crate) fn load(path: &Path) -> Result<Table, String> {
    // A directory that cannot be swept cannot be written either: the first
    // write says so, where it is counted and shown.
    if let Err(e) = gatemesh_dnsmasq::remove_leftovers(path) {
        tracing::debug!(error = %e, "temporary files of the reservations file not swept");
    }
    match std::fs::read_to_string(path) {
        Ok(text) => table::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Table::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl Owner {
    /// Writes the file when it does not hold the table (first start, an
    /// older layout, a hand edit), before the first request.
    pub(crate) fn sync_file(&self) -> Result<(), String> {
        let text = table::render(&self.table.read(), &self.config.hostname_prefix);
        let on_disk = std::fs::read_to_string(&self.config.reservations_file).ok();
        if on_disk.as_deref() != Some(text.as_str()) {
            self.write(text).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn write(&self, text: String) -> Result<(), DnsmasqError> {
        match gatemesh_dnsmasq::write_atomically(&self.config.reservations_file, &text) {
            Ok(()) => {
                self.stats.writes.fetch_add(1, Relaxed);
                *self.stats.write_error.lock() = None;
                if self.stats.file_problem.lock().take().is_some() {
                    tracing::info!(
                        file = %self.config.reservations_file.display(),
                        "the reservations file is whole again"
                    );
                }
                self.reload();
                Ok(())
            }
            Err(e) => {
                self.stats.write_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot write the reservations file");
                *self.stats.write_error.lock() = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Writes the file again when it no longer holds the table: deleted,
    /// edited, or made something else under the gateway. dnsmasq would
    /// otherwise hand out what the allocator never reserved, or forget
    /// what it did.
    fn check_file(&self) {
        let text = table::render(&self.table.read(), &self.config.hostname_prefix);
        let path = &self.config.reservations_file;
        let found = match std::fs::read_to_string(path) {
            Ok(on_disk) if on_disk == text => return,
            Ok(_) => "edited",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "deleted",
            Err(_) => "unreadable",
        };
        if self.stats.file_problem.lock().is_none() {
            tracing::warn!(
                file = %path.display(), found,
                "the reservations file was changed under the gateway; writing it again from the allocator's state"
            );
        }
        match self.write(text) {
            Ok(()) => {
                self.stats.file_repairs.fetch_add(1, Relaxed);
            }
            Err(e) => {
                *self.stats.file_problem.lock() = Some(format!(
                    "reservations file {} {found} and not written again: {e}",
                    path.display()
                ));
            }
        }
    }

    /// Starts watching the reservations file; a failure is reported (the
    /// periodic check still runs) and tried again later.
    fn watch(&self, changed: &Arc<Notify>) -> Option<notify::RecommendedWatcher> {
        let path = &self.config.reservations_file;
        match watch_file(path, changed.clone()) {
            Ok(watcher) => {
                if self.stats.watch_error.lock().take().is_some() {
                    tracing::info!(file = %path.display(), "reservations file watched again");
                }
                Some(watcher)
            }
            Err(e) => {
                let message = format!(
                    "reservations file {} not watched: {e}; checked every {} s",
                    path.display(),
                    CHECK_EVERY.as_secs()
                );
                let mut last = self.stats.watch_error.lock();
                if last.is_none() {
                    tracing::warn!(error = %message, "reservations file not watched");
                }
                *last = Some(message);
                None
            }
        }
    }

    fn reload(&self) {
        let Some(pid_file) = &self.config.pid_file else {
            return;
        };
        match gatemesh_dnsmasq::reload(pid_file) {
            Ok(pid) => {
                self.stats.reloads.fetch_add(1, Relaxed);
                *self.stats.reload_error.lock() = None;
                tracing::debug!(pid, "dnsmasq told to reread the reservations");
            }
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, kind = e.kind(), "dnsmasq reload after a reservation change failed");
                *self.stats.reload_error.lock() = Some(e.to_string());
            }
        }
    }

    pub(crate) async fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let owner = Arc::new(self);
        let changed = Arc::new(Notify::new());
        let mut watcher = owner.watch(&changed);
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
                () = changed.notified() => {
                    owner.clone().check_file_blocking().await;
                    continue;
                }
                _ = check.tick() => {
                    if watcher.is_none() {
                        watcher = owner.watch(&changed);
                    }
                    owner.clone().check_file_blocking().await;
                    continue;
                }
            };
            if watcher.is_none() {
                // A directory made late can be watched now.
                watcher = owner.watch(&changed);
            }
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let leased = match batch.iter().any(|j| matches!(j.op, Op::Allocate(_))) {
                true => owner.leased().await,
                false => Ok(Leased::new()),
            };
            let this = owner.clone();
            // The table and the write are blocking work; the batch runs on
            // the blocking pool, one batch at a time.
            let (batch, results) = match tokio::task::spawn_blocking(move || {
                let results = this.apply(&batch, leased.as_ref());
                (batch, results)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    // The senders went with the panicked task: their
                    // callers hear `UNAVAILABLE`, and the table is as
                    // the last durable write left it.
                    tracing::error!(error = %e, "IP allocator batch panicked");
                    continue;
                }
            };
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
        }
    }

    /// [`Owner::check_file`] on the blocking pool, as batches are.
    async fn check_file_blocking(self: Arc<Self>) {
        if let Err(e) = tokio::task::spawn_blocking(move || self.check_file()).await {
            tracing::error!(error = %e, "check of the reservations file panicked");
        }
    }

    /// Active IPv4 leases' addresses and MACs, from one settled read of
    /// the lease file; none when no lease file is configured. A file that
    /// cannot be read is an error: no lease is known, not "no leases".
    async fn leased(&self) -> Result<Leased, String> {
        let Some(path) = &self.config.leases_file else {
            return Ok(Leased::new());
        };
        let read = read_settled(path, self.config.lease_settle).await;
        let snapshot = match read {
            Ok(snapshot) => {
                if self.stats.lease_error.lock().take().is_some() {
                    tracing::info!(file = %path.display(), "lease file readable again");
                }
                snapshot
            }
            Err(e) => {
                let message = format!("cannot read the lease file {}: {e}", path.display());
                let mut last = self.stats.lease_error.lock();
                if last.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "allocations refused until the lease file can be read");
                }
                *last = Some(message.clone());
                return Err(message);
            }
        };
        if !snapshot.settled {
            tracing::debug!(file = %path.display(), "lease file still changing; using its complete lines as last read");
        }
        let now = unix_now();
        Ok(leases::parse_bytes(&snapshot.bytes, now)
            .leases
            .into_iter()
            .filter(|l| l.is_active(now))
            .filter_map(|l| match (l.ip, l.mac()?.parse::<Mac>()) {
                (IpAddr::V4(ip), Ok(mac)) => Some((ip, mac)),
                _ => None,
            })
            .collect())
    }

    /// Applies a batch to a copy of the table and writes it; `leased` is
    /// the lease file as read for it (an error refuses its allocations).
    fn apply(&self, batch: &[Job], leased: Result<&Leased, &String>) -> Vec<Result<Done, Refused>> {
        let current = self.table.read().clone();
        let mut next = (*current).clone();
        let now = unix_now();
        let mut results: Vec<Result<Done, Refused>> = batch
            .iter()
            .map(|job| match (&job.op, leased) {
                (Op::Allocate(req), Ok(leased)) => {
                    let quota = self.config.quota.limit(&job.environment);
                    next.allocate(&self.pool, req, &job.environment, leased, now, quota)
                }
                (Op::Allocate(_), Err(e)) => Err(Refused::new(
                    IpRefusal::Unavailable,
                    format!("{e}; no address is handed out without checking the leases"),
                )),
                (Op::Release(req), _) => {
                    next.release(req, &job.environment, self.config.release_any_environment)
                }
            })
            .collect();
        if !results.iter().any(|r| matches!(r, Ok(d) if d.changed)) {
            return results;
        }
        let text = table::render(&next, &self.config.hostname_prefix);
        match self.write(text) {
            Ok(()) => *self.table.write() = Arc::new(next),
            Err(e) => {
                // Answers computed on the unwritten table are void, even
                // the unchanged ones: they may lean on a change before them.
                for r in &mut results {
                    if r.is_ok() {
                        *r = Err(Refused::new(
                            IpRefusal::Persist,
                            format!("the reservation could not be made durable: {e}"),
                        ));
                    }
                }
            }
        }
        results
    }
}
