//! The DHCP manager's `/metrics` families, read from its status at scrape
//! time: a collector whose names (`dhcp_*`) the gateway's registry
//! prefixes (`gatemesh_gateway_dhcp_*`).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use gatemesh_dnsmasq::NameRefusal;

use crate::DhcpHandle;

/// The manager's families, for a metrics registry.
pub fn collector(handle: DhcpHandle) -> Box<dyn Collector> {
    Box::new(DhcpMetrics(handle))
}

struct DhcpMetrics(DhcpHandle);

impl std::fmt::Debug for DhcpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DhcpMetrics")
    }
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(e.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for DhcpMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = self.0.status();
        let e = &mut encoder;
        for (name, help, value) in [
            (
                "dhcp_leases",
                "Active leases in the lease file",
                s.leases_seen,
            ),
            ("dhcp_resolved", "Leases with a VPS id", s.resolved),
            ("dhcp_pending", "Leases still without a VPS id", s.pending),
            (
                "dhcp_holder_failing",
                "Leases whose last resolution failed at the holder (error, disconnect, deadline, no instance)",
                s.holder_failing,
            ),
            (
                "dhcp_hosts_entries",
                "Lines in the hosts file as last written",
                s.hosts_entries,
            ),
            (
                "dhcp_malformed_lines",
                "Lines skipped as malformed in the last read of the lease file",
                s.malformed_lines,
            ),
            (
                "dhcp_leases_dropped",
                "Leases over GATEWAY_DHCP_MAX_LEASES left out of the last read",
                s.leases_dropped,
            ),
            (
                "dhcp_state_bytes",
                "Estimated memory of the manager's lease table",
                s.state_bytes,
            ),
            (
                "dhcp_problems",
                "Reasons the manager makes /health degraded now",
                s.problems().len(),
            ),
        ] {
            gauge(e, name, help, value as i64)?;
        }
        for (name, help, value) in [
            (
                "dhcp_lookups",
                "Resolution calls sent through the mesh",
                s.calls,
            ),
            (
                "dhcp_holder_failures",
                "Resolutions that failed at the holder rather than with not-found",
                s.holder_failures,
            ),
            ("dhcp_lease_reads", "Reads of the lease file", s.lease_reads),
            (
                "dhcp_unsettled_reads",
                "Reads of a lease file that kept changing, used as last seen",
                s.unsettled_reads,
            ),
            (
                "dhcp_malformed_lines_seen",
                "Malformed lease lines skipped, over all reads",
                s.malformed_total,
            ),
            (
                "dhcp_hosts_writes",
                "Times the hosts file was written",
                s.hosts_writes,
            ),
            (
                "dhcp_write_failures",
                "Attempts to write the hosts file that failed",
                s.write_failures,
            ),
            (
                "dhcp_hosts_repairs",
                "Times the hosts file was found changed or gone on disk and rewritten",
                s.hosts_repairs,
            ),
            ("dhcp_reloads", "SIGHUPs delivered to dnsmasq", s.reloads),
            (
                "dhcp_reload_failures",
                "dnsmasq reloads that failed or were not sent (stale pid file)",
                s.reload_failures,
            ),
            (
                "dhcp_crashes",
                "Panics of the manager task (restarted)",
                s.crashes,
            ),
            (
                "dhcp_task_panics",
                "Panics of lease resolution tasks (retried)",
                s.task_panics,
            ),
        ] {
            counter(e, name, help, value)?;
        }
        let mut family = e.encode_descriptor(
            "dhcp_refused_answers",
            "Instance answers refused before reaching dnsmasq, by reason",
            None,
            MetricType::Counter,
        )?;
        for refusal in NameRefusal::ALL {
            let value = s.refused.get(&refusal).copied().unwrap_or(0);
            ConstCounter::new(value)
                .encode(family.encode_family(&[("reason", refusal.as_str())])?)?;
        }
        gauge(
            e,
            "dhcp_running",
            "1 while the DHCP manager runs",
            i64::from(s.running),
        )
    }
}
