//! RouteConfiguration conversion: virtual hosts, domains and route matches.

use super::*;

#[test]
fn translated_header_match_and_split() {
    let jason = XdsRoute {
        name: "jason".into(),
        r#match: Some(XdsRouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            headers: vec![HeaderMatcher {
                name: "end-user".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string(
                    MatchPattern::Exact("jason".into()),
                    false,
                ))),
                ..HeaderMatcher::default()
            }],
            ..XdsRouteMatch::default()
        }),
        ..to_cluster(
            "jason",
            "outbound|9080|v2|reviews.bookinfo.svc.cluster.local",
        )
    };
    let mut split = to_cluster("split", "");
    if let Some(route::Action::Route(a)) = split.action.as_mut() {
        a.cluster_specifier = Some(weighted(&[
            ("outbound|9080|v1|r", Some(75)),
            ("outbound|9080|v3|r", Some(25)),
        ]));
        a.retry_policy = Some(XdsRetry {
            retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes".into(),
            num_retries: u32v(2),
            retriable_status_codes: vec![503],
            retry_host_predicate: vec![RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    pack_any(PreviousHostsPredicate::default()),
                )),
            }],
            host_selection_retry_max_attempts: 5,
            ..XdsRetry::default()
        });
    }
    let domains = [
        "reviews.bookinfo.svc.cluster.local",
        "reviews.bookinfo.svc.cluster.local:9080",
        "reviews",
        "reviews:9080",
    ];
    let rc = table(vec![vhost(
        "reviews.bookinfo.svc.cluster.local:9080",
        &domains,
        vec![jason, split],
    )]);
    let t = route_table(&rc).expect("valid");
    let vh = &t.virtual_hosts[0];
    assert_eq!(
        vh.domains[0],
        DomainMatch::Exact("reviews.bookinfo.svc.cluster.local".into())
    );
    let r0 = &vh.routes[0];
    assert_eq!(
        r0.matcher.headers,
        [HeaderMatch {
            name: "end-user".into(),
            matcher: StringMatch::Exact("jason".into()),
            invert: false
        }]
    );
    assert!(r0.matcher.case_sensitive);
    let Action::Forward(f) = &vh.routes[1].action else {
        panic!("forward")
    };
    assert_eq!(
        f.targets
            .iter()
            .map(|t| (t.cluster.as_str(), t.weight))
            .collect::<Vec<_>>(),
        [("outbound|9080|v1|r", 75), ("outbound|9080|v3|r", 25)]
    );
    assert_eq!(f.timeout, None, "0s: no timeout");
    let retry = f.retry.as_ref().expect("retry");
    assert_eq!(retry.num_retries, 2);
    assert!(retry.on.connect_failure && retry.on.refused_stream && retry.on.retriable_status_codes);
    assert!(retry.on.grpc_statuses[14] && retry.on.grpc_statuses[1]);
    assert!(!retry.on.server_error && !retry.on.gateway_error && !retry.on.reset);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert!(retry.other_hosts);
    assert_eq!(
        (retry.backoff_base, retry.backoff_max),
        (Duration::from_millis(25), Duration::from_millis(250))
    );
}

#[test]
fn domains_and_duplicates() {
    let rc = table(vec![
        vhost("a", &["Exact.COM", "*.suffix.com", "prefix.*", "*"], vec![]),
        vhost("b", &["*-bar.foo.com", "mid*dle"], vec![]),
    ]);
    let t = route_table(&rc).expect("valid");
    assert_eq!(
        t.virtual_hosts[0].domains,
        [
            DomainMatch::Exact("exact.com".into()),
            DomainMatch::Suffix(".suffix.com".into()),
            DomainMatch::Prefix("prefix.".into()),
            DomainMatch::Any
        ]
    );
    assert_eq!(
        t.virtual_hosts[1].domains,
        [
            DomainMatch::Suffix("-bar.foo.com".into()),
            DomainMatch::Exact("mid*dle".into())
        ]
    );

    let dup = table(vec![
        vhost("a", &["x", "y"], vec![]),
        vhost("b", &["z", "X"], vec![]),
    ]);
    let err = route_table(&dup).expect_err("duplicate");
    assert_eq!(err.field, "virtual_hosts[1].domains[1]");
    assert!(
        err.message
            .contains("duplicate domain \"x\": virtual_hosts[0]"),
        "{err}"
    );
    let stars = table(vec![vhost("a", &["*"], vec![]), vhost("b", &["*"], vec![])]);
    assert_eq!(field(route_table(&stars)), "virtual_hosts[1].domains[0]");
    assert_eq!(
        field(route_table(&table(vec![vhost("a", &[], vec![])]))),
        "virtual_hosts[0].domains"
    );
}

#[test]
fn path_matches() {
    let with = |p: PathSpecifier, case_sensitive: Option<bool>| {
        let mut r = to_cluster("r", "c");
        r.r#match = Some(XdsRouteMatch {
            path_specifier: Some(p),
            case_sensitive: case_sensitive.map(|value| BoolValue { value }),
            ..XdsRouteMatch::default()
        });
        route_table(&one(r))
    };
    let m = with(PathSpecifier::Path("/exact".into()), Some(false))
        .expect("valid")
        .virtual_hosts[0]
        .routes[0]
        .matcher
        .clone();
    assert_eq!(
        (m.path, m.case_sensitive),
        (PathMatch::Exact("/exact".into()), false)
    );
    let t = with(PathSpecifier::SafeRegex(re("/api/v[0-9]+")), None).expect("valid");
    let PathMatch::Regex(r) = &t.virtual_hosts[0].routes[0].matcher.path else {
        panic!("regex")
    };
    assert!(
        r.is_match("/api/v2") && !r.is_match("/api/v2/x") && !r.is_match("x/api/v2"),
        "anchored"
    );
    let t = with(PathSpecifier::SafeRegex(re("a)|(b")), None);
    assert_eq!(
        field(t),
        "virtual_hosts[0].routes[0].match.safe_regex.regex",
        "cannot escape the anchoring group"
    );
    assert_eq!(
        field(with(PathSpecifier::PathSeparatedPrefix("/a".into()), None)),
        "virtual_hosts[0].routes[0].match.path_separated_prefix"
    );
    let mut none = to_cluster("r", "c");
    none.r#match = None;
    assert_eq!(
        field(route_table(&one(none))),
        "virtual_hosts[0].routes[0].match"
    );
}

#[test]
#[allow(deprecated)]
fn header_and_query_matches() {
    let h = |spec: Option<HeaderMatchSpecifier>, invert_match: bool| HeaderMatcher {
        name: "X-User".into(),
        header_match_specifier: spec,
        invert_match,
        ..HeaderMatcher::default()
    };
    let mut r = to_cluster("r", "c");
    r.r#match = Some(XdsRouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        headers: vec![
            h(
                Some(HeaderMatchSpecifier::StringMatch(string(
                    MatchPattern::Prefix("ab".into()),
                    false,
                ))),
                true,
            ),
            h(Some(HeaderMatchSpecifier::PresentMatch(false)), false),
            h(None, false),
            h(Some(HeaderMatchSpecifier::ExactMatch("old".into())), false),
            h(Some(HeaderMatchSpecifier::SuffixMatch("z".into())), false),
            h(
                Some(HeaderMatchSpecifier::StringMatch(string(
                    MatchPattern::Contains("Mid".into()),
                    true,
                ))),
                false,
            ),
            h(
                Some(HeaderMatchSpecifier::SafeRegexMatch(re("v[12]"))),
                false,
            ),
        ],
        query_parameters: vec![
            QueryParameterMatcher {
                name: "debug".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::PresentMatch(
                    true,
                )),
            },
            QueryParameterMatcher {
                name: "v".into(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    string(MatchPattern::Exact("2".into()), false),
                )),
            },
        ],
        grpc: Some(Default::default()),
        ..XdsRouteMatch::default()
    });
    let m = only_route(&one(r.clone())).matcher;
    assert_eq!(
        m.headers[0],
        HeaderMatch {
            name: "x-user".into(),
            matcher: StringMatch::Prefix("ab".into()),
            invert: true
        }
    );
    assert_eq!(
        (&m.headers[1].matcher, m.headers[1].invert),
        (&StringMatch::Present, true),
        "present_match: false = absent"
    );
    assert_eq!(
        (&m.headers[2].matcher, m.headers[2].invert),
        (&StringMatch::Present, false),
        "no specifier = present"
    );
    assert_eq!(m.headers[3].matcher, StringMatch::Exact("old".into()));
    assert_eq!(m.headers[4].matcher, StringMatch::Suffix("z".into()));
    let StringMatch::Regex(ci) = &m.headers[5].matcher else {
        panic!("ignore_case contains is a regex")
    };
    assert!(ci.is_match("a-mID-b") && !ci.is_match("mi-d"));
    let StringMatch::Regex(v) = &m.headers[6].matcher else {
        panic!("regex")
    };
    assert!(v.is_match("v1") && !v.is_match("v12"));
    assert_eq!(
        m.headers[7],
        HeaderMatch {
            name: "content-type".into(),
            matcher: StringMatch::Prefix("application/grpc".into()),
            invert: false
        }
    );
    assert_eq!(
        (m.query[0].name.as_str(), &m.query[0].matcher),
        ("debug", &None)
    );
    assert_eq!(m.query[1].matcher, Some(StringMatch::Exact("2".into())));

    let mut bad = r.clone();
    if let Some(m) = bad.r#match.as_mut() {
        m.headers[2].header_match_specifier =
            Some(HeaderMatchSpecifier::RangeMatch(Default::default()));
    }
    assert_eq!(
        field(route_table(&one(bad))),
        "virtual_hosts[0].routes[0].match.headers[2].range_match"
    );
    let mut bad = r.clone();
    if let Some(m) = bad.r#match.as_mut() {
        m.headers[0].header_match_specifier = Some(HeaderMatchSpecifier::StringMatch(string(
            MatchPattern::SafeRegex(re("(")),
            false,
        )));
    }
    assert_eq!(
        field(route_table(&one(bad))),
        "virtual_hosts[0].routes[0].match.headers[0].string_match.safe_regex.regex"
    );
    let mut bad = r;
    if let Some(m) = bad.r#match.as_mut() {
        m.query_parameters[1].query_parameter_match_specifier =
            Some(QueryParameterMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: None,
                ignore_case: false,
            }));
    }
    assert_eq!(
        field(route_table(&one(bad))),
        "virtual_hosts[0].routes[0].match.query_parameters[1].string_match"
    );
}

#[test]
fn weighted_cluster_errors() {
    // The path of the brief's example: second virtual host, fourth route.
    let split = |entries: &[(&str, Option<u32>)]| {
        let mut a = to("x");
        a.cluster_specifier = Some(weighted(entries));
        let routes = vec![
            to_cluster("0", "c"),
            to_cluster("1", "c"),
            to_cluster("2", "c"),
            forward(a),
        ];
        table(vec![
            vhost("a", &["a"], vec![to_cluster("a", "c")]),
            vhost("b", &["b"], routes),
        ])
    };
    let err = route_table(&split(&[("v1", None), ("v2", Some(1))])).expect_err("no weight");
    assert_eq!(
        err.field,
        "virtual_hosts[1].routes[3].route.weighted_clusters.clusters[0].weight"
    );
    assert_eq!(err.to_string(), "RouteConfiguration outbound: virtual_hosts[1].routes[3].route.weighted_clusters.clusters[0].weight: a weight is required");
    assert_eq!(
        field(route_table(&split(&[("v1", Some(0)), ("v2", Some(0))]))),
        "virtual_hosts[1].routes[3].route.weighted_clusters.clusters"
    );
    assert_eq!(
        field(route_table(&split(&[
            ("v1", Some(u32::MAX)),
            ("v2", Some(1))
        ]))),
        "virtual_hosts[1].routes[3].route.weighted_clusters.clusters[1].weight"
    );
    assert_eq!(
        field(route_table(&split(&[("", Some(1))]))),
        "virtual_hosts[1].routes[3].route.weighted_clusters.clusters[0].name"
    );
    let mut header = to("x");
    header.cluster_specifier = Some(route_action::ClusterSpecifier::ClusterHeader(
        "x-cluster".into(),
    ));
    assert_eq!(
        field(route_table(&one(forward(header)))),
        "virtual_hosts[0].routes[0].route.cluster_header"
    );
}
