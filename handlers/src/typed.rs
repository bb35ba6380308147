//! The typed layer: a handler written against a [`Method`]'s own request
//! and response types. Decoding and encoding happen here, once.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use gatemesh_proto::Method;
use prost::Message;

use crate::serve::{Serve, Work, work};
use crate::{Context, Status};

/// Serves method `M`. Implemented for any
/// `Fn(Context, M::Request) -> impl Future<Output = Result<M::Response, E>>`
/// where `E: Into<tonic::Status>` (a `Status` itself, or a crate's own
/// error with a `From` impl), and by hand, with a plain `async fn call`,
/// for handlers that carry state:
///
/// ```ignore
/// impl MethodHandler<FindVpsByLease> for MyHandler {
///     async fn call(&self, ctx: Context, request: FindVpsByLeaseRequest)
///         -> Result<FindVpsByLeaseResponse, Status> { ... }
/// }
/// ```
///
/// The status goes back to the caller as it is: its code and message on
/// the mesh, and the call's own status for a plain gRPC caller. (Details
/// and metadata of a `Status` are not carried.)
///
/// The future is not boxed per call: the dispatcher puts the whole request
/// (decode, this call, encode) into one allocation.
pub trait MethodHandler<M: Method>: Send + Sync + 'static {
    fn call(
        &self,
        ctx: Context,
        request: M::Request,
    ) -> impl Future<Output = Result<M::Response, Status>> + Send;
}

impl<M, F, Fut, E> MethodHandler<M> for F
where
    M: Method,
    F: Fn(Context, M::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<M::Response, E>> + Send + 'static,
    E: Into<Status> + 'static,
{
    fn call(
        &self,
        ctx: Context,
        request: M::Request,
    ) -> impl Future<Output = Result<M::Response, Status>> + Send {
        futures_util::TryFutureExt::map_err(self(ctx, request), Into::into)
    }
}

/// Adapts a [`MethodHandler`] to the dispatcher's raw bytes.
pub(crate) struct Typed<M, H> {
    handler: H,
    _method: PhantomData<fn() -> M>,
}

impl<M, H> Typed<M, H> {
    pub(crate) fn new(handler: H) -> Self {
        Self {
            handler,
            _method: PhantomData,
        }
    }
}

impl<M: Method, H: MethodHandler<M>> Serve for Typed<M, H> {
    fn serve(
        self: Arc<Self>,
        ctx: Context,
        _method: &Arc<str>,
        payload: Bytes,
        span: tracing::Span,
    ) -> Work {
        work(
            async move {
                let request = M::Request::decode(payload).map_err(|e| {
                    Status::invalid_argument(format!("{}: undecodable request: {e}", M::NAME))
                })?;
                let response = self.handler.call(ctx, request).await?;
                Ok(response.encode_to_vec().into())
            },
            span,
        )
    }
}
