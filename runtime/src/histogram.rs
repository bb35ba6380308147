//! A latency histogram recorded with a few relaxed atomic adds and read
//! only at scrape time. prometheus-client's own `Histogram` takes a mutex
//! on every observation, which every call on the hot path would pay for
//! (and contend on); this one registers in the same `Family` and encodes
//! the same text.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the buckets: 0.5 ms doubling to about 16 s (16 of
/// them), then `+Inf`.
const BUCKETS: usize = 16;
const FIRST_BOUND_NANOS: u64 = 500_000;

#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.inner.counts[bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// The bucket of `nanos`: the first whose bound it does not exceed.
fn bucket(nanos: u64) -> usize {
    if nanos <= FIRST_BOUND_NANOS {
        return 0;
    }
    // Bound i is FIRST << i: the bucket is ceil(log2(nanos / FIRST)).
    let ratio = nanos.div_ceil(FIRST_BOUND_NANOS);
    let index = (u64::BITS - (ratio - 1).leading_zeros()) as usize;
    index.min(BUCKETS)
}

fn bound_seconds(index: usize) -> f64 {
    (FIRST_BOUND_NANOS << index) as f64 / 1e9
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets = Vec::with_capacity(BUCKETS + 1);
        let mut count = 0;
        for (index, c) in self.inner.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = if index == BUCKETS {
                f64::INFINITY
            } else {
                bound_seconds(index)
            };
            buckets.push((bound, n));
        }
        let sum = self.inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(500_000), 0);
        assert_eq!(bucket(500_001), 1);
        assert_eq!(bucket(1_000_000), 1);
        assert_eq!(bucket(1_000_001), 2);
        assert_eq!(bucket(500_000 << 15), 15);
        assert_eq!(bucket((500_000 << 15) + 1), BUCKETS);
        assert_eq!(bucket(u64::MAX), BUCKETS);
        for i in 0..BUCKETS {
            let bound = FIRST_BOUND_NANOS << i;
            assert_eq!(bucket(bound), i, "at the bound of {i}");
            assert_eq!(bucket(bound + 1), i + 1, "just past the bound of {i}");
        }
    }

    #[test]
    fn encodes_like_a_prometheus_histogram() {
        use prometheus_client::metrics::family::Family;
        use prometheus_client::registry::Registry;
        let family: Family<Vec<(String, String)>, LatencyHistogram> = Family::default();
        let h = family
            .get_or_create(&vec![("method".into(), "Ping".into())])
            .clone();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut registry = Registry::default();
        registry.register("call_seconds", "latency", family);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE call_seconds histogram"), "{text}");
        assert!(
            text.contains(r#"call_seconds_bucket{le="0.0005",method="Ping"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"call_seconds_bucket{le="0.004",method="Ping"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"call_seconds_bucket{le="+Inf",method="Ping"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"call_seconds_count{method="Ping"} 3"#),
            "{text}"
        );
        assert_eq!(h.count(), 3);
    }
}
