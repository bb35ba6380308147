//! One gateway's link: dial, hello, serve frames until the stream ends, and
//! dial again after a backoff. Each gateway has its own link and its own
//! reconnect state.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use gatemesh_handlers::dispatch::Outbox;
use gatemesh_handlers::{Caller, Completion, DispatchConfig, Dispatcher, Handlers, Pending};
use gatemesh_proto::pb::gateway_message::Kind as InKind;
use gatemesh_proto::pb::instance_message::Kind;
use gatemesh_proto::{GatewayMethod, PROTOCOL_VERSION, SECRET_METADATA_KEY, pb};
use gatemesh_runtime::{Backoff, Secret};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::tls::ClientTls;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that stays up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const QUEUE_CAPACITY: usize = 1024;
/// The largest frame read from a gateway: the largest payload a gateway
/// may allow (`GATEWAY_MAX_MESSAGE_BYTES`) plus room for the envelope.
const MAX_FRAME: usize = 256 * 1024 * 1024 + 64 * 1024;
/// Used until the gateway's welcome says otherwise.
const DEFAULT_LIVENESS: Duration = Duration::from_secs(15);
/// Answers and refusals dropped because the gateway does not read, after
/// which the link is dropped and dialled again: a gateway that floods
/// requests and never reads costs this link, bounded, and nothing else.
const MAX_DROPPED_ANSWERS: u64 = 256;
/// Frames read in one go when they are already there, before the session
/// turns through its other waits (shutdown, drain, liveness) again.
const FRAME_BATCH: usize = 32;

/// What the instance knows about one gateway link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    pub url: String,
    pub connected: bool,
    pub gateway_id: Option<String>,
    /// Successful handshakes so far.
    pub connects: u64,
    pub last_error: Option<String>,
}

/// Why a call from the instance to the gateway failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayCallError {
    #[error("not connected to the gateway")]
    NotConnected,
    #[error("outbound queue to the gateway is full")]
    Overloaded,
    #[error("deadline of {} ms passed", .0.as_millis())]
    DeadlineExceeded(Duration),
    #[error("gateway disconnected before answering")]
    Disconnected,
    #[error("gateway answered {code:?}: {message}")]
    Remote { code: Code, message: String },
    #[error("undecodable answer: {0}")]
    BadAnswer(String),
}

impl GatewayCallError {
    pub fn code(&self) -> Code {
        match self {
            Self::NotConnected | Self::Disconnected => Code::Unavailable,
            Self::Overloaded => Code::ResourceExhausted,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Remote { code, .. } => *code,
            Self::BadAnswer(_) => Code::Internal,
        }
    }
}

/// What every link of an instance shares.
pub(crate) struct LinkConfig {
    pub(crate) hello: pb::Hello,
    pub(crate) secret: Secret,
    pub(crate) registry: Arc<Handlers>,
    pub(crate) dispatch: DispatchConfig,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) reconnect_base: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) drain_grace: Duration,
    pub(crate) tls: ClientTls,
}

/// The live half of a connected link, for calls to the gateway.
struct Session {
    tx: mpsc::Sender<pb::InstanceMessage>,
    pending: Pending,
}

pub struct Link {
    url: String,
    config: Arc<LinkConfig>,
    status: watch::Sender<LinkStatus>,
    session: Mutex<Option<Arc<Session>>>,
}

/// What a gateway's `GoAway` said: why it closes and when to come back.
#[derive(Default)]
struct Parting {
    reason: Option<String>,
    reconnect_after: Duration,
}

/// How a session ended when it was not an error.
enum Ended {
    Shutdown,
    /// The gateway closed the stream; come back no sooner than this.
    Closed {
        reason: String,
        reconnect_after: Duration,
    },
}

impl Link {
    pub(crate) fn new(url: String, config: Arc<LinkConfig>) -> Self {
        let (status, _) = watch::channel(LinkStatus {
            url: url.clone(),
            ..LinkStatus::default()
        });
        Self {
            url,
            config,
            status,
            session: Mutex::new(None),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn status(&self) -> LinkStatus {
        self.status.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<LinkStatus> {
        self.status.subscribe()
    }

    /// Keeps the link up until `shutdown` fires.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(
            self.config.reconnect_base,
            self.config.reconnect_max,
            STABLE_AFTER,
        );
        while !shutdown.is_cancelled() {
            let (error, reconnect_after) = match self.session(&shutdown, &mut backoff).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::Closed {
                    reason,
                    reconnect_after,
                }) => (reason, reconnect_after),
                Err(error) => (error, Duration::ZERO),
            };
            let delay = backoff.next_delay().max(reconnect_after);
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(error.clone());
            });
            tracing::warn!(gateway = %self.url, %error, retry_in_ms = delay.as_millis() as u64, "gateway link down");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.status.send_modify(|s| s.connected = false);
    }

    /// One connection, from dial to end. Cleans up whatever way it ends,
    /// including the future being dropped (the instance is killed).
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Ended, String> {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let guard = SessionGuard {
            link: self,
            session: Arc::new(Session {
                tx: tx.clone(),
                pending: Pending::new(),
            }),
            dispatcher: Arc::new(Dispatcher::new(
                self.config.registry.clone(),
                self.config.dispatch.clone(),
                self.config.permits.clone(),
                Outbox::new(tx.clone(), |response| pb::InstanceMessage {
                    kind: Some(Kind::Response(response)),
                }),
            )),
            ended: CancellationToken::new(),
        };
        // Handlers still running hold senders of `rx`; ending the request
        // stream with the session closes our half of the stream regardless,
        // after the frames already queued (answers of a drain) are sent.
        let outbound = Outbound {
            rx,
            ended: Box::pin(guard.ended.clone().cancelled_owned()),
            is_ended: false,
        };
        self.serve(
            shutdown,
            backoff,
            &guard.session,
            outbound,
            &guard.dispatcher,
            &guard.ended,
        )
        .await
    }

    async fn serve(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        session: &Arc<Session>,
        outbound: impl futures_util::Stream<Item = pb::InstanceMessage> + Send + 'static,
        dispatcher: &Arc<Dispatcher<pb::InstanceMessage>>,
        ended: &CancellationToken,
    ) -> Result<Ended, String> {
        let mut endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|e| format!("bad gateway URL: {e}"))?;
        let https = self.url.starts_with("https://");
        if https {
            endpoint = endpoint
                .tls_config(self.config.tls.client_config())
                .map_err(|e| format!("TLS settings: {}", gatemesh_runtime::error_chain(&e)))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            channel = endpoint.connect() => channel.map_err(|e| {
                let hint = if https && self.config.tls.ca_pem.is_none() {
                    " (verified against the system roots: set VPS_TLS_CA for a private CA)"
                } else {
                    ""
                };
                format!("cannot connect: {}{hint}", gatemesh_runtime::error_chain(&e))
            })?,
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        let mut client = pb::gateway_client::GatewayClient::new(channel)
            .max_decoding_message_size(MAX_FRAME)
            .max_encoding_message_size(usize::MAX);
        let hello = pb::InstanceMessage {
            kind: Some(Kind::Hello(self.config.hello.clone())),
        };
        let _ = session.tx.send(hello).await;
        let mut request = tonic::Request::new(outbound);
        let secret = self
            .config
            .secret
            .expose()
            .parse()
            .map_err(|_| "the secret is not valid ASCII metadata".to_string())?;
        request.metadata_mut().insert(SECRET_METADATA_KEY, secret);
        let handshake = async {
            let mut inbound = client
                .register_gateway(request)
                .await
                .map_err(|s| format!("refused: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            match inbound.message().await {
                Ok(Some(pb::GatewayMessage {
                    kind: Some(InKind::Welcome(welcome)),
                })) => Ok((inbound, welcome)),
                Ok(Some(_)) => Err("the gateway's first message was not welcome".to_string()),
                Ok(None) => Err("the gateway closed the stream during the handshake".to_string()),
                Err(s) => Err(format!("handshake failed: {:?}: {}", s.code(), s.message())),
            }
        };
        let (mut inbound, welcome) = tokio::select! {
            result = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => {
                result.map_err(|_| "no welcome within 10 s".to_string())??
            }
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(format!(
                "gateway speaks protocol {}, this instance {PROTOCOL_VERSION}",
                welcome.protocol_version
            ));
        }
        backoff.connected();
        *self.session.lock() = Some(session.clone());
        self.status.send_modify(|s| {
            s.connected = true;
            s.gateway_id = Some(welcome.gateway_id.clone());
            s.connects += 1;
            s.last_error = None;
        });
        tracing::info!(gateway = %self.url, gateway_id = %welcome.gateway_id, "registered with gateway");

        let caller = Caller::new(welcome.gateway_id.clone(), "gateway");
        // An answer over the gateway's limit would end the whole stream
        // there; that call gets RESOURCE_EXHAUSTED instead.
        dispatcher
            .set_max_answer_bytes(usize::try_from(welcome.max_message_bytes).unwrap_or(usize::MAX));
        let interval = Duration::from_millis(welcome.heartbeat_interval_ms.into());
        let liveness = if interval.is_zero() {
            DEFAULT_LIVENESS
        } else {
            interval * welcome.max_missed_heartbeats.max(1)
        };
        let check_every = if interval.is_zero() {
            DEFAULT_LIVENESS / 3
        } else {
            interval
        };
        let mut ticker = tokio::time::interval_at(Instant::now() + check_every, check_every);
        // Liveness is judged at each tick from a count of frames, so a frame
        // costs no clock read: silent for `liveness` within one tick.
        let (mut frames, mut frames_at_tick, mut silent) = (0u64, 0u64, Duration::ZERO);
        let mut parting = Parting::default();
        let mut closing = false;
        // Made once, not per frame: a wait made afresh each turn registers
        // with the token (under its lock) and builds a timer every time.
        let shutdown_signal = shutdown.cancelled();
        tokio::pin!(shutdown_signal);
        let mut drain_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown_signal, if drain_timer.is_none() => {
                    // Stop taking requests: the gateway stops routing here,
                    // running handlers finish, then the stream closes.
                    let goodbye = pb::Goodbye { reason: "instance shutting down".into() };
                    let _ = session.tx.try_send(pb::InstanceMessage { kind: Some(Kind::Goodbye(goodbye)) });
                    dispatcher.drain();
                    drain_timer = Some(Box::pin(tokio::time::sleep(self.config.drain_grace)));
                }
                _ = dispatcher.idle(), if drain_timer.is_some() && !closing => {
                    // Every answer is queued: end our half and keep reading
                    // until the gateway ends its half. Dropping the response
                    // stream now would reset the whole stream, answers and all.
                    ended.cancel();
                    closing = true;
                }
                _ = async { drain_timer.as_mut().expect("guarded").await }, if drain_timer.is_some() => {
                    tracing::warn!(gateway = %self.url, in_flight = dispatcher.in_flight(), "drain grace passed; closing");
                    return Ok(Ended::Shutdown);
                }
                frame = inbound.message() => {
                    // Frames already here are read as one bounded batch,
                    // without a turn through every other wait per frame.
                    let mut next = Some(frame);
                    let mut batch = 0;
                    while let Some(frame) = next.take() {
                        let frame = match frame {
                            Ok(Some(frame)) => frame,
                            Ok(None) if closing => return Ok(Ended::Shutdown),
                            Ok(None) => {
                                return Ok(Ended::Closed {
                                    reason: parting.reason.unwrap_or_else(|| "gateway closed the stream".into()),
                                    reconnect_after: parting.reconnect_after,
                                });
                            }
                            Err(s) => return Err(format!("stream error: {:?}: {}", s.code(), s.message())),
                        };
                        frames += 1;
                        self.on_frame(frame, session, dispatcher, &caller, &mut parting)?;
                        batch += 1;
                        if batch < FRAME_BATCH {
                            next = inbound.message().now_or_never();
                        }
                    }
                }
                _ = ticker.tick() => {
                    if frames == frames_at_tick {
                        silent += check_every;
                    } else {
                        (frames_at_tick, silent) = (frames, Duration::ZERO);
                    }
                    if silent >= liveness {
                        return Err(format!("gateway silent for {} ms", liveness.as_millis()));
                    }
                }
            }
        }
    }

    /// Acts on one frame from the gateway; `Err` ends the session.
    fn on_frame(
        &self,
        frame: pb::GatewayMessage,
        session: &Session,
        dispatcher: &Arc<Dispatcher<pb::InstanceMessage>>,
        caller: &Caller,
        parting: &mut Parting,
    ) -> Result<(), String> {
        match frame.kind {
            Some(InKind::Request(request)) => {
                let _ = dispatcher.dispatch(caller.clone(), request);
                let dropped = dispatcher.dropped_answers();
                if dropped >= MAX_DROPPED_ANSWERS {
                    return Err(format!(
                        "the gateway sends requests but does not read its answers ({dropped} dropped)"
                    ));
                }
            }
            Some(InKind::Response(response)) => {
                let outcome = match response.result {
                    Some(pb::response::Result::Payload(p)) => Ok(p),
                    Some(pb::response::Result::Status(s)) => Err(s),
                    None => Err(pb::Status::new(Code::Internal, "empty response")),
                };
                if session.pending.complete(response.id, outcome) == Completion::Unknown {
                    tracing::warn!(gateway = %self.url, id = response.id, "response for a call never sent; dropped");
                }
            }
            Some(InKind::Cancel(cancel)) => {
                dispatcher.cancel(cancel.id);
            }
            Some(InKind::Ping(ping)) => {
                let pong = pb::Pong { nonce: ping.nonce };
                let _ = session.tx.try_send(pb::InstanceMessage {
                    kind: Some(Kind::Pong(pong)),
                });
            }
            Some(InKind::GoAway(goaway)) => {
                // Never parked longer than our own backoff cap, whatever
                // the gateway asks.
                parting.reconnect_after = Duration::from_millis(goaway.reconnect_after_ms.into())
                    .min(self.config.reconnect_max);
                tracing::info!(gateway = %self.url, reason = %goaway.reason,
                    reconnect_after_ms = parting.reconnect_after.as_millis() as u64, "gateway says go away");
                parting.reason = Some(format!("gateway: {}", goaway.reason));
            }
            Some(InKind::Pong(_)) | Some(InKind::Welcome(_)) | None => {}
        }
        Ok(())
    }

    /// Calls method `M` on the gateway over this link, with `metadata`
    /// (and the current span's trace context, when spans are exported).
    pub async fn call<M: GatewayMethod>(
        &self,
        request: M::Request,
        timeout: Duration,
        metadata: gatemesh_handlers::Metadata,
    ) -> Result<M::Response, GatewayCallError> {
        let session = self
            .session
            .lock()
            .clone()
            .ok_or(GatewayCallError::NotConnected)?;
        let (id, rx) = session
            .pending
            .start()
            .map_err(|_| GatewayCallError::NotConnected)?;
        let guard = CancelOnDrop {
            session: &session,
            id,
        };
        let frame = pb::InstanceMessage {
            kind: Some(Kind::Request(pb::Request {
                id,
                method: M::NAME.to_string(),
                payload: request.encode_to_vec().into(),
                timeout_ms: u32::try_from(timeout.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(1),
                metadata: gatemesh_handlers::trace::outgoing_current(metadata),
            })),
        };
        session.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => GatewayCallError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => GatewayCallError::Disconnected,
        })?;
        let received = tokio::time::timeout(timeout, rx).await;
        // Abandons the slot and tells the gateway, unless the answer came.
        drop(guard);
        match received {
            Err(_) => Err(GatewayCallError::DeadlineExceeded(timeout)),
            Ok(Err(_)) => Err(GatewayCallError::Disconnected),
            Ok(Ok(Err(status))) => Err(GatewayCallError::Remote {
                code: status.code(),
                message: status.message,
            }),
            Ok(Ok(Ok(bytes))) => {
                M::Response::decode(bytes).map_err(|e| GatewayCallError::BadAnswer(e.to_string()))
            }
        }
    }
}

/// Tears a session down: the link forgets it, calls waiting on the
/// gateway fail, running handlers are cancelled, the request stream ends.
struct SessionGuard<'a> {
    link: &'a Link,
    session: Arc<Session>,
    dispatcher: Arc<Dispatcher<pb::InstanceMessage>>,
    ended: CancellationToken,
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        {
            let mut current = self.link.session.lock();
            if current
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &self.session))
            {
                *current = None;
            }
        }
        self.session
            .pending
            .close(pb::Status::new(Code::Unavailable, "gateway link down"));
        self.dispatcher.close();
        self.ended.cancel();
    }
}

fn send_cancel(session: &Session, id: u64) {
    let cancel = pb::Cancel {
        id,
        reason: "call ended".into(),
    };
    let _ = session.tx.try_send(pb::InstanceMessage {
        kind: Some(Kind::Cancel(cancel)),
    });
}

/// Cancels a gateway call whose caller dropped the future.
struct CancelOnDrop<'a> {
    session: &'a Session,
    id: u64,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.session.pending.abandon(self.id) {
            send_cancel(self.session, self.id);
        }
    }
}

/// The instance -> gateway half of a session's stream: its queue, read
/// first; once the session has ended, what is left in it, then the end.
/// The end is polled (which registers with the token, under its lock) only
/// when the queue is empty, not for every frame.
struct Outbound {
    rx: mpsc::Receiver<pb::InstanceMessage>,
    ended: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    is_ended: bool,
}

impl futures_util::Stream for Outbound {
    type Item = pb::InstanceMessage;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.is_ended {
            return Poll::Ready(self.rx.try_recv().ok());
        }
        if let Poll::Ready(frame) = self.rx.poll_recv(cx) {
            return Poll::Ready(frame);
        }
        if self.ended.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.is_ended = true;
        Poll::Ready(self.rx.try_recv().ok())
    }
}
