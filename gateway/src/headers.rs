//! Which of a gRPC caller's headers cross into the mesh: an allow-list.
//!
//! A call that reaches the gateway over plain gRPC (the admin API's `Call`)
//! carries headers its client and every proxy on the way put there:
//! cookies, proxy credentials, API keys, `x-forwarded-*`. The requests it
//! becomes go to instances of every environment, so only names on the
//! list cross, as metadata: the W3C trace context ([`TRACE_CONTEXT`],
//! always) and the names the operator adds (`GATEWAY_FORWARD_HEADERS`).
//! A name that carries a credential or that a proxy sets is refused in
//! that setting at start ([`ForwardHeaders::parse`]), so the list can
//! never let one through.
//!
//! [`ForwardHeaders::metadata`] is the one place headers become metadata;
//! every gRPC entry point that turns a call into mesh requests calls it.

use std::sync::atomic::{AtomicBool, Ordering};

use gatemesh_handlers::metadata::{TRACEPARENT, TRACESTATE, check_key};
use gatemesh_handlers::{Metadata, MetadataError};
use tonic::metadata::{KeyAndValueRef, MetadataMap};

/// W3C baggage (<https://www.w3.org/TR/baggage/>), which travels with the
/// trace context.
pub const BAGGAGE: &str = "baggage";

/// Always forwarded: the W3C trace context, so one trace follows a call.
pub const TRACE_CONTEXT: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

/// Why a header is never forwarded, whatever the setting says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeverForwarded {
    /// It proves who the caller is: a cookie, a token, a key, a password.
    Credential,
    /// A proxy sets it about its client or itself.
    Proxy,
    /// It belongs to the gRPC call or its connection.
    Transport,
    /// gatemesh's own (`gatemesh-environment`, `gatemesh-instance`,
    /// `gatemesh-strategy`, ...): the gateway reads it, instances never.
    Routing,
}

/// Credential headers by name.
const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-amz-security-token",
    gatemesh_proto::SECRET_METADATA_KEY,
];

/// Words that make a name a credential's, wherever they appear in it
/// (`x-auth-token`, `x-csrf-token`, `x-session`, `x-client-secret`).
const CREDENTIAL_WORDS: &[&str] = &[
    "auth",
    "cookie",
    "token",
    "secret",
    "password",
    "passwd",
    "credential",
    "api-key",
    "apikey",
    "session",
];

/// What proxies set.
const PROXY: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "via",
    "x-client-ip",
    "true-client-ip",
];
const PROXY_PREFIXES: &[&str] = &["x-forwarded-", "proxy-", "cf-", "x-envoy-"];

/// HTTP/2 and gRPC's own (`grpc-*` cannot be metadata at all).
const TRANSPORT: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "user-agent",
    "te",
    "host",
    "accept-encoding",
    "connection",
    "keep-alive",
    "upgrade",
];

impl NeverForwarded {
    /// Why `name` (lowercase) may never cross, if it may not.
    pub fn of(name: &str) -> Option<Self> {
        if CREDENTIALS.contains(&name) || CREDENTIAL_WORDS.iter().any(|w| name.contains(w)) {
            Some(Self::Credential)
        } else if PROXY.contains(&name) || PROXY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            Some(Self::Proxy)
        } else if TRANSPORT.contains(&name) {
            Some(Self::Transport)
        } else if name.starts_with("gatemesh-") {
            Some(Self::Routing)
        } else {
            None
        }
    }

    fn says(self) -> &'static str {
        match self {
            Self::Credential => "carries a credential",
            Self::Proxy => "is set by proxies",
            Self::Transport => "belongs to the gRPC transport",
            Self::Routing => "steers the call at the gateway",
        }
    }
}

/// The allow-list: the trace context and the operator's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardHeaders {
    /// `GATEWAY_FORWARD_HEADERS`, checked, without the trace context.
    extra: Vec<String>,
}

/// A call's metadata, and how many of its caller's headers stayed behind.
#[derive(Debug, Default)]
pub struct Forwarded {
    pub metadata: Metadata,
    /// Headers not on the list (the transport's aside).
    pub dropped: usize,
}

impl ForwardHeaders {
    /// The list `names` (comma-separated header names) adds to the trace
    /// context. Each must be a metadata key, and none may carry a
    /// credential or be a proxy's or the transport's; the error says which
    /// and why, for the setting's one line.
    pub fn parse(names: &str) -> Result<Self, String> {
        let mut extra: Vec<String> = Vec::new();
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            check_key(name).map_err(|e| format!("{name:?} is not a header name: {e}"))?;
            if let Some(why) = NeverForwarded::of(name) {
                return Err(format!(
                    "{name:?} {}: never forwarded to instances",
                    why.says()
                ));
            }
            if !TRACE_CONTEXT.contains(&name) && !extra.iter().any(|n| n == name) {
                extra.push(name.to_string());
            }
        }
        Ok(Self { extra })
    }

    /// Whether a header of that (lowercase) name crosses.
    pub fn allows(&self, name: &str) -> bool {
        TRACE_CONTEXT.contains(&name) || self.extra.iter().any(|n| n == name)
    }

    /// Every name that crosses: the trace context, then the operator's.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        TRACE_CONTEXT
            .into_iter()
            .chain(self.extra.iter().map(String::as_str))
    }

    /// The metadata a gRPC call's `headers` give its requests: the ASCII
    /// headers on the list, validated like a frame's metadata (an invalid
    /// one fails the call). Every other header stays here.
    pub fn metadata(&self, headers: &MetadataMap) -> Result<Forwarded, MetadataError> {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        let mut forwarded = Forwarded::default();
        for entry in headers.iter() {
            let (key, value) = match entry {
                KeyAndValueRef::Ascii(key, value) => (key.as_str(), value),
                KeyAndValueRef::Binary(key, _) => {
                    forwarded.dropped += 1;
                    tracing::debug!(header = key.as_str(), "binary header not forwarded");
                    continue;
                }
            };
            if !self.allows(key) {
                if key.starts_with("grpc-") || NeverForwarded::of(key).is_some() {
                    continue;
                }
                forwarded.dropped += 1;
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        header = key,
                        "a caller's header not in GATEWAY_FORWARD_HEADERS stays at the gateway \
                         (logged once; counted in /metrics)"
                    );
                }
                continue;
            }
            let value = value.to_str().map_err(|_| MetadataError::BadValue {
                key: key.to_string(),
                reason: "only printable ASCII is allowed",
            })?;
            forwarded.metadata.insert(key, value)?;
        }
        Ok(forwarded)
    }

    /// [`Self::metadata`] as a call through the gateway takes it (the
    /// admin API, the methods served as plain gRPC): the headers left
    /// behind added to `dropped` (`gatemesh_gateway_headers_not_forwarded_total`),
    /// an invalid one the call's `INVALID_ARGUMENT`.
    pub(crate) fn crossing(
        &self,
        headers: &MetadataMap,
        dropped: &std::sync::atomic::AtomicU64,
    ) -> Result<Metadata, tonic::Status> {
        let forwarded = self
            .metadata(headers)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        dropped.fetch_add(forwarded.dropped as u64, Ordering::Relaxed);
        Ok(forwarded.metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (k, v) in list {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    fn crossed(forward: &ForwardHeaders, list: &[(&'static str, &str)]) -> Vec<String> {
        let forwarded = forward.metadata(&headers(list)).unwrap();
        forwarded
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[test]
    fn only_the_trace_context_and_the_named_headers_cross() {
        let hostile = [
            ("cookie", "s=1"),
            ("proxy-authorization", "Basic eA=="),
            ("x-api-key", "k"),
            ("x-amz-security-token", "t"),
            ("forwarded", "for=192.0.2.1"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-real-ip", "192.0.2.1"),
            ("x-gatemesh-secret", "s"),
            ("user-agent", "grpc-go"),
            ("grpc-timeout", "5S"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("baggage", "k=v"),
            ("x-request-id", "42"),
            ("x-tenant", "acme"),
        ];
        let none = ForwardHeaders::default();
        assert_eq!(
            crossed(&none, &hostile),
            [
                "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "baggage=k=v"
            ]
        );
        let forwarded = none.metadata(&headers(&hostile)).unwrap();
        assert_eq!(
            forwarded.dropped, 2,
            "x-request-id and x-tenant stayed; credentials, proxies' and the transport's are no news"
        );
        let some =
            ForwardHeaders::parse(" x-request-id, ,x-tenant,traceparent,x-request-id").unwrap();
        assert_eq!(
            some.names().collect::<Vec<_>>(),
            [
                "traceparent",
                "tracestate",
                "baggage",
                "x-request-id",
                "x-tenant"
            ]
        );
        assert_eq!(crossed(&some, &hostile).len(), 4);
        assert!(some.allows("x-tenant") && !some.allows("cookie"));
        // An allowed header is still checked as metadata.
        let long = "v".repeat(5000);
        let e = some
            .metadata(&headers(&[("x-request-id", &long)]))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("metadata value of \"x-request-id\""),
            "{e}"
        );
    }

    #[test]
    fn credentials_proxy_and_transport_names_are_refused_in_the_setting() {
        for (name, why) in [
            ("cookie", "carries a credential"),
            ("authorization", "carries a credential"),
            ("x-auth-token", "carries a credential"),
            ("x-csrf-token", "carries a credential"),
            ("x-gatemesh-secret", "carries a credential"),
            ("x-forwarded-proto", "is set by proxies"),
            ("forwarded", "is set by proxies"),
            ("x-real-ip", "is set by proxies"),
            ("content-type", "belongs to the gRPC transport"),
            ("gatemesh-environment", "steers the call at the gateway"),
            ("gatemesh-anything", "steers the call at the gateway"),
        ] {
            let e = ForwardHeaders::parse(&format!("x-request-id,{name}")).unwrap_err();
            assert_eq!(e, format!("{name:?} {why}: never forwarded to instances"));
        }
        for bad in ["X-Request-Id", "grpc-status", "x-data-bin", "a b"] {
            let e = ForwardHeaders::parse(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("{bad:?} is not a header name: ")),
                "{e}"
            );
        }
        assert_eq!(
            ForwardHeaders::parse("").unwrap(),
            ForwardHeaders::default()
        );
    }
}
