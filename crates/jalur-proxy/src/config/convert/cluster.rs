//! Cluster -> [`Cluster`] and ClusterLoadAssignment -> [`EndpointSet`].

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    circuit_breakers, cluster, CircuitBreakers, Cluster as XdsCluster, OutlierDetection,
};
use envoy_types::pb::envoy::config::core::v3::{
    HealthStatus, HttpProtocolOptions as CommonHttpOptions, RoutingPriority,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, LbEndpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config::ProtocolConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use prost::Name;

use super::{
    ads_source, decode, host_port, positive, reject_if, socket_addr, timeout, At, Invalid, Res,
};
use crate::config::{
    Cluster, Discovery, Endpoint, EndpointSet, HealthCheckConfig, LbPolicy, OutlierConfig,
    RetryBudgetConfig, Thresholds, UpstreamProtocol,
};

/// Envoy's defaults where the cluster sets none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
const OUTLIER_MAX_EJECTION_PERCENT: u32 = 10;
const OUTLIER_CONSECUTIVE: u32 = 5;
/// Envoy's `dns_refresh_rate` default.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);

pub(super) fn cluster(c: &XdsCluster) -> Res<(Cluster, Option<EndpointSet>)> {
    reject_if(c.name.is_empty(), "name", "a cluster name is required")?;
    unsupported(c)?;
    let (discovery, endpoints) = discovery(c)?;
    let lb = lb_policy(c.lb_policy).at("lb_policy")?;
    let connect_timeout =
        positive(c.connect_timeout.as_ref(), CONNECT_TIMEOUT).at("connect_timeout")?;
    let (breakers, retry_budget) = match &c.circuit_breakers {
        Some(cb) => thresholds(cb).at("circuit_breakers")?,
        None => (Thresholds::default(), None),
    };
    let outlier = c
        .outlier_detection
        .as_ref()
        .map(outlier)
        .transpose()
        .at("outlier_detection")?
        .flatten();
    let health_check = c
        .health_checks
        .first()
        .map(health_check)
        .transpose()
        .at("health_checks[0]")?;
    let http = protocol(c)?;
    let transport = super::tls::cluster_transport(c)?;
    let cluster = Cluster {
        name: c.name.clone(),
        discovery,
        lb,
        connect_timeout,
        protocol: http.protocol,
        breakers,
        retry_budget,
        health_check,
        outlier,
        max_requests_per_connection: http.max_requests_per_connection,
        idle_timeout: http.idle_timeout,
        transport,
    };
    Ok((cluster, endpoints))
}

/// Cluster features that change how traffic flows and that jalur does not implement.
fn unsupported(c: &XdsCluster) -> Res<()> {
    reject_if(
        c.health_checks.len() > 1,
        "health_checks",
        "one active health check per cluster is supported",
    )?;
    reject_if(
        c.lb_subset_config.is_some(),
        "lb_subset_config",
        "subset load balancing is not supported",
    )?;
    reject_if(
        c.load_balancing_policy.is_some(),
        "load_balancing_policy",
        "typed load balancing policies are not supported; use lb_policy",
    )?;
    reject_if(
        !c.filters.is_empty(),
        "filters",
        "upstream network filters are not supported",
    )?;
    reject_if(
        c.upstream_config.is_some(),
        "upstream_config",
        "custom upstreams are not supported",
    )?;
    Ok(())
}

fn discovery(c: &XdsCluster) -> Res<(Discovery, Option<EndpointSet>)> {
    use cluster::DiscoveryType as T;
    let kind = match &c.cluster_discovery_type {
        // The proto's default type is STATIC.
        None => T::Static,
        Some(cluster::ClusterDiscoveryType::Type(t)) => T::try_from(*t)
            .map_err(|_| Invalid::new("type", format!("unknown discovery type {t}")))?,
        Some(cluster::ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(Invalid::new(
                "cluster_type",
                format!("custom cluster type \"{}\" is not supported", custom.name),
            ))
        }
    };
    match kind {
        T::Eds => {
            let Some(eds) = &c.eds_cluster_config else {
                return Err(Invalid::new(
                    "eds_cluster_config",
                    "an EDS cluster needs eds_cluster_config",
                ));
            };
            ads_source(eds.eds_config.as_ref()).at("eds_cluster_config.eds_config")?;
            let service_name = if eds.service_name.is_empty() {
                c.name.clone()
            } else {
                eds.service_name.clone()
            };
            Ok((Discovery::Eds { service_name }, None))
        }
        T::Static => {
            let endpoints = match &c.load_assignment {
                Some(cla) => endpoint_list(cla).at("load_assignment")?,
                None => Vec::new(),
            };
            Ok((
                Discovery::Static,
                Some(EndpointSet {
                    cluster: c.name.clone(),
                    endpoints,
                }),
            ))
        }
        T::StrictDns | T::LogicalDns => {
            let hosts = match &c.load_assignment {
                Some(cla) => dns_hosts(cla).at("load_assignment")?,
                None => Vec::new(),
            };
            reject_if(
                kind == T::LogicalDns && hosts.len() != 1,
                "load_assignment",
                "a LOGICAL_DNS cluster needs exactly one endpoint",
            )?;
            // Envoy's defaults; both fields are deprecated in favour of the DnsCluster
            // extension, which jalur does not take, but Istio still sets them.
            #[allow(deprecated)]
            let (refresh, respect_ttl) = (c.dns_refresh_rate.as_ref(), c.respect_dns_ttl);
            let refresh = positive(refresh, DEFAULT_DNS_REFRESH).at("dns_refresh_rate")?;
            reject_if(
                refresh < Duration::from_millis(1),
                "dns_refresh_rate",
                "must be at least 1ms",
            )?;
            Ok((
                Discovery::Dns {
                    hosts,
                    refresh,
                    respect_ttl,
                },
                None,
            ))
        }
        T::OriginalDst => Err(Invalid::new(
            "type",
            "ORIGINAL_DST clusters are not supported",
        )),
    }
}

fn dns_hosts(cla: &ClusterLoadAssignment) -> Res<Vec<(String, u16)>> {
    let mut hosts = Vec::new();
    for (i, group) in cla.endpoints.iter().enumerate() {
        for (j, e) in group.lb_endpoints.iter().enumerate() {
            let host = (|| -> Res<(String, u16)> {
                let (host, port) = host_port(lb_address(e)?).at("endpoint.address")?;
                reject_if(
                    port == 0,
                    "endpoint.address.socket_address.port_value",
                    "port 0 cannot be connected to",
                )?;
                Ok((host.to_string(), port))
            })();
            hosts.push(host.at(format_args!("endpoints[{i}].lb_endpoints[{j}]"))?);
        }
    }
    Ok(hosts)
}

fn lb_address(e: &LbEndpoint) -> Res<Option<&envoy_types::pb::envoy::config::core::v3::Address>> {
    match &e.host_identifier {
        Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => Ok(ep.address.as_ref()),
        Some(lb_endpoint::HostIdentifier::EndpointName(_)) => Err(Invalid::new(
            "endpoint_name",
            "named endpoints are not supported",
        )),
        None => Err(Invalid::new("endpoint", "an endpoint is required")),
    }
}

fn lb_policy(p: i32) -> Res<LbPolicy> {
    use cluster::LbPolicy as P;
    match P::try_from(p) {
        Ok(P::RoundRobin) => Ok(LbPolicy::RoundRobin),
        Ok(P::LeastRequest) => Ok(LbPolicy::LeastRequest),
        Ok(P::Random) => Ok(LbPolicy::Random),
        Ok(P::RingHash) => Ok(LbPolicy::RingHash),
        Ok(P::Maglev) => Ok(LbPolicy::Maglev),
        Ok(other) => Err(Invalid::here(format!(
            "{} is not supported",
            other.as_str_name()
        ))),
        Err(_) => Err(Invalid::here(format!("unknown lb_policy {p}"))),
    }
}

/// An HTTP (GET path, 2xx healthy) or TCP (connect) active health check.
fn health_check(
    h: &envoy_types::pb::envoy::config::core::v3::HealthCheck,
) -> Res<HealthCheckConfig> {
    use envoy_types::pb::envoy::config::core::v3::health_check::HealthChecker;
    let interval = positive(h.interval.as_ref(), Duration::from_secs(5)).at("interval")?;
    let timeout = positive(h.timeout.as_ref(), Duration::from_secs(1)).at("timeout")?;
    let threshold = |v: &Option<UInt32Value>| v.as_ref().map_or(1, |v| v.value.max(1));
    // Checks go over each endpoint's own matched transport socket (`health.rs`); silently
    // checking over another socket than the one asked for would pass or fail the wrong thing.
    reject_if(
        h.transport_socket_match_criteria.is_some(),
        "transport_socket_match_criteria",
        "is not supported: checks use the endpoint's matched transport socket",
    )?;
    let http_path = match &h.health_checker {
        Some(HealthChecker::HttpHealthCheck(http)) => Some(if http.path.is_empty() {
            "/".to_string()
        } else {
            http.path.clone()
        }),
        Some(HealthChecker::TcpHealthCheck(tcp)) => {
            reject_if(
                tcp.send.is_some() || !tcp.receive.is_empty(),
                "tcp_health_check",
                "only a plain connect check is supported",
            )?;
            None
        }
        _ => {
            return Err(Invalid::here(
                "only HTTP and TCP health checks are supported",
            ))
            .at("health_checker")
        }
    };
    Ok(HealthCheckConfig {
        interval,
        timeout,
        unhealthy_threshold: threshold(&h.unhealthy_threshold),
        healthy_threshold: threshold(&h.healthy_threshold),
        http_path,
    })
}

/// The DEFAULT priority's thresholds; HIGH priority traffic does not exist in jalur.
fn thresholds(cb: &CircuitBreakers) -> Res<(Thresholds, Option<RetryBudgetConfig>)> {
    reject_if(
        !cb.per_host_thresholds.is_empty(),
        "per_host_thresholds",
        "per-host circuit breakers are not supported",
    )?;
    let mut out = Thresholds::default();
    let Some((i, t)) = cb
        .thresholds
        .iter()
        .enumerate()
        .find(|(_, t)| t.priority == RoutingPriority::Default as i32)
    else {
        return Ok((out, None));
    };
    let t: &circuit_breakers::Thresholds = t;
    // Envoy's defaults: 20 % of active requests, at least 3 concurrent retries.
    let budget = match &t.retry_budget {
        None => None,
        Some(b) => {
            let percent = b.budget_percent.as_ref().map_or(20.0, |p| p.value);
            reject_if(
                !(0.0..=100.0).contains(&percent),
                &format!("thresholds[{i}].retry_budget.budget_percent"),
                "must be between 0 and 100",
            )?;
            let min_concurrency = b.min_retry_concurrency.as_ref().map_or(3, |v| v.value);
            Some(RetryBudgetConfig {
                percent,
                min_concurrency,
            })
        }
    };
    let or = |v: &Option<UInt32Value>, default: u32| v.as_ref().map_or(default, |v| v.value);
    out.max_connections = or(&t.max_connections, out.max_connections);
    out.max_pending_requests = or(&t.max_pending_requests, out.max_pending_requests);
    out.max_requests = or(&t.max_requests, out.max_requests);
    out.max_retries = or(&t.max_retries, out.max_retries);
    Ok((out, budget))
}

/// Consecutive-5xx and consecutive-gateway-failure ejection, with Envoy's defaults; `None` when
/// neither is enforced. Success-rate and failure-percentage ejection are not implemented; they
/// are ignored rather than refused because Envoy enables success-rate ejection by default
/// (enforcing_success_rate 100), so refusing it would refuse almost every outlier_detection.
fn outlier(o: &OutlierDetection) -> Res<Option<OutlierConfig>> {
    let enforced =
        |count: &Option<UInt32Value>, enforcing: &Option<UInt32Value>, enforcing_default: u32| {
            let enforcing = enforcing.as_ref().map_or(enforcing_default, |v| v.value);
            let count = count.as_ref().map_or(OUTLIER_CONSECUTIVE, |v| v.value);
            (enforcing > 0 && count > 0).then_some(count)
        };
    let consecutive_5xx = enforced(&o.consecutive_5xx, &o.enforcing_consecutive_5xx, 100);
    let consecutive_gateway_failure = enforced(
        &o.consecutive_gateway_failure,
        &o.enforcing_consecutive_gateway_failure,
        0,
    );
    let interval = positive(o.interval.as_ref(), OUTLIER_INTERVAL).at("interval")?;
    let base_ejection_time =
        positive(o.base_ejection_time.as_ref(), OUTLIER_BASE_EJECTION).at("base_ejection_time")?;
    let max_ejection_percent = o
        .max_ejection_percent
        .as_ref()
        .map_or(OUTLIER_MAX_EJECTION_PERCENT, |v| v.value);
    reject_if(
        max_ejection_percent > 100,
        "max_ejection_percent",
        "must be at most 100",
    )?;
    if consecutive_5xx.is_none() && consecutive_gateway_failure.is_none() {
        return Ok(None);
    }
    Ok(Some(OutlierConfig {
        consecutive_5xx,
        consecutive_gateway_failure,
        interval,
        base_ejection_time,
        max_ejection_percent,
    }))
}

struct HttpOptions {
    protocol: UpstreamProtocol,
    max_requests_per_connection: Option<u32>,
    idle_timeout: Option<Duration>,
}

/// The upstream HTTP protocol and connection reuse, from `HttpProtocolOptions` or the cluster's
/// deprecated fields (not both, as Envoy insists).
#[allow(deprecated)]
fn protocol(c: &XdsCluster) -> Res<HttpOptions> {
    let key = HttpProtocolOptions::full_name();
    for k in c.typed_extension_protocol_options.keys() {
        reject_if(
            *k != key,
            &format!("typed_extension_protocol_options[\"{k}\"]"),
            "unsupported protocol options (only HttpProtocolOptions)",
        )?;
    }
    let legacy = c.http2_protocol_options.is_some()
        || c.http_protocol_options.is_some()
        || c.common_http_protocol_options.is_some()
        || c.max_requests_per_connection.is_some()
        || c.protocol_selection != cluster::ClusterProtocolSelection::UseConfiguredProtocol as i32;
    let Some(any) = c.typed_extension_protocol_options.get(&key) else {
        let protocol = if c.protocol_selection
            == cluster::ClusterProtocolSelection::UseDownstreamProtocol as i32
        {
            UpstreamProtocol::Downstream
        } else if c.http2_protocol_options.is_some() {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        };
        let common = c.common_http_protocol_options.as_ref();
        let mut opts = common_options(common).at("common_http_protocol_options")?;
        opts.protocol = protocol;
        if common
            .and_then(|o| o.max_requests_per_connection.as_ref())
            .is_none()
        {
            opts.max_requests_per_connection = c
                .max_requests_per_connection
                .as_ref()
                .map(|v| v.value)
                .filter(|v| *v > 0);
        }
        return Ok(opts);
    };
    let at = format!("typed_extension_protocol_options[\"{key}\"]");
    reject_if(
        legacy,
        &at,
        "cannot be combined with the cluster's deprecated HTTP protocol fields",
    )?;
    http_protocol_options(&decode(any).at(&at)?).at(&at)
}

fn http_protocol_options(o: &HttpProtocolOptions) -> Res<HttpOptions> {
    reject_if(
        !o.http_filters.is_empty(),
        "http_filters",
        "upstream HTTP filters are not supported",
    )?;
    let protocol = match &o.upstream_protocol_options {
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(ProtocolConfig::HttpProtocolOptions(_)) => UpstreamProtocol::Http1,
            Some(ProtocolConfig::Http2ProtocolOptions(_)) => UpstreamProtocol::Http2,
            Some(ProtocolConfig::Http3ProtocolOptions(_)) => {
                return Err(Invalid::new(
                    "explicit_http_config.http3_protocol_options",
                    "HTTP/3 is not supported",
                ))
            }
            None => {
                return Err(Invalid::new(
                    "explicit_http_config",
                    "a protocol is required",
                ))
            }
        },
        // Without HTTP/2 options Envoy sends HTTP/2 downstream requests upstream as HTTP/1.1.
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(d))
            if d.http2_protocol_options.is_some() =>
        {
            UpstreamProtocol::Downstream
        }
        Some(UpstreamProtocolOptions::UseDownstreamProtocolConfig(_)) => UpstreamProtocol::Http1,
        Some(UpstreamProtocolOptions::AutoConfig(_)) => {
            return Err(Invalid::new(
                "auto_config",
                "ALPN protocol selection is not supported; use explicit_http_config",
            ))
        }
        None => {
            return Err(Invalid::new(
                "upstream_protocol_options",
                "explicit_http_config or use_downstream_protocol_config is required",
            ))
        }
    };
    let mut opts = common_options(o.common_http_protocol_options.as_ref())
        .at("common_http_protocol_options")?;
    opts.protocol = protocol;
    Ok(opts)
}

fn common_options(o: Option<&CommonHttpOptions>) -> Res<HttpOptions> {
    Ok(HttpOptions {
        protocol: UpstreamProtocol::Http1,
        // Zero means unlimited.
        max_requests_per_connection: o
            .and_then(|o| o.max_requests_per_connection.as_ref())
            .map(|v| v.value)
            .filter(|v| *v > 0),
        idle_timeout: timeout(
            o.and_then(|o| o.idle_timeout.as_ref()),
            Some(UPSTREAM_IDLE_TIMEOUT),
        )
        .at("idle_timeout")?,
    })
}

// --------------------------------------------------------------------------------- endpoints

pub(super) fn endpoints(cla: &ClusterLoadAssignment) -> Res<EndpointSet> {
    reject_if(
        cla.cluster_name.is_empty(),
        "cluster_name",
        "a cluster_name is required",
    )?;
    Ok(EndpointSet {
        cluster: cla.cluster_name.clone(),
        endpoints: endpoint_list(cla)?,
    })
}

fn endpoint_list(cla: &ClusterLoadAssignment) -> Res<Vec<Endpoint>> {
    reject_if(
        !cla.named_endpoints.is_empty(),
        "named_endpoints",
        "named endpoints are not supported",
    )?;
    let mut out = Vec::new();
    for (i, group) in cla.endpoints.iter().enumerate() {
        let at = |f: &str| format!("endpoints[{i}].{f}");
        reject_if(
            group.priority != 0,
            &at("priority"),
            "priority levels are not supported",
        )?;
        let locality = group
            .locality
            .as_ref()
            .map(|l| {
                format!("{}/{}/{}", l.region, l.zone, l.sub_zone)
                    .trim_end_matches('/')
                    .to_string()
            })
            .unwrap_or_default();
        for (j, e) in group.lb_endpoints.iter().enumerate() {
            let endpoint =
                endpoint(e, &locality).at(format_args!("endpoints[{i}].lb_endpoints[{j}]"))?;
            out.push(endpoint);
        }
    }
    Ok(out)
}

fn endpoint(e: &LbEndpoint, locality: &str) -> Res<Endpoint> {
    let addr = socket_addr(lb_address(e)?).at("endpoint.address")?;
    reject_if(
        addr.port() == 0,
        "endpoint.address.socket_address.port_value",
        "port 0 cannot be connected to",
    )?;
    let weight = e.load_balancing_weight.as_ref().map_or(1, |w| w.value);
    reject_if(weight == 0, "load_balancing_weight", "must be at least 1")?;
    let healthy = match HealthStatus::try_from(e.health_status) {
        // DEGRADED hosts still serve (Envoy uses them when healthy ones are short); jalur has
        // no degraded tier, so they count as healthy.
        Ok(HealthStatus::Unknown | HealthStatus::Healthy | HealthStatus::Degraded) => true,
        Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout) => false,
        Err(_) => {
            return Err(Invalid::new(
                "health_status",
                format!("unknown health status {}", e.health_status),
            ))
        }
    };
    Ok(Endpoint {
        addr,
        weight,
        healthy,
        locality: locality.to_string(),
        socket_match: super::tls::endpoint_socket_match(e.metadata.as_ref()),
    })
}
