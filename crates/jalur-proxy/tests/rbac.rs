//! Envoy's RBAC filters, hand-built (Istio's policy names and shapes), served to a stock Envoy
//! and to jalur proxy from one xDS server; the same requests through both must get the same
//! answer: status, body, content type, Envoy's response code details (Envoy's access log,
//! jalur's), and the same RBAC counters in `/stats/prometheus`. A network RBAC filter in front
//! of tcp_proxy closes a denied connection without a byte reaching the upstream.

mod common;
#[path = "common/istio_tls.rs"]
mod istio_tls;
#[path = "common/rbac_xds.rs"]
mod rbac_xds;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use common::bound_listener;
use common::mesh::envoy_listener;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::rbac::v3::{permission, principal, rbac::Action};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route, route_action, route_match, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    regex_matcher, string_matcher::MatchPattern, RegexMatcher,
};
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::util::pack_any;
use istio_tls::{cluster, StaticPlane};
use jalur_testkit::{assert_eventually, EchoServer, Envoy, EnvoyOpts};
use rbac_xds::*;

/// A second loopback address: the "other" client, named by `direct_remote_ip` policies.
const OTHER: [u8; 4] = [127, 0, 0, 2];

fn key(name: &str) -> String {
    format!("ns[shop]-policy[{name}]-rule[0]")
}

/// AUDIT, DENY, ALLOW — the order Istio's translation emits them in.
fn http_rbac_filters() -> Vec<HttpRbac> {
    use permission::Rule as P;
    use principal::Identifier as I;
    let audit = rules(
        Action::Log,
        vec![(
            &key("audit"),
            vec![perm(P::Header(header(
                "x-audit",
                HeaderMatchSpecifier::PresentMatch(true),
                false,
            )))],
            vec![any_prin()],
        )],
    );
    let deny = rules(
        Action::Deny,
        vec![
            (
                &key("block"),
                vec![perm(P::OrRules(permission::Set {
                    rules: vec![
                        url_path(matcher(MatchPattern::Prefix("/admin".into()), false)),
                        perm(P::Header(header(
                            "x-block",
                            HeaderMatchSpecifier::PresentMatch(true),
                            false,
                        ))),
                    ],
                }))],
                vec![any_prin()],
            ),
            (
                &key("other-host"),
                vec![any_perm()],
                vec![prin(I::DirectRemoteIp(cidr("127.0.0.2", 32)))],
            ),
            (
                &key("by-host"),
                vec![perm(P::Header(header(
                    "host",
                    HeaderMatchSpecifier::StringMatch(exact("blocked.example")),
                    false,
                )))],
                vec![any_prin()],
            ),
        ],
    );
    let allow = rules(
        Action::Allow,
        vec![
            (
                &key("read"),
                vec![and(vec![
                    perm(P::OrRules(permission::Set {
                        rules: vec![method("GET"), method("HEAD")],
                    })),
                    perm(P::NotRule(Box::new(url_path(exact("/private"))))),
                ])],
                vec![any_prin()],
            ),
            (
                &key("xff"),
                vec![method("POST")],
                vec![prin(I::RemoteIp(cidr("192.168.7.7", 32)))],
            ),
            (
                &key("not-guest"),
                vec![and(vec![
                    method("PUT"),
                    perm(P::Header(header(
                        "x-role",
                        HeaderMatchSpecifier::StringMatch(exact("guest")),
                        true,
                    ))),
                ])],
                vec![any_prin()],
            ),
            (
                &key("api"),
                vec![and(vec![
                    method("PATCH"),
                    url_path(matcher(
                        MatchPattern::SafeRegex(RegexMatcher {
                            regex: "/api/v[0-9]+/.*".into(),
                            engine_type: None::<regex_matcher::EngineType>,
                        }),
                        false,
                    )),
                ])],
                vec![any_prin()],
            ),
            (
                &key("docs"),
                vec![and(vec![
                    method("OPTIONS"),
                    url_path(matcher(MatchPattern::Prefix("/docs".into()), true)),
                ])],
                vec![any_prin()],
            ),
            (
                &key("local"),
                vec![and(vec![
                    method("DELETE"),
                    perm(P::DestinationIp(cidr("127.0.0.0", 8))),
                ])],
                vec![any_prin()],
            ),
            (
                &key("low-port"),
                vec![and(vec![
                    method("COPY"),
                    perm(P::DestinationPortRange(Int32Range { start: 1, end: 2 })),
                ])],
                vec![any_prin()],
            ),
            (
                &key("no-sni"),
                vec![and(vec![
                    method("LOCK"),
                    perm(P::RequestedServerName(exact(""))),
                ])],
                vec![any_prin()],
            ),
        ],
    );
    let shadow = rules(
        Action::Deny,
        vec![("shadow", vec![any_perm()], vec![any_prin()])],
    );
    vec![
        HttpRbac {
            rules: Some(audit),
            ..Default::default()
        },
        HttpRbac {
            rules: Some(deny),
            ..Default::default()
        },
        HttpRbac {
            rules: Some(allow),
            shadow_rules: Some(shadow),
            ..Default::default()
        },
    ]
}

// ------------------------------------------------------------------------------ the listeners

/// `inbound-http`: the three RBAC filters, then the router to `backend`; `inbound-tcp`: a network
/// RBAC filter denying the other loopback host, then tcp_proxy to `tcp-backend`.
fn listeners(log: Option<&str>) -> Vec<Listener> {
    let mut http_filters: Vec<HttpFilter> = http_rbac_filters()
        .into_iter()
        .map(|r| HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(r))),
            ..Default::default()
        })
        .collect();
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    });
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("backend".into())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "inbound_8080".into(),
        http_filters,
        access_log: log.map(access_log).into_iter().collect(),
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: "inbound".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes: vec![route],
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let network_rbac = NetworkRbac {
        stat_prefix: "tcp.".into(),
        rules: Some(rules(
            Action::Deny,
            vec![(
                &key("tcp-other-host"),
                vec![any_perm()],
                vec![prin(principal::Identifier::DirectRemoteIp(cidr(
                    "127.0.0.2",
                    32,
                )))],
            )],
        )),
        ..Default::default()
    };
    let tcp = TcpProxy {
        stat_prefix: "tcp_backend".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("tcp-backend".into())),
        ..Default::default()
    };
    vec![
        listener(
            "inbound-http",
            vec![(
                "envoy.filters.network.http_connection_manager",
                pack_any(hcm),
            )],
        ),
        listener(
            "inbound-tcp",
            vec![
                ("envoy.filters.network.rbac", pack_any(network_rbac)),
                ("envoy.filters.network.tcp_proxy", pack_any(tcp)),
            ],
        ),
    ]
}

// --------------------------------------------------------------------------------- the cases

struct Case {
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    from: [u8; 4],
    /// `None`: allowed (the backend answers 200); else denied, naming this policy (`none`: no
    /// ALLOW policy matched).
    denied_by: Option<&'static str>,
}

const HERE: [u8; 4] = [127, 0, 0, 1];

const fn case(
    method: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    denied_by: Option<&'static str>,
) -> Case {
    Case {
        method,
        path,
        headers,
        from: HERE,
        denied_by,
    }
}

const CASES: &[Case] = &[
    case("GET", "/", &[], None),
    case("HEAD", "/x", &[], None),
    case("GET", "/x?q=1", &[("x-audit", "1")], None),
    case("GET", "/private", &[], Some("none")),
    case("GET", "/private?q=1", &[], Some("none")),
    case("GET", "/admin/users", &[], Some("block")),
    case("GET", "/", &[("x-block", "yes")], Some("block")),
    Case {
        from: OTHER,
        ..case("GET", "/", &[], Some("other-host"))
    },
    case("GET", "/", &[("host", "blocked.example")], Some("by-host")),
    case("POST", "/", &[], Some("none")),
    case(
        "POST",
        "/",
        &[("x-forwarded-for", "1.1.1.1, 192.168.7.7")],
        None,
    ),
    case(
        "POST",
        "/",
        &[("x-forwarded-for", "192.168.7.7, 1.1.1.1")],
        Some("none"),
    ),
    case("PUT", "/", &[("x-role", "admin")], None),
    case("PUT", "/", &[("x-role", "guest")], Some("none")),
    // An inverted value matcher never matches a missing header (Envoy's rule).
    case("PUT", "/", &[], Some("none")),
    case("PATCH", "/api/v2/items", &[], None),
    case("PATCH", "/api/vx/items", &[], Some("none")),
    case("OPTIONS", "/DOCS/intro", &[], None),
    case("DELETE", "/thing", &[], None),
    case("COPY", "/thing", &[], Some("none")),
    case("LOCK", "/thing", &[], None),
];

fn head(i: usize, c: &Case) -> String {
    let mut h = format!("{} {} HTTP/1.1\r\nx-case: {i}\r\n", c.method, c.path);
    if !c.headers.iter().any(|(k, _)| *k == "host") {
        h.push_str("host: svc.shop\r\n");
    }
    for (k, v) in c.headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
    h
}

fn details(policy: &str) -> String {
    let key = if policy == "none" {
        "none".to_string()
    } else {
        key(policy)
    };
    format!("rbac_access_denied_matched_policy[{key}]")
}

/// What every denied answer is, from either proxy.
fn assert_denied(who: &str, i: usize, got: &(u16, String, String)) {
    assert_eq!(
        (got.0, got.1.as_str(), got.2.as_str()),
        (403, "text/plain", "RBAC: access denied"),
        "{who}, case {i}"
    );
}

// ------------------------------------------------------------------------- jalur's access log

/// jalur's access log lines (target `jalur::access`), captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().expect("log lock").clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The `details` field of a jalur access log line.
fn details_field(line: &str) -> String {
    line.split_once("details=")
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or(""))
        .unwrap_or("")
        .trim_matches('"')
        .to_string()
}

/// Envoy's file access log: case number -> (status, details), once it has `n` lines (Envoy
/// flushes the file about once a second).
async fn envoy_log(path: &std::path::Path, n: usize) -> BTreeMap<usize, (u16, String)> {
    assert_eventually("Envoy's access log has every case", DEADLINE, || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: BTreeMap<usize, (u16, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.parse().ok()?,
                    (f.next()?.parse().ok()?, f.next()?.to_string()),
                ))
            })
            .collect();
        (lines.len() >= n)
            .then_some(lines)
            .ok_or(format!("{} lines", text.lines().count()))
    })
    .await
}

/// The RBAC lines of a `/stats/prometheus` page, sorted.
fn rbac_lines(page: &str) -> Vec<String> {
    let mut v: Vec<String> = page
        .lines()
        .filter(|l| {
            (l.starts_with("envoy_") || l.starts_with("# TYPE envoy_")) && l.contains("rbac")
        })
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------- the test

/// A current-thread runtime: jalur proxy runs on this thread, so the access log subscriber set
/// here sees its lines.
#[tokio::test]
async fn the_same_requests_get_the_same_rbac_answers_from_envoy_and_jalur() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let echo = EchoServer::start("backend").await;
    let tcp_echo = TcpEcho::start().await;
    let plane = StaticPlane::start().await;
    let clusters = || {
        vec![
            cluster("backend", &[echo.addr()], false, None, false),
            cluster("tcp-backend", &[tcp_echo.addr], false, None, false),
        ]
    };
    plane.serve("rbac.shop", listeners(None), clusters());
    plane.serve("rbac-envoy.shop", listeners(log_path.to_str()), clusters());

    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("jalur::access=info"))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _log = tracing::subscriber::set_default(subscriber);
    let mut opts = jalur_proxy::run::ProxyOptions::loopback(plane.addr, "rbac", "shop");
    opts.ephemeral_ports = true;
    opts.access_log = true;
    let jalur = jalur_proxy::run::Proxy::start(opts)
        .await
        .expect("jalur proxy starts");
    let jalur_http = bound_listener(&jalur, "inbound-http").await;
    let jalur_tcp = bound_listener(&jalur, "inbound-tcp").await;

    let mut envoy_opts = EnvoyOpts::new(
        plane.addr,
        "sidecar~127.0.0.1~rbac-envoy.shop~shop.svc.cluster.local",
    );
    envoy_opts.cluster = "rbac-envoy.shop".into();
    let envoy: Envoy = Envoy::start_with(&binary, envoy_opts)
        .await
        .expect("envoy starts");
    let envoy_http = envoy_listener(&envoy, "inbound-http").await;
    let envoy_tcp = envoy_listener(&envoy, "inbound-tcp").await;

    let mut jalur_details = Vec::new();
    for (i, c) in CASES.iter().enumerate() {
        let req = head(i, c);
        let from_envoy = request(envoy_http, c.from, &req).await;
        let from_jalur = request(jalur_http, c.from, &req).await;
        match c.denied_by {
            None => {
                assert_eq!(from_envoy.0, 200, "Envoy, case {i}: {}", from_envoy.2);
                assert_eq!(from_jalur.0, 200, "jalur, case {i}: {}", from_jalur.2);
            }
            Some(_) => {
                assert_denied("Envoy", i, &from_envoy);
                assert_denied("jalur", i, &from_jalur);
            }
        }
        // The access log line is written when the answer ends, before the connection closes.
        let line = assert_eventually("jalur logs the request", DEADLINE, || async {
            captured
                .lines()
                .get(i)
                .cloned()
                .ok_or("not yet".to_string())
        })
        .await;
        jalur_details.push(details_field(&line));
    }
    // Envoy writes its access log files every 10 s; reopening them flushes them now.
    request(envoy.admin_addr(), HERE, "POST /reopen_logs HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    let envoy_details = envoy_log(&log_path, CASES.len()).await;
    for (i, c) in CASES.iter().enumerate() {
        let (status, envoy) = &envoy_details[&i];
        match c.denied_by {
            Some(policy) => {
                assert_eq!(
                    (*status, envoy.as_str()),
                    (403, details(policy).as_str()),
                    "Envoy, case {i}"
                );
                assert_eq!(jalur_details[i], details(policy), "jalur, case {i}");
            }
            None => assert_eq!(envoy, "via_upstream", "Envoy, case {i}"),
        }
    }

    // A gRPC request is denied the gRPC way: a trailers-only 200 with PERMISSION_DENIED.
    let grpc = [("content-type", "application/grpc"), ("x-case", "grpc")];
    for (who, addr) in [("Envoy", envoy_http), ("jalur", jalur_http)] {
        let (status, headers, body) = jalur_testkit::http2_get(addr, "svc.shop", "/private", &grpc)
            .await
            .unwrap_or_else(|e| panic!("{who}: {e}"));
        let h = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(
            (
                status,
                h("grpc-status"),
                h("grpc-message"),
                h("content-type"),
                body.as_str()
            ),
            (
                200,
                "7".into(),
                "RBAC: access denied".into(),
                "application/grpc".into(),
                ""
            ),
            "{who}"
        );
    }

    // TCP: the other host is closed before a byte reaches the backend; this one is proxied.
    for (who, addr) in [("Envoy", envoy_tcp), ("jalur", jalur_tcp)] {
        assert_eq!(
            tcp_round(addr, HERE, b"ping").await,
            b"ping",
            "{who}: allowed"
        );
        assert_eq!(tcp_round(addr, OTHER, b"pong").await, b"", "{who}: denied");
    }
    assert_eq!(
        tcp_echo.received.load(Ordering::Relaxed),
        8,
        "only the allowed bytes arrived"
    );

    // The same RBAC counters under the same names.
    let expected_denied = CASES.iter().filter(|c| c.denied_by.is_some()).count();
    let jalur_page = || async {
        jalur_testkit::http_get(jalur.stats_addr, "stats", "/stats/prometheus", &[])
            .await
            .expect("jalur stats")
            .2
    };
    let envoy_page = envoy
        .admin_get("/stats/prometheus")
        .await
        .expect("Envoy stats");
    let want = rbac_lines(&envoy_page);
    assert!(
        want.iter().any(|l| l.starts_with("envoy_http_rbac_denied{")
            // and the gRPC one
            && l.ends_with(&format!(" {}", expected_denied + 1))),
        "{want:#?}"
    );
    // Envoy flags an RBAC denial with no response flag; so does jalur in Istio's metric.
    let page = jalur_page().await;
    let denied_403 = common::probe::max_value(
        &page,
        "istio_requests_total",
        &[("response_code", "403"), ("response_flags", "-")],
    );
    assert_eq!(denied_403, Some(expected_denied as u64), "{page}");
    assert_eventually("jalur counts RBAC as Envoy does", DEADLINE, || async {
        let got = rbac_lines(&jalur_page().await);
        (got == want)
            .then_some(())
            .ok_or(format!("jalur {got:#?}\nEnvoy {want:#?}"))
    })
    .await;
}

// ------------------------------------------------------------------------ mTLS principals, SNI

/// `l` (an Istio-shaped inbound listener) with `rbac` before the router of every chain.
fn with_http_rbac(mut l: Listener, rbac: &[HttpRbac]) -> Listener {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use prost::Message;
    for chain in &mut l.filter_chains {
        for f in &mut chain.filters {
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            let at = hcm.http_filters.len().saturating_sub(1);
            for (i, r) in rbac.iter().enumerate() {
                let filter = HttpFilter {
                    name: "envoy.filters.http.rbac".into(),
                    config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(r.clone()))),
                    ..Default::default()
                };
                hcm.http_filters.insert(at + i, filter);
            }
            *any = pack_any(hcm);
        }
    }
    l
}

fn authenticated(
    m: envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher,
) -> envoy_types::pb::envoy::config::rbac::v3::Principal {
    prin(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

/// Istio's source.principal (exact SPIFFE id) and source.namespace (the regex Istio writes), and
/// connection.sni, over a STRICT mTLS listener: jalur must read the peer certificate and the SNI
/// of the connection as Envoy does.
#[tokio::test]
async fn mtls_principals_and_sni_decide_the_same_in_envoy_and_jalur() {
    use common::ca::{spiffe, TestCa};
    use istio_tls::{listener_from, Mode, Sds};
    use jalur_identity::verify::Accept;
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let ca = TestCa::new();
    let server = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let intruder = ca.identity(&spiffe("shop", "intruder"), &[]);
    let stranger = ca.identity(&spiffe("other", "app"), &[]);
    let echo = EchoServer::start("payments").await;
    let allow = rules(
        Action::Allow,
        vec![
            (
                &key("sf"),
                vec![perm(permission::Rule::RequestedServerName(matcher(
                    MatchPattern::Prefix("outbound_.8080_".into()),
                    false,
                )))],
                vec![authenticated(exact(
                    "spiffe://cluster.local/ns/shop/sa/storefront",
                ))],
            ),
            (
                &key("ns"),
                vec![method("POST")],
                vec![authenticated(matcher(
                    MatchPattern::SafeRegex(RegexMatcher {
                        regex: ".*/ns/shop/.*".into(),
                        engine_type: None::<regex_matcher::EngineType>,
                    }),
                    false,
                ))],
            ),
        ],
    );
    let rbac = [HttpRbac {
        rules: Some(allow),
        ..Default::default()
    }];
    let inbound = || {
        with_http_rbac(
            listener_from("inbound-mtls", "backend", false, Mode::Strict, Sds::Ads),
            &rbac,
        )
    };
    let plane = StaticPlane::start().await;
    let backend = || vec![cluster("backend", &[echo.addr()], false, None, false)];
    let creds = server.watch.borrow().clone();
    plane.serve_with_secrets("payments.shop", vec![inbound()], backend(), Some(&creds));
    plane.serve_with_secrets(
        "payments-envoy.shop",
        vec![inbound()],
        backend(),
        Some(&creds),
    );

    let mut opts = jalur_proxy::run::ProxyOptions::loopback(plane.addr, "payments", "shop");
    opts.ephemeral_ports = true;
    opts.credentials = Some(server.watch.clone());
    let jalur = jalur_proxy::run::Proxy::start(opts)
        .await
        .expect("jalur proxy starts");
    let jalur_addr = bound_listener(&jalur, "inbound-mtls").await;
    let mut envoy_opts = EnvoyOpts::new(
        plane.addr,
        "sidecar~127.0.0.1~payments-envoy.shop~shop.svc.cluster.local",
    );
    envoy_opts.cluster = "payments-envoy.shop".into();
    let envoy = Envoy::start_with(&binary, envoy_opts)
        .await
        .expect("envoy starts");
    let envoy_addr = envoy_listener(&envoy, "inbound-mtls").await;

    const SNI: &str = "outbound_.8080_._.payments.shop.svc.cluster.local";
    let cases = [
        (&storefront, SNI, "GET", None),
        (&storefront, "payments.example", "GET", Some("none")),
        (&intruder, "payments.example", "POST", None),
        (&intruder, SNI, "GET", Some("none")),
        (&stranger, SNI, "POST", Some("none")),
    ];
    for (who, addr) in [("Envoy", envoy_addr), ("jalur", jalur_addr)] {
        for (i, (client, sni, method, denied)) in cases.iter().enumerate() {
            let accept = Accept::TrustDomain("cluster.local".into());
            let mut tls = assert_eventually("the mTLS listener accepts", DEADLINE, || async {
                common::probe::mesh_tls(addr, &client.watch, accept.clone(), sni, &[]).await
            })
            .await;
            let head = format!(
                "{method} / HTTP/1.1\r\nhost: payments\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let got = exchange(&mut tls, &head).await;
            match denied {
                None => assert_eq!(got.0, 200, "{who}, case {i}: {}", got.2),
                Some(_) => assert_eq!(
                    (got.0, got.2.as_str()),
                    (403, "RBAC: access denied"),
                    "{who}, case {i}"
                ),
            }
        }
    }
}

// ------------------------------------------------------- from the control plane's translation

/// An AuthorizationPolicy through the control plane's translation (track B) to jalur sidecars
/// under STRICT mTLS: the named caller gets through, another mesh identity gets Envoy's 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_policy_from_the_control_plane_is_enforced_by_jalur() {
    use common::mesh::{peer_authentication, MeshPlane};
    let policy = (
        "authz.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: storefront-reads\n  namespace: shop\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [cluster.local/ns/shop/sa/storefront]\n    to:\n    - operation:\n        methods: [GET]\n".to_string(),
    );
    let plane = MeshPlane::start(&[peer_authentication("STRICT"), policy]).await;
    let app = EchoServer::start("payments").await;
    let _payments = plane.server("payments", "http", app.addr().port()).await;
    let (_storefront, allowed) = plane
        .caller("storefront", Some(plane.issue("storefront")))
        .await;
    let (_intruder, denied) = plane
        .caller("intruder", Some(plane.issue("intruder")))
        .await;
    let host = "payments.shop.svc.cluster.local";
    common::probe::eventually_ok(allowed, host, false, || plane.diagnose()).await;
    assert_eventually("the other identity is denied by RBAC", DEADLINE, || async {
        let r = jalur_testkit::http_get(denied, host, "/", &[]).await?;
        (r.0 == 403 && r.2 == "RBAC: access denied")
            .then_some(())
            .ok_or(format!("{r:?}\n{}", plane.diagnose()))
    })
    .await;
}
