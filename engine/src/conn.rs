//! [`Conn`]: one stream, as either end holds it. It owns the sending half
//! of the bounded outbound queue (drained by the writer, [`Outbound`]),
//! the table of this end's calls awaiting the peer's answers, the
//! dispatcher for the peer's requests, and the stream's [`Lifecycle`].
//! Sends never wait: a full queue fails the send at once.
//!
//! [`Outbound`]: crate::Outbound

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatemesh_handlers::{DispatchConfig, Dispatcher, Handlers, dispatch::Outbox};
use gatemesh_proto::pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Disconnect;
use crate::pending::{Outcome, Pending};
use crate::wire::{Direction, Frame, response};

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full: the peer is not reading fast enough.
    Full,
    /// The stream has ended.
    Closed,
}

/// Counters an end keeps of what its streams see; called on the stream's
/// path, so a few atomic adds at most. Every method defaults to nothing.
pub trait StreamObserver: Send + Sync + 'static {
    /// A frame that broke the protocol.
    fn violation(&self) {}
    /// An answer for a call that had already ended.
    fn late_response(&self) {}
    /// A cancel for a request not running on this stream.
    fn stray_cancel(&self) {}
    /// A frame refused because the outbound queue was full.
    fn queue_full(&self) {}
}

/// An observer that counts nothing.
#[derive(Debug, Default)]
pub struct Unobserved;

impl StreamObserver for Unobserved {}

/// What a stream's owner decides about it at creation.
pub struct ConnConfig {
    /// Unique per stream within a process, so cleanup of an old stream
    /// never removes a newer stream of the same peer.
    pub id: u64,
    /// Frames queued to the peer at most.
    pub queue_capacity: usize,
    /// A queue that stays full this long means the peer does not read.
    pub stuck_after: Duration,
    /// The handlers of the peer's requests, and how they run.
    pub handlers: Arc<Handlers>,
    pub dispatch: DispatchConfig,
    /// Handlers running at once, shared by every stream of the process.
    pub permits: Arc<Semaphore>,
    pub observer: Arc<dyn StreamObserver>,
}

/// Where a stream is in its life. One owner changes it:
/// [`Lifecycle::drain`] and [`Lifecycle::close`], each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Calls go both ways.
    Open,
    /// No new call goes to the peer (it said goodbye, or this end is
    /// shutting down); calls under way finish.
    Draining,
    /// The stream has ended, for this reason.
    Closed(Disconnect),
}

/// A stream's [`Phase`], readable with one atomic load (every send and
/// every routing decision asks), and awaitable.
#[derive(Debug)]
pub struct Lifecycle {
    phase: Mutex<Phase>,
    /// The phase's discriminant: 0 open, 1 draining, 2 closed.
    fast: AtomicU8,
    closed: CancellationToken,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: Mutex::new(Phase::Open),
            fast: AtomicU8::new(0),
            closed: CancellationToken::new(),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        self.phase.lock().clone()
    }

    pub fn is_open(&self) -> bool {
        self.fast.load(Ordering::Acquire) == 0
    }

    pub fn is_closed(&self) -> bool {
        self.fast.load(Ordering::Acquire) == 2
    }

    /// Open to draining; true if this call made the change.
    pub fn drain(&self) -> bool {
        let mut phase = self.phase.lock();
        if *phase != Phase::Open {
            return false;
        }
        *phase = Phase::Draining;
        self.fast.store(1, Ordering::Release);
        true
    }

    /// Ends the stream for `reason`. Only the first close counts: its
    /// reason is the one logged, counted and told to the peer. Returns
    /// whether this call closed it.
    pub fn close(&self, reason: Disconnect) -> bool {
        {
            let mut phase = self.phase.lock();
            if matches!(*phase, Phase::Closed(_)) {
                return false;
            }
            *phase = Phase::Closed(reason);
            self.fast.store(2, Ordering::Release);
        }
        self.closed.cancel();
        true
    }

    /// Why the stream ended, once it has.
    pub fn close_reason(&self) -> Option<Disconnect> {
        match &*self.phase.lock() {
            Phase::Closed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    pub(crate) fn closed_token(&self) -> &CancellationToken {
        &self.closed
    }

    /// Resolves once the stream has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }
}

/// One stream of end `D`.
pub struct Conn<D: Direction> {
    id: u64,
    tx: mpsc::Sender<D::Out>,
    pending: Pending,
    dispatcher: Arc<Dispatcher<D::Out>>,
    life: Lifecycle,
    observer: Arc<dyn StreamObserver>,
    epoch: Instant,
    /// Frames received, and their count at the last heartbeat tick: a
    /// frame costs no clock read; silence is known to within a tick.
    frames: AtomicU64,
    frames_at_tick: AtomicU64,
    /// When (ms after `epoch`) a frame last arrived, as of the last tick.
    last_seen_ms: AtomicU64,
    /// Since when (ms after `epoch`, plus one) the queue has been full
    /// without the writer taking a frame; 0 when it is not. Set by the
    /// first refused send, cleared by every send that fits and by the
    /// writer, so a run of fullness is timed from its own start.
    full_since_ms: AtomicU64,
    stuck_after: Duration,
    /// Woken when a call is abandoned and none was waiting to be told: the
    /// reader then tells the peer, after a grace period, of those whose
    /// answer has not come.
    abandoned: Notify,
}

impl<D: Direction> Conn<D> {
    /// A stream and the receiving half of its queue, for the writer.
    pub fn new(config: ConnConfig) -> (Arc<Self>, mpsc::Receiver<D::Out>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let dispatcher = Arc::new(Dispatcher::new(
            config.handlers,
            config.dispatch,
            config.permits,
            Outbox::new(tx.clone(), response::<D>),
        ));
        let conn = Arc::new(Self {
            id: config.id,
            tx,
            pending: Pending::new(),
            dispatcher,
            life: Lifecycle::default(),
            observer: config.observer,
            epoch: Instant::now(),
            frames: AtomicU64::new(0),
            frames_at_tick: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(0),
            full_since_ms: AtomicU64::new(0),
            stuck_after: config.stuck_after,
            abandoned: Notify::new(),
        });
        (conn, rx)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.life
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher<D::Out>> {
        &self.dispatcher
    }

    pub(crate) fn pending(&self) -> &Pending {
        &self.pending
    }

    pub(crate) fn observer(&self) -> &dyn StreamObserver {
        &*self.observer
    }

    /// Queues a frame without waiting. A queue that stays full longer
    /// than the stuck limit ends the stream.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.send_out(D::wrap(frame))
    }

    /// Queues one of this end's own frames (hello, welcome, goodbye).
    pub fn send_out(&self, frame: D::Out) -> Result<(), SendError> {
        if self.life.is_closed() {
            return Err(SendError::Closed);
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.not_full();
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.observer.queue_full();
                self.note_full();
                Err(SendError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SendError::Closed),
        }
    }

    /// The queue has room again (a send fitted, or the writer took a frame).
    pub(crate) fn not_full(&self) {
        if self.full_since_ms.load(Ordering::Relaxed) != 0 {
            self.full_since_ms.store(0, Ordering::Relaxed);
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

    /// A frame came in.
    pub(crate) fn touch(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    /// At each heartbeat tick: when frames came since the last one, the
    /// peer was last seen now.
    pub(crate) fn note_frames(&self) {
        let frames = self.frames.load(Ordering::Relaxed);
        if self.frames_at_tick.swap(frames, Ordering::Relaxed) != frames {
            self.last_seen_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// Time since the last frame from the peer, to within a heartbeat.
    pub fn silent_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)),
        )
    }

    /// Opens a call to the peer: its id, and where its answer will come.
    /// The request is queued at once; on failure nothing stays behind.
    /// Dropping the call before its answer must go through
    /// [`Self::abandon`].
    pub fn start_call(
        &self,
        method: &str,
        payload: Bytes,
        timeout_ms: u32,
        metadata: Vec<pb::MetadataEntry>,
    ) -> Result<(u64, oneshot::Receiver<Outcome>), SendError> {
        let (id, rx) = self.pending.start().map_err(|_| SendError::Closed)?;
        let request = pb::Request {
            id,
            method: method.to_string(),
            payload,
            timeout_ms,
            metadata,
        };
        match self.send(Frame::Request(request)) {
            Ok(()) => Ok((id, rx)),
            Err(e) => {
                self.pending.abandon(id);
                Err(e)
            }
        }
    }

    /// The caller of `id` gave up. The peer is told to cancel only if its
    /// answer has not come within a grace period: most answers are already
    /// on the wire when a `first_valid` race is won, and a `Cancel` for
    /// them costs both ends a frame for nothing.
    pub fn abandon(&self, id: u64) {
        let (_, first) = self.pending.abandon_later(id);
        if first {
            self.abandoned.notify_one();
        }
    }

    pub(crate) fn abandoned(&self) -> &Notify {
        &self.abandoned
    }

    /// Tells the peer to cancel the abandoned calls that are due; returns
    /// whether others wait for the next grace period.
    pub(crate) fn send_due_cancels(&self) -> bool {
        let (due, more) = self.pending.rotate_abandoned();
        for id in due {
            let cancel = pb::Cancel {
                id,
                reason: "call ended".into(),
            };
            // Best effort: a full queue means the peer is busy anyway,
            // and its handler stops at the deadline it was given.
            let _ = self.send(Frame::Cancel(cancel));
        }
        more
    }

    /// Calls sent to the peer and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Whether new calls may go to the peer.
    pub fn is_open(&self) -> bool {
        self.life.is_open()
    }

    pub fn is_closed(&self) -> bool {
        self.life.is_closed()
    }

    /// No new call goes to the peer from now on (the peer said goodbye,
    /// or this end drains). Returns whether this call made the change.
    pub fn stop_calls(&self) -> bool {
        self.life.drain()
    }

    /// This end's drain: no new call goes either way, and the work under
    /// way gets up to `grace` to finish (every call to the peer answered
    /// or ended, every request from it answered and queued). Returns
    /// whether it finished in time; the caller closes the stream after.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.life.drain();
        self.dispatcher.drain();
        tokio::time::timeout(grace, self.idle()).await.is_ok()
    }

    /// Resolves once no call is open either way.
    pub async fn idle(&self) {
        self.pending.idle().await;
        self.dispatcher.idle().await;
    }

    /// Ends the stream for `reason` (see [`Lifecycle::close`]).
    pub fn close(&self, reason: Disconnect) -> bool {
        let closed = self.life.close(reason);
        if closed {
            tracing::debug!(
                conn = self.id,
                reason = self.life.close_reason().map(tracing::field::display),
                "closing stream"
            );
        }
        closed
    }

    pub fn close_reason(&self) -> Option<Disconnect> {
        self.life.close_reason()
    }

    /// The cleanup every exit runs once: calls waiting on the peer fail,
    /// the peer's requests are cancelled.
    pub(crate) fn release(&self) {
        self.pending.close(pb::Status::new(
            tonic::Code::Unavailable,
            format!("{} disconnected", D::PEER),
        ));
        self.dispatcher.close();
    }
}

impl<D: Direction> std::fmt::Debug for Conn<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("phase", &self.life.phase())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use gatemesh_handlers::GatewayRegistry;
    use gatemesh_proto::pb::gateway_message::Kind;

    use super::*;
    use crate::{AtGateway, Completion};

    fn conn() -> (Arc<Conn<AtGateway>>, mpsc::Receiver<pb::GatewayMessage>) {
        Conn::new(ConnConfig {
            id: 1,
            queue_capacity: 16,
            stuck_after: Duration::from_secs(10),
            handlers: Arc::new(GatewayRegistry::new().into_handlers()),
            dispatch: DispatchConfig::default(),
            permits: Arc::new(Semaphore::new(1)),
            observer: Arc::new(Unobserved),
        })
    }

    /// The losers of a `first_valid` race have mostly answered already
    /// when the winner's answer is read: a `Cancel` for them would cost
    /// both ends a frame for nothing. Only a loser still silent after the
    /// grace period is told.
    #[tokio::test]
    async fn a_loser_whose_answer_is_on_its_way_is_not_told_to_cancel() {
        let (conn, mut rx) = conn();
        let (answering, _a) = conn
            .start_call("m", Bytes::new(), 5000, Vec::new())
            .unwrap();
        let (silent, _s) = conn
            .start_call("m", Bytes::new(), 5000, Vec::new())
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                rx.try_recv().unwrap().kind,
                Some(Kind::Request(_))
            ));
        }
        // Another instance won: both calls are abandoned unanswered.
        conn.abandon(answering);
        conn.abandon(silent);
        assert!(rx.try_recv().is_err(), "nobody is told at once");
        assert_eq!(conn.in_flight(), 0, "no caller waits for them");
        assert_eq!(
            conn.pending().complete(answering, Ok(Bytes::new())),
            Completion::Late
        );
        // The reader's first grace period: nothing is due yet.
        assert!(conn.send_due_cancels(), "the silent one waits one more");
        assert!(rx.try_recv().is_err());
        assert!(!conn.send_due_cancels(), "nothing waits after this one");
        match rx.try_recv().unwrap().kind {
            Some(Kind::Cancel(cancel)) => assert_eq!(cancel.id, silent),
            other => panic!("expected the silent call's cancel, got {other:?}"),
        }
        assert!(
            rx.try_recv().is_err(),
            "no cancel for the one that answered"
        );
    }

    /// The queue filled once and the writer drained it; much later it is
    /// full again, of answers (which never pass through `send`). "Stuck"
    /// is timed from the start of this run of fullness, not the old one.
    #[tokio::test(start_paused = true)]
    async fn stuck_is_timed_from_the_current_run_of_fullness() {
        use futures_util::StreamExt as _;
        let mut registry = GatewayRegistry::new();
        registry
            .method::<gatemesh_proto::methods::GetGatewayInfo>(|_ctx, _req| async {
                Ok::<_, tonic::Status>(pb::GetGatewayInfoResponse::default())
            })
            .unwrap();
        let (conn, rx) = Conn::<AtGateway>::new(ConnConfig {
            id: 1,
            queue_capacity: 2,
            stuck_after: Duration::from_secs(10),
            handlers: Arc::new(registry.into_handlers()),
            dispatch: DispatchConfig::default(),
            permits: Arc::new(Semaphore::new(4)),
            observer: Arc::new(Unobserved),
        });
        let mut writer = crate::Outbound::new(conn.clone(), rx);
        let ping = || Frame::Ping(pb::Ping { nonce: 1 });
        conn.send(ping()).unwrap();
        conn.send(ping()).unwrap();
        assert_eq!(conn.send(ping()), Err(SendError::Full));
        // The writer catches up.
        writer.next().await.unwrap().unwrap();
        writer.next().await.unwrap().unwrap();
        tokio::time::advance(Duration::from_secs(60)).await;
        // Two answers fill the queue again.
        for id in 1..=2 {
            let request = pb::Request {
                id,
                method: "GetGatewayInfo".into(),
                timeout_ms: 1000,
                ..Default::default()
            };
            conn.dispatcher()
                .dispatch(
                    gatemesh_handlers::Caller::new(
                        "i",
                        "prod",
                        gatemesh_handlers::Proof::SharedSecret,
                    ),
                    request,
                )
                .unwrap();
        }
        assert_eq!(conn.queue_depth(), 2);
        assert!(!conn.is_stuck(), "full for a moment, not for a minute");
        assert!(!conn.is_closed());
    }

    #[tokio::test]
    async fn a_full_queue_is_counted_and_a_closed_stream_refuses_sends() {
        #[derive(Default)]
        struct Full(std::sync::atomic::AtomicU64);
        impl StreamObserver for Full {
            fn queue_full(&self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let observer = Arc::new(Full::default());
        let (conn, _rx) = Conn::<AtGateway>::new(ConnConfig {
            id: 1,
            queue_capacity: 1,
            stuck_after: Duration::from_secs(10),
            handlers: Arc::new(GatewayRegistry::new().into_handlers()),
            dispatch: DispatchConfig::default(),
            permits: Arc::new(Semaphore::new(1)),
            observer: observer.clone(),
        });
        let ping = || Frame::Ping(pb::Ping { nonce: 1 });
        conn.send(ping()).unwrap();
        assert_eq!(conn.send(ping()), Err(SendError::Full));
        assert_eq!(observer.0.load(Ordering::Relaxed), 1);
        assert!(conn.close(Disconnect::Replaced));
        assert_eq!(conn.send(ping()), Err(SendError::Closed));
        assert_eq!(
            conn.lifecycle().phase(),
            Phase::Closed(Disconnect::Replaced)
        );
    }
}
