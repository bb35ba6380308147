//! `GatewayAdmin`: the unary API for callers outside the gateway process.
//! Authenticated by the shared secret (see [`crate::auth::SecretInterceptor`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatemesh_proto::pb;
use tonic::{Request, Response, Status};

use crate::{Instances, Mesh, Peer, Reply, Route, Strategy};

pub struct AdminService {
    pub(crate) mesh: Mesh,
    pub(crate) instances: Arc<Instances>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn instance_info(peer: &Peer) -> pb::InstanceInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let mut methods: Vec<String> = peer.info.methods.iter().cloned().collect();
    methods.sort();
    pb::InstanceInfo {
        instance_id: peer.info.id.to_string(),
        environment: peer.info.environment.to_string(),
        version: peer.info.version.clone(),
        methods,
        remote_addr: peer
            .info
            .remote_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        connected_since_ms: unix_ms(peer.info.connected_since),
        last_seen_ms: unix_ms(peer.last_seen()),
        in_flight: peer.in_flight() as u64,
        calls_served: peer.calls_served.load(Relaxed),
        errors: peer.errors.load(Relaxed),
    }
}

fn result(reply: Reply<bytes::Bytes>) -> pb::InstanceResult {
    pb::InstanceResult {
        instance_id: reply.instance.to_string(),
        environment: reply.environment.to_string(),
        outcome: Some(match reply.outcome {
            Ok(payload) => pb::instance_result::Outcome::Payload(payload),
            Err(e) => pb::instance_result::Outcome::Status((&e).into()),
        }),
        latency_us: reply.latency.as_micros() as u64,
    }
}

#[tonic::async_trait]
impl pb::gateway_admin_server::GatewayAdmin for AdminService {
    async fn call(
        &self,
        request: Request<pb::CallRequest>,
    ) -> Result<Response<pb::CallResponse>, Status> {
        let request = request.into_inner();
        let strategy = match request.strategy() {
            pb::Strategy::Unspecified | pb::Strategy::FirstValid => Strategy::FirstValid,
            pb::Strategy::All => Strategy::All,
            pb::Strategy::One => Strategy::One,
        };
        let route = Route {
            strategy,
            instance: non_empty(request.instance_id),
            environment: non_empty(request.environment),
            timeout: (request.timeout_ms > 0)
                .then(|| Duration::from_millis(request.timeout_ms.into())),
        };
        let replies = self
            .mesh
            .call_raw(&request.method, request.payload, &route)
            .await?;
        Ok(Response::new(pb::CallResponse {
            results: replies.into_iter().map(result).collect(),
        }))
    }

    async fn list_instances(
        &self,
        _request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let instances = self
            .instances
            .snapshot()
            .iter()
            .map(|p| instance_info(p))
            .collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }
}
