//! `RegisterGateway`: the handshake, then one loop per stream that reads the
//! instance's frames, pings it, and cleans up when the stream ends.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::{FutureExt as _, Stream};
use gatemesh_handlers::dispatch::{Outbox, Rejection};
use gatemesh_handlers::{Completion, Dispatcher, MAX_METHOD_NAME_LEN};
use gatemesh_proto::pb::gateway_message::Kind;
use gatemesh_proto::pb::instance_message::Kind as InKind;
use gatemesh_proto::{PROTOCOL_VERSION, pb};
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::{Request, Response, Status, Streaming};

use crate::peer::PeerInfo;
use crate::state::Shared;
use crate::stats::Stats;
use crate::{Disconnect, Peer, auth, tls};

/// How long an instance has to send hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Protocol violations tolerated on one stream before it is closed.
const MAX_VIOLATIONS: u32 = 16;
/// Frames read in one go when they are already there, before the loop
/// turns through the close and the ticker again.
const FRAME_BATCH: usize = 32;
/// How long an abandoned call's answer may take before the instance is
/// told to cancel it: one to two of these periods, each rounded up to the
/// timer's millisecond, so 1 to 4 ms. Long enough for an answer already
/// on the wire, short beside any handler worth cancelling.
const CANCEL_GRACE: Duration = Duration::from_millis(1);
const MAX_ID_LEN: usize = 128;
const MAX_LABEL_LEN: usize = 64;
const MAX_METHODS: usize = 1024;

pub struct GatewayService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    type RegisterGatewayStream = Outbound;

    async fn register_gateway(
        &self,
        request: Request<Streaming<pb::InstanceMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let shared = &self.shared;
        let remote_addr = request.remote_addr();
        let mtls = shared.config.tls.as_ref().is_some_and(|t| t.is_mtls());
        let peer_certs = mtls.then(|| request.peer_certs()).flatten();
        let secret_optional = shared.config.secret_optional_with_cert();
        if let Err(status) =
            auth::check_request(&request, &shared.config.api_secret, secret_optional)
        {
            Stats::bump(&shared.stats.refused_streams);
            tracing::warn!(
                remote = remote_addr.map(tracing::field::display),
                reason = status.message(),
                "stream refused"
            );
            return Err(status);
        }
        if shared.is_draining() {
            return Err(Status::unavailable("gateway is draining"));
        }
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10 s")),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before hello")),
            Ok(Ok(Some(pb::InstanceMessage {
                kind: Some(InKind::Hello(hello)),
            }))) => hello,
            Ok(Ok(Some(_))) => {
                Stats::bump(&shared.stats.refused_streams);
                return Err(Status::invalid_argument("the first message must be hello"));
            }
        };
        if let Err(status) = validate_hello(&hello) {
            Stats::bump(&shared.stats.refused_streams);
            tracing::warn!(
                remote = remote_addr.map(tracing::field::display),
                reason = status.message(),
                "hello refused"
            );
            return Err(status);
        }
        if mtls && let Err(status) = tls::check_identity(peer_certs.as_deref(), &hello.instance_id)
        {
            Stats::bump(&shared.stats.refused_streams);
            tracing::warn!(
                remote = remote_addr.map(tracing::field::display),
                reason = status.message(),
                "identity refused"
            );
            return Err(status);
        }

        let (tx, rx) = mpsc::channel(shared.config.queue_capacity);
        let info = PeerInfo {
            id: hello.instance_id.into(),
            environment: hello.environment.into(),
            version: hello.version,
            methods: hello.methods.into_iter().collect(),
            remote_addr,
            connected_since: SystemTime::now(),
        };
        let dispatcher = Arc::new(Dispatcher::new(
            shared.registry.clone(),
            shared.dispatch.clone(),
            shared.permits.clone(),
            Outbox::new(tx.clone(), |response| pb::GatewayMessage {
                kind: Some(Kind::Response(response)),
            }),
        ));
        let peer = Arc::new(Peer::new(
            shared.next_conn_id(),
            info,
            tx,
            dispatcher,
            shared.config.stuck_timeout(),
        ));
        let welcome = pb::Welcome {
            gateway_id: shared.gateway_id.clone(),
            heartbeat_interval_ms: shared.config.heartbeat_interval_ms as u32,
            protocol_version: PROTOCOL_VERSION,
            max_missed_heartbeats: shared.config.max_missed_heartbeats,
            methods: shared.registry.methods(),
            max_message_bytes: shared.config.max_message_bytes as u64,
        };
        // The queue is new and empty, so this cannot fail.
        let _ = peer.send(Kind::Welcome(welcome));
        let outbound = Outbound::new(rx, peer.clone());

        match shared.instances.insert(peer.clone()) {
            Err(_closed) => return Err(Status::unavailable("gateway is draining")),
            Ok(Some(old)) => {
                Stats::bump(&shared.stats.replaced);
                tracing::info!(instance = %old.id(), old_conn = old.conn_id, new_conn = peer.conn_id,
                    "instance re-registered; closing its older stream");
                old.close(Disconnect::Replaced);
            }
            Ok(None) => {}
        }
        Stats::bump(&shared.stats.registrations);
        tracing::info!(
            instance = %peer.info.id,
            environment = %peer.info.environment,
            version = %peer.info.version,
            methods = %sorted(&peer.info.methods).join(","),
            remote = remote_addr.map(tracing::field::display),
            conn = peer.conn_id,
            "instance registered"
        );
        let shared = shared.clone();
        shared.clone().tasks.spawn(async move {
            let ended = read_loop(&shared, &peer, inbound).await;
            let removed = shared.instances.remove(&peer);
            // A close from elsewhere (drain, replacement, stuck) came
            // first and is the reason; otherwise the loop's own.
            peer.close(ended);
            let reason = peer.close_reason().expect("closed just now");
            peer.pending.close(pb::Status::new(
                tonic::Code::Unavailable,
                "instance disconnected",
            ));
            peer.dispatcher.close();
            shared.stats.record_disconnect(&reason);
            tracing::info!(instance = %peer.info.id, conn = peer.conn_id, class = reason.label(),
                %reason, removed, "instance disconnected");
        });
        Ok(Response::new(outbound))
    }
}

fn sorted(methods: &foldhash::HashSet<String>) -> Vec<&str> {
    let mut methods: Vec<&str> = methods.iter().map(String::as_str).collect();
    methods.sort_unstable();
    methods
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@/".contains(&b))
}

fn validate_hello(hello: &pb::Hello) -> Result<(), Status> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "unsupported protocol version {}; this gateway speaks {PROTOCOL_VERSION}",
            hello.protocol_version
        )));
    }
    if !valid_name(&hello.instance_id, MAX_ID_LEN) {
        return Err(Status::invalid_argument(format!(
            "instance_id must be 1 to {MAX_ID_LEN} characters of [A-Za-z0-9._-:@/]"
        )));
    }
    if !valid_name(&hello.environment, MAX_LABEL_LEN) {
        return Err(Status::invalid_argument(format!(
            "environment must be 1 to {MAX_LABEL_LEN} characters of [A-Za-z0-9._-:@/]"
        )));
    }
    if hello.version.len() > MAX_ID_LEN {
        return Err(Status::invalid_argument("version is too long"));
    }
    if hello.methods.len() > MAX_METHODS {
        return Err(Status::invalid_argument(format!(
            "more than {MAX_METHODS} methods"
        )));
    }
    if let Some(bad) = hello
        .methods
        .iter()
        .find(|m| m.is_empty() || m.len() > MAX_METHOD_NAME_LEN)
    {
        return Err(Status::invalid_argument(format!(
            "method name {bad:?} must be 1 to {MAX_METHOD_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

/// Reads frames until the stream ends; returns why it ended.
async fn read_loop(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    mut inbound: Streaming<pb::InstanceMessage>,
) -> Disconnect {
    let interval = shared.config.heartbeat_interval();
    let liveness = shared.config.liveness_timeout();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    let mut violations = 0u32;
    // Made once: a wait made afresh each turn would register and unregister
    // with the token, under its lock, for every frame.
    let closed = peer.closed_token().cancelled();
    tokio::pin!(closed);
    // Abandoned calls are told to cancel one or two grace periods later,
    // if their answer has not come by then.
    let abandoned = peer.abandoned.notified();
    tokio::pin!(abandoned);
    let cancels = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(cancels);
    let mut cancels_armed = false;
    loop {
        tokio::select! {
            // Frames last: a stream that always has frames buffered still
            // lets its cancels, pings and liveness through once per batch.
            biased;
            _ = &mut closed => {
                return peer.close_reason().unwrap_or(Disconnect::ConnectionLost);
            }
            _ = &mut abandoned => {
                abandoned.set(peer.abandoned.notified());
                if !cancels_armed {
                    cancels.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                    cancels_armed = true;
                }
            }
            _ = &mut cancels, if cancels_armed => {
                cancels_armed = peer.send_due_cancels();
                if cancels_armed {
                    cancels.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                }
            }
            _ = ticker.tick() => {
                peer.note_frames();
                if peer.silent_for() >= liveness {
                    return Disconnect::HeartbeatTimeout(liveness);
                }
                if peer.is_stuck() {
                    return Disconnect::Stuck;
                }
                nonce += 1;
                let _ = peer.send(Kind::Ping(pb::Ping { nonce }));
            }
            frame = inbound.message() => {
                // Frames already here are read as one bounded batch,
                // without a turn through the close and the ticker per frame.
                let mut next = Some(frame);
                let mut batch = 0;
                while let Some(frame) = next.take() {
                    match frame {
                        Ok(Some(frame)) => {
                            peer.touch();
                            if let Err(violation) = handle_frame(shared, peer, frame) {
                                Stats::bump(&shared.stats.violations);
                                violations += 1;
                                tracing::warn!(instance = %peer.info.id, conn = peer.conn_id, violation, "protocol violation");
                                if violations >= MAX_VIOLATIONS {
                                    return Disconnect::Violations { count: violations, last: violation };
                                }
                            }
                        }
                        Ok(None) => return Disconnect::ClosedByInstance,
                        // An oversized frame: say so before the stream ends.
                        Err(status) if status.code() == tonic::Code::OutOfRange => {
                            return Disconnect::FrameTooLarge(status.message().to_string());
                        }
                        Err(status) => {
                            return Disconnect::StreamError { code: status.code(), message: status.message().to_string() };
                        }
                    }
                    batch += 1;
                    if batch < FRAME_BATCH && !peer.is_closed() {
                        next = inbound.message().now_or_never();
                    }
                }
            }
        }
    }
}

/// Acts on one frame from the instance; `Err` names a protocol violation.
fn handle_frame(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    frame: pb::InstanceMessage,
) -> Result<(), String> {
    let max = shared.config.max_message_bytes;
    match frame.kind {
        None => Err("empty frame".into()),
        Some(InKind::Hello(_)) => Err("hello sent twice".into()),
        Some(InKind::Response(response)) => {
            let outcome = match response.result {
                Some(pb::response::Result::Payload(p)) if p.len() > max => Err(pb::Status::new(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "answer of {} bytes exceeds the limit of {max} bytes",
                        p.len()
                    ),
                )),
                Some(pb::response::Result::Payload(p)) => Ok(p),
                Some(pb::response::Result::Status(s)) => Err(s),
                None => Err(pb::Status::new(
                    tonic::Code::Internal,
                    "response with neither payload nor status",
                )),
            };
            match peer.pending.complete(response.id, outcome) {
                Completion::Delivered => Ok(()),
                Completion::Late => {
                    Stats::bump(&shared.stats.late_responses);
                    Ok(())
                }
                Completion::Unknown => Err(format!(
                    "response for id {} that was never sent",
                    response.id
                )),
            }
        }
        Some(InKind::Request(request)) => {
            let id = request.id;
            let refused = if request.payload.len() > max {
                let message = format!(
                    "request of {} bytes exceeds the limit of {max} bytes",
                    request.payload.len()
                );
                Err(peer
                    .dispatcher
                    .refuse(id, &request.method, Rejection::TooLarge, message))
            } else {
                peer.dispatcher.dispatch(peer.caller.clone(), request)
            };
            match refused {
                Ok(()) => Ok(()),
                // A refusal the peer's full queue could not take: it floods
                // and does not read.
                Err(refused) if refused.rejection.is_violation() || !refused.answered => {
                    Err(format!(
                        "request {id}: {:?} (answered: {})",
                        refused.rejection, refused.answered
                    ))
                }
                Err(_) => Ok(()),
            }
        }
        // A cancel for an id that is not running is dropped and counted,
        // not a violation: the request may just have ended. It only ever
        // reaches this stream's requests.
        Some(InKind::Cancel(cancel)) if cancel.id == 0 => Err("cancel for id 0".into()),
        Some(InKind::Cancel(cancel)) => {
            if !peer.dispatcher.cancel(cancel.id) {
                Stats::bump(&shared.stats.stray_cancels);
            }
            Ok(())
        }
        Some(InKind::Ping(ping)) => {
            let _ = peer.send(Kind::Pong(pb::Pong { nonce: ping.nonce }));
            Ok(())
        }
        Some(InKind::Pong(_)) => Ok(()),
        Some(InKind::Goodbye(goodbye)) => {
            peer.set_draining();
            tracing::info!(instance = %peer.info.id, reason = %goodbye.reason, "instance draining");
            Ok(())
        }
    }
}

/// The gateway -> instance half of a stream: the peer's queue, ended when
/// the peer is closed. On a graceful close the frames already queued go
/// first (answers of a drain), then the `GoAway`, then the status the
/// stream ended with when it ended for cause.
pub struct Outbound {
    rx: mpsc::Receiver<pb::GatewayMessage>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set once the peer is closed: why, for the last frames.
    closing: Option<Disconnect>,
    peer: Arc<Peer>,
    done: bool,
}

impl Outbound {
    fn new(rx: mpsc::Receiver<pb::GatewayMessage>, peer: Arc<Peer>) -> Self {
        Self {
            rx,
            closed: Box::pin(peer.closed_token().clone().cancelled_owned()),
            closing: None,
            peer,
            done: false,
        }
    }
}

impl Stream for Outbound {
    type Item = Result<pb::GatewayMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.closing.is_none() {
            // While open, the queue is read first and the close is polled
            // (which registers with the token, under its lock) only when
            // the queue is empty; the atomic check keeps a close for cause
            // from sending the backlog.
            if !self.peer.is_closed()
                && let Poll::Ready(Some(frame)) = self.rx.poll_recv(cx)
            {
                return Poll::Ready(Some(Ok(frame)));
            }
            if !self.peer.is_closed() && self.closed.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.closing = Some(
                self.peer
                    .close_reason()
                    .unwrap_or(Disconnect::ConnectionLost),
            );
        }
        let flushes = self.closing.as_ref().is_some_and(Disconnect::flushes);
        if flushes && let Ok(frame) = self.rx.try_recv() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(goaway) = self.peer.take_goodbye() {
            return Poll::Ready(Some(Ok(pb::GatewayMessage {
                kind: Some(Kind::GoAway(goaway)),
            })));
        }
        self.done = true;
        Poll::Ready(
            self.closing
                .as_ref()
                .and_then(Disconnect::end_status)
                .map(Err),
        )
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // tonic drops the response stream when the connection goes away;
        // make sure the read loop hears of it even if the inbound half lingers.
        self.peer.close(Disconnect::ConnectionLost);
    }
}

#[cfg(test)]
mod tests {

    use futures_util::StreamExt;

    use super::*;

    fn peer(tx: mpsc::Sender<pb::GatewayMessage>) -> Arc<Peer> {
        crate::peer::detached("i", tx)
    }

    fn pong(nonce: u64) -> Kind {
        Kind::Pong(pb::Pong { nonce })
    }

    #[tokio::test]
    async fn a_graceful_close_sends_what_was_queued_then_the_goaway() {
        let (tx, rx) = mpsc::channel(8);
        let peer = peer(tx);
        let outbound = Outbound::new(rx, peer.clone());
        for nonce in 1..=3 {
            peer.send(pong(nonce)).unwrap();
        }
        peer.close(Disconnect::Shutdown {
            reconnect_after_ms: 7,
        });
        let frames: Vec<_> = outbound.map(|f| f.unwrap().kind.unwrap()).collect().await;
        assert_eq!(
            frames,
            [
                pong(1),
                pong(2),
                pong(3),
                Kind::GoAway(pb::GoAway {
                    reason: "gateway shutting down".into(),
                    reconnect_after_ms: 7,
                }),
            ]
        );
    }

    #[tokio::test]
    async fn a_close_for_cause_ends_with_its_status_not_ok() {
        let (tx, rx) = mpsc::channel(8);
        let peer = peer(tx);
        let mut outbound = Outbound::new(rx, peer.clone());
        peer.send(pong(1)).unwrap();
        peer.close(Disconnect::Stuck);
        // A peer closed for not reading is not sent its backlog.
        let end = outbound.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(outbound.next().await.is_none());
        // The first close decides; a second one changes nothing.
        assert!(!peer.close(Disconnect::Replaced));
        assert_eq!(peer.close_reason(), Some(Disconnect::Stuck));
    }
}
