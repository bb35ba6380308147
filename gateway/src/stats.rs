//! Counters that describe how the gateway fares; read by operators through
//! [`crate::metrics`] and the admin API.
//!
//! The plain counters are bumped with [`Stats::bump`]; the labelled families
//! (calls by method, strategy and outcome, their latency, disconnects by
//! reason) have fixed, small label sets so the hot path neither allocates
//! nor grows them without bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatemesh_handlers::dispatch::code_name;
use gatemesh_proto::methods;
use gatemesh_runtime::histogram::LatencyHistogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::Disconnect;

#[derive(Debug)]
pub struct Stats {
    pub registrations: AtomicU64,
    pub replaced: AtomicU64,
    pub disconnects: AtomicU64,
    pub refused_streams: AtomicU64,
    pub calls_ok: AtomicU64,
    pub calls_failed: AtomicU64,
    /// Answers for calls that had already ended.
    pub late_responses: AtomicU64,
    /// Frames that broke the protocol (unknown ids, bad names, ...).
    pub violations: AtomicU64,
    /// Sends refused because an instance's queue was full.
    pub queue_full: AtomicU64,
    /// Cancels for ids not running on their stream (ended, or never sent).
    pub stray_cancels: AtomicU64,
    pub(crate) calls: Family<CallLabels, Counter>,
    pub(crate) call_seconds: Family<RouteLabels, LatencyHistogram>,
    pub(crate) disconnect_reasons: Family<ReasonLabels, Counter>,
    /// Every (method, strategy)'s series, resolved once: a call costs a few
    /// atomic adds, never a lookup in a family. Methods in catalogue order,
    /// then `other`; within each, [`STRATEGIES`]' order.
    routes: Vec<RouteSeries>,
}

/// The labels of the call API's strategies (`Strategy::label`), the
/// values of the `strategy` label. Spelled here rather than taken from the
/// call module, which records its calls here: the counters sit below the
/// API that bumps them.
const STRATEGIES: [&str; 3] = ["first_valid", "all", "one"];

#[derive(Debug)]
struct RouteSeries {
    method: &'static str,
    strategy: &'static str,
    /// By gRPC code, 0 (`OK`) to 16.
    outcomes: Vec<Counter>,
    seconds: LatencyHistogram,
}

impl Default for Stats {
    fn default() -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let call_seconds = Family::<RouteLabels, LatencyHistogram>::default();
        let methods = methods::KNOWN.iter().map(|m| m.name).chain(["other"]);
        let routes = methods
            .flat_map(|method| STRATEGIES.map(|strategy| (method, strategy)))
            .map(|(method, strategy)| RouteSeries {
                method,
                strategy,
                outcomes: (0..=16)
                    .map(|code| {
                        let outcome = code_name(tonic::Code::from_i32(code));
                        calls
                            .get_or_create(&CallLabels {
                                method,
                                strategy,
                                outcome,
                            })
                            .clone()
                    })
                    .collect(),
                seconds: call_seconds
                    .get_or_create(&RouteLabels { method, strategy })
                    .clone(),
            })
            .collect();
        Self {
            registrations: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            refused_streams: AtomicU64::new(0),
            calls_ok: AtomicU64::new(0),
            calls_failed: AtomicU64::new(0),
            late_responses: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            stray_cancels: AtomicU64::new(0),
            calls,
            call_seconds,
            disconnect_reasons: Family::default(),
            routes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CallLabels {
    pub(crate) method: &'static str,
    pub(crate) strategy: &'static str,
    pub(crate) outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub(crate) method: &'static str,
    pub(crate) strategy: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

/// A method's metric label: catalogue methods by name, anything else as
/// `other`, so a caller cannot grow the series without bound.
pub fn method_label(method: &str) -> &'static str {
    methods::known_method(method).map_or("other", |m| m.name)
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One finished call through [`crate::Mesh`]: `strategy` its label,
    /// `outcome` `OK` or the code it failed with.
    pub(crate) fn record_call(
        &self,
        method: &str,
        strategy: &'static str,
        outcome: tonic::Code,
        elapsed: Duration,
    ) {
        match outcome {
            tonic::Code::Ok => Self::bump(&self.calls_ok),
            _ => Self::bump(&self.calls_failed),
        }
        let method = method_label(method);
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.method == method && r.strategy == strategy)
        else {
            return;
        };
        if let Some(counter) = route.outcomes.get(outcome as usize) {
            counter.inc();
        }
        route.seconds.observe(elapsed);
    }

    pub(crate) fn record_disconnect(&self, reason: &Disconnect) {
        Self::bump(&self.disconnects);
        self.disconnect_reasons
            .get_or_create(&ReasonLabels {
                reason: reason.label(),
            })
            .inc();
    }

    /// Finished calls with these labels; `outcome` is a [`code_name`].
    pub fn calls(&self, method: &str, strategy: &'static str, outcome: &'static str) -> u64 {
        self.calls
            .get(&CallLabels {
                method: method_label(method),
                strategy,
                outcome,
            })
            .map_or(0, |c| c.get())
    }

    /// Disconnects with this [`Disconnect::label`].
    pub fn disconnects_by(&self, label: &'static str) -> u64 {
        self.disconnect_reasons
            .get(&ReasonLabels { reason: label })
            .map_or(0, |c| c.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_strategy_has_its_series() {
        use crate::call::Strategy;
        let labels = [Strategy::FirstValid, Strategy::All, Strategy::One].map(Strategy::label);
        assert_eq!(labels, STRATEGIES);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("FindVPSByLease"), "FindVPSByLease");
        assert_eq!(method_label("made-up-by-a-caller"), "other");
    }
}
