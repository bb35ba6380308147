//! The allocator's `/metrics` families (`gatemesh_gateway_ipam_*`), read
//! at scrape time; present once an allocator is attached.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{Ipam, Refusal};

/// Adds the allocator's families to `registry`.
pub fn register(registry: &mut Registry, ipam: Arc<OnceLock<Ipam>>) {
    registry.register_collector(Box::new(IpamMetrics(ipam)));
}

struct IpamMetrics(Arc<OnceLock<Ipam>>);

impl std::fmt::Debug for IpamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpamMetrics")
    }
}

impl Collector for IpamMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(ipam) = self.0.get() else {
            return Ok(());
        };
        let e = &mut encoder;
        let s = ipam.stats();
        for (name, help, value) in [
            (
                "ipam_pool_size",
                "Addresses in the pool, exclusions taken out",
                ipam.pool().size(),
            ),
            ("ipam_used", "Addresses of the pool reserved", ipam.used()),
        ] {
            let metric = ConstGauge::new(value as i64);
            metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        for (name, help, value) in [
            ("ipam_allocations", "Addresses reserved", &s.allocations),
            ("ipam_releases", "Reservations released", &s.releases),
            ("ipam_writes", "Writes of the reservations file", &s.writes),
            (
                "ipam_write_failures",
                "Writes of the reservations file that failed (their requests refused)",
                &s.write_failures,
            ),
            (
                "ipam_reloads",
                "SIGHUPs sent to dnsmasq after a reservation change",
                &s.reloads,
            ),
            (
                "ipam_reload_failures",
                "dnsmasq reloads that failed or were not sent (stale pid file)",
                &s.reload_failures,
            ),
        ] {
            let metric = ConstCounter::new(value.load(Relaxed));
            metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let mut family = e.encode_descriptor(
            "ipam_refusals",
            "AllocateIP, ReleaseIP and ListIPs requests refused, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in Refusal::ALL {
            ConstCounter::new(s.refused(reason))
                .encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}
