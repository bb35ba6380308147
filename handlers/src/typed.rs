//! The typed layer: a handler written against a [`Method`]'s own request
//! and response types. Decoding and encoding happen here, once.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use bytes::Bytes;
use gatemesh_proto::Method;
use prost::Message;

use crate::{Context, HandlerError, RequestHandler};

/// Serves method `M`. Implemented for any
/// `Fn(Context, M::Request) -> impl Future<Output = Result<M::Response, HandlerError>>`,
/// and by hand for handlers that carry state.
#[async_trait]
pub trait MethodHandler<M: Method>: Send + Sync + 'static {
    async fn call(&self, ctx: Context, request: M::Request) -> Result<M::Response, HandlerError>;
}

#[async_trait]
impl<M, F, Fut> MethodHandler<M> for F
where
    M: Method,
    F: Fn(Context, M::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<M::Response, HandlerError>> + Send + 'static,
{
    async fn call(&self, ctx: Context, request: M::Request) -> Result<M::Response, HandlerError> {
        self(ctx, request).await
    }
}

/// Adapts a [`MethodHandler`] to the raw [`RequestHandler`].
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

#[async_trait]
impl<M: Method, H: MethodHandler<M>> RequestHandler for Typed<M, H> {
    async fn handle(
        &self,
        ctx: Context,
        _method: &str,
        payload: Bytes,
    ) -> Result<Bytes, HandlerError> {
        let request = M::Request::decode(payload).map_err(|e| {
            HandlerError::invalid_argument(format!("{}: undecodable request: {e}", M::NAME))
        })?;
        let response = self.handler.call(ctx, request).await?;
        Ok(response.encode_to_vec().into())
    }
}
