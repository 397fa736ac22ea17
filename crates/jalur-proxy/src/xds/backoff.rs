//! Reconnect delays: exponential with full jitter, so a fleet of proxies that lost the same
//! control plane does not come back in lock step.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    /// Upper bound of the next delay; doubles per failure up to `max`.
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        let max = max.max(base);
        Backoff {
            base,
            max,
            cap: base,
        }
    }

    /// After a healthy stream: the next failure starts from `base` again.
    pub(crate) fn reset(&mut self) {
        self.cap = self.base;
    }

    pub(crate) fn next(&mut self) -> Duration {
        self.next_with(random_unit())
    }

    /// The delay for a random `unit` in [0, 1]: uniform between `base` and the current cap.
    fn next_with(&mut self, unit: f64) -> Duration {
        let spread = self.cap.saturating_sub(self.base);
        let delay = self.base + spread.mul_f64(unit.clamp(0.0, 1.0));
        self.cap = self.cap.saturating_mul(2).min(self.max);
        delay
    }
}

/// A uniform number in [0, 1). `RandomState` is randomly keyed per process and per instance,
/// which is all the randomness jitter needs, without a dependency.
fn random_unit() -> f64 {
    let bits = RandomState::new().build_hasher().finish() >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn cap_doubles_up_to_max_and_delays_stay_between_base_and_cap() {
        let mut b = Backoff::new(100 * MS, 500 * MS);
        assert_eq!(b.next_with(1.0), 100 * MS);
        assert_eq!(b.next_with(1.0), 200 * MS);
        assert_eq!(b.next_with(0.0), 100 * MS);
        assert_eq!(b.next_with(1.0), 500 * MS);
        assert_eq!(b.next_with(0.5), 300 * MS);
        b.reset();
        assert_eq!(b.next_with(1.0), 100 * MS);
    }

    #[test]
    fn random_delays_are_spread_and_bounded() {
        let mut b = Backoff::new(10 * MS, 1000 * MS);
        let delays: Vec<Duration> = (0..64).map(|_| b.next()).collect();
        assert!(delays.iter().all(|d| (10 * MS..=1000 * MS).contains(d)));
        let late = &delays[10..];
        assert!(late.iter().any(|d| *d != late[0]), "no jitter: {late:?}");
    }

    #[test]
    fn max_below_base_means_base() {
        let mut b = Backoff::new(100 * MS, 10 * MS);
        assert_eq!(b.next(), 100 * MS);
        assert_eq!(b.next(), 100 * MS);
    }
}
