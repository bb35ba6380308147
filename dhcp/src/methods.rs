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
            let environment = ctx.caller().environment();
            if !handle.may_read(environment) {
                return Err(Status::permission_denied(format!(
                    "the leases are named by the instances of GATEWAY_DHCP_ENVIRONMENTS; \
                     environment {environment:?} is not among them"
                )));
            }
            tokio::time::timeout(ctx.remaining(), handle.leases_page(req))
                .await
                .map_err(|_| Status::deadline_exceeded("the DHCP manager did not answer"))?
                .ok_or_else(|| Status::unavailable("the DHCP manager is not running"))?
                .map_err(|e| Status::invalid_argument(e.to_string()))
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gatemesh_handlers::{Caller, Code, Proof};
    use prost::bytes::Bytes;
    use tokio::time::Instant;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{DhcpConfig, DhcpManager};

    /// `GetLeases` as `environment` calls it (the manager is not running:
    /// a call let through waits for it until its short deadline).
    async fn get_leases(handle: &DhcpHandle, environment: &str) -> Code {
        let mut registry = GatewayRegistry::new();
        register(&mut registry, handle.clone()).unwrap();
        let handlers = registry.into_handlers();
        let caller = Caller::new("caller-1", environment, Proof::EnvironmentSecret);
        let ctx = Context::new(
            caller,
            Instant::now() + Duration::from_millis(50),
            CancellationToken::new(),
        );
        match handlers
            .handle("GetLeases", ctx, Bytes::new())
            .unwrap()
            .await
            .unwrap()
        {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }

    /// The leases are named by the instances of the environments
    /// `GATEWAY_DHCP_ENVIRONMENTS` lists: only those, and callers of every
    /// environment, may read them.
    #[tokio::test]
    async fn only_the_naming_environments_read_the_leases() {
        let mut config = DhcpConfig::new("/nonexistent/leases", "/nonexistent/hosts");
        config.namespace.environments = vec!["prod".into()];
        let (_manager, handle) = DhcpManager::new(config);
        assert_eq!(get_leases(&handle, "dev").await, Code::PermissionDenied);
        assert_eq!(get_leases(&handle, "prod").await, Code::DeadlineExceeded);
        assert_eq!(get_leases(&handle, "").await, Code::DeadlineExceeded);

        // Unset: any environment names leases, and any reads them.
        let config = DhcpConfig::new("/nonexistent/leases", "/nonexistent/hosts");
        let (_manager, handle) = DhcpManager::new(config);
        assert_eq!(get_leases(&handle, "dev").await, Code::DeadlineExceeded);
    }
}
