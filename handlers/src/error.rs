//! The error a handler returns: a gRPC status code and a message that
//! travels back to the caller.

use gatemesh_proto::pb;
use tonic::Code;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({})", gatemesh_proto::code_name(*.code))]
pub struct HandlerError {
    pub code: Code,
    pub message: String,
}

impl HandlerError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, message)
    }

    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(Code::Unimplemented, message)
    }

    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Self::new(Code::DeadlineExceeded, message)
    }

    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::new(Code::Cancelled, message)
    }

    /// An unexpected failure; the full error chain becomes the message.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        Self::new(Code::Internal, format!("{error:#}"))
    }
}

impl From<HandlerError> for pb::Status {
    fn from(e: HandlerError) -> Self {
        pb::Status::new(e.code, e.message)
    }
}

impl From<pb::Status> for HandlerError {
    fn from(s: pb::Status) -> Self {
        Self::new(s.code(), s.message)
    }
}
