//! Why a call failed, and the one place that maps it to a gRPC code.

use std::sync::Arc;
use std::time::Duration;

use gatemesh_proto::pb;
use tonic::Code;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No connected instance (matching the filter) serves the method.
    #[error("no instance{} serves {method}", env_suffix(.environment))]
    NoResponders {
        method: String,
        environment: Option<String>,
    },
    /// The method is neither in the catalogue nor served by anyone.
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
    /// `to(instance)` named an instance that is not connected.
    #[error("instance {0} is not connected")]
    NotConnected(String),
    /// `to(instance)` named an instance that does not serve the method.
    #[error("instance {instance} does not serve {method}")]
    NotServed { instance: String, method: String },
    #[error("deadline of {} ms passed", .0.as_millis())]
    DeadlineExceeded(Duration),
    /// Every instance answered, and none validly.
    #[error("not found: {asked} instance(s) answered, none with a valid answer")]
    NotFound { asked: usize },
    /// The instance's outbound queue is full.
    #[error("instance {0} is overloaded (its queue is full)")]
    Overloaded(Arc<str>),
    /// The instance went away before answering.
    #[error("instance {0} disconnected before answering")]
    Disconnected(Arc<str>),
    /// The instance answered with an error status.
    #[error("instance {instance}: {message}")]
    Remote {
        instance: Arc<str>,
        code: Code,
        message: String,
    },
    /// The answer could not be decoded as the method's response type.
    #[error("instance {instance} sent an undecodable answer: {reason}")]
    BadAnswer { instance: Arc<str>, reason: String },
    /// Every instance failed; the individual errors, in arrival order.
    #[error("every instance failed: {}", list(.0))]
    AllFailed(Vec<CallError>),
    #[error("invalid call: {0}")]
    InvalidArgument(String),
    #[error("gateway is draining")]
    Draining,
}

fn env_suffix(env: &Option<String>) -> String {
    env.as_ref()
        .map(|e| format!(" in environment {e:?}"))
        .unwrap_or_default()
}

fn list(errors: &[CallError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl CallError {
    /// The gRPC code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Self::NoResponders { .. }
            | Self::NotConnected(_)
            | Self::Disconnected(_)
            | Self::Draining => Code::Unavailable,
            Self::UnknownMethod(_) | Self::NotServed { .. } => Code::Unimplemented,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::NotFound { .. } => Code::NotFound,
            Self::Overloaded(_) => Code::ResourceExhausted,
            Self::Remote { code, .. } => *code,
            Self::BadAnswer { .. } => Code::Internal,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            // All failed the same way: that way. Otherwise: unavailable.
            Self::AllFailed(errors) => match errors.first().map(Self::code) {
                Some(code) if errors.iter().all(|e| e.code() == code) => code,
                _ => Code::Unavailable,
            },
        }
    }

    /// Whether `one` may retry the call on another instance: the chosen
    /// instance never ran the handler to an answer.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Disconnected(_) | Self::Overloaded(_))
    }

    /// An instance's error answer.
    pub fn remote(instance: Arc<str>, status: pb::Status) -> Self {
        Self::Remote {
            instance,
            code: status.code(),
            message: status.message,
        }
    }
}

impl From<CallError> for tonic::Status {
    fn from(e: CallError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

impl From<&CallError> for pb::Status {
    fn from(e: &CallError) -> Self {
        pb::Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let id: Arc<str> = "a".into();
        let cases = [
            (
                CallError::NoResponders {
                    method: "M".into(),
                    environment: None,
                },
                Code::Unavailable,
            ),
            (
                CallError::DeadlineExceeded(Duration::from_secs(1)),
                Code::DeadlineExceeded,
            ),
            (CallError::NotFound { asked: 3 }, Code::NotFound),
            (CallError::UnknownMethod("X".into()), Code::Unimplemented),
            (CallError::Overloaded(id.clone()), Code::ResourceExhausted),
            (
                CallError::AllFailed(vec![
                    CallError::Overloaded(id.clone()),
                    CallError::Overloaded(id.clone()),
                ]),
                Code::ResourceExhausted,
            ),
            (
                CallError::AllFailed(vec![
                    CallError::Overloaded(id.clone()),
                    CallError::Disconnected(id),
                ]),
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }
}
