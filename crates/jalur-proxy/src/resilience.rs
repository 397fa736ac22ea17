//! What keeps a failing upstream from taking the proxy (and its other upstreams) down with it,
//! in Envoy's semantics: per-cluster circuit breakers ([`Breakers`]), per-host outlier detection
//! ([`Outlier`]), a retry budget so retries cannot amplify an outage ([`RetryBudget`]), and fully
//! jittered exponential backoff between retries ([`backoff`]).
//!
//! Counters are atomics; the only locks are per-host ejection records, taken when a host is
//! ejected or un-ejected (never on a healthy host's pick) and never held across an await.

use std::time::Duration;

pub mod breaker;
pub mod outlier;
#[cfg(test)]
mod tests;

pub use breaker::{Breakers, Overflow, Permit, Resource};
pub use outlier::{Ejection, EjectionKind, Outcome, Outlier, OutlierStats, OutlierStatus};

/// Envoy's retry budget: concurrent retries may be at most `budget_percent` of the requests
/// active (and pending), but never fewer than `min_retry_concurrency` are refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub budget_percent: f64,
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    /// Envoy's defaults: 20% and 3.
    fn default() -> RetryBudget {
        RetryBudget {
            budget_percent: 20.0,
            min_retry_concurrency: 3,
        }
    }
}

impl RetryBudget {
    /// How many retries may be in flight while `active_requests` are.
    pub fn max_retries(&self, active_requests: u32) -> u32 {
        let share =
            (self.budget_percent.clamp(0.0, 100.0) / 100.0 * f64::from(active_requests)) as u32;
        share.max(self.min_retry_concurrency)
    }

    /// Whether one more retry fits beside `active_retries` already in flight.
    pub fn try_acquire(&self, active_requests: u32, active_retries: u32) -> bool {
        active_retries < self.max_retries(active_requests)
    }
}

/// How long to wait before retry number `attempt` (1 for the first retry): Envoy's fully
/// jittered exponential backoff, uniform in `[0, min(base * 2^(attempt-1), max))`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    jittered(attempt, base, max, crate::lb::random_u64())
}

/// The exclusive upper bound of the wait before retry number `attempt`.
fn ceiling(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

fn jittered(attempt: u32, base: Duration, max: Duration, random: u64) -> Duration {
    let nanos = u64::try_from(ceiling(attempt, base, max).as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random % nanos)
}
