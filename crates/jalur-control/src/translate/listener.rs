//! Listeners and route tables per client kind: the sidecar's outbound (routing by Host) and
//! inbound listeners, and proxyless gRPC's API listeners (one per `host:port` it may resolve);
//! the listener builders that `gateway.rs` uses for a gateway's listeners too.

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    filter, ApiListener, Filter, FilterChain, Listener,
};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::{CodecType, RouteSpecifier},
    http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    tcp_proxy::{self, weighted_cluster::ClusterWeight},
    TcpProxy,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use jalur_model::host;
use jalur_model::networking::VirtualService;
use jalur_model::Resource;

use super::cluster::{cluster as build_cluster, load_assignment, Policy};
use super::route::{destination_cluster, routes, FAULT_FILTER};
use super::{ads_source, Ctx};
use crate::mesh::{Endpoint, Service};
use crate::workload::{Port, Protocol};

pub(super) type Built = (Vec<Listener>, Vec<RouteConfiguration>, Vec<Cluster>);

pub const OUTBOUND: &str = "outbound";
pub const INBOUND: &str = "inbound";
const HCM: &str = "envoy.filters.network.http_connection_manager";

/// Sidecars and fronting proxies: one HTTP listener routing every mesh service by Host, plus the
/// sidecar's inbound listener to its own app.
pub fn sidecar(ctx: &Ctx) -> Built {
    let c = ctx.client;
    let mut listeners = vec![http_listener(
        ctx,
        OUTBOUND,
        c.bind_port(c.outbound_port),
        rds(OUTBOUND),
        TrafficDirection::Outbound,
        Vec::new(),
        false,
    )];
    let mut vhosts = Vec::new();
    for service in ctx.mesh.services.values().filter(|s| ctx.sees(s)) {
        let http_ports = service.http_ports();
        for (i, port) in http_ports.iter().enumerate() {
            let vs = claiming_vs(ctx, &service.host);
            vhosts.push(VirtualHost {
                name: format!("{}:{}", service.host, port.number),
                domains: domains(service, port.number, i == 0, &c.namespace),
                routes: routes(ctx, vs, &service.host, port.number),
                ..VirtualHost::default()
            });
        }
    }
    for service in ctx.mesh.services.values().filter(|s| ctx.sees(s)) {
        for (port, local) in &service.local_ports {
            let Some(p) = service.port(*port) else {
                continue;
            };
            if p.protocol.is_http() {
                continue;
            }
            let targets = tcp_targets(ctx, &service.host, *port);
            let name = format!("tcp|{port}|{}", service.host);
            let bind = c.bind_port(*local);
            listeners.push(tcp_listener(ctx, &name, bind, &targets, Vec::new()));
        }
    }
    let mut route_configs = vec![RouteConfiguration {
        name: OUTBOUND.into(),
        virtual_hosts: vhosts,
        ..RouteConfiguration::default()
    }];
    let mut clusters = Vec::new();
    if ctx.client.kind == crate::node::ClientKind::Sidecar {
        if let Some(first) = c.ports.first() {
            let (listener, routes, cluster) = inbound(ctx, first);
            listeners.push(listener);
            route_configs.extend(routes);
            clusters.push(cluster);
        }
    }
    (listeners, route_configs, clusters)
}

/// The sidecar's inbound listener to its own app, in the TLS chains its PeerAuthentication asks
/// for. An app whose first port is declared TCP (`tcp-…`, `redis`, `tls`, …) is reached through a
/// tcp_proxy (an HTTP connection manager would refuse its bytes); any other port as HTTP.
fn inbound(ctx: &Ctx, first: &Port) -> (Listener, Option<RouteConfiguration>, Cluster) {
    let c = ctx.client;
    // The app listens on its own port, which may differ from the service port.
    let app = &Port {
        number: c.app_port.unwrap_or(first.number),
        ..first.clone()
    };
    let name = jalur_wire::ClusterName::inbound(app.number).to_string();
    let bind = c.bind_port(c.inbound_port);
    let tcp = Protocol::from_port_name(&first.name).is_some_and(|p| !p.is_http());
    let (mut listener, routes) = if tcp {
        let rbac = super::authz::network_filters(ctx, app.number);
        let mut l = tcp_listener(ctx, INBOUND, bind, &[(name.clone(), 100)], rbac);
        l.traffic_direction = TrafficDirection::Inbound as i32;
        (l, None)
    } else {
        let routes = RouteConfiguration {
            name: INBOUND.into(),
            virtual_hosts: vec![VirtualHost {
                name: INBOUND.into(),
                domains: vec!["*".into()],
                routes: vec![super::route::to_cluster("inbound", &name)],
                ..VirtualHost::default()
            }],
            ..RouteConfiguration::default()
        };
        let rbac = super::authz::http_filters(ctx, app.number);
        let direction = TrafficDirection::Inbound;
        let l = http_listener(ctx, INBOUND, bind, rds(INBOUND), direction, rbac, false);
        (l, Some(routes))
    };
    super::tls::inbound_chains(
        ctx,
        super::tls::inbound_mode(ctx, app.number),
        &mut listener,
    );
    (listener, routes, inbound_cluster(ctx, &name, app))
}

/// Proxyless gRPC: an API listener and route table named `host:port` (and `host` for a service's
/// first port) for every HTTP/gRPC service port, which is what `xds:///host:port` asks for.
pub fn proxyless(ctx: &Ctx) -> Built {
    let mut listeners = Vec::new();
    let mut route_configs = Vec::new();
    for service in ctx.mesh.services.values().filter(|s| ctx.sees(s)) {
        let http_ports = service.http_ports();
        for (i, port) in http_ports.iter().enumerate() {
            let mut names = vec![format!("{}:{}", service.host, port.number)];
            if i == 0 {
                names.push(service.host.clone());
            }
            let vs = claiming_vs(ctx, &service.host);
            for name in names {
                listeners.push(api_listener(&name));
                route_configs.push(RouteConfiguration {
                    name: name.clone(),
                    virtual_hosts: vec![VirtualHost {
                        name: name.clone(),
                        domains: vec!["*".into()],
                        routes: routes(ctx, vs, &service.host, port.number),
                        ..VirtualHost::default()
                    }],
                    ..RouteConfiguration::default()
                });
            }
        }
    }
    (listeners, route_configs, Vec::new())
}

/// Where a sidecar's TCP listener for `host:port` sends connections: the claiming
/// VirtualService's first tcp route (weighted), else the service itself.
fn tcp_targets(ctx: &Ctx, fqdn: &str, port: u32) -> Vec<(String, u32)> {
    let vs = ctx.mesh.config.virtual_services().find(|(r, vs)| {
        let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
        for_mesh
            && !vs.tcp.is_empty()
            && vs
                .hosts
                .iter()
                .any(|h| host::matches(&host::qualify(h, &r.meta.namespace), fqdn))
    });
    match vs {
        Some((r, vs)) => vs.tcp[0]
            .route
            .iter()
            .map(|d| {
                (
                    destination_cluster(ctx, &d.destination, &r.meta.namespace, port),
                    d.weight.unwrap_or(100),
                )
            })
            .collect(),
        None => vec![(super::cluster_name(port, None, fqdn), 100)],
    }
}

/// The VirtualService that routes `fqdn` for the mesh (the first in config order; analyze reports
/// conflicts).
fn claiming_vs<'a>(ctx: &Ctx<'a>, fqdn: &str) -> Option<(&'a Resource, &'a VirtualService)> {
    ctx.mesh.config.virtual_services().find(|(r, vs)| {
        let for_mesh = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
        for_mesh
            && vs
                .hosts
                .iter()
                .any(|h| host::matches(&host::qualify(h, &r.meta.namespace), fqdn))
    })
}

/// Names a caller may use for a service port: the FQDN, and for mesh services the short forms
/// (`reviews.bookinfo.svc`, `reviews.bookinfo`, and `reviews` when the caller is in the same
/// namespace), each bare (first HTTP port only, so no domain repeats) and with `:port`.
fn domains(service: &Service, port: u32, bare: bool, client_ns: &str) -> Vec<String> {
    let mut names = vec![service.host.clone()];
    if let Some(short) = service
        .host
        .strip_suffix(&format!(".{}", host::CLUSTER_DOMAIN))
    {
        names.push(format!("{short}.svc"));
        names.push(short.to_string());
        if let Some((name, ns)) = short.split_once('.') {
            if ns == client_ns {
                names.push(name.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for n in names {
        if bare {
            out.push(n.clone());
        }
        out.push(format!("{n}:{port}"));
    }
    out
}

pub(super) fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads_source()),
        route_config_name: name.to_string(),
    })
}

/// Fault, then authorization (track A's jwt_authn goes first in `authz`, the RBAC filters read
/// its payload), then the router.
fn http_filters(with_fault: bool, authz: Vec<HttpFilter>) -> Vec<HttpFilter> {
    let filter = |name: &str, config: Any| HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..HttpFilter::default()
    };
    let mut filters = Vec::new();
    if with_fault {
        filters.push(filter(FAULT_FILTER, pack_any(HttpFault::default())));
    }
    filters.extend(authz);
    filters.push(filter(
        "envoy.filters.http.router",
        pack_any(Router::default()),
    ));
    filters
}

pub(super) fn http_listener(
    ctx: &Ctx,
    name: &str,
    port: u32,
    routes: RouteSpecifier,
    direction: TrafficDirection,
    authz: Vec<HttpFilter>,
    edge: bool,
) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.replace(['.', '|'], "_"),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters: http_filters(true, authz),
        // Istio's default path normalization (BASE): dot segments are resolved before RBAC and
        // routing, so `/public/../admin` is judged (and forwarded) as `/admin`.
        normalize_path: Some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        // At the edge (a gateway) the client is the TCP peer, as Istio sets it: the
        // x-forwarded-for a client sends is not believed (remoteIpBlocks would be spoofable),
        // the peer is appended to it, and x-forwarded-proto says how the client connected.
        // A sidecar keeps the default: its callers are proxies of the mesh.
        use_remote_address: edge
            .then_some(envoy_types::pb::google::protobuf::BoolValue { value: true }),
        ..HttpConnectionManager::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(super::cluster::socket(&ctx.client.listen_address, port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: HCM.into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..FilterChain::default()
        }],
        traffic_direction: direction as i32,
        ..Listener::default()
    }
}

/// `authz`: network RBAC filters, before the tcp_proxy.
pub(super) fn tcp_listener(
    ctx: &Ctx,
    name: &str,
    port: u32,
    targets: &[(String, u32)],
    authz: Vec<Filter>,
) -> Listener {
    let cluster_specifier = match targets {
        [(c, _)] => tcp_proxy::ClusterSpecifier::Cluster(c.clone()),
        _ => tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
            clusters: targets
                .iter()
                .map(|(c, w)| ClusterWeight {
                    name: c.clone(),
                    weight: *w,
                    ..ClusterWeight::default()
                })
                .collect(),
        }),
    };
    let proxy = TcpProxy {
        stat_prefix: name.replace(['.', '|'], "_"),
        cluster_specifier: Some(cluster_specifier),
        ..TcpProxy::default()
    };
    Listener {
        name: name.to_string(),
        address: Some(super::cluster::socket(&ctx.client.listen_address, port)),
        filter_chains: vec![FilterChain {
            filters: authz
                .into_iter()
                .chain([Filter {
                    name: "envoy.filters.network.tcp_proxy".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
                }])
                .collect(),
            ..FilterChain::default()
        }],
        ..Listener::default()
    }
}

fn api_listener(name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.replace(['.', '|', ':'], "_"),
        route_specifier: Some(rds(name)),
        http_filters: http_filters(false, Vec::new()),
        ..HttpConnectionManager::default()
    };
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Listener::default()
    }
}

/// The sidecar's own app on loopback.
fn inbound_cluster(ctx: &Ctx, name: &str, app: &Port) -> Cluster {
    let service = Service {
        host: name.to_string(),
        namespace: ctx.client.namespace.clone(),
        ports: vec![app.clone()],
        discovery: crate::mesh::Discovery::Eds,
        external: false,
        local_ports: Default::default(),
        imported_from: None,
    };
    let local = Endpoint {
        address: "127.0.0.1".into(),
        ports: [(app.number, app.number)].into(),
        labels: Default::default(),
        weight: 1,
        locality: String::new(),
        healthy: true,
        identity: None,
        plaintext_ports: Default::default(),
    };
    let mut c = build_cluster(
        ctx,
        name,
        &service,
        app,
        &Policy::default(),
        Some(load_assignment(name, app.number, &[&local])),
    );
    c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::Static as i32,
    ));
    c
}
