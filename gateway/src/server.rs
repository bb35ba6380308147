//! [`Gateway`]: builds the shared state, serves the gRPC services, and shuts
//! down in two phases (drain, then close).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use gatemesh_handlers::{GatewayRegistry, RegistryError};
use gatemesh_proto::methods::{Catalogue, CatalogueError, MethodSet};
use gatemesh_proto::pb::gateway_admin_server::GatewayAdminServer;
use gatemesh_proto::pb::gateway_server::GatewayServer;
use rand::RngExt;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::admin::AdminService;
use crate::auth::CallerAuth;
use crate::health::{Health, Readiness};
use crate::http::InstanceView;
use crate::listener::{ConnMetrics, Connections};
use crate::metrics::Metrics;
use crate::plain::MethodsService;
use crate::state::Shared;
use crate::stats::Stats;
use crate::stream::GatewayService;
use crate::tls::{TlsIncoming, TlsMetrics};
use crate::{Disconnect, GatewayConfig, Instances, Mesh};
use gatemesh_runtime::Served;

const GATEWAY_SERVICE: &str = "gatemesh.v1.Gateway";
const ADMIN_SERVICE: &str = "gatemesh.v1.GatewayAdmin";
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Room for the envelope around a payload of the maximum size.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// A gateway: the registry of connected instances and the services around it.
///
/// Components that run beside the mesh (a node's DHCP manager, its IP
/// allocator) plug in through three extension points and nothing else:
/// gateway methods ([`Gateway::with_handlers`]), health contributors
/// ([`Gateway::add_health_check`], [`Gateway::add_readiness_check`]) and
/// metrics ([`Metrics::register_collector`] on [`Gateway::metrics`]).
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    /// The gRPC port's connections: the accept loop keeps the table,
    /// `/metrics` reads it.
    connections: Arc<Connections>,
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
        registry: GatewayRegistry,
    ) -> Result<Self, RegistryError> {
        Self::build(config, registry, Catalogue::new())
    }

    /// A gateway with more than the defaults: handlers of its own methods,
    /// methods declared in a user's proto ([`GatewayBuilder::methods`]).
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            registry: GatewayRegistry::new(),
            catalogue: Catalogue::new(),
        }
    }

    fn build(
        config: GatewayConfig,
        registry: GatewayRegistry,
        catalogue: Catalogue,
    ) -> Result<Self, RegistryError> {
        let shared = Shared::new(config, registry, catalogue)?;
        let connections = Arc::new(Connections::default());
        shared
            .metrics
            .register_collector(Box::new(ConnMetrics(connections.clone())));
        if let Some(tls) = &shared.config.tls {
            shared
                .metrics
                .register_collector(Box::new(TlsMetrics(tls.clone())));
        }
        Ok(Self {
            shared: Arc::new(shared),
            connections,
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

    /// A component's health check; a failing one makes `/health` degraded.
    pub fn add_health_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        self.shared.checks.add_health(name, check);
    }

    /// A component's start-up check; `/ready` answers 503 while it fails.
    pub fn add_readiness_check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        self.shared.checks.add_readiness(name, check);
    }

    /// What `/health` reports.
    pub fn health(&self) -> Health {
        self.shared.health()
    }

    /// What `/ready` reports.
    pub fn readiness(&self) -> Readiness {
        self.shared.readiness()
    }

    /// Every connected instance, sorted by id, as `/instances` lists them.
    pub fn instance_views(&self) -> Vec<InstanceView> {
        crate::http::instance_views(&self.shared)
    }

    /// The operator endpoints, for embedding in another router;
    /// `/instances` asks for the secret.
    pub fn http_router(&self) -> axum::Router {
        crate::http::router(self.shared.clone(), crate::http::Exposure::SecretRequired)
    }

    /// Serves the operator endpoints on `listener` until `shutdown`
    /// resolves. Run it beside [`Gateway::serve`] and stop it after, so
    /// `/health` reports the drain. On a loopback address `/instances` is
    /// open; on any other it asks for the secret.
    pub async fn serve_http(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        crate::http::serve(self.shared.clone(), listener, shutdown).await
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// What the gateway counts of the requests instances make to it.
    pub fn served(&self) -> &Served {
        &self.shared.served
    }

    /// The Prometheus registry behind `/metrics`; components add their
    /// families with [`Metrics::register_collector`].
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Every gRPC service of the gateway, authenticated by the secret, for
    /// a tonic server: the instances' stream (`Gateway`), the admin API,
    /// every catalogue method as plain gRPC, health and reflection (which
    /// lists exactly these). [`Gateway::serve`] serves them on its own
    /// listener; to embed the gateway, add them to your own
    /// `tonic::transport::Server` (with your own tower layers), and call
    /// [`Gateway::drain`] before stopping it:
    ///
    /// ```ignore
    /// let routes = gateway.routes().await?;
    /// Server::builder().layer(my_layer).add_routes(routes).serve(addr).await?;
    /// ```
    ///
    /// Embedded, the gateway's own connection limits (the handshake
    /// deadline and the cap on unauthenticated connections) are the
    /// server's business; everything else behaves the same. Marks the
    /// gateway as serving (`/health`, grpc.health.v1).
    pub async fn routes(&self) -> anyhow::Result<tonic::service::Routes> {
        let shared = &self.shared;
        let config = &shared.config;
        let max_frame = config.max_message_bytes + FRAME_OVERHEAD;
        let gateway = GatewayServer::new(GatewayService {
            shared: shared.clone(),
        })
        .max_decoding_message_size(max_frame)
        .max_encoding_message_size(max_frame);
        let local = || crate::admin::LocalMethods {
            handlers: shared.registry.clone(),
            gateway_id: shared.gateway_id.clone(),
            stats: shared.stats.clone(),
            default_timeout: shared.config.call_timeout(),
        };
        let auth = CallerAuth::new(shared.credentials.clone(), shared.refusals.clone());
        let admin = tonic::service::interceptor::InterceptedService::new(
            GatewayAdminServer::new(AdminService {
                mesh: shared.mesh.clone(),
                forward: shared.config.forward.clone(),
                instances: shared.instances.clone(),
                refusals: shared.refusals.clone(),
                local: local(),
            })
            .max_decoding_message_size(max_frame)
            .max_encoding_message_size(max_frame),
            auth.clone(),
        );
        let methods = MethodsService::new(
            shared.mesh.clone(),
            shared.config.forward.clone(),
            local(),
            auth,
            config.max_message_bytes,
        );
        let health = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(shared.health.clone()),
        );
        let catalogue = shared.mesh.catalogue().clone();
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for set in catalogue.sets() {
                builder = builder.register_encoded_file_descriptor_set(set.descriptor_set);
            }
            for service in [GATEWAY_SERVICE, ADMIN_SERVICE, HEALTH_SERVICE]
                .into_iter()
                .chain(catalogue.services())
            {
                builder = builder.with_service_name(service);
            }
            builder
        };
        let routes = tonic::service::Routes::new(gateway)
            .add_service(admin)
            .add_service(health)
            .add_service(
                reflection()
                    .build_v1()
                    .context("building the reflection service")?,
            )
            // Older clients (grpcurl before 1.9, some IDEs) speak only v1alpha.
            .add_service(
                reflection()
                    .build_v1alpha()
                    .context("building the reflection service (v1alpha)")?,
            );
        let routes = methods.route(routes);
        for service in ["", GATEWAY_SERVICE, ADMIN_SERVICE] {
            shared
                .health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        shared.serving.store(true, Ordering::Relaxed);
        Ok(routes)
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
        let routes = self.routes().await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        crate::tls::announce(config.tls.as_ref());
        if let Some(tls) = config.tls.clone() {
            shared.checks.add_health("tls", move || tls.problem());
        }
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(config.heartbeat_interval()))
            .http2_keepalive_timeout(Some(config.liveness_timeout()))
            .layer(crate::listener::layer(
                &self.shared,
                self.connections.clone(),
            ))
            .add_routes(routes);
        let incoming = crate::listener::incoming(&self.shared, self.connections.clone(), listener);
        let stopped = async {
            let _ = stop_rx.await;
        };
        // The gateway runs the TLS handshake itself, so that certificates
        // can be reloaded (see `crate::tls`); tonic gets the finished streams.
        let server: std::pin::Pin<
            Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>,
        > = match &config.tls {
            Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                TlsIncoming::new(incoming, tls.clone(), shared.refusals.clone()),
                stopped,
            )),
            None => Box::pin(router.serve_with_incoming_shutdown(incoming, stopped)),
        };
        tokio::pin!(server);
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
        // Closing registration and taking the snapshot are one step: a
        // stream is either drained here or refused; new calls are refused
        // from here on too.
        let peers = shared.instances.close();
        for service in ["", GATEWAY_SERVICE, ADMIN_SERVICE] {
            shared
                .health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        let grace = shared.config.drain_grace();
        tracing::info!(
            instances = peers.len(),
            grace_ms = grace.as_millis() as u64,
            "draining"
        );
        // Wait on the work itself: every call to an instance answered or
        // ended, every request from an instance answered and queued.
        let drained = futures_util::future::join_all(peers.iter().map(|p| p.conn.drain(grace)));
        if drained.await.contains(&false) {
            tracing::warn!(
                pending = shared.instances.pending_calls(),
                "drain grace passed with work in flight; closing anyway"
            );
        }
        let spread = shared.config.reconnect_spread_ms;
        let mut rng = rand::rng();
        for peer in &peers {
            peer.close(Disconnect::Shutdown {
                reconnect_after_ms: rng.random_range(0..=spread).min(u64::from(u32::MAX)) as u32,
            });
        }
    }
}

/// Builds a [`Gateway`] with more than the defaults; from [`Gateway::builder`].
pub struct GatewayBuilder {
    config: GatewayConfig,
    registry: GatewayRegistry,
    catalogue: Catalogue,
}

/// Why a [`GatewayBuilder`] could not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Handlers(#[from] RegistryError),
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
}

impl GatewayBuilder {
    /// The handlers of the methods the gateway serves itself (its own
    /// `GetGatewayInfo` is added to them).
    pub fn handlers(mut self, registry: GatewayRegistry) -> Self {
        self.registry = registry;
        self
    }

    /// Methods declared in a user's proto (the `SET` gatemesh-build
    /// generates): the gateway routes them by their options (validity,
    /// idempotence, side), serves them as plain gRPC and lists them in
    /// reflection. A name already known is refused.
    pub fn methods(mut self, set: MethodSet) -> Result<Self, BuildError> {
        self.catalogue.add(set)?;
        Ok(self)
    }

    pub fn build(self) -> Result<Gateway, BuildError> {
        Ok(Gateway::build(self.config, self.registry, self.catalogue)?)
    }
}
