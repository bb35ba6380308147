//! `vps-service`: reads `VPS_*` settings, loads the inventory, and serves
//! `FindVPSByLease` to every configured gateway until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::inventory::{Inventory, MemoryInventory};
use gatemesh_service::{Instance, InstanceOptions, ServiceConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = ServiceConfig::from_vars(std::env::vars()).context("invalid configuration")?;
    gatemesh_runtime::logging::init(config.log_format.as_deref());
    let inventory: Arc<dyn Inventory> = match &config.inventory_file {
        Some(path) => Arc::new(MemoryInventory::load(path).context("VPS_INVENTORY_FILE")?),
        None => {
            tracing::info!("VPS_INVENTORY_FILE not set; serving the built-in sample inventory");
            Arc::new(MemoryInventory::sample())
        }
    };
    let mut registry = Registry::new();
    registry.method::<FindVpsByLease>(FindVpsByLeaseHandler::new(inventory))?;
    let options = InstanceOptions::from_config(&config);
    tracing::info!(instance = %options.id, environment = %options.environment,
        gateways = ?config.gateway_urls(), "starting instance");
    let instance = Instance::new(options, registry).start(config.gateway_urls());
    gatemesh_runtime::shutdown::signal().await;
    instance.shutdown().await;
    tracing::info!("instance stopped");
    Ok(())
}
