//! What keeps a failing upstream from taking the proxy (and its other upstreams) down with it,
//! in Envoy's semantics: per-cluster circuit breakers ([`Breakers`]), per-host outlier detection
//! ([`Outlier`]), and a retry budget so retries cannot amplify an outage ([`RetryBudget`]). The
//! backoff between retries is `crate::backoff`.
//!
//! Counters are atomics; the only locks are per-host ejection records, taken when a host is
//! ejected or un-ejected (never on a healthy host's pick) and never held across an await.

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
