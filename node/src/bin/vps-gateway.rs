//! `vps-gateway`: reads `GATEWAY_*` settings, binds, and runs the node
//! until SIGTERM or SIGINT. A start-up error is one line on stderr and a
//! non-zero exit.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser as _;
use gatemesh_node::{Node, NodeSettings};
use gatemesh_runtime::telemetry::TelemetryConfig;
use tokio::net::TcpListener;

/// The gateway of a gatemesh node: service instances dial it and hold one
/// stream each; it routes calls to them, serves its own methods (DHCP
/// leases, IP allocation) and every method as plain gRPC on its port.
#[derive(clap::Parser)]
#[command(
    name = "vps-gateway",
    version,
    about,
    after_help = "Configured by GATEWAY_* environment variables (GATEWAY_API_SECRET is required); \
                  see the README's Configuration section. Stops gracefully on SIGTERM or SIGINT."
)]
struct Args {}

fn main() -> ExitCode {
    // --help, --version and usage errors end here, before anything is read
    // or bound.
    Args::parse();
    gatemesh_runtime::exit_code("vps-gateway", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let settings = NodeSettings::from_vars(std::env::vars())?;
    gatemesh_runtime::env::refuse_weak_secrets(&settings.gateway.weak_secrets())?;
    let otel =
        TelemetryConfig::from_env("vps-gateway")?.with_instance_id(settings.gateway.gateway_id());
    let telemetry = gatemesh_runtime::telemetry::init_from_env(
        &otel,
        settings.gateway.ops.log_format.as_deref(),
    )?;
    gatemesh_runtime::limits::raise_fd_limit_logged();
    let addr = settings.gateway.grpc_addr();
    let grpc = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (GATEWAY_BIND, GATEWAY_GRPC_PORT)"))?;
    let http_addr = settings.gateway.http_addr();
    let http = TcpListener::bind(http_addr).await.with_context(|| {
        format!("cannot listen on {http_addr} (GATEWAY_HTTP_BIND, GATEWAY_HTTP_PORT)")
    })?;
    let node = Node::start(settings)?;
    tracing::info!(gateway = node.gateway.id(), %addr, %http_addr, "gateway listening");
    let served = gatemesh_node::run(node, grpc, http, gatemesh_runtime::shutdown::signal()).await;
    telemetry.shutdown().await;
    served
}
