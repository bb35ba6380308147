//! The trait every handler implements, and what it is told about a call.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Metadata, Status};

/// Serves one or more methods on raw protobuf bytes. Most handlers are
/// written against the typed [`MethodHandler`](crate::MethodHandler) instead.
#[async_trait]
pub trait RequestHandler: Send + Sync + 'static {
    async fn handle(&self, ctx: Context, method: &str, payload: Bytes) -> Result<Bytes, Status>;
}

/// Who sent a request: the instance (on the gateway) or the gateway (on an
/// instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: Arc<str>,
    pub environment: Arc<str>,
}

impl Caller {
    pub fn new(id: impl Into<Arc<str>>, environment: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            environment: environment.into(),
        }
    }
}

/// What a handler knows about the call it serves.
///
/// The cancellation signal fires when the caller gives up, when another
/// instance already won a `first_valid` race, when the deadline passes, or
/// when the stream closes. A handler that ignores it is stopped anyway a
/// short grace period later; one that watches it can clean up first.
#[derive(Debug, Clone)]
pub struct Context {
    caller: Caller,
    deadline: Instant,
    cancel: CancellationToken,
    metadata: Metadata,
}

impl Context {
    pub fn new(caller: Caller, deadline: Instant, cancel: CancellationToken) -> Self {
        Self {
            caller,
            deadline,
            cancel,
            metadata: Metadata::new(),
        }
    }

    /// The same context, with the metadata the caller sent.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// The metadata the caller sent with the request (W3C trace context
    /// included, when it sent one).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// When the caller stops waiting for the answer.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Resolves once the call is cancelled or its deadline has passed.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The token itself, to hand to work the handler spawns.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }
}
