use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{advance, Instant};

use super::*;
use crate::config::{Endpoint, OutlierConfig, Thresholds};
use crate::host::{Host, HostSet};

// ---------------------------------------------------------------------------------- breakers

fn thresholds(connections: u32, pending: u32, requests: u32, retries: u32) -> Thresholds {
    Thresholds {
        max_connections: connections,
        max_pending_requests: pending,
        max_requests: requests,
        max_retries: retries,
    }
}

#[test]
fn breaker_refuses_past_the_threshold_and_counts_overflows() {
    let b = Breakers::new(thresholds(10, 10, 2, 10));
    let first = b.try_request().expect("first");
    let _second = b.try_request().expect("second");
    let err = b.try_request().expect_err("third overflows");
    assert_eq!(
        err,
        Overflow {
            resource: Resource::Requests,
            limit: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "circuit breaker overflow: max_requests (2) reached"
    );
    assert!(b.try_request().is_err());
    assert_eq!(b.overflows(Resource::Requests), 2);
    assert_eq!(b.active(Resource::Requests), 2);
    drop(first);
    assert_eq!(b.active(Resource::Requests), 1);
    assert_eq!(
        b.try_request().expect("freed").resource(),
        Resource::Requests
    );
    // The other resources were untouched.
    for r in [Resource::Connections, Resource::Pending, Resource::Retries] {
        assert_eq!((b.active(r), b.overflows(r)), (0, 0));
    }
}

#[test]
fn each_resource_has_its_own_threshold() {
    let b = Breakers::new(thresholds(1, 2, 3, 4));
    let held: Vec<Permit> = (0..1)
        .map(|_| b.try_connection())
        .chain((0..2).map(|_| b.try_pending()))
        .chain((0..3).map(|_| b.try_request()))
        .chain((0..4).map(|_| b.try_retry()))
        .collect::<Result<_, _>>()
        .expect("all within limits");
    assert_eq!(
        b.try_connection().err().map(|e| e.resource),
        Some(Resource::Connections)
    );
    assert_eq!(
        b.try_pending().err().map(|e| e.resource),
        Some(Resource::Pending)
    );
    assert_eq!(
        b.try_request().err().map(|e| e.resource),
        Some(Resource::Requests)
    );
    assert_eq!(
        b.try_retry().err().map(|e| e.resource),
        Some(Resource::Retries)
    );
    assert!(Resource::ALL.iter().all(|&r| b.overflows(r) == 1));
    drop(held);
    assert!(Resource::ALL.iter().all(|&r| b.active(r) == 0));
}

#[test]
fn breaker_update_keeps_what_is_in_flight() {
    let b = Breakers::new(thresholds(10, 10, 4, 3));
    let held: Vec<_> = (0..4).map(|_| b.try_request().expect("within")).collect();
    b.update(thresholds(10, 10, 2, 3));
    assert_eq!(b.thresholds().max_requests, 2);
    assert_eq!(b.active(Resource::Requests), 4);
    assert!(b.try_request().is_err());
    let mut held = held;
    held.truncate(2);
    assert!(b.try_request().is_err(), "still at the new limit");
    held.truncate(1);
    let _one = b.try_request().expect("below the new limit");
    b.update(thresholds(10, 10, 100, 3));
    let _more: Vec<_> = (0..50).map(|_| b.try_request().expect("raised")).collect();
}

#[test]
fn clones_share_counters() {
    let a = Breakers::new(thresholds(1, 1, 1, 1));
    let b = a.clone();
    let _p = a.try_request().expect("first");
    assert!(b.try_request().is_err());
    assert_eq!(a.overflows(Resource::Requests), 1);
}

#[test]
fn breaker_never_admits_past_the_limit_under_contention() {
    let b = Breakers::new(thresholds(10, 10, 5, 10));
    let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (b, peak) = (b.clone(), peak.clone());
            s.spawn(move || {
                for _ in 0..5_000 {
                    if let Ok(_p) = b.try_request() {
                        peak.fetch_max(
                            b.active(Resource::Requests),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
            });
        }
    });
    assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= 5);
    assert_eq!(b.active(Resource::Requests), 0);
}

#[test]
fn retry_budget_replaces_max_retries() {
    let b = Breakers::new(thresholds(1000, 1000, 1000, 1));
    b.set_retry_budget(Some(RetryBudget::default()));
    assert_eq!(b.retry_budget(), Some(RetryBudget::default()));
    // Idle cluster: min_retry_concurrency (3) retries, though max_retries is 1.
    let retries: Vec<_> = (0..3)
        .map(|_| b.try_retry().expect("min concurrency"))
        .collect();
    assert_eq!(
        b.try_retry().expect_err("budget spent"),
        Overflow {
            resource: Resource::Retries,
            limit: 3
        }
    );
    // 80 active + 20 pending requests: 20% of 100 = 20 retries.
    let _load: Vec<_> = (0..80)
        .map(|_| b.try_request().expect("request"))
        .chain((0..20).map(|_| b.try_pending().expect("pending")))
        .collect();
    let more: Vec<_> = (0..17)
        .map(|_| b.try_retry().expect("within budget"))
        .collect();
    assert_eq!(b.try_retry().expect_err("20 in flight").limit, 20);
    drop((retries, more));
    b.set_retry_budget(None);
    assert_eq!(b.retry_budget(), None);
    let _one = b.try_retry().expect("max_retries again");
    assert!(b.try_retry().is_err());
}

#[test]
fn retry_budget_limits() {
    let budget = RetryBudget::default();
    assert_eq!(budget.max_retries(0), 3);
    assert_eq!(budget.max_retries(14), 3);
    assert_eq!(budget.max_retries(100), 20);
    assert_eq!(budget.max_retries(1001), 200);
    assert!(budget.try_acquire(100, 19));
    assert!(!budget.try_acquire(100, 20));
    assert!(budget.try_acquire(0, 2));
    assert!(!budget.try_acquire(0, 3));
    // Without a floor, an idle cluster may not retry at all: retries cannot amplify an outage.
    let strict = RetryBudget {
        budget_percent: 50.0,
        min_retry_concurrency: 0,
    };
    assert!(!strict.try_acquire(0, 0));
    assert!(strict.try_acquire(10, 4));
    assert!(!strict.try_acquire(10, 5));
    let b = Breakers::new(Thresholds::default());
    b.set_retry_budget(Some(RetryBudget {
        budget_percent: 12.34,
        min_retry_concurrency: 7,
    }));
    assert_eq!(
        b.retry_budget(),
        Some(RetryBudget {
            budget_percent: 12.34,
            min_retry_concurrency: 7
        })
    );
}

// ----------------------------------------------------------------------------------- outlier

fn hosts(n: u8) -> HostSet {
    let eps: Vec<Endpoint> = (0..n)
        .map(|i| Endpoint {
            addr: SocketAddr::from(([10, 0, 0, i + 1], 80)),
            weight: 1,
            healthy: true,
            locality: String::new(),
            socket_match: Default::default(),
        })
        .collect();
    HostSet::new(&eps)
}

fn config(c5xx: Option<u32>, gateway: Option<u32>, max_percent: u32) -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: c5xx,
        consecutive_gateway_failure: gateway,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: max_percent,
    }
}

fn report_n(o: &Outlier, set: &HostSet, host: &Host, outcome: Outcome, n: u32) -> Option<Ejection> {
    (0..n)
        .filter_map(|_| o.report(set, host, outcome, Instant::now()))
        .last()
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_ejects_and_a_success_resets_the_count() {
    let (set, o) = (hosts(4), Outlier::new(config(Some(5), None, 100)));
    let h = &set.hosts()[0];
    assert!(report_n(&o, &set, h, Outcome::status(500), 4).is_none());
    o.report(&set, h, Outcome::status(200), Instant::now());
    assert!(report_n(&o, &set, h, Outcome::status(503), 4).is_none());
    assert!(!h.is_ejected());
    o.report(&set, h, Outcome::status(404), Instant::now());
    assert!(report_n(&o, &set, h, Outcome::status(500), 4).is_none());
    let ejection = o
        .report(&set, h, Outcome::status(599), Instant::now())
        .expect("fifth 5xx ejects");
    assert_eq!(
        ejection,
        Ejection {
            host: h.addr,
            kind: EjectionKind::Consecutive5xx,
            duration: Duration::from_secs(30),
            times_ejected: 1
        }
    );
    assert!(h.is_ejected() && o.is_ejected(h, Instant::now()));
    assert!(!set.hosts()[1].is_ejected());
    let stats = o.stats();
    assert_eq!(
        (
            stats.ejections_detected_consecutive_5xx,
            stats.ejections_enforced_total
        ),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn outcomes_without_a_status_say_nothing_and_connect_failures_count_as_503() {
    let (set, o) = (hosts(2), Outlier::new(config(Some(3), None, 100)));
    let h = &set.hosts()[0];
    report_n(&o, &set, h, Outcome::status(500), 2);
    o.report(&set, h, Outcome::default(), Instant::now());
    assert_eq!(h.outlier_status(Instant::now()).consecutive_5xx, 2);
    assert!(o
        .report(&set, h, Outcome::connect_failure(), Instant::now())
        .is_some());
}

#[tokio::test(start_paused = true)]
async fn gateway_failures_count_only_502_to_504_and_connect_failures() {
    let (set, o) = (hosts(2), Outlier::new(config(None, Some(3), 100)));
    let h = &set.hosts()[0];
    o.report(&set, h, Outcome::status(502), Instant::now());
    o.report(&set, h, Outcome::connect_failure(), Instant::now());
    // A 500 is a 5xx but not a gateway failure: it resets the gateway count.
    o.report(&set, h, Outcome::status(500), Instant::now());
    assert!(report_n(&o, &set, h, Outcome::status(504), 2).is_none());
    let e = o
        .report(&set, h, Outcome::status(503), Instant::now())
        .expect("third gateway failure");
    assert_eq!(e.kind, EjectionKind::ConsecutiveGatewayFailure);
    assert_eq!(o.stats().ejections_detected_consecutive_gateway_failure, 1);
    // Consecutive 5xx is off in this config: its count alone never ejects.
    let (set, o) = (hosts(2), Outlier::new(config(None, Some(3), 100)));
    assert!(report_n(&o, &set, &set.hosts()[0], Outcome::status(500), 50).is_none());
}

#[tokio::test(start_paused = true)]
async fn ejection_ends_when_its_time_has_passed() {
    let (set, o) = (hosts(2), Outlier::new(config(Some(1), None, 100)));
    let h = &set.hosts()[0];
    o.report(&set, h, Outcome::status(500), Instant::now())
        .expect("ejected");
    advance(Duration::from_millis(29_999)).await;
    assert!(h.is_ejected());
    assert_eq!(
        h.outlier_status(Instant::now()).ejected_for,
        Some(Duration::from_millis(1))
    );
    advance(Duration::from_millis(1)).await;
    assert!(
        !h.is_ejected(),
        "picks see the end of the ejection without waiting for the interval"
    );
    let status = h.outlier_status(Instant::now());
    assert_eq!(
        (
            status.ejected_for,
            status.times_ejected,
            status.consecutive_5xx
        ),
        (None, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_per_ejection_up_to_the_max() {
    let (set, o) = (
        hosts(2),
        Outlier::new(config(Some(1), None, 100)).with_max_ejection_time(Duration::from_secs(100)),
    );
    let h = &set.hosts()[0];
    let mut durations = Vec::new();
    for _ in 0..6 {
        let e = o
            .report(&set, h, Outcome::status(500), Instant::now())
            .expect("ejected");
        durations.push(e.duration.as_secs());
        advance(e.duration).await;
        assert!(!o.is_ejected(h, Instant::now()));
    }
    assert_eq!(durations, [30, 60, 90, 100, 100, 100]);
    assert_eq!(h.outlier_status(Instant::now()).times_ejected, 6);
    // The default maximum is 300 s, or the base when that is longer.
    let long = config(Some(1), None, 100);
    let long = OutlierConfig {
        base_ejection_time: Duration::from_secs(400),
        ..long
    };
    let (set, o) = (hosts(2), Outlier::new(long));
    for expected in [400, 400] {
        let e = o
            .report(&set, &set.hosts()[0], Outcome::status(500), Instant::now())
            .expect("ejected");
        assert_eq!(e.duration.as_secs(), expected);
        advance(e.duration).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_multiplier_decays_once_per_healthy_interval() {
    let (set, o) = (hosts(2), Outlier::new(config(Some(1), None, 100)));
    let h = &set.hosts()[0];
    for _ in 0..3 {
        let e = o
            .report(&set, h, Outcome::status(500), Instant::now())
            .expect("ejected");
        advance(e.duration).await;
        o.on_interval(&set, Instant::now());
    }
    assert_eq!(h.outlier_status(Instant::now()).ejection_multiplier, 3);
    // Two intervals healthy: 3 -> 1, so the next ejection lasts 2 * base.
    for _ in 0..2 {
        advance(Duration::from_secs(10)).await;
        o.on_interval(&set, Instant::now());
    }
    assert_eq!(h.outlier_status(Instant::now()).ejection_multiplier, 1);
    let e = o
        .report(&set, h, Outcome::status(500), Instant::now())
        .expect("ejected");
    assert_eq!(e.duration, Duration::from_secs(60));
    // While ejected it does not decay.
    advance(Duration::from_secs(10)).await;
    o.on_interval(&set, Instant::now());
    assert_eq!(h.outlier_status(Instant::now()).ejection_multiplier, 2);
    // Long healthy: back to the base time, never below.
    advance(Duration::from_secs(50)).await;
    for _ in 0..10 {
        advance(Duration::from_secs(10)).await;
        o.on_interval(&set, Instant::now());
    }
    assert_eq!(h.outlier_status(Instant::now()).ejection_multiplier, 0);
    assert_eq!(
        o.report(&set, h, Outcome::status(500), Instant::now())
            .map(|e| e.duration),
        Some(Duration::from_secs(30))
    );
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_follows_envoys_rule() {
    // 10 hosts at 20%: two may be ejected, the third is refused and counted.
    let (set, o) = (hosts(10), Outlier::new(config(Some(1), None, 20)));
    let now = Instant::now();
    assert!(o
        .report(&set, &set.hosts()[0], Outcome::status(500), now)
        .is_some());
    assert!(o
        .report(&set, &set.hosts()[1], Outcome::status(500), now)
        .is_some());
    assert!(o
        .report(&set, &set.hosts()[2], Outcome::status(500), now)
        .is_none());
    assert!(!set.hosts()[2].is_ejected());
    assert_eq!(o.stats().ejections_overflow, 1);
    // Once an ejection ends, there is room again.
    advance(Duration::from_secs(30)).await;
    assert!(o
        .report(&set, &set.hosts()[2], Outcome::status(500), Instant::now())
        .is_some());

    // 10% of 3 hosts: one ejection would be 33%, so Envoy ejects none...
    let (set, o) = (hosts(3), Outlier::new(config(Some(1), None, 10)));
    assert!(o
        .report(&set, &set.hosts()[0], Outcome::status(500), Instant::now())
        .is_none());
    // ...unless always_eject_one_host is on, and then only one.
    let o = Outlier::new(config(Some(1), None, 10)).with_always_eject_one_host(true);
    assert!(o
        .report(&set, &set.hosts()[0], Outcome::status(500), Instant::now())
        .is_some());
    assert!(o
        .report(&set, &set.hosts()[1], Outcome::status(500), Instant::now())
        .is_none());
    // 0% never ejects; 100% may eject every host.
    let (set, o) = (hosts(2), Outlier::new(config(Some(1), None, 0)));
    assert!(o
        .report(&set, &set.hosts()[0], Outcome::status(500), Instant::now())
        .is_none());
    let o = Outlier::new(config(Some(1), None, 100));
    assert!(set.hosts().iter().all(|h| o
        .report(&set, h, Outcome::status(500), Instant::now())
        .is_some()));
}

#[tokio::test(start_paused = true)]
async fn ejection_state_survives_endpoint_updates_and_detector_replacement() {
    let set = hosts(3);
    let o = Outlier::new(config(Some(1), None, 100));
    o.report(&set, &set.hosts()[0], Outcome::status(500), Instant::now())
        .expect("ejected");
    let mut eps: Vec<Endpoint> = set
        .hosts()
        .iter()
        .map(|h| Endpoint {
            addr: h.addr,
            weight: 7,
            healthy: true,
            locality: "eu/a".into(),
            socket_match: Default::default(),
        })
        .collect();
    eps.pop();
    let next = set.update(&eps);
    assert!(next.hosts()[0].is_ejected());
    // A new detector (the cluster's outlier config changed) sees the ejection in its count.
    let o = Outlier::new(config(Some(1), None, 50));
    assert!(o
        .report(
            &next,
            &next.hosts()[1],
            Outcome::status(500),
            Instant::now()
        )
        .is_none());
    assert_eq!(o.stats().ejections_overflow, 1);
}

#[tokio::test(start_paused = true)]
async fn hosts_outside_the_set_and_ejected_hosts_are_not_ejected_again() {
    let (set, o) = (hosts(2), Outlier::new(config(Some(2), None, 100)));
    let stranger = Host::new(&Endpoint {
        addr: SocketAddr::from(([192, 0, 2, 1], 80)),
        weight: 1,
        healthy: true,
        locality: String::new(),
        socket_match: Default::default(),
    });
    assert!(report_n(&o, &set, &stranger, Outcome::status(500), 4).is_none());
    let h = &set.hosts()[0];
    assert!(report_n(&o, &set, h, Outcome::status(500), 2).is_some());
    // Late failures from requests in flight while ejected do not extend the ejection.
    assert!(report_n(&o, &set, h, Outcome::status(500), 6).is_none());
    assert_eq!(h.outlier_status(Instant::now()).times_ejected, 1);
    assert_eq!(o.stats().ejections_enforced_total, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_reports_every_host() {
    let (set, o) = (hosts(3), Outlier::new(config(Some(2), Some(5), 100)));
    o.report(&set, &set.hosts()[1], Outcome::status(502), Instant::now());
    report_n(&o, &set, &set.hosts()[2], Outcome::status(500), 2).expect("ejected");
    advance(Duration::from_secs(5)).await;
    let snap = o.snapshot(&set, Instant::now());
    assert_eq!(snap.len(), 3);
    assert_eq!(snap[0].ejected_for, None);
    assert_eq!(
        (
            snap[1].consecutive_5xx,
            snap[1].consecutive_gateway_failures
        ),
        (1, 1)
    );
    assert_eq!(
        (snap[2].addr, snap[2].ejected_for, snap[2].times_ejected),
        (set.hosts()[2].addr, Some(Duration::from_secs(25)), 1)
    );
}

#[tokio::test(start_paused = true)]
async fn run_ticks_every_interval_until_the_cluster_is_gone() {
    let set = Arc::new(hosts(2));
    let o = Arc::new(Outlier::new(config(Some(1), None, 100)));
    let h = set.hosts()[0].clone();
    for _ in 0..2 {
        let e = o
            .report(&set, &h, Outcome::status(500), Instant::now())
            .expect("ejected");
        advance(e.duration).await;
    }
    let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let task = tokio::spawn({
        let (o, set, alive) = (o.clone(), set.clone(), alive.clone());
        async move {
            o.run(|| {
                alive
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .then(|| set.clone())
            })
            .await
        }
    });
    // Only the interval loop lowers the multiplier (a pick ending an ejection does not): one
    // step per tick once the host has been un-ejected for an interval, 2 -> 0.
    for _ in 0..3 {
        advance(Duration::from_secs(10)).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(h.outlier_status(Instant::now()).ejection_multiplier, 0);
    alive.store(false, std::sync::atomic::Ordering::Relaxed);
    advance(Duration::from_secs(10)).await;
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("run returns")
        .expect("no panic");
}
