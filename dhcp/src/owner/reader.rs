//! [`LeaseReader`]: the lease file, as the manager reads it. The file's
//! directory is watched (dnsmasq may replace the file, which a watch on
//! the file itself would lose); a burst of events gives one read, once the
//! file has been quiet a moment; each read is one settled snapshot
//! ([`gatemesh_dnsmasq::read_settled`]), parsed, its malformed lines
//! logged once, and cut to the lease limit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatemesh_dnsmasq::leases::{self, Lease, ParseWarning};
use gatemesh_dnsmasq::names::short;
use gatemesh_dnsmasq::{Settle, read_settled, unix_now, watch_file};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::MAX_REASON;
use crate::{DhcpConfig, DhcpStatus};

pub(crate) struct LeaseReader {
    path: PathBuf,
    settle: Settle,
    /// The longest a burst of events may put a read off.
    flush_delay: Duration,
    max_leases: usize,
    /// When the file is to be read next.
    reread_at: Option<Instant>,
    /// The first event of the burst the next read answers.
    first_event: Option<Instant>,
    /// The malformed lines of the last read, so each is logged once.
    last_warnings: Vec<ParseWarning>,
}

impl LeaseReader {
    pub(crate) fn new(config: &DhcpConfig) -> Self {
        Self {
            path: config.leases_file.clone(),
            settle: config.lease_settle(),
            flush_delay: config.flush_delay,
            max_leases: config.max_leases,
            reread_at: None,
            first_event: None,
            last_warnings: Vec::new(),
        }
    }

    /// Watches the file; `changed` is notified on every event about it
    /// other than a read. `None` (reported) when it cannot be watched: the
    /// periodic reconcile still reads it.
    pub(crate) fn watch(
        &self,
        changed: Arc<Notify>,
        status: &mut DhcpStatus,
    ) -> Option<notify::RecommendedWatcher> {
        match watch_file(&self.path, changed) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                let message = short(
                    &format!(
                        "cannot watch {}: {e}; relying on the periodic reconcile",
                        self.path.display()
                    ),
                    MAX_REASON,
                );
                tracing::warn!(error = %message, "lease file not watched");
                status.last_error = Some(message.clone());
                status.watch_error = Some(message);
                None
            }
        }
    }

    /// A file event: the read waits until the file has been quiet for
    /// the settle time, or the flush delay after the burst's first event.
    pub(crate) fn file_event(&mut self, now: Instant) {
        let first = *self.first_event.get_or_insert(now);
        self.read_by((now + self.settle.pause).min(first + self.flush_delay));
    }

    /// The file is to be read no later than `at`.
    pub(crate) fn read_by(&mut self, at: Instant) {
        self.reread_at = Some(self.reread_at.map_or(at, |t| t.min(at)));
    }

    /// When the next read is due.
    pub(crate) fn next_read(&self) -> Option<Instant> {
        self.reread_at
    }

    /// Whether a read is due by `now`; if so, it is taken off the schedule.
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        if self.reread_at.is_none_or(|t| t > now) {
            return false;
        }
        self.reread_at = None;
        self.first_event = None;
        true
    }

    /// One settled read: the active leases it lists, at most the limit.
    /// `None` when the file cannot be read (reported; the leases known are
    /// kept); a missing file is an empty one.
    pub(crate) async fn read(&mut self, status: &mut DhcpStatus) -> Option<Vec<Lease>> {
        let snapshot = match read_settled(&self.path, self.settle).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                let message = short(
                    &format!("cannot read lease file {}: {e}", self.path.display()),
                    MAX_REASON,
                );
                if status.read_error.as_ref() != Some(&message) {
                    tracing::warn!(error = %message, "lease file unreadable; keeping the leases known");
                }
                status.last_error = Some(message.clone());
                status.read_error = Some(message);
                return None;
            }
        };
        if !snapshot.settled {
            status.unsettled_reads += 1;
            tracing::warn!(
                file = %self.path.display(),
                "lease file still changing after {} reads; using the last one",
                self.settle.attempts + 1
            );
        }
        // dnsmasq ends every line with a newline: a last line without one
        // is being written (its address or MAC may be cut short), so it
        // waits for the next read.
        if snapshot.cut {
            tracing::warn!(
                file = %self.path.display(),
                "lease file ends mid-line; that line waits for the next read"
            );
        }
        if status.read_error.take().is_some() {
            tracing::info!(file = %self.path.display(), "lease file readable again");
        }
        let mut parsed = leases::parse_bytes(&snapshot.bytes, unix_now());
        drop(snapshot);
        status.lease_reads += 1;
        status.malformed_lines = parsed.malformed;
        status.malformed_total += parsed.malformed as u64;
        self.log_warnings(&mut parsed.warnings, parsed.malformed);
        let dropped = parsed.leases.len().saturating_sub(self.max_leases);
        if dropped > 0 && status.leases_dropped == 0 {
            tracing::warn!(
                dropped,
                max = self.max_leases,
                "more leases than GATEWAY_DHCP_MAX_LEASES; the rest are not served"
            );
        }
        status.leases_dropped = dropped;
        parsed.leases.truncate(self.max_leases);
        Some(parsed.leases)
    }

    /// Logs a read's malformed lines, unless the last read had the same:
    /// bad lines read again (every reconcile, every rewrite) are not news.
    fn log_warnings(&mut self, warnings: &mut Vec<ParseWarning>, malformed: usize) {
        if *warnings == self.last_warnings {
            return;
        }
        for warning in warnings.iter() {
            tracing::warn!(
                file = %self.path.display(),
                line = warning.line,
                reason = %warning.message,
                "malformed lease line skipped"
            );
        }
        if malformed > warnings.len() {
            tracing::warn!(
                more = malformed - warnings.len(),
                "more malformed lease lines skipped"
            );
        }
        self.last_warnings = std::mem::take(warnings);
    }
}
