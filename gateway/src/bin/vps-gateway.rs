//! `vps-gateway`: reads `GATEWAY_*` settings, binds, and runs the gateway
//! until SIGTERM or SIGINT. A start-up error is one line on stderr and a
//! non-zero exit.

use std::process::ExitCode;

use anyhow::Context;
use gatemesh_gateway::GatewayConfig;
use tokio::net::TcpListener;

fn main() -> ExitCode {
    gatemesh_runtime::exit_code("vps-gateway", run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let config = GatewayConfig::from_vars(std::env::vars())?;
    let rust_log = std::env::var("RUST_LOG").ok();
    let telemetry = gatemesh_runtime::telemetry::init(
        config.log_format.as_deref(),
        rust_log.as_deref(),
        &gatemesh_runtime::telemetry::TelemetryConfig::from_vars(std::env::vars(), "vps-gateway"),
    )?;
    gatemesh_runtime::limits::raise_fd_limit_logged();
    let addr = config.grpc_addr();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (GATEWAY_BIND, GATEWAY_GRPC_PORT)"))?;
    let http_addr = config.http_addr();
    let http_listener = TcpListener::bind(http_addr).await.with_context(|| {
        format!("cannot listen on {http_addr} (GATEWAY_HTTP_BIND, GATEWAY_HTTP_PORT)")
    })?;
    let (gateway, dhcp) = gatemesh_gateway::Gateway::from_config(config)?;
    tracing::info!(gateway = gateway.id(), %addr, %http_addr, "gateway listening");
    // The HTTP endpoints outlive the gRPC server's drain, so `/health`
    // reports it; they stop once the gateway has.
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(gateway.clone().serve_http(http_listener, async {
        let _ = http_stopped.await;
    }));
    let served = gateway
        .serve(listener, gatemesh_runtime::shutdown::signal())
        .await;
    if let Some(dhcp) = dhcp {
        dhcp.stop().await;
    }
    let _ = http_stop.send(());
    http.await.context("HTTP server task")??;
    telemetry.shutdown().await;
    served
}
