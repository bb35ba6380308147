//! `vps-service`: reads `VPS_*` settings, loads the inventory, and serves
//! `FindVPSByLease` to every configured gateway until SIGTERM or SIGINT.
//! A start-up error is one line on stderr and a non-zero exit.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::{FindVpsByLease, Ping};
use gatemesh_runtime::telemetry::TelemetryConfig;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::http::HttpState;
use gatemesh_service::inventory::{Inventory, MemoryInventory, PostgresInventory};
use gatemesh_service::{Instance, InstanceOptions, ServiceConfig, ServiceMetrics};
use tokio::net::TcpListener;

/// The instance end of gatemesh: dials every configured gateway, holds one
/// stream to each and serves FindVPSByLease (and Ping) from its inventory.
#[derive(clap::Parser)]
#[command(
    name = "vps-service",
    version,
    about,
    after_help = "Configured by VPS_* environment variables (VPS_GATEWAY_URL and \
                  VPS_GATEWAY_API_SECRET are required); see the README's Configuration section. \
                  Stops gracefully on SIGTERM or SIGINT."
)]
struct Args {}

fn main() -> ExitCode {
    // --help, --version and usage errors end here, before anything is read
    // or bound.
    <Args as clap::Parser>::parse();
    gatemesh_runtime::exit_code("vps-service", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let config = ServiceConfig::from_vars(std::env::vars())?;
    let secret = config.gateway_api_secret.expose();
    if let Some(length) = gatemesh_runtime::env::weak_secret(secret) {
        gatemesh_runtime::env::refuse_weak_secrets(&[("VPS_GATEWAY_API_SECRET".into(), length)])?;
    }
    let otel = TelemetryConfig::from_env("vps-service")?
        .with_instance_id(config.instance_id())
        .with_environment(config.environment.clone());
    let telemetry =
        gatemesh_runtime::telemetry::init_from_env(&otel, config.ops.log_format.as_deref())?;
    gatemesh_runtime::limits::raise_fd_limit_logged();
    let mut unaddressed = Vec::new();
    let inventory: Arc<dyn Inventory> = match (&config.database_url, &config.inventory_file) {
        (Some(url), _) => Arc::new(
            PostgresInventory::connect(url.expose(), config.database_pool_size)
                .await
                .context("VPS_DATABASE_URL: the PostgreSQL inventory is unavailable")?,
        ),
        (None, Some(path)) => {
            let inventory = MemoryInventory::load(path).context("VPS_INVENTORY_FILE")?;
            if config.allocate_ips {
                unaddressed = inventory.unaddressed();
            }
            Arc::new(inventory)
        }
        (None, None) => {
            tracing::info!(
                "neither VPS_DATABASE_URL nor VPS_INVENTORY_FILE set; serving the built-in sample inventory"
            );
            Arc::new(MemoryInventory::sample())
        }
    };
    let mut registry = Registry::new();
    registry.method::<FindVpsByLease>(FindVpsByLeaseHandler::new(inventory))?;
    registry.method::<Ping>(gatemesh_service::handlers::ping)?;
    let mut options = InstanceOptions::from_config(&config);
    let metrics = Arc::new(ServiceMetrics::for_instance());
    options.dispatch.observer = Some(metrics.clone());
    let http_listener = match config.http_addr() {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (VPS_HTTP_BIND, VPS_HTTP_PORT)")
            })?;
            Some((addr, listener))
        }
        None => None,
    };
    tracing::info!(instance = %options.id, environment = %options.environment,
        gateways = ?gatemesh_runtime::logging::list(config.gateway_urls()), "starting instance");
    let instance = Arc::new(Instance::new(options, registry).start(config.gateway_urls()));
    let allocating = (!unaddressed.is_empty()).then(|| {
        let instance = instance.clone();
        tokio::spawn(async move {
            gatemesh_service::allocate::allocate_all(&instance, unaddressed).await;
        })
    });
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = http_listener.map(|(addr, listener)| {
        tracing::info!(%addr, "operator endpoints listening");
        let state = HttpState::new(instance.id(), instance.links(), metrics)
            .with_limits(config.ops.http_limits());
        tokio::spawn(gatemesh_service::http::serve(state, listener, async {
            let _ = http_stopped.await;
        }))
    });
    gatemesh_runtime::shutdown::signal().await;
    if let Some(task) = allocating {
        task.abort();
        let _ = task.await;
    }
    let instance = Arc::into_inner(instance).context("the instance is still shared at shutdown")?;
    instance.shutdown().await;
    let _ = http_stop.send(());
    if let Some(http) = http {
        http.await.context("HTTP server task")??;
    }
    tracing::info!("instance stopped");
    telemetry.shutdown().await;
    Ok(())
}
