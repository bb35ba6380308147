//! Rate limits for log lines that an outsider can repeat at will (a flood
//! of failing calls, refused streams): the first few are written, then one
//! per period, each carrying how many were left out since the last one.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Lines written at once before the limit bites.
pub const BURST: u32 = 10;
/// After the burst, one line per period; a quiet period earns one back.
pub const PERIOD: Duration = Duration::from_secs(5);

/// A token bucket for one log call site: [`BURST`] lines at once, then one
/// per [`PERIOD`]. Made `static` by [`limited!`](crate::limited).
#[derive(Debug)]
pub struct Limit {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: u32,
    /// When the bucket was last refilled; `None` until the first line.
    refilled: Option<Instant>,
    suppressed: u64,
}

impl Limit {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                tokens: BURST,
                refilled: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be written now: `Some(n)`, with `n` the lines
    /// left out since the last one written; `None` (counted) otherwise.
    pub fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        // A panic while holding this lock cannot leave the counts invalid.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let refilled = *state.refilled.get_or_insert(now);
        let earned = now.duration_since(refilled).as_nanos() / PERIOD.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            state.tokens = state.tokens.saturating_add(earned).min(BURST);
            // A full bucket starts its next period now; a partly refilled
            // one keeps the part of a period already under way.
            state.refilled = Some(if state.tokens == BURST {
                now
            } else {
                refilled + PERIOD * earned
            });
        }
        if state.tokens == 0 {
            state.suppressed += 1;
            return None;
        }
        state.tokens -= 1;
        Some(std::mem::take(&mut state.suppressed))
    }
}

impl Default for Limit {
    fn default() -> Self {
        Self::new()
    }
}

/// A `tracing` event at `$level`, rate-limited per call site by a
/// [`Limit`]: the line written after some were left out carries their
/// count as `suppressed`.
///
/// ```ignore
/// gatemesh_runtime::limited!(tracing::Level::WARN, method, code, "call failed");
/// ```
#[macro_export]
macro_rules! limited {
    ($level:expr, $($rest:tt)+) => {{
        static LIMIT: $crate::logging::Limit = $crate::logging::Limit::new();
        if $crate::logging::__tracing::enabled!($level)
            && let Some(suppressed) = LIMIT.admit()
        {
            $crate::logging::__tracing::event!(
                $level,
                suppressed = (suppressed > 0).then_some(suppressed),
                $($rest)+
            );
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_writes_the_burst_then_one_line_per_period_with_the_count() {
        let limit = Limit::new();
        let admitted: Vec<_> = (0..1000).filter_map(|_| limit.admit()).collect();
        assert_eq!(admitted, vec![0; BURST as usize]);
        tokio::time::advance(PERIOD).await;
        assert_eq!(limit.admit(), Some(1000 - u64::from(BURST)));
        assert_eq!(limit.admit(), None);
        tokio::time::advance(PERIOD).await;
        assert_eq!(limit.admit(), Some(1));
        // A long quiet spell earns the whole burst back, no more.
        tokio::time::advance(PERIOD * 100).await;
        let admitted = (0..100).filter_map(|_| limit.admit()).count();
        assert_eq!(admitted, BURST as usize);
    }
}
