//! [`Disconnect`]: why a stream ended, made where it happens and turned,
//! at the edges, into a log field, a metric label, the stream's final
//! status and the `GoAway` the peer reads.

use std::fmt;
use std::time::Duration;

use gatemesh_proto::{code_name, pb};
use tonic::{Code, Status};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// The peer ended its half of the stream.
    PeerClosed,
    /// Nothing arrived from the peer for this long.
    HeartbeatTimeout(Duration),
    /// The outbound queue stayed full past the stuck limit: the peer does
    /// not read.
    Stuck,
    /// The peer kept sending requests while never reading their answers;
    /// this many answers and refusals were dropped.
    NotReading { dropped: u64 },
    /// The peer kept breaking the protocol; `last` is the last breach.
    Violations { count: u32, last: String },
    /// The peer sent a frame over the gRPC limit.
    FrameTooLarge(String),
    /// The transport failed under the stream, or a frame did not decode.
    StreamError { code: Code, message: String },
    /// A newer stream of the same instance id took over.
    Replaced,
    /// This end is shutting down; the peer may come back after this long.
    Shutdown { reconnect_after_ms: u32 },
    /// The stream's other half was dropped: the connection is gone.
    ConnectionLost,
}

impl Disconnect {
    /// The status this end ends its half with: a stream ended for cause
    /// never ends OK.
    pub fn end_status(&self) -> Option<Status> {
        match self {
            Self::PeerClosed | Self::Replaced | Self::Shutdown { .. } | Self::ConnectionLost => {
                None
            }
            Self::HeartbeatTimeout(_) => Some(Status::unavailable(self.to_string())),
            Self::Stuck | Self::NotReading { .. } | Self::FrameTooLarge(_) => {
                Some(Status::resource_exhausted(self.to_string()))
            }
            Self::Violations { .. } => Some(Status::invalid_argument(self.to_string())),
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

    /// The `GoAway` that tells the peer why and when to come back.
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

    /// Whether frames already queued are still sent before the stream
    /// ends: on a graceful close, answers queued at the moment of the
    /// close must arrive; a peer closed for not reading would never take
    /// them.
    pub fn flushes(&self) -> bool {
        matches!(self, Self::Shutdown { .. })
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PeerClosed => f.write_str("the peer closed the stream"),
            Self::HeartbeatTimeout(d) => write!(f, "no heartbeat for {} ms", d.as_millis()),
            Self::Stuck => f.write_str("stuck: outbound queue full past the limit"),
            Self::NotReading { dropped } => write!(
                f,
                "the peer sends requests but does not read its answers ({dropped} dropped)"
            ),
            Self::Violations { count, last } => {
                write!(
                    f,
                    "closed after {count} protocol violations; the last: {last}"
                )
            }
            Self::FrameTooLarge(message) => write!(f, "frame refused: {message}"),
            Self::StreamError { code, message } => {
                write!(f, "stream error: {}: {message}", code_name(*code))
            }
            Self::Replaced => f.write_str("replaced by a newer stream of the same instance id"),
            Self::Shutdown { .. } => f.write_str("shutting down"),
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
            Disconnect::NotReading { dropped: 256 },
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
    fn only_a_shutdown_flushes_and_only_graceful_closes_say_goodbye() {
        let shutdown = Disconnect::Shutdown {
            reconnect_after_ms: 7,
        };
        assert!(shutdown.flushes());
        assert_eq!(shutdown.goaway().unwrap().reconnect_after_ms, 7);
        assert!(Disconnect::Replaced.goaway().is_some());
        for other in [
            Disconnect::PeerClosed,
            Disconnect::Stuck,
            Disconnect::ConnectionLost,
            Disconnect::Replaced,
        ] {
            assert!(!other.flushes(), "{other}");
        }
        assert!(Disconnect::Stuck.goaway().is_none());
    }
}
