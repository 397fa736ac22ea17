//! Load balancing over one cluster's endpoints: plain data structures you can test without a
//! socket. A [`HostSet`] is the immutable list of one EDS version; a [`Balancer`] is built over it
//! once per version (ring and Maglev table included) and picks without locks or allocation.
//!
//! Runtime state (active requests, outlier ejection) lives in [`Host`] behind an `Arc` that a
//! rebuilt `HostSet` carries over for every address that stays, so an EDS push or a health flip
//! never resets a counter or un-ejects a host.
//!
//! What a pick skips: hosts EDS calls unhealthy (never placed in a balancer), hosts the outlier
//! detector has ejected, and, softly, hosts the caller wants to `avoid` (a retry's previous
//! hosts): when avoiding leaves nothing, any eligible host is picked. Only when every host is
//! unhealthy or ejected does a pick return `None` (the caller answers 503 with flag UH). Envoy's
//! panic threshold (route to all hosts when under 50% are healthy) is not implemented.

use std::collections::BinaryHeap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::config::LbPolicy;
pub use crate::host::{Host, HostSet, RequestGuard};

mod hash;
mod ring;
#[cfg(test)]
mod tests;

pub use hash::{generated_cookie_value, request_hash, request_hash_with, set_cookie};
use ring::{Maglev, Ring};

/// What a pick knows of the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PickContext {
    /// From [`request_hash`]; the hash balancers pick at random without one.
    pub hash: Option<u64>,
}

/// A cluster's load balancer over one [`HostSet`].
pub struct Balancer {
    policy: LbPolicy,
    hosts: HostSet,
    algo: Algo,
}

enum Algo {
    RoundRobin(RoundRobin),
    LeastRequest,
    Random(Weights),
    RingHash(Ring),
    Maglev(Maglev),
}

/// Envoy's defaults.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
pub const DEFAULT_MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;

impl Balancer {
    pub fn new(policy: LbPolicy, hosts: HostSet) -> Balancer {
        let healthy = hosts.healthy();
        let algo = match policy {
            LbPolicy::RoundRobin => Algo::RoundRobin(RoundRobin::new(healthy)),
            LbPolicy::LeastRequest => Algo::LeastRequest,
            LbPolicy::Random => Algo::Random(Weights::new(healthy)),
            LbPolicy::RingHash => Algo::RingHash(Ring::new(
                healthy,
                DEFAULT_MIN_RING_SIZE,
                DEFAULT_MAX_RING_SIZE,
            )),
            LbPolicy::Maglev => Algo::Maglev(Maglev::new(healthy, DEFAULT_MAGLEV_TABLE_SIZE)),
        };
        Balancer {
            policy,
            hosts,
            algo,
        }
    }

    pub fn policy(&self) -> LbPolicy {
        self.policy
    }

    pub fn hosts(&self) -> &HostSet {
        &self.hosts
    }

    /// Picks an available host, steering clear of those `avoid` matches (a retry's previous
    /// hosts) unless no other is available; `None` only when every host is unhealthy or ejected.
    pub fn pick(&self, ctx: &PickContext, avoid: &dyn Fn(&Host) -> bool) -> Option<Arc<Host>> {
        self.choose(ctx, &|h| !h.is_ejected() && !avoid(h))
            .or_else(|| self.choose(ctx, &|h| !h.is_ejected()))
            .cloned()
    }

    fn choose(&self, ctx: &PickContext, ok: &dyn Fn(&Host) -> bool) -> Option<&Arc<Host>> {
        let hosts = self.hosts.healthy();
        if hosts.is_empty() {
            return None;
        }
        match &self.algo {
            Algo::RoundRobin(rr) => rr.pick(hosts, ok),
            Algo::LeastRequest => least_request(hosts, ok),
            Algo::Random(w) => random_pick(hosts, w, ok),
            Algo::RingHash(ring) => {
                ring.pick(hosts, ctx.hash.unwrap_or_else(|| fastrand::u64(..)), ok)
            }
            Algo::Maglev(table) => {
                table.pick(hosts, ctx.hash.unwrap_or_else(|| fastrand::u64(..)), ok)
            }
        }
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// The first host that is `ok`, starting at `start` and wrapping.
fn scan<'a>(
    hosts: &'a [Arc<Host>],
    start: usize,
    ok: &dyn Fn(&Host) -> bool,
) -> Option<&'a Arc<Host>> {
    let n = hosts.len();
    (0..n).map(|k| &hosts[(start + k) % n]).find(|h| ok(h))
}

// ------------------------------------------------------------------------------- round robin

/// Plain round robin over one atomic counter; with unequal weights the counter walks a
/// precomputed earliest-deadline-first schedule (Envoy's EDF order, exact over one cycle).
struct RoundRobin {
    next: AtomicUsize,
    /// Indices into the healthy hosts; empty when all weights are equal.
    schedule: Vec<u32>,
}

/// Longer weight cycles are scaled down to this many slots (each host keeps at least one).
const MAX_SCHEDULE: u64 = 4096;

impl RoundRobin {
    fn new(hosts: &[Arc<Host>]) -> RoundRobin {
        let uniform = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let schedule = if uniform {
            Vec::new()
        } else {
            edf_schedule(hosts)
        };
        RoundRobin {
            next: AtomicUsize::new(fastrand::usize(..)),
            schedule,
        }
    }

    fn pick<'a>(
        &self,
        hosts: &'a [Arc<Host>],
        ok: &dyn Fn(&Host) -> bool,
    ) -> Option<&'a Arc<Host>> {
        let slot = |tick: usize| match self.schedule.len() {
            0 => tick % hosts.len(),
            len => self.schedule[tick % len] as usize,
        };
        // A skipped host's turn is used up (the next turn is taken), so its share spreads over
        // the others instead of all going to its neighbour. After as many skips as there are
        // hosts, any eligible host will do.
        let mut tick = 0;
        for _ in 0..hosts.len() {
            tick = self.next.fetch_add(1, Relaxed);
            let host = &hosts[slot(tick)];
            if ok(host) {
                return Some(host);
            }
        }
        scan(hosts, tick % hosts.len(), ok)
    }
}

fn edf_schedule(hosts: &[Arc<Host>]) -> Vec<u32> {
    let g = hosts.iter().fold(0u64, |g, h| gcd(g, u64::from(h.weight)));
    let mut weights: Vec<u64> = hosts
        .iter()
        .map(|h| u64::from(h.weight) / g.max(1))
        .collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        for w in &mut weights {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: u64 = weights.iter().sum();
    let mut heap: BinaryHeap<Deadline> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Deadline {
            picks: 1,
            weight: w,
            index: i as u32,
        })
        .collect();
    let mut schedule = Vec::with_capacity(total as usize);
    while (schedule.len() as u64) < total {
        let Some(mut d) = heap.pop() else { break };
        schedule.push(d.index);
        d.picks += 1;
        heap.push(d);
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A host's next deadline, `picks / weight`; the heap pops the earliest (lowest index on ties).
#[derive(PartialEq, Eq)]
struct Deadline {
    picks: u64,
    weight: u64,
    index: u32,
}

impl Ord for Deadline {
    fn cmp(&self, other: &Deadline) -> std::cmp::Ordering {
        let (mine, theirs) = (
            u128::from(self.picks) * u128::from(other.weight),
            u128::from(other.picks) * u128::from(self.weight),
        );
        theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Deadline) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

// ----------------------------------------------------------------- least request and random

/// Weighted draws over the healthy hosts: uniform when all weights are equal.
struct Weights {
    /// Running sums of the weights; empty when uniform.
    cumulative: Vec<u64>,
}

impl Weights {
    fn new(hosts: &[Arc<Host>]) -> Weights {
        let uniform = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
        let cumulative = if uniform {
            Vec::new()
        } else {
            hosts
                .iter()
                .scan(0u64, |sum, h| {
                    *sum += u64::from(h.weight);
                    Some(*sum)
                })
                .collect()
        };
        Weights { cumulative }
    }

    fn draw(&self, n: usize) -> usize {
        match self.cumulative.last() {
            None => fastrand::usize(..n),
            Some(&total) => {
                let r = fastrand::u64(..total);
                self.cumulative.partition_point(|&c| c <= r)
            }
        }
    }
}

/// Draws that may land on skipped hosts before a pick scans for one.
const DRAWS: usize = 4;

/// Power of two choices: of two distinct random hosts, the one with fewer active requests per
/// unit of weight wins (Envoy's least request). Idle hosts of unequal weight go to the heavier;
/// under load, active requests settle in proportion to weight.
fn least_request<'a>(hosts: &'a [Arc<Host>], ok: &dyn Fn(&Host) -> bool) -> Option<&'a Arc<Host>> {
    let n = hosts.len();
    if n == 1 {
        return hosts.first().filter(|h| ok(h));
    }
    for _ in 0..DRAWS {
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        match (ok(&hosts[a]), ok(&hosts[b])) {
            (true, true) => return Some(less_loaded(&hosts[a], &hosts[b])),
            (true, false) => return Some(&hosts[a]),
            (false, true) => return Some(&hosts[b]),
            (false, false) => {}
        }
    }
    hosts
        .iter()
        .filter(|h| ok(h))
        .reduce(|a, b| less_loaded(a, b))
}

/// `a` unless `b` has fewer (active + 1) requests per unit of weight.
fn less_loaded<'a>(a: &'a Arc<Host>, b: &'a Arc<Host>) -> &'a Arc<Host> {
    let load =
        |h: &Host, other: &Host| (u64::from(h.active_requests()) + 1) * u64::from(other.weight);
    if load(b, a) < load(a, b) {
        b
    } else {
        a
    }
}

fn random_pick<'a>(
    hosts: &'a [Arc<Host>],
    w: &Weights,
    ok: &dyn Fn(&Host) -> bool,
) -> Option<&'a Arc<Host>> {
    let n = hosts.len();
    (0..DRAWS)
        .map(|_| &hosts[w.draw(n)])
        .find(|h| ok(h))
        .or_else(|| scan(hosts, fastrand::usize(..n), ok))
}

impl AsRef<HostSet> for Balancer {
    fn as_ref(&self) -> &HostSet {
        self.hosts()
    }
}
