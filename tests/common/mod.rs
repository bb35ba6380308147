//! Shared harness: a real gateway on 127.0.0.1:0 and real instances dialing
//! it over loopback, in-process.

#![allow(dead_code)]

pub mod e2e;
pub mod fds;
pub mod http;
pub mod logs;
pub mod process;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::{Context, Registry, Status};
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_runtime::Secret;
use gatemesh_service::{Instance, InstanceHandle, InstanceOptions};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "gatemesh-test-secret";

pub fn config() -> GatewayConfig {
    let mut config = GatewayConfig::with_secret(SECRET);
    config.id = Some("gw-test".into());
    config.reconnect_spread_ms = 50;
    config.drain_grace_ms = 2_000;
    config
}

/// A gateway serving on an ephemeral loopback port.
pub struct TestGateway {
    pub gateway: Gateway,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(config()).await
    }

    pub async fn start_with(config: GatewayConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(Gateway::new(config), listener)
    }

    /// Serves on a given address (to restart on the same port).
    pub async fn start_at(addr: SocketAddr, config: GatewayConfig) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(Gateway::new(config), listener)
    }

    pub fn serve(gateway: Gateway, listener: TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            gateway,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until `n` instances are registered.
    pub async fn wait_instances(&self, n: usize) {
        self.gateway.instances().wait_until(|i| i.len() == n).await;
    }

    /// Graceful shutdown; returns once the server has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

pub fn options(id: &str, env: &str) -> InstanceOptions {
    let mut options = InstanceOptions::new(id, env, Secret::new(SECRET));
    options.reconnect_base = Duration::from_millis(20);
    options.reconnect_max = Duration::from_millis(200);
    options.drain_grace = Duration::from_secs(2);
    options
}

/// An instance serving FindVPSByLease with `handler`.
pub fn start_instance<F, Fut>(
    gateway: &TestGateway,
    id: &str,
    env: &str,
    handler: F,
) -> InstanceHandle
where
    F: Fn(Context, FindVpsByLeaseRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<FindVpsByLeaseResponse, Status>> + Send + 'static,
{
    let mut registry = Registry::new();
    registry.method::<FindVpsByLease>(handler).unwrap();
    Instance::new(options(id, env), registry).start([gateway.url()])
}

/// A handler that knows exactly one MAC.
pub fn knows(
    mac: &'static str,
    vps_id: &'static str,
) -> impl Fn(
    Context,
    FindVpsByLeaseRequest,
) -> std::future::Ready<Result<FindVpsByLeaseResponse, Status>>
+ Send
+ Sync
+ 'static {
    move |_ctx, req| {
        std::future::ready(Ok(if req.mac == mac {
            FindVpsByLeaseResponse {
                vps_id: vps_id.into(),
                organization_id: "org".into(),
            }
        } else {
            FindVpsByLeaseResponse::default()
        }))
    }
}

pub fn lease(ip: &str, mac: &str) -> FindVpsByLeaseRequest {
    FindVpsByLeaseRequest {
        ip: ip.into(),
        mac: mac.into(),
    }
}

/// An `AllocateIP` request for `vps` and `mac` (organization `org-1`, the
/// lowest free address).
pub fn alloc(vps: &str, mac: &str) -> gatemesh_proto::pb::AllocateIpRequest {
    gatemesh_proto::pb::AllocateIpRequest {
        vps_id: vps.into(),
        organization_id: "org-1".into(),
        mac: mac.into(),
        ip: String::new(),
    }
}

/// A client of a test gateway's `GatewayAdmin` API.
pub type AdminClient =
    gatemesh_proto::pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>;

/// Calls `method` (a gateway-served one: one result) through the admin
/// API with the secret: its answer, or the call's status. An answer
/// carrying a status fails the test.
pub async fn admin_call<Req: prost::Message, Resp: prost::Message + Default>(
    client: &mut AdminClient,
    method: &str,
    request: Req,
) -> Result<Resp, tonic::Status> {
    use gatemesh_proto::pb;
    let mut call = tonic::Request::new(pb::CallRequest {
        method: method.into(),
        payload: request.encode_to_vec().into(),
        ..Default::default()
    });
    call.metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
    let response = client.call(call).await?.into_inner();
    match response.results[0].outcome.as_ref().unwrap() {
        pb::instance_result::Outcome::Payload(p) => Ok(Resp::decode(p.as_ref()).unwrap()),
        pb::instance_result::Outcome::Status(s) => panic!("{method} failed: {s:?}"),
    }
}

/// Polls `condition` until it holds; panics after 20 s so a broken feature
/// fails the test instead of hanging it. For state with no change signal.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub type Shared<T> = Arc<parking_lot::Mutex<T>>;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A scripted instance on a raw stream: the test decides what it sends and
/// whether it reads at all.
pub struct RawPeer {
    pub tx: tokio::sync::mpsc::Sender<gatemesh_proto::pb::InstanceMessage>,
    pub inbound: tonic::Streaming<gatemesh_proto::pb::GatewayMessage>,
}

impl RawPeer {
    pub async fn connect(
        url: &str,
        id: &str,
        env: &str,
        methods: &[&str],
    ) -> Result<Self, tonic::Status> {
        use gatemesh_proto::pb;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let hello = pb::Hello {
            instance_id: id.into(),
            environment: env.into(),
            version: "raw".into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        };
        tx.send(pb::InstanceMessage {
            kind: Some(pb::instance_message::Kind::Hello(hello)),
        })
        .await
        .unwrap();
        let mut client = pb::gateway_client::GatewayClient::connect(url.to_string())
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
        let inbound = client.register_gateway(request).await?.into_inner();
        Ok(Self { tx, inbound })
    }

    /// The next frame that is not a ping (pings are answered).
    pub async fn next(&mut self) -> Option<gatemesh_proto::pb::gateway_message::Kind> {
        use gatemesh_proto::pb::gateway_message::Kind;
        use gatemesh_proto::pb::instance_message::Kind as Out;
        loop {
            match self.inbound.message().await.ok()??.kind {
                Some(Kind::Ping(p)) => {
                    let pong = gatemesh_proto::pb::Pong { nonce: p.nonce };
                    let _ = self
                        .tx
                        .send(gatemesh_proto::pb::InstanceMessage {
                            kind: Some(Out::Pong(pong)),
                        })
                        .await;
                }
                other => return other,
            }
        }
    }
}

/// A TCP proxy on loopback whose existing connections can be blackholed:
/// bytes are swallowed in both directions, and nothing is reset.
pub struct Proxy {
    pub addr: SocketAddr,
    blackholed: Arc<parking_lot::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        async fn pump(
            hole: Arc<AtomicBool>,
            mut r: tokio::net::tcp::OwnedReadHalf,
            mut w: tokio::net::tcp::OwnedWriteHalf,
        ) {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !hole.load(Ordering::Relaxed) && w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            // Blackholed: keep the socket open, no FIN, no RST.
            if hole.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blackholed: Arc<parking_lot::Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let conns = blackholed.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let hole = Arc::new(AtomicBool::new(false));
                conns.lock().push(hole.clone());
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(hole.clone(), cr, sw));
                tokio::spawn(pump(hole, sr, cw));
            }
        });
        Self {
            addr,
            blackholed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Swallows all traffic on the connections open now; new ones pass.
    pub fn blackhole_existing(&self) {
        for hole in self.blackholed.lock().drain(..) {
            hole.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
