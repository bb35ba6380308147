//! Methods the gateway itself serves to instances over their streams.

use std::sync::Weak;

use gatemesh_handlers::{GatewayRegistry, RegistryError};
use gatemesh_proto::methods::GetGatewayInfo;
use gatemesh_proto::pb;
use tokio::time::Instant;

use crate::Instances;

/// Registers `GetGatewayInfo`.
pub(crate) fn register(
    registry: &mut GatewayRegistry,
    gateway_id: String,
    started: Instant,
    instances: Weak<Instances>,
) -> Result<(), RegistryError> {
    registry.method::<GetGatewayInfo>(move |_ctx, _req: pb::GetGatewayInfoRequest| {
        let gateway_id = gateway_id.clone();
        let connected = instances.upgrade().map_or(0, |i| i.len());
        async move {
            Ok::<_, tonic::Status>(pb::GetGatewayInfoResponse {
                gateway_id,
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_ms: started.elapsed().as_millis() as u64,
                connected_instances: connected as u32,
            })
        }
    })?;
    Ok(())
}
