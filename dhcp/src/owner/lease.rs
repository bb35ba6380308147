//! One lease as the manager tracks it: its key, its state, why it has no
//! name, and the backoffs between attempts at it.

use std::fmt;
use std::net::IpAddr;

use gatemesh_dnsmasq::NameRefusal;
use gatemesh_dnsmasq::leases::{Hardware, Lease};
use gatemesh_runtime::Backoff;
use tokio::time::Instant;
use tonic::Code;

/// A lease is known by its address and its hardware identity: the same
/// address handed to another machine is another lease. Ordered by address,
/// which is the order `GetLeases` pages in.
pub(crate) type Key = (IpAddr, Hardware);

pub(crate) enum State {
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
pub(crate) enum LeaseError {
    /// Every instance asked said "not mine".
    NotFound,
    /// The holder failed: an error status, a disconnect, a deadline, or
    /// no instance to ask.
    Holder { code: Code, reason: String },
    /// An answer that may not reach dnsmasq.
    Refused {
        refusal: NameRefusal,
        instance: String,
        environment: String,
    },
    /// The resolution task panicked.
    Panicked,
}

impl LeaseError {
    /// Whether the lease counts as failing at its holder (`/health`).
    fn is_holder(&self) -> bool {
        matches!(self, Self::Holder { .. } | Self::Panicked)
    }
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

pub(crate) fn code_label(code: Code) -> &'static str {
    gatemesh_handlers::dispatch::code_name(code)
}

pub(crate) struct Entry {
    pub(crate) lease: Lease,
    pub(crate) state: State,
    /// Between attempts at a lease nobody has, or whose answer was refused.
    pub(crate) backoff: Backoff,
    /// Between attempts after the holder failed: short, since the answer
    /// exists and the failure is probably passing.
    pub(crate) holder_backoff: Backoff,
    pub(crate) error: Option<LeaseError>,
    /// Tells the result of an earlier incarnation of this lease (it
    /// vanished and came back while resolving) from the current one.
    pub(crate) generation: u64,
    /// Since when the lease file has not listed this lease.
    pub(crate) missing_since: Option<Instant>,
}

impl Entry {
    pub(crate) fn vps_id(&self) -> Option<&str> {
        match &self.state {
            State::Named(id) | State::Resolved(id) => Some(id),
            State::Resolving | State::Waiting { .. } => None,
        }
    }

    /// Sets the lease's error, keeping `failing`, the count of leases
    /// failing at their holder, right.
    pub(crate) fn set_error(&mut self, failing: &mut usize, error: Option<LeaseError>) {
        if self.error.as_ref().is_some_and(LeaseError::is_holder) {
            *failing -= 1;
        }
        if error.as_ref().is_some_and(LeaseError::is_holder) {
            *failing += 1;
        }
        self.error = error;
    }

    /// Estimated bytes, heap included.
    pub(crate) fn bytes(&self) -> usize {
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
