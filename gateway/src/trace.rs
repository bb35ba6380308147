//! The gateway's side of one trace: the admin API continues the external
//! caller's trace (W3C `traceparent` in the gRPC headers), a mesh call gets
//! a span, and each instance it asks gets a child span whose context travels
//! in that request's metadata, marked with how it ended (`won`, `not_mine`,
//! `answered`, `cancelled`, or the error's code).
//!
//! With export off ([`gatemesh_handlers::trace::enabled`]) none of these
//! spans exist: a call costs a flag check, and its metadata (the caller's,
//! trace context included) is passed on as it came.

use gatemesh_handlers::metadata::{TRACEPARENT, TRACESTATE};
use gatemesh_handlers::trace::{self, enabled, parse_traceparent, record_trace_id};
use gatemesh_handlers::{Metadata, MetadataError};
use gatemesh_proto::pb;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{Peer, Route, Strategy};

/// gRPC headers of an admin call that belong to the transport or to the
/// admin call itself, never passed on to instances.
const NOT_PASSED_ON: &[&str] = &[
    gatemesh_proto::SECRET_METADATA_KEY,
    "content-type",
    "content-length",
    "user-agent",
    "te",
    "host",
    "authorization",
    "accept-encoding",
];

/// The metadata an admin call passes on, from its gRPC headers: every
/// ASCII header that is not the transport's (`grpc-*`, `content-type`,
/// `user-agent`, `te`, ...) or the secret. Validated like a frame's.
pub(crate) fn admin_metadata(
    headers: &tonic::metadata::MetadataMap,
) -> Result<Metadata, MetadataError> {
    let mut metadata = Metadata::new();
    for entry in headers.iter() {
        let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry else {
            continue;
        };
        let key = key.as_str();
        if key.starts_with("grpc-") || NOT_PASSED_ON.contains(&key) {
            continue;
        }
        let value = value.to_str().map_err(|_| MetadataError::BadValue {
            key: key.to_string(),
            reason: "only printable ASCII is allowed",
        })?;
        metadata.insert(key, value)?;
    }
    Ok(metadata)
}

/// The span of an admin call: a child of the caller's span when its
/// headers carry one. With export off, it exists only when the caller sent
/// a trace context, to put its trace id on the call's log lines; the
/// trace context then goes on to the instances as it came.
///
/// With export on, the trace context is taken out of `metadata`: each
/// request gets its own, a child of its instance's span.
pub(crate) fn admin_span(method: &str, strategy: Strategy, metadata: &mut Metadata) -> Span {
    let traceparent = metadata.get(TRACEPARENT);
    if !enabled() && traceparent.is_none() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "gatemesh.admin",
        otel.kind = "server",
        method,
        strategy = strategy.label(),
        trace_id = Empty,
    );
    if enabled() {
        if let Some(parent) = trace::extract(metadata) {
            let _ = span.set_parent(parent);
        }
        metadata.remove(TRACEPARENT);
        metadata.remove(TRACESTATE);
        record_trace_id(&span);
    } else if let Some(context) = traceparent.and_then(|t| parse_traceparent(t, None)) {
        span.record("trace_id", tracing::field::display(context.trace_id()));
    }
    span
}

/// One mesh call's span and the requests it sent.
pub(crate) struct CallTrace {
    metadata: Metadata,
    span: Span,
    /// Each asked instance's span, by connection id (empty when off).
    requests: Vec<(u64, Span)>,
}

impl CallTrace {
    pub(crate) fn new(method: &str, strategy: Strategy, route: &Route) -> Self {
        let span = if enabled() {
            let span = tracing::info_span!(
                "gatemesh.call",
                method,
                strategy = strategy.label(),
                instance = route.instance.as_deref(),
                environment = route.environment.as_deref(),
                winner = Empty,
                trace_id = Empty,
            );
            record_trace_id(&span);
            span
        } else {
            Span::none()
        };
        Self {
            metadata: route.metadata.clone(),
            span,
            requests: Vec::new(),
        }
    }

    /// The span and the metadata of the request to `peer`.
    pub(crate) fn request(&mut self, peer: &Peer, method: &str) -> (Span, Vec<pb::MetadataEntry>) {
        if self.span.is_none() {
            return (Span::none(), self.metadata.clone().into_wire());
        }
        let span = tracing::info_span!(
            parent: &self.span,
            "gatemesh.request",
            otel.kind = "client",
            method,
            instance = %peer.id(),
            environment = %peer.info.environment(),
            outcome = Empty,
            otel.status_code = Empty,
        );
        let metadata = trace::outgoing(self.metadata.clone(), &span);
        self.requests.push((peer.conn_id(), span.clone()));
        (span, metadata)
    }

    /// Marks how the request to `peer` ended, once it answered.
    pub(crate) fn mark(&self, peer: &Peer, outcome: &'static str) {
        if self.span.is_none() {
            return;
        }
        if let Some((_, span)) = self.requests.iter().find(|(c, _)| *c == peer.conn_id()) {
            outcome_of(span, outcome);
        }
        if outcome == "won" {
            self.span.record("winner", &**peer.id());
        }
    }
}

/// Records a request span's outcome; an error's code sets the span's
/// status to error.
pub(crate) fn outcome_of(span: &Span, outcome: &str) {
    if span.is_none() {
        return;
    }
    span.record("outcome", outcome);
    if !matches!(outcome, "won" | "not_mine" | "answered" | "cancelled") {
        span.record("otel.status_code", "ERROR");
    }
}
