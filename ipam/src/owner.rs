//! The allocator's one owner: a task that takes requests from a bounded
//! queue, applies each to the table in arrival order, and makes every
//! change durable before anyone hears of it.
//!
//! Requests that arrive together are applied together: one lease-file
//! read, one write of the reservations file, one SIGHUP to dnsmasq for the
//! whole batch (group commit). Nothing is answered before the write that
//! holds it is on disk, and a failed write answers every request of its
//! batch `UNAVAILABLE` and leaves the table as it was.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use gatemesh_dnsmasq::{DnsmasqError, leases, unix_now};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot};

use crate::IpamConfig;
use crate::pool::Pool;
use crate::table::{self, Allocate, Done, IpRefusal, Mac, Refused, Release, Table};

/// Requests applied in one batch at most.
const MAX_BATCH: usize = 512;
/// Requests waiting for the owner at most; beyond, callers wait for room.
pub(crate) const QUEUE: usize = 4096;
/// Reads of the lease file that may be spent waiting for it to settle.
const LEASE_READS: usize = 5;

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

/// Active IPv4 leases' addresses and MACs. dnsmasq rewrites its file in
/// place, so a read is used once two reads agree (or after a few tries,
/// the last one): a half-read file could hide a lease.
fn read_leases(path: &Path) -> Leased {
    let mut last: Option<Vec<u8>> = None;
    for _ in 0..LEASE_READS {
        let bytes = std::fs::read(path).unwrap_or_default();
        if last.as_ref() == Some(&bytes) {
            break;
        }
        last = Some(bytes);
    }
    let bytes = last.unwrap_or_default();
    let now = unix_now();
    leases::parse_bytes(&bytes, now)
        .leases
        .into_iter()
        .filter(|l| l.is_active(now))
        .filter_map(|l| match (l.ip, l.mac()?.parse::<Mac>()) {
            (IpAddr::V4(ip), Ok(mac)) => Some((ip, mac)),
            _ => None,
        })
        .collect()
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
                self.reload();
                Ok(())
            }
            Err(e) => {
                self.stats.write_failures.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, "cannot write the reservations file; the batch is refused");
                *self.stats.write_error.lock() = Some(e.to_string());
                Err(e)
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
        while let Some(first) = jobs.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let this = owner.clone();
            // The table, the lease read and the write are blocking work;
            // the batch runs on the blocking pool, one batch at a time.
            let (batch, results) = match tokio::task::spawn_blocking(move || {
                let results = this.apply(&batch);
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

    fn apply(&self, batch: &[Job]) -> Vec<Result<Done, Refused>> {
        let leased = match &self.config.leases_file {
            Some(path) if batch.iter().any(|j| matches!(j.op, Op::Allocate(_))) => {
                read_leases(path)
            }
            _ => Leased::new(),
        };
        let current = self.table.read().clone();
        let mut next = (*current).clone();
        let now = unix_now();
        let mut results: Vec<Result<Done, Refused>> = batch
            .iter()
            .map(|job| match &job.op {
                Op::Allocate(req) => next.allocate(&self.pool, req, &job.environment, &leased, now),
                Op::Release(req) => {
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
