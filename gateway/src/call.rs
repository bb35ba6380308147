//! The call API: send a typed request to the instances that serve its method
//! and collect the answer(s) by a routing strategy.
//!
//! ```ignore
//! let answer = mesh.call::<FindVpsByLease>(request).first_valid().await?;
//! let replies = mesh.call::<FindVpsByLease>(request).env("prod").all().await?;
//! ```
//!
//! Every call ends by its deadline. A call that ends for any reason (an
//! answer won, the deadline passed, the caller dropped the future) removes
//! its pending entries and tells the instances still working to cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use gatemesh_engine::{Outcome, SendError};
use gatemesh_handlers::MAX_METHOD_NAME_LEN;
use gatemesh_handlers::dispatch::code_name;
use gatemesh_proto::{Catalogue, Method};
use prost::Message;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::instances::Targets;
pub use crate::route::{Route, Strategy};
use crate::stats::Stats;
use crate::trace::{CallTrace, Ended};
use crate::{CallError, Instances, Peer};

/// The longest deadline a call can have: `timeout_ms` on the wire is a u32.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(u32::MAX as u64);

/// A successful answer and who gave it.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    pub value: T,
    pub instance: Arc<str>,
    pub environment: Arc<str>,
    pub latency: Duration,
}

/// One instance's outcome in an `all` call.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub instance: Arc<str>,
    pub environment: Arc<str>,
    pub outcome: Result<T, CallError>,
    pub latency: Duration,
}

/// A handle on the connected instances for making calls; cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

struct MeshInner {
    instances: Arc<Instances>,
    stats: Arc<Stats>,
    default_timeout: Duration,
    max_message_bytes: usize,
    next: AtomicUsize,
    /// The methods this gateway knows: validity and idempotence by name.
    catalogue: Arc<Catalogue>,
}

impl Mesh {
    pub(crate) fn new(
        instances: Arc<Instances>,
        stats: Arc<Stats>,
        default_timeout: Duration,
        max_message_bytes: usize,
        catalogue: Arc<Catalogue>,
    ) -> Self {
        Self {
            inner: Arc::new(MeshInner {
                instances,
                stats,
                default_timeout,
                max_message_bytes,
                next: AtomicUsize::new(0),
                catalogue,
            }),
        }
    }

    /// Starts building a typed call of `M`.
    pub fn call<M: gatemesh_proto::InstanceMethod>(&self, request: M::Request) -> Call<'_, M> {
        Call {
            mesh: self,
            request,
            route: Route::default(),
        }
    }

    pub fn instances(&self) -> &Arc<Instances> {
        &self.inner.instances
    }

    /// The methods this gateway knows (gatemesh's and those it was given).
    pub fn catalogue(&self) -> &Arc<Catalogue> {
        &self.inner.catalogue
    }

    /// A call on raw bytes, for callers that know the method only by name
    /// (the external API). `first_valid` uses the catalogue's validity check
    /// where the method is known, and takes any success otherwise.
    pub async fn call_raw(
        &self,
        method: &str,
        payload: Bytes,
        route: &Route,
    ) -> Result<Vec<Reply<Bytes>>, CallError> {
        let is_valid = self.inner.catalogue.get(method).map(|m| m.is_valid);
        let started = Instant::now();
        let trace = &mut CallTrace::new(method, route.strategy, route);
        let result = match route.strategy {
            Strategy::All => self.all(method, payload, route, started, Ok, trace).await,
            // A call to one named instance returns that instance's answer,
            // "not mine" included: there is no one else to ask.
            Strategy::FirstValid | Strategy::One if route.instance.is_some() => self
                .one(method, payload, route, started, Ok, trace)
                .await
                .map(|a| vec![a.into_reply()]),
            Strategy::One => self
                .one(method, payload, route, started, Ok, trace)
                .await
                .map(|a| vec![a.into_reply()]),
            Strategy::FirstValid => self
                .first_valid(
                    method,
                    payload,
                    route,
                    started,
                    |bytes: Bytes| match is_valid {
                        Some(valid) if !valid(&bytes) => Verdict::NotMine,
                        _ => Verdict::Valid(bytes),
                    },
                    trace,
                )
                .await
                .map(|a| vec![a.into_reply()]),
        };
        self.record(method, route.strategy, started, &result, trace);
        result
    }

    /// Counts a finished call and logs it when it failed: `debug` for
    /// outcomes that are routine at scale (not found, nobody serves it),
    /// `warn` for real failures. Anyone with the secret can fail calls at
    /// will, so both lines are rate-limited (`limited!`); every call is
    /// counted in `calls_total` all the same.
    fn record<T>(
        &self,
        method: &str,
        strategy: Strategy,
        started: Instant,
        result: &Result<T, CallError>,
        trace: &CallTrace,
    ) {
        trace.finish(result);
        let code = result
            .as_ref()
            .err()
            .map_or(tonic::Code::Ok, CallError::code);
        self.inner
            .stats
            .record_call(method, strategy.label(), code, started.elapsed());
        if let Err(e) = result {
            let strategy = strategy.label();
            if matches!(
                e,
                CallError::NotFound { .. } | CallError::NoResponders { .. }
            ) {
                gatemesh_runtime::limited!(tracing::Level::DEBUG,
                    method, strategy, code = code_name(code), error = %e, "call failed");
            } else {
                gatemesh_runtime::limited!(tracing::Level::WARN,
                    method, strategy, code = code_name(code), error = %e, "call failed");
            }
        }
    }

    /// The call's deadline, counted from `started` (the one clock read a
    /// call makes before it sends), and its length.
    fn deadline(&self, route: &Route, started: Instant) -> (Instant, Duration) {
        // Saturates at what the wire can carry (`timeout_ms` is a u32).
        let timeout = route
            .timeout
            .unwrap_or(self.inner.default_timeout)
            .min(MAX_TIMEOUT);
        (started + timeout, timeout)
    }

    /// The instances a call goes to, or why there are none.
    fn targets(&self, method: &str, payload: &Bytes, route: &Route) -> Result<Targets, CallError> {
        if method.is_empty() || method.len() > MAX_METHOD_NAME_LEN {
            return Err(CallError::InvalidArgument(format!(
                "method name must be 1 to {MAX_METHOD_NAME_LEN} bytes"
            )));
        }
        if payload.len() > self.inner.max_message_bytes {
            return Err(CallError::InvalidArgument(format!(
                "request of {} bytes exceeds the limit of {} bytes",
                payload.len(),
                self.inner.max_message_bytes
            )));
        }
        let instances = &self.inner.instances;
        if let Some(environment) = &route.environment
            && !route.within.allows(environment)
        {
            return Err(CallError::OutsideScope(format!(
                "environment {environment:?} is outside this caller's environments ({})",
                route.within
            )));
        }
        if let Some(id) = &route.instance {
            let peer = instances
                .for_call(id)
                .map_err(|_| CallError::Draining)?
                .ok_or_else(|| CallError::NotConnected(id.clone()))?;
            if !route.within.allows(peer.info.environment()) {
                return Err(CallError::InstanceOutsideScope {
                    id: id.clone(),
                    why: format!(
                        "instance {id:?} is of environment {:?}, outside this caller's \
                         environments ({})",
                        peer.info.environment(),
                        route.within
                    ),
                });
            }
            if !peer.info.methods.contains(method) {
                return Err(CallError::NotServed {
                    instance: id.clone(),
                    method: method.to_string(),
                });
            }
            if route
                .environment
                .as_deref()
                .is_some_and(|e| e != &**peer.info.environment())
                || !peer.open()
            {
                return Err(CallError::NoResponders {
                    method: method.to_string(),
                    environment: route.environment.clone(),
                });
            }
            return Ok(smallvec::smallvec![peer]);
        }
        let peers = instances
            .routable(method, route.environment.as_deref(), &route.within)
            .map_err(|_| CallError::Draining)?;
        if peers.is_empty() {
            if self.inner.catalogue.get(method).is_none()
                && !instances.anyone_serves(method, &route.within)
            {
                return Err(CallError::UnknownMethod(method.to_string()));
            }
            return Err(CallError::NoResponders {
                method: method.to_string(),
                environment: route.environment.clone(),
            });
        }
        Ok(peers)
    }

    pub(crate) async fn first_valid<T>(
        &self,
        method: &str,
        payload: Bytes,
        route: &Route,
        started: Instant,
        accept: impl Fn(Bytes) -> Verdict<T>,
        trace: &mut CallTrace,
    ) -> Result<Answer<T>, CallError> {
        let peers = self.targets(method, &payload, route)?;
        let (deadline, timeout) = self.deadline(route, started);
        let asked = peers.len();
        let mut errors = Vec::new();
        let mut running = FuturesUnordered::new();
        for peer in peers {
            match Outstanding::start(peer, method, payload.clone(), started, deadline, trace) {
                Ok(call) => running.push(call),
                Err(e) => errors.push(e),
            }
        }
        let mut not_mine = 0;
        // One timer for the whole call, however many answers it waits for.
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        loop {
            let next = tokio::select! {
                biased;
                next = running.next() => match next {
                    None => break,
                    Some(next) => next,
                },
                _ = &mut expired => return Err(CallError::DeadlineExceeded(timeout)),
            };
            let (peer, latency, outcome) = next;
            match outcome.map(&accept) {
                Ok(Verdict::Valid(value)) => {
                    trace.mark(&peer, Ended::Answered("won"));
                    // Dropping `running` cancels the calls still out.
                    return Ok(Answer {
                        value,
                        instance: peer.info.id().clone(),
                        environment: peer.info.environment().clone(),
                        latency,
                    });
                }
                Ok(Verdict::NotMine) => {
                    trace.mark(&peer, Ended::Answered("not_mine"));
                    not_mine += 1
                }
                Ok(Verdict::Bad(reason)) => {
                    trace.mark(&peer, Ended::Failed(tonic::Code::Internal));
                    errors.push(CallError::BadAnswer {
                        instance: peer.info.id().clone(),
                        reason,
                    })
                }
                Err(e) => errors.push(e),
            }
        }
        // "Not found" only when every instance asked said "not mine": when
        // one failed, it may have been the holder, and the caller must hear so.
        if errors.is_empty() {
            Err(CallError::NotFound { asked })
        } else if not_mine == 0 && errors.len() == 1 {
            Err(errors.remove(0))
        } else {
            Err(CallError::NoValidAnswer {
                asked,
                not_mine,
                failed: errors,
            })
        }
    }

    pub(crate) async fn all<T>(
        &self,
        method: &str,
        payload: Bytes,
        route: &Route,
        started: Instant,
        decode: impl Fn(Bytes) -> Result<T, String>,
        trace: &mut CallTrace,
    ) -> Result<Vec<Reply<T>>, CallError> {
        let mut peers = self.targets(method, &payload, route)?;
        // Replies come back in a stable order, whatever the map's order.
        peers.sort_by(|a, b| a.id().cmp(b.id()));
        let (deadline, timeout) = self.deadline(route, started);
        let mut replies: Vec<Option<Reply<T>>> = Vec::with_capacity(peers.len());
        let mut running = FuturesUnordered::new();
        for (index, peer) in peers.iter().enumerate() {
            match Outstanding::start(
                peer.clone(),
                method,
                payload.clone(),
                started,
                deadline,
                trace,
            ) {
                Ok(call) => {
                    replies.push(None);
                    running.push(async move { (index, call.await) });
                }
                Err(e) => replies.push(Some(Reply::of(peer, Err(e), Duration::ZERO))),
            }
        }
        let expired = tokio::time::sleep_until(deadline);
        tokio::pin!(expired);
        while let Some((index, (peer, latency, outcome))) = tokio::select! {
            biased;
            next = running.next() => next,
            _ = &mut expired => None,
        } {
            if outcome.is_ok() {
                trace.mark(&peer, Ended::Answered("answered"));
            }
            let outcome = outcome.and_then(|bytes| {
                decode(bytes).map_err(|reason| CallError::BadAnswer {
                    instance: peer.info.id().clone(),
                    reason,
                })
            });
            replies[index] = Some(Reply::of(&peer, outcome, latency));
        }
        drop(running);
        Ok(replies
            .into_iter()
            .zip(&peers)
            .map(|(reply, peer)| {
                reply.unwrap_or_else(|| {
                    Reply::of(peer, Err(CallError::DeadlineExceeded(timeout)), timeout)
                })
            })
            .collect())
    }

    pub(crate) async fn one<T>(
        &self,
        method: &str,
        mut payload: Bytes,
        route: &Route,
        started: Instant,
        decode: impl Fn(Bytes) -> Result<T, String>,
        trace: &mut CallTrace,
    ) -> Result<Answer<T>, CallError> {
        let mut candidates = self.targets(method, &payload, route)?;
        let (deadline, timeout) = self.deadline(route, started);
        let idempotent = self
            .inner
            .catalogue
            .get(method)
            .is_some_and(|m| m.idempotent);
        let mut errors = Vec::new();
        while !candidates.is_empty() {
            let peer = candidates.swap_remove(self.pick(&candidates));
            // A retry tells its handler only the time that is left.
            let sent = if errors.is_empty() {
                started
            } else {
                Instant::now()
            };
            // The last candidate takes the payload itself: a clone of a
            // payload not yet shared costs an allocation.
            let payload = if candidates.is_empty() {
                std::mem::take(&mut payload)
            } else {
                payload.clone()
            };
            let call = match Outstanding::start(peer, method, payload, sent, deadline, trace) {
                Ok(call) => call,
                // Never written: safe to send elsewhere.
                Err(e) if e.is_retryable(idempotent) => {
                    errors.push(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let (peer, latency, outcome) = tokio::time::timeout_at(deadline, call)
                .await
                .map_err(|_| CallError::DeadlineExceeded(timeout))?;
            match outcome {
                Ok(bytes) => {
                    trace.mark(&peer, Ended::Answered("answered"));
                    let value = decode(bytes).map_err(|reason| CallError::BadAnswer {
                        instance: peer.info.id().clone(),
                        reason,
                    })?;
                    return Ok(Answer {
                        value,
                        instance: peer.info.id().clone(),
                        environment: peer.info.environment().clone(),
                        latency,
                    });
                }
                // Refused before running, or sent but the method may run
                // twice: ask another.
                Err(e) if e.is_retryable(idempotent) => errors.push(e),
                Err(e) => return Err(e),
            }
        }
        Err(match errors.len() {
            1 => errors.remove(0),
            _ => CallError::AllFailed(errors),
        })
    }

    /// The least busy candidate; ties go round robin.
    fn pick(&self, candidates: &[Arc<Peer>]) -> usize {
        if candidates.len() == 1 {
            return 0;
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        (0..candidates.len())
            .map(|i| (start + i) % candidates.len())
            .min_by_key(|&i| candidates[i].in_flight())
            .unwrap_or(0)
    }
}

/// What `first_valid` makes of a successful answer.
pub(crate) enum Verdict<T> {
    Valid(T),
    /// A well-formed "not mine".
    NotMine,
    /// Undecodable.
    Bad(String),
}

impl<T> Answer<T> {
    fn into_reply(self) -> Reply<T> {
        Reply {
            instance: self.instance,
            environment: self.environment,
            outcome: Ok(self.value),
            latency: self.latency,
        }
    }
}

impl<T> Reply<T> {
    fn of(peer: &Peer, outcome: Result<T, CallError>, latency: Duration) -> Self {
        Self {
            instance: peer.info.id().clone(),
            environment: peer.info.environment().clone(),
            outcome,
            latency,
        }
    }
}

/// One request sent to one instance, awaiting its answer. Dropped before
/// the answer came, it removes its pending entry and sends a cancel.
struct Outstanding {
    peer: Arc<Peer>,
    id: u64,
    rx: oneshot::Receiver<Outcome>,
    sent: Instant,
    answered: bool,
    /// The request's span ([`tracing::Span::none`] unless spans are exported).
    span: tracing::Span,
}

impl Outstanding {
    fn start(
        peer: Arc<Peer>,
        method: &str,
        payload: Bytes,
        sent: Instant,
        deadline: Instant,
        trace: &mut CallTrace,
    ) -> Result<Self, CallError> {
        // Rounded up, as gRPC does: rounded down, the handler's deadline
        // fell up to 1 ms before the caller's, so it could give up on a
        // caller still waiting for it. Counted from the call's start: the
        // time spent since is the caller's, not the handler's, to lose.
        let left = deadline
            .saturating_duration_since(sent)
            .as_nanos()
            .div_ceil(1_000_000);
        let (span, metadata) = trace.request(&peer, method);
        let timeout_ms = u32::try_from(left).unwrap_or(u32::MAX).max(1);
        match peer.conn.start_call(method, payload, timeout_ms, metadata) {
            Ok((id, rx)) => Ok(Self {
                peer,
                id,
                rx,
                sent,
                answered: false,
                span,
            }),
            Err(e) => {
                let error = match e {
                    SendError::Full => CallError::Overloaded(peer.id().clone()),
                    SendError::Closed => CallError::Unreachable(peer.id().clone()),
                };
                crate::trace::request_ended(&span, Ended::NotSent(error.code()));
                Err(error)
            }
        }
    }
}

/// Resolves with the instance's outcome, once: who answered, how long
/// after sending, and what. A future of its own rather than an `async fn`,
/// so a call's future holds one `Outstanding`, not a copy in a second
/// state machine.
impl Future for Outstanding {
    type Output = (Arc<Peer>, Duration, Result<Bytes, CallError>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let received = std::task::ready!(std::pin::Pin::new(&mut self.rx).poll(cx));
        self.answered = true;
        let latency = self.sent.elapsed();
        let peer = self.peer.clone();
        let outcome = match received {
            Ok(Ok(bytes)) => {
                peer.calls_served.fetch_add(1, Ordering::Relaxed);
                Ok(bytes)
            }
            Ok(Err(status)) => {
                peer.errors.fetch_add(1, Ordering::Relaxed);
                Err(CallError::remote(peer.id().clone(), status))
            }
            Err(_) => Err(CallError::Disconnected(peer.id().clone())),
        };
        if let Err(e) = &outcome {
            crate::trace::request_ended(&self.span, Ended::Failed(e.code()));
        }
        std::task::Poll::Ready((peer, latency, outcome))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if !self.answered {
            crate::trace::request_ended(&self.span, Ended::Cancelled);
        }
        if !self.answered {
            // Told to cancel only if its answer does not come first.
            self.peer.conn.abandon(self.id);
        }
    }
}

/// A typed call being built; finish it with a strategy.
pub struct Call<'m, M: Method> {
    mesh: &'m Mesh,
    request: M::Request,
    route: Route,
}

fn decode<M: Method>(bytes: Bytes) -> Result<M::Response, String> {
    M::Response::decode(bytes).map_err(|e| e.to_string())
}

impl<'m, M: Method> Call<'m, M> {
    /// Deadline of the whole call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.route.timeout = Some(timeout);
        self
    }

    /// Only instances with this environment label.
    pub fn env(mut self, environment: impl Into<String>) -> Self {
        self.route.environment = Some(environment.into());
        self
    }

    /// Sends `key: value` with the request, for the handler's
    /// `ctx.metadata()`; refused at once when it breaks the metadata rules.
    pub fn metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, gatemesh_handlers::MetadataError> {
        self.route.metadata.insert(key, value)?;
        Ok(self)
    }

    /// Sends these pairs with the request (replacing any set before).
    pub fn with_metadata(mut self, metadata: gatemesh_handlers::Metadata) -> Self {
        self.route.metadata = metadata;
        self
    }

    fn payload(&self) -> Bytes {
        self.request.encode_to_vec().into()
    }

    /// Every serving instance is asked; the first answer that
    /// [`Method::is_valid`] accepts wins and the others are cancelled.
    /// When all have answered and none validly: `NotFound`, at once.
    pub async fn first_valid(self) -> Result<Answer<M::Response>, CallError> {
        let started = Instant::now();
        let trace = &mut CallTrace::new(M::NAME, Strategy::FirstValid, &self.route);
        let accept = |bytes| match M::Response::decode(bytes) {
            Ok(r) if M::is_valid(&r) => Verdict::Valid(r),
            Ok(_) => Verdict::NotMine,
            Err(e) => Verdict::Bad(e.to_string()),
        };
        let result = self
            .mesh
            .first_valid(M::NAME, self.payload(), &self.route, started, accept, trace)
            .await;
        self.mesh
            .record(M::NAME, Strategy::FirstValid, started, &result, trace);
        result
    }

    /// Every serving instance is asked; one reply each, sorted by instance id,
    /// with those that did not answer by the deadline marked so.
    pub async fn all(self) -> Result<Vec<Reply<M::Response>>, CallError> {
        let started = Instant::now();
        let trace = &mut CallTrace::new(M::NAME, Strategy::All, &self.route);
        let result = self
            .mesh
            .all(
                M::NAME,
                self.payload(),
                &self.route,
                started,
                decode::<M>,
                trace,
            )
            .await;
        self.mesh
            .record(M::NAME, Strategy::All, started, &result, trace);
        result
    }

    /// One instance, the least busy, is asked; if it disconnects before
    /// answering, another is.
    pub async fn one(self) -> Result<Answer<M::Response>, CallError> {
        let started = Instant::now();
        let trace = &mut CallTrace::new(M::NAME, Strategy::One, &self.route);
        let result = self
            .mesh
            .one(
                M::NAME,
                self.payload(),
                &self.route,
                started,
                decode::<M>,
                trace,
            )
            .await;
        self.mesh
            .record(M::NAME, Strategy::One, started, &result, trace);
        result
    }

    /// Exactly this instance is asked.
    ///
    /// A plain function returning [`Self::one`]'s future rather than an
    /// `async fn` around it: the call's future is not nested in a second
    /// one (a smaller future is a cheaper allocation for callers that box
    /// or spawn it).
    pub fn to(
        mut self,
        instance: impl Into<String>,
    ) -> impl Future<Output = Result<Answer<M::Response>, CallError>> + 'm {
        self.route.instance = Some(instance.into());
        self.one()
    }
}
