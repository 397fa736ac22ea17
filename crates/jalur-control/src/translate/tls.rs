//! mTLS in Istio's shape: upstream TLS for clusters to mesh workloads (auto mTLS by endpoint
//! label, or a DestinationRule's `ISTIO_MUTUAL`), endpoint metadata that selects it, and the
//! sidecar inbound filter chains a PeerAuthentication asks for. Certificates are never inline:
//! SDS names `default` (own chain and key) and `ROOTCA` (the trust bundle), served to Envoy by
//! `jalur agent` over the bootstrap cluster `sds-grpc`, resolved in-process by jalur proxy.
//!
//! Only clients that hold mesh credentials (their own label `security.istio.io/tlsMode: istio`)
//! get any of it: a client without them could not present a certificate, so it keeps today's
//! plaintext config and the server's policy decides whether to accept it. Proxyless gRPC
//! clients never get TLS (they have no SDS here).

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::cluster::v3::{cluster::TransportSocketMatch, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service,
    transport_socket, ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Metadata,
    TransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    listener_filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::google::protobuf::{value::Kind, BoolValue, Struct, Value};
use envoy_types::util::pack_any;
use jalur_identity::files::FileSecret;
use jalur_model::networking::{ClientTlsSettings, ServerTlsMode, ServerTlsSettings, TlsMode};
use jalur_model::security::{MtlsMode, PeerPolicies};

use super::Ctx;
use crate::mesh::{Endpoint, Service};
use crate::workload::{is_mtls_labelled, Port, TLS_MODE_ISTIO};

/// Istio's SDS secret names (and, for files, `file-cert:CHAIN~KEY` / `file-root:CA` from
/// `jalur_identity::files`).
pub const SDS_DEFAULT: &str = "default";
pub const SDS_ROOTCA: &str = "ROOTCA";
/// The static cluster of the Envoy bootstrap `jalur agent` writes: a pipe to its SDS socket.
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Endpoint metadata filter that `transport_socket_matches` look at.
pub const SOCKET_MATCH_FILTER: &str = "envoy.transport_socket_match";
pub const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// Istio's ALPN for in-mesh mTLS (peer metadata exchange, then "istio"); h2 clusters add "h2".
const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];

/// The client holds mesh credentials, so it can originate and terminate mTLS.
pub fn client_has_credentials(ctx: &Ctx) -> bool {
    !ctx.proxyless && is_mtls_labelled(&ctx.client.labels)
}

/// An SDS reference in Istio's shape: over gRPC to the `sds-grpc` cluster, node sent once.
pub fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(
                ApiConfigSource {
                    api_type: ApiType::Grpc as i32,
                    transport_api_version: ApiVersion::V3 as i32,
                    set_node_on_first_message_only: true,
                    grpc_services: vec![GrpcService {
                        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                            grpc_service::EnvoyGrpc {
                                cluster_name: SDS_CLUSTER.to_string(),
                                ..grpc_service::EnvoyGrpc::default()
                            },
                        )),
                        ..GrpcService::default()
                    }],
                    ..ApiConfigSource::default()
                },
            )),
            ..ConfigSource::default()
        }),
    }
}

fn uri_matcher(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ..StringMatcher::default()
        }),
        ..SubjectAltNameMatcher::default()
    }
}

/// Own certificate `default`, peers validated against `ROOTCA` and the given SAN matchers.
fn common(sans: Vec<SubjectAltNameMatcher>, alpn: Vec<String>) -> CommonTlsContext {
    let validation = CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_typed_subject_alt_names: sans,
            ..CertificateValidationContext::default()
        }),
        validation_context_sds_secret_config: Some(sds(SDS_ROOTCA)),
        ..CombinedCertificateValidationContext::default()
    };
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds(SDS_DEFAULT)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(validation)),
        alpn_protocols: alpn,
        ..CommonTlsContext::default()
    }
}

fn socket(name: &str, config: envoy_types::pb::google::protobuf::Any) -> TransportSocket {
    TransportSocket {
        name: name.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(config)),
    }
}

/// The client side of in-mesh mTLS to a cluster: SNI `outbound_.PORT_.SUBSET_.HOST`, the peer's
/// SPIFFE id among `spiffe_ids` (every account serving the service).
pub fn upstream_socket(
    port: &Port,
    subset: Option<&str>,
    host: &str,
    spiffe_ids: &[String],
) -> TransportSocket {
    let mut alpn: Vec<String> = ALPN_IN_MESH.iter().map(|s| s.to_string()).collect();
    if port.protocol.is_h2() {
        alpn.push("h2".into());
    }
    let sans = spiffe_ids
        .iter()
        .map(|id| uri_matcher(MatchPattern::Exact(id.clone())))
        .collect();
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common(sans, alpn)),
        sni: format!(
            "outbound_.{}_.{}_.{host}",
            port.number,
            subset.unwrap_or_default()
        ),
        ..UpstreamTlsContext::default()
    };
    socket(TLS_SOCKET, pack_any(ctx))
}

/// The SPIFFE ids of a service's mTLS-capable endpoints, sorted and unique.
pub fn spiffe_ids(ctx: &Ctx, endpoints: &[Endpoint]) -> Vec<String> {
    let td = &ctx.mesh.security.trust_domain;
    let ids: BTreeSet<String> = endpoints
        .iter()
        .filter_map(|e| e.identity.as_ref())
        .map(|i| i.spiffe_id(td))
        .collect();
    ids.into_iter().collect()
}

/// Secures one outbound cluster as Istio does: a DestinationRule `tls.mode` (after port-level
/// and subset overrides) of SIMPLE/MUTUAL → TLS origination with the DR's files (any proxy:
/// it needs no mesh identity; not proxyless gRPC, which has no SDS here); ISTIO_MUTUAL → mesh
/// TLS to every endpoint; DISABLE → none; no tls → auto mTLS, TLS to endpoints labelled
/// `tlsMode: istio` and plaintext to the rest, if the service has any such endpoint.
pub fn secure_cluster(
    ctx: &Ctx,
    c: &mut Cluster,
    service: &Service,
    port: &Port,
    subset: Option<&str>,
    dr: Option<&ClientTlsSettings>,
) {
    if let Some(t) = dr.filter(|t| matches!(t.mode, TlsMode::Simple | TlsMode::Mutual)) {
        if !ctx.proxyless {
            c.transport_socket = originating_socket(t, &service.host, port);
        }
        return;
    }
    let dr_mode = dr.map(|t| t.mode);
    if !client_has_credentials(ctx) {
        return;
    }
    let endpoints = ctx.mesh.endpoints(&service.host);
    let ids = spiffe_ids(ctx, endpoints);
    let tls = || upstream_socket(port, subset, &service.host, &ids);
    match dr_mode {
        Some(TlsMode::IstioMutual) => c.transport_socket = Some(tls()),
        Some(_) => {}
        None if ids.is_empty() => {}
        None => {
            c.transport_socket_matches = vec![
                TransportSocketMatch {
                    name: format!("tlsMode-{TLS_MODE_ISTIO}"),
                    r#match: Some(tls_mode_struct()),
                    transport_socket: Some(tls()),
                },
                TransportSocketMatch {
                    name: "tlsMode-disabled".into(),
                    r#match: Some(Struct::default()),
                    transport_socket: Some(socket(RAW_SOCKET, pack_any(RawBuffer::default()))),
                },
            ]
        }
    }
}

/// `{tlsMode: "istio"}`, the match of the TLS socket and the metadata of capable endpoints.
fn tls_mode_struct() -> Struct {
    let mut s = Struct::default();
    s.fields.insert(
        "tlsMode".into(),
        Value {
            kind: Some(Kind::StringValue(TLS_MODE_ISTIO.into())),
        },
    );
    s
}

/// Endpoint metadata for a capable endpoint, so the `tlsMode-istio` socket match selects it;
/// none on a port its PeerAuthentication DISABLEs, so callers speak plaintext there as the
/// endpoint's inbound expects (Istio's auto mTLS).
pub fn endpoint_metadata(e: &Endpoint, service_port: u32) -> Option<Metadata> {
    e.identity.as_ref()?;
    if e.plaintext_ports.contains(&service_port) {
        return None;
    }
    let mut m = Metadata::default();
    m.filter_metadata
        .insert(SOCKET_MATCH_FILTER.into(), tls_mode_struct());
    Some(m)
}

/// The mode a sidecar's inbound listener serves with: the PeerAuthentication that applies to its
/// workload and app port, or DISABLE (today's plaintext) when it holds no credentials.
pub fn inbound_mode(ctx: &Ctx, app_port: u32) -> MtlsMode {
    if !client_has_credentials(ctx) {
        return MtlsMode::Disable;
    }
    let policies = PeerPolicies::new(&ctx.mesh.config, &ctx.mesh.security.root_namespace);
    let c = ctx.client;
    policies
        .resolve(&c.namespace, &c.labels, Some(app_port))
        .mode
}

/// The server side: a client certificate is required and must carry a SPIFFE id of this trust
/// domain; the app protocol is negotiated by ALPN.
fn downstream_socket(trust_domain: &str) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common(
            vec![uri_matcher(MatchPattern::Prefix(format!(
                "spiffe://{trust_domain}/"
            )))],
            vec!["h2".into(), "http/1.1".into()],
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..DownstreamTlsContext::default()
    };
    socket(TLS_SOCKET, pack_any(ctx))
}

/// Turns a plaintext inbound filter chain into the chains `mode` asks for (STRICT: TLS only;
/// PERMISSIVE: TLS and plaintext, told apart by the tls_inspector), adding the inspector.
pub fn inbound_chains(ctx: &Ctx, mode: MtlsMode, listener: &mut Listener) {
    if !matches!(mode, MtlsMode::Strict | MtlsMode::Permissive) {
        return;
    }
    let Some(plain) = listener.filter_chains.first().cloned() else {
        return;
    };
    let with_protocol = |protocol: &str| FilterChainMatch {
        transport_protocol: protocol.to_string(),
        ..FilterChainMatch::default()
    };
    let mut chains = vec![FilterChain {
        filter_chain_match: Some(with_protocol("tls")),
        transport_socket: Some(downstream_socket(&ctx.mesh.security.trust_domain)),
        ..plain.clone()
    }];
    if mode == MtlsMode::Permissive {
        chains.push(FilterChain {
            filter_chain_match: Some(with_protocol("raw_buffer")),
            ..plain
        });
    }
    listener.filter_chains = chains;
    listener.listener_filters = vec![ListenerFilter {
        name: TLS_INSPECTOR.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            TlsInspector::default(),
        ))),
        ..ListenerFilter::default()
    }];
}

/// A Gateway server's TLS as Istio writes it: certificates from files as the SDS names
/// `file-cert:CHAIN~KEY` (SIMPLE, MUTUAL) and `file-root:CA` with `subjectAltNames` as exact
/// SAN matchers and a required client certificate (MUTUAL), or the gateway's own mesh identity
/// with clients of this trust domain (or the given `subjectAltNames`) required (ISTIO_MUTUAL,
/// an east-west port). Never key bytes nor file names in the xDS itself: `jalur agent` serves
/// the names to Envoy, jalur proxy reads the files. `None` for what does not terminate here
/// (PASSTHROUGH, or settings analyze reports as incomplete, such as `credentialName`).
pub fn terminating(ctx: &Ctx, tls: &ServerTlsSettings) -> Option<TransportSocket> {
    let alpn = vec!["h2".to_string(), "http/1.1".to_string()];
    let ctx = match tls.mode? {
        ServerTlsMode::IstioMutual => {
            let sans = if tls.subject_alt_names.is_empty() {
                vec![uri_matcher(MatchPattern::Prefix(format!(
                    "spiffe://{}/",
                    ctx.mesh.security.trust_domain
                )))]
            } else {
                tls.subject_alt_names
                    .iter()
                    .map(|s| uri_matcher(MatchPattern::Exact(s.clone())))
                    .collect()
            };
            DownstreamTlsContext {
                common_tls_context: Some(common(sans, alpn)),
                require_client_certificate: Some(BoolValue { value: true }),
                ..DownstreamTlsContext::default()
            }
        }
        mode @ (ServerTlsMode::Simple | ServerTlsMode::Mutual) => {
            if tls.credential_name.is_some() {
                return None;
            }
            let cert = FileSecret::Cert {
                chain: tls.server_certificate.as_ref()?.into(),
                key: tls.private_key.as_ref()?.into(),
            };
            let mut common = CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![sds(&cert.sds_name())],
                alpn_protocols: alpn,
                ..CommonTlsContext::default()
            };
            let mutual = mode == ServerTlsMode::Mutual;
            if mutual {
                let ca = FileSecret::Root {
                    ca: tls.ca_certificates.as_ref()?.into(),
                };
                common.validation_context_type = Some(file_validation(&ca, &tls.subject_alt_names));
            }
            DownstreamTlsContext {
                common_tls_context: Some(common),
                require_client_certificate: Some(BoolValue { value: mutual }),
                ..DownstreamTlsContext::default()
            }
        }
        _ => return None,
    };
    Some(socket(TLS_SOCKET, pack_any(ctx)))
}

/// Trust from a CA file and `subjectAltNames` as exact matchers on any SAN type, in Istio's
/// shape (`match_subject_alt_names`, which Envoy still honours).
#[allow(deprecated)]
fn file_validation(ca: &FileSecret, sans: &[String]) -> ValidationContextType {
    let exact = |s: &String| StringMatcher {
        match_pattern: Some(MatchPattern::Exact(s.clone())),
        ..StringMatcher::default()
    };
    ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_subject_alt_names: sans.iter().map(exact).collect(),
            ..CertificateValidationContext::default()
        }),
        validation_context_sds_secret_config: Some(sds(&ca.sds_name())),
        ..CombinedCertificateValidationContext::default()
    })
}

/// Where a DestinationRule without `caCertificates` gets its roots: the system bundle
/// (Debian/Ubuntu path), as Istio verifies at the client by default.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS origination to a server outside the mesh (DestinationRule SIMPLE/MUTUAL), in Istio's
/// shape: SNI from `sni` (jalur: the service host when unset, where Istio derives it per
/// request with auto SNI: the same name for egress to that host), the server checked against
/// `file-root:CA` (`caCertificates`, else the system bundle) with `subjectAltNames` as exact
/// matchers, an empty validation context with `insecureSkipVerify`, and for MUTUAL the client
/// certificate `file-cert:CERT~KEY`. `None` when MUTUAL lacks its files (analyze reports it) or
/// the settings use `credentialName` (Kubernetes secrets: not available here).
pub fn originating_socket(
    tls: &ClientTlsSettings,
    host: &str,
    port: &Port,
) -> Option<TransportSocket> {
    if tls.credential_name.is_some() {
        return None;
    }
    let mut common = CommonTlsContext::default();
    if port.protocol.is_h2() {
        common.alpn_protocols = vec!["h2".into()];
    }
    if tls.mode == TlsMode::Mutual {
        let cert = FileSecret::Cert {
            chain: tls.client_certificate.as_ref()?.into(),
            key: tls.private_key.as_ref()?.into(),
        };
        common.tls_certificate_sds_secret_configs = vec![sds(&cert.sds_name())];
    }
    common.validation_context_type = Some(if tls.insecure_skip_verify == Some(true) {
        ValidationContextType::ValidationContext(CertificateValidationContext::default())
    } else {
        let ca = FileSecret::Root {
            ca: tls
                .ca_certificates
                .as_deref()
                .filter(|c| !c.is_empty())
                .unwrap_or(SYSTEM_ROOTS)
                .into(),
        };
        file_validation(&ca, &tls.subject_alt_names)
    });
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_else(|| host.to_string()),
        ..UpstreamTlsContext::default()
    };
    Some(socket(TLS_SOCKET, pack_any(ctx)))
}
