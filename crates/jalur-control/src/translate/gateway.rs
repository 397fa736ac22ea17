//! A gateway's listeners from the Gateway resources selecting it: HTTP servers route the
//! VirtualServices bound to them, TCP servers proxy to a VirtualService's tcp route, and
//! servers that pass TLS through untouched (`tls.mode: PASSTHROUGH`): the listener reads
//! the SNI of the ClientHello (tls_inspector) and picks a filter chain by `server_names`, one
//! chain per set of `sniHosts` of the VirtualService `tls` routes bound to the gateway, each a
//! tcp_proxy to the route's destinations. No chain matches an SNI nobody routes: Envoy (and
//! jalur proxy) then close the connection.

use envoy_types::pb::envoy::config::core::v3::{TrafficDirection, TransportSocket};
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::util::pack_any;
use jalur_model::host;
use jalur_model::networking::{Gateway, Server, ServerTlsMode, TlsMatchAttributes, VirtualService};
use jalur_model::Resource;

use super::listener::{http_listener, rds, tcp_listener, Built};
use super::route::{destination_cluster, routes};
use super::Ctx;
use crate::workload::Protocol;

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Gateways: a listener per Gateway server port; HTTP servers route the VirtualServices bound to
/// the Gateway, TCP servers proxy to the VirtualService's tcp route.
pub fn gateway(ctx: &Ctx) -> Built {
    let mut listeners = Vec::new();
    let mut route_configs = Vec::new();
    let selected: Vec<(&Resource, &Gateway)> = ctx
        .mesh
        .config
        .gateways()
        .filter(|(_, g)| {
            !g.selector.is_empty()
                && g.selector
                    .iter()
                    .all(|(k, v)| ctx.client.labels.get(k) == Some(v))
        })
        .collect();
    // Per port: its protocol and, for an HTTPS server terminating TLS (SIMPLE, MUTUAL,
    // ISTIO_MUTUAL), the TLS context.
    let mut ports: Vec<(u32, Protocol, Option<TransportSocket>)> = Vec::new();
    for (_, g) in &selected {
        for s in &g.servers {
            let tls = s.tls.as_ref().and_then(|t| super::tls::terminating(ctx, t));
            let protocol = match Protocol::parse(s.port.protocol.as_deref(), s.port.name.as_deref())
            {
                Protocol::Https if tls.is_some() => Protocol::Http,
                p => p,
            };
            if !ports.iter().any(|(p, _, _)| *p == s.port.number) {
                ports.push((s.port.number, protocol, tls));
            }
        }
    }
    for (port, protocol, tls) in ports {
        let names: Vec<String> = selected
            .iter()
            .filter(|(_, g)| g.servers.iter().any(|s| s.port.number == port))
            .map(|(r, _)| format!("{}/{}", r.meta.namespace, r.meta.name))
            .collect();
        let gw_ctx = Ctx {
            gateway_names: names.clone(),
            gateway_port: Some(port),
            ..Ctx::new(ctx.mesh, ctx.client)
        };
        let bound: Vec<(&Resource, &VirtualService)> = ctx
            .mesh
            .config
            .virtual_services()
            .filter(|(r, vs)| {
                vs.gateways
                    .iter()
                    .any(|g| names.contains(&host::qualify_gateway(g, &r.meta.namespace)))
            })
            .collect();
        let name = format!("0.0.0.0_{port}");
        let bind = ctx.client.bind_port(port);
        if is_passthrough(&selected, port) {
            listeners.extend(passthrough(&gw_ctx, &selected, &bound, &name, bind));
            continue;
        }
        if protocol.is_http() {
            let route_name = format!("http.{port}");
            let mut listener = http_listener(
                ctx,
                &name,
                bind,
                rds(&route_name),
                TrafficDirection::Outbound,
                super::authz::http_filters(ctx, port),
                true,
            );
            if let Some(chain) = listener.filter_chains.first_mut() {
                chain.transport_socket = tls;
            }
            listeners.push(listener);
            let server_hosts = server_hosts(&selected, port, |_| true);
            let vhosts = gateway_vhosts(&gw_ctx, &bound, &server_hosts, port);
            route_configs.push(RouteConfiguration {
                name: route_name,
                virtual_hosts: vhosts,
                ..RouteConfiguration::default()
            });
        } else if let Some((r, vs)) = bound.iter().find(|(_, vs)| !vs.tcp.is_empty()) {
            let targets: Vec<(String, u32)> = vs.tcp[0]
                .route
                .iter()
                .map(|d| {
                    (
                        destination_cluster(&gw_ctx, &d.destination, &r.meta.namespace, port),
                        d.weight.unwrap_or(100),
                    )
                })
                .collect();
            let rbac = super::authz::network_filters(ctx, port);
            listeners.push(tcp_listener(ctx, &name, bind, &targets, rbac));
        }
    }
    (listeners, route_configs, Vec::new())
}

/// The hosts of the selected gateways' servers on `port` that `keep` admits, each as
/// [`server_host`] reads it.
fn server_hosts(
    selected: &[(&Resource, &Gateway)],
    port: u32,
    keep: impl Fn(&Server) -> bool,
) -> Vec<(String, String)> {
    selected
        .iter()
        .flat_map(|(r, g)| {
            g.servers
                .iter()
                .filter(|s| s.port.number == port && keep(s))
                .flat_map(move |s| {
                    s.hosts
                        .iter()
                        .map(move |h| server_host(h, &r.meta.namespace))
                })
        })
        .collect()
}

/// A server host `ns/host` (or `./host`, `*/host`, bare `host` = any namespace) as
/// (namespace or "*", host pattern).
fn server_host(h: &str, gateway_ns: &str) -> (String, String) {
    match h.split_once('/') {
        Some((".", host)) => (gateway_ns.to_string(), host.to_string()),
        Some((ns, host)) => (ns.to_string(), host.to_string()),
        None => ("*".to_string(), h.to_string()),
    }
}

/// Virtual hosts of one gateway HTTP port: every host of every bound VirtualService with HTTP
/// routes that one of the port's servers exposes. The first VirtualService to claim a host wins
/// (a second would repeat a domain, which Envoy rejects; `jalur analyze` reports it as JAL0104).
fn gateway_vhosts(
    ctx: &Ctx,
    bound: &[(&Resource, &VirtualService)],
    server_hosts: &[(String, String)],
    port: u32,
) -> Vec<VirtualHost> {
    let mut vhosts: Vec<VirtualHost> = Vec::new();
    for (r, vs) in bound.iter().filter(|(_, vs)| !vs.http.is_empty()) {
        let ns = &r.meta.namespace;
        for h in &vs.hosts {
            let domain = if h.contains('.') || h == "*" {
                h.clone()
            } else {
                host::qualify(h, ns)
            };
            let exposed = server_hosts.iter().any(|(sns, pattern)| {
                (sns == "*" || sns == ns)
                    && (host::matches(pattern, &domain) || host::matches(&domain, pattern))
            });
            let name = format!("{domain}:{port}");
            if !exposed || vhosts.iter().any(|v| v.name == name) {
                continue;
            }
            let routes = routes(ctx, Some((*r, *vs)), &domain, port);
            if routes.is_empty() {
                continue;
            }
            let domains = if domain == "*" {
                vec!["*".into()]
            } else {
                vec![domain.clone(), name.clone()]
            };
            vhosts.push(VirtualHost {
                name,
                domains,
                routes,
                ..VirtualHost::default()
            });
        }
    }
    vhosts
}

/// Whether the first server of the selected gateways on `port` passes TLS through (the first
/// server of a port decides its kind, as for every other gateway port).
fn is_passthrough(selected: &[(&Resource, &Gateway)], port: u32) -> bool {
    selected
        .iter()
        .flat_map(|(_, g)| &g.servers)
        .find(|s| s.port.number == port)
        .and_then(|s| s.tls.as_ref())
        .is_some_and(|t| t.mode == Some(ServerTlsMode::Passthrough))
}

/// The listener of a PASSTHROUGH port: `ctx` carries the port's gateway names, `bound` the
/// VirtualServices bound to them. `None` when no tls route reaches the port (Envoy refuses a
/// listener without filter chains; `jalur analyze` warns about such a server).
fn passthrough(
    ctx: &Ctx,
    selected: &[(&Resource, &Gateway)],
    bound: &[(&Resource, &VirtualService)],
    name: &str,
    bind: u32,
) -> Option<Listener> {
    let port = ctx.gateway_port?;
    let server_hosts = server_hosts(selected, port, |s| {
        s.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::Passthrough)
    });
    let mut chains: Vec<FilterChain> = Vec::new();
    // Every SNI name (and the catch-all, "") at most once: Envoy refuses two chains with the
    // same match, so the first route in config order to claim a name keeps it. Names a route
    // states itself are claimed before names it only gets by narrowing to a server's host, so
    // a route for `a.example.com` keeps `a.example.com` against an earlier route for `*` under
    // a server for `a.example.com` and `b.example.com` (Envoy's most specific match decided it
    // before the narrowing; review finding).
    let mut claimed: Vec<String> = Vec::new();
    for stated in [true, false] {
        for (r, vs) in bound {
            let ns = &r.meta.namespace;
            for route in vs.tls.iter().filter(|route| !route.route.is_empty()) {
                for m in route.matches.iter().filter(|m| applies(ctx, m, ns, port)) {
                    let mut names: Vec<String> = Vec::new();
                    for (sni, as_stated) in m
                        .sni_hosts
                        .iter()
                        .flat_map(|sni| exposed(&server_hosts, ns, sni))
                    {
                        if as_stated == stated && !claimed.contains(&sni) && !names.contains(&sni) {
                            names.push(sni);
                        }
                    }
                    if names.is_empty() {
                        continue;
                    }
                    claimed.extend(names.iter().cloned());
                    let targets: Vec<(String, u32)> = route
                        .route
                        .iter()
                        .map(|d| {
                            let cluster = destination_cluster(ctx, &d.destination, ns, port);
                            (cluster, d.weight.unwrap_or(100))
                        })
                        .collect();
                    chains.push(chain(ctx, name, bind, &targets, names));
                }
            }
        }
    }
    if chains.is_empty() {
        return None;
    }
    let mut listener = tcp_listener(ctx, name, bind, &[], Vec::new());
    listener.filter_chains = chains;
    listener.listener_filters = vec![ListenerFilter {
        name: TLS_INSPECTOR.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }];
    Some(listener)
}

/// A tls match applies to this gateway port when its `port` (if any) is the port and its
/// `gateways` (if any) name one of the port's gateways.
fn applies(ctx: &Ctx, m: &TlsMatchAttributes, ns: &str, port: u32) -> bool {
    m.port.is_none_or(|p| p == port)
        && (m.gateways.is_empty()
            || m.gateways
                .iter()
                .any(|g| ctx.gateway_names.contains(&host::qualify_gateway(g, ns))))
}

/// The SNI names a route's `sni` takes on the port, each with whether it is the name as the
/// route states it: where it is within a PASSTHROUGH server's hosts (visible to namespace
/// `ns`), itself (stated); where a server's host is narrower, that host (`*.example.com` under a
/// server for `a.example.com` takes `a.example.com` only; narrowed); "" (any connection) only
/// when both are `*`. The gateway's hosts bound what passes through it: a route cannot widen
/// them.
fn exposed(server_hosts: &[(String, String)], ns: &str, sni: &str) -> Vec<(String, bool)> {
    server_hosts
        .iter()
        .filter(|(sns, _)| sns == "*" || sns == ns)
        .filter_map(|(_, pattern)| {
            let (name, stated) = if host::matches(pattern, sni) {
                (sni, true)
            } else if host::matches(sni, pattern) {
                (pattern.as_str(), false)
            } else {
                return None;
            };
            let name = if name == "*" { "" } else { name };
            Some((name.to_string(), stated))
        })
        .collect()
}

/// One chain: the port's network RBAC filters (AuthorizationPolicy selecting the gateway), then
/// a tcp_proxy to `targets`, taken by the connections whose SNI is one of `names` ("" = any
/// connection no other chain takes).
fn chain(
    ctx: &Ctx,
    name: &str,
    bind: u32,
    targets: &[(String, u32)],
    names: Vec<String>,
) -> FilterChain {
    let authz = super::authz::network_filters(ctx, ctx.gateway_port.unwrap_or_default());
    let mut chain = tcp_listener(ctx, name, bind, targets, authz)
        .filter_chains
        .swap_remove(0);
    // A catch-all among the names takes every connection anyway: its chain matches on nothing.
    if !names.iter().any(String::is_empty) {
        chain.filter_chain_match = Some(FilterChainMatch {
            server_names: names,
            ..FilterChainMatch::default()
        });
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::exposed;

    fn servers(hosts: &[(&str, &str)]) -> Vec<(String, String)> {
        hosts
            .iter()
            .map(|(ns, h)| (ns.to_string(), h.to_string()))
            .collect()
    }

    /// `(name, stated)` as `exposed` returns them.
    fn n(name: &str, stated: bool) -> (String, bool) {
        (name.to_string(), stated)
    }

    #[test]
    fn a_route_cannot_widen_the_gateway_hosts() {
        let narrow = servers(&[("*", "a.example.com")]);
        let a = || n("a.example.com", false);
        assert_eq!(exposed(&narrow, "web", "*"), [a()]);
        assert_eq!(exposed(&narrow, "web", "*.example.com"), [a()]);
        assert_eq!(
            exposed(&narrow, "web", "a.example.com"),
            [n("a.example.com", true)]
        );
        assert!(exposed(&narrow, "web", "b.example.com").is_empty());
        let wild = servers(&[("*", "*.example.com")]);
        assert_eq!(
            exposed(&wild, "web", "b.example.com"),
            [n("b.example.com", true)]
        );
        assert_eq!(exposed(&wild, "web", "*"), [n("*.example.com", false)]);
        // Only a gateway open to every host lets a route take every connection.
        assert_eq!(exposed(&servers(&[("*", "*")]), "web", "*"), [n("", true)]);
        // A server exported to one namespace is not seen by another's routes.
        assert!(exposed(&servers(&[("shop", "*")]), "web", "a.example.com").is_empty());
    }
}
