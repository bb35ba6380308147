//! [`Outbound`]: this end's half of the stream, fed by the [`Conn`]'s
//! queue. The one writer per stream: tonic polls it for the next frame.
//! While the stream is open it yields the queue; once the stream is
//! closed it ends as the close asks: on a graceful close the frames
//! already queued go first (answers of a drain), then the `GoAway` where
//! the end has one, then the status the stream ended with when it ended
//! for cause.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;

use crate::{Conn, Direction, Disconnect};

pub struct Outbound<D: Direction> {
    rx: mpsc::Receiver<D::Out>,
    conn: Arc<Conn<D>>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    stage: Stage,
}

/// Where the writer is; only the writer changes it.
enum Stage {
    Open,
    /// Closed for this reason; the queue still drains if it flushes.
    Flushing(Disconnect),
    /// The last frame is out; the end status (if any) follows.
    Ending(Disconnect),
    Done,
}

impl<D: Direction> Outbound<D> {
    pub fn new(conn: Arc<Conn<D>>, rx: mpsc::Receiver<D::Out>) -> Self {
        Self {
            rx,
            closed: Box::pin(conn.lifecycle().closed_token().clone().cancelled_owned()),
            conn,
            stage: Stage::Open,
        }
    }
}

impl<D: Direction> Stream for Outbound<D> {
    type Item = Result<D::Out, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            match &this.stage {
                Stage::Open => {
                    // While open, the queue is read first and the close is
                    // polled (which registers with the token, under its
                    // lock) only when the queue is empty; the atomic check
                    // keeps a close for cause from sending the backlog.
                    if !this.conn.is_closed()
                        && let Poll::Ready(Some(frame)) = this.rx.poll_recv(cx)
                    {
                        this.conn.not_full();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    if !this.conn.is_closed() && this.closed.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let reason = this
                        .conn
                        .close_reason()
                        .unwrap_or(Disconnect::ConnectionLost);
                    this.stage = Stage::Flushing(reason);
                }
                Stage::Flushing(reason) => {
                    if reason.flushes()
                        && let Ok(frame) = this.rx.try_recv()
                    {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    let reason = reason.clone();
                    let last = reason.goaway().and_then(D::goaway);
                    this.stage = Stage::Ending(reason);
                    if let Some(frame) = last {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Stage::Ending(reason) => {
                    let status = reason.end_status();
                    this.stage = Stage::Done;
                    return Poll::Ready(status.map(Err));
                }
                Stage::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<D: Direction> Drop for Outbound<D> {
    fn drop(&mut self) {
        // tonic drops this half when the connection goes away; make sure
        // the reader hears of it even if the other half lingers.
        self.conn.close(Disconnect::ConnectionLost);
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use gatemesh_handlers::{DispatchConfig, GatewayRegistry};
    use gatemesh_proto::pb;
    use gatemesh_proto::pb::gateway_message::Kind;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::{AtGateway, ConnConfig, Frame, Unobserved};

    fn conn() -> (Arc<Conn<AtGateway>>, Outbound<AtGateway>) {
        let (conn, rx) = Conn::new(ConnConfig {
            id: 1,
            queue_capacity: 8,
            stuck_after: std::time::Duration::from_secs(10),
            handlers: Arc::new(GatewayRegistry::new().into_handlers()),
            dispatch: DispatchConfig::default(),
            permits: Arc::new(Semaphore::new(1)),
            observer: Arc::new(Unobserved),
        });
        let outbound = Outbound::new(conn.clone(), rx);
        (conn, outbound)
    }

    fn pong(nonce: u64) -> Frame {
        Frame::Pong(pb::Pong { nonce })
    }

    #[tokio::test]
    async fn a_graceful_close_sends_what_was_queued_then_the_goaway() {
        let (conn, outbound) = conn();
        for nonce in 1..=3 {
            conn.send(pong(nonce)).unwrap();
        }
        conn.close(Disconnect::Shutdown {
            reconnect_after_ms: 7,
        });
        let frames: Vec<_> = outbound.map(|f| f.unwrap().kind.unwrap()).collect().await;
        let pong = |nonce| Kind::Pong(pb::Pong { nonce });
        assert_eq!(
            frames,
            [
                pong(1),
                pong(2),
                pong(3),
                Kind::GoAway(pb::GoAway {
                    reason: "shutting down".into(),
                    reconnect_after_ms: 7,
                }),
            ]
        );
    }

    #[tokio::test]
    async fn a_close_for_cause_ends_with_its_status_not_ok() {
        let (conn, mut outbound) = conn();
        conn.send(pong(1)).unwrap();
        conn.close(Disconnect::Stuck);
        // A peer closed for not reading is not sent its backlog.
        let end = outbound.next().await.unwrap().unwrap_err();
        assert_eq!(end.code(), tonic::Code::ResourceExhausted);
        assert!(outbound.next().await.is_none());
        // The first close decides; a second one changes nothing.
        assert!(!conn.close(Disconnect::Replaced));
        assert_eq!(conn.close_reason(), Some(Disconnect::Stuck));
    }

    #[tokio::test]
    async fn dropping_the_writer_closes_the_stream() {
        let (conn, outbound) = conn();
        drop(outbound);
        assert_eq!(conn.close_reason(), Some(Disconnect::ConnectionLost));
    }
}
