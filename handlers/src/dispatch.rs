//! Runs the requests that arrive on one stream on their handlers.
//!
//! Each request runs in its own task, under a process-wide concurrency
//! limit, with its deadline and a cancellation token that a `Cancel` frame,
//! the deadline or the end of the stream fires. A handler that ignores the
//! token is dropped after a short grace period.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gatemesh_proto::pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::{Caller, Context, Handlers, MAX_METHOD_NAME_LEN, RequestHandler};

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
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(300),
            cancel_grace: Duration::from_millis(250),
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
    /// caller gave up and no answer was sent).
    fn finished(&self, _method: &str, _outcome: Result<(), Code>, _elapsed: Duration) {}
    /// A request was refused before reaching a handler.
    fn rejected(&self, _method: &str, _code: Code) {}
}

impl std::fmt::Debug for dyn DispatchObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DispatchObserver")
    }
}

/// A stable lowercase name for a gRPC code, for metric labels and logs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Why a request was answered with an error before reaching a handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    BadMethodName,
    UnknownMethod,
    DuplicateId,
    Overloaded,
    Draining,
}

type Admitted = (
    Arc<dyn RequestHandler>,
    CancellationToken,
    tokio::sync::OwnedSemaphorePermit,
);

/// Incoming requests of one stream.
pub struct Dispatcher {
    registry: Arc<Handlers>,
    config: DispatchConfig,
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    idle: Notify,
}

#[derive(Default)]
struct State {
    running: HashMap<u64, CancellationToken>,
    draining: bool,
}

impl Dispatcher {
    /// `permits` is shared by every stream of the process: it bounds the
    /// handlers running at once.
    pub fn new(registry: Arc<Handlers>, config: DispatchConfig, permits: Arc<Semaphore>) -> Self {
        Self {
            registry,
            config,
            permits,
            state: Mutex::new(State::default()),
            idle: Notify::new(),
        }
    }

    /// Starts `request` from `caller`; its answer is handed to `reply`. A
    /// request that cannot run is answered at once with a typed status, and
    /// the reason is returned so the stream can count it.
    pub fn dispatch<R, Fut>(
        self: &Arc<Self>,
        caller: Caller,
        request: pb::Request,
        reply: R,
    ) -> Result<(), Rejection>
    where
        R: FnOnce(pb::Response) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let id = request.id;
        let (handler, token, permit) = match self.admit(&request) {
            Ok(admitted) => admitted,
            Err((rejection, code, message)) => {
                if let Some(observer) = &self.config.observer {
                    observer.rejected(&request.method, code);
                }
                tokio::spawn(reply(error_response(id, code, message)));
                return Err(rejection);
            }
        };
        let this = Arc::clone(self);
        let timeout = match request.timeout_ms {
            0 => this.config.default_timeout,
            ms => Duration::from_millis(ms.into()).min(this.config.max_timeout),
        };
        let started = Instant::now();
        let deadline = started + timeout;
        if let Some(observer) = &this.config.observer {
            observer.started(&request.method);
        }
        tokio::spawn(async move {
            let _permit = permit;
            let grace = this.config.cancel_grace;
            let ctx = Context::new(caller, deadline, token.clone());
            let method = request.method;
            let work = handler.handle(ctx, &method, request.payload);
            tokio::pin!(work);
            let result = tokio::select! {
                // A handler that returns as soon as it sees a cancel races
                // the cancel branch; the caller still wants no answer.
                result = &mut work => (!token.is_cancelled()).then(|| match result {
                    Ok(payload) => pb::response::Result::Payload(payload),
                    Err(e) => pb::response::Result::Status(e.into()),
                }),
                _ = tokio::time::sleep_until(deadline) => {
                    token.cancel();
                    let _ = tokio::time::timeout(grace, &mut work).await;
                    Some(pb::response::Result::Status(pb::Status::new(
                        Code::DeadlineExceeded,
                        format!("{method}: deadline of {} ms passed", timeout.as_millis()),
                    )))
                }
                _ = token.cancelled() => {
                    // The caller gave up: it wants no answer.
                    let _ = tokio::time::timeout(grace, &mut work).await;
                    None
                }
            };
            if let Some(observer) = &this.config.observer {
                let outcome = match &result {
                    Some(pb::response::Result::Payload(_)) => Ok(()),
                    Some(pb::response::Result::Status(status)) => Err(status.code()),
                    None => Err(Code::Cancelled),
                };
                observer.finished(&method, outcome, started.elapsed());
            }
            // Queue the answer before counting the request as finished, so
            // a drain that waits for idle never closes ahead of an answer.
            if let Some(result) = result {
                reply(pb::Response {
                    id,
                    result: Some(result),
                })
                .await;
            }
            this.finish(id);
        });
        Ok(())
    }

    /// Checks a request against the frame rules and the limits, and if it
    /// may run, records it as running.
    fn admit(&self, request: &pb::Request) -> Result<Admitted, (Rejection, Code, String)> {
        if request.method.is_empty() || request.method.len() > MAX_METHOD_NAME_LEN {
            return Err((
                Rejection::BadMethodName,
                Code::InvalidArgument,
                format!(
                    "method name must be 1 to {MAX_METHOD_NAME_LEN} bytes, got {}",
                    request.method.len()
                ),
            ));
        }
        let Some(handler) = self.registry.get(&request.method).cloned() else {
            return Err((
                Rejection::UnknownMethod,
                Code::Unimplemented,
                format!("method {:?} is not served here", request.method),
            ));
        };
        let mut state = self.state.lock();
        if state.draining {
            return Err((
                Rejection::Draining,
                Code::Unavailable,
                "draining: no new requests".into(),
            ));
        }
        if state.running.contains_key(&request.id) {
            return Err((
                Rejection::DuplicateId,
                Code::InvalidArgument,
                format!("request id {} is already in flight", request.id),
            ));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err((
                Rejection::Overloaded,
                Code::ResourceExhausted,
                "too many requests in flight".into(),
            ));
        };
        let token = CancellationToken::new();
        state.running.insert(request.id, token.clone());
        Ok((handler, token, permit))
    }

    fn finish(&self, id: u64) {
        let mut state = self.state.lock();
        state.running.remove(&id);
        if state.running.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// The caller of `id` gave up. Returns whether it was running.
    pub fn cancel(&self, id: u64) -> bool {
        match self.state.lock().running.get(&id) {
            Some(token) => {
                token.cancel();
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
        for token in state.running.values() {
            token.cancel();
        }
    }

    pub fn in_flight(&self) -> usize {
        self.state.lock().running.len()
    }

    /// Resolves once no request is running.
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

fn error_response(id: u64, code: Code, message: String) -> pb::Response {
    pb::Response {
        id,
        result: Some(pb::response::Result::Status(pb::Status::new(code, message))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HandlerError, InstanceRegistry, Registry};
    use bytes::Bytes;
    use gatemesh_proto::methods::FindVpsByLease;
    use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
    use prost::Message;
    use tokio::sync::mpsc;

    fn caller() -> Caller {
        Caller::new("gw", "")
    }

    fn setup(
        registry: InstanceRegistry,
        limit: usize,
    ) -> (
        Arc<Dispatcher>,
        mpsc::UnboundedSender<pb::Response>,
        mpsc::UnboundedReceiver<pb::Response>,
    ) {
        let d = Arc::new(Dispatcher::new(
            Arc::new(registry.into_handlers()),
            DispatchConfig::default(),
            Arc::new(Semaphore::new(limit)),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        (d, tx, rx)
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
        }
    }

    fn send(
        d: &Arc<Dispatcher>,
        tx: &mpsc::UnboundedSender<pb::Response>,
        req: pb::Request,
    ) -> Result<(), Rejection> {
        let tx = tx.clone();
        d.dispatch(caller(), req, move |r| async move {
            let _ = tx.send(r);
        })
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
            Ok(FindVpsByLeaseResponse {
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

    #[tokio::test]
    async fn undecodable_payload_is_invalid_argument() {
        let mut reg = Registry::new();
        reg.method::<FindVpsByLease>(|_ctx, _req| async move { Ok(Default::default()) })
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
                Err(HandlerError::cancelled("stopped"))
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
        drop(tx);
        assert!(rx.recv().await.is_none(), "a cancelled call gets no answer");
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
            let outcome = outcome.map_or_else(code_name, |()| "ok");
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
        let d = Arc::new(Dispatcher::new(
            Arc::new(observing(seen_tx).into_handlers()),
            DispatchConfig {
                observer: Some(observer.clone()),
                ..DispatchConfig::default()
            },
            Arc::new(Semaphore::new(8)),
        ));
        let (tx, mut rx) = mpsc::unbounded_channel();
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
                "finished FindVPSByLease deadline_exceeded",
                "started FindVPSByLease",
                "finished FindVPSByLease cancelled",
                "rejected Nope unimplemented",
            ]
        );
    }
}
