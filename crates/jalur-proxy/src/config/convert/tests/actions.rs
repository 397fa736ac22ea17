//! Route actions: forwarding, retries, rewrites, mirrors, hashing, redirects, direct responses,
//! header operations and faults.

use super::*;

#[test]
fn timeouts_and_retries() {
    assert_eq!(
        fwd(&one(forward(to("c")))).timeout,
        Some(Duration::from_secs(15)),
        "Envoy's default route timeout"
    );
    assert_eq!(
        fwd(&one(forward(RouteAction {
            timeout: Some(dur(2, 500_000_000)),
            ..to("c")
        })))
        .timeout,
        Some(Duration::from_millis(2500))
    );

    let policy = XdsRetry {
        retry_on:
            " 5xx ,gateway-error,reset,unknown-thing,deadline-exceeded,internal,resource-exhausted"
                .into(),
        per_try_timeout: Some(dur(1, 0)),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(dur(0, 100_000_000)),
            max_interval: None,
        }),
        ..XdsRetry::default()
    };
    let r = fwd(&one(forward(RouteAction {
        retry_policy: Some(policy.clone()),
        ..to("c")
    })))
    .retry
    .expect("retry");
    assert_eq!(r.num_retries, 1, "Envoy's default");
    assert!(r.on.server_error && r.on.gateway_error && r.on.reset);
    assert!(
        r.on.connect_failure && r.on.refused_stream,
        "Envoy counts resets as 5xx"
    );
    assert!(
        r.on.grpc_statuses[4]
            && r.on.grpc_statuses[13]
            && r.on.grpc_statuses[8]
            && !r.on.grpc_statuses[14]
    );
    assert_eq!(r.per_try_timeout, Some(Duration::from_secs(1)));
    assert_eq!(
        (r.backoff_base, r.backoff_max),
        (Duration::from_millis(100), Duration::from_secs(1))
    );
    assert!(!r.other_hosts);

    let err_at = |p: XdsRetry| {
        field(route_table(&one(forward(RouteAction {
            retry_policy: Some(p),
            ..to("c")
        }))))
    };
    assert_eq!(
        err_at(XdsRetry {
            retriable_status_codes: vec![503, 99],
            ..policy.clone()
        }),
        "virtual_hosts[0].routes[0].route.retry_policy.retriable_status_codes[1]"
    );
    assert_eq!(
        err_at(XdsRetry {
            retry_back_off: Some(RetryBackOff {
                base_interval: Some(dur(1, 0)),
                max_interval: Some(dur(0, 1))
            }),
            ..policy.clone()
        }),
        "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.max_interval"
    );
    assert_eq!(
        err_at(XdsRetry {
            retry_back_off: Some(RetryBackOff::default()),
            ..policy.clone()
        }),
        "virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval"
    );

    // A virtual host's retry policy applies to routes without their own.
    let mut vh = vhost(
        "v",
        &["v"],
        vec![
            forward(to("c")),
            forward(RouteAction {
                retry_policy: Some(policy.clone()),
                ..to("c")
            }),
        ],
    );
    vh.retry_policy = Some(XdsRetry {
        num_retries: u32v(4),
        ..XdsRetry::default()
    });
    let t = route_table(&table(vec![vh])).expect("valid");
    let retries: Vec<u32> = t.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| match &r.action {
            Action::Forward(f) => f.retry.as_ref().map_or(0, |r| r.num_retries),
            _ => 0,
        })
        .collect();
    assert_eq!(retries, [4, 1]);
}

#[test]
fn rewrites_mirrors_and_hashing() {
    use route_action::hash_policy::{self, PolicySpecifier};
    let hp = |spec: PolicySpecifier| route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    };
    let mirror = |fraction: Option<FractionalPercent>| route_action::RequestMirrorPolicy {
        cluster: "shadow".into(),
        runtime_fraction: fraction.map(|f| RuntimeFractionalPercent {
            default_value: Some(f),
            runtime_key: String::new(),
        }),
        ..Default::default()
    };
    let action = RouteAction {
        prefix_rewrite: "/v2/".into(),
        host_rewrite_specifier: Some(route_action::HostRewriteSpecifier::HostRewriteLiteral(
            "ratings.internal".into(),
        )),
        request_mirror_policies: vec![
            mirror(None),
            mirror(percent(50, DenominatorType::Hundred)),
            mirror(percent(25, DenominatorType::TenThousand)),
            mirror(percent(7, DenominatorType::Million)),
            mirror(percent(500, DenominatorType::Hundred)),
        ],
        hash_policy: vec![
            hp(PolicySpecifier::Header(hash_policy::Header {
                header_name: "X-User".into(),
                regex_rewrite: None,
            })),
            hp(PolicySpecifier::Cookie(hash_policy::Cookie {
                name: "session".into(),
                ..Default::default()
            })),
            hp(PolicySpecifier::Cookie(hash_policy::Cookie {
                name: "sticky".into(),
                path: "/".into(),
                ttl: Some(dur(60, 0)),
                ..Default::default()
            })),
            hp(PolicySpecifier::QueryParameter(
                hash_policy::QueryParameter { name: "u".into() },
            )),
            hp(PolicySpecifier::ConnectionProperties(
                hash_policy::ConnectionProperties { source_ip: true },
            )),
            hp(PolicySpecifier::ConnectionProperties(
                hash_policy::ConnectionProperties { source_ip: false },
            )),
        ],
        ..to("c")
    };
    let f = fwd(&one(forward(action.clone())));
    assert_eq!(f.prefix_rewrite.as_deref(), Some("/v2/"));
    assert_eq!(f.host_rewrite.as_deref(), Some("ratings.internal"));
    let ppm: Vec<u32> = f.mirrors.iter().map(|m: &Mirror| m.ppm).collect();
    assert_eq!(ppm, [1_000_000, 500_000, 2_500, 7, 1_000_000]);
    assert_eq!(
        f.hash,
        [
            HashPolicy::Header("x-user".into()),
            HashPolicy::Cookie("session".into()),
            HashPolicy::GeneratedCookie {
                name: "sticky".into(),
                path: "/".into(),
                ttl: Duration::from_secs(60)
            },
            HashPolicy::QueryParameter("u".into()),
            HashPolicy::SourceIp,
        ]
    );

    let regex_rewrite = |pattern: &str, substitution: &str| RouteAction {
        regex_rewrite: Some(RegexMatchAndSubstitute {
            pattern: Some(re(pattern)),
            substitution: substitution.into(),
        }),
        ..to("c")
    };
    let rw = fwd(&one(forward(regex_rewrite(
        "^/service/([^/]+)(/.*)$",
        "\\2/instance/\\1$\\\\",
    ))))
    .regex_rewrite
    .expect("rewrite");
    assert_eq!(rw.substitution, "${2}/instance/${1}$$\\");
    assert_eq!(
        rw.pattern
            .replace_all("/service/foo/v1/api", rw.substitution.as_str()),
        "/v1/api/instance/foo$\\"
    );
    assert_eq!(
        field(route_table(&one(forward(regex_rewrite("^/(a)$", "\\2"))))),
        "virtual_hosts[0].routes[0].route.regex_rewrite.substitution"
    );

    let mut bad = action;
    bad.request_mirror_policies[1].runtime_fraction = Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 1,
            denominator: 9,
        }),
        runtime_key: String::new(),
    });
    assert_eq!(field(route_table(&one(forward(bad)))), "virtual_hosts[0].routes[0].route.request_mirror_policies[1].runtime_fraction.default_value.denominator");
}

#[test]
fn redirects_and_direct_responses() {
    let redirect = |r: RedirectAction| XdsRoute {
        r#match: prefix("/"),
        action: Some(route::Action::Redirect(r)),
        ..XdsRoute::default()
    };
    let r = RedirectAction {
        host_redirect: "new.example.com".into(),
        port_redirect: 8443,
        response_code: redirect_action::RedirectResponseCode::PermanentRedirect as i32,
        strip_query: true,
        scheme_rewrite_specifier: Some(redirect_action::SchemeRewriteSpecifier::HttpsRedirect(
            true,
        )),
        path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
            "/new/".into(),
        )),
    };
    assert_eq!(
        only_route(&one(redirect(r.clone()))).action,
        Action::Redirect(Redirect {
            status: 308,
            scheme: Some("https".into()),
            host: Some("new.example.com".into()),
            port: Some(8443),
            path: None,
            prefix_rewrite: Some("/new/".into()),
            strip_query: true,
        })
    );
    let plain = only_route(&one(redirect(RedirectAction {
        path_rewrite_specifier: Some(redirect_action::PathRewriteSpecifier::PathRedirect(
            "/x".into(),
        )),
        ..Default::default()
    })));
    let Action::Redirect(plain) = plain.action else {
        panic!("redirect")
    };
    assert_eq!(
        (plain.status, plain.path.as_deref(), plain.port),
        (301, Some("/x"), None)
    );
    assert_eq!(
        field(route_table(&one(redirect(RedirectAction {
            response_code: 9,
            ..r.clone()
        })))),
        "virtual_hosts[0].routes[0].redirect.response_code"
    );
    assert_eq!(
        field(route_table(&one(redirect(RedirectAction {
            port_redirect: 70000,
            ..r
        })))),
        "virtual_hosts[0].routes[0].redirect.port_redirect"
    );

    let direct = |status: u32, body: Option<data_source::Specifier>| XdsRoute {
        r#match: prefix("/"),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status,
            body: body.map(|s| DataSource {
                specifier: Some(s),
                ..DataSource::default()
            }),
            ..DirectResponseAction::default()
        })),
        ..XdsRoute::default()
    };
    assert_eq!(
        only_route(&one(direct(
            418,
            Some(data_source::Specifier::InlineString("teapot".into()))
        )))
        .action,
        Action::Direct {
            status: 418,
            body: Some("teapot".into())
        }
    );
    assert_eq!(
        only_route(&one(direct(
            200,
            Some(data_source::Specifier::InlineBytes(b"ok".to_vec()))
        )))
        .action,
        Action::Direct {
            status: 200,
            body: Some("ok".into())
        }
    );
    assert_eq!(
        only_route(&one(direct(204, None))).action,
        Action::Direct {
            status: 204,
            body: None
        }
    );
    let at = |r: XdsRoute| field(route_table(&one(r)));
    assert_eq!(
        at(direct(99, None)),
        "virtual_hosts[0].routes[0].direct_response.status"
    );
    assert_eq!(
        at(direct(
            200,
            Some(data_source::Specifier::InlineBytes(vec![0xff]))
        )),
        "virtual_hosts[0].routes[0].direct_response.body.inline_bytes"
    );
    assert_eq!(
        at(direct(
            200,
            Some(data_source::Specifier::Filename("/etc/passwd".into()))
        )),
        "virtual_hosts[0].routes[0].direct_response.body"
    );
    assert_eq!(
        at(direct(
            200,
            Some(data_source::Specifier::InlineString("x".repeat(4097)))
        )),
        "virtual_hosts[0].routes[0].direct_response.body"
    );
    assert_eq!(
        at(XdsRoute {
            r#match: prefix("/"),
            ..XdsRoute::default()
        }),
        "virtual_hosts[0].routes[0].action"
    );
}

#[test]
#[allow(deprecated)]
fn header_operations_at_every_level() {
    use HeaderAppendAction::{AppendIfExistsOrAdd as Append, OverwriteIfExistsOrAdd as Set};
    let mut r = forward(to("c"));
    r.request_headers_to_add = vec![header("X-Route", "1", Set), header("x-add", "a", Append)];
    r.request_headers_to_remove = vec!["X-Drop".into()];
    r.response_headers_to_add = vec![HeaderValueOption {
        append: Some(BoolValue { value: false }),
        ..header("x-old", "v", Append)
    }];
    let mut vh = vhost("v", &["v"], vec![r.clone()]);
    vh.request_headers_to_add = vec![header("x-vhost", "2", Set)];
    let mut rc = table(vec![vh]);
    rc.request_headers_to_add = vec![header("x-table", "100%% sure", Set)];
    let got = only_route(&rc);
    let names: Vec<(&str, &str, bool)> = got
        .request_headers
        .add
        .iter()
        .map(|(k, v, a)| (k.as_str(), v.as_str(), *a))
        .collect();
    assert_eq!(
        names,
        [
            ("x-route", "1", false),
            ("x-add", "a", true),
            ("x-vhost", "2", false),
            ("x-table", "100% sure", false)
        ]
    );
    assert_eq!(got.request_headers.remove, ["x-drop"]);
    assert_eq!(
        got.response_headers.add,
        [("x-old".to_string(), "v".to_string(), false)]
    );
    rc.most_specific_header_mutations_wins = true;
    let order: Vec<String> = only_route(&rc)
        .request_headers
        .add
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(
        order,
        ["x-table", "x-vhost", "x-route", "x-add"],
        "the route's own mutations applied last"
    );

    let mut empty = forward(to("c"));
    empty.request_headers_to_add = vec![
        header("x-empty", "", Set),
        HeaderValueOption {
            keep_empty_value: true,
            ..header("x-kept", "", Set)
        },
    ];
    assert_eq!(
        only_route(&one(empty)).request_headers.add,
        [("x-kept".to_string(), String::new(), false)]
    );

    let at = |add: Vec<HeaderValueOption>, remove: Vec<String>| {
        let mut r = forward(to("c"));
        r.request_headers_to_add = add;
        r.request_headers_to_remove = remove;
        field(route_table(&one(r)))
    };
    assert_eq!(
        at(
            vec![header("ok", "1", Set), header("Host", "x", Set)],
            vec![]
        ),
        "virtual_hosts[0].routes[0].request_headers_to_add[1].header.key"
    );
    assert_eq!(
        at(
            vec![header("x", "%DOWNSTREAM_REMOTE_ADDRESS%", Set)],
            vec![]
        ),
        "virtual_hosts[0].routes[0].request_headers_to_add[0].header.value"
    );
    assert_eq!(
        at(
            vec![header("x", "1", HeaderAppendAction::AddIfAbsent)],
            vec![]
        ),
        "virtual_hosts[0].routes[0].request_headers_to_add[0].append_action"
    );
    assert_eq!(
        at(
            vec![HeaderValueOption {
                append: Some(BoolValue { value: true }),
                ..header("x", "1", Set)
            }],
            vec![]
        ),
        "virtual_hosts[0].routes[0].request_headers_to_add[0].append"
    );
    assert_eq!(
        at(vec![], vec!["x".into(), ":path".into()]),
        "virtual_hosts[0].routes[0].request_headers_to_remove[1]"
    );

    let mut split = to("c");
    split.cluster_specifier = Some(weighted(&[("v1", Some(1))]));
    if let Some(route_action::ClusterSpecifier::WeightedClusters(w)) =
        split.cluster_specifier.as_mut()
    {
        w.clusters[0].response_headers_to_add = vec![header("x-subset", "v1", Set)];
        w.clusters[0].request_headers_to_remove = vec![":authority".into()];
    }
    assert_eq!(
        field(route_table(&one(forward(split)))),
        "virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0].request_headers_to_remove[0]"
    );
}

#[test]
fn faults_per_route_and_inherited() {
    let fault =
        |delay_ms: Option<u64>, abort: Option<fault_abort::ErrorType>, pct: u32| HttpFault {
            delay: delay_ms.map(|ms| FaultDelay {
                percentage: percent(pct, DenominatorType::Hundred),
                fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(dur(
                    0,
                    (ms * 1_000_000) as i32,
                ))),
            }),
            abort: abort.map(|e| FaultAbort {
                percentage: percent(pct * 10_000, DenominatorType::Million),
                error_type: Some(e),
                ..FaultAbort::default()
            }),
            ..HttpFault::default()
        };
    let with = |configs: Vec<(&str, Any)>| -> HashMap<String, Any> {
        configs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };

    let mut r = forward(to("c"));
    r.typed_per_filter_config = with(vec![
        (
            "envoy.filters.http.rbac",
            Any {
                type_url: "type.googleapis.com/some.Other".into(),
                value: vec![1],
            },
        ),
        (
            FAULT,
            pack_any(fault(
                Some(250),
                Some(fault_abort::ErrorType::HttpStatus(503)),
                10,
            )),
        ),
    ]);
    assert_eq!(
        only_route(&one(r.clone())).fault,
        Some(Fault {
            delay: Some((Duration::from_millis(250), 100_000)),
            abort: Some((503, 100_000))
        })
    );

    // Inherited from the virtual host unless the route disables it.
    let mut disabled = forward(to("c"));
    disabled.typed_per_filter_config = with(vec![(
        FAULT,
        pack_any(FilterConfig {
            config: Some(pack_any(HttpFault::default())),
            disabled: true,
            ..FilterConfig::default()
        }),
    )]);
    let mut vh = vhost("v", &["v"], vec![forward(to("c")), disabled]);
    vh.typed_per_filter_config = with(vec![(
        FAULT,
        pack_any(fault(
            None,
            Some(fault_abort::ErrorType::HttpStatus(500)),
            100,
        )),
    )]);
    let t = route_table(&table(vec![vh])).expect("valid");
    assert_eq!(
        t.virtual_hosts[0].routes[0].fault,
        Some(Fault {
            delay: None,
            abort: Some((500, 1_000_000))
        })
    );
    assert_eq!(t.virtual_hosts[0].routes[1].fault, None);

    let at = |f: HttpFault| {
        let mut r = forward(to("c"));
        r.typed_per_filter_config = with(vec![(FAULT, pack_any(f))]);
        field(route_table(&one(r)))
    };
    assert_eq!(at(fault(None, Some(fault_abort::ErrorType::GrpcStatus(14)), 1)), "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].abort.grpc_status");
    assert_eq!(at(fault(None, Some(fault_abort::ErrorType::HttpStatus(100)), 1)), "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].abort.http_status");
    assert_eq!(at(fault(Some(0), None, 1)), "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].delay.fixed_delay");
    assert_eq!(
        at(HttpFault {
            headers: vec![HeaderMatcher::default()],
            ..fault(Some(1), None, 1)
        }),
        "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"].headers"
    );
    let mut garbage = forward(to("c"));
    garbage.typed_per_filter_config = with(vec![(
        FAULT,
        Any {
            type_url: HttpFault::type_url(),
            value: vec![0x0a, 0xff],
        },
    )]);
    assert_eq!(
        field(route_table(&one(garbage))),
        "virtual_hosts[0].routes[0].typed_per_filter_config[\"envoy.filters.http.fault\"]"
    );
}
