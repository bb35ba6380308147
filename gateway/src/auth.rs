//! The shared-secret check, done before a stream or call does anything.
//!
//! A caller presents the secret in either of two headers: gatemesh's own
//! `x-gatemesh-secret`, or `authorization: Bearer <secret>`, what gRPC
//! libraries and tools send for a token (grpcurl's `-H`, grpcio's call
//! credentials). [`presented`] is the one place that reads them; every
//! check (the streams, the admin API, the methods served as plain gRPC,
//! the listener's tracking of authenticated connections) goes through it.

use gatemesh_proto::SECRET_METADATA_KEY;
use gatemesh_runtime::Secret;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// The standard header that carries a bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The secret `metadata` presents: `x-gatemesh-secret`, else the token of
/// `authorization: Bearer <token>` (the scheme in any case, as RFC 7235
/// has it). `None` when neither is there: another scheme (`Basic ...`)
/// presents nothing.
pub fn presented(metadata: &MetadataMap) -> Option<&[u8]> {
    if let Some(value) = metadata.get(SECRET_METADATA_KEY) {
        return Some(value.as_bytes());
    }
    let value = metadata.get(AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// Fails with UNAUTHENTICATED unless `metadata` presents `secret`.
pub fn check(metadata: &MetadataMap, secret: &Secret) -> Result<(), Status> {
    match presented(metadata) {
        None => Err(Status::unauthenticated(format!(
            "missing secret: send {SECRET_METADATA_KEY} or authorization: Bearer"
        ))),
        Some(given) if secret.matches(given) => Ok(()),
        Some(_) => Err(Status::unauthenticated("wrong secret")),
    }
}

/// [`check`], except that when `optional_with_cert` is set a request over
/// a connection with a verified client certificate may leave the secret
/// out. A wrong secret is refused either way.
pub fn check_request<T>(
    request: &tonic::Request<T>,
    secret: &Secret,
    optional_with_cert: bool,
) -> Result<(), Status> {
    if optional_with_cert
        && presented(request.metadata()).is_none()
        && crate::tls::has_client_cert(request)
    {
        return Ok(());
    }
    check(request.metadata(), secret)
}

/// A tonic interceptor for unary services.
#[derive(Clone)]
pub struct SecretInterceptor(pub Secret);

impl SecretInterceptor {
    /// Like the plain interceptor, but honours `GATEWAY_TLS_SECRET_OPTIONAL`.
    pub fn for_config(config: &crate::GatewayConfig) -> SecretOrCertInterceptor {
        SecretOrCertInterceptor {
            secret: config.api_secret.clone(),
            optional_with_cert: config.secret_optional_with_cert(),
        }
    }
}

impl tonic::service::Interceptor for SecretInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        check(request.metadata(), &self.0)?;
        Ok(request)
    }
}

/// The secret check of [`check_request`] as a tonic interceptor.
#[derive(Clone)]
pub struct SecretOrCertInterceptor {
    secret: Secret,
    optional_with_cert: bool,
}

impl SecretOrCertInterceptor {
    /// [`check_request`] with this interceptor's settings.
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        check_request(request, &self.secret, self.optional_with_cert)
    }
}

impl tonic::service::Interceptor for SecretOrCertInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        SecretOrCertInterceptor::check(self, &request)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: &'static str, value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(key, value.parse().unwrap());
        metadata
    }

    #[test]
    fn either_header_presents_the_secret() {
        let secret = Secret::new("s3cret");
        assert!(check(&with(SECRET_METADATA_KEY, "s3cret"), &secret).is_ok());
        assert!(check(&with(AUTHORIZATION, "Bearer s3cret"), &secret).is_ok());
        assert!(check(&with(AUTHORIZATION, "bearer s3cret"), &secret).is_ok());
        let wrong = check(&with(AUTHORIZATION, "Bearer nope"), &secret).unwrap_err();
        assert_eq!(
            (wrong.code(), wrong.message()),
            (tonic::Code::Unauthenticated, "wrong secret")
        );
    }

    #[test]
    fn another_scheme_or_nothing_presents_no_secret() {
        for metadata in [
            with(AUTHORIZATION, "Basic czNjcmV0"),
            with(AUTHORIZATION, "Bearer"),
            with(AUTHORIZATION, "s3cret"),
            MetadataMap::new(),
        ] {
            assert_eq!(presented(&metadata), None, "{metadata:?}");
            let refused = check(&metadata, &Secret::new("s3cret")).unwrap_err();
            assert!(
                refused.message().starts_with("missing secret"),
                "{refused:?}"
            );
        }
        assert_eq!(
            presented(&with(AUTHORIZATION, "Bearer ")),
            Some(&b""[..]),
            "an empty token is presented, and wrong"
        );
    }
}
