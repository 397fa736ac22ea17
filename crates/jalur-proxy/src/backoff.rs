//! Waiting before trying again, one implementation for the whole proxy: request retries
//! ([`retry_delay`], Envoy's fully jittered exponential backoff) and xDS reconnects ([`Backoff`],
//! the same doubling ceiling with the base as a floor, so a fleet of proxies that lost the same
//! control plane neither comes back in lock step nor spins).
//!
//! Hand-written rather than taken from `backon`: its jitter adds at most the minimum delay on
//! top of the exponential one, while Envoy (the reference for retries) draws uniformly below
//! the ceiling. What is left here is the ceiling arithmetic; the randomness is `fastrand`'s.

use std::time::Duration;

/// The exclusive upper bound of the wait before retry number `attempt` (1 for the first):
/// `base * 2^(attempt-1)`, at most `max`.
pub fn ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// How long to wait before retry number `attempt`: uniform in `[0, ceiling)`, as Envoy does.
pub fn retry_delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    retry_delay_with(attempt, base, max, fastrand::u64(..))
}

fn retry_delay_with(attempt: u32, base: Duration, max: Duration, random: u64) -> Duration {
    let nanos = nanos(ceiling(attempt, base, max));
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % nanos)
}

/// Successive reconnect delays: the n-th failure in a row waits uniformly between `base` and
/// `ceiling(n)` (so the first waits exactly `base`); [`Backoff::reset`] after a healthy stream.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// `max` below `base` means `base`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        self.delay_with(fastrand::u64(..))
    }

    fn delay_with(&mut self, random: u64) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let spread = nanos(ceiling(self.attempt, self.base, self.max).saturating_sub(self.base));
        self.base + Duration::from_nanos(random % spread.saturating_add(1))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn retry_ceiling_doubles_up_to_the_max() {
        let (base, max) = (25 * MS, 250 * MS);
        let top = |attempt| ceiling(attempt, base, max);
        assert_eq!(top(1), 25 * MS);
        assert_eq!(top(0), 25 * MS);
        assert_eq!(top(2), 50 * MS);
        assert_eq!(top(3), 100 * MS);
        assert_eq!(top(4), 200 * MS);
        assert_eq!(top(5), 250 * MS);
        assert_eq!(top(64), 250 * MS);
        assert_eq!(retry_delay_with(3, base, max, 0), Duration::ZERO);
        // Just below the ceiling, and wrapping at it.
        assert_eq!(
            retry_delay_with(3, base, max, 99_999_999),
            Duration::from_nanos(99_999_999)
        );
        assert_eq!(
            retry_delay_with(3, base, max, 100_000_005),
            Duration::from_nanos(5)
        );
        assert_eq!(
            retry_delay_with(1, Duration::ZERO, max, 12345),
            Duration::ZERO
        );
        assert_eq!(
            retry_delay_with(1, base, 10 * MS, 10_000_000),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_delays_are_fully_jittered() {
        let (base, max) = (100 * MS, Duration::from_secs(1));
        let samples: Vec<Duration> = (0..4000).map(|_| retry_delay(2, base, max)).collect();
        assert!(samples.iter().all(|d| *d < 200 * MS));
        let mean = samples.iter().sum::<Duration>() / 4000;
        // Uniform on [0, 200 ms): mean 100 ms, standard error ~0.9 ms; 10 ms is > 10 sigma.
        assert!(mean > 90 * MS && mean < 110 * MS, "{mean:?}");
        assert!(samples.iter().any(|d| *d < 20 * MS));
        assert!(samples.iter().any(|d| *d > 180 * MS));
    }

    #[test]
    fn reconnects_wait_between_base_and_a_doubling_cap() {
        let top = |spread: Duration| nanos(spread);
        let mut b = Backoff::new(100 * MS, 500 * MS);
        assert_eq!(b.delay_with(u64::MAX), 100 * MS);
        assert_eq!(b.delay_with(top(100 * MS)), 200 * MS);
        assert_eq!(b.delay_with(0), 100 * MS);
        assert_eq!(b.delay_with(top(400 * MS)), 500 * MS);
        assert_eq!(b.delay_with(top(200 * MS)), 300 * MS);
        b.reset();
        assert_eq!(b.delay_with(u64::MAX), 100 * MS);
    }

    #[test]
    fn random_reconnect_delays_are_spread_and_bounded() {
        let mut b = Backoff::new(10 * MS, 1000 * MS);
        let delays: Vec<Duration> = (0..64).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| (10 * MS..=1000 * MS).contains(d)));
        let late = &delays[10..];
        assert!(late.iter().any(|d| *d != late[0]), "no jitter: {late:?}");
    }

    #[test]
    fn max_below_base_means_base() {
        let mut b = Backoff::new(100 * MS, 10 * MS);
        assert_eq!(b.next_delay(), 100 * MS);
        assert_eq!(b.next_delay(), 100 * MS);
    }
}
