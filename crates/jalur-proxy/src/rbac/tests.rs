//! RBAC from Envoy's wire protos through conversion to decisions, and the NACKs.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, CidrRange, SocketAddress,
};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action as XAction, Permission as XPerm, Policy as XPolicy,
    Principal as XPrin, Rbac as XRbac,
};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    metadata_matcher::{path_segment::Segment, PathSegment},
    path_matcher,
    string_matcher::MatchPattern,
    value_matcher, MetadataMatcher, PathMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use http::HeaderMap;

use super::*;
use crate::config::{convert, ListenerKind};

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

fn prefix(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Prefix(s.into())),
        ignore_case: false,
    }
}

fn perm(rule: permission::Rule) -> XPerm {
    XPerm { rule: Some(rule) }
}

fn prin(id: principal::Identifier) -> XPrin {
    XPrin {
        identifier: Some(id),
    }
}

fn header(name: &str, spec: header_matcher::HeaderMatchSpecifier, invert: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        invert_match: invert,
        ..HeaderMatcher::default()
    }
}

fn rules(action: XAction, policies: Vec<(&str, Vec<XPerm>, Vec<XPrin>)>) -> XRbac {
    XRbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(n, permissions, principals)| {
                (
                    n.to_string(),
                    XPolicy {
                        permissions,
                        principals,
                        ..XPolicy::default()
                    },
                )
            })
            .collect(),
        ..XRbac::default()
    }
}

fn any_perm() -> XPerm {
    perm(permission::Rule::Any(true))
}

fn any_prin() -> XPrin {
    prin(principal::Identifier::Any(true))
}

fn http_listener(rbac: Vec<HttpRbac>) -> Listener {
    let mut http_filters: Vec<HttpFilter> = rbac
        .into_iter()
        .map(|r| HttpFilter {
            name: "envoy.filters.http.rbac".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(r))),
            ..HttpFilter::default()
        })
        .collect();
    http_filters.push(HttpFilter {
        name: "envoy.filters.http.router".into(),
        ..HttpFilter::default()
    });
    let hcm = HttpConnectionManager {
        stat_prefix: "inbound_8080".into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(Default::default())),
        http_filters,
        ..HttpConnectionManager::default()
    };
    listener(vec![(
        "envoy.filters.network.http_connection_manager",
        pack_any(hcm),
    )])
}

fn listener(filters: Vec<(&str, Any)>) -> Listener {
    Listener {
        name: "inbound".into(),
        address: Some(socket()),
        filter_chains: vec![FilterChain {
            filters: filters
                .into_iter()
                .map(|(name, any)| Filter {
                    name: name.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(any)),
                })
                .collect(),
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn socket() -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(8080)),
            ..SocketAddress::default()
        })),
    }
}

fn http_rbac(r: XRbac) -> HttpRbac {
    HttpRbac {
        rules: Some(r),
        ..HttpRbac::default()
    }
}

/// The HTTP RBAC chain of a converted listener.
fn http_chain(rbac: Vec<HttpRbac>) -> Vec<RbacFilter> {
    let l = convert::listener(&http_listener(rbac)).expect("converts");
    match l.kind {
        ListenerKind::Http(h) => h.rbac.filters,
        ListenerKind::Tcp(_) | ListenerKind::Sni(_) => panic!("an HTTP listener"),
    }
}

fn nack(rbac: Vec<HttpRbac>) -> String {
    convert::listener(&http_listener(rbac))
        .expect_err("NACKed")
        .to_string()
}

struct Req {
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    peer: SocketAddr,
    tls: Option<Vec<String>>,
}

fn req(method: &'static str, path: &'static str) -> Req {
    Req {
        method,
        path,
        headers: HeaderMap::new(),
        peer: "10.1.2.3:5555".parse().expect("addr"),
        tls: None,
    }
}

fn decide(chain: &[RbacFilter], r: &Req) -> Verdict {
    let counters: Vec<FilterCounters> = Vec::new();
    let s = Subject {
        direct_remote: r.peer,
        remote: RemoteAddress::default().derive(r.peer, &r.headers),
        local: "127.0.0.1:8080".parse().expect("addr"),
        sni: None,
        tls: r.tls.as_deref(),
        http: Some(HttpView {
            method: r.method,
            authority: "svc.local",
            path: r.path,
            scheme: "http",
            headers: &r.headers,
        }),
        jwt: None,
    };
    evaluate(chain, &counters, &s)
}

fn denied_by(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Denied { details, .. } => Some(details.as_str()),
        Verdict::Allowed { .. } => None,
    }
}

#[test]
fn allow_deny_and_log_as_envoy_decides() {
    use permission::Rule as P;
    let get = perm(P::Header(header(
        ":method",
        header_matcher::HeaderMatchSpecifier::StringMatch(exact("GET")),
        false,
    )));
    let admin = perm(P::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(prefix("/admin"))),
    }));
    let chain = http_chain(vec![
        http_rbac(rules(
            XAction::Log,
            vec![("audit", vec![any_perm()], vec![any_prin()])],
        )),
        http_rbac(rules(
            XAction::Deny,
            vec![
                ("z-admin", vec![admin.clone()], vec![any_prin()]),
                ("a-admin", vec![admin], vec![any_prin()]),
            ],
        )),
        http_rbac(rules(
            XAction::Allow,
            vec![("gets", vec![get], vec![any_prin()])],
        )),
    ]);
    assert_eq!(
        decide(&chain, &req("GET", "/x?q=1")),
        Verdict::Allowed { logged: true }
    );
    // Policies are tried in name order: the first match names the decision.
    assert_eq!(
        denied_by(&decide(&chain, &req("GET", "/admin/x?y"))),
        Some("rbac_access_denied_matched_policy[a-admin]")
    );
    assert_eq!(
        denied_by(&decide(&chain, &req("POST", "/"))),
        Some("rbac_access_denied_matched_policy[none]")
    );
    // An ALLOW filter with no policies denies everything; no rules at all allows everything.
    let empty = http_chain(vec![http_rbac(rules(XAction::Allow, vec![]))]);
    assert!(denied_by(&decide(&empty, &req("GET", "/"))).is_some());
    let none = http_chain(vec![HttpRbac::default()]);
    assert_eq!(
        decide(&none, &req("GET", "/")),
        Verdict::Allowed { logged: false }
    );
}

#[test]
fn principals_read_the_connection() {
    use principal::Identifier as I;
    let spiffe = |m: StringMatcher| {
        prin(I::Authenticated(principal::Authenticated {
            principal_name: Some(m),
        }))
    };
    let cidr = |a: &str, len: u32| CidrRange {
        address_prefix: a.into(),
        prefix_len: Some(UInt32Value { value: len }),
    };
    let chain = http_chain(vec![http_rbac(rules(
        XAction::Allow,
        vec![
            (
                "mesh",
                vec![any_perm()],
                vec![spiffe(exact("spiffe://td/ns/a/sa/b"))],
            ),
            (
                "net",
                vec![any_perm()],
                vec![prin(I::NotId(Box::new(prin(I::DirectRemoteIp(cidr(
                    "10.0.0.0", 8,
                ))))))],
            ),
            (
                "xff",
                vec![any_perm()],
                vec![prin(I::RemoteIp(cidr("192.168.7.7", 32)))],
            ),
        ],
    ))]);
    let mut r = req("GET", "/");
    assert!(denied_by(&decide(&chain, &r)).is_some(), "10.x, plaintext");
    r.tls = Some(vec!["spiffe://td/ns/a/sa/b".to_string()]);
    assert!(
        denied_by(&decide(&chain, &r)).is_none(),
        "the named workload"
    );
    r.tls = Some(vec!["spiffe://td/ns/a/sa/c".to_string()]);
    assert!(denied_by(&decide(&chain, &r)).is_some(), "another workload");
    r.peer = "172.16.0.1:1".parse().expect("addr");
    assert!(denied_by(&decide(&chain, &r)).is_none(), "outside 10/8");
    // remote_ip is the right-most x-forwarded-for entry without use_remote_address.
    let mut r = req("GET", "/");
    r.headers.insert(
        "x-forwarded-for",
        "1.1.1.1, 192.168.7.7".parse().expect("value"),
    );
    assert!(denied_by(&decide(&chain, &r)).is_none(), "xff");
}

#[test]
fn header_rules_follow_envoys_missing_header_rules() {
    let rule = |check: HeaderCheck, invert: bool| HeaderRule {
        name: "x-a".into(),
        check,
        invert,
    };
    let mut h = HeaderMap::new();
    let check = |r: &HeaderRule, h: &HeaderMap| {
        r.matches(Some(&HttpView {
            method: "GET",
            authority: "a",
            path: "/",
            scheme: "http",
            headers: h,
        }))
    };
    let value = HeaderCheck::Value(crate::config::StringMatch::Exact("1,2".into()));
    assert!(
        !check(&rule(value.clone(), true), &h),
        "inverted value matcher on a missing header"
    );
    assert!(check(&rule(HeaderCheck::Present(false), false), &h));
    assert!(check(&rule(HeaderCheck::Present(true), true), &h));
    h.append("x-a", "1".parse().expect("v"));
    h.append("x-a", "2".parse().expect("v"));
    assert!(check(&rule(value, false), &h), "values joined by a comma");
}

#[test]
#[allow(deprecated)] // `metadata`: the form Istio sends.
fn unsupported_matchers_are_nacked_by_field() {
    use permission::Rule as P;
    let matcher = perm(P::Metadata(MetadataMatcher {
        filter: "istio_authn".into(),
        path: vec![PathSegment {
            segment: Some(Segment::Key("x".into())),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::PresentMatch(true)),
        }),
        invert: false,
    }));
    let e = nack(vec![http_rbac(rules(
        XAction::Allow,
        vec![("p", vec![matcher], vec![any_prin()])],
    ))]);
    assert!(
        e.contains(
            "http_filters[0].typed_config.rules.policies[\"p\"].permissions[0].metadata.filter"
        ),
        "{e}"
    );
    let mut cel = rules(
        XAction::Allow,
        vec![("p", vec![any_perm()], vec![any_prin()])],
    );
    if let Some(p) = cel.policies.get_mut("p") {
        p.condition = Some(Default::default());
    }
    assert!(nack(vec![http_rbac(cel)]).contains(".condition"));
    let tree = HttpRbac {
        matcher: Some(Default::default()),
        ..HttpRbac::default()
    };
    assert!(nack(vec![tree]).contains("typed_config.matcher"));
}

#[test]
fn network_rbac_before_tcp_proxy_and_stat_names() {
    let tcp = TcpProxy {
        stat_prefix: "t".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster("up".into())),
        ..TcpProxy::default()
    };
    let rbac = NetRbac {
        stat_prefix: "tcp.".into(),
        rules: Some(rules(
            XAction::Deny,
            vec![("d", vec![any_perm()], vec![any_prin()])],
        )),
        ..NetRbac::default()
    };
    let l = convert::listener(&listener(vec![
        ("envoy.filters.network.rbac", pack_any(rbac)),
        ("envoy.filters.network.tcp_proxy", pack_any(tcp.clone())),
    ]))
    .expect("converts");
    assert_eq!(l.network_rbac.len(), 1);
    assert_eq!(l.network_rbac[0].stats.denied, "tcp.rbac.denied");
    // A network filter jalur does not run, before tcp_proxy, is refused by position.
    let e = convert::listener(&listener(vec![
        ("envoy.filters.network.tcp_proxy", pack_any(tcp.clone())),
        ("envoy.filters.network.tcp_proxy", pack_any(tcp)),
    ]))
    .expect_err("NACKed")
    .to_string();
    assert!(e.contains("filters[0]"), "{e}");
    let http = http_chain(vec![HttpRbac {
        rules_stat_prefix: "pfx_".into(),
        ..HttpRbac::default()
    }]);
    assert_eq!(http[0].stats.allowed, "http.inbound_8080.rbac.pfx_.allowed");
    assert_eq!(
        http[0].stats.shadow_denied,
        "http.inbound_8080.rbac.shadow_denied"
    );
}

#[test]
fn per_route_rbac_is_nacked() {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
    let vh = VirtualHost {
        name: "all".into(),
        domains: vec!["*".into()],
        typed_per_filter_config: [(
            "envoy.filters.http.rbac".to_string(),
            pack_any(RbacPerRoute::default()),
        )]
        .into(),
        ..VirtualHost::default()
    };
    let rc = RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![vh],
        ..RouteConfiguration::default()
    };
    let e = convert::route_table(&rc).expect_err("NACKed").to_string();
    assert!(
        e.contains("typed_per_filter_config[\"envoy.filters.http.rbac\"]")
            && e.contains("RBACPerRoute"),
        "{e}"
    );
}

#[test]
fn an_unreadable_forwarded_entry_does_not_hide_the_ones_appended_after_it() {
    let peer: SocketAddr = "10.1.2.3:40000".parse().expect("addr");
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\x80,203.0.113.9").expect("obs-text is a valid value"),
    );
    // A sidecar (no use_remote_address, no trusted hops): the right-most entry, as Envoy.
    let sidecar = RemoteAddress::default();
    assert_eq!(
        sidecar.derive(peer, &headers),
        "203.0.113.9".parse::<std::net::IpAddr>().expect("ip")
    );
    // One hop further left is the unreadable entry: the peer, as for any invalid entry.
    let one_hop = RemoteAddress {
        use_remote_address: false,
        xff_num_trusted_hops: 1,
    };
    assert_eq!(one_hop.derive(peer, &headers), peer.ip());
}
