//! The baseline: `FindVPSByLease` as a plain unary gRPC call to one server,
//! answered from the same inventory an owner instance holds.

use std::sync::Arc;

use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_service::inventory::{Inventory, MemoryInventory};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::args::Args;
use crate::payload;
use crate::pb::bench_unary_server::{BenchUnary, BenchUnaryServer};

struct Server {
    inventory: Arc<MemoryInventory>,
}

#[tonic::async_trait]
impl BenchUnary for Server {
    async fn find_vps_by_lease(
        &self,
        request: Request<FindVpsByLeaseRequest>,
    ) -> Result<Response<FindVpsByLeaseResponse>, Status> {
        let request = request.into_inner();
        let found = self
            .inventory
            .find_by_lease(&request.ip, &request.mac)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(
            found
                .map(|v| FindVpsByLeaseResponse {
                    vps_id: v.vps_id,
                    organization_id: v.organization_id,
                })
                .unwrap_or_default(),
        ))
    }
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let port: u16 = args.get("port", 0)?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    let service = BenchUnaryServer::new(Server {
        inventory: Arc::new(payload::inventory(true)),
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    super::ready(port);
    super::until_stdin_closes().await;
    server.abort();
    Ok(())
}
