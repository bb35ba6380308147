//! An external caller, in its own process: the gateway's admin API
//! (`GatewayAdmin.Call`), the method as plain gRPC on the gateway's port
//! (a generated client, as any gRPC caller), the unary baseline over one
//! or more channels, or NATS request-reply.

use std::time::Duration;

use bytes::Bytes;
use gatemesh_proto::SECRET_METADATA_KEY;
use gatemesh_proto::pb::gateway_admin_client::GatewayAdminClient;
use gatemesh_proto::pb::instance_methods_client::InstanceMethodsClient;
use gatemesh_proto::pb::{self, FindVpsByLeaseResponse};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::args::Args;
use crate::load::{self, LoadResult};
use crate::pb::bench_unary_client::BenchUnaryClient;
use crate::protocol::{Command, Reply, Target};
use crate::{SECRET, payload};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections a caller holds, opened before any measurement.
#[derive(Clone)]
enum Connection {
    Admin(GatewayAdminClient<Channel>),
    Plain(InstanceMethodsClient<Channel>),
    Unary(Vec<BenchUnaryClient<Channel>>),
    Nats(async_nats::Client),
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let url = args.required("url")?;
    let connection = match args.required("kind")? {
        "admin" => Connection::Admin(GatewayAdminClient::new(channel(url).await?)),
        "plain" => Connection::Plain(InstanceMethodsClient::new(channel(url).await?)),
        "unary" => {
            let channels: usize = args.get("channels", 1)?;
            let mut clients = Vec::with_capacity(channels);
            for _ in 0..channels {
                clients.push(BenchUnaryClient::new(channel(url).await?));
            }
            Connection::Unary(clients)
        }
        "nats" => Connection::Nats(async_nats::connect(url).await?),
        other => anyhow::bail!("unknown caller kind {other:?}"),
    };
    super::ready(0);
    super::serve_commands(|command| {
        let connection = connection.clone();
        async move {
            match command {
                Command::Run {
                    target,
                    concurrency,
                    duration_ms,
                } => Ok(Reply::Load(
                    run_load(
                        connection,
                        target,
                        concurrency,
                        Duration::from_millis(duration_ms),
                    )
                    .await?,
                )),
                other => anyhow::bail!("a caller cannot {other:?}"),
            }
        }
    })
    .await
}

fn check(answer: &FindVpsByLeaseResponse) -> Result<(), String> {
    if answer.vps_id == payload::LEASE_VPS {
        Ok(())
    } else {
        Err(format!("wrong answer {:?}", answer.vps_id))
    }
}

async fn run_load(
    connection: Connection,
    target: Target,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let request_bytes: Bytes = payload::request().encode_to_vec().into();
    Ok(match (connection, target) {
        (Connection::Admin(client), target @ (Target::AdminTo(_) | Target::AdminFirstValid)) => {
            let (strategy, instance_id) = match target {
                Target::AdminTo(id) => (pb::Strategy::One, id),
                _ => (pb::Strategy::FirstValid, String::new()),
            };
            let request = pb::CallRequest {
                method: "FindVPSByLease".into(),
                payload: request_bytes,
                strategy: strategy as i32,
                instance_id,
                environment: String::new(),
                timeout_ms: CALL_TIMEOUT.as_millis() as u32,
            };
            let secret: MetadataValue<_> = SECRET.parse()?;
            load::run(concurrency, duration, move || {
                let mut client = client.clone();
                let mut request = tonic::Request::new(request.clone());
                request
                    .metadata_mut()
                    .insert(SECRET_METADATA_KEY, secret.clone());
                async move {
                    let response = client
                        .call(request)
                        .await
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                        .into_inner();
                    match response.results.into_iter().next().and_then(|r| r.outcome) {
                        Some(pb::instance_result::Outcome::Payload(bytes)) => check(
                            &FindVpsByLeaseResponse::decode(bytes).map_err(|e| e.to_string())?,
                        ),
                        other => Err(format!("no answer: {other:?}")),
                    }
                }
            })
            .await
        }
        (Connection::Plain(client), target @ (Target::PlainTo(_) | Target::PlainFirstValid)) => {
            let instance: Option<MetadataValue<_>> = match target {
                Target::PlainTo(id) => Some(id.parse()?),
                _ => None,
            };
            let bearer: MetadataValue<_> = format!("Bearer {SECRET}").parse()?;
            load::run(concurrency, duration, move || {
                let mut client = client.clone();
                let mut request = tonic::Request::new(payload::request());
                request.set_timeout(CALL_TIMEOUT);
                let metadata = request.metadata_mut();
                metadata.insert("authorization", bearer.clone());
                if let Some(instance) = &instance {
                    metadata.insert("gatemesh-instance", instance.clone());
                }
                async move {
                    let response = client
                        .find_vps_by_lease(request)
                        .await
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                    check(response.get_ref())
                }
            })
            .await
        }
        (Connection::Unary(clients), Target::Unary) => {
            let next = std::sync::atomic::AtomicUsize::new(0);
            load::run(concurrency, duration, move || {
                // Tasks share the channels round robin.
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut client = clients[i % clients.len()].clone();
                async move {
                    let response = client
                        .find_vps_by_lease(payload::request())
                        .await
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                    check(response.get_ref())
                }
            })
            .await
        }
        (Connection::Nats(client), Target::Nats) => {
            load::run(concurrency, duration, move || {
                let client = client.clone();
                let request = request_bytes.clone();
                async move {
                    let message = client
                        .request(payload::NATS_SUBJECT, request)
                        .await
                        .map_err(|e| e.to_string())?;
                    check(
                        &FindVpsByLeaseResponse::decode(message.payload)
                            .map_err(|e| e.to_string())?,
                    )
                }
            })
            .await
        }
        (_, target) => anyhow::bail!("this caller cannot run {target:?}"),
    })
}
