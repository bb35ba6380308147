//! [`Instance`]: the handlers an instance serves plus who it is; started, it
//! keeps one [`Link`] per gateway and hands back an [`InstanceHandle`].

use std::sync::Arc;
use std::time::Duration;

use gatemesh_handlers::{DispatchConfig, InstanceRegistry, Metadata};
use gatemesh_proto::{GatewayMethod, PROTOCOL_VERSION, pb};
use gatemesh_runtime::Secret;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ServiceConfig;
use crate::link::{GatewayCallError, Link, LinkConfig, LinkStatus};
use crate::tls::ClientTls;

/// Who an instance is and how it behaves on its links.
#[derive(Debug, Clone)]
pub struct InstanceOptions {
    pub id: String,
    pub environment: String,
    pub version: String,
    pub secret: Secret,
    /// Handlers running at once, over all links.
    pub max_concurrency: usize,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// On shutdown, how long running handlers may finish.
    pub drain_grace: Duration,
    pub dispatch: DispatchConfig,
    /// TLS for `https://` gateways (system roots by default).
    pub tls: ClientTls,
}

impl InstanceOptions {
    pub fn new(id: impl Into<String>, environment: impl Into<String>, secret: Secret) -> Self {
        Self {
            id: id.into(),
            environment: environment.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            secret,
            max_concurrency: 256,
            reconnect_base: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            drain_grace: Duration::from_secs(10),
            dispatch: DispatchConfig::default(),
            tls: ClientTls::default(),
        }
    }

    pub fn from_config(config: &ServiceConfig) -> Self {
        Self {
            max_concurrency: config.max_concurrency,
            reconnect_base: config.reconnect_base(),
            reconnect_max: config.reconnect_max(),
            drain_grace: Duration::from_millis(config.drain_grace_ms),
            tls: config.tls.clone(),
            dispatch: DispatchConfig {
                max_in_flight_per_stream: config.max_concurrency_per_gateway,
                ..DispatchConfig::default()
            },
            ..Self::new(
                config.instance_id(),
                config.environment.clone(),
                config.gateway_api_secret.clone(),
            )
        }
    }
}

pub struct Instance {
    options: InstanceOptions,
    registry: InstanceRegistry,
}

impl Instance {
    pub fn new(options: InstanceOptions, registry: InstanceRegistry) -> Self {
        Self { options, registry }
    }

    /// Dials every gateway in `urls` and keeps each link up until the
    /// handle shuts it down.
    pub fn start(self, urls: impl IntoIterator<Item = impl Into<String>>) -> InstanceHandle {
        let options = self.options;
        let config = Arc::new(LinkConfig {
            hello: pb::Hello {
                instance_id: options.id.clone(),
                environment: options.environment.clone(),
                version: options.version.clone(),
                methods: self.registry.methods(),
                protocol_version: PROTOCOL_VERSION,
            },
            secret: options.secret.clone(),
            registry: Arc::new(self.registry.into_handlers()),
            dispatch: options.dispatch.clone(),
            permits: Arc::new(Semaphore::new(options.max_concurrency)),
            reconnect_base: options.reconnect_base,
            reconnect_max: options.reconnect_max,
            drain_grace: options.drain_grace,
            tls: options.tls.clone(),
        });
        let shutdown = CancellationToken::new();
        let links: Vec<Arc<Link>> = urls
            .into_iter()
            .map(|url| Arc::new(Link::new(url.into(), config.clone())))
            .collect();
        let tasks = links
            .iter()
            .map(|link| tokio::spawn(link.clone().run(shutdown.clone())))
            .collect();
        InstanceHandle {
            id: options.id,
            links,
            shutdown,
            tasks,
        }
    }
}

/// A running instance.
pub struct InstanceHandle {
    id: String,
    links: Vec<Arc<Link>>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl InstanceHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn links(&self) -> &[Arc<Link>] {
        &self.links
    }

    /// Every link's state.
    pub fn status(&self) -> Vec<LinkStatus> {
        self.links.iter().map(|l| l.status()).collect()
    }

    /// Resolves once every link is connected.
    pub async fn wait_connected(&self) {
        for link in &self.links {
            let _ = link.watch().wait_for(|s| s.connected).await;
        }
    }

    /// Resolves once every link has connected `n` times in all.
    pub async fn wait_connects(&self, n: u64) {
        for link in &self.links {
            let _ = link
                .watch()
                .wait_for(|s| s.connected && s.connects >= n)
                .await;
        }
    }

    /// Calls method `M` on the first connected gateway.
    pub async fn call<M: GatewayMethod>(
        &self,
        request: M::Request,
        timeout: Duration,
    ) -> Result<M::Response, GatewayCallError> {
        self.call_with::<M>(request, timeout, Metadata::new()).await
    }

    /// Calls method `M` on the first connected gateway, with `metadata` for
    /// the gateway handler's `ctx.metadata()`.
    pub async fn call_with<M: GatewayMethod>(
        &self,
        request: M::Request,
        timeout: Duration,
        metadata: Metadata,
    ) -> Result<M::Response, GatewayCallError> {
        let link = self
            .links
            .iter()
            .find(|l| l.status().connected)
            .ok_or(GatewayCallError::NotConnected)?;
        link.call::<M>(request, timeout, metadata).await
    }

    /// Graceful stop: tells each gateway it is draining, lets running
    /// handlers finish within the grace period, then closes the links.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Abrupt stop, as if the process died: connections drop, nothing drains.
    pub fn kill(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for InstanceHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
