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
    /// The instance's stream ended before the request was written to it:
    /// the handler never ran.
    #[error("instance {0} disconnected before the request was sent")]
    Unreachable(Arc<str>),
    /// The instance went away after the request was sent and before it
    /// answered: the handler may have run.
    #[error("instance {0} disconnected before answering")]
    Disconnected(Arc<str>),
    /// The instance answered with an error status. `refused`: it refused
    /// the request before any handler ran (overloaded, draining).
    #[error("instance {instance}: {message}")]
    Remote {
        instance: Arc<str>,
        code: Code,
        message: String,
        refused: bool,
    },
    /// The answer could not be decoded as the method's response type.
    #[error("instance {instance} sent an undecodable answer: {reason}")]
    BadAnswer { instance: Arc<str>, reason: String },
    /// Every instance failed; the individual errors, in arrival order.
    #[error("every instance failed: {}", list(.0))]
    AllFailed(Vec<CallError>),
    /// `first_valid`: no valid answer, and some instances failed rather
    /// than answer "not mine" (one of them may hold the answer).
    #[error("no valid answer from {asked} instance(s) asked: {}{}", list(.failed), not_mine_suffix(*.not_mine))]
    NoValidAnswer {
        asked: usize,
        not_mine: usize,
        /// Each failed instance's error, in arrival order.
        failed: Vec<CallError>,
    },
    #[error("invalid call: {0}")]
    InvalidArgument(String),
    /// The caller named an environment, or an instance of one, that it
    /// may not reach ([`Route::within`](crate::Route::within)).
    #[error("{0}")]
    OutsideScope(String),
    /// The caller named an instance of an environment it may not reach:
    /// refused (and counted) as [`Self::OutsideScope`], but told what
    /// [`Self::NotConnected`] tells, so that a caller confined to dev
    /// cannot find out which ids prod's instances have. `why` is for the
    /// gateway's log and counters only.
    #[error("instance {id} is not connected")]
    InstanceOutsideScope { id: String, why: String },
    #[error("gateway is draining")]
    Draining,
}

fn env_suffix(env: &Option<String>) -> String {
    env.as_ref()
        .map(|e| format!(" in environment {e:?}"))
        .unwrap_or_default()
}

/// Each error with its code, so a caller sees who failed how.
fn list(errors: &[CallError]) -> String {
    errors
        .iter()
        .map(|e| {
            format!(
                "{} ({})",
                e,
                gatemesh_handlers::dispatch::code_name(e.code())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn not_mine_suffix(not_mine: usize) -> String {
    match not_mine {
        0 => String::new(),
        n => format!("; {n} answered not mine"),
    }
}

impl CallError {
    /// The gRPC code this error travels as.
    pub fn code(&self) -> Code {
        match self {
            Self::NoResponders { .. }
            | Self::NotConnected(_)
            | Self::InstanceOutsideScope { .. }
            | Self::Unreachable(_)
            | Self::Disconnected(_)
            | Self::Draining => Code::Unavailable,
            Self::UnknownMethod(_) | Self::NotServed { .. } => Code::Unimplemented,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::NotFound { .. } => Code::NotFound,
            Self::Overloaded(_) => Code::ResourceExhausted,
            Self::Remote { code, .. } => *code,
            Self::BadAnswer { .. } => Code::Internal,
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::OutsideScope(_) => Code::PermissionDenied,
            // All failed the same way: that way. Otherwise: unavailable.
            Self::AllFailed(errors) | Self::NoValidAnswer { failed: errors, .. } => {
                match errors.first().map(Self::code) {
                    Some(code) if errors.iter().all(|e| e.code() == code) => code,
                    _ => Code::Unavailable,
                }
            }
        }
    }

    /// The refusal at the trust boundary this is, if it is one: the
    /// caller's port counts and logs it ([`crate::refusal::Refusals`]).
    pub fn refusal(&self) -> Option<crate::refusal::Refusal> {
        match self {
            Self::OutsideScope(why) | Self::InstanceOutsideScope { why, .. } => {
                Some(crate::refusal::Refusal::Environment(why.clone()))
            }
            _ => None,
        }
    }

    /// Whether `one` may send the call to another instance. Always when
    /// the chosen instance never ran it (not written, or refused before
    /// running); after it was written, only for an idempotent method: by
    /// default a call is never run twice.
    pub fn is_retryable(&self, idempotent: bool) -> bool {
        match self {
            Self::Unreachable(_) | Self::Overloaded(_) => true,
            Self::Remote { refused, .. } => *refused,
            Self::Disconnected(_) => idempotent,
            _ => false,
        }
    }

    /// An instance's error answer.
    pub fn remote(instance: Arc<str>, status: pb::Status) -> Self {
        Self::Remote {
            instance,
            code: status.code(),
            message: status.message,
            refused: status.refused,
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
