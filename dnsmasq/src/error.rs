//! [`DnsmasqError`]: why a file could not be handed to dnsmasq, or dnsmasq
//! could not be told to read it; a log field and a metric label
//! ([`DnsmasqError::kind`]) at the edge.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read dnsmasq pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dnsmasq pid file {path} holds {content:?}, not a process id")]
    BadPid { path: PathBuf, content: String },
    /// The pid file is stale: the process it names is gone, or is not
    /// dnsmasq. SIGHUP's default action terminates a process, so it is
    /// never sent on a guess.
    #[error("dnsmasq pid file {path} names pid {pid}, which is {}; not signalled", describe(.comm))]
    NotDnsmasq {
        path: PathBuf,
        pid: i32,
        /// The process's name, `None` when no such process runs.
        comm: Option<String>,
    },
    #[error("cannot signal dnsmasq (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::Error },
}

fn describe(comm: &Option<String>) -> String {
    match comm {
        Some(comm) => format!("{comm:?}, not dnsmasq"),
        None => "not running".into(),
    }
}

impl DnsmasqError {
    /// The metric label of a failed write or reload.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Write { .. } => "write",
            Self::PidFile { .. } => "pid_file",
            Self::BadPid { .. } => "bad_pid",
            Self::NotDnsmasq { .. } => "not_dnsmasq",
            Self::Signal { .. } => "signal",
        }
    }
}
