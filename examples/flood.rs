//! One instance floods the gateway with frames as fast as its socket
//! allows while another is called in a loop: the call latency of the
//! polite instance during the flood (issue 23's target: p99 under 10 ms
//! with a million frames).
//!
//! ```sh
//! cargo run --release --example flood                 # a million frames
//! cargo run --release --example flood -- 200000       # fewer
//! ```
//!
//! Prints the polite instance's call latencies (p50, p99, max) before and
//! during the flood, and how fast the flood went. Figures in BENCHMARKS.md.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gatemesh_gateway::{Gateway, GatewayConfig, Mesh};
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_proto::pb::instance_message::Kind;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_runtime::Secret;
use gatemesh_service::{Instance, InstanceOptions};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

const SECRET: &str = "flood-secret";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let frames: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway = Gateway::new(GatewayConfig::with_secret(SECRET));
    let server = tokio::spawn(gateway.clone().serve(listener, std::future::pending()));

    let mut registry = Registry::new();
    registry.method::<FindVpsByLease>(|_ctx, _req| async {
        Ok(FindVpsByLeaseResponse {
            vps_id: "vps-1".into(),
            organization_id: "org-1".into(),
        })
    })?;
    let polite = Instance::new(
        InstanceOptions::new("polite", "prod", Secret::new(SECRET)),
        registry,
    )
    .start([url.clone()]);
    polite.wait_connected().await;

    let mesh = gateway.mesh();
    let mut before = latencies(&mesh, Duration::from_secs(2), None).await;
    before.sort();
    report("before the flood", &before);

    let flooding = Arc::new(AtomicBool::new(true));
    let flood = tokio::spawn(flood(url, frames, flooding.clone()));
    let mut during = latencies(&mesh, Duration::from_secs(600), Some(&flooding)).await;
    during.sort();
    let (sent, took) = flood.await??;
    report("during the flood", &during);
    println!(
        "flood: {sent} frames in {:.2} s ({:.0} frames/s)",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64()
    );
    let p99 = percentile(&during, 99.0);
    println!(
        "target: p99 during the flood under 10 ms: {}",
        if p99 < Duration::from_millis(10) {
            "met"
        } else {
            "MISSED"
        }
    );
    polite.shutdown().await;
    server.abort();
    Ok(())
}

/// Calls the polite instance one after another until `running` goes
/// false (or `limit` passes); returns each call's latency.
async fn latencies(mesh: &Mesh, limit: Duration, running: Option<&AtomicBool>) -> Vec<Duration> {
    let started = Instant::now();
    let mut latencies = Vec::new();
    while started.elapsed() < limit && running.is_none_or(|r| r.load(Ordering::Relaxed)) {
        let t = Instant::now();
        mesh.call::<FindVpsByLease>(FindVpsByLeaseRequest {
            ip: "10.0.0.1".into(),
            mac: "52:54:00:00:00:01".into(),
        })
        .timeout(Duration::from_secs(5))
        .to("polite")
        .await
        .expect("the polite instance answers throughout");
        latencies.push(t.elapsed());
    }
    latencies
}

/// A raw instance that registers, then sends `frames` pongs as fast as the
/// stream takes them, reading (and dropping) whatever the gateway sends.
async fn flood(
    url: String,
    frames: u64,
    running: Arc<AtomicBool>,
) -> anyhow::Result<(u64, Duration)> {
    let hello = pb::InstanceMessage {
        kind: Some(Kind::Hello(pb::Hello {
            instance_id: "flooder".into(),
            environment: "dev".into(),
            version: "flood".into(),
            methods: vec![],
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        })),
    };
    let pongs = (0..frames).map(|nonce| pb::InstanceMessage {
        kind: Some(Kind::Pong(pb::Pong { nonce })),
    });
    let started = Instant::now();
    let outbound = tokio_stream::iter(std::iter::once(hello).chain(pongs));
    let mut client = pb::gateway_client::GatewayClient::connect(url).await?;
    let mut request = tonic::Request::new(outbound);
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse()?);
    let mut inbound = client.register_gateway(request).await?.into_inner();
    // The gateway answers nothing to pongs; its stream ends when ours has
    // been read through and the flooder leaves.
    while let Some(frame) = inbound.next().await {
        if frame.is_err() {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            break;
        }
        if matches!(
            frame.as_ref().ok().and_then(|f| f.kind.as_ref()),
            Some(pb::gateway_message::Kind::Welcome(_))
        ) {
            continue;
        }
    }
    running.store(false, Ordering::Relaxed);
    Ok((frames, started.elapsed()))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, sorted: &[Duration]) {
    println!(
        "{what}: {} calls, p50 {:?}, p99 {:?}, max {:?}",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or_default()
    );
}
