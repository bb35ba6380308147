//! One gateway's link: dial, hello, run the stream engine until the stream
//! ends, and dial again after a backoff. Each gateway has its own link and
//! its own reconnect state. The frames, the queue, the calls, the
//! heartbeats, the drain and the cleanup are the engine's; the link adds
//! the dialing, the handshake, what a `GoAway` says, and the reconnect.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use gatemesh_engine::{
    AtInstance, Conn, ConnConfig, Disconnect, End, FromGateway, Heartbeat, Outbound, SendError,
    Session, StreamObserver,
};
use gatemesh_handlers::{Caller, DispatchConfig, Handlers, Proof};
use gatemesh_proto::pb::gateway_message::Kind as InKind;
use gatemesh_proto::pb::instance_message::Kind;
use gatemesh_proto::{GatewayMethod, PROTOCOL_VERSION, SECRET_METADATA_KEY, code_name, pb};
use gatemesh_runtime::{Backoff, Secret};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Endpoint;

use crate::tls::ClientTls;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that stays up this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const QUEUE_CAPACITY: usize = 1024;
/// A queue to the gateway that stays full this long means it does not read.
const STUCK_AFTER: Duration = Duration::from_secs(10);
/// The largest frame read from a gateway: the largest payload a gateway
/// may allow (`GATEWAY_MAX_MESSAGE_BYTES`) plus room for the envelope.
const MAX_FRAME: usize = 256 * 1024 * 1024 + 64 * 1024;
/// Used until the gateway's welcome says otherwise.
const DEFAULT_LIVENESS: Duration = Duration::from_secs(15);
/// After a drain has ended this instance's half of the stream, how long
/// the gateway has to end the other half before the link lets go.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Stream ids, unique in the process (the engine's ownership checks).
static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

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
    #[error("gateway answered {}: {message}", gatemesh_proto::code_name(*.code))]
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

/// The instance counts nothing of its streams beyond what the
/// dispatcher's observer sees.
struct Uncounted;

impl StreamObserver for Uncounted {}

pub struct Link {
    url: String,
    config: Arc<LinkConfig>,
    status: watch::Sender<LinkStatus>,
    /// The stream while it is registered, for calls to the gateway.
    session: Mutex<Option<Arc<Conn<AtInstance>>>>,
}

/// Why a session failed.
#[derive(Debug)]
enum Failure {
    /// The gateway refused this instance's credentials or identity
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`): it will again until
    /// someone changes the configuration (the secret, the certificate,
    /// the environment).
    Refused { code: Code, message: String },
    /// Anything else: the network, the gateway going away, a protocol
    /// error.
    Other(String),
}

impl Failure {
    /// A status from the handshake: a refusal when its code says so.
    fn from_handshake(status: &tonic::Status) -> Self {
        match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Failure::Refused {
                code: status.code(),
                message: status.message().to_string(),
            },
            code => Failure::Other(format!(
                "refused: {}: {}",
                code_name(code),
                status.message()
            )),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused { code, message } => {
                write!(f, "refused: {}: {message}", code_name(*code))
            }
            Failure::Other(message) => f.write_str(message),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Other(message)
    }
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

    /// Why the TLS files as they are now do not load (the previous ones
    /// stay in use); the same for every link of the instance.
    pub fn tls_problem(&self) -> Option<String> {
        self.config.tls.problem()
    }

    /// Keeps the link up until `shutdown` fires.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(
            self.config.reconnect_base,
            self.config.reconnect_max,
            STABLE_AFTER,
        );
        while !shutdown.is_cancelled() {
            // A bug that panics in a session costs that session, not the
            // link: the engine has cleaned the stream up, and the link
            // dials again.
            let session = AssertUnwindSafe(self.session(&shutdown, &mut backoff)).catch_unwind();
            let (failure, reconnect_after) = match session.await {
                Ok(Ok(Ended::Shutdown)) => break,
                Ok(Ok(Ended::Closed {
                    reason,
                    reconnect_after,
                })) => (Failure::Other(reason), reconnect_after),
                Ok(Err(failure)) => (failure, Duration::ZERO),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("a non-text panic");
                    tracing::error!(gateway = %self.url, panic = what, "the link's session panicked");
                    (
                        Failure::Other(format!("internal error: the session panicked: {what}")),
                        Duration::ZERO,
                    )
                }
            };
            let error = failure.to_string();
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(error.clone());
            });
            let delay = match &failure {
                // Refused for who it is: dialing sooner changes nothing.
                Failure::Refused { code, message } => {
                    let delay = self.config.reconnect_max;
                    tracing::error!(gateway = %self.url, code = code_name(*code), reason = %message,
                        retry_in_ms = delay.as_millis() as u64,
                        "the gateway refused this instance's credentials or identity; fix the \
                         secret, certificate or environment: retrying only at VPS_RECONNECT_MAX_MS");
                    delay
                }
                Failure::Other(_) => {
                    let delay = backoff.next_delay().max(reconnect_after);
                    tracing::warn!(gateway = %self.url, %error, retry_in_ms = delay.as_millis() as u64,
                        "gateway link down");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.status.send_modify(|s| s.connected = false);
    }

    /// One connection, from dial to end; the engine cleans up whatever
    /// way it ends, including the future being dropped (the instance is
    /// killed).
    async fn session(
        &self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<Ended, Failure> {
        let https = self.url.starts_with("https://");
        let endpoint = self.endpoint(https)?;
        let channel = tokio::select! {
            channel = endpoint.connect() => channel.map_err(|e| {
                let hint = if https && !self.config.tls.has_ca() {
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
        let (conn, rx) = Conn::<AtInstance>::new(ConnConfig {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            queue_capacity: QUEUE_CAPACITY,
            stuck_after: STUCK_AFTER,
            handlers: self.config.registry.clone(),
            dispatch: self.config.dispatch.clone(),
            permits: self.config.permits.clone(),
            observer: Arc::new(Uncounted),
        });
        // The queue is new and empty, so this cannot fail.
        let _ = conn.send_out(pb::InstanceMessage {
            kind: Some(Kind::Hello(self.config.hello.clone())),
        });
        // The instance's half ends as the engine's writer says; a status
        // has no place in a request stream, so it just ends.
        let outbound = Outbound::new(conn.clone(), rx)
            .take_while(|frame| std::future::ready(frame.is_ok()))
            .filter_map(|frame| std::future::ready(frame.ok()));
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
                .map_err(|s| Failure::from_handshake(&s))?
                .into_inner();
            match inbound.message().await {
                Ok(Some(pb::GatewayMessage {
                    kind: Some(InKind::Welcome(welcome)),
                })) => Ok((inbound, welcome)),
                Ok(Some(_)) => Err(Failure::Other(
                    "the gateway's first message was not welcome".to_string(),
                )),
                Ok(None) => Err(Failure::Other(
                    "the gateway closed the stream during the handshake".to_string(),
                )),
                Err(s) => Err(Failure::from_handshake(&s)),
            }
        };
        let (inbound, welcome) = tokio::select! {
            result = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => {
                result.map_err(|_| Failure::Other("no welcome within 10 s".to_string()))??
            }
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
        };
        if welcome.protocol_version != PROTOCOL_VERSION {
            return Err(Failure::Other(format!(
                "gateway speaks protocol {}, this instance {PROTOCOL_VERSION}",
                welcome.protocol_version
            )));
        }
        backoff.connected();
        *self.session.lock() = Some(conn.clone());
        self.status.send_modify(|s| {
            s.connected = true;
            s.gateway_id = Some(welcome.gateway_id.clone());
            s.connects += 1;
            s.last_error = None;
        });
        tracing::info!(gateway = %self.url, gateway_id = %welcome.gateway_id, "registered with gateway");
        // An answer over the gateway's limit would end the whole stream
        // there; that call gets RESOURCE_EXHAUSTED instead.
        conn.dispatcher()
            .set_max_answer_bytes(usize::try_from(welcome.max_message_bytes).unwrap_or(usize::MAX));
        let session = Session {
            peer: Caller::new(welcome.gateway_id.clone(), "gateway", Proof::Dialed),
            heartbeat: heartbeat(&welcome),
            max_payload: 0,
        };
        let mut parting = Parting::default();
        let ended = {
            let serving = gatemesh_engine::serve(
                conn.clone(),
                inbound,
                session,
                Linked {
                    link: self,
                    parting: &mut parting,
                },
            );
            tokio::pin!(serving);
            tokio::select! {
                ended = &mut serving => ended,
                _ = shutdown.cancelled() => self.drain(&conn, serving).await,
            }
        };
        match ended {
            Disconnect::Shutdown { .. } => Ok(Ended::Shutdown),
            Disconnect::PeerClosed => Ok(Ended::Closed {
                reason: parting
                    .reason
                    .unwrap_or_else(|| "gateway closed the stream".into()),
                reconnect_after: parting.reconnect_after,
            }),
            other => Err(Failure::Other(other.to_string())),
        }
    }

    fn endpoint(&self, https: bool) -> Result<Endpoint, String> {
        let mut endpoint =
            Endpoint::from_shared(self.url.clone()).map_err(|e| format!("bad gateway URL: {e}"))?;
        if https {
            endpoint = endpoint
                .tls_config(self.config.tls.client_config())
                .map_err(|e| format!("TLS settings: {}", gatemesh_runtime::error_chain(&e)))?;
        }
        Ok(endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true))
    }

    /// On shutdown: tell the gateway this instance is draining (it routes
    /// no new requests here), let running handlers and this instance's own
    /// calls to the gateway finish within the grace period, end this
    /// half of the stream, and give the gateway a moment to end the other
    /// while the engine reads on. Drives `serving` meanwhile, so answers
    /// keep arriving.
    async fn drain(
        &self,
        conn: &Arc<Conn<AtInstance>>,
        serving: std::pin::Pin<&mut impl Future<Output = Disconnect>>,
    ) -> Disconnect {
        let goodbye = pb::Goodbye {
            reason: "instance shutting down".into(),
        };
        let _ = conn.send_out(pb::InstanceMessage {
            kind: Some(Kind::Goodbye(goodbye)),
        });
        let reading = async {
            if !conn.drain(self.config.drain_grace).await {
                tracing::warn!(gateway = %self.url, in_flight = conn.dispatcher().in_flight(),
                    calls = conn.in_flight(), "drain grace passed; closing");
            }
            conn.close(Disconnect::Shutdown {
                reconnect_after_ms: 0,
            });
            tokio::time::sleep(CLOSE_WAIT).await;
            Disconnect::Shutdown {
                reconnect_after_ms: 0,
            }
        };
        tokio::select! {
            ended = serving => ended,
            ended = reading => ended,
        }
    }

    /// Calls method `M` on the gateway over this link, with `metadata`
    /// (and the current span's trace context, when spans are exported).
    pub async fn call<M: GatewayMethod>(
        &self,
        request: M::Request,
        timeout: Duration,
        metadata: gatemesh_handlers::Metadata,
    ) -> Result<M::Response, GatewayCallError> {
        let conn = self
            .session
            .lock()
            .clone()
            .ok_or(GatewayCallError::NotConnected)?;
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let (id, rx) = conn
            .start_call(
                M::NAME,
                request.encode_to_vec().into(),
                timeout_ms,
                gatemesh_handlers::trace::outgoing_current(metadata),
            )
            .map_err(|e| match e {
                SendError::Full => GatewayCallError::Overloaded,
                SendError::Closed => GatewayCallError::NotConnected,
            })?;
        // Abandons the call and tells the gateway (after a grace) unless
        // the answer came, however this future ends.
        let _abandon = Abandon { conn: &conn, id };
        match tokio::time::timeout(timeout, rx).await {
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

/// The liveness a gateway's welcome asks for.
fn heartbeat(welcome: &pb::Welcome) -> Heartbeat {
    let interval = Duration::from_millis(welcome.heartbeat_interval_ms.into());
    if interval.is_zero() {
        return Heartbeat {
            interval: DEFAULT_LIVENESS / 3,
            liveness: DEFAULT_LIVENESS,
            ping: false,
        };
    }
    Heartbeat {
        interval,
        liveness: interval * welcome.max_missed_heartbeats.max(1),
        ping: false,
    }
}

/// What a gateway's `GoAway` said: why it closes and when to come back.
#[derive(Default)]
struct Parting {
    reason: Option<String>,
    reconnect_after: Duration,
}

/// The link's part of a registered stream.
struct Linked<'a> {
    link: &'a Link,
    parting: &'a mut Parting,
}

impl End<AtInstance> for Linked<'_> {
    fn control(&mut self, _: &Arc<Conn<AtInstance>>, frame: FromGateway) -> Result<(), String> {
        match frame {
            FromGateway::Welcome(_) => Err("welcome sent twice".into()),
            FromGateway::GoAway(goaway) => {
                // Never parked longer than our own backoff cap, whatever
                // the gateway asks.
                let parting = &mut *self.parting;
                parting.reconnect_after = Duration::from_millis(goaway.reconnect_after_ms.into())
                    .min(self.link.config.reconnect_max);
                tracing::info!(gateway = %self.link.url, reason = %goaway.reason,
                    reconnect_after_ms = parting.reconnect_after.as_millis() as u64, "gateway says go away");
                parting.reason = Some(format!("gateway: {}", goaway.reason));
                Ok(())
            }
        }
    }

    /// The link forgets the stream (if it is still this one), so no call
    /// goes to a stream that is gone.
    fn closed(&mut self, conn: &Arc<Conn<AtInstance>>, _: &Disconnect) {
        let mut current = self.link.session.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
            self.link.status.send_modify(|s| s.connected = false);
        }
    }
}

/// Abandons a gateway call whose caller stopped waiting; a no-op once its
/// answer came.
struct Abandon<'a> {
    conn: &'a Conn<AtInstance>,
    id: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.conn.abandon(self.id);
    }
}
