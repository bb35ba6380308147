//! `vps-gateway`: reads `GATEWAY_*` settings, binds, and runs the gateway
//! until SIGTERM or SIGINT.

use std::net::SocketAddr;

use anyhow::Context;
use gatemesh_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::from_vars(std::env::vars()).context("invalid configuration")?;
    gatemesh_runtime::logging::init(config.log_format.as_deref());
    let addr = SocketAddr::new(config.bind, config.grpc_port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (GATEWAY_BIND, GATEWAY_GRPC_PORT)"))?;
    let gateway = Gateway::new(config);
    tracing::info!(gateway = gateway.id(), %addr, "gateway listening");
    gateway
        .serve(listener, gatemesh_runtime::shutdown::signal())
        .await
}
