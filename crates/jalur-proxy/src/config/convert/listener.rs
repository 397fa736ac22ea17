//! Listener -> [`Listener`]: one socket, one filter chain, ending in an HTTP connection manager
//! or a TCP proxy.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener as XdsListener,
};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbacConfig;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::google::protobuf::Any;
use prost::Name;

use super::{ads_source, decode, reject_if, socket_addr, timeout, type_name, At, Invalid, Res};
use crate::config::{
    HttpListener, HttpRbac, Listener, ListenerKind, RouteSource, ServerTls, TcpListener,
    WeightedCluster,
};
use crate::rbac::{RbacFilter, RemoteAddress};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const ROUTER: &str = "envoy.filters.http.router";
const FAULT: &str = "envoy.filters.http.fault";
const RBAC: &str = "envoy.filters.http.rbac";
const JWT_AUTHN: &str = crate::jwt::FILTER_NAME;
/// Listener filters that only inspect the first bytes for filter-chain matching: jalur looks at
/// the first byte itself when a listener has a TLS and a plaintext chain.
const INSPECTORS: [&str; 2] = [
    "envoy.filters.listener.tls_inspector",
    "envoy.filters.listener.http_inspector",
];
/// Envoy's tcp_proxy idle_timeout when unset.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

pub(super) fn listener(l: &XdsListener) -> Res<Listener> {
    reject_if(
        l.api_listener.is_some(),
        "api_listener",
        "API listeners are for proxyless gRPC clients",
    )?;
    let addr = socket_addr(l.address.as_ref()).at("address")?;
    reject_if(
        !l.additional_addresses.is_empty(),
        "additional_addresses",
        "only one address per listener is supported",
    )?;
    reject_if(
        l.listener_specifier.is_some(),
        "internal_listener",
        "internal listeners are not supported",
    )?;
    reject_if(
        l.udp_listener_config.is_some(),
        "udp_listener_config",
        "UDP listeners are not supported",
    )?;
    reject_if(
        l.use_original_dst.as_ref().is_some_and(|b| b.value),
        "use_original_dst",
        "original-destination redirection is not supported",
    )?;
    reject_if(
        l.bind_to_port.as_ref().is_some_and(|b| !b.value),
        "bind_to_port",
        "listeners that do not bind their own port are not supported",
    )?;
    reject_if(
        l.fcds_config.is_some(),
        "fcds_config",
        "filter chain discovery is not supported",
    )?;
    reject_if(
        l.filter_chain_matcher.is_some(),
        "filter_chain_matcher",
        "filter chain matching is not supported; use one filter chain",
    )?;
    for (i, f) in l.listener_filters.iter().enumerate() {
        reject_if(
            !INSPECTORS.contains(&f.name.as_str()),
            &format!("listener_filters[{i}]"),
            &format!("listener filter \"{}\" is not supported", f.name),
        )?;
    }
    let (kind, tls, plaintext_too, network_rbac) = filter_chains(l)?;
    Ok(Listener {
        name: l.name.clone(),
        addr,
        kind,
        tls,
        plaintext_too,
        network_rbac,
    })
}

/// Which connections a filter chain takes: Envoy's `filter_chain_match.transport_protocol`, as
/// the tls_inspector sets it (`tls` for a TLS ClientHello, `raw_buffer` for anything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    Any,
    Tls,
    Plaintext,
}

type Chain = (Takes, Terminal, Option<ServerTls>, String);

/// A chain's network filters: its network RBAC filters, then the one that ends it.
type Terminal = (ListenerKind, Vec<RbacFilter>);

/// The filter chains, at most one per kind of connection (TLS, plaintext, either) and all ending
/// in the same network filter: a sidecar's inbound listener under PERMISSIVE is a TLS chain and
/// a plaintext one, under STRICT the TLS chain alone.
fn filter_chains(l: &XdsListener) -> Res<(ListenerKind, Option<ServerTls>, bool, Vec<RbacFilter>)> {
    if super::sni::by_server_name(l) {
        let (routes, rbac) = super::sni::routes(l)?;
        return Ok((ListenerKind::Sni(routes), None, false, rbac));
    }
    let mut chains: Vec<Chain> = Vec::new();
    let all = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c, format!("filter_chains[{i}]")))
        .chain(
            l.default_filter_chain
                .as_ref()
                .map(|c| (c, "default_filter_chain".to_string())),
        );
    for (chain, path) in all {
        let takes = if path == "default_filter_chain" {
            Takes::Any
        } else {
            chain_match(chain.filter_chain_match.as_ref()).at(&path)?
        };
        let (kind, tls) = filter_chain(chain).at(&path)?;
        match (takes, &tls) {
            (Takes::Tls, None) => return Err(Invalid::new(
                format!("{path}.transport_socket"),
                "a chain for TLS connections must terminate TLS (TLS passthrough is by server_names only)",
            )),
            (Takes::Plaintext, Some(_)) => {
                return Err(Invalid::new(
                    format!("{path}.transport_socket"),
                    "a chain for raw_buffer (plaintext) connections cannot terminate TLS",
                ))
            }
            _ => {}
        }
        if let Some(other) = chains.iter().find(|c| c.0 == takes) {
            return Err(Invalid::new(
                format!("{path}.filter_chain_match"),
                format!("matches the same connections as {}", other.3),
            ));
        }
        chains.push((takes, kind, tls, path));
    }
    let pick = |first: Takes| {
        chains
            .iter()
            .find(|c| c.0 == first)
            .or_else(|| chains.iter().find(|c| c.0 == Takes::Any))
    };
    let (on_tls, on_plain) = (pick(Takes::Tls), pick(Takes::Plaintext));
    let Some(primary) = on_tls.or(on_plain) else {
        return Err(Invalid::new("filter_chains", "a filter chain is required"));
    };
    for c in &chains {
        reject_if(
            c.1 != primary.1,
            &format!("{}.filters", c.3),
            &format!(
                "differs from the network filters of {}: jalur proxy runs one set of network filters per listener; its chains may differ only in TLS",
                primary.3
            ),
        )?;
    }
    let tls = on_tls.and_then(|c| c.2.clone());
    let plaintext_too = on_plain.is_some_and(|c| c.2.is_none());
    let (kind, rbac) = primary.1.clone();
    Ok((kind, tls, plaintext_too, rbac))
}

/// A chain's match: empty, or only `transport_protocol` (`tls` / `raw_buffer`).
fn chain_match(m: Option<&FilterChainMatch>) -> Res<Takes> {
    let Some(m) = m else { return Ok(Takes::Any) };
    let rest = FilterChainMatch {
        transport_protocol: String::new(),
        ..m.clone()
    };
    reject_if(
        rest != FilterChainMatch::default(),
        "filter_chain_match",
        "only transport_protocol (tls or raw_buffer) is supported in filter_chain_match",
    )?;
    match m.transport_protocol.as_str() {
        "" => Ok(Takes::Any),
        "tls" => Ok(Takes::Tls),
        "raw_buffer" => Ok(Takes::Plaintext),
        other => Err(Invalid::new(
            "filter_chain_match.transport_protocol",
            format!("\"{other}\" is not a transport protocol (tls or raw_buffer)"),
        )),
    }
}

#[allow(deprecated)] // use_proxy_proto: still honoured by Envoy, so still refused.
pub(super) fn filter_chain(chain: &FilterChain) -> Res<(Terminal, Option<ServerTls>)> {
    let tls = super::tls::downstream(chain.transport_socket.as_ref()).at("transport_socket")?;
    reject_if(
        chain.use_proxy_proto.as_ref().is_some_and(|b| b.value),
        "use_proxy_proto",
        "the PROXY protocol is not supported",
    )?;
    let Some((last, before)) = chain.filters.split_last() else {
        return Err(Invalid::new(
            "filters",
            "a network filter (http_connection_manager or tcp_proxy) is required",
        ));
    };
    let mut rbac = Vec::with_capacity(before.len());
    for (i, f) in before.iter().enumerate() {
        let at = format!("filters[{i}]");
        let any = typed(f).at(&at)?;
        if type_name(any) != NetworkRbac::full_name() {
            return Err(Invalid::new(at, format!(
                "network filter \"{}\" is not supported: the chain must be network RBAC filters, then one http_connection_manager or tcp_proxy",
                f.name
            )));
        }
        rbac.push(super::rbac::network_filter(any).at(format!("{at}.typed_config"))?);
    }
    let kind = network_filter(last).at(format!("filters[{}]", before.len()))?;
    Ok(((kind, rbac), tls))
}

fn typed(f: &Filter) -> Res<&Any> {
    match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => Ok(any),
        Some(filter::ConfigType::ConfigDiscovery(_)) => Err(Invalid::new(
            "config_discovery",
            "filter config discovery is not supported",
        )),
        None => Err(Invalid::new(
            "typed_config",
            format!("a typed_config is required for \"{}\"", f.name),
        )),
    }
}

fn network_filter(f: &Filter) -> Res<ListenerKind> {
    typed_network_filter(&f.name, typed(f)?).at("typed_config")
}

/// Envoy picks the extension by the config's type; the filter's name is only a label.
fn typed_network_filter(name: &str, any: &Any) -> Res<ListenerKind> {
    if type_name(any) == HttpConnectionManager::full_name() {
        Ok(ListenerKind::Http(http(&decode(any)?)?))
    } else if type_name(any) == TcpProxy::full_name() {
        Ok(ListenerKind::Tcp(tcp(&decode(any)?)?))
    } else {
        Err(Invalid::here(format!(
            "network filter \"{name}\" ({}) is not supported: use {HCM} or {TCP_PROXY}",
            any.type_url
        )))
    }
}

fn http(hcm: &HttpConnectionManager) -> Res<HttpListener> {
    reject_if(
        hcm.codec_type == CodecType::Http3 as i32,
        "codec_type",
        "HTTP/3 is not supported",
    )?;
    // SANITIZE (Envoy's default, what jalur control sends): a client's x-forwarded-client-cert
    // is removed and none is set. The other modes would forward or write one; refused by name.
    reject_if(
        hcm.forward_client_cert_details != 0,
        "forward_client_cert_details",
        "only SANITIZE is supported (x-forwarded-client-cert is removed from every request)",
    )?;
    let routes = match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            ads_source(rds.config_source.as_ref()).at("rds.config_source")?;
            reject_if(
                rds.route_config_name.is_empty(),
                "rds.route_config_name",
                "a route_config_name is required",
            )?;
            RouteSource::Rds(rds.route_config_name.clone())
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(super::route::route_table(rc).at("route_config")?))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            return Err(Invalid::new(
                "scoped_routes",
                "scoped routes are not supported; use rds or route_config",
            ))
        }
        None => {
            return Err(Invalid::new(
                "route_specifier",
                "rds or route_config is required",
            ))
        }
    };
    let HttpFilters {
        faults,
        rbac: filters,
        after_fault,
        jwt,
    } = http_filters(&hcm.http_filters, &hcm.stat_prefix)?;
    Ok(HttpListener {
        stat_prefix: hcm.stat_prefix.clone(),
        routes,
        faults,
        rbac: HttpRbac {
            filters,
            after_fault,
            remote: RemoteAddress {
                use_remote_address: hcm.use_remote_address.as_ref().is_some_and(|b| b.value),
                xff_num_trusted_hops: hcm.xff_num_trusted_hops,
            },
        },
        jwt: jwt.map(Arc::new),
        normalize_path: hcm.normalize_path.as_ref().is_some_and(|b| b.value),
    })
}

/// What an HCM's HTTP filters ask of jalur besides routing.
struct HttpFilters {
    /// The fault filter is active.
    faults: bool,
    rbac: Vec<RbacFilter>,
    /// The fault filter comes before the RBAC filters.
    after_fault: bool,
    /// jwt_authn, which must come before every RBAC filter (RBAC reads what it verified).
    jwt: Option<crate::jwt::JwtAuthn>,
}

/// The HTTP filter chain: optional fault, jwt_authn and RBAC filters, then the router, last.
fn http_filters(filters: &[HttpFilter], hcm_prefix: &str) -> Res<HttpFilters> {
    // Envoy adds the router when no HTTP filter is configured.
    let Some(last) = filters.len().checked_sub(1) else {
        return Ok(HttpFilters {
            faults: false,
            rbac: Vec::new(),
            after_fault: false,
            jwt: None,
        });
    };
    let mut faults = false;
    let mut rbac = Vec::new();
    let mut rbac_after_fault = true;
    let mut jwt = None;
    for (i, f) in filters.iter().enumerate() {
        let at = format!("http_filters[{i}]");
        match http_filter(f).at(&at)? {
            HttpFilterKind::Router if i != last => {
                return Err(Invalid::new(at, "the router must be the last HTTP filter"))
            }
            HttpFilterKind::Router => {}
            _ if i == last => {
                return Err(Invalid::new(
                    at,
                    format!(
                        "the last HTTP filter must be the router ({ROUTER}), not \"{}\"",
                        f.name
                    ),
                ))
            }
            HttpFilterKind::Fault => faults = true,
            HttpFilterKind::Rbac(any) => {
                rbac_after_fault &= faults;
                rbac.push(
                    super::rbac::http_filter(any, hcm_prefix).at(format!("{at}.typed_config"))?,
                );
            }
            HttpFilterKind::Jwt(any) => {
                // jalur checks the token where the RBAC filters are: a jwt_authn after one of
                // them (RBAC judging before the token is verified) or a second one is refused.
                reject_if(
                    !rbac.is_empty() || jwt.is_some(),
                    &at,
                    "jwt_authn must come once, before every RBAC filter",
                )?;
                jwt = Some(super::jwt::jwt_authn(any).at(format!("{at}.typed_config"))?);
            }
            HttpFilterKind::Skipped => {}
        }
    }
    Ok(HttpFilters {
        faults,
        rbac,
        after_fault: rbac_after_fault,
        jwt,
    })
}

enum HttpFilterKind<'a> {
    Router,
    Fault,
    Rbac(&'a Any),
    Jwt(&'a Any),
    /// Optional or disabled filters jalur does not run.
    Skipped,
}

fn http_filter(f: &HttpFilter) -> Res<HttpFilterKind<'_>> {
    let any: Option<&Any> = match &f.config_type {
        Some(http_filter::ConfigType::TypedConfig(any)) => Some(any),
        Some(http_filter::ConfigType::ConfigDiscovery(_)) if f.is_optional => {
            return Ok(HttpFilterKind::Skipped)
        }
        Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
            return Err(Invalid::new(
                "config_discovery",
                "filter config discovery is not supported",
            ))
        }
        None => None,
    };
    let kind = any.map(type_name).unwrap_or(f.name.as_str());
    if kind == Router::full_name() || (any.is_none() && kind == ROUTER) {
        if let Some(any) = any {
            decode::<Router>(any).at("typed_config")?;
        }
        reject_if(f.disabled, "disabled", "the router cannot be disabled")?;
        return Ok(HttpFilterKind::Router);
    }
    if kind == HttpFault::full_name() || (any.is_none() && kind == FAULT) {
        if let Some(any) = any {
            let fault: HttpFault = decode(any).at("typed_config")?;
            reject_if(
                fault.delay.is_some() || fault.abort.is_some(),
                "typed_config",
                "listener-wide fault delay/abort is not supported; set faults per route (typed_per_filter_config)",
            )?;
        }
        // A disabled fault filter is only enabled by per-route config, which jalur does not
        // track per filter: treat it as absent.
        return Ok(if f.disabled {
            HttpFilterKind::Skipped
        } else {
            HttpFilterKind::Fault
        });
    }
    if kind == JwtAuthentication::full_name() || (any.is_none() && kind == JWT_AUTHN) {
        reject_if(
            f.disabled,
            "disabled",
            "a disabled jwt_authn filter (enabled per route) is not supported",
        )?;
        let Some(any) = any else {
            return Err(Invalid::new(
                "typed_config",
                "a jwt_authn filter needs its typed_config",
            ));
        };
        return Ok(HttpFilterKind::Jwt(any));
    }
    if kind == HttpRbacConfig::full_name() || (any.is_none() && kind == RBAC) {
        reject_if(
            f.disabled,
            "disabled",
            "a disabled RBAC filter (enabled per route) is not supported",
        )?;
        let Some(any) = any else {
            return Err(Invalid::new(
                "typed_config",
                "an RBAC filter needs its typed_config",
            ));
        };
        return Ok(HttpFilterKind::Rbac(any));
    }
    if f.is_optional || f.disabled {
        return Ok(HttpFilterKind::Skipped);
    }
    let what = any
        .map(|a| a.type_url.as_str())
        .unwrap_or("no typed_config");
    Err(Invalid::here(format!(
        "HTTP filter \"{}\" ({what}) is not supported (only {FAULT}, {RBAC} and {ROUTER}; mark others is_optional)",
        f.name
    )))
}

fn tcp(proxy: &TcpProxy) -> Res<TcpListener> {
    reject_if(
        proxy.on_demand.is_some(),
        "on_demand",
        "on-demand cluster discovery is not supported",
    )?;
    reject_if(
        proxy.tunneling_config.is_some(),
        "tunneling_config",
        "tunneling over HTTP is not supported",
    )?;
    reject_if(
        proxy.metadata_match.is_some(),
        "metadata_match",
        "subset load balancing is not supported",
    )?;
    let targets = match &proxy.cluster_specifier {
        Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => {
            reject_if(c.is_empty(), "cluster", "a cluster name is required")?;
            vec![target(c, 1)]
        }
        Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
            tcp_weighted(w).at("weighted_clusters")?
        }
        None => {
            return Err(Invalid::new(
                "cluster_specifier",
                "cluster or weighted_clusters is required",
            ))
        }
    };
    let idle_timeout =
        timeout(proxy.idle_timeout.as_ref(), Some(TCP_IDLE_TIMEOUT)).at("idle_timeout")?;
    Ok(TcpListener {
        stat_prefix: proxy.stat_prefix.clone(),
        targets,
        idle_timeout,
    })
}

fn tcp_weighted(w: &tcp_proxy::WeightedCluster) -> Res<Vec<WeightedCluster>> {
    reject_if(
        w.clusters.is_empty(),
        "clusters",
        "at least one cluster is required",
    )?;
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(w.clusters.len());
    for (i, c) in w.clusters.iter().enumerate() {
        let at = |f: &str| format!("clusters[{i}].{f}");
        reject_if(c.name.is_empty(), &at("name"), "a cluster name is required")?;
        reject_if(c.weight == 0, &at("weight"), "weight must be at least 1")?;
        reject_if(
            c.metadata_match.is_some(),
            &at("metadata_match"),
            "subset load balancing is not supported",
        )?;
        total += u64::from(c.weight);
        reject_if(
            total > u64::from(u32::MAX),
            &at("weight"),
            "the sum of weights exceeds 4294967295",
        )?;
        out.push(target(&c.name, c.weight));
    }
    Ok(out)
}

fn target(cluster: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster.to_string(),
        weight,
        request_headers: Default::default(),
        response_headers: Default::default(),
    }
}
