//! Transport sockets -> [`ServerTls`] / [`ClientTls`] / [`UpstreamTransport`]: TLS as Istio
//! configures it. Certificates come from the SDS secrets Istio names `default` (the workload
//! certificate) and `ROOTCA` (the trust bundle), which jalur proxy resolves to its own
//! in-process credentials, or `file-cert:CHAIN~KEY` and `file-root:CA` (a gateway's or a
//! DestinationRule's files), which it reads itself (`tls/files.rs`); nothing is fetched, so an
//! SDS config source is not looked at, only the name. Inline PEM and `filename` data sources are
//! accepted on a listener for hand-written configs. Any other secret name, a file that does
//! not load, or a validation feature jalur cannot honour is refused with the field's path.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::{transport_socket, Metadata, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, subject_alt_name_matcher::SanType,
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use prost::Name;

use super::{decode, reject_if, string_match, type_name, At, Invalid, Res};
use crate::config::{
    CertSource, ClientTls, PeerMatch, PeerTrust, ServerTls, SocketMatch, StringMatch,
    UpstreamTransport,
};

mod files;

/// Istio's SDS name for the workload certificate and key.
pub const SDS_CERT: &str = "default";
/// Istio's SDS name for the trust bundle (validation context).
pub const SDS_ROOTS: &str = "ROOTCA";
/// The endpoint metadata namespace `transport_socket_matches` read.
pub const SOCKET_MATCH_METADATA: &str = "envoy.transport_socket_match";

const RAW_BUFFER: &str = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// What a transport socket is, by its typed config (or, without one, its name).
enum Socket<'a> {
    Plaintext,
    Downstream(&'a envoy_types::pb::google::protobuf::Any),
    Upstream(&'a envoy_types::pb::google::protobuf::Any),
}

fn socket(ts: Option<&TransportSocket>) -> Res<Socket<'_>> {
    let Some(ts) = ts else {
        return Ok(Socket::Plaintext);
    };
    let any = match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None if ts.name == "envoy.transport_sockets.raw_buffer" || ts.name.is_empty() => {
            return Ok(Socket::Plaintext)
        }
        None => {
            return Err(Invalid::here(format!(
                "transport socket \"{}\" without a typed_config is not supported",
                ts.name
            )))
        }
    };
    let kind = type_name(any);
    if kind == RAW_BUFFER {
        Ok(Socket::Plaintext)
    } else if kind == DownstreamTlsContext::full_name() {
        Ok(Socket::Downstream(any))
    } else if kind == UpstreamTlsContext::full_name() {
        Ok(Socket::Upstream(any))
    } else {
        Err(Invalid::new(
            "typed_config",
            format!(
                "transport socket \"{}\" ({}) is not supported; only raw_buffer and tls",
                ts.name, any.type_url
            ),
        ))
    }
}

// ----------------------------------------------------------------------------------- listeners

/// A filter chain's transport socket: plaintext (none or `raw_buffer`) or TLS termination
/// (`DownstreamTlsContext`) with a certificate from files, inline PEM or SDS `default`, and, for
/// mutual TLS, client certificates verified against SDS `ROOTCA`.
pub(super) fn downstream(ts: Option<&TransportSocket>) -> Res<Option<ServerTls>> {
    let any = match socket(ts)? {
        Socket::Plaintext => return Ok(None),
        Socket::Downstream(any) => any,
        Socket::Upstream(_) => {
            return Err(Invalid::new(
                "typed_config",
                "an UpstreamTlsContext cannot terminate TLS on a listener",
            ))
        }
    };
    let ctx: DownstreamTlsContext = decode(any).at("typed_config")?;
    server_tls(&ctx).at("typed_config").map(Some)
}

#[allow(deprecated)] // session_timeout etc. are read only to refuse them.
fn server_tls(ctx: &DownstreamTlsContext) -> Res<ServerTls> {
    reject_if(
        ctx.require_sni.as_ref().is_some_and(|b| b.value),
        "require_sni",
        "requiring SNI is not supported",
    )?;
    reject_if(
        ctx.session_ticket_keys_type.is_some(),
        "session_ticket_keys",
        "session ticket keys are not supported",
    )?;
    let Some(common) = &ctx.common_tls_context else {
        return Err(Invalid::new(
            "common_tls_context",
            "a certificate is required",
        ));
    };
    common_unsupported(common).at("common_tls_context")?;
    let cert = server_cert(common).at("common_tls_context")?;
    let peer = validation(common).at("common_tls_context")?;
    let require = ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value);
    let client_cert = match (require, peer) {
        (true, Some(peer)) => Some(peer),
        (true, None) => {
            return Err(Invalid::new(
                "require_client_certificate",
                "client certificates are required but no validation context says whom to trust (use SDS ROOTCA)",
            ))
        }
        // Envoy would ask for a certificate and let a client without one through; jalur only
        // does mTLS as a requirement (PERMISSIVE is a separate plaintext chain).
        (false, Some(_)) => {
            return Err(Invalid::new(
                "require_client_certificate",
                "a validation context without require_client_certificate (optional client certificates) is not supported",
            ))
        }
        (false, None) => None,
    };
    let alpn = if common.alpn_protocols.is_empty() {
        vec!["h2".into(), "http/1.1".into()]
    } else {
        common.alpn_protocols.clone()
    };
    Ok(ServerTls {
        cert,
        client_cert,
        alpn,
    })
}

/// The listener's certificate: exactly one, from files/inline PEM or SDS `default`.
fn server_cert(common: &CommonTlsContext) -> Res<CertSource> {
    use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
    match (
        common.tls_certificates.as_slice(),
        common.tls_certificate_sds_secret_configs.as_slice(),
    ) {
        ([cert], []) => {
            let read = |d: &Option<DataSource>, field: &str| -> Res<Vec<u8>> {
                match d.as_ref().and_then(|d| d.specifier.as_ref()) {
                    Some(Specifier::Filename(f)) => std::fs::read(f)
                        .map_err(|e| Invalid::new(field, format!("cannot read {f}: {e}"))),
                    Some(Specifier::InlineBytes(b)) => Ok(b.clone()),
                    Some(Specifier::InlineString(s)) => Ok(s.clone().into_bytes()),
                    _ => Err(Invalid::new(field, "a filename or inline PEM is required")),
                }
            };
            Ok(CertSource::Pem {
                cert_chain_pem: read(
                    &cert.certificate_chain,
                    "tls_certificates[0].certificate_chain",
                )?,
                private_key_pem: read(&cert.private_key, "tls_certificates[0].private_key")?,
            })
        }
        ([], [sds]) => files::cert(sds).at("tls_certificate_sds_secret_configs[0]"),
        ([], []) => Err(Invalid::new(
            "tls_certificates",
            "a certificate is required (tls_certificates or SDS \"default\")",
        )),
        _ => Err(Invalid::new(
            "tls_certificates",
            "exactly one certificate is supported (one of tls_certificates or tls_certificate_sds_secret_configs)",
        )),
    }
}

// ------------------------------------------------------------------------------------ clusters

/// A cluster's transport: its `transport_socket` and `transport_socket_matches`.
pub(super) fn cluster_transport(c: &XdsCluster) -> Res<UpstreamTransport> {
    reject_if(
        c.transport_socket_matcher.is_some(),
        "transport_socket_matcher",
        "the matcher form is not supported; use transport_socket_matches",
    )?;
    let default = upstream(c.transport_socket.as_ref()).at("transport_socket")?;
    if c.transport_socket_matches.is_empty() {
        return Ok(default.map_or(UpstreamTransport::Plaintext, UpstreamTransport::Tls));
    }
    let mut tls: Option<(ClientTls, String)> =
        default.clone().map(|t| (t, "transport_socket".to_string()));
    let mut matches = Vec::with_capacity(c.transport_socket_matches.len());
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let at = format!("transport_socket_matches[{i}]");
        let criteria = string_struct(m.r#match.as_ref()).at(format_args!("{at}.match"))?;
        let this =
            upstream(m.transport_socket.as_ref()).at(format_args!("{at}.transport_socket"))?;
        if let Some(this) = &this {
            match &tls {
                Some((first, _)) if first != this => {
                    return Err(Invalid::new(
                        format!("{at}.transport_socket"),
                        format!(
                            "differs from the TLS settings of {}: one TLS configuration per cluster is supported",
                            tls.as_ref().map_or("", |(_, w)| w.as_str())
                        ),
                    ))
                }
                Some(_) => {}
                None => tls = Some((this.clone(), at.clone())),
            }
        }
        matches.push(SocketMatch {
            name: m.name.clone(),
            criteria,
            tls: this.is_some(),
        });
    }
    Ok(match tls {
        None => UpstreamTransport::Plaintext,
        Some((tls, _)) => UpstreamTransport::ByEndpoint {
            tls,
            matches,
            otherwise_tls: default.is_some(),
        },
    })
}

/// An upstream transport socket: plaintext, or mesh mTLS (`UpstreamTlsContext` with SDS
/// `default` and `ROOTCA`).
fn upstream(ts: Option<&TransportSocket>) -> Res<Option<ClientTls>> {
    let any = match socket(ts)? {
        Socket::Plaintext => return Ok(None),
        Socket::Upstream(any) => any,
        Socket::Downstream(_) => {
            return Err(Invalid::new(
                "typed_config",
                "a DownstreamTlsContext cannot originate TLS to an upstream",
            ))
        }
    };
    let ctx: UpstreamTlsContext = decode(any).at("typed_config")?;
    client_tls(&ctx).at("typed_config").map(Some)
}

fn client_tls(ctx: &UpstreamTlsContext) -> Res<ClientTls> {
    reject_if(
        ctx.auto_host_sni || ctx.auto_sni_san_validation,
        "auto_host_sni",
        "SNI from the request's host is not supported; set sni",
    )?;
    reject_if(
        ctx.allow_renegotiation,
        "allow_renegotiation",
        "TLS renegotiation is not supported",
    )?;
    let Some(common) = &ctx.common_tls_context else {
        return Err(Invalid::new(
            "common_tls_context",
            "mesh mTLS needs SDS \"default\" and \"ROOTCA\"",
        ));
    };
    common_unsupported(common).at("common_tls_context")?;
    reject_if(
        !common.tls_certificates.is_empty(),
        "common_tls_context.tls_certificates",
        "inline or file data sources towards an upstream are not supported; use SDS \"default\" or file-cert:CERT~KEY",
    )?;
    let cert = match common.tls_certificate_sds_secret_configs.as_slice() {
        [] => None,
        [sds] => {
            Some(files::cert(sds).at("common_tls_context.tls_certificate_sds_secret_configs[0]")?)
        }
        _ => {
            return Err(Invalid::new(
                "common_tls_context.tls_certificate_sds_secret_configs",
                "exactly one certificate is supported",
            ))
        }
    };
    let peer = match validation(common).at("common_tls_context")? {
        Some(peer) => peer,
        None if files::empty_inline_validation(common) => PeerTrust::Unverified,
        None => {
            return Err(Invalid::new(
                "common_tls_context.validation_context_type",
                "the upstream's certificate must be verified: a validation context with SDS \"ROOTCA\" or file-root:CA is required (an empty one says not to verify)",
            ))
        }
    };
    if matches!(peer, PeerTrust::Mesh(_)) && cert != Some(CertSource::Mesh) {
        return Err(Invalid::new(
            "common_tls_context.tls_certificate_sds_secret_configs",
            "mesh mTLS (validation by SDS \"ROOTCA\") needs SDS \"default\" as the certificate",
        ));
    }
    Ok(ClientTls {
        sni: (!ctx.sni.is_empty()).then(|| ctx.sni.clone()),
        alpn: common.alpn_protocols.clone(),
        peer,
        cert,
    })
}

// ---------------------------------------------------------------------------------- validation

/// CommonTlsContext fields that would change the handshake and that jalur does not honour.
fn common_unsupported(common: &CommonTlsContext) -> Res<()> {
    reject_if(
        common.tls_params.is_some(),
        "tls_params",
        "TLS parameters are not supported (rustls's safe defaults apply: TLS 1.2 and 1.3)",
    )?;
    reject_if(
        common.custom_handshaker.is_some(),
        "custom_handshaker",
        "custom handshakers are not supported",
    )?;
    reject_if(
        common.key_log.is_some(),
        "key_log",
        "TLS key logging is not supported",
    )?;
    #[allow(deprecated)]
    let providers = common.tls_certificate_provider_instance.is_some()
        || common.tls_certificate_certificate_provider.is_some()
        || common
            .tls_certificate_certificate_provider_instance
            .is_some()
        || common.custom_tls_certificate_selector.is_some();
    reject_if(
        providers,
        "tls_certificate_provider_instance",
        "certificate providers are not supported; use SDS \"default\"",
    )
}

/// The validation context: `None` without one; with one, its trust is SDS `ROOTCA` with SAN
/// matchers naming SPIFFE ids (exact URIs) or a trust domain (URI prefix `spiffe://TD/`), or
/// SDS `file-root:CA` with exact SAN matchers (`tls/files.rs`).
fn validation(common: &CommonTlsContext) -> Res<Option<PeerTrust>> {
    let at = "validation_context_type";
    #[allow(deprecated)]
    let (default, sds) =
        match &common.validation_context_type {
            None => return Ok(None),
            Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => (None, Some(sds)),
            Some(ValidationContextType::CombinedValidationContext(c)) => (
                c.default_validation_context.as_ref(),
                c.validation_context_sds_secret_config.as_ref(),
            ),
            Some(ValidationContextType::ValidationContext(v))
                if *v == CertificateValidationContext::default() =>
            {
                return Ok(None)
            }
            Some(ValidationContextType::ValidationContext(_)) => return Err(Invalid::new(
                "validation_context",
                "an inline validation context (trusted_ca) is not supported; use SDS \"ROOTCA\"",
            )),
            Some(_) => {
                return Err(Invalid::new(
                    at,
                    "certificate providers are not supported; use SDS \"ROOTCA\"",
                ))
            }
        };
    match sds {
        Some(sds) if files::is_file_secret(sds) => {
            return files::roots(sds, default)
                .at("combined_validation_context")
                .map(Some)
        }
        Some(sds) => sds_name(sds, SDS_ROOTS)
            .at("combined_validation_context.validation_context_sds_secret_config")?,
        None => {
            return Err(Invalid::new(
                "combined_validation_context.validation_context_sds_secret_config",
                "the trust bundle must come from SDS \"ROOTCA\"",
            ))
        }
    }
    match default {
        None => Ok(Some(PeerTrust::Mesh(PeerMatch::OwnTrustDomain))),
        Some(v) => san_matchers(v)
            .at("combined_validation_context.default_validation_context")
            .map(|p| Some(PeerTrust::Mesh(p))),
    }
}

/// The SAN matchers of a validation context, refusing every other field that would change
/// which certificates pass.
fn san_matchers(v: &CertificateValidationContext) -> Res<PeerMatch> {
    refuse_unsupported(v, false)?;
    if v.match_typed_subject_alt_names.is_empty() {
        return Ok(PeerMatch::OwnTrustDomain);
    }
    spiffe_matchers(v)
}

/// Refuses every validation field that would change which certificates pass and that jalur
/// does not honour; with `untyped_sans`, `match_subject_alt_names` is the caller's to read.
fn refuse_unsupported(v: &CertificateValidationContext, untyped_sans: bool) -> Res<()> {
    #[allow(deprecated)]
    let others = [
        (v.trusted_ca.is_some(), "trusted_ca"),
        (
            v.ca_certificate_provider_instance.is_some(),
            "ca_certificate_provider_instance",
        ),
        (v.system_root_certs.is_some(), "system_root_certs"),
        (v.watched_directory.is_some(), "watched_directory"),
        (
            !v.verify_certificate_spki.is_empty(),
            "verify_certificate_spki",
        ),
        (
            !v.verify_certificate_hash.is_empty(),
            "verify_certificate_hash",
        ),
        (
            !untyped_sans && !v.match_subject_alt_names.is_empty(),
            "match_subject_alt_names",
        ),
        (
            v.require_signed_certificate_timestamp.is_some(),
            "require_signed_certificate_timestamp",
        ),
        (v.crl.is_some(), "crl"),
        (v.allow_expired_certificate, "allow_expired_certificate"),
        (v.trust_chain_verification != 0, "trust_chain_verification"),
        (
            v.custom_validator_config.is_some(),
            "custom_validator_config",
        ),
        (v.only_verify_leaf_cert_crl, "only_verify_leaf_cert_crl"),
        (v.max_verify_depth.is_some(), "max_verify_depth"),
    ];
    for (set, field) in others {
        reject_if(
            set,
            field,
            "is not supported (the chain is verified against the SDS validation secret, the peer by its SAN matchers)",
        )?;
    }
    Ok(())
}

/// `match_typed_subject_alt_names` as SPIFFE ids or one trust domain.
fn spiffe_matchers(v: &CertificateValidationContext) -> Res<PeerMatch> {
    let mut ids = Vec::new();
    let mut domains = Vec::new();
    for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
        let at = format!("match_typed_subject_alt_names[{i}]");
        reject_if(
            m.san_type != SanType::Uri as i32,
            &format!("{at}.san_type"),
            "only URI SANs (SPIFFE ids) are supported",
        )?;
        let Some(matcher) = &m.matcher else {
            return Err(Invalid::new(
                format!("{at}.matcher"),
                "a matcher is required",
            ));
        };
        reject_if(
            matcher.ignore_case,
            &format!("{at}.matcher.ignore_case"),
            "SPIFFE ids are matched case-sensitively",
        )?;
        match string_match(matcher).at(format_args!("{at}.matcher"))? {
            StringMatch::Exact(uri) => ids.push(
                uri.parse()
                    .map_err(|e| Invalid::new(format!("{at}.matcher.exact"), format!("{e}")))?,
            ),
            StringMatch::Prefix(p) => domains.push(
                trust_domain_prefix(&p)
                    .map_err(|m| Invalid::new(format!("{at}.matcher.prefix"), m))?,
            ),
            _ => {
                return Err(Invalid::new(
                    format!("{at}.matcher"),
                    "only exact SPIFFE ids and the prefix spiffe://TRUST_DOMAIN/ are supported",
                ))
            }
        }
    }
    match (ids.is_empty(), domains.as_slice()) {
        (false, []) => Ok(PeerMatch::AnyOf(ids)),
        (true, [td]) => Ok(PeerMatch::TrustDomain(td.clone())),
        _ => Err(Invalid::new(
            "match_typed_subject_alt_names",
            "either exact SPIFFE ids or one trust-domain prefix, not both",
        )),
    }
}

/// `spiffe://TD/` -> `TD`.
fn trust_domain_prefix(p: &str) -> Result<String, String> {
    p.strip_prefix("spiffe://")
        .and_then(|rest| rest.strip_suffix('/'))
        .filter(|td| !td.is_empty() && !td.contains('/'))
        .map(str::to_string)
        .ok_or_else(|| format!("prefix \"{p}\" is not spiffe://TRUST_DOMAIN/"))
}

/// An SDS secret config must name the secret jalur resolves in-process for this place.
fn sds_name(sds: &SdsSecretConfig, expected: &str) -> Res<()> {
    if sds.name == expected {
        return Ok(());
    }
    Err(Invalid::new(
        "name",
        format!(
            "SDS secret \"{}\" is unknown: jalur proxy serves its own identity as \"{SDS_CERT}\" and its trust bundle as \"{SDS_ROOTS}\", and expects \"{expected}\" here",
            sds.name
        ),
    ))
}

// ------------------------------------------------------------------------------------ metadata

/// A `transport_socket_matches[].match` struct: string values only.
fn string_struct(s: Option<&Struct>) -> Res<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in s.map(|s| &s.fields).into_iter().flatten() {
        match &v.kind {
            Some(Kind::StringValue(s)) => {
                out.insert(k.clone(), s.clone());
            }
            _ => return Err(Invalid::new(k.clone(), "only string values are supported")),
        }
    }
    Ok(out)
}

/// An endpoint's `envoy.transport_socket_match` metadata. Values that are not strings cannot
/// match a criterion (which are strings) and are left out.
pub(super) fn endpoint_socket_match(md: Option<&Metadata>) -> BTreeMap<String, String> {
    md.and_then(|m| m.filter_metadata.get(SOCKET_MATCH_METADATA))
        .map(|s| {
            s.fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}
