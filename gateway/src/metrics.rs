//! Prometheus exposition of the gateway: the [`Stats`] families and
//! counters, plus gauges read from the instance registry at scrape time
//! (in flight and queue depth per instance), so the call path pays for
//! none of them.
//!
//! Every name starts with `gatemesh_gateway_`; see [`Metrics::render`].

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use gatemesh_handlers::DispatchObserver;
use gatemesh_handlers::dispatch::code_name;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tonic::Code;

use crate::Instances;
use crate::dhcp::DhcpHandle;
use crate::stats::{ServedLabels, Stats, method_label};
use std::sync::OnceLock;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The gateway's metric registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub(crate) fn new(
        stats: Arc<Stats>,
        instances: Weak<Instances>,
        started: Instant,
        dhcp: Arc<OnceLock<DhcpHandle>>,
    ) -> Self {
        let mut registry = Registry::with_prefix("gatemesh_gateway");
        registry.register(
            "calls",
            "Calls through the mesh, by method, strategy and outcome (ok or gRPC code)",
            stats.calls.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Time from a call's start to its result, by method and strategy",
            stats.call_seconds.clone(),
        );
        registry.register(
            "disconnects",
            "Instance streams that ended, by reason",
            stats.disconnect_reasons.clone(),
        );
        registry.register(
            "served_calls",
            "Calls instances made to the gateway's own methods, by method and outcome",
            stats.served.clone(),
        );
        registry.register_collector(Box::new(ScrapeTime {
            stats,
            instances,
            started,
        }));
        crate::dhcp::metrics::register(&mut registry, dhcp);
        Self { registry }
    }

    /// The OpenMetrics text exposition (Prometheus reads it as is).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Values read when scraped rather than kept up to date on every call.
#[derive(Debug)]
struct ScrapeTime {
    stats: Arc<Stats>,
    instances: Weak<Instances>,
    started: Instant,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: &AtomicU64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(Stats::get(value));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = &self.stats;
        let e = &mut encoder;
        counter(
            e,
            "registrations",
            "Instance streams accepted",
            &stats.registrations,
        )?;
        counter(
            e,
            "replacements",
            "Registrations that replaced an older stream of the same instance id (reconnects)",
            &stats.replaced,
        )?;
        counter(
            e,
            "refused_streams",
            "Streams refused at the handshake (bad secret, bad hello)",
            &stats.refused_streams,
        )?;
        counter(
            e,
            "late_responses",
            "Answers that arrived after their call had ended; dropped",
            &stats.late_responses,
        )?;
        counter(
            e,
            "protocol_violations",
            "Frames that broke the protocol (unknown ids, bad names, ...); dropped",
            &stats.violations,
        )?;
        counter(
            e,
            "queue_full",
            "Sends refused because an instance's outbound queue was full",
            &stats.queue_full,
        )?;
        counter(
            e,
            "stray_cancels",
            "Cancels for ids not running on their stream (just ended, or never sent); dropped",
            &stats.stray_cancels,
        )?;
        gauge(
            e,
            "uptime_seconds",
            "Seconds since the gateway was created",
            self.started.elapsed().as_secs() as i64,
        )?;
        let peers = self
            .instances
            .upgrade()
            .map(|i| i.snapshot())
            .unwrap_or_default();
        gauge(e, "instances", "Connected instances", peers.len() as i64)?;
        gauge(
            e,
            "queue_depth",
            "Frames waiting in the outbound queues of all instances",
            peers.iter().map(|p| p.queue_depth() as i64).sum(),
        )?;
        for (name, help, value) in [
            (
                "instance_in_flight",
                "Calls sent to an instance and not yet answered",
                &(|p: &crate::Peer| p.in_flight()) as &dyn Fn(&crate::Peer) -> usize,
            ),
            (
                "instance_queue_depth",
                "Frames waiting in an instance's outbound queue",
                &|p: &crate::Peer| p.queue_depth(),
            ),
        ] {
            let mut family = e.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for peer in &peers {
                let labels = [
                    ("instance", &*peer.info.id),
                    ("environment", &*peer.info.environment),
                ];
                ConstGauge::new(value(peer) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Counts the calls instances make to the gateway's own methods.
pub(crate) struct ServedObserver(pub(crate) Arc<Stats>);

impl ServedObserver {
    fn count(&self, method: &str, outcome: &'static str) {
        self.0
            .served
            .get_or_create(&ServedLabels {
                method: method_label(method),
                outcome,
            })
            .inc();
    }
}

impl DispatchObserver for ServedObserver {
    fn finished(&self, method: &str, outcome: Result<(), Code>, _elapsed: Duration) {
        self.count(method, outcome.map_or_else(code_name, |()| "ok"));
    }

    fn rejected(&self, method: &str, code: Code) {
        self.count(method, code_name(code));
    }
}
