//! Reconnect delays: capped exponential growth with full jitter, reset once
//! a connection has stayed up long enough to count as stable.
//!
//! Full jitter (a uniform draw between zero and the capped exponential)
//! spreads a crowd of clients that lost the same server at the same moment,
//! so a restarted gateway is not hit by all of them at once.

use std::time::Duration;

use rand::{Rng, RngExt};
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    stable_after: Duration,
    attempt: u32,
    connected_at: Option<Instant>,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, stable_after: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            stable_after,
            attempt: 0,
            connected_at: None,
        }
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt, and one more failure counted.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        if let Some(since) = self.connected_at.take()
            && since.elapsed() >= self.stable_after
        {
            self.attempt = 0;
        }
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// A connection came up; if it lasts `stable_after`, the next failure
    /// starts again from the base delay.
    pub fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn backoff() -> Backoff {
        Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn grows_exponentially_up_to_the_cap_and_stays_within_it() {
        let mut b = backoff();
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            let d = b.next_delay_with(&mut rng);
            assert!(d <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[5], Duration::from_millis(3200));
        assert_eq!(ceilings[6], Duration::from_secs(5));
        assert_eq!(ceilings[9], Duration::from_secs(5));
        for _ in 0..100 {
            b.next_delay_with(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(5), "no overflow");
    }

    #[test]
    fn full_jitter_spreads_a_crowd() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut b = backoff();
                for _ in 0..6 {
                    b.next_delay_with(&mut rng);
                }
                b.next_delay_with(&mut rng)
            })
            .collect();
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(2500))
            .count();
        // Uniform on [0, 5 s]: about half land in the first half.
        assert!((350..650).contains(&early), "{early}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stable_connection_resets_the_growth() {
        let mut b = backoff();
        for _ in 0..5 {
            b.next_delay();
        }
        b.connected();
        tokio::time::advance(Duration::from_secs(5)).await;
        b.next_delay();
        assert_eq!(b.attempts(), 6, "a short-lived connection does not reset");
        b.connected();
        tokio::time::advance(Duration::from_secs(31)).await;
        b.next_delay();
        assert_eq!(b.attempts(), 1, "a stable connection resets");
        assert_eq!(b.ceiling(), Duration::from_millis(200));
    }
}
