//! Runs the requests that arrive on one stream on their handlers.
//!
//! A handler's first poll runs on the stream's reader: one that answers
//! without waiting costs no task and no timer. One that waits
//! continues in its own task, with its deadline and a cancellation token
//! that a `Cancel` frame, the deadline or the end of the stream fires; a
//! handler that ignores the token is dropped after a short grace period.
//! One that panics is answered `INTERNAL`, inline or not.
//!
//! Every frame costs bounded work. A request is admitted only while the
//! stream has fewer than its share of requests in flight (so one peer's
//! flood refuses only that peer) and a process-wide permit can be taken
//! for it: taken before the handler's first poll, held while the handler
//! runs (inline or in its task), never while its answer waits for queue
//! room. Refusals are answered inline without waiting; an answer that
//! finds the queue full waits at most until the request's deadline, then
//! is dropped and counted. A request stays in the running table until its
//! answer is queued or dropped, so [`Dispatcher::idle`] means "every
//! answer is out".

use foldhash::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use gatemesh_proto::pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::serve::HandlerResult;
use crate::{Caller, Context, Handlers, MAX_METHOD_NAME_LEN};

/// How long a handler's first poll may run on the stream's reader before
/// that handler's requests start in their own task instead.
pub const INLINE_BUDGET: Duration = Duration::from_micros(200);
/// First polls in a row over [`INLINE_BUDGET`] after which a handler
/// always starts in its own task.
pub const SLOW_STRIKES: u32 = 3;

#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Told about every request, for metrics; `None` costs nothing.
    pub observer: Option<Arc<dyn DispatchObserver>>,
    /// Deadline for a request that carries none.
    pub default_timeout: Duration,
    /// Longest deadline honoured, whatever the request asks.
    pub max_timeout: Duration,
    /// How long a cancelled handler may run on to clean up.
    pub cancel_grace: Duration,
    /// Requests of one stream in flight at once (running, or answered and
    /// waiting for queue room); beyond, `RESOURCE_EXHAUSTED`. This is the
    /// peer's own share: the process-wide permits bound the handlers of
    /// all streams together.
    pub max_in_flight_per_stream: usize,
    /// Largest answer payload the peer accepts (0: no limit). A larger one
    /// would end the whole stream at the peer; that call gets
    /// `RESOURCE_EXHAUSTED` instead.
    pub max_answer_bytes: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(300),
            cancel_grace: Duration::from_millis(250),
            max_in_flight_per_stream: 128,
            max_answer_bytes: 0,
            observer: None,
        }
    }
}

/// Hears how each request fares, so an end can keep metrics without this
/// crate knowing how they are exported. Called on the request's path: keep
/// it to a few atomic operations.
pub trait DispatchObserver: Send + Sync + 'static {
    /// A request was admitted and its handler is starting.
    fn started(&self, _method: &str) {}
    /// An admitted request ended: `Ok` when the handler answered with a
    /// payload, else the code it was answered with (`Cancelled` when the
    /// caller gave up and no answer was sent, `Internal` after a panic).
    fn finished(&self, _method: &str, _outcome: Result<(), Code>, _elapsed: Duration) {}
    /// A request was refused before reaching a handler.
    fn rejected(&self, _method: &str, _code: Code) {}
    /// A handler panicked; the caller was answered `INTERNAL`.
    fn panicked(&self, _method: &str) {}
    /// An answer was dropped: the peer's queue stayed full until the
    /// request's deadline (the peer does not read).
    fn answer_dropped(&self) {}
}

impl std::fmt::Debug for dyn DispatchObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DispatchObserver")
    }
}

pub use gatemesh_proto::code_name;

/// Why a request was answered with an error before reaching a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Id 0: never valid on the wire.
    BadId,
    BadMethodName,
    UnknownMethod,
    DuplicateId,
    /// The payload is over the limit.
    TooLarge,
    /// The metadata breaks its rules (count, size, key or value).
    BadMetadata,
    /// The stream's share or the process-wide permits are taken.
    Overloaded,
    Draining,
}

impl Rejection {
    /// `duplicate_id`, ...: for logs and disconnect reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadId => "bad_id",
            Self::BadMethodName => "bad_method_name",
            Self::UnknownMethod => "unknown_method",
            Self::DuplicateId => "duplicate_id",
            Self::TooLarge => "too_large",
            Self::BadMetadata => "bad_metadata",
            Self::Overloaded => "overloaded",
            Self::Draining => "draining",
        }
    }

    /// Whether the peer broke the protocol (rather than met a limit).
    pub fn is_violation(self) -> bool {
        matches!(
            self,
            Self::BadId
                | Self::BadMethodName
                | Self::DuplicateId
                | Self::TooLarge
                | Self::BadMetadata
        )
    }

    fn code(self) -> Code {
        match self {
            Self::BadId | Self::BadMethodName | Self::DuplicateId | Self::BadMetadata => {
                Code::InvalidArgument
            }
            Self::UnknownMethod => Code::Unimplemented,
            Self::TooLarge | Self::Overloaded => Code::ResourceExhausted,
            Self::Draining => Code::Unavailable,
        }
    }
}

/// A refused request: why, and whether the refusal reached the peer's
/// queue (a peer that floods requests and never reads gets neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub rejection: Rejection,
    pub answered: bool,
}

/// Where a stream's answers go: its bounded outbound queue, and how an
/// answer becomes a frame of that stream's direction.
pub struct Outbox<F> {
    tx: mpsc::Sender<F>,
    frame: fn(pb::Response) -> F,
}

impl<F> Outbox<F> {
    pub fn new(tx: mpsc::Sender<F>, frame: fn(pb::Response) -> F) -> Self {
        Self { tx, frame }
    }
}

/// Incoming requests of one stream.
pub struct Dispatcher<F> {
    registry: Arc<Handlers>,
    config: DispatchConfig,
    permits: Arc<Semaphore>,
    outbox: Outbox<F>,
    max_answer_bytes: AtomicUsize,
    state: Mutex<State>,
    idle: Notify,
    dropped_answers: AtomicU64,
    /// Wakers for first polls, reused: see [`Relay`].
    relays: Mutex<Vec<Arc<Relay>>>,
}

#[derive(Default)]
struct State {
    running: HashMap<u64, Slot>,
    draining: bool,
    /// The stream is gone: whatever starts now is cancelled at once.
    closed: bool,
}

/// A request that is running, or answered and waiting for queue room.
struct Slot {
    /// Fired by the peer's `Cancel`, the deadline or the stream's end.
    token: CancellationToken,
    /// The peer sent `Cancel`: it wants no answer, not even an error.
    cancelled_by_peer: bool,
}

/// Takes a request out of the running table however its task ends: an
/// answer, a cancel, a panic, or the runtime dropping the task.
struct Running<F: Send + 'static> {
    dispatcher: Arc<Dispatcher<F>>,
    id: u64,
}

impl<F: Send + 'static> Drop for Running<F> {
    fn drop(&mut self) {
        self.dispatcher.finish(self.id);
    }
}

/// The waker of a handler's first poll, which runs on the stream's reader
/// before the request has a task of its own. A future may register only
/// the waker of its first poll (a timer set once, a one-time
/// registration); the relay hands that wake-up on to the task the request
/// moves to. Kept in a small per-stream pool, so a first poll that
/// finishes (most do) costs no allocation for it.
#[derive(Default)]
struct Relay(AtomicWaker);

impl std::task::Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.0.wake();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.wake();
    }
}

/// Relays kept for reuse, per stream.
const RELAY_POOL: usize = 4;

/// One admitted request on its way through the dispatcher.
struct Request {
    id: u64,
    entry: Arc<crate::registry::Entry>,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    span: tracing::Span,
}

impl<F: Send + 'static> Dispatcher<F> {
    /// `permits` is shared by every stream of the process: it bounds the
    /// handlers running at once.
    pub fn new(
        registry: Arc<Handlers>,
        config: DispatchConfig,
        permits: Arc<Semaphore>,
        outbox: Outbox<F>,
    ) -> Self {
        Self {
            max_answer_bytes: AtomicUsize::new(config.max_answer_bytes),
            registry,
            config,
            permits,
            outbox,
            state: Mutex::new(State::default()),
            idle: Notify::new(),
            dropped_answers: AtomicU64::new(0),
            relays: Mutex::new(Vec::new()),
        }
    }

    /// The peer's limit on answer payloads, once it is known (an instance
    /// learns its gateway's from welcome). 0: no limit.
    pub fn set_max_answer_bytes(&self, max: usize) {
        self.max_answer_bytes.store(max, Ordering::Relaxed);
    }

    /// Starts `request` from `caller`. A request that cannot run is
    /// answered at once, without waiting, with a typed status; the reason
    /// is returned so the stream can count it.
    ///
    /// A process-wide permit is taken before any of the handler's work,
    /// and held until the handler is done. The handler's first poll runs
    /// right here, on the stream's reader: a handler that answers without
    /// waiting (most do: a lookup, a cache) costs no task, no timer and no
    /// wake-up. One that waits moves to its own task with its deadline and
    /// cancel. A handler whose first poll runs past [`INLINE_BUDGET`]
    /// [`SLOW_STRIKES`] times in a row starts in its own task from then
    /// on, so a slow handler stalls the reader at most a few times.
    pub fn dispatch(self: &Arc<Self>, caller: Caller, request: pb::Request) -> Result<(), Refused> {
        let (entry, permit) = match self.admit(&request) {
            Ok(admitted) => admitted,
            Err((rejection, message)) => {
                return Err(self.refuse(request.id, &request.method, rejection, message));
            }
        };
        let timeout = match request.timeout_ms {
            0 => self.config.default_timeout,
            ms => Duration::from_millis(ms.into()).min(self.config.max_timeout),
        };
        let started = Instant::now();
        if let Some(observer) = &self.config.observer {
            observer.started(&request.method);
        }
        let token = CancellationToken::new();
        // Checked in `admit`; an empty list costs nothing, and with export
        // off a request without trace context gets no span.
        let metadata = crate::Metadata::from_wire(request.metadata).unwrap_or_default();
        let span = crate::trace::serve_span(&entry.name, &caller, &metadata);
        let ctx = Context::new(caller, started + timeout, token.clone()).with_metadata(metadata);
        let mut work =
            Arc::clone(&entry.handler).serve(ctx, &entry.name, request.payload, span.clone());
        let call = Request {
            id: request.id,
            entry,
            started,
            deadline: started + timeout,
            timeout,
            span,
        };
        let mut relay = None;
        if call.entry.slow_first_polls.load(Ordering::Relaxed) < SLOW_STRIKES {
            let first = self.relays.lock().pop().unwrap_or_default();
            let waker = std::task::Waker::from(first.clone());
            let polled = work
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&waker));
            drop(waker);
            let now = Instant::now();
            self.note_first_poll(&call, now);
            if let std::task::Poll::Ready(result) = polled {
                drop(work);
                drop(permit);
                self.reuse(first);
                let result = if now >= call.deadline {
                    self.deadline_passed(&call)
                } else {
                    self.outcome(&call.entry.name, result)
                };
                self.finished(&call, Some(&result), now.duration_since(started));
                // Queued now, or by a task that waits for room (at most
                // until the deadline), so the reader never waits.
                if let Some(waiting) = self.answer(call.id, result, call.deadline, None) {
                    tokio::spawn(waiting);
                }
                return Ok(());
            }
            relay = Some(first);
        }
        let running = self.enter(call.id, &token);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let grace = this.config.cancel_grace;
            let mut work = std::pin::pin!(std::future::poll_fn(|cx| {
                if let Some(relay) = &relay {
                    relay.0.register(cx.waker());
                }
                work.as_mut().poll(cx)
            }));
            let result = tokio::select! {
                // A handler that returns as soon as it sees a cancel races
                // the cancel branch; the caller still wants no answer.
                result = &mut work => (!token.is_cancelled()).then(|| this.outcome(&call.entry.name, result)),
                _ = tokio::time::sleep_until(call.deadline) => {
                    token.cancel();
                    let _ = tokio::time::timeout(grace, &mut work).await;
                    Some(this.deadline_passed(&call))
                }
                _ = token.cancelled() => {
                    // The caller gave up: it wants no answer.
                    let _ = tokio::time::timeout(grace, &mut work).await;
                    None
                }
            };
            // The handler is done: its permit goes back before the answer
            // waits for queue room, if it must.
            drop(permit);
            this.finished(&call, result.as_ref(), call.started.elapsed());
            if let Some(result) = result
                && let Some(waiting) = this.answer(call.id, result, call.deadline, Some(running))
            {
                waiting.await;
            }
        });
        Ok(())
    }

    /// Counts a first poll that ran past [`INLINE_BUDGET`]; strikes count
    /// only in a row, since a thread preempted mid-poll on a busy machine
    /// is not a slow handler.
    fn note_first_poll(&self, call: &Request, now: Instant) {
        let strikes = &call.entry.slow_first_polls;
        if now.duration_since(call.started) <= INLINE_BUDGET {
            if strikes.load(Ordering::Relaxed) != 0 {
                strikes.store(0, Ordering::Relaxed);
            }
        } else if strikes.fetch_add(1, Ordering::Relaxed) + 1 == SLOW_STRIKES {
            tracing::info!(
                method = &*call.entry.name,
                micros = now.duration_since(call.started).as_micros() as u64,
                "handler's first polls ran long; its requests start in their own task from now on"
            );
        }
    }

    /// Puts a first poll's relay back in the pool, unless the handler
    /// kept its waker somewhere.
    fn reuse(&self, relay: Arc<Relay>) {
        if Arc::strong_count(&relay) == 1 {
            let mut pool = self.relays.lock();
            if pool.len() < RELAY_POOL {
                pool.push(relay);
            }
        }
    }

    /// What a handler's result becomes on the wire.
    fn outcome(&self, method: &str, result: HandlerResult) -> pb::response::Result {
        match result {
            Ok(Ok(payload)) => self.within_limit(method, payload),
            Ok(Err(e)) => pb::response::Result::Status((&e).into()),
            Err(panic) => self.panicked(method, &*panic),
        }
    }

    fn deadline_passed(&self, call: &Request) -> pb::response::Result {
        pb::response::Result::Status(pb::Status::new(
            Code::DeadlineExceeded,
            format!(
                "{}: deadline of {} ms passed",
                call.entry.name,
                call.timeout.as_millis()
            ),
        ))
    }

    /// Tells the observer and the request's span how it ended.
    fn finished(&self, call: &Request, result: Option<&pb::response::Result>, elapsed: Duration) {
        let outcome = match result {
            Some(pb::response::Result::Payload(_)) => Ok(()),
            Some(pb::response::Result::Status(status)) => Err(status.code()),
            None => Err(Code::Cancelled),
        };
        if let Some(observer) = &self.config.observer {
            observer.finished(&call.entry.name, outcome, elapsed);
        }
        crate::trace::finished(
            &call.span,
            match outcome {
                Ok(()) => "ok",
                Err(Code::Cancelled) if result.is_none() => "cancelled",
                Err(code) => code_name(code),
            },
            outcome.err().unwrap_or(Code::Ok),
        );
    }

    /// Answers `id` with a refusal, without waiting: counted when the
    /// peer's queue has no room.
    pub fn refuse(&self, id: u64, method: &str, rejection: Rejection, message: String) -> Refused {
        if let Some(observer) = &self.config.observer {
            observer.rejected(method, rejection.code());
        }
        let status = if rejection.is_violation() {
            pb::Status::new(rejection.code(), message)
        } else {
            pb::Status::refused(rejection.code(), message)
        };
        let response = pb::Response {
            id,
            result: Some(pb::response::Result::Status(status)),
        };
        let answered = self
            .outbox
            .tx
            .try_send((self.outbox.frame)(response))
            .is_ok();
        if !answered {
            self.note_dropped();
        }
        Refused {
            rejection,
            answered,
        }
    }

    fn within_limit(&self, method: &str, payload: bytes::Bytes) -> pb::response::Result {
        let max = self.max_answer_bytes.load(Ordering::Relaxed);
        if max > 0 && payload.len() > max {
            tracing::warn!(
                method,
                bytes = payload.len(),
                max,
                "answer over the peer's limit; answered RESOURCE_EXHAUSTED"
            );
            return pb::response::Result::Status(pb::Status::new(
                Code::ResourceExhausted,
                format!(
                    "{method}: answer of {} bytes exceeds the limit of {max} bytes",
                    payload.len()
                ),
            ));
        }
        pb::response::Result::Payload(payload)
    }

    fn panicked(&self, method: &str, panic: &(dyn std::any::Any + Send)) -> pb::response::Result {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a non-text panic");
        tracing::error!(method, panic = what, "handler panicked; answered INTERNAL");
        if let Some(observer) = &self.config.observer {
            observer.panicked(method);
        }
        pb::response::Result::Status(pb::Status::new(
            Code::Internal,
            format!("{method}: the handler failed unexpectedly"),
        ))
    }

    /// The one way an answer leaves: queued now when there is room, or
    /// handed back as a future that waits for room until the request's
    /// deadline (when the caller stops waiting anyway), so the reader
    /// never waits. Until it is queued or dropped the request counts as
    /// running, for [`Self::idle`] (`running` is its entry when it has
    /// one). An answer the peer cancelled is never sent; one for a stream
    /// that is gone is dropped.
    fn answer(
        self: &Arc<Self>,
        id: u64,
        result: pb::response::Result,
        deadline: Instant,
        running: Option<Running<F>>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let frame = (self.outbox.frame)(pb::Response {
            id,
            result: Some(result),
        });
        let frame = match self.queue_unless_cancelled(id, frame) {
            Ok(()) => return None,
            Err(frame) => frame,
        };
        let running = running.unwrap_or_else(|| self.enter(id, &CancellationToken::new()));
        Some(async move {
            let this = &running.dispatcher;
            match tokio::time::timeout_at(deadline, this.outbox.tx.reserve()).await {
                Ok(Ok(room)) => {
                    if !this.cancelled_by_peer(id) {
                        room.send(frame);
                    }
                }
                Ok(Err(_closed)) => {}
                Err(_deadline) => this.note_dropped(),
            }
            drop(running);
        })
    }

    /// Queues `frame` without waiting unless the peer cancelled `id` (then
    /// it is dropped); hands it back when the queue is full. The check and
    /// the send are one step under the state lock, so once [`Self::cancel`]
    /// has returned no answer follows the peer's `Cancel`.
    fn queue_unless_cancelled(&self, id: u64, frame: F) -> Result<(), F> {
        let state = self.state.lock();
        if state.running.get(&id).is_some_and(|s| s.cancelled_by_peer) {
            return Ok(());
        }
        match self.outbox.tx.try_send(frame) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(frame)) => Err(frame),
        }
    }

    fn cancelled_by_peer(&self, id: u64) -> bool {
        self.state
            .lock()
            .running
            .get(&id)
            .is_some_and(|s| s.cancelled_by_peer)
    }

    fn note_dropped(&self) {
        self.dropped_answers.fetch_add(1, Ordering::Relaxed);
        if let Some(observer) = &self.config.observer {
            observer.answer_dropped();
        }
    }

    /// Answers (and refusals) dropped because the peer's queue stayed full.
    pub fn dropped_answers(&self) -> u64 {
        self.dropped_answers.load(Ordering::Relaxed)
    }

    /// Checks a request against the frame rules and the limits; if it may
    /// run, takes one of the process-wide permits for it. Taken, not just
    /// looked at: whatever the number of streams, no more handlers run at
    /// once than there are permits.
    fn admit(
        &self,
        request: &pb::Request,
    ) -> Result<(Arc<crate::registry::Entry>, OwnedSemaphorePermit), (Rejection, String)> {
        if request.id == 0 {
            return Err((Rejection::BadId, "request id 0 is never valid".into()));
        }
        if request.method.is_empty() || request.method.len() > MAX_METHOD_NAME_LEN {
            return Err((
                Rejection::BadMethodName,
                format!(
                    "method name must be 1 to {MAX_METHOD_NAME_LEN} bytes, got {}",
                    request.method.len()
                ),
            ));
        }
        if let Err(e) = crate::Metadata::check_wire(&request.metadata) {
            return Err((Rejection::BadMetadata, e.to_string()));
        }
        let Some(entry) = self.registry.entry(&request.method).cloned() else {
            return Err((
                Rejection::UnknownMethod,
                format!("method {:?} is not served here", request.method),
            ));
        };
        let state = self.state.lock();
        if state.draining {
            return Err((Rejection::Draining, "draining: no new requests".into()));
        }
        if state.running.contains_key(&request.id) {
            return Err((
                Rejection::DuplicateId,
                format!("request id {} is already in flight", request.id),
            ));
        }
        if state.running.len() >= self.config.max_in_flight_per_stream {
            return Err((
                Rejection::Overloaded,
                format!(
                    "this stream has {} requests in flight, its limit",
                    state.running.len()
                ),
            ));
        }
        drop(state);
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| (Rejection::Overloaded, "too many requests in flight".into()))?;
        Ok((entry, permit))
    }

    /// Records `id` as running (a cancel now reaches it) and returns the
    /// guard that takes it out again. On a stream already closed, the
    /// token is cancelled at once.
    fn enter(self: &Arc<Self>, id: u64, token: &CancellationToken) -> Running<F> {
        let mut state = self.state.lock();
        if state.closed {
            token.cancel();
        }
        state.running.insert(
            id,
            Slot {
                token: token.clone(),
                cancelled_by_peer: false,
            },
        );
        Running {
            dispatcher: Arc::clone(self),
            id,
        }
    }

    fn finish(&self, id: u64) {
        let mut state = self.state.lock();
        state.running.remove(&id);
        if state.running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// The peer's `Cancel` for `id`: its handler is told, and no answer
    /// is sent for it from now on. Returns whether it was running.
    pub fn cancel(&self, id: u64) -> bool {
        match self.state.lock().running.get_mut(&id) {
            Some(slot) => {
                slot.cancelled_by_peer = true;
                slot.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Refuses new requests from now on; running ones go on.
    pub fn drain(&self) {
        self.state.lock().draining = true;
    }

    /// Refuses new requests and cancels every running one (the stream is gone).
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.draining = true;
        state.closed = true;
        for slot in state.running.values() {
            slot.token.cancel();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.state.lock().running.len()
    }

    /// Resolves once no request is running and every answer is queued.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InstanceRegistry, Registry, Status};
    use bytes::Bytes;
    use gatemesh_proto::methods::FindVpsByLease;
    use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
    use prost::Message;
    use tokio::sync::mpsc;

    fn caller() -> Caller {
        Caller::new("gw", "", crate::Proof::Dialed)
    }

    type D = Arc<Dispatcher<pb::Response>>;

    fn with_config(
        registry: InstanceRegistry,
        limit: usize,
        config: DispatchConfig,
        queue: usize,
    ) -> (D, mpsc::Receiver<pb::Response>) {
        let (tx, rx) = mpsc::channel(queue);
        let d = Arc::new(Dispatcher::new(
            Arc::new(registry.into_handlers()),
            config,
            Arc::new(Semaphore::new(limit)),
            Outbox::new(tx, |r| r),
        ));
        (d, rx)
    }

    fn setup(registry: InstanceRegistry, limit: usize) -> (D, (), mpsc::Receiver<pb::Response>) {
        let (d, rx) = with_config(registry, limit, DispatchConfig::default(), 64);
        (d, (), rx)
    }

    fn request(id: u64, method: &str, timeout_ms: u32) -> pb::Request {
        pb::Request {
            id,
            method: method.into(),
            payload: FindVpsByLeaseRequest {
                ip: "10.0.0.1".into(),
                mac: "aa".into(),
            }
            .encode_to_vec()
            .into(),
            timeout_ms,
            metadata: Vec::new(),
        }
    }

    fn send(d: &D, _: &(), req: pb::Request) -> Result<(), Rejection> {
        d.dispatch(caller(), req).map_err(|r| r.rejection)
    }

    fn status(r: &pb::Response) -> Option<Code> {
        match &r.result {
            Some(pb::response::Result::Status(s)) => Some(s.code()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn typed_handler_answers_and_unknown_method_is_unimplemented() {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, req: FindVpsByLeaseRequest| async move {
            Ok::<_, tonic::Status>(FindVpsByLeaseResponse {
                vps_id: format!("vps-{}", req.ip),
                organization_id: "org".into(),
            })
        })
        .unwrap();
        let (d, tx, mut rx) = setup(reg, 8);
        send(&d, &tx, request(1, "FindVPSByLease", 1000)).unwrap();
        let r = rx.recv().await.unwrap();
        let Some(pb::response::Result::Payload(p)) = r.result else {
            panic!("{r:?}")
        };
        assert_eq!(
            FindVpsByLeaseResponse::decode(p).unwrap().vps_id,
            "vps-10.0.0.1"
        );
        assert_eq!(
            send(&d, &tx, request(2, "Nope", 1000)),
            Err(Rejection::UnknownMethod)
        );
        let r = rx.recv().await.unwrap();
        assert_eq!((r.id, status(&r)), (2, Some(Code::Unimplemented)));
        assert_eq!(
            send(&d, &tx, request(3, "", 1000)),
            Err(Rejection::BadMethodName)
        );
        let long = "x".repeat(MAX_METHOD_NAME_LEN + 1);
        assert_eq!(
            send(&d, &tx, request(4, &long, 1000)),
            Err(Rejection::BadMethodName)
        );
    }

    fn entry(key: &str, value: &str) -> pb::MetadataEntry {
        pb::MetadataEntry {
            key: key.into(),
            value: value.into(),
        }
    }

    #[tokio::test]
    async fn the_handler_reads_the_metadata_the_caller_sent() {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|ctx: Context, _req| async move {
            let seen: Vec<String> = ctx
                .metadata()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            Ok::<_, tonic::Status>(FindVpsByLeaseResponse {
                vps_id: seen.join(","),
                organization_id: String::new(),
            })
        })
        .unwrap();
        let (d, tx, mut rx) = setup(reg, 8);
        let mut req = request(1, "FindVPSByLease", 1000);
        req.metadata = vec![entry("x-request-id", "r-1"), entry("tenant", "acme")];
        send(&d, &tx, req).unwrap();
        let Some(pb::response::Result::Payload(p)) = rx.recv().await.unwrap().result else {
            panic!("no payload")
        };
        assert_eq!(
            FindVpsByLeaseResponse::decode(p).unwrap().vps_id,
            "x-request-id=r-1,tenant=acme"
        );
    }

    #[tokio::test]
    async fn bad_metadata_is_a_violation_refused_before_any_handler() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let (d, tx, mut rx) = setup(observing(seen_tx), 8);
        let many: Vec<_> = (0..=crate::metadata::MAX_ENTRIES)
            .map(|i| entry(&format!("k{i}"), "v"))
            .collect();
        let cases = [
            vec![entry("Bad Key", "v")],
            vec![entry("k", "line\nbreak")],
            vec![entry("k", "1"), entry("k", "2")],
            vec![entry("grpc-status", "0")],
            many,
        ];
        for (i, metadata) in cases.into_iter().enumerate() {
            let mut req = request(i as u64 + 1, "FindVPSByLease", 1000);
            req.metadata = metadata;
            assert_eq!(send(&d, &tx, req), Err(Rejection::BadMetadata));
            let r = rx.recv().await.unwrap();
            let Some(pb::response::Result::Status(s)) = r.result else {
                panic!("{r:?}")
            };
            assert_eq!(s.code(), Code::InvalidArgument);
            assert!(s.message.starts_with("metadata"), "{}", s.message);
            assert!(!s.refused, "a violation is not a safe-to-retry refusal");
        }
        assert!(Rejection::BadMetadata.is_violation());
        assert!(seen.try_recv().is_err(), "no handler ran");
        assert_eq!(d.in_flight(), 0);
    }

    #[tokio::test]
    async fn undecodable_payload_is_invalid_argument() {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, _req| async move {
            Ok::<_, tonic::Status>(Default::default())
        })
        .unwrap();
        let (d, tx, mut rx) = setup(reg, 8);
        let mut req = request(1, "FindVPSByLease", 1000);
        req.payload = Bytes::from_static(&[0xff, 0xff, 0xff]);
        send(&d, &tx, req).unwrap();
        assert_eq!(
            status(&rx.recv().await.unwrap()),
            Some(Code::InvalidArgument)
        );
    }

    /// A handler that waits for its cancellation and reports how it ended.
    fn observing(seen: mpsc::UnboundedSender<(bool, bool)>) -> InstanceRegistry {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(move |ctx: Context, _req| {
            let seen = seen.clone();
            async move {
                ctx.cancelled().await;
                let deadline_passed = Instant::now() >= ctx.deadline();
                let _ = seen.send((ctx.is_cancelled(), deadline_passed));
                Err(Status::cancelled("stopped"))
            }
        })
        .unwrap();
        reg
    }

    #[tokio::test(start_paused = true)]
    async fn handler_observes_its_deadline_and_caller_gets_deadline_exceeded() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let (d, tx, mut rx) = setup(observing(seen_tx), 8);
        send(&d, &tx, request(7, "FindVPSByLease", 50)).unwrap();
        assert_eq!(seen.recv().await.unwrap(), (true, true));
        let r = rx.recv().await.unwrap();
        assert_eq!((r.id, status(&r)), (7, Some(Code::DeadlineExceeded)));
        d.idle().await;
    }

    #[tokio::test(start_paused = true)]
    async fn handler_observes_a_cancel_and_no_answer_is_sent() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let (d, tx, mut rx) = setup(observing(seen_tx), 8);
        send(&d, &tx, request(9, "FindVPSByLease", 60_000)).unwrap();
        tokio::task::yield_now().await;
        assert!(d.cancel(9));
        assert_eq!(seen.recv().await.unwrap(), (true, false));
        d.idle().await;
        assert!(rx.try_recv().is_err(), "a cancelled call gets no answer");
    }

    #[tokio::test(start_paused = true)]
    async fn limit_and_duplicate_ids_and_drain_are_refused() {
        let (seen_tx, _seen) = mpsc::unbounded_channel();
        let (d, tx, mut rx) = setup(observing(seen_tx), 1);
        send(&d, &tx, request(1, "FindVPSByLease", 60_000)).unwrap();
        assert_eq!(
            send(&d, &tx, request(1, "FindVPSByLease", 60_000)),
            Err(Rejection::DuplicateId)
        );
        assert_eq!(
            status(&rx.recv().await.unwrap()),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            send(&d, &tx, request(2, "FindVPSByLease", 60_000)),
            Err(Rejection::Overloaded)
        );
        assert_eq!(
            status(&rx.recv().await.unwrap()),
            Some(Code::ResourceExhausted)
        );
        d.drain();
        assert_eq!(
            send(&d, &tx, request(3, "FindVPSByLease", 60_000)),
            Err(Rejection::Draining)
        );
        assert_eq!(d.in_flight(), 1);
        d.close();
        d.idle().await;
        assert_eq!(d.in_flight(), 0);
    }

    #[derive(Default)]
    struct Counting(Mutex<Vec<String>>);

    impl DispatchObserver for Counting {
        fn started(&self, method: &str) {
            self.0.lock().push(format!("started {method}"));
        }
        fn finished(&self, method: &str, outcome: Result<(), Code>, _elapsed: Duration) {
            let outcome = outcome.map_or_else(code_name, |()| "OK");
            self.0.lock().push(format!("finished {method} {outcome}"));
        }
        fn rejected(&self, method: &str, code: Code) {
            self.0
                .lock()
                .push(format!("rejected {method} {}", code_name(code)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_hears_every_start_finish_and_rejection() {
        let (seen_tx, _seen) = mpsc::unbounded_channel();
        let observer = Arc::new(Counting::default());
        let (d, mut rx) = with_config(
            observing(seen_tx),
            8,
            DispatchConfig {
                observer: Some(observer.clone()),
                ..DispatchConfig::default()
            },
            64,
        );
        let tx = ();
        send(&d, &tx, request(1, "FindVPSByLease", 50)).unwrap();
        assert_eq!(
            status(&rx.recv().await.unwrap()),
            Some(Code::DeadlineExceeded)
        );
        send(&d, &tx, request(2, "FindVPSByLease", 60_000)).unwrap();
        tokio::task::yield_now().await;
        assert!(d.cancel(2));
        d.idle().await;
        let _ = send(&d, &tx, request(3, "Nope", 1000));
        assert_eq!(
            *observer.0.lock(),
            [
                "started FindVPSByLease",
                "finished FindVPSByLease DEADLINE_EXCEEDED",
                "started FindVPSByLease",
                "finished FindVPSByLease CANCELLED",
                "rejected Nope UNIMPLEMENTED",
            ]
        );
    }

    fn panicking() -> InstanceRegistry {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, req: FindVpsByLeaseRequest| async move {
            if req.mac == "boom" {
                panic!("handler bug");
            }
            Ok::<_, tonic::Status>(FindVpsByLeaseResponse::default())
        })
        .unwrap();
        reg
    }

    fn with_mac(id: u64, mac: &str, timeout_ms: u32) -> pb::Request {
        let mut req = request(id, "FindVPSByLease", timeout_ms);
        req.payload = FindVpsByLeaseRequest {
            ip: "10.0.0.1".into(),
            mac: mac.into(),
        }
        .encode_to_vec()
        .into();
        req
    }

    #[tokio::test]
    async fn a_panicking_handler_is_answered_internal_and_leaves_no_trace() {
        let observer = Arc::new(Counting::default());
        let (d, mut rx) = with_config(
            panicking(),
            1,
            DispatchConfig {
                observer: Some(observer.clone()),
                ..DispatchConfig::default()
            },
            8,
        );
        send(&d, &(), with_mac(1, "boom", 60_000)).unwrap();
        let r = rx.recv().await.unwrap();
        assert_eq!((r.id, status(&r)), (1, Some(Code::Internal)));
        // Nothing left running: a drain completes at once, and the one
        // permit is free for the next request.
        d.idle().await;
        assert_eq!(d.in_flight(), 0);
        send(&d, &(), with_mac(2, "fine", 60_000)).unwrap();
        assert!(matches!(
            rx.recv().await.unwrap().result,
            Some(pb::response::Result::Payload(_))
        ));
        assert_eq!(
            observer.0.lock()[..2],
            ["started FindVPSByLease", "finished FindVPSByLease INTERNAL"]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_handler_that_does_not_wait_is_answered_before_dispatch_returns() {
        // On a current-thread runtime nothing else runs until this test
        // awaits: an answer already queued was made inline, by the reader.
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, _req: FindVpsByLeaseRequest| async move {
            Ok::<_, tonic::Status>(FindVpsByLeaseResponse::default())
        })
        .unwrap();
        let (d, _, mut rx) = setup(reg, 4);
        send(&d, &(), request(7, "FindVPSByLease", 1000)).unwrap();
        let answer = rx.try_recv().expect("answered inline");
        assert_eq!(answer.id, 7);
        assert_eq!(d.in_flight(), 0, "an inline call leaves nothing running");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn long_first_polls_that_are_not_in_a_row_keep_a_handler_inline() {
        // A busy machine preempts a thread mid-poll now and then; that
        // must not cost a fast handler its inline path.
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, req: FindVpsByLeaseRequest| async move {
            if req.mac == "slow" {
                std::thread::sleep(INLINE_BUDGET * 2);
            }
            Ok::<_, tonic::Status>(FindVpsByLeaseResponse::default())
        })
        .unwrap();
        let (d, _, mut rx) = setup(reg, 4);
        for id in 1..=u64::from(SLOW_STRIKES) * 3 {
            let mac = if id % 2 == 1 { "slow" } else { "fast" };
            send(&d, &(), with_mac(id, mac, 60_000)).unwrap();
            let answer = rx.try_recv().expect("still answered inline");
            assert_eq!(answer.id, id);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handler_whose_first_polls_run_long_leaves_the_reader_after_a_few() {
        // Each call blocks its thread synchronously until released (or 10 s
        // pass). Run inline, `dispatch` itself would block until then.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = Arc::new(std::sync::Mutex::new(released));
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(move |_ctx, req: FindVpsByLeaseRequest| {
            let released = released.clone();
            async move {
                let waited = if req.mac == "block" {
                    released
                        .lock()
                        .unwrap()
                        .recv_timeout(Duration::from_secs(10))
                        .is_ok()
                } else {
                    std::thread::sleep(INLINE_BUDGET * 2);
                    true
                };
                Ok::<_, tonic::Status>(FindVpsByLeaseResponse {
                    vps_id: if waited { "released" } else { "timed out" }.into(),
                    ..Default::default()
                })
            }
        })
        .unwrap();
        let (d, _, mut rx) = setup(reg, 4);
        for id in 1..=u64::from(SLOW_STRIKES) {
            send(&d, &(), with_mac(id, "slow", 60_000)).unwrap();
            rx.recv().await.unwrap();
        }
        // Now the handler starts in its own task: dispatch returns while
        // it blocks, and the release below is what ends it.
        send(&d, &(), with_mac(9, "block", 60_000)).unwrap();
        release.send(()).unwrap();
        let answer = rx.recv().await.unwrap();
        let Some(pb::response::Result::Payload(bytes)) = answer.result else {
            panic!("{answer:?}");
        };
        assert_eq!(
            FindVpsByLeaseResponse::decode(bytes).unwrap().vps_id,
            "released"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_streams_flood_meets_its_own_share_not_the_others() {
        let permits = Arc::new(Semaphore::new(8));
        let config = DispatchConfig {
            max_in_flight_per_stream: 2,
            ..DispatchConfig::default()
        };
        let (seen_tx, _seen) = mpsc::unbounded_channel();
        let registry = Arc::new(observing(seen_tx).into_handlers());
        let make = |queue| {
            let (tx, rx) = mpsc::channel(queue);
            let d = Arc::new(Dispatcher::new(
                registry.clone(),
                config.clone(),
                permits.clone(),
                Outbox::new(tx, |r| r),
            ));
            (d, rx)
        };
        let (flooder, mut flooder_rx) = make(8);
        let (other, _other_rx) = make(8);
        for id in 1..=2 {
            send(&flooder, &(), request(id, "FindVPSByLease", 60_000)).unwrap();
        }
        let refused = flooder
            .dispatch(caller(), request(3, "FindVPSByLease", 60_000))
            .unwrap_err();
        assert_eq!(
            refused,
            Refused {
                rejection: Rejection::Overloaded,
                answered: true
            }
        );
        let r = flooder_rx.recv().await.unwrap();
        let Some(pb::response::Result::Status(s)) = r.result else {
            panic!("{r:?}")
        };
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.refused, "a refusal before running says so");
        // The other stream still has the process-wide permits.
        send(&other, &(), request(1, "FindVPSByLease", 60_000)).unwrap();
        assert_eq!(other.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_reads_costs_no_permit_and_its_answers_end_at_the_deadline() {
        let observer = Arc::new(Counting::default());
        let permits = Arc::new(Semaphore::new(4));
        let (tx, _rx_never_read) = mpsc::channel(1);
        let d = Arc::new(Dispatcher::new(
            Arc::new(panicking().into_handlers()),
            DispatchConfig {
                observer: Some(observer.clone()),
                ..DispatchConfig::default()
            },
            permits.clone(),
            Outbox::new(tx, |r| r),
        ));
        for id in 1..=3 {
            send(&d, &(), with_mac(id, "fine", 50)).unwrap();
        }
        // Handlers are done; two answers wait for room, holding no permit.
        eventually_idle_permits(&permits, 4).await;
        assert_eq!(d.in_flight(), 2);
        // A refusal on a full queue is not waited for: dropped and counted.
        let refused = d.dispatch(caller(), request(9, "Nope", 50)).unwrap_err();
        assert!(!refused.answered);
        // At the deadline the waiting answers are dropped, not kept.
        d.idle().await;
        assert_eq!(d.dropped_answers(), 3);
    }

    /// The process-wide limit is taken, not looked at: a hundred requests
    /// dispatched at the same moment on a hundred streams sharing four
    /// permits never run more than four handlers, even though each
    /// handler's first poll (which runs on its stream's reader) holds on
    /// until every dispatch has either entered a handler or been refused.
    #[test]
    fn a_limit_of_four_holds_against_a_hundred_calls_at_once() {
        const CALLS: usize = 100;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let settled = Arc::new(AtomicUsize::new(0));
        let release = CancellationToken::new();
        let mut reg = Registry::new();
        {
            let (running, most, settled, release) = (
                running.clone(),
                most.clone(),
                settled.clone(),
                release.clone(),
            );
            reg.method::<FindVpsByLease>(move |_ctx, _req| {
                let (running, most, settled, release) = (
                    running.clone(),
                    most.clone(),
                    settled.clone(),
                    release.clone(),
                );
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    settled.fetch_add(1, Ordering::SeqCst);
                    let until = std::time::Instant::now() + Duration::from_secs(10);
                    while settled.load(Ordering::SeqCst) < CALLS
                        && std::time::Instant::now() < until
                    {
                        std::thread::yield_now();
                    }
                    release.cancelled().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, tonic::Status>(FindVpsByLeaseResponse::default())
                }
            })
            .unwrap();
        }
        let registry = Arc::new(reg.into_handlers());
        let permits = Arc::new(Semaphore::new(4));
        let streams: Vec<_> = (0..CALLS)
            .map(|_| {
                let (tx, rx) = mpsc::channel(4);
                let d = Arc::new(Dispatcher::new(
                    registry.clone(),
                    DispatchConfig::default(),
                    permits.clone(),
                    Outbox::new(tx, |r| r),
                ));
                (d, rx)
            })
            .collect();
        let start = Arc::new(std::sync::Barrier::new(CALLS));
        std::thread::scope(|scope| {
            for (d, _) in &streams {
                let (start, settled, handle) =
                    (start.clone(), settled.clone(), runtime.handle().clone());
                scope.spawn(move || {
                    let _runtime = handle.enter();
                    start.wait();
                    if d.dispatch(caller(), request(1, "FindVPSByLease", 60_000))
                        .is_err()
                    {
                        settled.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(settled.load(Ordering::SeqCst), CALLS);
        assert!(
            most.load(Ordering::SeqCst) <= 4,
            "{} handlers ran at once under a limit of 4",
            most.load(Ordering::SeqCst)
        );
        release.cancel();
        runtime.block_on(async {
            for (d, _) in &streams {
                d.idle().await;
            }
        });
        assert_eq!(permits.available_permits(), 4);
    }

    /// A future that registers the waker of its first poll and never
    /// again (legal for a one-time registration): the first poll runs on
    /// the reader, so its waker must reach the task the request moves to.
    struct RegistersOnce {
        slot: Arc<Mutex<Option<std::task::Waker>>>,
        done: Arc<std::sync::atomic::AtomicBool>,
        registered: bool,
    }

    impl Future for RegistersOnce {
        type Output = ();

        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.done.load(Ordering::SeqCst) {
                return std::task::Poll::Ready(());
            }
            if !self.registered {
                *self.slot.lock() = Some(cx.waker().clone());
                self.registered = true;
            }
            std::task::Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_registers_its_waker_only_on_its_first_poll_completes() {
        let slot = Arc::new(Mutex::new(None::<std::task::Waker>));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut reg = Registry::new();
        {
            let (slot, done) = (slot.clone(), done.clone());
            reg.method::<FindVpsByLease>(move |_ctx, _req| {
                let once = RegistersOnce {
                    slot: slot.clone(),
                    done: done.clone(),
                    registered: false,
                };
                async move {
                    once.await;
                    Ok::<_, tonic::Status>(FindVpsByLeaseResponse {
                        vps_id: "woken".into(),
                        ..Default::default()
                    })
                }
            })
            .unwrap();
        }
        let (d, _, mut rx) = setup(reg, 4);
        send(&d, &(), request(1, "FindVPSByLease", 60_000)).unwrap();
        // Let the request's task poll it once more (it does not register).
        tokio::task::yield_now().await;
        let waker = slot.lock().take().expect("registered on the first poll");
        done.store(true, Ordering::SeqCst);
        waker.wake();
        // Woken by that waker, not rescued by the deadline a minute on.
        let answer = tokio::time::timeout(Duration::from_secs(1), rx.recv())
            .await
            .expect("the wake-up of the first poll reached the request's task")
            .unwrap();
        let Some(pb::response::Result::Payload(bytes)) = answer.result else {
            panic!("expected the handler's answer, got {answer:?}");
        };
        assert_eq!(
            FindVpsByLeaseResponse::decode(bytes).unwrap().vps_id,
            "woken"
        );
    }

    /// The deadline passes, the handler ignores its cancellation and runs
    /// on through the grace period, and meanwhile the peer sends `Cancel`:
    /// it wants no answer, so none is sent, not even DEADLINE_EXCEEDED.
    #[tokio::test(start_paused = true)]
    async fn no_answer_follows_a_cancel_not_even_deadline_exceeded() {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, _req| async move {
            std::future::pending::<()>().await;
            Ok::<_, tonic::Status>(FindVpsByLeaseResponse::default())
        })
        .unwrap();
        let (d, _, mut rx) = setup(reg, 4);
        send(&d, &(), request(5, "FindVPSByLease", 50)).unwrap();
        // Past the deadline, inside the cancel grace.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(d.cancel(5), "still running through its grace period");
        d.idle().await;
        assert!(
            rx.try_recv().is_err(),
            "an answer was sent after the peer's Cancel"
        );
    }

    async fn eventually_idle_permits(permits: &Semaphore, n: usize) {
        while permits.available_permits() != n {
            tokio::task::yield_now().await;
        }
    }
}
