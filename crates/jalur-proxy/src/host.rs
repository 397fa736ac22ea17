//! One upstream endpoint as load balancing and outlier detection share it: a [`Host`] is the
//! endpoint of one EDS version, a [`HostSet`] the hosts of one version. The runtime state behind
//! a host (active requests, the active health check's verdict, the outlier record) lives in an
//! `Arc` that every later version with the same address carries over. A leaf: the balancer
//! (`lb.rs`) picks among these hosts and the detector (`resilience/outlier.rs`) ejects them;
//! neither needs the other.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use crate::config::Endpoint;

/// One upstream endpoint of one EDS version. Fields are that version's; the runtime state behind
/// it is shared with the same address in every other version.
pub struct Host {
    pub addr: SocketAddr,
    /// At least 1.
    pub weight: u32,
    pub locality: String,
    /// EDS health: an unhealthy host is never picked.
    pub healthy: bool,
    /// Its `envoy.transport_socket_match` metadata: whether it is reached over mTLS.
    pub socket_match: std::collections::BTreeMap<String, String>,
    state: Arc<HostState>,
}

struct HostState {
    active_requests: AtomicU32,
    outlier: HostOutlier,
    /// Failed the cluster's active health check (cleared when it passes again).
    check_failed: std::sync::atomic::AtomicBool,
}

impl Host {
    pub fn new(endpoint: &Endpoint) -> Host {
        let state = Arc::new(HostState {
            active_requests: AtomicU32::new(0),
            outlier: HostOutlier::default(),
            check_failed: std::sync::atomic::AtomicBool::new(false),
        });
        Host::with_state(endpoint, state)
    }

    fn with_state(endpoint: &Endpoint, state: Arc<HostState>) -> Host {
        Host {
            addr: endpoint.addr,
            weight: endpoint.weight.max(1),
            locality: endpoint.locality.clone(),
            healthy: endpoint.healthy,
            socket_match: endpoint.socket_match.clone(),
            state,
        }
    }

    /// Counts a request in flight to this host until the guard drops.
    pub fn start_request(&self) -> RequestGuard {
        self.state.active_requests.fetch_add(1, Relaxed);
        RequestGuard {
            state: self.state.clone(),
        }
    }

    pub fn active_requests(&self) -> u32 {
        self.state.active_requests.load(Relaxed)
    }

    /// Ejected by outlier detection right now (an ejection whose time has passed ends here).
    /// Out of rotation for now: ejected by outlier detection, or failing its active health check.
    pub fn is_ejected(&self) -> bool {
        self.state.outlier.is_ejected_now() || self.check_failed()
    }

    pub fn check_failed(&self) -> bool {
        self.state
            .check_failed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records the active health check's verdict; returns whether it changed.
    pub fn set_check_failed(&self, failed: bool) -> bool {
        self.state
            .check_failed
            .swap(failed, std::sync::atomic::Ordering::AcqRel)
            != failed
    }

    /// Healthy per EDS and not ejected.
    pub fn is_available(&self) -> bool {
        self.healthy && !self.is_ejected()
    }

    pub(crate) fn outlier(&self) -> &HostOutlier {
        &self.state.outlier
    }

    /// Two hosts are the same endpoint across versions (they share runtime state).
    pub fn same_endpoint(&self, other: &Host) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .field("locality", &self.locality)
            .field("healthy", &self.healthy)
            .field("active_requests", &self.active_requests())
            .finish()
    }
}

/// A request in flight to a host; dropping it ends the request.
#[must_use = "the request counts as active only while the guard lives"]
pub struct RequestGuard {
    state: Arc<HostState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.state.active_requests.fetch_sub(1, Relaxed);
    }
}

impl fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestGuard")
    }
}

/// The hosts of one EDS version, in EDS order, one per address (the first listing wins).
#[derive(Clone, Default)]
pub struct HostSet {
    hosts: Vec<Arc<Host>>,
    healthy: Vec<Arc<Host>>,
}

impl HostSet {
    pub fn new(endpoints: &[Endpoint]) -> HostSet {
        HostSet::build(endpoints, None)
    }

    /// The next version: hosts whose address stays keep their runtime state (and the very same
    /// `Arc<Host>` when nothing about them changed).
    pub fn update(&self, endpoints: &[Endpoint]) -> HostSet {
        HostSet::build(endpoints, Some(self))
    }

    fn build(endpoints: &[Endpoint], previous: Option<&HostSet>) -> HostSet {
        let old: HashMap<SocketAddr, &Arc<Host>> = previous
            .map(|p| p.hosts.iter().map(|h| (h.addr, h)).collect())
            .unwrap_or_default();
        let mut seen = HashSet::with_capacity(endpoints.len());
        let mut hosts = Vec::with_capacity(endpoints.len());
        for e in endpoints.iter().filter(|e| seen.insert(e.addr)) {
            let host = match old.get(&e.addr) {
                Some(h)
                    if h.weight == e.weight.max(1)
                        && h.locality == e.locality
                        && h.healthy == e.healthy
                        && h.socket_match == e.socket_match =>
                {
                    Arc::clone(h)
                }
                Some(h) => Arc::new(Host::with_state(e, h.state.clone())),
                None => Arc::new(Host::new(e)),
            };
            hosts.push(host);
        }
        let healthy = hosts.iter().filter(|h| h.healthy).cloned().collect();
        HostSet { hosts, healthy }
    }

    /// Every host, healthy or not (the outlier detector's population and the admin view).
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// The hosts EDS calls healthy: the ones balancers pick from.
    pub fn healthy(&self) -> &[Arc<Host>] {
        &self.healthy
    }

    pub fn get(&self, addr: SocketAddr) -> Option<&Arc<Host>> {
        self.hosts.iter().find(|h| h.addr == addr)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

impl fmt::Debug for HostSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.hosts.iter()).finish()
    }
}

impl AsRef<HostSet> for HostSet {
    fn as_ref(&self) -> &HostSet {
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionKind {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
}

/// Per-host state; lock-free unless the host is ejected.
#[derive(Debug, Default)]
pub(crate) struct HostOutlier {
    pub(crate) ejected: AtomicBool,
    pub(crate) consecutive_5xx: AtomicU32,
    pub(crate) consecutive_gateway: AtomicU32,
    record: Mutex<Record>,
}

#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) ejected_until: Option<Instant>,
    pub(crate) last_unejected: Option<Instant>,
    /// Envoy's ejection-time backoff: the current ejection lasts `base * multiplier`.
    pub(crate) multiplier: u32,
    pub(crate) times_ejected: u32,
}

impl HostOutlier {
    pub(crate) fn is_ejected_now(&self) -> bool {
        self.ejected.load(Ordering::Acquire) && self.is_ejected_at(Instant::now())
    }

    pub(crate) fn is_ejected_at(&self, now: Instant) -> bool {
        if !self.ejected.load(Ordering::Acquire) {
            return false;
        }
        let mut record = self.lock();
        self.expire(&mut record, now);
        record.ejected_until.is_some()
    }

    /// Ends an ejection whose time has passed, as of the moment it was due.
    pub(crate) fn expire(&self, record: &mut Record, now: Instant) {
        if let Some(until) = record.ejected_until.filter(|&until| now >= until) {
            record.ejected_until = None;
            record.last_unejected = Some(until);
            // Envoy resets the counts so a few new errors do not re-eject at once.
            self.consecutive_5xx.store(0, Ordering::Relaxed);
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            self.ejected.store(false, Ordering::Release);
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn counter(&self, kind: EjectionKind) -> &AtomicU32 {
        match kind {
            EjectionKind::Consecutive5xx => &self.consecutive_5xx,
            EjectionKind::ConsecutiveGatewayFailure => &self.consecutive_gateway,
        }
    }

    /// Adds one to the count; true when it just reached `threshold` (0 or `None`: never).
    pub(crate) fn count(&self, kind: EjectionKind, threshold: Option<u32>) -> bool {
        let n = self
            .counter(kind)
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        threshold.is_some_and(|t| t > 0 && n == t)
    }

    pub(crate) fn reset(&self, kind: EjectionKind) {
        let counter = self.counter(kind);
        // Skip the store on the common path: a healthy host's cache line stays shared.
        if counter.load(Ordering::Relaxed) != 0 {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
