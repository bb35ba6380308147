//! The two directions of a stream, as the engine sees them: the frames
//! both ends send alike ([`Frame`]) and, per end, the envelope it sends,
//! the envelope it reads, and the frames only that end handles.

use gatemesh_proto::pb;
use gatemesh_proto::pb::gateway_message::Kind as ToInstance;
use gatemesh_proto::pb::instance_message::Kind as ToGateway;

/// A frame both directions carry and the engine handles itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Request(pb::Request),
    Response(pb::Response),
    Cancel(pb::Cancel),
    Ping(pb::Ping),
    Pong(pb::Pong),
}

/// One end of the stream: what it sends, what it reads, and the frames
/// of the handshake and the goodbye that are its own business.
pub trait Direction: Send + Sync + 'static {
    /// The envelope this end sends.
    type Out: Send + 'static;
    /// The envelope this end reads.
    type In: Send + 'static;
    /// Frames from the peer that the end handles itself.
    type Control: Send + 'static;
    /// Who is at the other end, for logs.
    const PEER: &'static str;
    /// Whether this end, once it has ended its half of the stream for a
    /// drain, reads on until the peer ends the other half. The instance
    /// does (its half is the request stream, and ending the RPC early
    /// would reset the answers still on their way); the gateway's half is
    /// the response stream, whose end ends the RPC.
    const READS_AFTER_DRAIN: bool;

    fn wrap(frame: Frame) -> Self::Out;

    /// A frame from the peer: one the engine handles, one for the end, or
    /// `None` for an empty envelope.
    fn unwrap(frame: Self::In) -> Option<Result<Frame, Self::Control>>;

    /// The last frame of a close that has one (only the gateway tells its
    /// peer to go away).
    fn goaway(goaway: pb::GoAway) -> Option<Self::Out>;
}

/// The gateway's end: it reads an instance's frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct AtGateway;

/// What only the gateway handles from an instance.
#[derive(Debug, Clone, PartialEq)]
pub enum FromInstance {
    Hello(pb::Hello),
    Goodbye(pb::Goodbye),
}

impl Direction for AtGateway {
    type Out = pb::GatewayMessage;
    type In = pb::InstanceMessage;
    type Control = FromInstance;
    const PEER: &'static str = "instance";
    const READS_AFTER_DRAIN: bool = false;

    fn wrap(frame: Frame) -> pb::GatewayMessage {
        let kind = match frame {
            Frame::Request(r) => ToInstance::Request(r),
            Frame::Response(r) => ToInstance::Response(r),
            Frame::Cancel(c) => ToInstance::Cancel(c),
            Frame::Ping(p) => ToInstance::Ping(p),
            Frame::Pong(p) => ToInstance::Pong(p),
        };
        pb::GatewayMessage { kind: Some(kind) }
    }

    fn unwrap(frame: pb::InstanceMessage) -> Option<Result<Frame, FromInstance>> {
        Some(match frame.kind? {
            ToGateway::Request(r) => Ok(Frame::Request(r)),
            ToGateway::Response(r) => Ok(Frame::Response(r)),
            ToGateway::Cancel(c) => Ok(Frame::Cancel(c)),
            ToGateway::Ping(p) => Ok(Frame::Ping(p)),
            ToGateway::Pong(p) => Ok(Frame::Pong(p)),
            ToGateway::Hello(h) => Err(FromInstance::Hello(h)),
            ToGateway::Goodbye(g) => Err(FromInstance::Goodbye(g)),
        })
    }

    fn goaway(goaway: pb::GoAway) -> Option<pb::GatewayMessage> {
        Some(pb::GatewayMessage {
            kind: Some(ToInstance::GoAway(goaway)),
        })
    }
}

/// An instance's end: it reads a gateway's frames.
#[derive(Debug, Clone, Copy, Default)]
pub struct AtInstance;

/// What only an instance handles from its gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum FromGateway {
    Welcome(pb::Welcome),
    GoAway(pb::GoAway),
}

impl Direction for AtInstance {
    type Out = pb::InstanceMessage;
    type In = pb::GatewayMessage;
    type Control = FromGateway;
    const PEER: &'static str = "gateway";
    const READS_AFTER_DRAIN: bool = true;

    fn wrap(frame: Frame) -> pb::InstanceMessage {
        let kind = match frame {
            Frame::Request(r) => ToGateway::Request(r),
            Frame::Response(r) => ToGateway::Response(r),
            Frame::Cancel(c) => ToGateway::Cancel(c),
            Frame::Ping(p) => ToGateway::Ping(p),
            Frame::Pong(p) => ToGateway::Pong(p),
        };
        pb::InstanceMessage { kind: Some(kind) }
    }

    fn unwrap(frame: pb::GatewayMessage) -> Option<Result<Frame, FromGateway>> {
        Some(match frame.kind? {
            ToInstance::Request(r) => Ok(Frame::Request(r)),
            ToInstance::Response(r) => Ok(Frame::Response(r)),
            ToInstance::Cancel(c) => Ok(Frame::Cancel(c)),
            ToInstance::Ping(p) => Ok(Frame::Ping(p)),
            ToInstance::Pong(p) => Ok(Frame::Pong(p)),
            ToInstance::Welcome(w) => Err(FromGateway::Welcome(w)),
            ToInstance::GoAway(g) => Err(FromGateway::GoAway(g)),
        })
    }

    fn goaway(_: pb::GoAway) -> Option<pb::InstanceMessage> {
        None
    }
}

/// An answer as the dispatcher hands it to the queue, for `D`.
pub(crate) fn response<D: Direction>(response: pb::Response) -> D::Out {
    D::wrap(Frame::Response(response))
}
