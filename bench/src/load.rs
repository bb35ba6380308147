//! Closed-loop load: `concurrency` tasks each call, wait for the answer and
//! call again until the duration is up. Every latency is kept (a few
//! hundred thousand `u32`s at most), so percentiles are exact.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What one run of one scenario measured, seen from the caller.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    pub calls: u64,
    pub errors: u64,
    pub elapsed_s: f64,
    pub calls_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The first error seen, to tell a broken scenario from a slow one.
    pub first_error: Option<String>,
}

/// Runs `call` in a closed loop; it answers `Ok` or why the call failed.
pub async fn run<F, Fut>(concurrency: usize, duration: Duration, call: F) -> LoadResult
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                let mut errors = 0u64;
                let mut first_error = None;
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    match call().await {
                        Ok(()) => latencies.push(sent.elapsed().as_micros() as u32),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut result = LoadResult::default();
    for task in tasks {
        let Ok((mine, errors, first_error)) = task.await else {
            continue;
        };
        latencies.extend(mine);
        result.errors += errors;
        if result.first_error.is_none() {
            result.first_error = first_error;
        }
    }
    result.elapsed_s = started.elapsed().as_secs_f64();
    result.calls = latencies.len() as u64;
    result.calls_per_s = result.calls as f64 / result.elapsed_s;
    latencies.sort_unstable();
    result.p50_us = percentile(&latencies, 0.50);
    result.p99_us = percentile(&latencies, 0.99);
    result
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1])
}

/// Median of values (mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
