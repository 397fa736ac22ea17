//! TLS in Istio's shape (auto mTLS clusters, STRICT/PERMISSIVE inbound chains, SDS `default`
//! and `ROOTCA`) converts; everything jalur cannot honour is refused with its field path.

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    api_config_source::ApiType, grpc_service, ApiConfigSource, GrpcService, Metadata,
};
use envoy_types::pb::envoy::config::listener::v3::FilterChainMatch;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
    subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use super::*;
use crate::config::{CertSource, PeerMatch, PeerTrust, UpstreamTransport};

/// An SDS secret config as Istio writes it: the `sds-grpc` cluster over gRPC.
fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
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
                                cluster_name: "sds-grpc".into(),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

fn uri_matcher(pattern: MatchPattern) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: SanType::Uri as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(pattern),
            ignore_case: false,
        }),
        ..Default::default()
    }
}

fn common(sans: Vec<SubjectAltNameMatcher>, alpn: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![sds("default")],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA")),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

fn upstream_ctx() -> UpstreamTlsContext {
    UpstreamTlsContext {
        common_tls_context: Some(common(
            vec![uri_matcher(MatchPattern::Exact(PAYMENTS.into()))],
            &["istio-peer-exchange", "istio"],
        )),
        sni: "outbound_.8080_._.payments.shop.svc.cluster.local".into(),
        ..Default::default()
    }
}

fn tls_socket<M: Message + Name>(ctx: M) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

fn raw_socket() -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(Any {
            type_url:
                "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
                    .into(),
            value: vec![],
        })),
    }
}

fn strings(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect(),
    }
}

/// An outbound cluster with auto mTLS, as the control plane emits it.
fn auto_mtls(ctx: UpstreamTlsContext) -> XdsCluster {
    let mut c = eds_cluster("outbound|8080||payments.shop.svc.cluster.local");
    c.transport_socket_matches = vec![
        TransportSocketMatch {
            name: "tlsMode-istio".into(),
            r#match: Some(strings(&[("tlsMode", "istio")])),
            transport_socket: Some(tls_socket(ctx)),
        },
        TransportSocketMatch {
            name: "tlsMode-disabled".into(),
            r#match: Some(Struct::default()),
            transport_socket: Some(raw_socket()),
        },
    ];
    c
}

fn meta(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn auto_mtls_cluster_picks_tls_by_endpoint_metadata() {
    let (c, _) = cluster(&auto_mtls(upstream_ctx())).expect("Istio's auto mTLS converts");
    let tls = c.transport.tls().expect("has TLS settings").clone();
    assert_eq!(
        tls.sni.as_deref(),
        Some("outbound_.8080_._.payments.shop.svc.cluster.local")
    );
    assert_eq!(tls.alpn, vec!["istio-peer-exchange", "istio"]);
    assert_eq!(
        tls.peer,
        PeerTrust::Mesh(PeerMatch::AnyOf(vec![PAYMENTS.parse().expect("id")]))
    );
    let capable = meta(&[("tlsMode", "istio")]);
    assert_eq!(c.transport.for_endpoint(&capable), Some(&tls));
    assert_eq!(
        c.transport.for_endpoint(&meta(&[])),
        None,
        "legacy endpoint"
    );
    assert_eq!(
        c.transport.for_endpoint(&meta(&[("tlsMode", "disabled")])),
        None
    );

    // DestinationRule ISTIO_MUTUAL: the same socket for every endpoint.
    let mut mutual = eds_cluster("outbound|8080||payments.shop.svc.cluster.local");
    mutual.transport_socket = Some(tls_socket(upstream_ctx()));
    let (c, _) = cluster(&mutual).expect("ISTIO_MUTUAL converts");
    assert!(matches!(c.transport, UpstreamTransport::Tls(_)));
    assert!(c.transport.for_endpoint(&meta(&[])).is_some());

    // A plain cluster stays plaintext.
    let (c, _) = cluster(&eds_cluster("c")).expect("plain");
    assert_eq!(c.transport, UpstreamTransport::Plaintext);
}

#[test]
fn endpoint_metadata_carries_the_socket_match() {
    let mut e = lb_endpoint("10.0.0.1", 15006, HealthStatus::Healthy, None);
    e.metadata = Some(Metadata {
        filter_metadata: [(
            "envoy.transport_socket_match".to_string(),
            strings(&[("tlsMode", "istio")]),
        )]
        .into(),
        ..Default::default()
    });
    let set = endpoints(&cla("c", vec![group(None, vec![e])])).expect("converts");
    assert_eq!(set.endpoints[0].socket_match, meta(&[("tlsMode", "istio")]));
}

fn cluster_error(c: &XdsCluster) -> (String, String) {
    let e = cluster(c).expect_err("refused");
    (e.field, e.message)
}

const CTX: &str = "transport_socket_matches[0].transport_socket.typed_config.common_tls_context";

#[test]
fn unknown_secrets_inline_certs_and_validation_fields_are_refused_by_path() {
    let mut other_secret = upstream_ctx();
    if let Some(c) = other_secret.common_tls_context.as_mut() {
        c.tls_certificate_sds_secret_configs = vec![sds("file-cert:/etc/certs/x.pem")];
    }
    let (field, message) = cluster_error(&auto_mtls(other_secret));
    assert_eq!(
        field,
        format!("{CTX}.tls_certificate_sds_secret_configs[0].name")
    );
    assert!(
        message.contains("\"file-cert:/etc/certs/x.pem\" is not file-cert:CERT_PATH~KEY_PATH"),
        "{message}"
    );
    let mut unknown = upstream_ctx();
    if let Some(c) = unknown.common_tls_context.as_mut() {
        c.tls_certificate_sds_secret_configs = vec![sds("kubernetes://x")];
    }
    let (_, message) = cluster_error(&auto_mtls(unknown));
    assert!(
        message.contains("\"kubernetes://x\" is unknown"),
        "{message}"
    );

    let mut other_roots = upstream_ctx();
    if let Some(ValidationContextType::CombinedValidationContext(v)) = other_roots
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    {
        v.validation_context_sds_secret_config = Some(sds("default"));
    }
    assert_eq!(
        cluster_error(&auto_mtls(other_roots)).0,
        format!("{CTX}.combined_validation_context.validation_context_sds_secret_config.name")
    );

    let mut inline = upstream_ctx();
    if let Some(c) = inline.common_tls_context.as_mut() {
        c.tls_certificates = vec![TlsCertificate::default()];
    }
    assert_eq!(
        cluster_error(&auto_mtls(inline)).0,
        format!("{CTX}.tls_certificates")
    );

    let mut pinned = upstream_ctx();
    if let Some(ValidationContextType::CombinedValidationContext(v)) = pinned
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    {
        if let Some(d) = v.default_validation_context.as_mut() {
            d.verify_certificate_hash = vec!["ab:cd".into()];
        }
    }
    assert_eq!(
        cluster_error(&auto_mtls(pinned)).0,
        format!(
            "{CTX}.combined_validation_context.default_validation_context.verify_certificate_hash"
        )
    );

    let mut dns_san = upstream_ctx();
    if let Some(ValidationContextType::CombinedValidationContext(v)) = dns_san
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    {
        if let Some(d) = v.default_validation_context.as_mut() {
            d.match_typed_subject_alt_names[0].san_type = SanType::Dns as i32;
        }
    }
    assert_eq!(
        cluster_error(&auto_mtls(dns_san)).0,
        format!("{CTX}.combined_validation_context.default_validation_context.match_typed_subject_alt_names[0].san_type")
    );

    let mut no_validation = upstream_ctx();
    if let Some(c) = no_validation.common_tls_context.as_mut() {
        c.validation_context_type = None;
    }
    assert_eq!(
        cluster_error(&auto_mtls(no_validation)).0,
        format!("{CTX}.validation_context_type")
    );

    // Two different TLS settings in one cluster.
    let mut two = auto_mtls(upstream_ctx());
    let mut other = upstream_ctx();
    other.sni = "elsewhere".into();
    two.transport_socket = Some(tls_socket(other));
    assert_eq!(
        cluster_error(&two).0,
        "transport_socket_matches[0].transport_socket"
    );
}

// ----------------------------------------------------------------------------------- listeners

fn downstream_ctx() -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(common(
            vec![uri_matcher(MatchPattern::Prefix(
                "spiffe://cluster.local/".into(),
            ))],
            &["h2", "http/1.1"],
        )),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

fn chain(transport_protocol: &str, socket: Option<TransportSocket>) -> FilterChain {
    let mut c = outbound().filter_chains[0].clone();
    c.filter_chain_match = Some(FilterChainMatch {
        transport_protocol: transport_protocol.into(),
        ..Default::default()
    });
    c.transport_socket = socket;
    c
}

fn inbound(chains: Vec<FilterChain>) -> XdsListener {
    let mut l = outbound();
    l.name = "inbound".into();
    l.filter_chains = chains;
    l.listener_filters = vec![
        envoy_types::pb::envoy::config::listener::v3::ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            ..Default::default()
        },
    ];
    l
}

#[test]
fn strict_and_permissive_inbound_chains() {
    let strict = listener(&inbound(vec![chain(
        "tls",
        Some(tls_socket(downstream_ctx())),
    )]))
    .expect("STRICT converts");
    let tls = strict.tls.expect("terminates TLS");
    assert_eq!(tls.cert, CertSource::Mesh);
    assert_eq!(
        tls.client_cert,
        Some(PeerTrust::Mesh(PeerMatch::TrustDomain(
            "cluster.local".into()
        )))
    );
    assert_eq!(tls.alpn, vec!["h2", "http/1.1"]);
    assert!(!strict.plaintext_too, "STRICT has no plaintext chain");

    let permissive = listener(&inbound(vec![
        chain("tls", Some(tls_socket(downstream_ctx()))),
        chain("raw_buffer", None),
    ]))
    .expect("PERMISSIVE converts");
    assert!(permissive.tls.is_some() && permissive.plaintext_too);

    // Without SAN matchers: the proxy's own trust domain.
    let mut no_sans = downstream_ctx();
    no_sans.common_tls_context = Some(common(vec![], &[]));
    let l = listener(&inbound(vec![chain("tls", Some(tls_socket(no_sans)))])).expect("ok");
    assert_eq!(
        l.tls.and_then(|t| t.client_cert),
        Some(PeerTrust::Mesh(PeerMatch::OwnTrustDomain))
    );
}

#[test]
fn chains_jalur_cannot_serve_are_refused_by_path() {
    let field = |l: XdsListener| listener(&l).expect_err("refused").field;
    assert_eq!(
        field(inbound(vec![chain("tls", None)])),
        "filter_chains[0].transport_socket"
    );
    assert_eq!(
        field(inbound(vec![chain(
            "raw_buffer",
            Some(tls_socket(downstream_ctx()))
        )])),
        "filter_chains[0].transport_socket"
    );
    assert_eq!(
        field(inbound(vec![chain("quic", None)])),
        "filter_chains[0].filter_chain_match.transport_protocol"
    );
    let mut other_route = chain("raw_buffer", None);
    other_route.filters = hcm_listener(hcm(rds("elsewhere"), filters())).filter_chains[0]
        .filters
        .clone();
    assert_eq!(
        field(inbound(vec![
            chain("tls", Some(tls_socket(downstream_ctx()))),
            other_route
        ])),
        "filter_chains[1].filters"
    );
    let mut unknown_secret = downstream_ctx();
    if let Some(c) = unknown_secret.common_tls_context.as_mut() {
        c.tls_certificate_sds_secret_configs = vec![sds("kubernetes://gw-cert")];
    }
    assert_eq!(
        field(inbound(vec![chain("tls", Some(tls_socket(unknown_secret)))])),
        "filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name"
    );
    let mut optional = downstream_ctx();
    optional.require_client_certificate = None;
    assert_eq!(
        field(inbound(vec![chain("tls", Some(tls_socket(optional)))])),
        "filter_chains[0].transport_socket.typed_config.require_client_certificate"
    );
}

// ----------------------------------------------------------------------------- files (gateway)

/// A gateway server's context as Istio writes it for files: `file-cert:` and, for MUTUAL,
/// `file-root:` with exact `match_subject_alt_names`.
#[allow(deprecated)]
fn file_ctx(cert: &str, ca: Option<&str>, sans: &[&str]) -> DownstreamTlsContext {
    let validation = ca.map(|ca| {
        ValidationContextType::CombinedValidationContext(CombinedCertificateValidationContext {
            default_validation_context: Some(CertificateValidationContext {
                match_subject_alt_names: sans
                    .iter()
                    .map(|s| StringMatcher {
                        match_pattern: Some(MatchPattern::Exact(s.to_string())),
                        ignore_case: false,
                    })
                    .collect(),
                ..Default::default()
            }),
            validation_context_sds_secret_config: Some(sds(ca)),
            ..Default::default()
        })
    });
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(cert)],
            validation_context_type: validation,
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue {
            value: ca.is_some(),
        }),
        ..Default::default()
    }
}

#[test]
fn file_secrets_load_at_conversion_and_a_bad_file_nacks_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = rcgen::generate_simple_self_signed(vec!["ca.example.com".to_string()]).expect("ca");
    let leaf =
        rcgen::generate_simple_self_signed(vec!["gw.example.com".to_string()]).expect("leaf");
    let (c, k, r) = (
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
        dir.path().join("ca.pem"),
    );
    std::fs::write(&c, leaf.cert.pem()).expect("c");
    std::fs::write(&k, leaf.signing_key.serialize_pem()).expect("k");
    std::fs::write(&r, ca.cert.pem()).expect("ca");
    let cert_name = format!("file-cert:{}~{}", c.display(), k.display());
    let root_name = format!("file-root:{}", r.display());
    let one = |ctx| listener(&inbound(vec![chain("tls", Some(tls_socket(ctx)))]));

    let simple = one(file_ctx(&cert_name, None, &[])).expect("SIMPLE converts");
    let tls = simple.tls.expect("terminates");
    assert_eq!(
        tls.cert,
        CertSource::Files {
            chain: c.clone(),
            key: k.clone()
        }
    );
    assert_eq!(tls.client_cert, None);
    let mutual = one(file_ctx(
        &cert_name,
        Some(&root_name),
        &["client.example.com"],
    ))
    .expect("MUTUAL converts");
    assert_eq!(
        mutual.tls.and_then(|t| t.client_cert),
        Some(PeerTrust::Files {
            ca: r.clone(),
            sans: vec!["client.example.com".into()]
        })
    );

    // A missing file: NACKed naming the field and the file.
    let missing = format!(
        "file-cert:{}~{}",
        dir.path().join("gone.pem").display(),
        k.display()
    );
    let e = one(file_ctx(&missing, None, &[])).expect_err("missing file");
    assert_eq!(
        e.field,
        "filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_sds_secret_configs[0].name"
    );
    assert!(e.to_string().contains("gone.pem"), "{e}");
    // A CA file that is not PEM: NACKed naming it.
    std::fs::write(dir.path().join("bad-ca.pem"), "not a certificate").expect("bad");
    let bad_root = format!("file-root:{}", dir.path().join("bad-ca.pem").display());
    let e = one(file_ctx(&cert_name, Some(&bad_root), &[])).expect_err("bad CA");
    assert!(e.to_string().contains("bad-ca.pem"), "{e}");
    // A key that is not the certificate's: NACKed, and no key bytes in the message.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_string()]).expect("other");
    std::fs::write(
        dir.path().join("other-key.pem"),
        other.signing_key.serialize_pem(),
    )
    .expect("k2");
    let mismatched = format!(
        "file-cert:{}~{}",
        c.display(),
        dir.path().join("other-key.pem").display()
    );
    let e = one(file_ctx(&mismatched, None, &[])).expect_err("mismatched key");
    assert!(e.to_string().contains("other-key.pem"), "{e}");
    assert!(!e.to_string().contains("PRIVATE KEY"), "{e}");
    // Names swapped (a CA where a certificate goes): refused.
    assert!(one(file_ctx(&root_name, None, &[])).is_err());
}
