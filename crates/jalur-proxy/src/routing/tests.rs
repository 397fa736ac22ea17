use std::sync::Arc;

use http::HeaderMap;

use super::*;
use crate::config::{Action, HeaderMatch, HeaderOps, RouteMatch};

fn route(name: &str, path: PathMatch, headers: Vec<HeaderMatch>) -> Route {
    Route {
        name: name.into(),
        matcher: RouteMatch {
            path,
            case_sensitive: true,
            headers,
            query: Vec::new(),
        },
        action: Action::Direct {
            status: 200,
            body: Some(name.into()),
        },
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        fault: None,
    }
}

fn table() -> CompiledTable {
    let vh = |name: &str, domains: Vec<DomainMatch>, routes: Vec<Route>| VirtualHost {
        name: name.into(),
        domains,
        routes,
    };
    CompiledTable::new(Arc::new(RouteTable {
        name: "outbound".into(),
        virtual_hosts: vec![
            vh(
                "reviews",
                vec![
                    DomainMatch::Exact("reviews".into()),
                    DomainMatch::Exact("reviews:9080".into()),
                ],
                vec![
                    route(
                        "jason",
                        PathMatch::Prefix("/".into()),
                        vec![HeaderMatch {
                            name: "end-user".into(),
                            matcher: StringMatch::Exact("jason".into()),
                            invert: false,
                        }],
                    ),
                    route(
                        "api",
                        PathMatch::Regex(regex::Regex::new("/api/v[0-9]+").expect("re")),
                        vec![],
                    ),
                    route("default", PathMatch::Prefix("/".into()), vec![]),
                ],
            ),
            vh(
                "wild",
                vec![DomainMatch::Suffix(".example.com".into())],
                vec![route("wild", PathMatch::Prefix("/".into()), vec![])],
            ),
            vh(
                "longer",
                vec![DomainMatch::Suffix(".api.example.com".into())],
                vec![route("longer", PathMatch::Prefix("/".into()), vec![])],
            ),
            vh(
                "any",
                vec![DomainMatch::Any],
                vec![route("any", PathMatch::Exact("/only".into()), vec![])],
            ),
        ],
    }))
}

fn pick<'a>(
    t: &'a CompiledTable,
    authority: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'a str> {
    let req = RequestView {
        method: "GET",
        path,
        query: None,
        authority,
        scheme: "http",
        headers,
    };
    t.route(&req).map(|(_, r)| r.name.as_str())
}

#[test]
fn virtual_host_order_and_route_order() {
    let t = table();
    let none = HeaderMap::new();
    let mut jason = HeaderMap::new();
    jason.insert("end-user", "jason".parse().expect("hv"));
    assert_eq!(pick(&t, "reviews:9080", "/", &jason), Some("jason"));
    assert_eq!(pick(&t, "REVIEWS", "/api/v2", &none), Some("api"));
    assert_eq!(
        pick(&t, "reviews", "/api/v2/x", &none),
        Some("default"),
        "regex must match the whole path"
    );
    assert_eq!(
        pick(&t, "a.api.example.com", "/", &none),
        Some("longer"),
        "longest suffix wins"
    );
    assert_eq!(pick(&t, "b.example.com", "/", &none), Some("wild"));
    assert_eq!(
        pick(&t, "example.com", "/only", &none),
        Some("any"),
        "a suffix needs something before it"
    );
    assert_eq!(
        pick(&t, "unknown", "/other", &none),
        None,
        "no route: 404 NR"
    );
}

fn t(c: &str, w: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: c.into(),
        weight: w,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

#[test]
fn weighted_pick_follows_weights() {
    let targets = vec![t("a", 90), t("b", 10)];
    let hits = (0..1000u64)
        .filter(|r| pick_weighted(&targets, *r).map(|w| w.cluster.as_str()) == Some("b"))
        .count();
    assert_eq!(hits, 100);
    assert_eq!(
        pick_weighted(&[t("z", 0)], 5).map(|w| w.cluster.as_str()),
        Some("z")
    );
}

#[test]
fn weighted_draws_split_any_run_of_requests_within_a_request_or_two() {
    use crate::config::Draws;
    let targets = [t("legacy", 95), t("mesh", 5)];
    let draws = Draws::default();
    let picks: Vec<bool> = (0..10_000)
        .map(|_| {
            pick_weighted(&targets, draws.next(100)).map(|w| w.cluster.as_str()) == Some("mesh")
        })
        .collect();
    for window in [100, 1000] {
        for start in (0..10_000 - window).step_by(37) {
            let mesh = picks[start..start + window].iter().filter(|m| **m).count() as f64;
            let want = window as f64 * 0.05;
            assert!(
                (mesh - want).abs() <= 2.0,
                "{mesh} mesh picks in {window} from {start}, want {want}"
            );
        }
    }
}
