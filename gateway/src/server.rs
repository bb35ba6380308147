//! [`Gateway`]: builds the shared state, serves the gRPC services, and shuts
//! down in two phases (drain, then close).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use gatemesh_handlers::{DispatchConfig, GatewayRegistry, Handlers, RegistryError};
use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_admin_server::GatewayAdminServer;
use gatemesh_proto::pb::gateway_server::GatewayServer;
use rand::Rng;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::admin::AdminService;
use crate::auth::SecretInterceptor;
use crate::metrics::{Metrics, ServedObserver};
use crate::stats::Stats;
use crate::stream::GatewayService;
use crate::{GatewayConfig, Instances, Mesh};

const GATEWAY_SERVICE: &str = "gatemesh.v1.Gateway";
const ADMIN_SERVICE: &str = "gatemesh.v1.GatewayAdmin";
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Room for the envelope around a payload of the maximum size.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// State shared by every stream and call of one gateway.
pub(crate) struct Shared {
    pub(crate) config: GatewayConfig,
    pub(crate) gateway_id: String,
    pub(crate) instances: Arc<Instances>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mesh: Mesh,
    pub(crate) registry: Arc<Handlers>,
    /// The DHCP manager's read side, once one is attached.
    pub(crate) dhcp: Arc<std::sync::OnceLock<crate::dhcp::DhcpHandle>>,
    pub(crate) dispatch: DispatchConfig,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) tasks: TaskTracker,
    next_conn: AtomicU64,
    draining: AtomicBool,
    /// Set once the gRPC server runs; `/ready` waits for it.
    pub(crate) serving: AtomicBool,
    pub(crate) started: Instant,
    pub(crate) metrics: Metrics,
    pub(crate) checks: crate::http::Checks,
    pub(crate) health: tonic_health::server::HealthReporter,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// A gateway: the registry of connected instances and the services around it.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
}

impl Gateway {
    /// A gateway serving only its built-in methods to instances.
    pub fn new(config: GatewayConfig) -> Self {
        Self::with_handlers(config, GatewayRegistry::new())
            .expect("an empty registry has no clashes")
    }

    /// A gateway that also serves `registry`'s methods to instances.
    pub fn with_handlers(
        config: GatewayConfig,
        mut registry: GatewayRegistry,
    ) -> Result<Self, RegistryError> {
        let gateway_id = config.gateway_id();
        let instances = Arc::new(Instances::new());
        let stats = Arc::new(Stats::default());
        crate::info::register(
            &mut registry,
            gateway_id.clone(),
            Instant::now(),
            Arc::downgrade(&instances),
        )?;
        let mesh = Mesh::new(
            instances.clone(),
            stats.clone(),
            config.call_timeout(),
            config.max_message_bytes,
        );
        let started = Instant::now();
        let dhcp = Arc::new(std::sync::OnceLock::new());
        let metrics = Metrics::new(
            stats.clone(),
            Arc::downgrade(&instances),
            started,
            dhcp.clone(),
        );
        let dispatch = DispatchConfig {
            default_timeout: config.call_timeout(),
            observer: Some(Arc::new(ServedObserver(stats.clone()))),
            ..DispatchConfig::default()
        };
        let permits = Arc::new(Semaphore::new(config.max_concurrency));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                gateway_id,
                instances,
                stats,
                mesh,
                registry: Arc::new(registry.into_handlers()),
                dhcp,
                dispatch,
                permits,
                tasks: TaskTracker::new(),
                next_conn: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                serving: AtomicBool::new(false),
                started,
                metrics,
                checks: Default::default(),
                health: tonic_health::server::HealthReporter::new(),
            }),
        })
    }

    /// The call API.
    pub fn mesh(&self) -> Mesh {
        self.shared.mesh.clone()
    }

    pub fn instances(&self) -> &Arc<Instances> {
        &self.shared.instances
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    pub fn id(&self) -> &str {
        &self.shared.gateway_id
    }

    /// Whether shutdown has begun (new streams and calls are refused).
    pub fn is_draining(&self) -> bool {
        self.shared.is_draining()
    }

    /// The DHCP manager's status and leases, when this gateway runs one.
    pub fn dhcp(&self) -> Option<&crate::dhcp::DhcpHandle> {
        self.shared.dhcp.get()
    }

    /// Makes a manager's state visible through [`Self::dhcp`]; the first
    /// one attached stays.
    pub fn attach_dhcp(&self, handle: crate::dhcp::DhcpHandle) {
        if self.shared.dhcp.set(handle.clone()).is_ok() {
            self.add_health_check("dhcp", move || crate::dhcp::problem(&handle.status()));
        }
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// The Prometheus registry behind `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: new
    /// streams and calls are refused, calls in flight get up to the drain
    /// grace period to finish, instances are told when to come back, and the
    /// streams close.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let max_frame = config.max_message_bytes + FRAME_OVERHEAD;
        let gateway = GatewayServer::new(GatewayService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(max_frame)
        .max_encoding_message_size(max_frame);
        let admin = tonic::service::interceptor::InterceptedService::new(
            GatewayAdminServer::new(AdminService {
                mesh: shared.mesh.clone(),
                instances: shared.instances.clone(),
                local: crate::admin::LocalMethods {
                    handlers: shared.registry.clone(),
                    gateway_id: shared.gateway_id.clone(),
                    stats: shared.stats.clone(),
                    default_timeout: shared.config.call_timeout(),
                },
            })
            .max_decoding_message_size(max_frame)
            .max_encoding_message_size(max_frame),
            SecretInterceptor::for_config(config),
        );
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(shared.health.clone()),
        );
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gatemesh_proto::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(GATEWAY_SERVICE)
            .with_service_name(ADMIN_SERVICE)
            .with_service_name(HEALTH_SERVICE)
            .build_v1()
            .context("building the reflection service")?;
        for service in ["", GATEWAY_SERVICE, ADMIN_SERVICE] {
            shared
                .health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = crate::tls::apply(tonic::transport::Server::builder(), config)?
            .http2_keepalive_interval(Some(config.heartbeat_interval()))
            .http2_keepalive_timeout(Some(config.liveness_timeout()))
            .add_service(gateway)
            .add_service(admin)
            .add_service(health)
            .add_service(reflection)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = stop_rx.await;
                },
            );
        tokio::pin!(server);
        shared.serving.store(true, Ordering::Relaxed);
        tokio::select! {
            result = &mut server => return result.context("gRPC server failed"),
            _ = shutdown => {}
        }
        self.drain().await;
        let _ = stop_tx.send(());
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(result) => result.context("gRPC server failed while stopping")?,
            Err(_) => tracing::warn!("connections still open 5 s after close; stopping anyway"),
        }
        shared.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.tasks.wait()).await;
        tracing::info!("gateway stopped");
        Ok(())
    }

    /// Phase one of shutdown: refuse new work, let calls in flight finish
    /// within the grace period, then close every stream with a `GoAway`
    /// that spreads the instances' returns over the reconnect spread.
    pub async fn drain(&self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::Relaxed);
        shared.mesh.drain();
        for service in ["", GATEWAY_SERVICE, ADMIN_SERVICE] {
            shared
                .health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let peers = shared.instances.snapshot();
        for peer in &peers {
            peer.dispatcher.drain();
        }
        let grace = shared.config.drain_grace();
        tracing::info!(
            instances = peers.len(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        let busy = || {
            shared.instances.pending_calls() > 0
                || peers.iter().any(|p| p.dispatcher.in_flight() > 0)
        };
        let deadline = Instant::now() + grace;
        // Calls end on their own deadlines; poll briefly rather than wire a
        // notification through every call path for this one-off wait.
        while busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let spread = shared.config.reconnect_spread_ms;
        let mut rng = rand::rng();
        for peer in &peers {
            let goaway = pb::GoAway {
                reason: "gateway shutting down".into(),
                reconnect_after_ms: rng.random_range(0..=spread) as u32,
            };
            peer.close(Some(goaway), "gateway shutting down");
        }
    }
}
