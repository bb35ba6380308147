//! The calls one side of a stream has sent and still awaits answers for.
//!
//! Each call gets an id and a one-shot slot. An answer completes only the
//! slot of that id on that stream, so no peer can ever complete another
//! peer's call. When the stream ends every open slot fails at once.

use foldhash::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use gatemesh_proto::pb;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

/// A call's result: the encoded response, or the status it failed with.
pub type Outcome = Result<Bytes, pb::Status>;

/// What became of an answer handed to [`Pending::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// It reached the waiting caller.
    Delivered,
    /// Its id was sent on this stream, but the call had already ended
    /// (deadline, cancel, or another instance won).
    Late,
    /// Its id was never sent on this stream: a protocol violation.
    Unknown,
}

#[derive(Debug)]
pub struct Pending {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    /// Woken when the last open call ends, for [`Pending::idle`].
    idle: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<u64, oneshot::Sender<Outcome>>,
    closed: Option<pb::Status>,
    /// Calls whose caller gave up, whose peer has not been told yet: their
    /// answer may already be on the wire, which makes a `Cancel` pure
    /// waste. Two generations: `abandoned` since the last rotation, and
    /// `abandoned_before` from the one before, which are due.
    abandoned: HashSet<u64>,
    abandoned_before: HashSet<u64>,
}

impl Default for Pending {
    fn default() -> Self {
        Self::new()
    }
}

impl Pending {
    pub fn new() -> Self {
        Self {
            // Id 0 is never used, so a default-valued frame is never valid.
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner::default()),
            idle: Notify::new(),
        }
    }

    /// Opens a slot for a new call. Fails with the closing status once the
    /// stream has ended.
    pub fn start(&self) -> Result<(u64, oneshot::Receiver<Outcome>), pb::Status> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock();
        if let Some(status) = &inner.closed {
            return Err(status.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        inner.slots.insert(id, tx);
        Ok((id, rx))
    }

    /// Hands an answer to the call that awaits it.
    pub fn complete(&self, id: u64, outcome: Outcome) -> Completion {
        let slot = {
            let mut inner = self.inner.lock();
            let slot = self.take(&mut inner, id);
            if slot.is_none() && !inner.abandoned.remove(&id) {
                // The answer came in time: the peer need not be told.
                inner.abandoned_before.remove(&id);
            }
            slot
        };
        match slot {
            Some(tx) => match tx.send(outcome) {
                Ok(()) => Completion::Delivered,
                Err(_) => Completion::Late,
            },
            None if id != 0 && id < self.next_id.load(Ordering::Relaxed) => Completion::Late,
            None => Completion::Unknown,
        }
    }

    /// The caller no longer waits for `id`, and its peer is to be told only
    /// if no answer comes first: see [`Self::rotate_abandoned`]. Returns
    /// whether it was still open, and whether it is the first call waiting
    /// to be told (so whoever sends the cancels must be woken).
    pub fn abandon_later(&self, id: u64) -> (bool, bool) {
        let mut inner = self.inner.lock();
        if self.take(&mut inner, id).is_none() {
            return (false, false);
        }
        let first = inner.abandoned.is_empty() && inner.abandoned_before.is_empty();
        inner.abandoned.insert(id);
        (true, first)
    }

    /// Called once per grace period while calls wait to be told: returns
    /// the calls abandoned before the previous rotation whose answer has
    /// still not come (their peer must now be told to cancel), and whether
    /// more wait for the next rotation. Each abandoned call so gets between
    /// one and two periods for its answer to arrive.
    pub fn rotate_abandoned(&self) -> (Vec<u64>, bool) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let due: Vec<u64> = inner.abandoned_before.drain().collect();
        std::mem::swap(&mut inner.abandoned, &mut inner.abandoned_before);
        (due, !inner.abandoned_before.is_empty())
    }

    /// The caller no longer waits for `id`. Returns whether it was still open
    /// (and so whether the peer should be told to cancel).
    pub fn abandon(&self, id: u64) -> bool {
        self.take(&mut self.inner.lock(), id).is_some()
    }

    /// Takes `id`'s slot out, waking [`Self::idle`] if it was the last.
    fn take(&self, inner: &mut Inner, id: u64) -> Option<oneshot::Sender<Outcome>> {
        let slot = inner.slots.remove(&id);
        if slot.is_some() && inner.slots.is_empty() {
            self.idle.notify_waiters();
        }
        slot
    }

    /// Resolves once no call is open.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Ends every open call (their receivers see the sender dropped, which
    /// tells "the peer went away" apart from an error the peer answered)
    /// and refuses new ones with `status`.
    pub fn close(&self, status: pb::Status) {
        let slots = {
            let mut inner = self.inner.lock();
            inner.closed.get_or_insert(status);
            inner.abandoned.clear();
            inner.abandoned_before.clear();
            std::mem::take(&mut inner.slots)
        };
        self.idle.notify_waiters();
        drop(slots);
    }

    /// Calls still waiting for their answer.
    pub fn len(&self) -> usize {
        self.inner.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn answers_reach_their_own_call_only() {
        let pending = Pending::new();
        let (a, mut rx_a) = pending.start().unwrap();
        let (b, mut rx_b) = pending.start().unwrap();
        assert_ne!(a, b);
        assert_eq!(
            pending.complete(b, Ok(Bytes::from_static(b"b"))),
            Completion::Delivered
        );
        assert_eq!(rx_b.try_recv().unwrap().unwrap(), Bytes::from_static(b"b"));
        assert!(rx_a.try_recv().is_err(), "a is still open");
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn late_and_unknown_answers_are_told_apart() {
        let pending = Pending::new();
        let (id, rx) = pending.start().unwrap();
        assert!(pending.abandon(id));
        assert_eq!(pending.complete(id, Ok(Bytes::new())), Completion::Late);
        assert_eq!(pending.complete(0, Ok(Bytes::new())), Completion::Unknown);
        assert_eq!(pending.complete(999, Ok(Bytes::new())), Completion::Unknown);
        // The slot of a caller that went away without abandoning.
        let (id2, rx2) = pending.start().unwrap();
        drop(rx2);
        assert_eq!(pending.complete(id2, Ok(Bytes::new())), Completion::Late);
        assert!(pending.is_empty());
        drop(rx);
    }

    #[test]
    fn an_abandoned_call_is_due_for_a_cancel_only_if_no_answer_comes() {
        let pending = Pending::new();
        let (answered, _rx_a) = pending.start().unwrap();
        let (silent, _rx_s) = pending.start().unwrap();
        assert_eq!(pending.abandon_later(answered), (true, true));
        assert_eq!(pending.abandon_later(silent), (true, false));
        assert_eq!(pending.abandon_later(silent), (false, false), "once");
        assert!(pending.is_empty(), "no caller waits for either");
        // A first period: nothing is due yet, both wait one more.
        assert_eq!(pending.rotate_abandoned(), (vec![], true));
        // One answer comes in time: late, and never to be cancelled.
        assert_eq!(
            pending.complete(answered, Ok(Bytes::new())),
            Completion::Late
        );
        assert_eq!(pending.rotate_abandoned(), (vec![silent], false));
        // All told: the next abandoned call is a first again.
        assert_eq!(pending.rotate_abandoned(), (vec![], false));
        let (next, _rx_n) = pending.start().unwrap();
        assert_eq!(pending.abandon_later(next), (true, true));
        pending.close(pb::Status::new(Code::Unavailable, "gone"));
        assert_eq!(pending.rotate_abandoned(), (vec![], false));
    }

    #[test]
    fn close_fails_open_calls_and_refuses_new_ones() {
        let pending = Pending::new();
        let (_, mut rx) = pending.start().unwrap();
        pending.close(pb::Status::new(Code::Unavailable, "gone"));
        assert_eq!(
            rx.try_recv().unwrap_err(),
            oneshot::error::TryRecvError::Closed
        );
        assert_eq!(pending.start().unwrap_err().message, "gone");
        assert!(pending.is_empty());
    }
}
