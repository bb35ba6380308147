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

/// A tonic interceptor for unary services.
#[derive(Clone)]
pub struct SecretInterceptor(pub Secret);

impl tonic::service::Interceptor for SecretInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        check(request.metadata(), &self.0)?;
        Ok(request)
    }
}
