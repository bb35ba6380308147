//! The gatemesh wire contract.
//!
//! - [`pb`]: the types generated from `proto/` (envelopes, the `Gateway` and
//!   `GatewayAdmin` services, the method messages). Generated code stays in
//!   this one module.
//! - [`Method`] and [`methods`]: each mesh method's name bound to its request
//!   and response types and to the side that serves it, generated from
//!   `methods.proto`, so callers and handlers cannot mix them up.
//! - [`codec`]: the services' codec: prost with small initial stream
//!   buffers, so an idle stream holds little memory.
//! - [`DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection and for
//!   turning JSON into method messages without per-method code.

#![forbid(unsafe_code)]

// The generated bindings name `::gatemesh_proto`, here as in any crate.
extern crate self as gatemesh_proto;

pub mod codec;
pub mod methods;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("gatemesh.v1");
}

pub use methods::{
    Catalogue, GatewayMethod, GatewaySide, InstanceMethod, InstanceSide, KnownMethod, Method,
    MethodSet, ServedBy, ServingSide, Side,
};

/// Includes the method bindings gatemesh-build wrote for this crate
/// (`OUT_DIR/gatemesh_methods.rs`): a type per rpc, `KNOWN`,
/// `DESCRIPTOR_SET` and `SET`. Put it in a module of its own, beside the
/// messages' module (`pb` by default, see `gatemesh_build::Builder::messages_path`):
///
/// ```ignore
/// pub mod pb { tonic::include_proto!("hello.v1"); }
/// pub mod methods { gatemesh_proto::include_methods!(); }
/// ```
#[macro_export]
macro_rules! include_methods {
    () => {
        include!(concat!(env!("OUT_DIR"), "/gatemesh_methods.rs"));
    };
}

/// The protocol version this build speaks; sent in hello and welcome.
pub const PROTOCOL_VERSION: u32 = 1;

/// Encoded `FileDescriptorSet` of every file in `proto/`.
pub const DESCRIPTOR_SET: &[u8] = methods::DESCRIPTOR_SET;

/// Metadata key that carries the shared secret on every gRPC call.
pub const SECRET_METADATA_KEY: &str = "x-gatemesh-secret";

/// The canonical gRPC name of a code (`NOT_FOUND`), the one spelling used
/// in logs, metric labels, the CLI and the docs.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl pb::Status {
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
            refused: false,
        }
    }

    /// A refusal before any handler ran: safe for the caller to retry
    /// elsewhere.
    pub fn refused(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            refused: true,
            ..Self::new(code, message)
        }
    }

    /// The status code; an unknown number maps to `Unknown`.
    pub fn code(&self) -> tonic::Code {
        tonic::Code::from_i32(self.code)
    }
}

impl From<pb::Status> for tonic::Status {
    fn from(status: pb::Status) -> Self {
        tonic::Status::new(status.code(), status.message)
    }
}

impl From<&tonic::Status> for pb::Status {
    fn from(status: &tonic::Status) -> Self {
        Self::new(status.code(), status.message())
    }
}
