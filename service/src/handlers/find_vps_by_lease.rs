//! `FindVPSByLease`: which VPS holds a DHCP lease, from the inventory.
//! An unknown lease gets an empty `vps_id` ("not mine"), not an error, so the
//! gateway's `first_valid` waits for the instance that does know it.

use std::sync::Arc;

use gatemesh_handlers::{Context, MethodHandler, Status};
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};

use crate::inventory::Inventory;

pub struct FindVpsByLeaseHandler {
    inventory: Arc<dyn Inventory>,
}

impl FindVpsByLeaseHandler {
    pub fn new(inventory: Arc<dyn Inventory>) -> Self {
        Self { inventory }
    }
}

impl MethodHandler<FindVpsByLease> for FindVpsByLeaseHandler {
    async fn call(
        &self,
        ctx: Context,
        request: FindVpsByLeaseRequest,
    ) -> Result<FindVpsByLeaseResponse, Status> {
        if request.ip.is_empty() && request.mac.is_empty() {
            return Err(Status::invalid_argument("a lease needs an ip or a mac"));
        }
        let found = tokio::select! {
            found = self.inventory.find_by_lease(&request.ip, &request.mac) => found,
            _ = ctx.cancelled() => return Err(Status::cancelled("call ended")),
        };
        let vps = found.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(vps
            .map(|v| FindVpsByLeaseResponse {
                vps_id: v.vps_id,
                organization_id: v.organization_id,
            })
            .unwrap_or_default())
    }
}
