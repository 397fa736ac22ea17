//! Readable JSON for the xDS resources jalur emits: what `/debug/config_dump` shows and what the
//! golden translation tests compare. It renders the fields translation sets (not Envoy's whole
//! schema); anything it cannot decode shows its type URL and size.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route::Action, route_action::ClusterSpecifier,
    route_match::PathSpecifier, HeaderMatcher, RetryPolicy, Route, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{fault_abort, HttpFault};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{Any, Duration};
use jalur_xds::{ClientSnapshot, TypeUrl};
use prost::{Message, Name};
use serde_json::{json, Map, Value};

/// `{ "cds": { name: {...} }, "eds": ..., "lds": ..., "rds": ... }`.
pub fn snapshot(snap: &ClientSnapshot) -> Value {
    let mut out = Map::new();
    for (t, resources) in &snap.resources {
        let rendered: Map<String, Value> = resources
            .iter()
            .map(|(name, r)| (name.clone(), resource(*t, &r.body)))
            .collect();
        out.insert(t.short().to_string(), Value::Object(rendered));
    }
    Value::Object(out)
}

pub fn resource(t: TypeUrl, any: &Any) -> Value {
    let rendered = match t {
        TypeUrl::Cluster => decode::<Cluster>(any).map(|c| render_cluster(&c)),
        TypeUrl::ClusterLoadAssignment => {
            decode::<ClusterLoadAssignment>(any).map(|c| render_cla(&c))
        }
        TypeUrl::Listener => decode::<Listener>(any).map(|l| render_listener(&l)),
        TypeUrl::RouteConfiguration => decode::<RouteConfiguration>(any).map(|r| render_rc(&r)),
        TypeUrl::Secret => None,
    };
    rendered.unwrap_or_else(|| json!({ "@type": any.type_url, "bytes": any.value.len() }))
}

fn decode<M: Message + Name + Default>(any: &Any) -> Option<M> {
    (any.type_url == M::type_url())
        .then(|| M::decode(any.value.as_slice()).ok())
        .flatten()
}

fn dur(d: &Option<Duration>) -> Value {
    match d {
        None => Value::Null,
        Some(d) => json!(format!("{}s", d.seconds as f64 + f64::from(d.nanos) / 1e9)),
    }
}

fn addr(a: &Option<Address>) -> Value {
    match a.as_ref().and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => {
            let port = match s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            json!(format!("{}:{port}", s.address))
        }
        _ => Value::Null,
    }
}

fn prune(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !(x.is_null() || x == &json!([]) || x == &json!({}) || x == &json!(false)));
    }
    v
}

fn render_cluster(c: &Cluster) -> Value {
    let kind = match c.cluster_discovery_type {
        Some(cluster::ClusterDiscoveryType::Type(t)) => cluster::DiscoveryType::try_from(t)
            .map(|t| t.as_str_name().to_string())
            .unwrap_or_default(),
        Some(cluster::ClusterDiscoveryType::ClusterType(ref custom)) => custom.name.clone(),
        None => String::new(),
    };
    let lb = cluster::LbPolicy::try_from(c.lb_policy)
        .map(|p| p.as_str_name())
        .unwrap_or("?");
    let cb = c.circuit_breakers.as_ref().and_then(|cb| cb.thresholds.first()).map(|t| {
        let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>| x.as_ref().map(|x| x.value);
        let budget = t.retry_budget.as_ref().map(|b| {
            json!({ "percent": b.budget_percent.as_ref().map(|p| p.value), "min_concurrency": v(&b.min_retry_concurrency) })
        });
        prune(json!({ "max_connections": v(&t.max_connections), "max_pending_requests": v(&t.max_pending_requests),
                "max_requests": v(&t.max_requests), "max_retries": v(&t.max_retries), "retry_budget": budget }))
    });
    let od = c.outlier_detection.as_ref().map(|o| {
        let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>| x.as_ref().map(|x| x.value);
        prune(json!({ "consecutive_5xx": v(&o.consecutive_5xx), "consecutive_gateway_failure": v(&o.consecutive_gateway_failure),
                "interval": dur(&o.interval), "base_ejection_time": dur(&o.base_ejection_time),
                "max_ejection_percent": v(&o.max_ejection_percent) }))
    });
    let protocol = c.typed_extension_protocol_options.values().find_map(|any| {
        let opts = decode::<HttpProtocolOptions>(any)?;
        Some(match opts.upstream_protocol_options? {
            UpstreamProtocolOptions::ExplicitHttpConfig(e) => match e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => "http2",
                _ => "http1",
            },
            UpstreamProtocolOptions::UseDownstreamProtocolConfig(_) => "downstream",
            _ => "auto",
        })
    });
    let matches: Vec<Value> = c
        .transport_socket_matches
        .iter()
        .map(|m| {
            let on = m.r#match.as_ref().map(tls::struct_json).unwrap_or(json!({}));
            json!({ "name": m.name, "match": on, "socket": tls::socket(m.transport_socket.as_ref()) })
        })
        .collect();
    prune(json!({
        "type": kind, "lb_policy": lb, "connect_timeout": dur(&c.connect_timeout),
        "circuit_breakers": cb, "outlier_detection": od, "upstream_protocol": protocol,
        "endpoints": c.load_assignment.as_ref().map(render_cla).map(|v| v["endpoints"].clone()),
        "transport_socket": c.transport_socket.as_ref().map(|t| tls::socket(Some(t))),
        "transport_socket_matches": matches,
    }))
}

fn render_cla(c: &ClusterLoadAssignment) -> Value {
    let eps: Vec<Value> = c
        .endpoints
        .iter()
        .flat_map(|l| {
            let loc = l.locality.as_ref().map(|l| format!("{}/{}/{}", l.region, l.zone, l.sub_zone)).unwrap_or_default();
            l.lb_endpoints.iter().map(move |e| {
                let a = match &e.host_identifier {
                    Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => addr(&ep.address),
                    _ => Value::Null,
                };
                let mut v = json!({ "address": a, "locality": loc, "weight": e.load_balancing_weight.as_ref().map(|w| w.value),
                        "health": if e.health_status == 1 { "HEALTHY" } else { "UNHEALTHY" } });
                if let Some(md) = e.metadata.as_ref().filter(|m| !m.filter_metadata.is_empty()) {
                    let md: Map<String, Value> =
                        md.filter_metadata.iter().map(|(k, s)| (k.clone(), tls::struct_json(s))).collect();
                    v["metadata"] = Value::Object(md);
                }
                v
            })
        })
        .collect();
    json!({ "endpoints": eps })
}

fn render_listener(l: &Listener) -> Value {
    let filters: Vec<Value> = l
        .filter_chains
        .iter()
        .flat_map(|fc| fc.filters.iter())
        .map(|f| match &f.config_type {
            Some(filter::ConfigType::TypedConfig(any)) => network_filter(any),
            _ => json!(f.name),
        })
        .collect();
    let api = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .map(network_filter);
    // Chains are shown one by one only when they differ by match or TLS; a single plain chain
    // renders as its filters alone.
    let (filters, chains): (Vec<Value>, Vec<Value>) = if l
        .filter_chains
        .iter()
        .any(|fc| fc.filter_chain_match.is_some() || fc.transport_socket.is_some())
    {
        (Vec::new(), l.filter_chains.iter().map(tls::chain).collect())
    } else {
        (filters, Vec::new())
    };
    let listener_filters: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
    prune(
        json!({ "address": addr(&l.address), "filters": filters, "api_listener": api,
                  "listener_filters": listener_filters, "filter_chains": chains }),
    )
}

fn network_filter(any: &Any) -> Value {
    if let Some(hcm) = decode::<HttpConnectionManager>(any) {
        let routes = match &hcm.route_specifier {
            Some(RouteSpecifier::Rds(r)) => json!({ "rds": r.route_config_name }),
            Some(RouteSpecifier::RouteConfig(rc)) => render_rc(rc),
            _ => Value::Null,
        };
        // A filter shows as its name; RBAC filters with their policies.
        let filters: Vec<Value> = hcm
            .http_filters
            .iter()
            .map(|f| match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => {
                    crate::translate::authz::render::filter(any)
                        .map_or_else(|| json!(f.name), |r| json!({ f.name.clone(): r }))
                }
                _ => json!(f.name),
            })
            .collect();
        let mut rendered =
            json!({ "stat_prefix": hcm.stat_prefix, "routes": routes, "http_filters": filters });
        // Shown where set: the edge (a gateway) takes the client from the connection.
        if hcm.use_remote_address.is_some_and(|b| b.value) {
            rendered["use_remote_address"] = json!(true);
        }
        return json!({ "http_connection_manager": rendered });
    }
    if let Some(rbac) = crate::translate::authz::render::filter(any) {
        return json!({ "rbac": rbac });
    }
    if let Some(tcp) = decode::<TcpProxy>(any) {
        let target = match &tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => json!(c),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                json!(w
                    .clusters
                    .iter()
                    .map(|c| json!({ "cluster": c.name, "weight": c.weight }))
                    .collect::<Vec<_>>())
            }
            None => Value::Null,
        };
        return json!({ "tcp_proxy": target });
    }
    json!({ "@type": any.type_url })
}

fn render_rc(rc: &RouteConfiguration) -> Value {
    let vhosts: Vec<Value> = rc
        .virtual_hosts
        .iter()
        .map(|vh| json!({ "name": vh.name, "domains": vh.domains, "routes": vh.routes.iter().map(render_route).collect::<Vec<_>>() }))
        .collect();
    json!({ "virtual_hosts": vhosts })
}

fn render_route(r: &Route) -> Value {
    let m = r.r#match.clone().unwrap_or_default();
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => json!({ "prefix": p }),
        Some(PathSpecifier::Path(p)) => json!({ "exact": p }),
        Some(PathSpecifier::SafeRegex(r)) => json!({ "regex": r.regex }),
        _ => Value::Null,
    };
    let headers: Vec<Value> = m.headers.iter().map(header).collect();
    let action = match &r.action {
        Some(Action::Route(a)) => {
            let target = match &a.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => json!(c),
                Some(ClusterSpecifier::WeightedClusters(w)) => json!(w
                    .clusters
                    .iter()
                    .map(|c| json!({ "cluster": c.name, "weight": c.weight.as_ref().map(|w| w.value) }))
                    .collect::<Vec<_>>()),
                _ => Value::Null,
            };
            let mirrors: Vec<Value> = a
                .request_mirror_policies
                .iter()
                .map(|m| json!({ "cluster": m.cluster, "ppm": m.runtime_fraction.as_ref().and_then(|f| f.default_value.as_ref()).map(|f| f.numerator) }))
                .collect();
            prune(json!({
                "to": target, "timeout": dur(&a.timeout), "retry": a.retry_policy.as_ref().map(retry),
                "prefix_rewrite": if a.prefix_rewrite.is_empty() { Value::Null } else { json!(a.prefix_rewrite) },
                "mirrors": mirrors, "hash_policies": a.hash_policy.len(),
            }))
        }
        Some(Action::Redirect(rd)) => {
            json!({ "redirect": { "host": rd.host_redirect, "code": rd.response_code } })
        }
        Some(Action::DirectResponse(d)) => json!({ "direct_response": d.status }),
        _ => Value::Null,
    };
    let fault = r
        .typed_per_filter_config
        .values()
        .find_map(decode::<HttpFault>)
        .map(|f| {
            let delay = f.delay.and_then(|d| match d.fault_delay_secifier {
                Some(fault_delay::FaultDelaySecifier::FixedDelay(fd)) => Some(dur(&Some(fd))),
                _ => None,
            });
            let abort = f.abort.and_then(|a| match a.error_type {
                Some(fault_abort::ErrorType::HttpStatus(s)) => Some(s),
                _ => None,
            });
            prune(json!({ "delay": delay, "abort": abort }))
        });
    prune(
        json!({ "name": r.name, "match": prune(json!({ "path": path, "headers": headers })), "action": action, "fault": fault,
                  "request_headers_to_add": r.request_headers_to_add.iter().filter_map(|h| h.header.as_ref().map(|h| format!("{}={}", h.key, h.value))).collect::<Vec<_>>() }),
    )
}

fn header(h: &HeaderMatcher) -> Value {
    let m = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(sm)) => string_match(sm),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => json!({ "present": p }),
        _ => Value::Null,
    };
    prune(json!({ "name": h.name, "match": m, "invert": h.invert_match }))
}

fn string_match(sm: &StringMatcher) -> Value {
    match &sm.match_pattern {
        Some(MatchPattern::Exact(s)) => json!({ "exact": s }),
        Some(MatchPattern::Prefix(s)) => json!({ "prefix": s }),
        Some(MatchPattern::SafeRegex(r)) => json!({ "regex": r.regex }),
        _ => Value::Null,
    }
}

fn retry(r: &RetryPolicy) -> Value {
    prune(
        json!({ "retry_on": r.retry_on, "num_retries": r.num_retries.as_ref().map(|n| n.value),
                  "per_try_timeout": dur(&r.per_try_timeout), "retriable_status_codes": r.retriable_status_codes }),
    )
}

mod tls;
