//! [`DhcpStatus`]: what operators see of the manager, published by its
//! task after every turn; and [`Problem`], why it makes `/health` degraded.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use gatemesh_dnsmasq::NameRefusal;
use tokio::time::Instant;

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
    pub refused: BTreeMap<NameRefusal, u64>,
    pub lease_reads: u64,
    /// Reads where the lease file did not settle (it kept changing, or
    /// its last line had no newline) within the attempts allowed.
    pub unsettled_reads: u64,
    /// Lines skipped as malformed in the last read.
    pub malformed_lines: usize,
    /// Lines skipped as malformed, in all.
    pub malformed_total: u64,
    /// Leases over [`DhcpConfig::max_leases`](crate::DhcpConfig::max_leases) left out of the last read.
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
    /// [`DhcpConfig::crash_report`](crate::DhcpConfig::crash_report).
    pub last_crash: Option<(String, Instant)>,
    /// The task crashed and waits to start again.
    pub restarting: bool,
    /// How long a crash stays in `/health`.
    pub crash_report: Duration,
    /// [`DhcpConfig::max_leases`](crate::DhcpConfig::max_leases), for the reason text.
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

/// Why the manager makes the gateway degraded, if it does (see
/// [`DhcpStatus::problems`]): the reasons, joined.
pub fn problem(status: &DhcpStatus) -> Option<String> {
    let problems = status.problems();
    (!problems.is_empty()).then(|| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
