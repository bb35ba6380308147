//! [`HostsWriter`]: the hosts file dnsmasq reads and the reload after each
//! write. A change is written once nothing more is about to change, or
//! the flush delay after the first change has passed, and only when the
//! content differs from what is there; a failed write is retried with a
//! short backoff; the reconcile compares the file on disk with what was
//! written and repairs it.

use std::path::PathBuf;
use std::time::Duration;

use gatemesh_dnsmasq::DnsmasqError;
use gatemesh_dnsmasq::names::short;
use gatemesh_runtime::Backoff;
use tokio::time::Instant;

use super::MAX_REASON;
use super::table::short_backoff;
use crate::{DhcpConfig, DhcpStatus};

pub(crate) struct HostsWriter {
    path: PathBuf,
    pid_file: Option<PathBuf>,
    flush_delay: Duration,
    /// The file's content as last written or found on disk.
    written: Option<String>,
    /// Since the first change not written yet.
    dirty_since: Option<Instant>,
    /// Between attempts after a failed write; started afresh by a write
    /// that succeeds.
    write_backoff: Backoff,
    fresh_backoff: Backoff,
    write_retry_at: Option<Instant>,
}

impl HostsWriter {
    pub(crate) fn new(config: &DhcpConfig) -> Self {
        Self {
            path: config.hosts_file.clone(),
            pid_file: config.pid_file.clone(),
            flush_delay: config.flush_delay,
            written: None,
            dirty_since: None,
            write_backoff: short_backoff(config),
            fresh_backoff: short_backoff(config),
            write_retry_at: None,
        }
    }

    /// Takes what is on disk as written, so a restart rewrites nothing
    /// that is already there.
    pub(crate) async fn adopt_file(&mut self) {
        self.written = self.read_back().await;
    }

    /// The names changed: the file is to be written.
    pub(crate) fn mark_dirty(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// When a write is to happen: the flush deadline, or a failed write's
    /// retry.
    pub(crate) fn next_write(&self) -> Option<Instant> {
        let flush = self.dirty_since.map(|t| t + self.flush_delay);
        flush.into_iter().chain(self.write_retry_at).min()
    }

    /// Turns a failed write's retry, once due, into a change to write.
    pub(crate) fn retry_if_due(&mut self, now: Instant) {
        if self.write_retry_at.is_some_and(|t| t <= now) {
            self.write_retry_at = None;
            self.mark_dirty(now);
        }
    }

    /// The safety net: what is on disk is compared with what was written
    /// (deleted or edited by hand: rewritten), and a failed reload is
    /// tried again.
    pub(crate) async fn reconcile(&mut self, status: &mut DhcpStatus) {
        let on_disk = self.read_back().await;
        if self.written.is_some() && on_disk != self.written {
            status.hosts_repairs += 1;
            tracing::warn!(
                file = %self.path.display(),
                found = if on_disk.is_some() { "changed" } else { "missing" },
                "hosts file changed behind the manager; rewriting it"
            );
        }
        self.written = on_disk;
        self.mark_dirty(Instant::now());
        if status.reload_error.is_some() && status.write_error.is_none() {
            self.reload(status);
        }
    }

    async fn read_back(&self) -> Option<String> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || std::fs::read_to_string(path))
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Writes `content` (rendered only now) once nothing more is about to
    /// change (`busy`: resolutions in flight or due), or once the flush
    /// delay has passed; and only if it differs from what is there.
    pub(crate) async fn flush_if_ready(
        &mut self,
        busy: bool,
        now: Instant,
        content: impl FnOnce() -> String,
        status: &mut DhcpStatus,
    ) {
        let Some(since) = self.dirty_since else {
            return;
        };
        if busy && now < since + self.flush_delay {
            return;
        }
        self.dirty_since = None;
        let content = content();
        if self.written.as_deref() == Some(content.as_str()) {
            return;
        }
        let lines = content.lines().count().saturating_sub(1);
        let path = self.path.clone();
        let text = content.clone();
        let written =
            tokio::task::spawn_blocking(move || gatemesh_dnsmasq::write_atomically(&path, &text))
                .await;
        match written {
            Ok(Ok(())) => {
                self.written = Some(content);
                status.hosts_writes += 1;
                status.hosts_entries = lines;
                self.write_retry_at = None;
                self.write_backoff = self.fresh_backoff.clone();
                if status.write_error.take().is_some() {
                    tracing::info!(file = %self.path.display(), "hosts file written again");
                }
                tracing::info!(file = %self.path.display(), entries = lines, "hosts file written");
            }
            Ok(Err(e)) => {
                status.write_failures += 1;
                let delay = self.write_backoff.next_delay();
                self.write_retry_at = Some(Instant::now() + delay);
                let message = short(&e.to_string(), MAX_REASON);
                if status.write_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "hosts file not written; retrying");
                }
                status.last_error = Some(message.clone());
                status.write_error = Some(message);
                return;
            }
            Err(_) => return,
        }
        self.reload(status);
    }

    /// SIGHUP to dnsmasq, if a pid file is configured and names dnsmasq.
    fn reload(&mut self, status: &mut DhcpStatus) {
        let Some(pid_file) = &self.pid_file else {
            return;
        };
        match gatemesh_dnsmasq::reload(pid_file) {
            Ok(pid) => {
                status.reloads += 1;
                if status.reload_error.take().is_some() {
                    tracing::info!(pid, "dnsmasq reloaded again");
                }
                tracing::info!(pid, "dnsmasq reloaded");
            }
            Err(e) => {
                status.reload_failures += 1;
                let message = short(&e.to_string(), MAX_REASON);
                if status.reload_error.as_ref() != Some(&message) {
                    match &e {
                        DnsmasqError::NotDnsmasq { .. } => tracing::warn!(
                            error = %message,
                            "pid file does not name dnsmasq; no signal sent, the hosts file is written"
                        ),
                        _ => {
                            tracing::warn!(error = %message, kind = e.kind(), "dnsmasq not reloaded; the hosts file is written")
                        }
                    }
                }
                status.last_error = Some(message.clone());
                status.reload_error = Some(message);
            }
        }
    }
}
