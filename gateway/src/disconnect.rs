//! [`Disconnect`]: why a stream ended, made where it happens and turned,
//! at the edges, into a log field, a metric label, the stream's final
//! status and the `GoAway` the instance reads.

use std::fmt;
use std::time::Duration;

use gatemesh_proto::pb;
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The instance ended its half of the stream.
    ClosedByInstance,
    /// Nothing arrived from the instance for this long.
    HeartbeatTimeout(Duration),
    /// The instance's outbound queue stayed full past the stuck limit: it
    /// does not read.
    Stuck,
    /// The instance kept breaking the protocol; `last` is the last breach.
    Violations { count: u32, last: String },
    /// The instance sent a frame over the gRPC limit.
    FrameTooLarge(String),
    /// The transport failed under the stream, or a frame did not decode.
    StreamError { code: Code, message: String },
    /// A newer stream of the same instance id took over.
    Replaced,
    /// The gateway is shutting down; come back after this long.
    Shutdown { reconnect_after_ms: u32 },
    /// tonic dropped the response stream: the connection is gone.
    ConnectionLost,
}

impl Disconnect {
    /// Every label [`Self::label`] can return, for metrics present from the
    /// start.
    pub const LABELS: [&'static str; 9] = [
        "closed_by_instance",
        "heartbeat_timeout",
        "stuck",
        "protocol_violations",
        "frame_too_large",
        "stream_error",
        "replaced",
        "shutdown",
        "connection_lost",
    ];

    /// The metric label: a small fixed set.
    pub fn label(&self) -> &'static str {
        let i = match self {
            Self::ClosedByInstance => 0,
            Self::HeartbeatTimeout(_) => 1,
            Self::Stuck => 2,
            Self::Violations { .. } => 3,
            Self::FrameTooLarge(_) => 4,
            Self::StreamError { .. } => 5,
            Self::Replaced => 6,
            Self::Shutdown { .. } => 7,
            Self::ConnectionLost => 8,
        };
        Self::LABELS[i]
    }

    /// The status the gateway ends the stream with: a stream ended for
    /// cause never ends OK.
    pub fn end_status(&self) -> Option<Status> {
        match self {
            Self::ClosedByInstance | Self::Replaced | Self::Shutdown { .. } => None,
            Self::ConnectionLost => None,
            Self::HeartbeatTimeout(_) => Some(Status::unavailable(self.to_string())),
            Self::Stuck => Some(Status::resource_exhausted(self.to_string())),
            Self::Violations { .. } => Some(Status::invalid_argument(self.to_string())),
            Self::FrameTooLarge(_) => Some(Status::resource_exhausted(self.to_string())),
            Self::StreamError { code, .. } => Some(Status::new(
                match code {
                    Code::Ok | Code::Cancelled => Code::Unavailable,
                    // tonic reports an undecodable frame as INTERNAL; the
                    // fault is the peer's input.
                    Code::Internal => Code::InvalidArgument,
                    code => *code,
                },
                self.to_string(),
            )),
        }
    }

    /// The last frame the instance reads, telling it why and when to return.
    pub fn goaway(&self) -> Option<pb::GoAway> {
        match self {
            Self::Replaced => Some(pb::GoAway {
                reason: self.to_string(),
                reconnect_after_ms: 0,
            }),
            Self::Shutdown { reconnect_after_ms } => Some(pb::GoAway {
                reason: self.to_string(),
                reconnect_after_ms: *reconnect_after_ms,
            }),
            _ => None,
        }
    }

    /// Whether frames already queued are still sent before the stream ends:
    /// on a graceful close, answers queued at the moment of the close must
    /// arrive; a peer closed for not reading would never take them.
    pub fn flushes(&self) -> bool {
        matches!(self, Self::Shutdown { .. })
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClosedByInstance => f.write_str("instance closed the stream"),
            Self::HeartbeatTimeout(d) => write!(f, "no heartbeat for {} ms", d.as_millis()),
            Self::Stuck => f.write_str("stuck: outbound queue full past the limit"),
            Self::Violations { count, last } => {
                write!(
                    f,
                    "closed after {count} protocol violations; the last: {last}"
                )
            }
            Self::FrameTooLarge(message) => write!(f, "frame refused: {message}"),
            Self::StreamError { code, message } => write!(
                f,
                "stream error: {}: {message}",
                gatemesh_handlers::dispatch::code_name(*code)
            ),
            Self::Replaced => f.write_str("replaced by a newer stream of the same instance id"),
            Self::Shutdown { .. } => f.write_str("gateway shutting down"),
            Self::ConnectionLost => f.write_str("connection lost"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ended_for_cause_never_ends_ok() {
        let undecodable = Disconnect::StreamError {
            code: Code::Internal,
            message: "failed to decode Protobuf message".into(),
        };
        assert_eq!(
            undecodable.end_status().unwrap().code(),
            Code::InvalidArgument
        );
        for reason in [
            Disconnect::Stuck,
            Disconnect::HeartbeatTimeout(Duration::from_secs(15)),
            Disconnect::Violations {
                count: 16,
                last: "x".into(),
            },
            Disconnect::FrameTooLarge("big".into()),
        ] {
            let status = reason.end_status().expect("a status");
            assert_ne!(status.code(), Code::Ok, "{reason}");
        }
    }

    #[test]
    fn labels_are_distinct_and_only_graceful_closes_flush() {
        let all = [
            Disconnect::ClosedByInstance,
            Disconnect::HeartbeatTimeout(Duration::ZERO),
            Disconnect::Stuck,
            Disconnect::Violations {
                count: 1,
                last: String::new(),
            },
            Disconnect::FrameTooLarge(String::new()),
            Disconnect::StreamError {
                code: Code::Unknown,
                message: String::new(),
            },
            Disconnect::Replaced,
            Disconnect::Shutdown {
                reconnect_after_ms: 1,
            },
            Disconnect::ConnectionLost,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(Disconnect::label).collect();
        assert_eq!(labels.len(), all.len());
        assert_eq!(
            all.iter().filter(|r| r.flushes()).count(),
            1,
            "only a shutdown flushes"
        );
    }
}
