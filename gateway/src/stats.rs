//! Counters that describe how the gateway fares; read by operators.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub registrations: AtomicU64,
    pub replaced: AtomicU64,
    pub disconnects: AtomicU64,
    pub refused_streams: AtomicU64,
    pub calls_ok: AtomicU64,
    pub calls_failed: AtomicU64,
    /// Answers for calls that had already ended.
    pub late_responses: AtomicU64,
    /// Frames that broke the protocol (unknown ids, bad names, ...).
    pub violations: AtomicU64,
    /// Sends refused because an instance's queue was full.
    pub queue_full: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
