//! Per-cluster circuit breakers with Envoy's semantics: a count of connections, pending requests,
//! active requests and active retries, each refused past its threshold (the request then fails
//! with 503 and flag UO) and each refusal counted. A [`Permit`] holds one unit until it drops.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::RetryBudget;
use crate::config::Thresholds;

/// What a breaker counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Connections,
    Pending,
    Requests,
    Retries,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::Pending,
        Resource::Requests,
        Resource::Retries,
    ];

    /// Envoy's name for the threshold.
    pub fn threshold_name(self) -> &'static str {
        match self {
            Resource::Connections => "max_connections",
            Resource::Pending => "max_pending_requests",
            Resource::Requests => "max_requests",
            Resource::Retries => "max_retries",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A breaker refused: `resource` already had `limit` in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker overflow: {} ({limit}) reached", .resource.threshold_name())]
pub struct Overflow {
    pub resource: Resource,
    pub limit: u32,
}

/// One cluster's breakers; clones share the counters.
#[derive(Clone)]
pub struct Breakers {
    inner: Arc<Inner>,
}

struct Inner {
    limits: [AtomicU32; 4],
    active: [AtomicU32; 4],
    overflows: [AtomicU64; 4],
    /// 0: no budget (max_retries applies); else (basis points + 1) << 32 | min_retry_concurrency.
    budget: AtomicU64,
}

impl Breakers {
    pub fn new(thresholds: Thresholds) -> Breakers {
        let breakers = Breakers {
            inner: Arc::new(Inner {
                limits: Default::default(),
                active: Default::default(),
                overflows: Default::default(),
                budget: AtomicU64::new(0),
            }),
        };
        breakers.update(thresholds);
        breakers
    }

    /// New thresholds from a config change; what is in flight stays counted (a lower limit
    /// refuses new work until enough of it finishes).
    pub fn update(&self, t: Thresholds) {
        let limits = [
            t.max_connections,
            t.max_pending_requests,
            t.max_requests,
            t.max_retries,
        ];
        for (slot, limit) in self.inner.limits.iter().zip(limits) {
            slot.store(limit, Ordering::Relaxed);
        }
    }

    /// With a budget, concurrent retries are limited by it instead of `max_retries` (Envoy).
    pub fn set_retry_budget(&self, budget: Option<RetryBudget>) {
        let packed = budget.map_or(0, |b| {
            let basis_points = (b.budget_percent.clamp(0.0, 100.0) * 100.0).round() as u64;
            (basis_points + 1) << 32 | u64::from(b.min_retry_concurrency)
        });
        self.inner.budget.store(packed, Ordering::Relaxed);
    }

    pub fn retry_budget(&self) -> Option<RetryBudget> {
        let packed = self.inner.budget.load(Ordering::Relaxed);
        (packed != 0).then(|| RetryBudget {
            budget_percent: ((packed >> 32) - 1) as f64 / 100.0,
            min_retry_concurrency: packed as u32,
        })
    }

    pub fn thresholds(&self) -> Thresholds {
        let limit = |r: Resource| self.limit(r);
        Thresholds {
            max_connections: limit(Resource::Connections),
            max_pending_requests: limit(Resource::Pending),
            max_requests: limit(Resource::Requests),
            max_retries: limit(Resource::Retries),
        }
    }

    pub fn try_connection(&self) -> Result<Permit, Overflow> {
        self.acquire(Resource::Connections, self.limit(Resource::Connections))
    }

    pub fn try_pending(&self) -> Result<Permit, Overflow> {
        self.acquire(Resource::Pending, self.limit(Resource::Pending))
    }

    pub fn try_request(&self) -> Result<Permit, Overflow> {
        self.acquire(Resource::Requests, self.limit(Resource::Requests))
    }

    /// A retry may start: under the retry budget when one is set (counting active and pending
    /// requests, as Envoy does), else under `max_retries`.
    pub fn try_retry(&self) -> Result<Permit, Overflow> {
        let limit = match self.retry_budget() {
            Some(budget) => {
                let load = self
                    .active(Resource::Requests)
                    .saturating_add(self.active(Resource::Pending));
                budget.max_retries(load)
            }
            None => self.limit(Resource::Retries),
        };
        self.acquire(Resource::Retries, limit)
    }

    /// Units of `resource` in use now.
    pub fn active(&self, resource: Resource) -> u32 {
        self.inner.active[resource.index()].load(Ordering::Relaxed)
    }

    /// Refusals of `resource` so far.
    pub fn overflows(&self, resource: Resource) -> u64 {
        self.inner.overflows[resource.index()].load(Ordering::Relaxed)
    }

    fn limit(&self, resource: Resource) -> u32 {
        self.inner.limits[resource.index()].load(Ordering::Relaxed)
    }

    fn acquire(&self, resource: Resource, limit: u32) -> Result<Permit, Overflow> {
        let i = resource.index();
        let taken = self.inner.active[i].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then(|| n + 1)
        });
        match taken {
            Ok(_) => Ok(Permit {
                inner: self.inner.clone(),
                resource,
            }),
            Err(_) => {
                self.inner.overflows[i].fetch_add(1, Ordering::Relaxed);
                Err(Overflow { resource, limit })
            }
        }
    }
}

impl fmt::Debug for Breakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Breakers");
        for r in Resource::ALL {
            s.field(
                r.threshold_name(),
                &format_args!("{}/{}", self.active(r), self.limit(r)),
            );
        }
        s.finish()
    }
}

/// One unit of a breaker's resource, returned when dropped.
#[must_use = "the unit is released as soon as the permit drops"]
pub struct Permit {
    inner: Arc<Inner>,
    resource: Resource,
}

impl Permit {
    pub fn resource(&self) -> Resource {
        self.resource
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.active[self.resource.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Permit").field(&self.resource).finish()
    }
}
