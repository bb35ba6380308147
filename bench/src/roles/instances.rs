//! N instances in one process, each with its own link (one HTTP/2
//! connection) to the gateway, serving `FindVPSByLease` from a small
//! in-memory inventory.

use std::sync::Arc;
use std::time::Duration;

use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_runtime::Secret;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::inventory::Inventory;
use gatemesh_service::{Instance, InstanceOptions};

use crate::args::Args;
use crate::{SECRET, payload};

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let url = args.required("url")?.to_string();
    let count: usize = args.get("count", 1)?;
    let prefix = args.str("prefix").unwrap_or("bench").to_string();
    // The index of the instance that holds the bench lease, if any.
    let owner: Option<usize> = args.str("owner").map(str::parse).transpose()?;
    // Started in batches so the first registration is not a SYN flood;
    // reconnections after a restart are left to the instances' backoff.
    let batch: usize = args.get("batch", 500)?;
    let owner_inventory: Arc<dyn Inventory> = Arc::new(payload::inventory(true));
    let other_inventory: Arc<dyn Inventory> = Arc::new(payload::inventory(false));
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let inventory = if Some(i) == owner {
            owner_inventory.clone()
        } else {
            other_inventory.clone()
        };
        let mut registry = Registry::new();
        registry.method::<FindVpsByLease>(FindVpsByLeaseHandler::new(inventory))?;
        let options = InstanceOptions::new(format!("{prefix}-{i}"), "prod", Secret::new(SECRET));
        handles.push(Instance::new(options, registry).start([url.clone()]));
        if (i + 1) % batch == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    super::ready(0);
    super::until_stdin_closes().await;
    for handle in handles {
        handle.kill();
    }
    Ok(())
}
