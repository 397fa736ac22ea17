//! Hand-built xDS in Istio's mTLS shape (the contract's "xDS the control plane emits"), served
//! per node by a static generator: the proxy's TLS data path tested on exactly the resources
//! it will get, without depending on the control plane's translation.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, api_config_source::ApiType, config_source::ConfigSourceSpecifier, data_source,
    grpc_service, transport_socket, Address, ApiConfigSource, ApiVersion, ConfigSource, DataSource,
    GrpcService, Metadata, SocketAddress, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, http_filter, HttpConnectionManager, HttpFilter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    secret,
    subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options::{explicit_http_config, ExplicitHttpConfig, UpstreamProtocolOptions},
    HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{value::Kind, BoolValue, Struct, Value};
use envoy_types::util::pack_any;
use jalur_identity::Credentials;
use jalur_xds::{AdsServer, ClientSnapshot, Generator, Resource, TypeUrl};
use tokio::sync::watch;

// ------------------------------------------------------------------------------------ serving

/// Serves each node (by `node.cluster`, `SERVICE.NAMESPACE`) its own resources.
#[derive(Default)]
pub struct PerNode {
    served: Mutex<HashMap<String, Arc<ClientSnapshot>>>,
}

impl Generator for PerNode {
    fn client_kind(&self, _node: &jalur_xds::Node) -> String {
        "sidecar".into()
    }
    fn generate(&self, node: &jalur_xds::Node) -> Arc<ClientSnapshot> {
        let served = self.served.lock().expect("served lock");
        served.get(&node.cluster).cloned().unwrap_or_default()
    }
}

/// An xDS server on loopback serving [`PerNode`].
pub struct StaticPlane {
    pub addr: SocketAddr,
    generator: Arc<PerNode>,
    changes: watch::Sender<u64>,
    _task: tokio::task::JoinHandle<()>,
}

impl StaticPlane {
    pub async fn start() -> StaticPlane {
        let generator = Arc::new(PerNode::default());
        let (changes, rx) = watch::channel(1);
        let server = AdsServer::new(generator.clone(), rx);
        let listener = jalur_xds::server::bind(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind xDS");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = server.serve(listener, std::future::pending()).await;
        });
        StaticPlane {
            addr,
            generator,
            changes,
            _task: task,
        }
    }

    /// Serves `listeners` and `clusters` to the node of `service.namespace`.
    pub fn serve(&self, node_cluster: &str, listeners: Vec<Listener>, clusters: Vec<Cluster>) {
        self.serve_with_secrets(node_cluster, listeners, clusters, None);
    }

    /// The same, plus SDS `default` and `ROOTCA` from `creds` over ADS (a stock Envoy without
    /// an agent).
    pub fn serve_with_secrets(
        &self,
        node_cluster: &str,
        listeners: Vec<Listener>,
        clusters: Vec<Cluster>,
        creds: Option<&Credentials>,
    ) {
        let mut snap = ClientSnapshot::default();
        for s in creds.map(secrets).into_iter().flatten() {
            snap.insert(TypeUrl::Secret, Resource::new(s.name.clone(), s));
        }
        for l in listeners {
            snap.insert(TypeUrl::Listener, Resource::new(l.name.clone(), l));
        }
        for c in clusters {
            snap.insert(TypeUrl::Cluster, Resource::new(c.name.clone(), c));
        }
        self.generator
            .served
            .lock()
            .expect("served lock")
            .insert(node_cluster.to_string(), Arc::new(snap));
        self.changes.send_modify(|g| *g += 1);
    }
}

// ---------------------------------------------------------------------------------- resources

/// Istio's two secrets from a proxy's credentials, key inline (tests only: `jalur agent` hands
/// them over a local socket).
fn secrets(creds: &Credentials) -> Vec<Secret> {
    let bytes = |b: String| {
        Some(DataSource {
            specifier: Some(data_source::Specifier::InlineBytes(b.into_bytes())),
            ..Default::default()
        })
    };
    vec![
        Secret {
            name: "default".into(),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: bytes(creds.cert.chain_pem()),
                private_key: bytes(creds.cert.key_pem_secret()),
                ..Default::default()
            })),
        },
        Secret {
            name: "ROOTCA".into(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: bytes(creds.bundle.to_pem()),
                    ..Default::default()
                },
            )),
        },
    ]
}

fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    u32::from(addr.port()),
                ),
            ),
            ..Default::default()
        })),
    }
}

/// An `Any` of a message with no fields set (Envoy 1.40 wants typed configs, even empty ones).
fn empty_any(message: &str) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: format!("type.googleapis.com/{message}"),
        value: Vec::new(),
    }
}

fn strings(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.to_string())),
                };
                (k.to_string(), value)
            })
            .collect(),
    }
}

/// Where a proxy gets the SDS secrets: from `jalur agent` on the `sds-grpc` cluster (Istio's
/// shape, what the control plane emits), or over the ADS stream itself (a test's stock Envoy
/// without an agent; jalur proxy resolves both names in-process either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sds {
    Agent,
    Ads,
}

fn sds(name: &str, source: Sds) -> SdsSecretConfig {
    if source == Sds::Ads {
        return SdsSecretConfig {
            name: name.into(),
            sds_config: Some(ConfigSource {
                resource_api_version: ApiVersion::V3 as i32,
                config_source_specifier: Some(ConfigSourceSpecifier::Ads(Default::default())),
                ..Default::default()
            }),
        };
    }
    let grpc = GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
            grpc_service::EnvoyGrpc {
                cluster_name: "sds-grpc".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![grpc],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

fn common(san: Vec<MatchPattern>, alpn: &[&str], source: Sds) -> CommonTlsContext {
    let sans = san
        .into_iter()
        .map(|p| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(p),
                ignore_case: false,
            }),
            ..Default::default()
        })
        .collect();
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default", source)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA", source)),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn tls_socket<M: prost::Message + prost::Name>(ctx: M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// Istio's upstream mTLS socket for a service whose endpoints run as `sans`.
pub fn upstream_tls(sni: &str, sans: &[&str], h2: bool) -> TransportSocket {
    upstream_tls_from(sni, sans, h2, Sds::Agent)
}

pub fn upstream_tls_from(sni: &str, sans: &[&str], h2: bool, source: Sds) -> TransportSocket {
    let mut alpn = vec!["istio-peer-exchange", "istio"];
    if h2 {
        alpn.insert(0, "h2");
    }
    let matchers = sans
        .iter()
        .map(|s| MatchPattern::Exact(s.to_string()))
        .collect();
    tls_socket(UpstreamTlsContext {
        common_tls_context: Some(common(matchers, &alpn, source)),
        sni: sni.into(),
        ..Default::default()
    })
}

/// Istio's inbound mTLS socket: client certificates of the trust domain required.
pub fn downstream_mtls(source: Sds) -> TransportSocket {
    tls_socket(DownstreamTlsContext {
        common_tls_context: Some(common(
            vec![MatchPattern::Prefix("spiffe://cluster.local/".into())],
            &["h2", "http/1.1"],
            source,
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    })
}

/// A STATIC cluster to `endpoints` (each with `tlsMode: istio` metadata when `meshed`), with
/// Istio's auto-mTLS transport socket matches when `tls` is given.
pub fn cluster(
    name: &str,
    endpoints: &[SocketAddr],
    meshed: bool,
    tls: Option<TransportSocket>,
    h2: bool,
) -> Cluster {
    let metadata = meshed.then(|| Metadata {
        filter_metadata: [(
            "envoy.transport_socket_match".to_string(),
            strings(&[("tlsMode", "istio")]),
        )]
        .into(),
        ..Default::default()
    });
    let lb_endpoints = endpoints
        .iter()
        .map(|a| LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(*a)),
                ..Default::default()
            })),
            metadata: metadata.clone(),
            ..Default::default()
        })
        .collect();
    let protocol = if h2 {
        explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default())
    } else {
        explicit_http_config::ProtocolConfig::HttpProtocolOptions(Default::default())
    };
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    };
    let matches = tls
        .map(|tls| {
            vec![
                cluster::TransportSocketMatch {
                    name: "tlsMode-istio".into(),
                    r#match: Some(strings(&[("tlsMode", "istio")])),
                    transport_socket: Some(tls),
                },
                cluster::TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(TransportSocket {
                        name: "envoy.transport_sockets.raw_buffer".into(),
                        config_type: Some(transport_socket::ConfigType::TypedConfig(empty_any(
                            "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
                        ))),
                    }),
                },
            ]
        })
        .unwrap_or_default();
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            pack_any(options),
        )]
        .into(),
        transport_socket_matches: matches,
        ..Default::default()
    }
}

fn hcm_filter(cluster: &str) -> Filter {
    let route = Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: "test".into(),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        route_specifier: Some(RouteSpecifier::RouteConfig(RouteConfiguration {
            name: "routes".into(),
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
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

fn tcp_filter(cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: "tcp".into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(proxy))),
    }
}

/// PeerAuthentication modes, as the inbound chains express them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Strict,
    Permissive,
    Disable,
}

/// A listener on loopback (port 0) whose chains end in HTTP to `cluster` (or TCP when `tcp`),
/// with the inbound chains of `mode`.
pub fn listener(name: &str, cluster: &str, tcp: bool, mode: Mode) -> Listener {
    listener_from(name, cluster, tcp, mode, Sds::Agent)
}

pub fn listener_from(name: &str, cluster: &str, tcp: bool, mode: Mode, source: Sds) -> Listener {
    let filter = if tcp {
        tcp_filter(cluster)
    } else {
        hcm_filter(cluster)
    };
    let chain = |protocol: &str, socket: Option<TransportSocket>| FilterChain {
        filter_chain_match: (!protocol.is_empty()).then(|| FilterChainMatch {
            transport_protocol: protocol.into(),
            ..Default::default()
        }),
        filters: vec![filter.clone()],
        transport_socket: socket,
        ..Default::default()
    };
    let chains = match mode {
        Mode::Strict => vec![chain("tls", Some(downstream_mtls(source)))],
        Mode::Permissive => vec![
            chain("tls", Some(downstream_mtls(source))),
            chain("raw_buffer", None),
        ],
        Mode::Disable => vec![chain("", None)],
    };
    Listener {
        name: name.into(),
        address: Some(socket_address(([127, 0, 0, 1], 0).into())),
        filter_chains: chains,
        listener_filters: (mode != Mode::Disable)
            .then(|| ListenerFilter {
                name: "envoy.filters.listener.tls_inspector".into(),
                config_type: Some(
                    envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType::TypedConfig(
                        empty_any("envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"),
                    ),
                ),
                ..Default::default()
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

/// `cluster` with an upstream idle timeout: a connection idle this long is closed, so the next
/// request makes a new TLS handshake.
pub fn with_idle_timeout(mut c: Cluster, idle: std::time::Duration) -> Cluster {
    use prost::Message;
    let key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    if let Some(any) = c.typed_extension_protocol_options.get_mut(key) {
        let mut options = HttpProtocolOptions::decode(any.value.as_slice()).expect("options");
        options.common_http_protocol_options = Some(
            envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                idle_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: idle.as_secs() as i64,
                    nanos: idle.subsec_nanos() as i32,
                }),
                ..Default::default()
            },
        );
        *any = pack_any(options);
    }
    c
}
