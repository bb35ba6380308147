//! The allocator's `/metrics` families, read at scrape time: a collector
//! whose names (`ipam_*`) the gateway's registry prefixes
//! (`gatemesh_gateway_ipam_*`).

use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::allocator::Ipam;
use crate::table::IpRefusal;

/// The allocator's families, for a metrics registry.
pub fn collector(ipam: Ipam) -> Box<dyn Collector> {
    Box::new(IpamMetrics(ipam))
}

struct IpamMetrics(Ipam);

impl std::fmt::Debug for IpamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpamMetrics")
    }
}

impl Collector for IpamMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let ipam = &self.0;
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
            (
                "ipam_file_repairs",
                "Times the reservations file was found deleted or edited and written again",
                &s.file_repairs,
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
        for reason in IpRefusal::ALL {
            ConstCounter::new(s.refused(reason))
                .encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }
        Ok(())
    }
}
