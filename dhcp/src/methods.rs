//! The manager's gateway method: `GetLeases`, one bounded page per call,
//! answered by the manager's task.

use gatemesh_handlers::{Context, GatewayRegistry, RegistryError, Status};
use gatemesh_proto::methods::GetLeases;
use gatemesh_proto::pb;

use crate::DhcpHandle;

/// Registers `GetLeases` on `registry`, served from `handle`.
pub fn register(registry: &mut GatewayRegistry, handle: DhcpHandle) -> Result<(), RegistryError> {
    registry.method::<GetLeases>(move |ctx: Context, req: pb::GetLeasesRequest| {
        let handle = handle.clone();
        async move {
            tokio::time::timeout(ctx.remaining(), handle.leases_page(req))
                .await
                .map_err(|_| Status::deadline_exceeded("the DHCP manager did not answer"))?
                .ok_or_else(|| Status::unavailable("the DHCP manager is not running"))?
                .map_err(|e| Status::invalid_argument(e.to_string()))
        }
    })?;
    Ok(())
}
