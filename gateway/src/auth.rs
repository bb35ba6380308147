//! The shared-secret check, done before a stream or call does anything.

use gatemesh_proto::SECRET_METADATA_KEY;
use gatemesh_runtime::Secret;
use tonic::Status;
use tonic::metadata::MetadataMap;

/// Fails with UNAUTHENTICATED unless `metadata` carries `secret`.
pub fn check(metadata: &MetadataMap, secret: &Secret) -> Result<(), Status> {
    match metadata.get(SECRET_METADATA_KEY) {
        None => Err(Status::unauthenticated(format!(
            "missing {SECRET_METADATA_KEY} metadata"
        ))),
        Some(value) if secret.matches(value.as_bytes()) => Ok(()),
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
        && request.metadata().get(SECRET_METADATA_KEY).is_none()
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

impl tonic::service::Interceptor for SecretOrCertInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        check_request(&request, &self.secret, self.optional_with_cert)?;
        Ok(request)
    }
}
