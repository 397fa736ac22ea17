use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use xxhash_rust::xxh64::xxh64;

use super::ring::{Maglev, Ring};
use super::*;
use crate::config::{Endpoint, HashPolicy, LbPolicy, OutlierConfig};
use crate::resilience::{Outcome, Outlier};

fn endpoint(i: u32, weight: u32) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)),
        weight,
        healthy: true,
        locality: String::new(),
        socket_match: Default::default(),
    }
}

fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| endpoint(i as u32, w))
        .collect()
}

fn balancer(policy: LbPolicy, weights: &[u32]) -> Balancer {
    Balancer::new(policy, HostSet::new(&endpoints(weights)))
}

fn none(_: &Host) -> bool {
    false
}

fn pick(b: &Balancer) -> SocketAddr {
    pick_hash(b, None)
}

fn pick_hash(b: &Balancer, hash: Option<u64>) -> SocketAddr {
    b.pick(&PickContext { hash }, &none).expect("a host").addr
}

fn counts(b: &Balancer, n: usize) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        *counts.entry(pick(b)).or_default() += 1;
    }
    counts
}

fn count_of(counts: &HashMap<SocketAddr, usize>, i: u32) -> usize {
    counts.get(&endpoint(i, 1).addr).copied().unwrap_or(0)
}

/// Ejects `host` through the detector (one 5xx is enough with this config).
fn eject(hosts: &HostSet, host: &Host) {
    let config = OutlierConfig {
        consecutive_5xx: Some(1),
        consecutive_gateway_failure: None,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 100,
    };
    let outlier = Outlier::new(config);
    assert!(outlier
        .report(
            hosts,
            host,
            Outcome::status(500),
            tokio::time::Instant::now()
        )
        .is_some());
    assert!(host.is_ejected());
}

const ALL_POLICIES: [LbPolicy; 5] = [
    LbPolicy::RoundRobin,
    LbPolicy::LeastRequest,
    LbPolicy::Random,
    LbPolicy::RingHash,
    LbPolicy::Maglev,
];

// ------------------------------------------------------------------------------------ hashing

#[test]
fn xxh64_matches_envoys_vectors() {
    assert_eq!(xxh64(b"", 0), 0xef46_db37_51d8_e999);
    assert_eq!(xxh64(b"a", 0), 0xd24e_c4f1_a98c_6e5b);
    assert_eq!(xxh64(b"abc", 0), 0x44bc_2cf5_ad77_0999);
    assert_eq!(
        xxh64(b"The quick brown fox jumps over the lazy dog", 0),
        0x0b24_2d36_1fda_71bc
    );
    assert_eq!(xxh64(b"10.0.0.1:8080_0", 0), 0x23a2_9ae7_75df_d4a3);
    assert_eq!(xxh64(b"10.0.0.1:8080", 1), 0x0dfc_e9ef_d349_b428);
    assert_eq!(xxh64(&[b'x'; 100], 7), 0xae5a_d321_e4fe_6127);
    assert_eq!(xxh64(b"abc", 0x9E37_79B9_7F4A_7C15), 0x2ed0_f59d_6b43_ac8b);
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

#[test]
fn request_hash_follows_envoy_per_policy() {
    let h = headers(&[
        ("x-user", "alice"),
        ("cookie", "a=1; session=\"s3cr3t\"; b=2"),
        ("host", "svc"),
    ]);
    let ip: IpAddr = [10, 1, 2, 3].into();
    let one = |p: HashPolicy| request_hash(&[p], &h, "/p?x=1&user=bob&y", Some(ip));
    assert_eq!(
        one(HashPolicy::Header("x-user".into())),
        Some(xxh64(b"alice", 0))
    );
    assert_eq!(
        one(HashPolicy::Header(":authority".into())),
        Some(xxh64(b"svc", 0))
    );
    assert_eq!(
        one(HashPolicy::Header(":path".into())),
        Some(xxh64(b"/p?x=1&user=bob&y", 0))
    );
    assert_eq!(one(HashPolicy::Header("x-missing".into())), None);
    assert_eq!(
        one(HashPolicy::Cookie("session".into())),
        Some(xxh64(b"s3cr3t", 0))
    );
    assert_eq!(one(HashPolicy::Cookie("nope".into())), None);
    assert_eq!(
        one(HashPolicy::QueryParameter("user".into())),
        Some(xxh64(b"bob", 0))
    );
    assert_eq!(
        one(HashPolicy::QueryParameter("y".into())),
        Some(xxh64(b"", 0))
    );
    assert_eq!(one(HashPolicy::QueryParameter("z".into())), None);
    assert_eq!(one(HashPolicy::SourceIp), Some(xxh64(b"10.1.2.3", 0)));
    assert_eq!(request_hash(&[HashPolicy::SourceIp], &h, "/", None), None);
    let v6: IpAddr = "2001:db8::1".parse().expect("ip");
    assert_eq!(
        request_hash(&[HashPolicy::SourceIp], &h, "/", Some(v6)),
        Some(xxh64(b"2001:db8::1", 0))
    );
}

#[test]
fn request_hash_folds_policies_and_sorts_repeated_values() {
    let h = headers(&[("a", "1"), ("b", "2")]);
    let both = request_hash(
        &[
            HashPolicy::Header("a".into()),
            HashPolicy::Header("b".into()),
        ],
        &h,
        "/",
        None,
    );
    assert_eq!(both, Some(xxh64(b"1", 0).rotate_left(1) ^ xxh64(b"2", 0)));
    // The same policy twice does not cancel out.
    let twice = request_hash(
        &[
            HashPolicy::Header("a".into()),
            HashPolicy::Header("a".into()),
        ],
        &h,
        "/",
        None,
    );
    assert_ne!(twice, Some(0));
    // A policy without input is skipped, not folded in.
    let skipped = request_hash(
        &[
            HashPolicy::Header("zz".into()),
            HashPolicy::Header("a".into()),
        ],
        &h,
        "/",
        None,
    );
    assert_eq!(skipped, Some(xxh64(b"1", 0)));
    let ab = headers(&[("x", "alpha"), ("x", "beta")]);
    let ba = headers(&[("x", "beta"), ("x", "alpha")]);
    let policy = [HashPolicy::Header("x".into())];
    assert_eq!(
        request_hash(&policy, &ab, "/", None),
        request_hash(&policy, &ba, "/", None)
    );
    assert_eq!(
        request_hash(&policy, &ab, "/", None),
        Some(xxh64(b"beta", xxh64(b"alpha", 0)))
    );
}

#[test]
fn generated_cookie_is_asked_for_only_when_missing() {
    let policy = [HashPolicy::GeneratedCookie {
        name: "sticky".into(),
        path: "/".into(),
        ttl: Duration::from_secs(60),
    }];
    let mut asked = 0;
    let with = headers(&[("cookie", "sticky=abc")]);
    let hash = request_hash_with(&policy, &with, "/", None, &mut |_| {
        asked += 1;
        Some("zzz".into())
    });
    assert_eq!((hash, asked), (Some(xxh64(b"abc", 0)), 0));
    let hash = request_hash_with(&policy, &HeaderMap::new(), "/", None, &mut |_| {
        asked += 1;
        Some("zzz".into())
    });
    assert_eq!((hash, asked), (Some(xxh64(b"zzz", 0)), 1));
    assert_eq!(request_hash(&policy, &HeaderMap::new(), "/", None), None);

    let remote: SocketAddr = "10.0.0.9:5555".parse().expect("addr");
    let local: SocketAddr = "10.0.0.1:15001".parse().expect("addr");
    let value = generated_cookie_value(remote, local);
    assert_eq!(
        value,
        format!("{:016x}", xxh64(b"10.0.0.9:555510.0.0.1:15001", 0))
    );
    assert_eq!(
        set_cookie("sticky", &value, "/", Duration::from_secs(60)),
        format!("sticky=\"{value}\"; Max-Age=60; Path=/; HttpOnly")
    );
    assert_eq!(
        set_cookie("s", "v", "", Duration::ZERO),
        "s=\"v\"; HttpOnly"
    );
}

// -------------------------------------------------------------------------------- host sets

#[test]
fn host_set_update_keeps_runtime_state_for_addresses_that_stay() {
    let v1 = HostSet::new(&endpoints(&[1, 1, 1]));
    let guard = v1.hosts()[1].start_request();
    let mut next = endpoints(&[1, 5, 1]);
    next.remove(2);
    next.push(endpoint(7, 1));
    let v2 = v1.update(&next);
    // Unchanged: the very same host.
    assert!(Arc::ptr_eq(&v1.hosts()[0], &v2.hosts()[0]));
    // Weight changed: a new host sharing the old one's counters.
    assert!(!Arc::ptr_eq(&v1.hosts()[1], &v2.hosts()[1]));
    assert!(v2.hosts()[1].same_endpoint(&v1.hosts()[1]));
    assert_eq!(
        (v2.hosts()[1].weight, v2.hosts()[1].active_requests()),
        (5, 1)
    );
    drop(guard);
    assert_eq!(v2.hosts()[1].active_requests(), 0);
    // Removed and added.
    assert!(v2.get(endpoint(2, 1).addr).is_none());
    assert_eq!(
        v2.get(endpoint(7, 1).addr).map(|h| h.active_requests()),
        Some(0)
    );
}

#[test]
fn host_set_drops_duplicate_addresses_splits_out_unhealthy_and_floors_weight() {
    let mut eps = endpoints(&[0, 2]);
    eps.push(endpoint(0, 9));
    eps[1].healthy = false;
    let set = HostSet::new(&eps);
    assert_eq!(set.len(), 2);
    assert_eq!(set.hosts()[0].weight, 1);
    assert_eq!(set.healthy().len(), 1);
    assert!(!set.hosts()[1].is_available());
}

#[test]
fn request_guard_counts_in_flight_requests() {
    let host = Host::new(&endpoint(0, 1));
    let a = host.start_request();
    let b = host.start_request();
    assert_eq!(host.active_requests(), 2);
    drop(a);
    assert_eq!(host.active_requests(), 1);
    drop(b);
    assert_eq!(host.active_requests(), 0);
}

// ------------------------------------------------------------------------------ round robin

#[test]
fn round_robin_is_exact_and_cycles() {
    let b = balancer(LbPolicy::RoundRobin, &[1, 1, 1]);
    let c = counts(&b, 300);
    assert!((0..3).all(|i| count_of(&c, i) == 100), "{c:?}");
    let first: Vec<_> = (0..3).map(|_| pick(&b)).collect();
    let second: Vec<_> = (0..3).map(|_| pick(&b)).collect();
    assert_eq!(first, second);
    assert_ne!(first[0], first[1]);
}

#[test]
fn weighted_round_robin_is_exact_over_a_cycle_and_interleaved() {
    let b = balancer(LbPolicy::RoundRobin, &[1, 2, 3]);
    let c = counts(&b, 600);
    assert_eq!(
        (count_of(&c, 0), count_of(&c, 1), count_of(&c, 2)),
        (100, 200, 300)
    );
    // EDF interleaves: the heaviest host never takes more than two slots in a row.
    let seq: Vec<_> = (0..60).map(|_| pick(&b)).collect();
    assert!(
        seq.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])),
        "{seq:?}"
    );

    // Common factors are divided out; the cycle stays exact.
    let b = balancer(LbPolicy::RoundRobin, &[1_000_000, 3_000_000]);
    let c = counts(&b, 400);
    assert_eq!((count_of(&c, 0), count_of(&c, 1)), (100, 300));
}

#[test]
fn weighted_round_robin_scales_long_cycles_down_closely() {
    let b = balancer(LbPolicy::RoundRobin, &[4999, 10000]);
    let c = counts(&b, 15_000);
    let share = count_of(&c, 0) as f64 / 15_000.0;
    assert!((share - 4999.0 / 14999.0).abs() < 0.01, "{share}");
}

#[test]
fn round_robin_skips_unavailable_hosts_and_keeps_the_rest_even() {
    let mut eps = endpoints(&[1, 1, 1, 1]);
    eps[3].healthy = false;
    let set = HostSet::new(&eps);
    eject(&set, &set.hosts()[0]);
    let b = Balancer::new(LbPolicy::RoundRobin, set);
    let c = counts(&b, 200);
    assert_eq!((count_of(&c, 0), count_of(&c, 3)), (0, 0));
    assert_eq!((count_of(&c, 1), count_of(&c, 2)), (100, 100), "{c:?}");

    // Weighted: the ejected host's turns are shared, not all handed to its neighbour.
    let set = HostSet::new(&endpoints(&[2, 1, 1]));
    eject(&set, &set.hosts()[1]);
    let b = Balancer::new(LbPolicy::RoundRobin, set);
    let c = counts(&b, 300);
    assert_eq!(
        (count_of(&c, 0), count_of(&c, 1), count_of(&c, 2)),
        (200, 0, 100)
    );
}

// ---------------------------------------------------------------------- least request, random

#[test]
fn least_request_never_picks_the_loaded_host_while_others_are_idle() {
    let b = balancer(LbPolicy::LeastRequest, &[1, 1, 1]);
    let _load: Vec<_> = (0..10)
        .map(|_| b.hosts().hosts()[0].start_request())
        .collect();
    let c = counts(&b, 1000);
    assert_eq!(count_of(&c, 0), 0, "{c:?}");
    assert!(count_of(&c, 1) > 300 && count_of(&c, 2) > 300, "{c:?}");
}

#[test]
fn least_request_weighs_load_by_weight() {
    let set = HostSet::new(&endpoints(&[1, 4]));
    let (light, heavy) = (&set.hosts()[0], &set.hosts()[1]);
    let _l: Vec<_> = (0..2).map(|_| light.start_request()).collect();
    let _h: Vec<_> = (0..5).map(|_| heavy.start_request()).collect();
    // (2+1)/1 = 3 against (5+1)/4 = 1.5: the heavier host is less loaded.
    assert!(Arc::ptr_eq(less_loaded(light, heavy), heavy));
    assert!(Arc::ptr_eq(less_loaded(heavy, light), heavy));
    // Equal load per weight, (11+1)/4 = 3: the first candidate wins.
    let _more: Vec<_> = (0..6).map(|_| heavy.start_request()).collect();
    assert!(Arc::ptr_eq(less_loaded(light, heavy), light));
    assert!(Arc::ptr_eq(less_loaded(heavy, light), heavy));
}

#[test]
fn least_request_settles_load_in_proportion_to_weight() {
    let b = balancer(LbPolicy::LeastRequest, &[1, 3]);
    // Requests that never finish: each pick sees the load the earlier ones left.
    let guards: Vec<_> = (0..400)
        .map(|_| {
            b.pick(&PickContext::default(), &none)
                .expect("host")
                .start_request()
        })
        .collect();
    let (light, heavy) = (&b.hosts().hosts()[0], &b.hosts().hosts()[1]);
    assert_eq!(light.active_requests() + heavy.active_requests(), 400);
    assert!(
        (90..=110).contains(&light.active_requests()),
        "{}",
        light.active_requests()
    );
    drop(guards);
    assert_eq!(heavy.active_requests(), 0);
}

#[test]
fn random_spreads_by_weight() {
    let b = balancer(LbPolicy::Random, &[1, 1, 1, 1]);
    let c = counts(&b, 40_000);
    assert!(
        (0..4).all(|i| (9_000..11_000).contains(&count_of(&c, i))),
        "{c:?}"
    );
    let b = balancer(LbPolicy::Random, &[1, 3]);
    let c = counts(&b, 40_000);
    assert!((9_000..11_000).contains(&count_of(&c, 0)), "{c:?}");
}

// ----------------------------------------------------------------------------- every policy

#[test]
fn every_policy_returns_none_only_when_no_host_is_available() {
    for policy in ALL_POLICIES {
        let mut eps = endpoints(&[1, 2, 1]);
        eps[2].healthy = false;
        let set = HostSet::new(&eps);
        eject(&set, &set.hosts()[0]);
        let b = Balancer::new(policy, set.clone());
        for _ in 0..50 {
            assert_eq!(
                b.pick(&PickContext { hash: Some(rand()) }, &none)
                    .map(|h| h.addr),
                Some(eps[1].addr),
                "{policy:?}"
            );
        }
        eject(&set, &set.hosts()[1]);
        assert!(
            b.pick(&PickContext::default(), &none).is_none(),
            "{policy:?}"
        );
        assert!(
            b.pick(&PickContext { hash: Some(7) }, &none).is_none(),
            "{policy:?}"
        );
        let empty = Balancer::new(policy, HostSet::new(&[]));
        assert!(
            empty.pick(&PickContext::default(), &none).is_none(),
            "{policy:?}"
        );
    }
}

#[test]
fn every_policy_avoids_previous_hosts_but_falls_back_to_them() {
    for policy in ALL_POLICIES {
        let b = balancer(policy, &[1, 1, 1]);
        let tried = endpoint(1, 1).addr;
        for _ in 0..200 {
            let ctx = PickContext { hash: Some(rand()) };
            let host = b.pick(&ctx, &|h| h.addr == tried).expect("host");
            assert_ne!(host.addr, tried, "{policy:?}");
        }
        // Every host tried already: any one rather than none.
        assert!(
            b.pick(&PickContext { hash: Some(1) }, &|_| true).is_some(),
            "{policy:?}"
        );
    }
}

fn rand() -> u64 {
    fastrand::u64(..)
}

// -------------------------------------------------------------------------- consistent hash

fn keys() -> impl Iterator<Item = u64> {
    (0..20_000u64).map(|k| xxh64(&k.to_le_bytes(), 0))
}

#[test]
fn ring_is_built_like_envoys() {
    let set = HostSet::new(&endpoints(&[1, 1, 1]));
    assert_eq!(Ring::new(set.healthy(), 1024, 8 << 20).len(), 1026);
    let set2 = HostSet::new(&endpoints(&[1, 1]));
    assert_eq!(Ring::new(set2.healthy(), 1024, 8 << 20).len(), 1024);
    // The maximum wins over the minimum.
    assert_eq!(Ring::new(set.healthy(), 1024, 300).len(), 300);
    // Weights 1:3 and 1:2: the lightest host gets a whole number of points (256, 342).
    let weighted = HostSet::new(&endpoints(&[1, 3]));
    assert_eq!(Ring::new(weighted.healthy(), 1024, 8 << 20).len(), 1024);
    let weighted = HostSet::new(&endpoints(&[1, 2]));
    assert_eq!(Ring::new(weighted.healthy(), 1024, 8 << 20).len(), 1026);
    // A key just at a host's first point ("10.0.0.1:8080_0") lands on that host.
    let b = Balancer::new(LbPolicy::RingHash, set);
    assert_eq!(
        pick_hash(&b, Some(0x23a2_9ae7_75df_d4a3)),
        endpoint(0, 1).addr
    );
}

fn hash_spread(policy: LbPolicy, weights: &[u32]) -> Vec<f64> {
    let b = balancer(policy, weights);
    let mut c = vec![0usize; weights.len()];
    for k in keys() {
        let addr = pick_hash(&b, Some(k));
        let i = b
            .hosts()
            .hosts()
            .iter()
            .position(|h| h.addr == addr)
            .expect("known host");
        c[i] += 1;
    }
    c.iter().map(|&n| n as f64 / 20_000.0).collect()
}

#[test]
fn hash_balancers_spread_keys_by_weight() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let even = hash_spread(policy, &[1, 1, 1, 1]);
        assert!(
            even.iter().all(|s| (0.19..0.31).contains(s)),
            "{policy:?} {even:?}"
        );
        let weighted = hash_spread(policy, &[1, 3]);
        assert!(
            (0.19..0.31).contains(&weighted[0]),
            "{policy:?} {weighted:?}"
        );
    }
}

#[test]
fn maglev_table_is_filled_evenly() {
    let set = HostSet::new(&endpoints(&[1, 1, 1]));
    let table = Maglev::new(set.healthy(), 65537);
    let mut c = [0usize; 3];
    for k in 0..65537u64 {
        let h = table.pick(set.healthy(), k, &|_| true).expect("host");
        c[set
            .healthy()
            .iter()
            .position(|x| Arc::ptr_eq(x, h))
            .expect("known")] += 1;
    }
    assert!(c.iter().all(|&n| n.abs_diff(65537 / 3) <= 1), "{c:?}");
}

#[test]
fn hash_balancers_are_stable_and_independent_of_eds_order() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let a = balancer(policy, &[1, 1, 1, 1, 1]);
        let mut reversed = endpoints(&[1, 1, 1, 1, 1]);
        reversed.reverse();
        let b = Balancer::new(policy, HostSet::new(&reversed));
        for k in keys().take(2000) {
            let first = pick_hash(&a, Some(k));
            assert_eq!(pick_hash(&a, Some(k)), first, "{policy:?}");
            if policy == LbPolicy::Maglev {
                assert_eq!(pick_hash(&b, Some(k)), first, "{policy:?}");
            }
        }
    }
}

/// The share of keys not on the removed host that moved when it left.
fn disruption(policy: LbPolicy) -> f64 {
    let before = balancer(policy, &[1; 10]);
    let gone = endpoint(4, 1).addr;
    let mut eps = endpoints(&[1; 10]);
    eps.retain(|e| e.addr != gone);
    let after = Balancer::new(policy, before.hosts().update(&eps));
    let (mut kept_keys, mut moved) = (0, 0);
    for k in keys() {
        let was = pick_hash(&before, Some(k));
        let now = pick_hash(&after, Some(k));
        assert_ne!(now, gone);
        if was != gone {
            kept_keys += 1;
            moved += usize::from(was != now);
        }
    }
    moved as f64 / kept_keys as f64
}

#[test]
fn removing_a_host_moves_few_other_keys() {
    let ring = disruption(LbPolicy::RingHash);
    assert!(ring < 0.15, "ring hash moved {ring}");
    let maglev = disruption(LbPolicy::Maglev);
    assert!(maglev < 0.15, "maglev moved {maglev}");
}

#[test]
fn ejecting_a_host_moves_only_its_keys() {
    for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
        let b = balancer(policy, &[1; 10]);
        let before: Vec<_> = keys().map(|k| pick_hash(&b, Some(k))).collect();
        let victim = b.hosts().hosts()[4].clone();
        eject(b.hosts(), &victim);
        let mut spread = HashMap::new();
        for (k, was) in keys().zip(before) {
            let now = pick_hash(&b, Some(k));
            if was == victim.addr {
                *spread.entry(now).or_insert(0) += 1;
            } else {
                assert_eq!(now, was, "{policy:?}");
            }
        }
        assert!(!spread.contains_key(&victim.addr));
        // Its keys spread over several hosts, not all onto one neighbour.
        assert!(spread.len() >= 4, "{policy:?} {spread:?}");
    }
}
