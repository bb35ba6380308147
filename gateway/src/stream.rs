//! `RegisterGateway`: the handshake (credentials, hello, its checks, the
//! identity it establishes, registration), then the stream engine's read loop
//! with the gateway's own part of it ([`Registered`]): goodbye, and the
//! cleanup that takes the instance out of the table.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gatemesh_engine::{
    AtGateway, Conn, ConnConfig, Disconnect, End, FromInstance, Heartbeat, Outbound, Session,
};
use gatemesh_handlers::{Caller, MAX_METHOD_NAME_LEN};
use gatemesh_proto::pb::gateway_message::Kind;
use gatemesh_proto::pb::instance_message::Kind as InKind;
use gatemesh_proto::{PROTOCOL_VERSION, pb};
use tonic::{Request, Response, Status, Streaming};

use crate::instances::InsertRefused;
use crate::peer::PeerInfo;
use crate::refusal::{Port, Refusal};
use crate::state::Shared;
use crate::stats::Stats;
use crate::{Peer, auth};

/// How long an instance has to send hello after opening the stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ID_LEN: usize = 128;
const MAX_LABEL_LEN: usize = 64;
const MAX_METHODS: usize = 1024;

pub struct GatewayService {
    pub(crate) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayService {
    type RegisterGatewayStream = Outbound<AtGateway>;

    async fn register_gateway(
        &self,
        request: Request<Streaming<pb::InstanceMessage>>,
    ) -> Result<Response<Outbound<AtGateway>>, Status> {
        let remote_addr = request.remote_addr();
        let (identity, hello, inbound) = handshake(&self.shared, request).await?;
        register(&self.shared, identity, hello, remote_addr, inbound).map(Response::new)
    }
}

/// The credentials, then a valid hello within [`HELLO_TIMEOUT`], then the
/// identity: the hello's id and environment bound to what the
/// credentials prove ([`crate::credentials::Credentials::bind_hello`]).
/// Every refusal is counted and logged with the peer's address; nothing
/// is registered before the identity holds.
async fn handshake(
    shared: &Shared,
    request: Request<Streaming<pb::InstanceMessage>>,
) -> Result<(Caller, pb::Hello, Streaming<pb::InstanceMessage>), Status> {
    let remote_addr = request.remote_addr();
    let refuse = |refusal: Refusal| {
        Stats::bump(&shared.stats.refused_streams);
        shared.refusals.record(Port::Grpc, &refusal, remote_addr);
        Status::from(&refusal)
    };
    let certificates = request.peer_certs();
    let presented = shared
        .credentials
        .stream(
            auth::presented(request.metadata().as_ref()),
            certificates.as_deref().map(Vec::as_slice),
        )
        .map_err(refuse)?;
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
    validate_hello(&hello).inspect_err(|status| {
        Stats::bump(&shared.stats.refused_streams);
        // Any holder of a secret can repeat this at will.
        gatemesh_runtime::limited!(
            tracing::Level::WARN,
            remote = remote_addr.map(tracing::field::display),
            reason = status.message(),
            "hello refused"
        );
    })?;
    let identity = shared
        .credentials
        .bind_hello(&presented, &hello)
        .map_err(refuse)?;
    Ok((identity, hello, inbound))
}

/// Makes the instance's stream, welcomes it, puts it in the table (closing
/// an older stream of the same id) and starts the engine's read loop.
fn register(
    shared: &Arc<Shared>,
    identity: Caller,
    hello: pb::Hello,
    remote_addr: Option<std::net::SocketAddr>,
    inbound: Streaming<pb::InstanceMessage>,
) -> Result<Outbound<AtGateway>, Status> {
    let info = PeerInfo {
        identity,
        version: hello.version,
        methods: hello.methods.into_iter().collect(),
        remote_addr,
        connected_since: SystemTime::now(),
    };
    let config = &shared.config;
    let (conn, rx) = Conn::new(ConnConfig {
        id: shared.next_conn_id(),
        queue_capacity: config.queue_capacity,
        stuck_after: config.stuck_timeout(),
        handlers: shared.registry.clone(),
        dispatch: shared.dispatch.clone(),
        permits: shared.permits.clone(),
        observer: shared.stats.clone(),
    });
    let peer = Arc::new(Peer::new(info, conn.clone()));
    let welcome = pb::Welcome {
        gateway_id: shared.gateway_id.clone(),
        heartbeat_interval_ms: config.heartbeat_interval_ms as u32,
        protocol_version: PROTOCOL_VERSION,
        max_missed_heartbeats: config.max_missed_heartbeats,
        methods: shared.registry.methods(),
        max_message_bytes: config.max_message_bytes as u64,
    };
    // The queue is new and empty, so this cannot fail.
    let _ = conn.send_out(pb::GatewayMessage {
        kind: Some(Kind::Welcome(welcome)),
    });
    let outbound = Outbound::new(conn.clone(), rx);
    match shared.instances.insert(peer.clone()) {
        Err(InsertRefused::Closed) => return Err(Status::unavailable("gateway is draining")),
        Err(InsertRefused::HeldByAnotherEnvironment) => {
            let refusal = Refusal::Identity(format!(
                "instance id {:?} is held by an instance of another environment",
                peer.id()
            ));
            Stats::bump(&shared.stats.refused_streams);
            shared.refusals.record(Port::Grpc, &refusal, remote_addr);
            return Err(Status::from(&refusal));
        }
        Ok(Some(old)) => {
            Stats::bump(&shared.stats.replaced);
            tracing::info!(instance = %old.id(), old_conn = old.conn_id(), new_conn = peer.conn_id(),
                "instance re-registered; closing its older stream");
            old.close(Disconnect::Replaced);
        }
        Ok(None) => {}
    }
    Stats::bump(&shared.stats.registrations);
    tracing::info!(
        instance = %peer.info.id(),
        environment = %peer.info.environment(),
        proof = peer.info.proof().as_str(),
        version = %peer.info.version,
        methods = ?gatemesh_runtime::logging::list(sorted(&peer.info.methods)),
        remote = remote_addr.map(tracing::field::display),
        conn = peer.conn_id(),
        "instance registered"
    );
    let session = Session {
        peer: peer.info.identity.clone(),
        heartbeat: Heartbeat {
            interval: config.heartbeat_interval(),
            liveness: config.liveness_timeout(),
            ping: true,
        },
        max_payload: config.max_message_bytes,
    };
    let end = Registered {
        shared: shared.clone(),
        peer,
    };
    shared
        .tasks
        .spawn(gatemesh_engine::serve(conn, inbound, session, end));
    Ok(outbound)
}

/// The gateway's part of a registered stream.
struct Registered {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
}

impl End<AtGateway> for Registered {
    fn control(&mut self, conn: &Arc<Conn<AtGateway>>, frame: FromInstance) -> Result<(), String> {
        match frame {
            FromInstance::Hello(_) => Err("hello sent twice".into()),
            FromInstance::Goodbye(goodbye) => {
                conn.stop_calls();
                tracing::info!(instance = %self.peer.info.id(), reason = %goodbye.reason, "instance draining");
                Ok(())
            }
        }
    }

    /// Runs on every exit of the stream's task, panics included: the
    /// table and the counters never keep a stream that is gone.
    fn closed(&mut self, _: &Arc<Conn<AtGateway>>, reason: &Disconnect) {
        let peer = &self.peer;
        let removed = self.shared.instances.remove(peer);
        self.shared.stats.record_disconnect(reason);
        tracing::info!(instance = %peer.info.id(), conn = peer.conn_id(),
            class = crate::stats::disconnect_label(reason), %reason, removed, "instance disconnected");
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
