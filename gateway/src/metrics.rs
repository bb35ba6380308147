//! Prometheus exposition of the gateway: the [`Stats`] families and
//! counters, plus gauges read from the instance registry at scrape time
//! (in flight and queue depth per instance), so the call path pays for
//! none of them.
//!
//! Every name starts with `gatemesh_gateway_`, except the standard
//! `process_*` metrics and `gatemesh_auth_refused_total` (see
//! [`crate::refusal`]); see [`Metrics::render`]. Every labelled counter is
//! present from the start with all its known label values (catalogue
//! methods, strategies, outcomes, disconnect reasons), so a rate over a
//! series that has not moved yet is 0, not absent.
//!
//! Other components add their families with
//! [`Metrics::register_collector`], under the same prefix: the gRPC port's
//! connection table, and on a node the DHCP manager and the IP allocator.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use gatemesh_runtime::http::HttpStats;
use gatemesh_runtime::metrics::{BuildInfo, Format, ProcessCollector};
use gatemesh_runtime::{Served, ServedNames};
use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::Instances;
use crate::peer::Peer;
use crate::refusal::{RefusalMetrics, Refusals};
use crate::stats::DISCONNECT_LABELS;
use crate::stats::{ReasonLabels, Stats};
use environments::Environments;

/// The prefix of every gateway metric, registered collectors' too.
const PREFIX: &str = "gatemesh_gateway";

mod environments;

/// The gateway's metric registry.
#[derive(Debug)]
pub struct Metrics {
    /// Written when a component registers (at start), read per scrape.
    registry: RwLock<Registry>,
    per_instance: Arc<AtomicBool>,
    http: Arc<HttpStats>,
}

/// Creates every disconnect reason at zero (the call series are made by
/// [`Stats`] itself, which keeps handles on them).
fn precreate(stats: &Stats) {
    for reason in DISCONNECT_LABELS {
        let _ = stats
            .disconnect_reasons
            .get_or_create(&ReasonLabels { reason });
    }
}

impl Metrics {
    pub(crate) fn new(
        stats: Arc<Stats>,
        instances: Weak<Instances>,
        started: Instant,
        served: &Served,
        refusals: Arc<Refusals>,
    ) -> Self {
        precreate(&stats);
        let per_instance = Arc::new(AtomicBool::new(true));
        let http = Arc::new(HttpStats::default());
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        // Named as the alert rules name it, without the gateway's prefix.
        root.register_collector(Box::new(RefusalMetrics(refusals)));
        let registry = root.sub_registry_with_prefix(PREFIX);
        registry.register_collector(Box::new(BuildInfo {
            name: "build_info".into(),
            version: env!("CARGO_PKG_VERSION"),
        }));
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
        served.register(
            registry,
            ServedNames {
                calls: "served_calls",
                seconds: "served_duration_seconds",
                in_flight: "served_in_flight",
            },
        );
        // The span export's counters (0 while export is off).
        registry.register_collector(Box::new(
            gatemesh_runtime::telemetry::ExportCollector::default(),
        ));
        registry.register_collector(Box::new(ScrapeTime {
            stats,
            instances,
            started,
            per_instance: per_instance.clone(),
            http: http.clone(),
            environments: Environments::default(),
        }));
        Self {
            registry: RwLock::new(root),
            per_instance,
            http,
        }
    }

    /// Adds a component's families to `/metrics`, each name under the
    /// `gatemesh_gateway_` prefix (a collector encoding `dhcp_leases`
    /// shows as `gatemesh_gateway_dhcp_leases`). Collectors are read at
    /// scrape time, so what they report is never stale; register each once.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .write()
            .sub_registry_with_prefix(PREFIX)
            .register_collector(collector);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        self.render_as(Format::Prometheus)
    }

    /// The exposition in `format` (see [`Format::negotiate`]).
    pub fn render_as(&self, format: Format) -> String {
        gatemesh_runtime::metrics::render(&self.registry.read(), format)
    }

    /// Turns the per-instance gauges (`instance_in_flight`,
    /// `instance_queue_depth`) on or off; `GATEWAY_METRICS_PER_INSTANCE`.
    pub fn set_per_instance(&self, on: bool) {
        self.per_instance.store(on, Ordering::Relaxed);
    }

    /// The operator HTTP server's counters.
    pub fn http_stats(&self) -> Arc<HttpStats> {
        self.http.clone()
    }
}

/// Values read when scraped rather than kept up to date on every call.
#[derive(Debug)]
struct ScrapeTime {
    stats: Arc<Stats>,
    instances: Weak<Instances>,
    started: Instant,
    per_instance: Arc<AtomicBool>,
    http: Arc<HttpStats>,
    environments: Environments,
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
        counter(
            e,
            "headers_not_forwarded",
            "Admin callers' gRPC headers not passed on to instances: not named in GATEWAY_FORWARD_HEADERS",
            &stats.headers_not_forwarded,
        )?;
        self.http.encode(e)?;
        counter(
            e,
            "http_unauthorized",
            "HTTP requests refused for lacking the secret",
            &self.http.unauthorized,
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
        {
            let mut family = e.encode_descriptor(
                "environment_instances",
                "Connected instances per environment; one seen since start stays at 0 after its last instance leaves",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (environment, n) in self
                .environments
                .count(peers.iter().map(|p| p.info.environment()))
            {
                ConstGauge::new(n)
                    .encode(family.encode_family(&[("environment", &*environment)])?)?;
            }
        }
        if !self.per_instance.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (name, help, value) in [
            (
                "instance_in_flight",
                "Calls sent to an instance and not yet answered",
                &(|p: &Peer| p.in_flight()) as &dyn Fn(&Peer) -> usize,
            ),
            (
                "instance_queue_depth",
                "Frames waiting in an instance's outbound queue",
                &|p: &Peer| p.queue_depth(),
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
                    // `instance` is Prometheus' own target label.
                    ("instance_id", &**peer.info.id()),
                    ("environment", &**peer.info.environment()),
                ];
                ConstGauge::new(value(peer) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
