//! Outlier detection with Envoy's semantics (consecutive 5xx and consecutive gateway failures,
//! `split_external_local_origin_errors` off):
//!
//! - A connect failure counts as a 503; any 5xx adds to the consecutive-5xx count, a 502/503/504
//!   to the consecutive-gateway-failure count as well; anything else resets both.
//! - The count reaching its threshold ejects the host, unless ejecting it would make more than
//!   `max_ejection_percent` of the cluster's hosts ejected: `100 * (ejected + 1) / hosts <=
//!   max_ejection_percent`, exactly Envoy's rule. So with 10% and fewer than 10 hosts nothing is
//!   ejected, as in Envoy; `always_eject_one_host` (Envoy's flag, off by default) lifts that for
//!   the first ejection. A refused ejection is counted as an overflow.
//! - The n-th ejection in a row lasts `base_ejection_time * n`, at most `max_ejection_time`
//!   (default 300 s or the base, whichever is larger); the multiplier drops by one for every
//!   `interval` the host stays un-ejected.
//! - An ejection ends once its time has passed: seen on the next pick of the host, or by the
//!   interval loop ([`Outlier::run`]), whichever comes first. Un-ejecting resets the counts.
//!
//! The per-host state lives in the [`Host`] (so it survives EDS updates and config changes); an
//! [`Outlier`] is the cluster's detector: its config, the ejection decisions and their stats.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::config::OutlierConfig;
pub use crate::host::EjectionKind;
use crate::host::{Host, HostSet};

/// Envoy's default `max_ejection_time`.
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// How one request to a host ended, for the detector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The upstream's response status; report a timeout as 504 and a reset as 503, as Envoy.
    pub status: Option<u16>,
    /// The connection to the host could not be made (counts as a 503).
    pub connect_failure: bool,
}

impl Outcome {
    pub fn status(code: u16) -> Outcome {
        Outcome {
            status: Some(code),
            connect_failure: false,
        }
    }

    pub fn connect_failure() -> Outcome {
        Outcome {
            status: None,
            connect_failure: true,
        }
    }

    /// The HTTP status Envoy maps the outcome to; `None` says nothing about the host.
    fn code(self) -> Option<u16> {
        if self.connect_failure {
            Some(503)
        } else {
            self.status
        }
    }
}

/// A host was just ejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    pub host: SocketAddr,
    pub kind: EjectionKind,
    pub duration: Duration,
    /// Ejections of this host so far, this one included.
    pub times_ejected: u32,
}

/// One host's outlier state, for the admin `/clusters` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierStatus {
    pub addr: SocketAddr,
    /// Time left in the current ejection.
    pub ejected_for: Option<Duration>,
    pub times_ejected: u32,
    /// The multiplier of the next ejection's base time, minus one.
    pub ejection_multiplier: u32,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_failures: u32,
}

/// A cluster's detector counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutlierStats {
    pub ejections_detected_consecutive_5xx: u64,
    pub ejections_detected_consecutive_gateway_failure: u64,
    pub ejections_enforced_total: u64,
    /// Ejections refused by `max_ejection_percent`.
    pub ejections_overflow: u64,
}

impl Host {
    /// This host's outlier state at `now`.
    pub fn outlier_status(&self, now: Instant) -> OutlierStatus {
        let state = self.outlier();
        let mut record = state.lock();
        state.expire(&mut record, now);
        OutlierStatus {
            addr: self.addr,
            ejected_for: record.ejected_until.map(|until| until - now),
            times_ejected: record.times_ejected,
            ejection_multiplier: record.multiplier,
            consecutive_5xx: state.consecutive_5xx.load(Ordering::Relaxed),
            consecutive_gateway_failures: state.consecutive_gateway.load(Ordering::Relaxed),
        }
    }
}

/// One cluster's outlier detector.
#[derive(Debug)]
pub struct Outlier {
    config: OutlierConfig,
    max_ejection_time: Duration,
    always_eject_one_host: bool,
    /// Serializes ejection decisions so two cannot both take the last allowed slot.
    deciding: Mutex<()>,
    detected_5xx: AtomicU64,
    detected_gateway: AtomicU64,
    enforced: AtomicU64,
    overflow: AtomicU64,
}

impl Outlier {
    pub fn new(config: OutlierConfig) -> Outlier {
        Outlier {
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME.max(config.base_ejection_time),
            config,
            always_eject_one_host: false,
            deciding: Mutex::new(()),
            detected_5xx: AtomicU64::new(0),
            detected_gateway: AtomicU64::new(0),
            enforced: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
        }
    }

    /// Envoy's `max_ejection_time` (never below the base ejection time).
    pub fn with_max_ejection_time(mut self, max: Duration) -> Outlier {
        self.max_ejection_time = max.max(self.config.base_ejection_time);
        self
    }

    /// Envoy's `always_eject_one_host`: the first ejection ignores `max_ejection_percent`.
    pub fn with_always_eject_one_host(mut self, on: bool) -> Outlier {
        self.always_eject_one_host = on;
        self
    }

    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Takes in how a request to `host` (one of `hosts`) ended; says whether that ejected it.
    pub fn report(
        &self,
        hosts: &HostSet,
        host: &Host,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Ejection> {
        let state = host.outlier();
        let code = outcome.code()?;
        if !(500..600).contains(&code) {
            state.reset(EjectionKind::Consecutive5xx);
            state.reset(EjectionKind::ConsecutiveGatewayFailure);
            return None;
        }
        let mut ejection = None;
        if matches!(code, 502..=504) {
            if state.count(
                EjectionKind::ConsecutiveGatewayFailure,
                self.config.consecutive_gateway_failure,
            ) {
                ejection = self.eject(hosts, host, EjectionKind::ConsecutiveGatewayFailure, now);
            }
        } else {
            state.reset(EjectionKind::ConsecutiveGatewayFailure);
        }
        // Both may fire on one response, as in Envoy; the second finds the host ejected.
        if state.count(EjectionKind::Consecutive5xx, self.config.consecutive_5xx) {
            let by_5xx = self.eject(hosts, host, EjectionKind::Consecutive5xx, now);
            ejection = ejection.or(by_5xx);
        }
        ejection
    }

    /// Whether `host` is ejected at `now` (ending an ejection whose time has passed).
    pub fn is_ejected(&self, host: &Host, now: Instant) -> bool {
        host.outlier().is_ejected_at(now)
    }

    fn eject(
        &self,
        hosts: &HostSet,
        host: &Host,
        kind: EjectionKind,
        now: Instant,
    ) -> Option<Ejection> {
        let _deciding = self
            .deciding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let state = host.outlier();
        // A host already ejected (Envoy leaves the count as it is; un-ejection resets it), or
        // one no longer in the cluster.
        if state.is_ejected_at(now) || !hosts.hosts().iter().any(|h| h.same_endpoint(host)) {
            return None;
        }
        let detected = match kind {
            EjectionKind::Consecutive5xx => &self.detected_5xx,
            EjectionKind::ConsecutiveGatewayFailure => &self.detected_gateway,
        };
        detected.fetch_add(1, Ordering::Relaxed);
        state.reset(kind);
        let ejected = hosts
            .hosts()
            .iter()
            .filter(|h| h.outlier().is_ejected_at(now))
            .count() as u64;
        let max_percent = u64::from(self.config.max_ejection_percent.min(100));
        let allowed = (ejected + 1) * 100 <= max_percent * hosts.len() as u64
            || (self.always_eject_one_host && ejected == 0);
        if !allowed {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let base = self.config.base_ejection_time;
        let mut record = state.lock();
        record.times_ejected = record.times_ejected.saturating_add(1);
        if base.saturating_mul(record.multiplier) < self.max_ejection_time.saturating_add(base) {
            record.multiplier = record.multiplier.saturating_add(1);
        }
        let duration = base
            .saturating_mul(record.multiplier)
            .min(self.max_ejection_time);
        record.ejected_until = Some(now + duration);
        state.ejected.store(true, Ordering::Release);
        self.enforced.fetch_add(1, Ordering::Relaxed);
        Some(Ejection {
            host: host.addr,
            kind,
            duration,
            times_ejected: record.times_ejected,
        })
    }

    /// The interval's work, as Envoy's timer does it: end ejections whose time has passed, and
    /// lower the multiplier of every host un-ejected for at least an interval.
    pub fn on_interval(&self, hosts: &HostSet, now: Instant) {
        for host in hosts.hosts() {
            let state = host.outlier();
            let mut record = state.lock();
            state.expire(&mut record, now);
            let healthy_long_enough = record
                .last_unejected
                .is_some_and(|at| now - at >= self.config.interval);
            if record.ejected_until.is_none() && healthy_long_enough {
                record.multiplier = record.multiplier.saturating_sub(1);
            }
        }
    }

    /// Runs [`Outlier::on_interval`] every interval over the hosts `hosts` yields, until it
    /// yields `None` (the cluster is gone) or the future is dropped.
    pub async fn run<F, H>(&self, mut hosts: F)
    where
        F: FnMut() -> Option<H>,
        H: Deref,
        H::Target: AsRef<HostSet>,
    {
        let period = self.config.interval.max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let now = ticks.tick().await;
            let Some(current) = hosts() else { return };
            self.on_interval((*current).as_ref(), now);
        }
    }

    /// Every host's outlier state, for the admin `/clusters` output.
    pub fn snapshot(&self, hosts: &HostSet, now: Instant) -> Vec<OutlierStatus> {
        hosts
            .hosts()
            .iter()
            .map(|h| h.outlier_status(now))
            .collect()
    }

    pub fn stats(&self) -> OutlierStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OutlierStats {
            ejections_detected_consecutive_5xx: get(&self.detected_5xx),
            ejections_detected_consecutive_gateway_failure: get(&self.detected_gateway),
            ejections_enforced_total: get(&self.enforced),
            ejections_overflow: get(&self.overflow),
        }
    }
}
