//! What a request presents, and the admin API's check of it before it
//! does anything. What a credential proves is [`crate::credentials`]';
//! refusals are counted and logged by [`crate::refusal`].

use std::sync::Arc;

use gatemesh_proto::SECRET_METADATA_KEY;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::credentials::{Credentials, Principal};
use crate::refusal::{Port, Refusals};

/// The secret a request presents: its `x-gatemesh-secret` metadata. What
/// it is worth is [`Credentials::secret`]'s to say, the one place a
/// secret is matched, whatever header carried it.
pub fn presented(metadata: &MetadataMap) -> Option<&[u8]> {
    metadata.get(SECRET_METADATA_KEY).map(|v| v.as_bytes())
}

/// The admin API's interceptor: establishes the caller's [`Principal`]
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

impl tonic::service::Interceptor for CallerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let certificates = request.peer_certs();
        let principal = self.credentials.caller(
            presented(request.metadata()),
            certificates.as_deref().map(Vec::as_slice),
        );
        match principal {
            Ok(principal) => {
                request.extensions_mut().insert(principal);
                Ok(request)
            }
            Err(refusal) => {
                self.refusals
                    .record(Port::Grpc, &refusal, request.remote_addr());
                Err((&refusal).into())
            }
        }
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
