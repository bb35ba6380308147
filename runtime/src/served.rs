//! [`Served`]: what one end counts about the requests it serves over its
//! streams — the gateway for instances' calls to it, an instance for the
//! gateway's calls — written once for both, as the dispatcher's
//! [`DispatchObserver`].
//!
//! Method labels are the catalogue's names of the methods one side serves,
//! anything else `other`, so a peer cannot grow the series; every method
//! and outcome exists at zero from the start.

use std::time::Duration;

use gatemesh_handlers::DispatchObserver;
use gatemesh_handlers::dispatch::code_name;
use gatemesh_proto::methods::{KNOWN, Side};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::histogram::LatencyHistogram;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

/// The names one end exports the counters under, inside its prefix.
#[derive(Debug, Clone, Copy)]
pub struct ServedNames {
    /// Requests by method and outcome (a counter: `_total` is added).
    pub calls: &'static str,
    /// Handler latency by method.
    pub seconds: &'static str,
    /// Handlers running now.
    pub in_flight: &'static str,
}

#[derive(Debug)]
pub struct Served {
    calls: Family<CallLabels, Counter>,
    seconds: Family<MethodLabels, LatencyHistogram>,
    /// The series of each method of this side, then `other`, resolved
    /// once: a request costs atomic adds, never a lookup in a family.
    by_method: Vec<MethodSeries>,
    in_flight: Gauge,
    panics: Counter,
    dropped_answers: Counter,
}

/// 0.5 ms to about 16 s, doubling.
#[derive(Debug)]
struct MethodSeries {
    name: &'static str,
    /// By gRPC code, 0 (`OK`) to 16.
    outcomes: Vec<Counter>,
    seconds: LatencyHistogram,
}

impl Served {
    /// The counters of the end that serves `side`'s methods.
    pub fn new(side: Side) -> Self {
        let calls = Family::<CallLabels, Counter>::default();
        let seconds = Family::<MethodLabels, LatencyHistogram>::default();
        let by_method = KNOWN
            .iter()
            .filter(|m| m.served_by == side)
            .map(|m| m.name)
            .chain(["other"])
            .map(|method| MethodSeries {
                name: method,
                outcomes: (0..=16)
                    .map(|code| {
                        let outcome = code_name(Code::from_i32(code));
                        calls.get_or_create(&CallLabels { method, outcome }).clone()
                    })
                    .collect(),
                seconds: seconds.get_or_create(&MethodLabels { method }).clone(),
            })
            .collect();
        Self {
            calls,
            seconds,
            by_method,
            in_flight: Gauge::default(),
            panics: Counter::default(),
            dropped_answers: Counter::default(),
        }
    }

    pub fn for_instance() -> Self {
        Self::new(Side::Instance)
    }

    /// The gateway's: the requests of `GatewayMethods` it serves.
    pub fn for_gateway() -> Self {
        Self::new(Side::Gateway)
    }

    /// Registers the counters under `names`, plus `handler_panics` and
    /// `dropped_answers`.
    pub fn register(&self, registry: &mut Registry, names: ServedNames) {
        registry.register(
            names.calls,
            "Requests served, by method and outcome (OK or the gRPC code)",
            self.calls.clone(),
        );
        registry.register(
            names.seconds,
            "Time handlers took, by method",
            self.seconds.clone(),
        );
        registry.register(
            names.in_flight,
            "Handlers running now",
            self.in_flight.clone(),
        );
        registry.register(
            "handler_panics",
            "Handlers that panicked; each call was answered INTERNAL",
            self.panics.clone(),
        );
        registry.register(
            "dropped_answers",
            "Answers and refusals dropped because the peer's queue stayed full (it does not read)",
            self.dropped_answers.clone(),
        );
    }

    /// The series of `method`: its own when it is one of this side's
    /// catalogue methods, else `other`'s (the last).
    fn series(&self, method: &str) -> &MethodSeries {
        let (other, known) = self.by_method.split_last().expect("other is always there");
        known.iter().find(|m| m.name == method).unwrap_or(other)
    }

    fn label(&self, method: &str) -> &'static str {
        self.series(method).name
    }

    fn count(&self, method: &str, code: Code) {
        if let Some(counter) = self.series(method).outcomes.get(code as usize) {
            counter.inc();
        }
    }

    pub fn calls(&self, method: &str, outcome: &'static str) -> u64 {
        self.calls
            .get(&CallLabels {
                method: self.label(method),
                outcome,
            })
            .map_or(0, |c| c.get())
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    pub fn panics(&self) -> u64 {
        self.panics.get()
    }
}

impl DispatchObserver for Served {
    fn started(&self, _method: &str) {
        self.in_flight.inc();
    }

    fn finished(&self, method: &str, outcome: Result<(), Code>, elapsed: Duration) {
        self.in_flight.dec();
        let series = self.series(method);
        if let Some(counter) = series
            .outcomes
            .get(outcome.err().unwrap_or(Code::Ok) as usize)
        {
            counter.inc();
        }
        series.seconds.observe(elapsed);
    }

    fn rejected(&self, method: &str, code: Code) {
        self.count(method, code);
    }

    fn panicked(&self, _method: &str) {
        self.panics.inc();
    }

    fn answer_dropped(&self) {
        self.dropped_answers.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_side_and_outcome_exists_from_the_start_and_others_share_a_label() {
        let served = Served::new(Side::Instance);
        assert_eq!(served.calls("FindVPSByLease", "NOT_FOUND"), 0);
        served.finished("FindVPSByLease", Ok(()), Duration::from_millis(1));
        served.rejected("made-up", Code::Unimplemented);
        served.rejected("GetLeases", Code::Unimplemented);
        assert_eq!(served.calls("FindVPSByLease", "OK"), 1);
        assert_eq!(
            served.calls("other", "UNIMPLEMENTED"),
            2,
            "unknown names and the other side's methods are `other`"
        );
        let mut registry = Registry::default();
        served.register(
            &mut registry,
            ServedNames {
                calls: "handler_calls",
                seconds: "handler_duration_seconds",
                in_flight: "handlers_in_flight",
            },
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"handler_calls_total{method="FindVPSByLease",outcome="DATA_LOSS"} 0"#)
        );
        assert!(!text.contains(r#"method="GetLeases""#), "{text}");
    }
}
