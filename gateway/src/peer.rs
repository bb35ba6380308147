//! One connected instance, as the gateway sees it.
//!
//! The peer owns the sending half of the instance's bounded outbound queue
//! (drained by tonic's writer for that stream), the table of calls awaiting
//! the instance's answers, and the dispatcher for calls the instance makes
//! to the gateway. Sends never wait: a full queue fails the call at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use gatemesh_handlers::{Caller, Dispatcher, Pending};
use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_message::Kind;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Disconnect;

/// What an instance said about itself in hello, plus where it came from.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub id: Arc<str>,
    pub environment: Arc<str>,
    pub version: String,
    /// Hashed with foldhash: every call looks its method up here.
    pub methods: foldhash::HashSet<String>,
    pub remote_addr: Option<SocketAddr>,
    pub connected_since: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full: the instance is not reading fast enough.
    Full,
    /// The stream has ended.
    Closed,
}

pub struct Peer {
    /// Unique per stream, so cleanup of an old stream never removes a newer
    /// stream of the same instance id.
    pub conn_id: u64,
    pub info: PeerInfo,
    pub caller: Caller,
    tx: mpsc::Sender<pb::GatewayMessage>,
    pub pending: Pending,
    pub dispatcher: Arc<Dispatcher<pb::GatewayMessage>>,
    closed: CancellationToken,
    /// `closed`, readable with one atomic load: every send checks it, and
    /// the token's own check takes a lock.
    is_closed: AtomicBool,
    /// Why the stream ended and the `GoAway` still to send, set together
    /// by the first [`Peer::close`] and never again.
    closing: Mutex<Closing>,
    draining: AtomicBool,
    epoch: Instant,
    last_seen_ms: AtomicU64,
    /// Frames received, and their count at the last heartbeat tick.
    frames: AtomicU64,
    frames_at_tick: AtomicU64,
    /// Since when (ms after `epoch`, plus one) the queue has been full; 0 when not.
    full_since_ms: AtomicU64,
    stuck_after: Duration,
    pub calls_served: AtomicU64,
    pub errors: AtomicU64,
    /// Woken when a call is abandoned and none was waiting to be told: the
    /// read loop then tells the instance, after a grace period, of those
    /// whose answer has not come ([`Peer::abandon`]).
    pub(crate) abandoned: tokio::sync::Notify,
}

impl Peer {
    pub(crate) fn new(
        conn_id: u64,
        info: PeerInfo,
        tx: mpsc::Sender<pb::GatewayMessage>,
        dispatcher: Arc<Dispatcher<pb::GatewayMessage>>,
        stuck_after: Duration,
    ) -> Self {
        let caller = Caller::new(info.id.clone(), info.environment.clone());
        Self {
            conn_id,
            info,
            caller,
            tx,
            pending: Pending::new(),
            dispatcher,
            closed: CancellationToken::new(),
            is_closed: AtomicBool::new(false),
            closing: Mutex::new(Closing::default()),
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            last_seen_ms: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            frames_at_tick: AtomicU64::new(0),
            full_since_ms: AtomicU64::new(0),
            stuck_after,
            calls_served: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            abandoned: tokio::sync::Notify::new(),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.info.id
    }

    /// Whether new calls for `method` may go to this instance.
    pub fn routable(&self, method: &str) -> bool {
        self.info.methods.contains(method) && self.open()
    }

    /// Neither draining nor closed: new calls may come.
    pub fn open(&self) -> bool {
        !self.is_draining() && !self.is_closed()
    }

    /// Queues a frame without waiting. A queue that stays full longer than
    /// the stuck limit closes the stream.
    pub fn send(&self, kind: Kind) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        match self.tx.try_send(pb::GatewayMessage { kind: Some(kind) }) {
            Ok(()) => {
                if self.full_since_ms.load(Ordering::Relaxed) != 0 {
                    self.full_since_ms.store(0, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.note_full();
                Err(SendError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    fn note_full(&self) {
        let now = self.now_ms() + 1;
        let since =
            match self
                .full_since_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(since) => since,
            };
        if now.saturating_sub(since) >= self.stuck_after.as_millis() as u64 {
            self.close(Disconnect::Stuck);
        }
    }

    /// Whether the queue has been full longer than the stuck limit.
    pub fn is_stuck(&self) -> bool {
        let since = self.full_since_ms.load(Ordering::Relaxed);
        since != 0
            && self.tx.capacity() == 0
            && (self.now_ms() + 1).saturating_sub(since) >= self.stuck_after.as_millis() as u64
    }

    /// Frames waiting in the outbound queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A frame came in. Counted, not timed: a frame costs no clock read.
    pub(crate) fn touch(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// Called at each heartbeat tick: when frames came since the last one,
    /// the instance was last seen now. Silence is so known to within one
    /// heartbeat interval.
    pub(crate) fn note_frames(&self) {
        let frames = self.frames.load(Ordering::Relaxed);
        if self.frames_at_tick.swap(frames, Ordering::Relaxed) != frames {
            self.last_seen_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Time since the last frame from the instance.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)),
        )
    }

    /// Wall-clock time of the last frame from the instance.
    pub fn last_seen(&self) -> SystemTime {
        SystemTime::now() - self.silent_for()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ends the stream for `reason`. Only the first close counts: its
    /// reason is the one logged and counted, and its `GoAway` (if the
    /// reason has one) the last frame the instance sees. Returns whether
    /// this call closed the stream.
    pub fn close(&self, reason: Disconnect) -> bool {
        {
            let mut closing = self.closing.lock();
            if closing.reason.is_some() {
                return false;
            }
            tracing::debug!(instance = %self.info.id, conn = self.conn_id, reason = %reason, "closing stream");
            closing.goaway = reason.goaway();
            closing.reason = Some(reason);
        }
        self.is_closed.store(true, Ordering::Release);
        self.closed.cancel();
        true
    }

    /// The reason given to the first [`Peer::close`].
    pub fn close_reason(&self) -> Option<Disconnect> {
        self.closing.lock().reason.clone()
    }

    pub fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    pub(crate) fn take_goodbye(&self) -> Option<pb::GoAway> {
        self.closing.lock().goaway.take()
    }

    /// The caller of `id` gave up. The instance is told to cancel only if
    /// its answer has not come within a grace period: most answers are
    /// already on the wire when a `first_valid` race is won, and a
    /// `Cancel` for them costs both ends a frame for nothing.
    pub(crate) fn abandon(&self, id: u64) {
        let (_, first) = self.pending.abandon_later(id);
        if first {
            self.abandoned.notify_one();
        }
    }

    /// Tells the instance to cancel the abandoned calls that are due; returns
    /// whether others wait for the next grace period.
    pub(crate) fn send_due_cancels(&self) -> bool {
        let (due, more) = self.pending.rotate_abandoned();
        for id in due {
            let cancel = pb::Cancel {
                id,
                reason: "call ended".into(),
            };
            // Best effort: a full queue means the instance is busy anyway,
            // and its handler stops at the deadline it was given.
            let _ = self.send(Kind::Cancel(cancel));
        }
        more
    }

    /// Calls sent to this instance and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }
}

/// A peer on an outbound queue the test reads itself, with no stream and
/// no handlers, for unit tests of what the gateway sends it.
#[cfg(test)]
pub(crate) fn detached(id: &str, tx: mpsc::Sender<pb::GatewayMessage>) -> Arc<Peer> {
    use gatemesh_handlers::DispatchConfig;
    use gatemesh_handlers::dispatch::Outbox;
    let info = PeerInfo {
        id: id.into(),
        environment: "prod".into(),
        version: String::new(),
        methods: Default::default(),
        remote_addr: None,
        connected_since: SystemTime::now(),
    };
    let dispatcher = Arc::new(Dispatcher::new(
        Arc::new(gatemesh_handlers::GatewayRegistry::new().into_handlers()),
        DispatchConfig::default(),
        Arc::new(tokio::sync::Semaphore::new(1)),
        Outbox::new(tx.clone(), |response| pb::GatewayMessage {
            kind: Some(Kind::Response(response)),
        }),
    ));
    Arc::new(Peer::new(1, info, tx, dispatcher, Duration::from_secs(10)))
}

#[derive(Default)]
struct Closing {
    reason: Option<Disconnect>,
    goaway: Option<pb::GoAway>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.info.id)
            .field("conn_id", &self.conn_id)
            .field("environment", &self.info.environment)
            .finish_non_exhaustive()
    }
}
