//! The allocator's gateway methods: `AllocateIP`, `ReleaseIP` and
//! `ListIPs`, served for the calling instance's environment (empty for
//! the admin API), each refusal mapped to its gRPC status once.

use gatemesh_handlers::{Context, GatewayRegistry, RegistryError, Status};
use gatemesh_proto::methods::{AllocateIp, ListIPs, ReleaseIp};
use gatemesh_proto::pb;

use crate::allocator::Ipam;
use crate::table::Refused;

fn status(e: Refused) -> Status {
    Status::new(e.reason.code(), e.message)
}

/// Registers `AllocateIP`, `ReleaseIP` and `ListIPs` on `registry`,
/// served by `ipam`.
pub fn register(registry: &mut GatewayRegistry, ipam: Ipam) -> Result<(), RegistryError> {
    let deadline = |what: &'static str| {
        Status::deadline_exceeded(format!(
            "{what}: the deadline passed before the allocator answered; an allocation may still \
             be made: call again (it is idempotent)"
        ))
    };
    let alloc = ipam.clone();
    registry.method::<AllocateIp>(move |ctx: Context, req: pb::AllocateIpRequest| {
        let ipam = alloc.clone();
        async move {
            tokio::time::timeout(ctx.remaining(), ipam.allocate(ctx.caller(), req))
                .await
                .map_err(|_| deadline("AllocateIP"))?
                .map_err(status)
        }
    })?;
    let release = ipam.clone();
    registry.method::<ReleaseIp>(move |ctx: Context, req: pb::ReleaseIpRequest| {
        let ipam = release.clone();
        async move {
            tokio::time::timeout(ctx.remaining(), ipam.release(ctx.caller(), req))
                .await
                .map_err(|_| deadline("ReleaseIP"))?
                .map_err(status)
        }
    })?;
    registry.method::<ListIPs>(move |ctx: Context, req: pb::ListIPsRequest| {
        let result = ipam.list(ctx.caller(), req).map_err(status);
        async move { result }
    })?;
    Ok(())
}
