//! What the dispatcher runs for a request: the handler's whole work as one
//! boxed future (decode, the handler, encode, the span, the panic guard),
//! so a request costs one allocation for its future, not one per layer.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;

use crate::{Context, RequestHandler, Status};

/// A handler's result, or the panic it ended with.
pub(crate) type HandlerResult = std::thread::Result<Result<Bytes, Status>>;
/// One request's work.
pub(crate) type Work = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A registered handler, as the dispatcher sees it.
pub(crate) trait Serve: Send + Sync + 'static {
    /// The request's work, in `span`, panics caught.
    fn serve(
        self: Arc<Self>,
        ctx: Context,
        method: &Arc<str>,
        payload: Bytes,
        span: tracing::Span,
    ) -> Work;
}

/// Boxes `handled` once, with its span and panic guard.
pub(crate) fn work(
    handled: impl Future<Output = Result<Bytes, Status>> + Send + 'static,
    span: tracing::Span,
) -> Work {
    Box::pin(AssertUnwindSafe(tracing::Instrument::instrument(handled, span)).catch_unwind())
}

/// A [`RequestHandler`] on raw bytes (the registry's escape hatch).
pub(crate) struct Raw<H>(pub(crate) H);

impl<H: RequestHandler> Serve for Raw<H> {
    fn serve(
        self: Arc<Self>,
        ctx: Context,
        method: &Arc<str>,
        payload: Bytes,
        span: tracing::Span,
    ) -> Work {
        let method = Arc::clone(method);
        work(
            async move { self.0.handle(ctx, &method, payload).await },
            span,
        )
    }
}
