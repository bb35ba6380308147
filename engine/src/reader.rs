//! [`serve`]: the one read loop both ends run on a stream, and the one
//! cleanup every exit from it runs.
//!
//! The loop reads the peer's frames in bounded batches, acts on each (an
//! answer completes its call, a request goes to the dispatcher, a cancel
//! reaches its handler, a ping is answered), counts the peer's
//! violations, pings and judges liveness at each heartbeat, tells the
//! peer to cancel abandoned calls after a short grace, and ends the
//! stream when any of that says so. Frames the end handles itself (hello,
//! goodbye, welcome, go-away) go to its [`End`].
//!
//! A peer whose frames are always there cannot hold the worker thread:
//! each frame costs the task one unit of tokio's cooperative budget, and
//! a spent budget yields.
//!
//! However the loop ends (a return, an error, a panic anywhere in it, or
//! its future dropped), [`Cleanup`] runs: the stream is closed, calls
//! waiting on the peer fail, the peer's requests are cancelled, and the
//! end's [`End::closed`] takes the stream out of its tables.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, Stream, StreamExt as _};
use gatemesh_handlers::Caller;
use gatemesh_handlers::dispatch::Rejection;
use gatemesh_proto::pb;
use tonic::Status;

use crate::pending::Completion;
use crate::{Conn, Direction, Disconnect, Frame};

/// Protocol violations tolerated on one stream before it is closed.
pub const MAX_VIOLATIONS: u32 = 16;
/// Answers and refusals dropped because the peer does not read, after
/// which the stream is closed: a peer that floods requests and never reads
/// costs its own stream, bounded, and nothing else.
pub const MAX_DROPPED_ANSWERS: u64 = 256;
/// Frames read in one go when they are already there, before the loop
/// turns through the close, the cancels and the ticker again.
const FRAME_BATCH: usize = 32;
/// How long an abandoned call's answer may take before the peer is told
/// to cancel it: one to two of these periods, each rounded up to the
/// timer's millisecond, so 1 to 4 ms. Long enough for an answer already
/// on the wire, short beside any handler worth cancelling.
const CANCEL_GRACE: Duration = Duration::from_millis(1);

/// How the loop watches the peer's liveness.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// How often liveness is judged (and the peer pinged, with `ping`).
    pub interval: Duration,
    /// Silence after which the peer counts as dead.
    pub liveness: Duration,
    /// Whether this end pings (the gateway does; instances answer).
    pub ping: bool,
}

/// What the loop knows of its peer and accepts from it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who the peer is, as the handlers of its requests see it.
    pub peer: Caller,
    pub heartbeat: Heartbeat,
    /// Largest payload in a request or answer; 0: no limit beyond the
    /// transport's.
    pub max_payload: usize,
}

/// What only one end does with a stream.
pub trait End<D: Direction>: Send {
    /// A frame only this end handles; `Err` names a protocol violation.
    fn control(&mut self, conn: &Arc<Conn<D>>, frame: D::Control) -> Result<(), String>;

    /// The stream has ended for `reason`; called exactly once, on every
    /// exit path, after its calls failed and its requests were cancelled.
    fn closed(&mut self, conn: &Arc<Conn<D>>, reason: &Disconnect);
}

/// Runs `conn` on `inbound` until the stream ends; returns why.
pub async fn serve<D, S, E>(conn: Arc<Conn<D>>, inbound: S, session: Session, end: E) -> Disconnect
where
    D: Direction,
    S: Stream<Item = Result<D::In, Status>> + Unpin + Send,
    E: End<D>,
{
    let mut cleanup = Cleanup {
        conn: conn.clone(),
        end,
    };
    let ended = read(&conn, inbound, &session, &mut cleanup.end).await;
    // A close from elsewhere (drain, replacement, stuck) came first and is
    // the reason; otherwise the loop's own.
    conn.close(ended);
    conn.close_reason().unwrap_or(Disconnect::ConnectionLost)
}

/// The cleanup of [`serve`], in a guard so that a panic or a dropped
/// future runs it too.
struct Cleanup<D: Direction, E: End<D>> {
    conn: Arc<Conn<D>>,
    end: E,
}

impl<D: Direction, E: End<D>> Drop for Cleanup<D, E> {
    fn drop(&mut self) {
        self.conn.close(Disconnect::ConnectionLost);
        let reason = self
            .conn
            .close_reason()
            .unwrap_or(Disconnect::ConnectionLost);
        self.conn.release();
        self.end.closed(&self.conn, &reason);
    }
}

async fn read<D, S, E>(
    conn: &Arc<Conn<D>>,
    mut inbound: S,
    session: &Session,
    end: &mut E,
) -> Disconnect
where
    D: Direction,
    S: Stream<Item = Result<D::In, Status>> + Unpin + Send,
    E: End<D>,
{
    let heartbeat = session.heartbeat;
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + heartbeat.interval,
        heartbeat.interval,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    let mut violations = 0u32;
    // Made once: a wait made afresh each turn would register and unregister
    // with the token, under its lock, for every frame.
    let closed = conn.lifecycle().closed();
    tokio::pin!(closed);
    // This end closed its half for a drain and reads on until the peer
    // ends the other.
    let mut reading_out = false;
    let abandoned = conn.abandoned().notified();
    tokio::pin!(abandoned);
    let cancels = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(cancels);
    let mut cancels_armed = false;
    loop {
        tokio::select! {
            // Frames last: a stream that always has frames buffered still
            // lets its cancels, pings and liveness through once per batch.
            biased;
            _ = &mut closed, if !reading_out => {
                let reason = conn.close_reason().unwrap_or(Disconnect::ConnectionLost);
                if !(D::READS_AFTER_DRAIN && reason.flushes()) {
                    return reason;
                }
                reading_out = true;
            }
            _ = &mut abandoned => {
                abandoned.set(conn.abandoned().notified());
                if !cancels_armed {
                    cancels.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                    cancels_armed = true;
                }
            }
            _ = &mut cancels, if cancels_armed => {
                cancels_armed = conn.send_due_cancels();
                if cancels_armed {
                    cancels.as_mut().reset(tokio::time::Instant::now() + CANCEL_GRACE);
                }
            }
            _ = ticker.tick() => {
                conn.note_frames();
                if conn.silent_for() >= heartbeat.liveness {
                    return Disconnect::HeartbeatTimeout(heartbeat.liveness);
                }
                if conn.is_stuck() {
                    return Disconnect::Stuck;
                }
                if heartbeat.ping {
                    nonce += 1;
                    let _ = conn.send(Frame::Ping(pb::Ping { nonce }));
                }
            }
            frame = inbound.next() => {
                // Frames already here are read as one bounded batch,
                // without a turn through the other waits per frame.
                let mut next = Some(frame);
                let mut batch = 0;
                while let Some(frame) = next.take() {
                    match frame {
                        Some(Ok(frame)) => {
                            conn.touch();
                            if let Err(violation) = handle(conn, end, session, frame) {
                                conn.observer().violation();
                                violations += 1;
                                tracing::warn!(peer = %session.peer.id(), conn = conn.id(), violation, "protocol violation");
                                if violations >= MAX_VIOLATIONS {
                                    return Disconnect::Violations { count: violations, last: violation };
                                }
                            }
                        }
                        None => return Disconnect::PeerClosed,
                        // An oversized frame: say so before the stream ends.
                        Some(Err(status)) if status.code() == tonic::Code::OutOfRange => {
                            return Disconnect::FrameTooLarge(status.message().to_string());
                        }
                        Some(Err(status)) => {
                            return Disconnect::StreamError { code: status.code(), message: status.message().to_string() };
                        }
                    }
                    // One unit of the task's budget per frame: once it is
                    // spent, the reader yields to the other tasks.
                    tokio::task::consume_budget().await;
                    batch += 1;
                    if batch < FRAME_BATCH && !conn.is_closed() {
                        next = inbound.next().now_or_never();
                    }
                }
                let dropped = conn.dispatcher().dropped_answers();
                if dropped >= MAX_DROPPED_ANSWERS {
                    return Disconnect::NotReading { dropped };
                }
            }
        }
    }
}

/// Acts on one frame from the peer; `Err` names a protocol violation.
fn handle<D: Direction, E: End<D>>(
    conn: &Arc<Conn<D>>,
    end: &mut E,
    session: &Session,
    frame: D::In,
) -> Result<(), String> {
    let max = session.max_payload;
    match D::unwrap(frame) {
        None => Err("empty frame".into()),
        Some(Err(control)) => end.control(conn, control),
        Some(Ok(Frame::Response(response))) => {
            let outcome = match response.result {
                Some(pb::response::Result::Payload(p)) if max > 0 && p.len() > max => {
                    Err(pb::Status::new(
                        tonic::Code::ResourceExhausted,
                        format!(
                            "answer of {} bytes exceeds the limit of {max} bytes",
                            p.len()
                        ),
                    ))
                }
                Some(pb::response::Result::Payload(p)) => Ok(p),
                Some(pb::response::Result::Status(s)) => Err(s),
                None => Err(pb::Status::new(
                    tonic::Code::Internal,
                    "response with neither payload nor status",
                )),
            };
            match conn.pending().complete(response.id, outcome) {
                Completion::Delivered => Ok(()),
                Completion::Late => {
                    conn.observer().late_response();
                    Ok(())
                }
                Completion::Unknown => Err(format!(
                    "response for id {} that was never sent",
                    response.id
                )),
            }
        }
        Some(Ok(Frame::Request(request))) => {
            let id = request.id;
            let refused = if max > 0 && request.payload.len() > max {
                let message = format!(
                    "request of {} bytes exceeds the limit of {max} bytes",
                    request.payload.len()
                );
                Err(conn
                    .dispatcher()
                    .refuse(id, &request.method, Rejection::TooLarge, message))
            } else {
                conn.dispatcher().dispatch(session.peer.clone(), request)
            };
            match refused {
                Err(refused) if refused.rejection.is_violation() => Err(format!(
                    "request {id}: {} (answered: {})",
                    refused.rejection.as_str(),
                    refused.answered
                )),
                // A refusal for a limit is the peer's to retry; one its
                // full queue could not take counts towards not reading.
                Ok(()) | Err(_) => Ok(()),
            }
        }
        // A cancel for an id that is not running is dropped and counted,
        // not a violation: the request may just have ended. It only ever
        // reaches this stream's requests.
        Some(Ok(Frame::Cancel(cancel))) if cancel.id == 0 => Err("cancel for id 0".into()),
        Some(Ok(Frame::Cancel(cancel))) => {
            if !conn.dispatcher().cancel(cancel.id) {
                conn.observer().stray_cancel();
            }
            Ok(())
        }
        Some(Ok(Frame::Ping(ping))) => {
            let _ = conn.send(Frame::Pong(pb::Pong { nonce: ping.nonce }));
            Ok(())
        }
        Some(Ok(Frame::Pong(_))) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::task::Poll;

    use gatemesh_handlers::{DispatchConfig, GatewayRegistry};
    use gatemesh_proto::pb::instance_message::Kind;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::{AtGateway, ConnConfig, FromInstance, Unobserved};

    fn conn() -> (
        Arc<Conn<AtGateway>>,
        tokio::sync::mpsc::Receiver<pb::GatewayMessage>,
    ) {
        Conn::new(ConnConfig {
            id: 1,
            queue_capacity: 64,
            stuck_after: Duration::from_secs(10),
            handlers: Arc::new(GatewayRegistry::new().into_handlers()),
            dispatch: DispatchConfig::default(),
            permits: Arc::new(Semaphore::new(4)),
            observer: Arc::new(Unobserved),
        })
    }

    const HEARTBEAT: Heartbeat = Heartbeat {
        interval: Duration::from_secs(5),
        liveness: Duration::from_secs(15),
        ping: true,
    };

    fn session() -> Session {
        Session {
            peer: Caller::new("i", "prod", gatemesh_handlers::Proof::SharedSecret),
            heartbeat: HEARTBEAT,
            max_payload: 0,
        }
    }

    /// Counts how the end hears of the stream.
    #[derive(Clone, Default)]
    struct Counting {
        closed: Arc<AtomicUsize>,
    }

    impl End<AtGateway> for Counting {
        fn control(&mut self, _: &Arc<Conn<AtGateway>>, frame: FromInstance) -> Result<(), String> {
            match frame {
                FromInstance::Hello(_) => Err("hello sent twice".into()),
                FromInstance::Goodbye(_) => Ok(()),
            }
        }

        fn closed(&mut self, _: &Arc<Conn<AtGateway>>, _: &Disconnect) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn pong(nonce: u64) -> Result<pb::InstanceMessage, Status> {
        Ok(pb::InstanceMessage {
            kind: Some(Kind::Pong(pb::Pong { nonce })),
        })
    }

    /// A peer whose frames are always there: `n` pongs, never pending.
    /// Once the reader has read the first, another task is spawned on the
    /// same thread; it records how many frames had been read when it ran.
    struct Flood {
        sent: Arc<AtomicU64>,
        n: u64,
        other: Option<tokio::sync::oneshot::Sender<u64>>,
    }

    impl Stream for Flood {
        type Item = Result<pb::InstanceMessage, Status>;

        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Self::Item>> {
            let sent = self.sent.fetch_add(1, Ordering::SeqCst);
            if let Some(tx) = self.other.take() {
                let seen = self.sent.clone();
                tokio::spawn(async move {
                    let _ = tx.send(seen.load(Ordering::SeqCst));
                });
            }
            Poll::Ready((sent < self.n).then(|| pong(sent)))
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_whose_frames_are_always_there_does_not_hold_the_thread() {
        const FLOOD: u64 = 1_000_000;
        let (conn, _rx) = conn();
        let (tx, other) = tokio::sync::oneshot::channel();
        let flood = Flood {
            sent: Arc::new(AtomicU64::new(0)),
            n: FLOOD,
            other: Some(tx),
        };
        let reader = tokio::spawn(serve(conn, flood, session(), Counting::default()));
        // The other task runs only when the reader gives the thread up.
        let ran_at = other.await.unwrap();
        assert!(
            ran_at < FLOOD,
            "the other task ran only after all {FLOOD} frames were read"
        );
        assert_eq!(reader.await.unwrap(), Disconnect::PeerClosed);
    }

    /// A peer stream that panics while being read, as a bug anywhere on
    /// the reader's path would.
    struct Panics;

    impl Stream for Panics {
        type Item = Result<pb::InstanceMessage, Status>;

        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Self::Item>> {
            panic!("a bug on the reader's path");
        }
    }

    #[tokio::test]
    async fn a_panic_in_the_read_loop_still_runs_the_cleanup() {
        let (conn, _rx) = conn();
        let (_id, answer) = conn
            .start_call("m", bytes::Bytes::new(), 1000, Vec::new())
            .unwrap();
        let end = Counting::default();
        let closed = end.closed.clone();
        let task = tokio::spawn(serve(conn.clone(), Panics, session(), end));
        assert!(task.await.unwrap_err().is_panic());
        assert_eq!(closed.load(Ordering::SeqCst), 1, "the end heard once");
        assert_eq!(conn.close_reason(), Some(Disconnect::ConnectionLost));
        assert!(answer.await.is_err(), "the call waiting on the peer failed");
        assert_eq!(conn.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_reader_runs_the_cleanup_too() {
        let (conn, _rx) = conn();
        let end = Counting::default();
        let closed = end.closed.clone();
        let reader = serve(
            conn.clone(),
            futures_util::stream::pending(),
            session(),
            end,
        );
        drop(reader.boxed());
        // Never polled, so never started: nothing to clean.
        assert_eq!(closed.load(Ordering::SeqCst), 0);
        let mut reader = Box::pin(serve(
            conn.clone(),
            futures_util::stream::pending(),
            session(),
            Counting {
                closed: closed.clone(),
            },
        ));
        assert!(futures_util::poll!(reader.as_mut()).is_pending());
        drop(reader);
        assert_eq!(closed.load(Ordering::SeqCst), 1);
        assert!(conn.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn silence_past_the_liveness_limit_ends_the_stream_and_pings_go_out_meanwhile() {
        let (conn, mut rx) = conn();
        let reason = serve(
            conn,
            futures_util::stream::pending(),
            session(),
            Counting::default(),
        )
        .await;
        assert_eq!(reason, Disconnect::HeartbeatTimeout(HEARTBEAT.liveness));
        let mut pings = 0;
        while let Ok(frame) = rx.try_recv() {
            assert!(matches!(
                frame.kind,
                Some(pb::gateway_message::Kind::Ping(_))
            ));
            pings += 1;
        }
        assert_eq!(pings, 2, "one ping per tick before the third");
    }

    #[tokio::test]
    async fn violations_end_the_stream_at_the_limit() {
        let (conn, _rx) = conn();
        let hellos = (0..MAX_VIOLATIONS).map(|_| {
            Ok(pb::InstanceMessage {
                kind: Some(Kind::Hello(pb::Hello::default())),
            })
        });
        let reason = serve(
            conn,
            futures_util::stream::iter(hellos).chain(futures_util::stream::pending()),
            session(),
            Counting::default(),
        )
        .await;
        assert_eq!(
            reason,
            Disconnect::Violations {
                count: MAX_VIOLATIONS,
                last: "hello sent twice".into()
            }
        );
    }
}
