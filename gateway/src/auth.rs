//! What a request presents, and the callers' check of it before a call
//! does anything. What a credential proves is [`crate::credentials`]';
//! refusals are counted and logged by [`crate::refusal`].
//!
//! A peer presents the secret in either of two headers: gatemesh's own
//! `x-gatemesh-secret`, or `authorization: Bearer <secret>`, what gRPC
//! libraries and tools send for a token (grpcurl's `-H`, grpcio's call
//! credentials). [`presented`] is the one place that reads them; every
//! check (the streams, the admin API, the methods served as plain gRPC,
//! the listener's tracking of authenticated connections) goes through it.

use std::net::SocketAddr;
use std::sync::Arc;

use gatemesh_proto::SECRET_METADATA_KEY;
use tonic::codegen::http::HeaderMap;
use tonic::{Request, Status};

use crate::credentials::{Credentials, Principal};
use crate::refusal::{Port, Refusal, Refusals};

/// The standard header that carries a bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The secret `metadata` presents: `x-gatemesh-secret`, else the token of
/// `authorization: Bearer <token>` (the scheme in any case, as RFC 7235
/// has it). `None` when neither is there: another scheme (`Basic ...`)
/// presents nothing. What it is worth is [`Credentials::secret`]'s to
/// say, the one place a secret is matched, whatever header carried it.
/// Both ports read it: the gRPC port with a request's metadata
/// (`metadata.as_ref()`), the HTTP port with its headers.
pub fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(SECRET_METADATA_KEY) {
        return Some(value.as_bytes());
    }
    let value = headers.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// The callers' check (the admin API's interceptor, and the methods
/// served as plain gRPC): establishes the caller's [`Principal`]
/// from its credential and puts it in the request's extensions, where the
/// service reads it ([`principal`]); a refusal is counted and logged with
/// the peer's address, and the call ends with its status.
#[derive(Clone)]
pub struct CallerAuth {
    credentials: Arc<Credentials>,
    refusals: Arc<Refusals>,
}

impl CallerAuth {
    pub(crate) fn new(credentials: Arc<Credentials>, refusals: Arc<Refusals>) -> Self {
        Self {
            credentials,
            refusals,
        }
    }
}

impl CallerAuth {
    /// The caller `request`'s credential proves; a refusal is counted and
    /// logged with the peer's address.
    pub(crate) fn principal_of<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let certificates = request.peer_certs();
        self.credentials
            .caller(
                presented(request.metadata().as_ref()),
                certificates.as_deref().map(Vec::as_slice),
            )
            .map_err(|refusal| {
                self.refusals
                    .record(Port::Grpc, &refusal, request.remote_addr());
                (&refusal).into()
            })
    }
}

impl CallerAuth {
    /// Counts and logs `refusal` of a caller already established (e.g. a
    /// call outside its environments).
    pub(crate) fn record(&self, refusal: &Refusal, remote: Option<SocketAddr>) {
        self.refusals.record(Port::Grpc, refusal, remote);
    }
}

impl tonic::service::Interceptor for CallerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.principal_of(&request)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The caller [`CallerAuth`] established for `request`.
pub(crate) fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::internal("no caller was established for this request"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(key, value.parse().unwrap());
        headers
    }

    #[test]
    fn either_header_presents_the_secret() {
        assert_eq!(
            presented(&with(SECRET_METADATA_KEY, "s3cret")),
            Some(&b"s3cret"[..])
        );
        for bearer in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret"] {
            assert_eq!(
                presented(&with(AUTHORIZATION, bearer)),
                Some(&b"s3cret"[..])
            );
        }
    }

    #[test]
    fn another_scheme_or_nothing_presents_no_secret() {
        for metadata in [
            with(AUTHORIZATION, "Basic czNjcmV0"),
            with(AUTHORIZATION, "Bearer"),
            with(AUTHORIZATION, "s3cret"),
            HeaderMap::new(),
        ] {
            assert_eq!(presented(&metadata), None, "{metadata:?}");
        }
        assert_eq!(
            presented(&with(AUTHORIZATION, "Bearer ")),
            Some(&b""[..]),
            "an empty token is presented, and wrong"
        );
    }
}
