//! Trace propagation across the stream: W3C trace context
//! (`traceparent`, `tracestate`) in a request's [`Metadata`], and the span a
//! served request runs in.
//!
//! Spans cost something only when someone looks: [`enabled`] is a global
//! switch that the binaries turn on when they export spans (OTLP, see
//! `gatemesh_runtime::telemetry`). With it off, a request that carries no
//! trace context gets no span at all ([`tracing::Span::none`]); one that
//! carries a `traceparent` gets a span whose `trace_id` field puts the
//! caller's trace id on the handler's log lines.

use std::sync::atomic::{AtomicBool, Ordering};

use gatemesh_proto::methods::Side;
use gatemesh_proto::{code_name, pb};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tonic::Code;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::Caller;
use crate::metadata::{Metadata, TRACEPARENT, TRACESTATE};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (an OpenTelemetry layer is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turned on by whoever installs the OpenTelemetry layer.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// A W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`), as a remote
/// span context; `None` when it is malformed or names the invalid ids.
/// W3C spells every field in lowercase hex, and a value that does not is
/// invalid: treated as absent, like any other invalid one.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    // Version 00 has exactly four fields; a later version may add more.
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(trace_id, 32) || !hex(span_id, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()? & TraceFlags::SAMPLED.to_u8();
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, state);
    context.is_valid().then_some(context)
}

/// The `traceparent` of `context`.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The trace context `metadata` carries, if any (a bad one is ignored, as
/// W3C asks: the receiver starts a new trace).
pub fn extract(metadata: &Metadata) -> Option<opentelemetry::Context> {
    let context = parse_traceparent(metadata.get(TRACEPARENT)?, metadata.get(TRACESTATE))?;
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

/// Writes the span context of `cx` into `metadata`, replacing any trace
/// context already there; nothing when `cx` has no valid span.
pub fn inject(cx: &opentelemetry::Context, metadata: &mut Metadata) {
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return;
    }
    // Both values are ASCII well within the limits; the count limit is the
    // only way to fail, and then the call goes without its trace context.
    let _ = metadata.insert(TRACEPARENT, format_traceparent(context));
    let state = context.trace_state().header();
    if state.is_empty() {
        metadata.remove(TRACESTATE);
    } else {
        let _ = metadata.insert(TRACESTATE, state);
    }
}

/// The pairs of a request sent from within `span`: `metadata`, plus the
/// span's trace context when spans are exported. Free when both are empty.
pub fn outgoing(mut metadata: Metadata, span: &Span) -> Vec<pb::MetadataEntry> {
    if enabled() && !span.is_none() {
        inject(&span.context(), &mut metadata);
    }
    metadata.into_wire()
}

/// [`outgoing`] from within the current span; with export off, the
/// current span is not even looked up.
pub fn outgoing_current(metadata: Metadata) -> Vec<pb::MetadataEntry> {
    if !enabled() {
        return metadata.into_wire();
    }
    outgoing(metadata, &Span::current())
}

/// The `rpc.service` of a mesh method's spans: the `methods.proto`
/// service that lists it; a method outside the catalogue is an instance's.
pub fn rpc_service(method: &str) -> &'static str {
    gatemesh_proto::methods::known_method(method)
        .map_or(Side::Instance, |m| m.served_by)
        .service_name()
}

/// The span a served request runs in, a server span by the OpenTelemetry
/// RPC conventions: a child of the caller's span when its metadata carries
/// one. [`Span::none`] when spans are not exported and the request carries
/// no trace context.
pub fn serve_span(method: &str, caller: &Caller, metadata: &Metadata) -> Span {
    let traceparent = metadata.get(TRACEPARENT);
    if !enabled() && traceparent.is_none() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "gatemesh.serve",
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = rpc_service(method),
        rpc.method = method,
        caller = %caller.id(),
        environment = %caller.environment(),
        proof = caller.proof().as_str(),
        trace_id = Empty,
        span_id = Empty,
        outcome = Empty,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    if enabled() {
        if let Some(parent) = extract(metadata) {
            let _ = span.set_parent(parent);
        }
        record_ids(&span);
    } else if let Some(context) = traceparent.and_then(|t| parse_traceparent(t, None)) {
        span.record("trace_id", tracing::field::display(context.trace_id()));
    }
    span
}

/// Puts the span's trace and span ids in its `trace_id` and `span_id`
/// fields, for log lines.
pub fn record_ids(span: &Span) {
    let cx = span.context();
    let otel = cx.span();
    let context = otel.span_context();
    if context.is_valid() {
        span.record("trace_id", tracing::field::display(context.trace_id()));
        span.record("span_id", tracing::field::display(context.span_id()));
    }
}

/// Which end of an RPC a span is: the conventions mark them ERROR for
/// different codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ERROR for every code but `OK`.
    Client,
    /// ERROR only for the codes that say the server failed: `UNKNOWN`,
    /// `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`,
    /// `DATA_LOSS`. A caller's mistake (`NOT_FOUND`, `INVALID_ARGUMENT`,
    /// ...) is not the server's error.
    Server,
}

impl Kind {
    pub fn is_error(self, code: Code) -> bool {
        match self {
            Self::Client => code != Code::Ok,
            Self::Server => matches!(
                code,
                Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Unimplemented
                    | Code::Internal
                    | Code::Unavailable
                    | Code::DataLoss
            ),
        }
    }
}

/// Records an RPC's gRPC code on its span (declared with
/// `rpc.grpc.status_code` and `otel.status_description` empty), by the
/// OpenTelemetry RPC conventions: the numeric code, and status ERROR,
/// described by `description`, where [`Kind::is_error`] says so.
pub fn record_code(span: &Span, kind: Kind, code: Code, description: &str) {
    if span.is_none() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i64);
    if kind.is_error(code) {
        span.record("otel.status_description", description);
    }
}

/// Marks how a served request ended: `outcome` (`ok`, a code name,
/// `cancelled`) and its code.
pub fn finished(span: &Span, outcome: &str, code: Code) {
    if !span.is_none() {
        span.record("outcome", outcome);
        record_code(span, Kind::Server, code, code_name(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_ignored() {
        let context = parse_traceparent(PARENT, Some("vendor=value")).unwrap();
        assert!(context.is_remote() && context.is_sampled());
        assert_eq!(format_traceparent(&context), PARENT);
        assert_eq!(context.trace_state().header(), "vendor=value");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // Uppercase hex, in any field: not W3C's spelling.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn inject_writes_what_extract_reads() {
        let mut metadata = Metadata::new();
        metadata.insert(TRACEPARENT, PARENT).unwrap();
        metadata.insert(TRACESTATE, "a=1").unwrap();
        let cx = extract(&metadata).unwrap();
        let mut out = Metadata::new();
        out.insert("x-request-id", "42").unwrap();
        inject(&cx, &mut out);
        assert_eq!(out.get(TRACEPARENT), Some(PARENT));
        assert_eq!(out.get(TRACESTATE), Some("a=1"));
        assert_eq!(out.get("x-request-id"), Some("42"));
        // No span context: nothing written.
        let mut none = Metadata::new();
        inject(&opentelemetry::Context::new(), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn without_export_or_trace_context_there_is_no_span() {
        let caller = Caller::new("gw", "", crate::Proof::Dialed);
        assert!(serve_span("Ping", &caller, &Metadata::new()).is_none());
    }
}
