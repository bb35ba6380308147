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

use gatemesh_engine::{Disconnect, StreamObserver};

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
    /// Admin callers' headers left out of the metadata: not named in
    /// `GATEWAY_FORWARD_HEADERS` (credentials', proxies' and the
    /// transport's are not counted: they never cross).
    pub headers_not_forwarded: AtomicU64,
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
            headers_not_forwarded: AtomicU64::new(0),
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

/// Every label [`disconnect_label`] can return, for metrics present from
/// the start.
pub const DISCONNECT_LABELS: [&str; 9] = [
    "closed_by_instance",
    "heartbeat_timeout",
    "stuck",
    "protocol_violations",
    "frame_too_large",
    "stream_error",
    "replaced",
    "shutdown",
    "connection_lost",
];

/// The `reason` label of a disconnect: a small fixed set. An instance
/// that floods requests and never reads their answers is `stuck`, as one
/// whose queue stays full is.
pub fn disconnect_label(reason: &Disconnect) -> &'static str {
    let i = match reason {
        Disconnect::PeerClosed => 0,
        Disconnect::HeartbeatTimeout(_) => 1,
        Disconnect::Stuck | Disconnect::NotReading { .. } => 2,
        Disconnect::Violations { .. } => 3,
        Disconnect::FrameTooLarge(_) => 4,
        Disconnect::StreamError { .. } => 5,
        Disconnect::Replaced => 6,
        Disconnect::Shutdown { .. } => 7,
        Disconnect::ConnectionLost => 8,
    };
    DISCONNECT_LABELS[i]
}

/// What the streams tell the counters.
impl StreamObserver for Stats {
    fn violation(&self) {
        Self::bump(&self.violations);
    }

    fn late_response(&self) {
        Self::bump(&self.late_responses);
    }

    fn stray_cancel(&self) {
        Self::bump(&self.stray_cancels);
    }

    fn queue_full(&self) {
        Self::bump(&self.queue_full);
    }
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
                reason: disconnect_label(reason),
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

    /// Disconnects with this [`disconnect_label`].
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
    fn disconnect_labels_are_distinct() {
        let all = [
            Disconnect::PeerClosed,
            Disconnect::HeartbeatTimeout(Duration::ZERO),
            Disconnect::Stuck,
            Disconnect::Violations {
                count: 1,
                last: String::new(),
            },
            Disconnect::FrameTooLarge(String::new()),
            Disconnect::StreamError {
                code: tonic::Code::Unknown,
                message: String::new(),
            },
            Disconnect::Replaced,
            Disconnect::Shutdown {
                reconnect_after_ms: 1,
            },
            Disconnect::ConnectionLost,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(disconnect_label).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(
            disconnect_label(&Disconnect::NotReading { dropped: 1 }),
            "stuck"
        );
    }

    #[test]
    fn every_strategy_has_its_series() {
        use crate::route::Strategy;
        let labels = [Strategy::FirstValid, Strategy::All, Strategy::One].map(Strategy::label);
        assert_eq!(labels, STRATEGIES);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label("FindVPSByLease"), "FindVPSByLease");
        assert_eq!(method_label("made-up-by-a-caller"), "other");
    }
}
