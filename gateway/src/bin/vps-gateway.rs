//! `vps-gateway`: reads `GATEWAY_*` settings, binds, and runs the gateway
//! until SIGTERM or SIGINT.

use std::net::SocketAddr;

use anyhow::Context;
use gatemesh_gateway::GatewayConfig;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::from_vars(std::env::vars()).context("invalid configuration")?;
    gatemesh_runtime::logging::init(config.log_format.as_deref());
    let addr = SocketAddr::new(config.bind, config.grpc_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (GATEWAY_BIND, GATEWAY_GRPC_PORT)"))?;
    let http_addr = config.http_addr();
    let http_listener = TcpListener::bind(http_addr).await.with_context(|| {
        format!("cannot listen on {http_addr} (GATEWAY_HTTP_BIND, GATEWAY_HTTP_PORT)")
    })?;
    let (gateway, dhcp) = gatemesh_gateway::dhcp::gateway_with_dhcp(config)?;
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
    served
}
