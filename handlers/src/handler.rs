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

/// How a peer proved who it is: which credential the gateway checked when
/// it established the peer's [`Caller`]. A metric label and a log field
/// ([`Proof::as_str`]), never something a peer says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proof {
    /// An mTLS client certificate whose SPIFFE ID
    /// (`spiffe://<trust domain>/env/<environment>/instance/<id>`) names
    /// the id and the environment.
    Spiffe,
    /// An mTLS client certificate of the older form: its DNS SAN (or
    /// common name) is the id; the environment is one the gateway allows
    /// such certificates to name (`GATEWAY_TLS_DNS_SAN_ENVIRONMENTS`).
    LegacyCertificate,
    /// A secret scoped to environments (`GATEWAY_API_SECRETS_FILE`,
    /// `GATEWAY_CALLER_SECRETS_FILE`) that include this one.
    EnvironmentSecret,
    /// A secret valid for any environment (`GATEWAY_API_SECRET`, or a `*`
    /// line of a secrets file).
    SharedSecret,
    /// On an instance: the gateway it dialed (and, over `https://`, whose
    /// certificate it verified).
    Dialed,
}

impl Proof {
    pub const ALL: [Proof; 5] = [
        Proof::Spiffe,
        Proof::LegacyCertificate,
        Proof::EnvironmentSecret,
        Proof::SharedSecret,
        Proof::Dialed,
    ];

    /// Its spelling in logs, metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Proof::Spiffe => "spiffe",
            Proof::LegacyCertificate => "legacy_certificate",
            Proof::EnvironmentSecret => "environment_secret",
            Proof::SharedSecret => "shared_secret",
            Proof::Dialed => "dialed",
        }
    }
}

impl std::fmt::Display for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who sent a request, as established once from a credential: the
/// instance (on the gateway, at its hello) or the gateway (on an
/// instance). Every feature that cares whom it serves (the IP allocator's
/// environment rule, logs, traces) reads it from here, never from a label
/// the peer typed. Its fields are read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    id: Arc<str>,
    environment: Arc<str>,
    proof: Proof,
}

impl Caller {
    /// A caller whose `id` and `environment` `proof` has established.
    pub fn new(id: impl Into<Arc<str>>, environment: impl Into<Arc<str>>, proof: Proof) -> Self {
        Self {
            id: id.into(),
            environment: environment.into(),
            proof,
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// The caller's environment; empty for the gateway's admin API acting
    /// for every environment.
    pub fn environment(&self) -> &Arc<str> {
        &self.environment
    }

    pub fn proof(&self) -> Proof {
        self.proof
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
