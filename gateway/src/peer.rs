//! One connected instance, as the gateway sees it: who it is (proven at
//! its hello), and its stream ([`Conn`]: the outbound queue, the calls
//! awaiting its answers, the dispatcher of its calls to the gateway, its
//! lifecycle), plus what the admin API reports of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use gatemesh_engine::{AtGateway, Conn, Disconnect, Phase};
use gatemesh_handlers::{Caller, Proof};

/// Who an instance is (established at its hello from its credential),
/// what else its hello said, and where it came from.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Its id, environment and how they were proven: what routing, the
    /// gateway's handlers, metrics and logs read, never the hello itself.
    pub identity: Caller,
    pub version: String,
    /// Hashed with foldhash: every call looks its method up here.
    pub methods: foldhash::HashSet<String>,
    pub remote_addr: Option<SocketAddr>,
    pub connected_since: SystemTime,
}

impl PeerInfo {
    pub fn id(&self) -> &Arc<str> {
        self.identity.id()
    }

    pub fn environment(&self) -> &Arc<str> {
        self.identity.environment()
    }

    pub fn proof(&self) -> Proof {
        self.identity.proof()
    }
}

pub struct Peer {
    pub info: PeerInfo,
    /// The instance's stream.
    pub conn: Arc<Conn<AtGateway>>,
    pub calls_served: AtomicU64,
    pub errors: AtomicU64,
}

impl Peer {
    pub(crate) fn new(info: PeerInfo, conn: Arc<Conn<AtGateway>>) -> Self {
        Self {
            info,
            conn,
            calls_served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        self.info.id()
    }

    /// Unique per stream, so cleanup of an old stream never removes a newer
    /// stream of the same instance id.
    pub fn conn_id(&self) -> u64 {
        self.conn.id()
    }

    /// Whether new calls for `method` may go to this instance.
    pub fn routable(&self, method: &str) -> bool {
        self.info.methods.contains(method) && self.conn.is_open()
    }

    /// Neither draining nor closed: new calls may come.
    pub fn open(&self) -> bool {
        self.conn.is_open()
    }

    /// The instance said goodbye, or the gateway drains it.
    pub fn is_draining(&self) -> bool {
        self.conn.lifecycle().phase() == Phase::Draining
    }

    /// Frames waiting in the outbound queue.
    pub fn queue_depth(&self) -> usize {
        self.conn.queue_depth()
    }

    /// Time since the last frame from the instance.
    pub fn silent_for(&self) -> Duration {
        self.conn.silent_for()
    }

    /// Wall-clock time of the last frame from the instance.
    pub fn last_seen(&self) -> SystemTime {
        SystemTime::now() - self.silent_for()
    }

    /// Ends the stream for `reason`; only the first close counts.
    pub fn close(&self, reason: Disconnect) -> bool {
        self.conn.close(reason)
    }

    pub fn close_reason(&self) -> Option<Disconnect> {
        self.conn.close_reason()
    }

    pub fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Calls sent to this instance and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.conn.in_flight()
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", self.info.id())
            .field("conn_id", &self.conn_id())
            .field("environment", self.info.environment())
            .field("proof", &self.info.proof())
            .finish_non_exhaustive()
    }
}
