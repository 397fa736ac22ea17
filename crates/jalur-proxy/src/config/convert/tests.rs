//! Conversion tests: resources shaped like jalur-control's translation emits them (written by
//! hand: the proxy must not depend on the control plane), one case per error path asserting the
//! exact field, and a mutation smoke test that nothing panics on garbage.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds as XdsThresholds, cluster, CircuitBreakers, Cluster as XdsCluster,
    OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source::ConfigSourceSpecifier, data_source,
    header_value_option::HeaderAppendAction, socket_address, transport_socket, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, HeaderValue, HeaderValueOption,
    HealthStatus, Locality, RuntimeFractionalPercent, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, ApiListener, Filter, FilterChain, Listener as XdsListener,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action,
    retry_policy::{RetryBackOff, RetryHostPredicate},
    route, route_action,
    route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
    DirectResponseAction, FilterConfig, HeaderMatcher, QueryParameterMatcher, RedirectAction,
    RetryPolicy as XdsRetry, Route as XdsRoute, RouteAction, RouteConfiguration,
    RouteMatch as XdsRouteMatch, VirtualHost as XdsVirtualHost, WeightedCluster as XdsWeighted,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration as XdsDuration, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};

use super::*;
use crate::config::{
    Action, Discovery, DomainMatch, Endpoint, Fault, HashPolicy, HeaderMatch, LbPolicy,
    ListenerKind, Mirror, OutlierConfig, PathMatch, Redirect, RouteSource, RouteTable, StringMatch,
    Thresholds, UpstreamProtocol,
};

mod actions;
mod clusters;
mod mutate;
mod routes;
mod tls;

// ----------------------------------------------------------------------------------- fixtures

pub(super) fn dur(secs: i64, nanos: i32) -> XdsDuration {
    XdsDuration {
        seconds: secs,
        nanos,
    }
}

pub(super) fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

pub(super) fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}

pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(
            ConfigSourceSpecifier::Ads(AggregatedConfigSource::default()),
        ),
        ..ConfigSource::default()
    }
}

pub(super) fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..HttpFilter::default()
    }
}

/// The fault filter then the router, as translation's `http_filters(true)`.
pub(super) fn filters() -> Vec<HttpFilter> {
    vec![
        http_filter("envoy.filters.http.fault", pack_any(HttpFault::default())),
        http_filter("envoy.filters.http.router", pack_any(Router::default())),
    ]
}

pub(super) fn hcm(routes: RouteSpecifier, http_filters: Vec<HttpFilter>) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: "outbound".into(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters,
        ..HttpConnectionManager::default()
    }
}

pub(super) fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: name.into(),
    })
}

pub(super) fn listener_with(name: &str, port: u32, filter_name: &str, config: Any) -> XdsListener {
    XdsListener {
        name: name.into(),
        address: Some(socket("0.0.0.0", port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: filter_name.into(),
                config_type: Some(filter::ConfigType::TypedConfig(config)),
            }],
            ..FilterChain::default()
        }],
        ..XdsListener::default()
    }
}

/// The sidecar's outbound listener as translation emits it.
pub(super) fn outbound() -> XdsListener {
    listener_with(
        "outbound",
        15001,
        "envoy.filters.network.http_connection_manager",
        pack_any(hcm(rds("outbound"), filters())),
    )
}

pub(super) fn hcm_listener(h: HttpConnectionManager) -> XdsListener {
    listener_with(
        "outbound",
        15001,
        "envoy.filters.network.http_connection_manager",
        pack_any(h),
    )
}

pub(super) fn tcp_listener(spec: tcp_proxy::ClusterSpecifier) -> XdsListener {
    let proxy = TcpProxy {
        stat_prefix: "0_0_0_0_5432".into(),
        cluster_specifier: Some(spec),
        ..TcpProxy::default()
    };
    listener_with(
        "0.0.0.0_5432",
        5432,
        "envoy.filters.network.tcp_proxy",
        pack_any(proxy),
    )
}

pub(super) fn prefix(p: &str) -> Option<XdsRouteMatch> {
    Some(XdsRouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..XdsRouteMatch::default()
    })
}

pub(super) fn to_cluster(name: &str, cluster: &str) -> XdsRoute {
    XdsRoute {
        name: name.into(),
        r#match: prefix("/"),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            timeout: Some(dur(0, 0)),
            ..RouteAction::default()
        })),
        ..XdsRoute::default()
    }
}

pub(super) fn vhost(name: &str, domains: &[&str], routes: Vec<XdsRoute>) -> XdsVirtualHost {
    XdsVirtualHost {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..XdsVirtualHost::default()
    }
}

pub(super) fn table(vhosts: Vec<XdsVirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: "outbound".into(),
        virtual_hosts: vhosts,
        ..RouteConfiguration::default()
    }
}

pub(super) fn header(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    }
}

pub(super) fn weighted(entries: &[(&str, Option<u32>)]) -> route_action::ClusterSpecifier {
    route_action::ClusterSpecifier::WeightedClusters(XdsWeighted {
        clusters: entries
            .iter()
            .map(|(name, w)| ClusterWeight {
                name: name.to_string(),
                weight: w.map(|value| UInt32Value { value }),
                ..ClusterWeight::default()
            })
            .collect(),
        ..XdsWeighted::default()
    })
}

/// An EDS cluster as translation emits it for a mesh service port (Istio's lifted breakers).
pub(super) fn eds_cluster(name: &str) -> XdsCluster {
    let http1 = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                    Default::default(),
                )),
            },
        )),
        common_http_protocol_options: Some(Default::default()),
        ..HttpProtocolOptions::default()
    };
    XdsCluster {
        name: name.into(),
        connect_timeout: Some(dur(10, 0)),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![XdsThresholds {
                max_connections: u32v(u32::MAX),
                max_pending_requests: u32v(u32::MAX),
                max_requests: u32v(u32::MAX),
                max_retries: u32v(u32::MAX),
                track_remaining: true,
                ..XdsThresholds::default()
            }],
            ..CircuitBreakers::default()
        }),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(http1),
        )]
        .into(),
        ..XdsCluster::default()
    }
}

pub(super) fn lb_endpoint(
    address: &str,
    port: u32,
    health: HealthStatus,
    weight: Option<u32>,
) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(XdsEndpoint {
            address: Some(socket(address, port)),
            ..XdsEndpoint::default()
        })),
        health_status: health as i32,
        load_balancing_weight: weight.map(|value| UInt32Value { value }),
        ..LbEndpoint::default()
    }
}

pub(super) fn group(
    locality: Option<(&str, &str, &str)>,
    endpoints: Vec<LbEndpoint>,
) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: locality.map(|(region, zone, sub_zone)| Locality {
            region: region.into(),
            zone: zone.into(),
            sub_zone: sub_zone.into(),
        }),
        load_balancing_weight: u32v(endpoints.len() as u32),
        lb_endpoints: endpoints,
        ..LocalityLbEndpoints::default()
    }
}

pub(super) fn cla(name: &str, groups: Vec<LocalityLbEndpoints>) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: groups,
        ..ClusterLoadAssignment::default()
    }
}

/// The field an error points at, failing the test if there is no error.
pub(super) fn field<T: std::fmt::Debug>(r: Result<T, ConvertError>) -> String {
    r.expect_err("conversion must fail").field
}

pub(super) const FAULT: &str = "envoy.filters.http.fault";

pub(super) fn forward(a: RouteAction) -> XdsRoute {
    XdsRoute {
        name: "r".into(),
        r#match: prefix("/"),
        action: Some(route::Action::Route(a)),
        ..XdsRoute::default()
    }
}

pub(super) fn to(cluster: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
        ..RouteAction::default()
    }
}

/// One route in a one-host table.
pub(super) fn one(r: XdsRoute) -> RouteConfiguration {
    table(vec![vhost("reviews", &["reviews"], vec![r])])
}

pub(super) fn only_route(rc: &RouteConfiguration) -> crate::config::Route {
    let t: RouteTable = route_table(rc).expect("valid");
    t.virtual_hosts[0].routes[0].clone()
}

pub(super) fn fwd(rc: &RouteConfiguration) -> crate::config::Forward {
    match only_route(rc).action {
        Action::Forward(f) => f,
        other => panic!("not a forward: {other:?}"),
    }
}

pub(super) fn string(p: MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

pub(super) fn re(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.into(),
        engine_type: None,
    }
}

pub(super) fn percent(numerator: u32, d: DenominatorType) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator,
        denominator: d as i32,
    })
}

// ----------------------------------------------------------------------------------- listeners

#[test]
fn sidecar_outbound_listener() {
    let l = listener(&outbound()).expect("valid");
    assert_eq!(l.name, "outbound");
    assert_eq!(l.addr, "0.0.0.0:15001".parse().expect("addr"));
    let ListenerKind::Http(h) = l.kind else {
        panic!("not HTTP: {:?}", l.kind)
    };
    assert_eq!(h.routes, RouteSource::Rds("outbound".into()));
    assert!(h.faults);
    assert_eq!(h.stat_prefix, "outbound");
}

#[test]
fn listener_without_fault_filter_and_on_ipv6_port_zero() {
    let mut l = hcm_listener(hcm(
        rds("inbound"),
        vec![http_filter(
            "envoy.filters.http.router",
            pack_any(Router::default()),
        )],
    ));
    l.address = Some(socket("::1", 0));
    let l = listener(&l).expect("valid");
    assert_eq!(l.addr, "[::1]:0".parse().expect("addr"));
    let ListenerKind::Http(h) = l.kind else {
        panic!("not HTTP")
    };
    assert!(!h.faults);
}

#[test]
fn inline_route_config_and_its_error_paths() {
    let rc = table(vec![vhost(
        "inbound",
        &["*"],
        vec![to_cluster("inbound", "inbound|9080||")],
    )]);
    let l = listener(&hcm_listener(hcm(
        RouteSpecifier::RouteConfig(rc.clone()),
        filters(),
    )))
    .expect("valid");
    let ListenerKind::Http(h) = l.kind else {
        panic!("not HTTP")
    };
    let RouteSource::Inline(t) = h.routes else {
        panic!("not inline")
    };
    assert_eq!(t.virtual_hosts[0].routes[0].name, "inbound");

    let mut bad = rc;
    bad.virtual_hosts[0].routes[0].r#match = Some(XdsRouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(
            envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                regex: "(unclosed".into(),
                engine_type: None,
            },
        )),
        ..XdsRouteMatch::default()
    });
    let err = listener(&hcm_listener(hcm(
        RouteSpecifier::RouteConfig(bad),
        filters(),
    )))
    .expect_err("bad regex");
    assert_eq!(
        err.field,
        "filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].match.safe_regex.regex"
    );
    assert!(err.message.contains("invalid regex \"(unclosed\""), "{err}");
    assert!(
        err.to_string()
            .starts_with("Listener outbound: filter_chains[0]"),
        "{err}"
    );
}

#[test]
fn tcp_listeners() {
    let l = listener(&tcp_listener(tcp_proxy::ClusterSpecifier::Cluster(
        "outbound|5432||db.svc".into(),
    )))
    .expect("valid");
    let ListenerKind::Tcp(t) = l.kind else {
        panic!("not TCP")
    };
    assert_eq!(t.targets.len(), 1);
    assert_eq!(
        (t.targets[0].cluster.as_str(), t.targets[0].weight),
        ("outbound|5432||db.svc", 1)
    );
    assert_eq!(
        t.idle_timeout,
        Some(Duration::from_secs(3600)),
        "Envoy's default idle timeout"
    );

    let split = tcp_proxy::WeightedCluster {
        clusters: vec![
            tcp_proxy::weighted_cluster::ClusterWeight {
                name: "a".into(),
                weight: 90,
                ..Default::default()
            },
            tcp_proxy::weighted_cluster::ClusterWeight {
                name: "b".into(),
                weight: 10,
                ..Default::default()
            },
        ],
    };
    let mut l = tcp_listener(tcp_proxy::ClusterSpecifier::WeightedClusters(split.clone()));
    let proxy = TcpProxy {
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::WeightedClusters(split.clone())),
        idle_timeout: Some(dur(0, 0)),
        ..TcpProxy::default()
    };
    l.filter_chains[0].filters[0].config_type =
        Some(filter::ConfigType::TypedConfig(pack_any(proxy)));
    let ListenerKind::Tcp(t) = listener(&l).expect("valid").kind else {
        panic!("not TCP")
    };
    assert_eq!(
        t.targets.iter().map(|t| t.weight).collect::<Vec<_>>(),
        [90, 10]
    );
    assert_eq!(t.idle_timeout, None, "0 disables the idle timeout");

    let mut zero = split;
    zero.clusters[1].weight = 0;
    let l = tcp_listener(tcp_proxy::ClusterSpecifier::WeightedClusters(zero));
    assert_eq!(
        field(listener(&l)),
        "filter_chains[0].filters[0].typed_config.weighted_clusters.clusters[1].weight"
    );
}

#[test]
fn listener_errors_name_their_field() {
    let api = XdsListener {
        name: "reviews:9080".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm(rds("reviews:9080"), filters()))),
        }),
        ..XdsListener::default()
    };
    let err = listener(&api).expect_err("api listener");
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        (
            "api_listener",
            "API listeners are for proxyless gRPC clients"
        )
    );

    let mut tls = outbound();
    tls.filter_chains[0].transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any::default())),
    });
    let err = listener(&tls).expect_err("tls");
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        (
            "filter_chains[0].transport_socket.typed_config",
            "transport socket \"envoy.transport_sockets.tls\" () is not supported; only raw_buffer and tls"
        )
    );

    // TLS termination: inline PEM accepted (with ALPN defaults); client certificates refused.
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, TlsCertificate,
    };
    let pem = |s: &str| {
        Some(DataSource {
            specifier: Some(Specifier::InlineString(s.into())),
            ..DataSource::default()
        })
    };
    let mut ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: pem("CERT"),
                private_key: pem("KEY"),
                ..TlsCertificate::default()
            }],
            ..CommonTlsContext::default()
        }),
        ..DownstreamTlsContext::default()
    };
    let with = |ctx: &DownstreamTlsContext| {
        let mut l = outbound();
        l.filter_chains[0].transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(
                ctx.clone(),
            ))),
        });
        listener(&l)
    };
    let ok = with(&ctx).expect("TLS termination converts");
    let tls = ok.tls.expect("tls kept");
    assert_eq!(
        (tls.cert, tls.alpn.clone()),
        (
            crate::config::CertSource::Pem {
                cert_chain_pem: b"CERT".to_vec(),
                private_key_pem: b"KEY".to_vec()
            },
            vec!["h2".to_string(), "http/1.1".to_string()]
        )
    );
    // Client certificates need a validation context saying whom to trust.
    ctx.require_client_certificate =
        Some(envoy_types::pb::google::protobuf::BoolValue { value: true });
    let err = with(&ctx).expect_err("mutual TLS without a validation context");
    assert_eq!(
        err.field,
        "filter_chains[0].transport_socket.typed_config.require_client_certificate"
    );

    let mut raw = outbound();
    raw.filter_chains[0].transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    .into(),
            value: vec![],
        })),
    });
    listener(&raw).expect("plaintext transport sockets are fine");

    let mut matched = outbound();
    matched.filter_chains[0].filter_chain_match = Some(Default::default());
    listener(&matched).expect("an empty filter_chain_match is fine");
    matched.filter_chains[0].filter_chain_match = Some(
        envoy_types::pb::envoy::config::listener::v3::FilterChainMatch {
            server_names: vec!["a".into()],
            ..Default::default()
        },
    );
    // Chains by server_names are TLS passthrough (`convert/sni.rs`): an HTTP chain cannot be one.
    assert_eq!(field(listener(&matched)), "filter_chains[0].filters[0]");

    let mut two = outbound();
    two.filter_chains.push(two.filter_chains[0].clone());
    assert_eq!(field(listener(&two)), "filter_chains[1].filter_chain_match");

    let mut host = outbound();
    host.address = Some(socket("localhost", 15001));
    assert_eq!(field(listener(&host)), "address.socket_address.address");

    let mut no_addr = outbound();
    no_addr.address = None;
    assert_eq!(field(listener(&no_addr)), "address");

    let other = listener_with(
        "x",
        1,
        "envoy.filters.network.redis_proxy",
        Any {
            type_url:
                "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
                    .into(),
            value: vec![],
        },
    );
    let err = listener(&other).expect_err("unknown network filter");
    assert_eq!(err.field, "filter_chains[0].filters[0].typed_config");
    assert!(err.message.contains("redis_proxy"), "{err}");

    let garbage = listener_with(
        "x",
        1,
        "hcm",
        Any {
            type_url: HttpConnectionManager::type_url(),
            value: vec![0xff, 0xff],
        },
    );
    let err = listener(&garbage).expect_err("undecodable");
    assert_eq!(err.field, "filter_chains[0].filters[0].typed_config");
    assert!(err.message.starts_with("cannot decode"), "{err}");
}

#[test]
fn http_filter_chain_rules() {
    let router = || http_filter("envoy.filters.http.router", pack_any(Router::default()));
    let unknown = || {
        http_filter(
            "envoy.filters.http.lua",
            Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua".into(),
                value: vec![],
            },
        )
    };
    let at = |filters: Vec<HttpFilter>| listener(&hcm_listener(hcm(rds("outbound"), filters)));

    let err = at(vec![unknown(), router()]).expect_err("unknown filter");
    assert_eq!(
        err.field,
        "filter_chains[0].filters[0].typed_config.http_filters[0]"
    );
    assert!(err.message.contains("envoy.filters.http.lua"), "{err}");

    let mut optional = unknown();
    optional.is_optional = true;
    at(vec![optional, router()]).expect("optional filters are skipped");

    let err = at(vec![router(), filters()[0].clone()]).expect_err("router not last");
    assert_eq!(
        err.field,
        "filter_chains[0].filters[0].typed_config.http_filters[0]"
    );
    assert_eq!(err.message, "the router must be the last HTTP filter");

    assert_eq!(
        field(at(vec![filters()[0].clone()])),
        "filter_chains[0].filters[0].typed_config.http_filters[0]"
    );

    let wide = http_filter(
        "envoy.filters.http.fault",
        pack_any(HttpFault {
            abort: Some(Default::default()),
            ..HttpFault::default()
        }),
    );
    assert_eq!(
        field(at(vec![wide, router()])),
        "filter_chains[0].filters[0].typed_config.http_filters[0].typed_config"
    );

    let mut rest = hcm(rds("outbound"), filters());
    rest.route_specifier = Some(RouteSpecifier::Rds(Rds {
        config_source: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                Default::default(),
            )),
            ..ConfigSource::default()
        }),
        route_config_name: "outbound".into(),
    }));
    assert_eq!(
        field(listener(&hcm_listener(rest))),
        "filter_chains[0].filters[0].typed_config.rds.config_source"
    );

    let mut nameless = hcm(rds(""), filters());
    nameless.stat_prefix.clear();
    assert_eq!(
        field(listener(&hcm_listener(nameless))),
        "filter_chains[0].filters[0].typed_config.rds.route_config_name"
    );
}

#[test]
fn client_certificate_details_other_than_sanitize_are_refused() {
    let mut h = hcm(rds("outbound"), filters());
    listener(&hcm_listener(h.clone())).expect("SANITIZE, the default");
    h.forward_client_cert_details = 2; // APPEND_FORWARD
    let err = listener(&hcm_listener(h)).expect_err("APPEND_FORWARD");
    assert_eq!(
        err.field,
        "filter_chains[0].filters[0].typed_config.forward_client_cert_details"
    );
    assert!(err.message.contains("SANITIZE"), "{err}");
}
