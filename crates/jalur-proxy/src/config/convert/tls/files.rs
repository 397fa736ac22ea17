//! SDS names Istio gives certificates from files: `file-cert:CHAIN~KEY` (a gateway server's
//! `serverCertificate`/`privateKey`, a DestinationRule's client certificate) and `file-root:CA`
//! (`caCertificates`). jalur proxy reads those files itself; they are loaded here once so a
//! file that is missing or does not parse NACKs the resource, naming the file. The listener
//! then watches them (`tls.rs`), so later changes apply without a config push.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use jalur_identity::files::{CertFiles, FileSecret, RootFiles};

use super::{refuse_unsupported, reject_if, sds_name, At, Invalid, Res, SDS_CERT};
use crate::config::{CertSource, PeerTrust};

/// An inline validation context with nothing in it: Envoy then verifies nothing (Istio's
/// `insecureSkipVerify`).
pub(super) fn empty_inline_validation(
    common: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
) -> bool {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    matches!(
        &common.validation_context_type,
        Some(ValidationContextType::ValidationContext(v)) if *v == CertificateValidationContext::default()
    )
}

pub(super) fn is_file_secret(sds: &SdsSecretConfig) -> bool {
    FileSecret::parse(&sds.name).is_some()
}

fn parse(sds: &SdsSecretConfig) -> Res<Option<FileSecret>> {
    FileSecret::parse(&sds.name)
        .transpose()
        .map_err(|e| Invalid::new("name", e))
}

/// A certificate's SDS name: `default` (the mesh certificate) or `file-cert:CHAIN~KEY`.
pub(super) fn cert(sds: &SdsSecretConfig) -> Res<CertSource> {
    match parse(sds)? {
        None => sds_name(sds, SDS_CERT).map(|()| CertSource::Mesh),
        Some(FileSecret::Cert { chain, key }) => {
            CertFiles::load(&chain, &key).map_err(|e| Invalid::new("name", e.to_string()))?;
            Ok(CertSource::Files { chain, key })
        }
        Some(FileSecret::Root { .. }) => Err(Invalid::new(
            "name",
            format!(
                "\"{}\" is a CA bundle; a certificate and key are named file-cert:CHAIN~KEY",
                sds.name
            ),
        )),
    }
}

/// A validation context whose trust is `file-root:CA`: the CA is loaded now, and the SANs come
/// from `match_subject_alt_names` as Istio writes a server's `subjectAltNames` (exact matches,
/// against every SAN type).
pub(super) fn roots(
    sds: &SdsSecretConfig,
    default: Option<&CertificateValidationContext>,
) -> Res<PeerTrust> {
    let ca = match parse(sds).at("validation_context_sds_secret_config")? {
        Some(FileSecret::Root { ca }) => ca,
        _ => {
            return Err(Invalid::new(
                "validation_context_sds_secret_config.name",
                format!(
                    "\"{}\" is not a CA bundle; name one file-root:CA_PATH",
                    sds.name
                ),
            ))
        }
    };
    RootFiles::load(&ca)
        .map_err(|e| Invalid::new("validation_context_sds_secret_config.name", e.to_string()))?;
    let sans = match default {
        None => Vec::new(),
        Some(v) => sans(v).at("default_validation_context")?,
    };
    Ok(PeerTrust::Files { ca, sans })
}

#[allow(deprecated)] // match_subject_alt_names is Istio's shape for these SANs.
fn sans(v: &CertificateValidationContext) -> Res<Vec<String>> {
    refuse_unsupported(v, true)?;
    reject_if(
        !v.match_typed_subject_alt_names.is_empty(),
        "match_typed_subject_alt_names",
        "with a file-root: CA, SANs are matched from match_subject_alt_names (exact), as Istio writes them",
    )?;
    v.match_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| match &m.match_pattern {
            Some(MatchPattern::Exact(s)) if !m.ignore_case => Ok(s.clone()),
            _ => Err(Invalid::new(
                format!("match_subject_alt_names[{i}]"),
                "only exact, case-sensitive SAN matchers are supported",
            )),
        })
        .collect()
}
