//! Cluster and ClusterLoadAssignment conversion.

use super::*;

// ------------------------------------------------------------------------------------ clusters

#[test]
fn eds_cluster_as_translated() {
    let mut c = eds_cluster("outbound|9080|v1|reviews.bookinfo.svc.cluster.local");
    c.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: u32v(3),
        enforcing_consecutive_5xx: u32v(100),
        consecutive_gateway_failure: None,
        enforcing_consecutive_gateway_failure: u32v(0),
        interval: Some(dur(1, 0)),
        base_ejection_time: Some(dur(0, 500_000_000)),
        max_ejection_percent: u32v(100),
        enforcing_success_rate: u32v(0),
        ..OutlierDetection::default()
    });
    let (got, endpoints) = cluster(&c).expect("valid");
    assert!(endpoints.is_none());
    assert_eq!(
        got.discovery,
        Discovery::Eds {
            service_name: c.name.clone()
        }
    );
    assert_eq!(got.lb, LbPolicy::RoundRobin);
    assert_eq!(got.connect_timeout, Duration::from_secs(10));
    assert_eq!(got.protocol, UpstreamProtocol::Http1);
    assert_eq!(
        got.breakers,
        Thresholds {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX
        }
    );
    assert_eq!(
        got.outlier,
        Some(OutlierConfig {
            consecutive_5xx: Some(3),
            consecutive_gateway_failure: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_millis(500),
            max_ejection_percent: 100,
        })
    );
    assert_eq!(got.max_requests_per_connection, None);
    assert_eq!(
        got.idle_timeout,
        Some(Duration::from_secs(3600)),
        "Envoy's upstream idle timeout"
    );
}

#[test]
fn cluster_defaults_are_envoys() {
    let c = XdsCluster {
        name: "plain".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        outlier_detection: Some(OutlierDetection::default()),
        ..XdsCluster::default()
    };
    let (got, _) = cluster(&c).expect("valid");
    assert_eq!(
        got.discovery,
        Discovery::Eds {
            service_name: "plain".into()
        }
    );
    assert_eq!(got.connect_timeout, Duration::from_secs(5));
    assert_eq!(got.breakers, Thresholds::default());
    assert_eq!(got.protocol, UpstreamProtocol::Http1);
    let outlier = got.outlier.expect("consecutive 5xx is on by default");
    assert_eq!(
        (outlier.consecutive_5xx, outlier.consecutive_gateway_failure),
        (Some(5), None)
    );
    assert_eq!(
        (outlier.interval, outlier.base_ejection_time),
        (Duration::from_secs(10), Duration::from_secs(30))
    );
    assert_eq!(outlier.max_ejection_percent, 10);

    let mut off = c.clone();
    off.outlier_detection = Some(OutlierDetection {
        enforcing_consecutive_5xx: u32v(0),
        ..OutlierDetection::default()
    });
    assert_eq!(cluster(&off).expect("valid").0.outlier, None);
    let mut gateway = c.clone();
    gateway.outlier_detection = Some(OutlierDetection {
        enforcing_consecutive_5xx: u32v(0),
        enforcing_consecutive_gateway_failure: u32v(100),
        ..OutlierDetection::default()
    });
    let o = cluster(&gateway)
        .expect("valid")
        .0
        .outlier
        .expect("gateway failures enforced");
    assert_eq!(
        (o.consecutive_5xx, o.consecutive_gateway_failure),
        (None, Some(5))
    );

    let mut partial = c;
    partial.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![
            XdsThresholds {
                priority: 1,
                max_connections: u32v(1),
                ..XdsThresholds::default()
            },
            XdsThresholds {
                max_requests: u32v(7),
                ..XdsThresholds::default()
            },
        ],
        ..CircuitBreakers::default()
    });
    assert_eq!(
        cluster(&partial).expect("valid").0.breakers,
        Thresholds {
            max_requests: 7,
            ..Thresholds::default()
        }
    );
}

#[test]
fn lb_policies_and_protocols() {
    use cluster::LbPolicy as P;
    for (wire, want) in [
        (P::RoundRobin, LbPolicy::RoundRobin),
        (P::LeastRequest, LbPolicy::LeastRequest),
        (P::Random, LbPolicy::Random),
        (P::RingHash, LbPolicy::RingHash),
        (P::Maglev, LbPolicy::Maglev),
    ] {
        let c = XdsCluster {
            lb_policy: wire as i32,
            ..eds_cluster("c")
        };
        assert_eq!(cluster(&c).expect("valid").0.lb, want);
    }
    let c = XdsCluster {
        lb_policy: P::ClusterProvided as i32,
        ..eds_cluster("c")
    };
    assert_eq!(field(cluster(&c)), "lb_policy");

    let with =
        |upstream: UpstreamProtocolOptions,
         common: Option<envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions>| {
            let opts = HttpProtocolOptions {
                upstream_protocol_options: Some(upstream),
                common_http_protocol_options: common,
                ..HttpProtocolOptions::default()
            };
            let mut c = eds_cluster("c");
            c.typed_extension_protocol_options.insert(
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
                pack_any(opts),
            );
            cluster(&c)
        };
    let h2 = UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
        protocol_config: Some(explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
            Default::default(),
        )),
    });
    let common = envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
        idle_timeout: Some(dur(0, 0)),
        max_requests_per_connection: u32v(100),
        ..Default::default()
    };
    let (got, _) = with(h2, Some(common)).expect("valid");
    assert_eq!(got.protocol, UpstreamProtocol::Http2);
    assert_eq!(
        (got.idle_timeout, got.max_requests_per_connection),
        (None, Some(100))
    );

    let downstream = |h2: bool| {
        UpstreamProtocolOptions::UseDownstreamProtocolConfig(UseDownstreamHttpConfig {
            http2_protocol_options: h2.then(Default::default),
            ..UseDownstreamHttpConfig::default()
        })
    };
    assert_eq!(
        with(downstream(true), None).expect("valid").0.protocol,
        UpstreamProtocol::Downstream
    );
    assert_eq!(
        with(downstream(false), None).expect("valid").0.protocol,
        UpstreamProtocol::Http1
    );

    let auto = UpstreamProtocolOptions::AutoConfig(Default::default());
    assert_eq!(
        field(with(auto, None)),
        "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].auto_config"
    );
    let mut tcp_opts = eds_cluster("c");
    tcp_opts.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions".into(),
        Any::default(),
    );
    assert_eq!(field(cluster(&tcp_opts)), "typed_extension_protocol_options[\"envoy.extensions.upstreams.tcp.v3.TcpProtocolOptions\"]");
}

#[test]
fn static_and_dns_clusters() {
    let with_type = |t: cluster::DiscoveryType, cla: Option<ClusterLoadAssignment>| XdsCluster {
        name: "c".into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(t as i32)),
        load_assignment: cla,
        ..XdsCluster::default()
    };
    let local = cla(
        "inbound|9080||",
        vec![group(
            None,
            vec![lb_endpoint(
                "127.0.0.1",
                9080,
                HealthStatus::Healthy,
                u32v(1).map(|v| v.value),
            )],
        )],
    );
    let (c, set) = cluster(&with_type(cluster::DiscoveryType::Static, Some(local))).expect("valid");
    assert_eq!(c.discovery, Discovery::Static);
    let set = set.expect("static endpoints come inline");
    assert_eq!(set.cluster, "c");
    assert_eq!(
        set.endpoints[0].addr,
        "127.0.0.1:9080".parse().expect("addr")
    );

    let dns = cla(
        "c",
        vec![group(
            Some(("eu", "", "")),
            vec![
                lb_endpoint("db.example.com", 5432, HealthStatus::Healthy, None),
                lb_endpoint("10.0.0.9", 5432, HealthStatus::Healthy, None),
            ],
        )],
    );
    let (c, set) = cluster(&with_type(
        cluster::DiscoveryType::StrictDns,
        Some(dns.clone()),
    ))
    .expect("valid");
    assert!(set.is_none());
    assert_eq!(
        c.discovery,
        Discovery::Dns {
            hosts: vec![("db.example.com".into(), 5432), ("10.0.0.9".into(), 5432)],
            refresh: Duration::from_secs(5),
            respect_ttl: false,
        }
    );
    #[allow(deprecated)]
    let tuned = XdsCluster {
        dns_refresh_rate: Some(dur(30, 0)),
        respect_dns_ttl: true,
        ..with_type(cluster::DiscoveryType::StrictDns, Some(dns.clone()))
    };
    let (c, _) = cluster(&tuned).expect("valid");
    assert!(matches!(
        c.discovery,
        Discovery::Dns { refresh, respect_ttl: true, .. } if refresh == Duration::from_secs(30)
    ));
    #[allow(deprecated)]
    let too_fast = XdsCluster {
        dns_refresh_rate: Some(dur(0, 500_000)),
        ..with_type(cluster::DiscoveryType::StrictDns, Some(dns.clone()))
    };
    assert_eq!(field(cluster(&too_fast)), "dns_refresh_rate");
    assert_eq!(
        field(cluster(&with_type(
            cluster::DiscoveryType::LogicalDns,
            Some(dns)
        ))),
        "load_assignment"
    );

    let mut no_port = cla(
        "c",
        vec![group(
            None,
            vec![lb_endpoint("db", 5432, HealthStatus::Healthy, None)],
        )],
    );
    let lb_endpoint::HostIdentifier::Endpoint(e) = no_port.endpoints[0].lb_endpoints[0]
        .host_identifier
        .as_mut()
        .expect("endpoint")
    else {
        panic!("endpoint")
    };
    e.address = Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "db".into(),
            port_specifier: Some(socket_address::PortSpecifier::NamedPort("pg".into())),
            ..SocketAddress::default()
        })),
    });
    assert_eq!(
        field(cluster(&with_type(
            cluster::DiscoveryType::StrictDns,
            Some(no_port)
        ))),
        "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.named_port"
    );
    assert_eq!(
        field(cluster(&with_type(
            cluster::DiscoveryType::OriginalDst,
            None
        ))),
        "type"
    );
}

#[test]
fn cluster_errors_name_their_field() {
    let mut tls = eds_cluster("c");
    tls.transport_socket = Some(TransportSocket {
        name: "tls".into(),
        config_type: None,
    });
    let err = cluster(&tls).expect_err("tls");
    assert_eq!(
        (err.field.as_str(), err.message.as_str()),
        (
            "transport_socket",
            "transport socket \"tls\" without a typed_config is not supported"
        )
    );
    assert!(
        err.to_string().starts_with("Cluster c: transport_socket: "),
        "{err}"
    );

    let mut aggregate = eds_cluster("c");
    aggregate.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::ClusterType(
        cluster::CustomClusterType {
            name: "envoy.clusters.aggregate".into(),
            typed_config: None,
        },
    ));
    assert_eq!(field(cluster(&aggregate)), "cluster_type");

    let mut rest = eds_cluster("c");
    rest.eds_cluster_config = Some(cluster::EdsClusterConfig {
        eds_config: None,
        service_name: String::new(),
    });
    assert_eq!(field(cluster(&rest)), "eds_cluster_config.eds_config");

    let mut zero = eds_cluster("c");
    zero.connect_timeout = Some(dur(0, 0));
    assert_eq!(field(cluster(&zero)), "connect_timeout");
    zero.connect_timeout = Some(dur(-1, 0));
    assert_eq!(field(cluster(&zero)), "connect_timeout");

    let mut percent = eds_cluster("c");
    percent.outlier_detection = Some(OutlierDetection {
        max_ejection_percent: u32v(101),
        ..OutlierDetection::default()
    });
    assert_eq!(
        field(cluster(&percent)),
        "outlier_detection.max_ejection_percent"
    );

    let mut budget = eds_cluster("c");
    if let Some(cb) = budget.circuit_breakers.as_mut() {
        cb.thresholds[0].retry_budget = Some(envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget {
            budget_percent: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 150.0 }),
            ..Default::default()
        });
    }
    assert_eq!(
        field(cluster(&budget)),
        "circuit_breakers.thresholds[0].retry_budget.budget_percent"
    );
    if let Some(cb) = budget.circuit_breakers.as_mut() {
        cb.thresholds[0].retry_budget = Some(Default::default());
    }
    let (converted, _) = cluster(&budget).expect("a default retry budget converts");
    assert_eq!(
        converted.retry_budget,
        Some(crate::config::RetryBudgetConfig {
            percent: 20.0,
            min_concurrency: 3
        }),
        "Envoy's defaults"
    );
    assert_eq!(field(cluster(&XdsCluster::default())), "name");
}

/// Checks go over the endpoint's own matched socket; asking for another one is refused, not
/// silently ignored.
#[test]
fn health_check_socket_criteria_are_refused() {
    use envoy_types::pb::envoy::config::core::v3::{health_check, HealthCheck};
    let mut c = eds_cluster("c");
    c.health_checks = vec![HealthCheck {
        interval: Some(dur(1, 0)),
        timeout: Some(dur(1, 0)),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                path: "/healthz".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    let (converted, _) = cluster(&c).expect("an HTTP check converts");
    assert_eq!(
        converted.health_check.and_then(|h| h.http_path).as_deref(),
        Some("/healthz")
    );
    c.health_checks[0].transport_socket_match_criteria = Some(Default::default());
    assert_eq!(
        field(cluster(&c)),
        "health_checks[0].transport_socket_match_criteria"
    );
}

// ----------------------------------------------------------------------------------- endpoints

#[test]
fn load_assignment_as_translated() {
    let a = cla(
        "outbound|9080||reviews.bookinfo.svc.cluster.local",
        vec![
            group(
                Some(("eu", "a", "")),
                vec![
                    lb_endpoint("10.0.0.1", 9080, HealthStatus::Healthy, Some(1)),
                    lb_endpoint("10.0.0.2", 9080, HealthStatus::Unhealthy, Some(3)),
                ],
            ),
            group(
                Some(("eu", "b", "rack1")),
                vec![lb_endpoint("fd00::3", 9080, HealthStatus::Unknown, None)],
            ),
            group(
                None,
                vec![lb_endpoint("10.0.0.4", 9080, HealthStatus::Draining, None)],
            ),
        ],
    );
    let set = endpoints(&a).expect("valid");
    assert_eq!(set.cluster, a.cluster_name);
    let e = |addr: &str, weight, healthy, locality: &str| Endpoint {
        addr: addr.parse().expect("addr"),
        weight,
        healthy,
        locality: locality.into(),
        socket_match: Default::default(),
    };
    assert_eq!(
        set.endpoints,
        [
            e("10.0.0.1:9080", 1, true, "eu/a"),
            e("10.0.0.2:9080", 3, false, "eu/a"),
            e("[fd00::3]:9080", 1, true, "eu/b/rack1"),
            e("10.0.0.4:9080", 1, false, ""),
        ]
    );
    let timeout = cla(
        "c",
        vec![group(
            None,
            vec![lb_endpoint("10.0.0.1", 1, HealthStatus::Timeout, None)],
        )],
    );
    assert!(!endpoints(&timeout).expect("valid").endpoints[0].healthy);
}

#[test]
fn endpoint_errors_name_their_field() {
    let hostname = cla(
        "c",
        vec![group(
            None,
            vec![
                lb_endpoint("10.0.0.1", 80, HealthStatus::Healthy, None),
                lb_endpoint("reviews.local", 80, HealthStatus::Healthy, None),
            ],
        )],
    );
    let err = endpoints(&hostname).expect_err("hostname");
    assert_eq!(
        err.field,
        "endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address"
    );
    assert!(
        err.to_string()
            .starts_with("ClusterLoadAssignment c: endpoints[0]"),
        "{err}"
    );

    let weightless = cla(
        "c",
        vec![group(
            None,
            vec![lb_endpoint("10.0.0.1", 80, HealthStatus::Healthy, Some(0))],
        )],
    );
    assert_eq!(
        field(endpoints(&weightless)),
        "endpoints[0].lb_endpoints[0].load_balancing_weight"
    );

    let port = cla(
        "c",
        vec![group(
            None,
            vec![lb_endpoint("10.0.0.1", 70000, HealthStatus::Healthy, None)],
        )],
    );
    assert_eq!(
        field(endpoints(&port)),
        "endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value"
    );

    let mut health = cla(
        "c",
        vec![group(
            None,
            vec![lb_endpoint("10.0.0.1", 80, HealthStatus::Healthy, None)],
        )],
    );
    health.endpoints[0].lb_endpoints[0].health_status = 42;
    assert_eq!(
        field(endpoints(&health)),
        "endpoints[0].lb_endpoints[0].health_status"
    );

    let mut priority = cla("c", vec![group(None, vec![])]);
    priority.endpoints[0].priority = 1;
    assert_eq!(field(endpoints(&priority)), "endpoints[0].priority");
    assert_eq!(field(endpoints(&cla("", vec![]))), "cluster_name");
}

#[test]
fn resources_survive_an_encode_decode_round_trip() {
    let l = XdsListener::decode(outbound().encode_to_vec().as_slice()).expect("decode");
    assert_eq!(
        listener(&l).expect("valid"),
        listener(&outbound()).expect("valid")
    );
}
