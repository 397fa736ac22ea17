//! Services + DestinationRules -> Envoy `Cluster`s (one per service port, one more per subset,
//! named the Istio way) and their `ClusterLoadAssignment`s.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers::Thresholds, cluster, CircuitBreakers, Cluster,
    OutlierDetection as EnvoyOutlier,
};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, HealthStatus, Http2ProtocolOptions,
    HttpProtocolOptions as CoreHttpOptions, Locality, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig as AggregateClusterConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{
        explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions, UseDownstreamHttpConfig,
    },
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;
use jalur_model::networking::{
    ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, SimpleLb,
    TrafficPolicy,
};

use super::{ads_source, cluster_name, duration, tls, Ctx};
use crate::mesh::{Discovery, Endpoint, Service};
use crate::workload::Port;

pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const AGGREGATE_CLUSTER: &str = "envoy.clusters.aggregate";
const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The effective policy for one cluster: DestinationRule top level, then port level, then subset.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

impl Policy {
    fn layer(&mut self, tp: Option<&TrafficPolicy>, port: u32) {
        let Some(tp) = tp else { return };
        self.apply(
            tp.load_balancer.as_ref(),
            tp.connection_pool.as_ref(),
            tp.outlier_detection.as_ref(),
        );
        if tp.tls.is_some() {
            self.tls = tp.tls.clone();
        }
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|p| p.port.number == port)
        {
            self.apply(
                pl.load_balancer.as_ref(),
                pl.connection_pool.as_ref(),
                pl.outlier_detection.as_ref(),
            );
            if pl.tls.is_some() {
                self.tls = pl.tls.clone();
            }
        }
    }

    fn apply(
        &mut self,
        lb: Option<&LoadBalancerSettings>,
        pool: Option<&ConnectionPoolSettings>,
        outlier: Option<&OutlierDetection>,
    ) {
        if lb.is_some() {
            self.load_balancer = lb.cloned();
        }
        if pool.is_some() {
            self.connection_pool = pool.cloned();
        }
        if outlier.is_some() {
            self.outlier_detection = outlier.cloned();
        }
    }
}

/// A cluster's subset: its name (none for the whole service), label selector and own policy.
type SubsetSpec<'a> = (
    Option<&'a str>,
    BTreeMap<String, String>,
    Option<&'a TrafficPolicy>,
);

/// Every cluster (and its endpoints) this client may route to.
pub fn clusters(ctx: &Ctx) -> (Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let mut clusters = Vec::new();
    let mut assignments = Vec::new();
    for service in ctx.mesh.services.values().filter(|s| ctx.sees(s)) {
        let dr = ctx.destination_rule(&service.host);
        let endpoints = ctx.mesh.endpoints(&service.host);
        for port in &service.ports {
            let mut subsets: Vec<SubsetSpec> = vec![(None, BTreeMap::new(), None)];
            if let Some((_, dr)) = dr {
                subsets.extend(dr.subsets.iter().map(|s| {
                    (
                        Some(s.name.as_str()),
                        s.labels.clone(),
                        s.traffic_policy.as_ref(),
                    )
                }));
            }
            for (subset, labels, subset_policy) in subsets {
                let mut policy = Policy::default();
                policy.layer(dr.and_then(|(_, d)| d.traffic_policy.as_ref()), port.number);
                policy.layer(subset_policy, port.number);
                if service.imported_from.is_some() && policy.outlier_detection.is_none() {
                    policy.outlier_detection = Some(imported_outlier_detection());
                }
                let health_check = service
                    .imported_from
                    .as_deref()
                    .and_then(|src| active_health_check(ctx, src));
                let name = cluster_name(port.number, subset, &service.host);
                let selected: Vec<&Endpoint> =
                    endpoints.iter().filter(|e| e.matches(&labels)).collect();
                let cla = load_assignment(&name, port.number, &selected);
                let dr_tls = policy.tls.as_ref();
                let secure =
                    |c: &mut Cluster| tls::secure_cluster(ctx, c, service, port, subset, dr_tls);
                match service.discovery {
                    Discovery::Eds => {
                        let mut c = cluster(ctx, &name, service, port, &policy, None);
                        // gRPC clients do no active health checking; only proxies get it.
                        if !ctx.proxyless {
                            c.health_checks.extend(health_check.clone());
                        }
                        secure(&mut c);
                        clusters.push(c);
                        assignments.push(cla);
                    }
                    Discovery::Dns if ctx.proxyless => {
                        let (dns, eds) = proxyless_dns(ctx, &name, service, port, &policy, cla);
                        clusters.extend(dns);
                        assignments.extend(eds);
                    }
                    Discovery::Dns => {
                        let mut c = cluster(ctx, &name, service, port, &policy, Some(cla));
                        secure(&mut c);
                        clusters.push(c);
                    }
                }
            }
        }
    }
    (clusters, assignments)
}

pub fn cluster(
    ctx: &Ctx,
    name: &str,
    service: &Service,
    port: &Port,
    policy: &Policy,
    dns: Option<ClusterLoadAssignment>,
) -> Cluster {
    let pool = policy.connection_pool.clone().unwrap_or_default();
    let tcp = pool.tcp.clone().unwrap_or_default();
    let mut c = Cluster {
        name: name.to_string(),
        connect_timeout: Some(duration(
            tcp.connect_timeout
                .map(|d| d.as_std())
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        )),
        lb_policy: lb_policy(ctx, policy.load_balancer.as_ref()) as i32,
        circuit_breakers: Some(circuit_breakers(&pool)),
        outlier_detection: policy.outlier_detection.as_ref().map(outlier_detection),
        ..Cluster::default()
    };
    match dns {
        None => {
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            ));
            c.eds_cluster_config = Some(cluster::EdsClusterConfig {
                eds_config: Some(ads_source()),
                service_name: name.to_string(),
            });
        }
        Some(cla) => {
            let kind = if ctx.proxyless {
                cluster::DiscoveryType::LogicalDns
            } else {
                cluster::DiscoveryType::StrictDns
            };
            c.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(kind as i32));
            c.dns_lookup_family = cluster::DnsLookupFamily::V4Only as i32;
            c.load_assignment = Some(cla);
        }
    }
    if !ctx.proxyless {
        if let Some(opts) = protocol_options(port, &pool) {
            c.typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.into(), pack_any(opts));
        }
    }
    let _ = service;
    c
}

/// A DNS service for proxyless gRPC. gRPC resolves a LOGICAL_DNS cluster's hostname itself and
/// NACKs one without exactly one endpoint ("must contain exactly one endpoint for LOGICAL_DNS
/// cluster"), so: one endpoint is a LOGICAL_DNS cluster; none is an EDS cluster with no endpoints
/// (calls fail UNAVAILABLE, as through a sidecar); several are an aggregate cluster over one
/// LOGICAL_DNS cluster per endpoint, `<name>#<address>:<port>`. gRPC treats an aggregate as a
/// priority list: the first reachable endpoint takes the calls and the rest are its fail-over, as
/// gRPC cannot spread calls over several hostnames.
fn proxyless_dns(
    ctx: &Ctx,
    name: &str,
    service: &Service,
    port: &Port,
    policy: &Policy,
    cla: ClusterLoadAssignment,
) -> (Vec<Cluster>, Option<ClusterLoadAssignment>) {
    let build = |name: &str, dns| cluster(ctx, name, service, port, policy, dns);
    let count: usize = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    match count {
        0 => (vec![build(name, None)], Some(cla)),
        1 => (vec![build(name, Some(cla))], None),
        _ => {
            let mut children: Vec<Cluster> = Vec::new();
            for (child, one) in one_per_endpoint(name, &cla) {
                if children.iter().all(|c| c.name != child) {
                    children.push(build(&child, Some(one)));
                }
            }
            let mut aggregate = build(name, None);
            aggregate.eds_cluster_config = None;
            // Ejection is the children's business.
            aggregate.outlier_detection = None;
            aggregate.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::ClusterType(
                cluster::CustomClusterType {
                    name: AGGREGATE_CLUSTER.into(),
                    typed_config: Some(pack_any(AggregateClusterConfig {
                        clusters: children.iter().map(|c| c.name.clone()).collect(),
                    })),
                },
            ));
            children.insert(0, aggregate);
            (children, None)
        }
    }
}

/// Splits a load assignment into one per endpoint (keeping its locality), each named
/// `<name>#<address>:<port>`.
fn one_per_endpoint(
    name: &str,
    cla: &ClusterLoadAssignment,
) -> Vec<(String, ClusterLoadAssignment)> {
    cla.endpoints
        .iter()
        .flat_map(|group| {
            group.lb_endpoints.iter().map(move |e| {
                let child = format!("{name}#{}", endpoint_address(e));
                let one = ClusterLoadAssignment {
                    cluster_name: child.clone(),
                    endpoints: vec![LocalityLbEndpoints {
                        lb_endpoints: vec![e.clone()],
                        load_balancing_weight: e.load_balancing_weight,
                        ..group.clone()
                    }],
                    ..ClusterLoadAssignment::default()
                };
                (child, one)
            })
        })
        .collect()
}

/// `address:port` of an endpoint, as a cluster name suffix.
fn endpoint_address(e: &LbEndpoint) -> String {
    let socket = match &e.host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
            address:
                Some(Address {
                    address: Some(address::Address::SocketAddress(s)),
                }),
            ..
        })) => s,
        _ => return String::new(),
    };
    match socket.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => format!("{}:{p}", socket.address),
        _ => socket.address.clone(),
    }
}

/// The active health check a ConsulRegistry asks for its imports (`source` is
/// `consul:NAMESPACE/NAME`), as Envoy's HealthCheck.
fn active_health_check(
    ctx: &Ctx,
    source: &str,
) -> Option<envoy_types::pb::envoy::config::core::v3::HealthCheck> {
    use envoy_types::pb::envoy::config::core::v3::health_check::{
        HealthChecker, HttpHealthCheck, TcpHealthCheck,
    };
    use envoy_types::pb::envoy::config::core::v3::HealthCheck;
    let key = source.strip_prefix("consul:")?;
    let (_, reg) = ctx
        .mesh
        .config
        .consul_registries()
        .find(|(r, _)| format!("{}/{}", r.meta.namespace, r.meta.name) == key)?;
    let hc = reg.health_check.as_ref()?;
    let secs = |d: Option<jalur_model::duration::Duration>, default: u64| {
        duration(
            d.map(|d| d.as_std())
                .unwrap_or(std::time::Duration::from_secs(default)),
        )
    };
    let checker = match &hc.http_path {
        Some(path) => HealthChecker::HttpHealthCheck(HttpHealthCheck {
            path: path.clone(),
            ..HttpHealthCheck::default()
        }),
        None => HealthChecker::TcpHealthCheck(TcpHealthCheck::default()),
    };
    let interval = secs(hc.interval, 5);
    Some(HealthCheck {
        // Envoy checks a cluster without traffic only every 60 s by default, and switches to
        // `interval` only at the next check: make both the interval.
        no_traffic_interval: Some(interval),
        no_traffic_healthy_interval: Some(interval),
        interval: Some(interval),
        timeout: Some(secs(hc.timeout, 1)),
        unhealthy_threshold: Some(UInt32Value {
            value: hc.unhealthy_threshold.unwrap_or(2),
        }),
        healthy_threshold: Some(UInt32Value {
            value: hc.healthy_threshold.unwrap_or(1),
        }),
        health_checker: Some(checker),
        ..HealthCheck::default()
    })
}

/// Imported (registry) services get outlier detection unless a DestinationRule says otherwise:
/// a dead instance can stay registered as passing for a while (a missed TTL, a stuck check), and
/// three consecutive failures (connect failures count) take it out of rotation.
fn imported_outlier_detection() -> OutlierDetection {
    use jalur_model::duration::Duration;
    OutlierDetection {
        consecutive_5xx_errors: Some(3),
        consecutive_gateway_errors: Some(3),
        interval: Some(Duration(std::time::Duration::from_secs(2))),
        base_ejection_time: Some(Duration(std::time::Duration::from_secs(30))),
        max_ejection_percent: Some(50),
        ..OutlierDetection::default()
    }
}

fn lb_policy(ctx: &Ctx, lb: Option<&LoadBalancerSettings>) -> cluster::LbPolicy {
    let Some(lb) = lb else {
        return cluster::LbPolicy::RoundRobin;
    };
    if let Some(ch) = &lb.consistent_hash {
        return if ch.maglev.is_some() && !ctx.proxyless {
            cluster::LbPolicy::Maglev
        } else {
            cluster::LbPolicy::RingHash
        };
    }
    if ctx.proxyless {
        return cluster::LbPolicy::RoundRobin;
    }
    match lb.simple {
        Some(SimpleLb::LeastConn) | Some(SimpleLb::LeastRequest) => cluster::LbPolicy::LeastRequest,
        Some(SimpleLb::Random) => cluster::LbPolicy::Random,
        _ => cluster::LbPolicy::RoundRobin,
    }
}

/// Istio lifts Envoy's 1024 defaults to "unlimited" unless the DestinationRule sets a limit. For
/// retries jalur goes further than Istio: without `maxRetries`, a retry budget (20 % of active
/// requests, at least 3) keeps retries from amplifying an outage.
fn circuit_breakers(pool: &ConnectionPoolSettings) -> CircuitBreakers {
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    let limit = |v: Option<u32>| {
        Some(UInt32Value {
            value: v.unwrap_or(u32::MAX),
        })
    };
    let http = pool.http.clone().unwrap_or_default();
    let tcp = pool.tcp.clone().unwrap_or_default();
    let retry_budget = http.max_retries.is_none().then(|| RetryBudget {
        budget_percent: Some(Percent { value: 20.0 }),
        min_retry_concurrency: Some(UInt32Value { value: 3 }),
        ..RetryBudget::default()
    });
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: limit(tcp.max_connections),
            max_pending_requests: limit(http.http1_max_pending_requests),
            max_requests: limit(http.http2_max_requests),
            max_retries: limit(http.max_retries),
            retry_budget,
            track_remaining: true,
            ..Thresholds::default()
        }],
        ..CircuitBreakers::default()
    }
}

fn outlier_detection(o: &OutlierDetection) -> EnvoyOutlier {
    let u = |v: u32| Some(UInt32Value { value: v });
    let five_xx = o.consecutive_5xx_errors.or(o.consecutive_errors);
    EnvoyOutlier {
        consecutive_5xx: five_xx.map(|v| UInt32Value { value: v }),
        enforcing_consecutive_5xx: u(if five_xx.is_some_and(|v| v > 0) {
            100
        } else {
            0
        }),
        consecutive_gateway_failure: o
            .consecutive_gateway_errors
            .map(|v| UInt32Value { value: v }),
        enforcing_consecutive_gateway_failure: u(
            if o.consecutive_gateway_errors.is_some_and(|v| v > 0) {
                100
            } else {
                0
            },
        ),
        split_external_local_origin_errors: o.split_external_local_origin_errors.unwrap_or(false),
        consecutive_local_origin_failure: o
            .consecutive_local_origin_failures
            .map(|v| UInt32Value { value: v }),
        interval: o.interval.map(|d| duration(d.as_std())),
        base_ejection_time: o.base_ejection_time.map(|d| duration(d.as_std())),
        max_ejection_percent: o.max_ejection_percent.map(|v| UInt32Value { value: v }),
        enforcing_success_rate: u(0),
        ..EnvoyOutlier::default()
    }
}

fn protocol_options(port: &Port, pool: &ConnectionPoolSettings) -> Option<HttpProtocolOptions> {
    let http = pool.http.clone().unwrap_or_default();
    let upstream = if http.use_client_protocol == Some(true) {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http2_protocol_options: Some(Http2ProtocolOptions::default()),
            ..UseDownstreamHttpConfig::default()
        })
    } else if port.protocol.is_h2() || http.h2_upgrade_policy.as_deref() == Some("UPGRADE") {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                Http2ProtocolOptions::default(),
            )),
        })
    } else if port.protocol.is_http() {
        UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                Default::default(),
            )),
        })
    } else {
        return None;
    };
    let common = CoreHttpOptions {
        idle_timeout: http.idle_timeout.map(|d| duration(d.as_std())),
        max_requests_per_connection: http
            .max_requests_per_connection
            .filter(|v| *v > 0)
            .map(|v| UInt32Value { value: v }),
        ..CoreHttpOptions::default()
    };
    Some(HttpProtocolOptions {
        common_http_protocol_options: Some(common),
        upstream_protocol_options: Some(upstream),
        ..HttpProtocolOptions::default()
    })
}

/// Endpoints grouped by locality; every group has a locality and a weight (gRPC requires both).
pub fn load_assignment(
    cluster: &str,
    service_port: u32,
    endpoints: &[&Endpoint],
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    for e in endpoints {
        let Some(port) = e.ports.get(&service_port) else {
            continue;
        };
        let health = if e.healthy {
            HealthStatus::Healthy
        } else {
            HealthStatus::Unhealthy
        };
        by_locality
            .entry(e.locality.as_str())
            .or_default()
            .push(LbEndpoint {
                host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket(&e.address, *port)),
                    ..EnvoyEndpoint::default()
                })),
                health_status: health as i32,
                load_balancing_weight: Some(UInt32Value {
                    value: e.weight.max(1),
                }),
                metadata: tls::endpoint_metadata(e, service_port),
            });
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(loc, lb_endpoints)| {
            let mut parts = loc.splitn(3, '/').map(str::to_string);
            let locality = Locality {
                region: parts.next().unwrap_or_default(),
                zone: parts.next().unwrap_or_default(),
                sub_zone: parts.next().unwrap_or_default(),
            };
            let weight = lb_endpoints
                .iter()
                .filter_map(|e| e.load_balancing_weight.as_ref())
                .map(|w| w.value)
                .sum::<u32>();
            LocalityLbEndpoints {
                locality: Some(locality),
                lb_endpoints,
                load_balancing_weight: Some(UInt32Value {
                    value: weight.max(1),
                }),
                ..LocalityLbEndpoints::default()
            }
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints,
        ..ClusterLoadAssignment::default()
    }
}

pub fn socket(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..SocketAddress::default()
        })),
    }
}
