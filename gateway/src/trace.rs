//! The gateway's side of one trace: the admin API continues the external
//! caller's trace (W3C `traceparent` in the gRPC headers) in a server span,
//! a mesh call gets a client span, and each instance it asks gets a child
//! client span whose context travels in that request's metadata, marked
//! with how it ended (`won`, `not_mine`, `answered`, `cancelled`,
//! `not_sent`, or the error's code). Every span follows the OpenTelemetry
//! RPC conventions: `rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`, and status ERROR where they say so
//! ([`Kind::is_error`]).
//!
//! With export off ([`gatemesh_handlers::trace::enabled`]) none of these
//! spans exist: a call costs a flag check, and its metadata (the caller's,
//! trace context included) is passed on as it came.

use gatemesh_handlers::Metadata;
use gatemesh_handlers::metadata::{TRACEPARENT, TRACESTATE};
use gatemesh_handlers::trace::{self, Kind, enabled, parse_traceparent, record_code, record_ids};
use gatemesh_proto::{code_name, pb};
use tonic::Code;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{CallError, Peer, Route, Strategy};

/// The span of an admin call, a server span of `GatewayAdmin/Call`: a
/// child of the caller's span when its headers carry one. With export off,
/// it exists only when the caller sent a trace context, to put its trace id
/// on the call's log lines; the trace context then goes on to the
/// instances as it came.
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
        rpc.system = "grpc",
        rpc.service = pb::gateway_admin_server::SERVICE_NAME,
        rpc.method = "Call",
        method,
        strategy = strategy.label(),
        trace_id = Empty,
        span_id = Empty,
        rpc.grpc.status_code = Empty,
        otel.status_description = Empty,
    );
    if enabled() {
        if let Some(parent) = trace::extract(metadata) {
            let _ = span.set_parent(parent);
        }
        metadata.remove(TRACEPARENT);
        metadata.remove(TRACESTATE);
        record_ids(&span);
    } else if let Some(context) = traceparent.and_then(|t| parse_traceparent(t, None)) {
        span.record("trace_id", tracing::field::display(context.trace_id()));
    }
    span
}

/// Marks how an admin call ended.
pub(crate) fn admin_finished(span: &Span, result: Result<(), &tonic::Status>) {
    let (code, message) = result.map_or_else(|s| (s.code(), s.message()), |()| (Code::Ok, ""));
    record_code(span, Kind::Server, code, message);
}

/// One mesh call's span and the requests it sent.
pub(crate) struct CallTrace {
    metadata: Metadata,
    span: Span,
    /// Each asked instance's span, by connection id (empty when off).
    requests: Vec<(u64, Span)>,
}

/// How a request to one instance ended, for its span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    /// It answered: `won`, `not_mine`, `answered`.
    Answered(&'static str),
    /// It failed with this code (or was never sent: `not_sent`).
    Failed(Code),
    NotSent(Code),
    /// The call stopped waiting for it; no status came back.
    Cancelled,
}

impl CallTrace {
    /// A client span for a call of `method`, made before its targets are
    /// picked so that a call nobody could take is seen too.
    pub(crate) fn new(method: &str, strategy: Strategy, route: &Route) -> Self {
        let span = if enabled() {
            let span = tracing::info_span!(
                "gatemesh.call",
                otel.kind = "client",
                rpc.system = "grpc",
                rpc.service = trace::rpc_service(method),
                rpc.method = method,
                strategy = strategy.label(),
                instance = route.instance.as_deref(),
                environment = route.environment.as_deref(),
                winner = Empty,
                trace_id = Empty,
                span_id = Empty,
                rpc.grpc.status_code = Empty,
                otel.status_description = Empty,
            );
            record_ids(&span);
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
            rpc.system = "grpc",
            rpc.service = trace::rpc_service(method),
            rpc.method = method,
            instance = %peer.id(),
            environment = %peer.info.environment(),
            outcome = Empty,
            rpc.grpc.status_code = Empty,
            otel.status_description = Empty,
        );
        let metadata = trace::outgoing(self.metadata.clone(), &span);
        self.requests.push((peer.conn_id(), span.clone()));
        (span, metadata)
    }

    /// Marks how the request to `peer` ended, once it answered.
    pub(crate) fn mark(&self, peer: &Peer, ended: Ended) {
        if self.span.is_none() {
            return;
        }
        if let Some((_, span)) = self.requests.iter().find(|(c, _)| *c == peer.conn_id()) {
            request_ended(span, ended);
        }
        if let Ended::Answered("won") = ended {
            self.span.record("winner", &**peer.id());
        }
    }

    /// Marks how the whole call ended: a client span is ERROR for any
    /// code but `OK`.
    pub(crate) fn finish<T>(&self, result: &Result<T, CallError>) {
        match result {
            Ok(_) => record_code(&self.span, Kind::Client, Code::Ok, ""),
            Err(e) => record_code(&self.span, Kind::Client, e.code(), &e.to_string()),
        }
    }
}

/// Records a request span's outcome and code. A request the call stopped
/// waiting for (`cancelled`) has no status: none came back.
pub(crate) fn request_ended(span: &Span, ended: Ended) {
    if span.is_none() {
        return;
    }
    let (outcome, code) = match ended {
        Ended::Answered(outcome) => (outcome, Some(Code::Ok)),
        Ended::Failed(code) => (code_name(code), Some(code)),
        Ended::NotSent(code) => ("not_sent", Some(code)),
        Ended::Cancelled => ("cancelled", None),
    };
    span.record("outcome", outcome);
    if let Some(code) = code {
        record_code(span, Kind::Client, code, code_name(code));
    }
}
