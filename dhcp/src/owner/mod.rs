//! [`Owner`]: the manager's task while it runs, the one owner of the
//! leases, their answers and the hosts file, made of parts that each own
//! one concern:
//!
//! - `lease`: one lease's state, its error and its backoffs.
//! - `table`: the leases, where each stands, the attempts due.
//! - `reader`: the lease file: its watch, the timing of reads, a settled
//!   read parsed and limited.
//! - `resolving`: the resolutions in flight, through the [`Resolver`].
//! - `writer`: the hosts file and dnsmasq's reload.
//! - `page`: `GetLeases` pages of the table.
//!
//! The task wakes on a file event, a finished resolution, an instance
//! registering, a query, or a timer: the periodic reconcile, the next
//! retry, the next lease expiry, the flush deadline, a lease missing long
//! enough to be gone, or a failed write's retry. Nothing else touches the
//! state, so there is no lock to hold across an `.await`.

mod lease;
mod page;
mod reader;
mod resolving;
mod table;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gatemesh_dnsmasq::leases::Lease;
use gatemesh_dnsmasq::names::short;
use gatemesh_dnsmasq::unix_now;
use gatemesh_proto::pb;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::handle::{PageError, Query};
use crate::hosts;
use crate::{DhcpConfig, DhcpStatus, Resolver};
use reader::LeaseReader;
use resolving::{Resolution, Resolutions};
use table::LeaseTable;
use writer::HostsWriter;

/// What a lease's error or the status's `last_error` keeps of a peer's or
/// the system's words.
pub(crate) const MAX_REASON: usize = 160;

/// How often the state's size is measured for `/metrics`.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

/// The text of a caught panic, cut short.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    short(text, MAX_REASON)
}

/// The lease's VPS id by its DHCP hostname, when hostnames are trusted and
/// it is inside the namespace.
fn hostname_id(config: &DhcpConfig, lease: &Lease) -> Option<String> {
    if !config.trust_hostnames {
        return None;
    }
    lease
        .hostname
        .as_ref()
        .filter(|h| config.namespace.check(h).is_ok())
        .cloned()
}

pub(crate) struct Owner<'s, R> {
    config: DhcpConfig,
    /// The status as this run sees it, and where it is published.
    status: DhcpStatus,
    status_tx: &'s watch::Sender<DhcpStatus>,
    measured_at: Option<Instant>,
    table: LeaseTable,
    reader: LeaseReader,
    resolving: Resolutions<'s, R>,
    hosts: HostsWriter,
    resolver: &'s R,
}

impl<'s, R: Resolver> Owner<'s, R> {
    /// A run starting from the files on disk; `base` is the status the
    /// last run left (its counters carry on).
    pub(crate) fn new(
        config: DhcpConfig,
        resolver: &'s R,
        status_tx: &'s watch::Sender<DhcpStatus>,
        base: DhcpStatus,
    ) -> Self {
        Self {
            status: DhcpStatus {
                running: true,
                restarting: false,
                in_flight: 0,
                holder_failing: 0,
                write_error: None,
                watch_error: None,
                ..base
            },
            status_tx,
            measured_at: None,
            table: LeaseTable::new(),
            reader: LeaseReader::new(&config),
            resolving: Resolutions::new(resolver, &config),
            hosts: HostsWriter::new(&config),
            resolver,
            config,
        }
    }

    pub(crate) async fn run(
        mut self,
        queries: &mut mpsc::Receiver<Query>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) {
        let changed = Arc::new(Notify::new());
        let _watcher = self.reader.watch(changed.clone(), &mut self.status);
        let mut registrations = self.resolver.changes();
        self.hosts.adopt_file().await;
        tracing::info!(
            leases = %self.config.leases_file.display(),
            hosts = %self.config.hosts_file.display(),
            trust_hostnames = self.config.trust_hostnames,
            "DHCP manager started"
        );
        self.reread().await;
        self.hosts.mark_dirty(Instant::now());
        let mut reconcile_at = Instant::now() + self.config.reconcile;
        loop {
            let now = Instant::now();
            if reconcile_at <= now {
                reconcile_at = now + self.config.reconcile;
                self.reconcile().await;
            }
            if self.reader.take_due(Instant::now()) {
                self.reread().await;
            }
            self.hosts.retry_if_due(Instant::now());
            if self.table.expire(unix_now(), self.config.max_leases) {
                self.hosts.mark_dirty(Instant::now());
            }
            let now = Instant::now();
            self.start_due(now);
            self.flush_if_ready(now).await;
            self.publish();
            let wake = [
                Some(reconcile_at),
                self.reader.next_read(),
                self.hosts.next_write(),
                self.next_due(),
                self.table.expiry_instant(),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(reconcile_at);
            tokio::select! {
                _ = shutdown.as_mut() => break,
                _ = changed.notified() => self.reader.file_event(Instant::now()),
                Some(resolution) = self.resolving.next(), if !self.resolving.is_empty() => {
                    self.finished(resolution);
                }
                Ok(()) = registrations.changed() => self.table.retry_all_now(Instant::now()),
                Some(query) = queries.recv() => self.answer(query),
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.resolving.abort_all();
    }

    /// The safety net: the lease file read again, the hosts file compared
    /// with what is on disk, a failed reload tried again, old kept answers
    /// dropped.
    async fn reconcile(&mut self) {
        self.table.forget_answers_older_than(self.config.cache_ttl);
        self.reader.read_by(Instant::now());
        self.hosts.reconcile(&mut self.status).await;
    }

    /// Reads the lease file and takes in what it lists.
    async fn reread(&mut self) {
        let Some(leases) = self.reader.read(&mut self.status).await else {
            return;
        };
        let now = Instant::now();
        let config = &self.config;
        let synced = self
            .table
            .sync(leases, |lease| hostname_id(config, lease), config, now);
        if synced.renamed {
            self.hosts.mark_dirty(now);
        }
        if let Some(at) = synced.recheck {
            self.reader.read_by(at);
        }
        self.measure();
    }

    /// When the next attempt is due, if one may start.
    fn next_due(&self) -> Option<Instant> {
        self.resolving
            .has_room()
            .then(|| self.table.next_due())
            .flatten()
    }

    /// Starts the attempts due, up to the concurrency.
    fn start_due(&mut self, now: Instant) {
        while self.resolving.has_room() {
            let Some((key, generation, request)) = self.table.start_next(now) else {
                break;
            };
            self.status.calls += 1;
            self.resolving.start(key, generation, request);
        }
    }

    fn finished(&mut self, (lease, outcome): Resolution) {
        let named = self
            .table
            .finished(lease, outcome, &self.config.namespace, &mut self.status);
        if named {
            self.hosts.mark_dirty(Instant::now());
        }
    }

    async fn flush_if_ready(&mut self, now: Instant) {
        let busy = !self.resolving.is_empty() || self.next_due().is_some_and(|t| t <= now);
        let table = &self.table;
        self.hosts
            .flush_if_ready(busy, now, || hosts::render(table.names()), &mut self.status)
            .await;
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
        let (leases, next_page_token) = page::page(self.table.entries(), request)?;
        self.measure();
        let seen = self.table.len();
        Ok(pb::GetLeasesResponse {
            leases,
            leases_seen: seen as u64,
            resolved: self.table.resolved() as u64,
            pending: (seen - self.table.resolved()) as u64,
            reloads: self.status.reloads,
            last_error: self.status.last_error.clone().unwrap_or_default(),
            next_page_token,
            state_bytes: self.status.state_bytes as u64,
        })
    }

    /// Re-estimates the lease table's memory.
    fn measure(&mut self) {
        self.measured_at = Some(Instant::now());
        self.status.state_bytes = self.table.bytes();
    }

    fn publish(&mut self) {
        if self
            .measured_at
            .is_none_or(|t| t.elapsed() >= MEASURE_EVERY)
        {
            self.measure();
        }
        let seen = self.table.len();
        self.status.leases_seen = seen;
        self.status.resolved = self.table.resolved();
        self.status.pending = seen - self.table.resolved();
        self.status.holder_failing = self.table.holder_failing();
        if self.table.holder_failing() == 0 {
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
