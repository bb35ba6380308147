//! The bare reverse call: the least a reverse RPC over one bidi stream can
//! do, with no gatemesh code, so the mesh's own cost is a measured ratio.
//!
//! One bidi gRPC stream per instance (the same `RegisterGateway` frames
//! gatemesh sends, so both carry identical bytes), a `u64` id, a `HashMap`
//! of oneshot senders under a mutex, one mpsc queue per stream, and an
//! instance that answers each request inline as it reads it. There are no
//! deadlines, no cancels, no limits, no metrics: what gatemesh adds to
//! this is what the ratio prices.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_message::Kind as Down;
use gatemesh_proto::pb::instance_message::Kind as Up;
use parking_lot::Mutex;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::payload;

type Slots = Mutex<HashMap<u64, oneshot::Sender<Bytes>>>;

/// One instance's stream, as the bare gateway holds it.
struct Conn {
    tx: mpsc::Sender<pb::GatewayMessage>,
    slots: Slots,
}

/// The bare gateway: accepts streams and calls over them.
#[derive(Clone, Default)]
pub struct BareGateway {
    conns: Arc<Mutex<Vec<Arc<Conn>>>>,
    next_id: Arc<AtomicU64>,
}

impl BareGateway {
    /// Serves on `listener` until the runtime ends.
    pub fn serve(&self, listener: TcpListener) {
        let service = pb::gateway_server::GatewayServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
    }

    pub fn connected(&self) -> usize {
        self.conns.lock().len()
    }

    async fn call_conn(&self, conn: &Conn, payload: Bytes) -> Result<Bytes, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        conn.slots.lock().insert(id, tx);
        let request = pb::Request {
            id,
            method: "FindVPSByLease".into(),
            payload,
            timeout_ms: 0,
            metadata: Vec::new(),
        };
        conn.tx
            .send(pb::GatewayMessage {
                kind: Some(Down::Request(request)),
            })
            .await
            .map_err(|_| "stream closed".to_string())?;
        rx.await.map_err(|_| "stream closed".to_string())
    }

    /// One call to the instance at `index`.
    pub async fn call_one(&self, index: usize, payload: Bytes) -> Result<Bytes, String> {
        let conn = self.conns.lock()[index].clone();
        self.call_conn(&conn, payload).await
    }

    /// Every instance; the first answer with a VPS id wins.
    pub async fn first_valid(&self, payload: Bytes) -> Result<Bytes, String> {
        let conns = self.conns.lock().clone();
        let mut running: FuturesUnordered<_> = conns
            .iter()
            .map(|conn| self.call_conn(conn, payload.clone()))
            .collect();
        while let Some(answer) = running.next().await {
            let answer = answer?;
            let valid = pb::FindVpsByLeaseResponse::decode(answer.clone())
                .is_ok_and(|r| !r.vps_id.is_empty());
            if valid {
                return Ok(answer);
            }
        }
        Err("no valid answer".into())
    }
}

type Outbound =
    Pin<Box<dyn futures_util::Stream<Item = Result<pb::GatewayMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::gateway_server::Gateway for BareGateway {
    type RegisterGatewayStream = Outbound;

    async fn register_gateway(
        &self,
        request: Request<Streaming<pb::InstanceMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let conn = Arc::new(Conn {
            tx,
            slots: Mutex::new(HashMap::new()),
        });
        // The hello is read and ignored: the bare gateway knows its peers.
        let _ = inbound.message().await;
        self.conns.lock().push(conn.clone());
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(Up::Response(response)) = frame.kind
                    && let Some(pb::response::Result::Payload(bytes)) = response.result
                    && let Some(slot) = conn.slots.lock().remove(&response.id)
                {
                    let _ = slot.send(bytes);
                }
            }
        });
        let outbound = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// A bare instance: dials, says hello, and answers each request inline
/// with the same work a gatemesh handler does (decode the request, look
/// the lease up, encode the answer).
pub async fn instance(url: String, owner: bool) -> anyhow::Result<()> {
    let mut client = pb::gateway_client::GatewayClient::connect(url).await?;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(pb::InstanceMessage {
        kind: Some(Up::Hello(pb::Hello::default())),
    })
    .await?;
    let mut inbound = client
        .register_gateway(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(frame)) = inbound.message().await {
            let Some(Down::Request(request)) = frame.kind else {
                continue;
            };
            let answer = answer(&request.payload, owner);
            let response = pb::Response {
                id: request.id,
                result: Some(pb::response::Result::Payload(answer)),
            };
            if tx
                .send(pb::InstanceMessage {
                    kind: Some(Up::Response(response)),
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    Ok(())
}

fn answer(payload: &[u8], owner: bool) -> Bytes {
    let request = pb::FindVpsByLeaseRequest::decode(payload).unwrap_or_default();
    let found = owner && request.ip == payload::LEASE_IP;
    let response = pb::FindVpsByLeaseResponse {
        vps_id: if found {
            payload::LEASE_VPS.into()
        } else {
            String::new()
        },
        organization_id: if found {
            "org-bench".into()
        } else {
            String::new()
        },
    };
    response.encode_to_vec().into()
}
