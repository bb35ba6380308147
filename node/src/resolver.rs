//! [`MeshResolver`]: the DHCP manager's [`Resolver`] over the gateway's
//! call API. `FindVPSByLease` goes `first_valid` to every instance, or to
//! the allowed environments' only; with several environments, one call per
//! environment, the first valid answer wins, "not found" only when every
//! environment said so (or had no instance), and any other failure is the
//! holder's.

use std::future::Future;
use std::time::Duration;

use gatemesh_dhcp::{ResolveError, Resolved, Resolver};
use gatemesh_gateway::{Answer, CallError, Mesh};
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use tokio::sync::watch;

/// Resolves leases through a gateway's instances.
#[derive(Clone)]
pub struct MeshResolver {
    mesh: Mesh,
}

impl MeshResolver {
    pub fn new(mesh: Mesh) -> Self {
        Self { mesh }
    }
}

impl Resolver for MeshResolver {
    fn find_vps_by_lease(
        &self,
        request: pb::FindVpsByLeaseRequest,
        timeout: Duration,
        environments: Vec<String>,
    ) -> impl Future<Output = Result<Resolved, ResolveError>> + Send + 'static {
        let mesh = self.mesh.clone();
        async move {
            match first_valid(mesh, request, timeout, environments).await {
                Ok(answer) => Ok(Resolved {
                    vps_id: answer.value.vps_id,
                    instance: answer.instance.to_string(),
                    environment: answer.environment.to_string(),
                }),
                Err(CallError::NotFound { .. }) => Err(ResolveError::NotFound),
                Err(e) => Err(ResolveError::Failed {
                    code: e.code(),
                    reason: e.to_string(),
                }),
            }
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.mesh.instances().subscribe()
    }
}

/// One resolution, as the module says.
async fn first_valid(
    mesh: Mesh,
    request: pb::FindVpsByLeaseRequest,
    timeout: Duration,
    environments: Vec<String>,
) -> Result<Answer<pb::FindVpsByLeaseResponse>, CallError> {
    use futures_util::StreamExt as _;
    use futures_util::stream::FuturesUnordered;

    let call = |env: Option<String>| {
        let mesh = mesh.clone();
        let request = request.clone();
        async move {
            let call = mesh.call::<FindVpsByLease>(request).timeout(timeout);
            match env {
                Some(env) => call.env(env).first_valid().await,
                None => call.first_valid().await,
            }
        }
    };
    if environments.len() <= 1 {
        return call(environments.into_iter().next()).await;
    }
    let mut calls: FuturesUnordered<_> = environments.into_iter().map(|e| call(Some(e))).collect();
    let mut asked = 0;
    let mut failure = None;
    let mut none_serve = None;
    while let Some(outcome) = calls.next().await {
        match outcome {
            Ok(answer) => return Ok(answer),
            Err(CallError::NotFound { asked: n }) => asked += n,
            Err(e @ CallError::NoResponders { .. }) => none_serve = Some(e),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match (failure, asked, none_serve) {
        (Some(e), _, _) => Err(e),
        (None, 1.., _) => Err(CallError::NotFound { asked }),
        (None, 0, Some(e)) => Err(e),
        (None, 0, None) => Err(CallError::NotFound { asked: 0 }),
    }
}
