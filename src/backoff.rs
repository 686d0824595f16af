//! Capped exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Delays that double from `initial` up to `max`, each drawn at random
/// between half the nominal delay and the nominal delay, so that many
/// clients that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self { initial, max, next: initial }
    }

    /// Returns the delay before the next attempt and doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        let low = nominal / 2;
        let spread = nominal.saturating_sub(low);
        low + spread.mul_f64(rand::rng().random::<f64>())
    }

    /// Starts again from the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
        let second = backoff.next_delay();
        assert!(second >= Duration::from_millis(500) && second <= Duration::from_secs(1));
        let third = backoff.next_delay();
        assert!(third >= Duration::from_secs(1) && third <= Duration::from_secs(2));
        for _ in 0..10 {
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(4), "delay {delay:?} above cap");
            assert!(delay >= Duration::from_secs(2), "delay {delay:?} below half the cap");
        }
    }

    #[test]
    fn backoff_reset_returns_to_initial() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        for _ in 0..8 {
            backoff.next_delay();
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
