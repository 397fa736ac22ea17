//! SPIFFE-aware peer verification for rustls. A workload certificate's only name is a URI SAN,
//! which rustls's server-name check cannot match, so the chain is verified by rustls's webpki
//! verifiers against the current trust bundle and then the SPIFFE id is checked here.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DistinguishedName, SignatureScheme};
use x509_parser::extensions::GeneralName;

use crate::cert::{CredentialsWatch, TrustBundle};
use crate::{IdentityError, SpiffeId};

/// The SPIFFE id a certificate names: exactly one `spiffe://` URI SAN.
pub fn peer_id(cert: &CertificateDer<'_>) -> Result<SpiffeId, IdentityError> {
    let bad = |reason: String| IdentityError::Certificate {
        what: "peer".into(),
        reason,
    };
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| bad(format!("unreadable: {e}")))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| bad(format!("unreadable subjectAltName: {e}")))?
        .ok_or_else(|| bad("has no subjectAltName".into()))?;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
        _ => None,
    });
    match (ids.next(), ids.next()) {
        (Some(uri), None) => uri.parse(),
        (None, _) => Err(bad("names no SPIFFE id".into())),
        (Some(_), Some(_)) => Err(bad("names more than one SPIFFE id".into())),
    }
}

/// The names an RBAC `authenticated.principal_name` is matched against, in Envoy's order: every
/// URI SAN, every DNS SAN, then the subject as RFC 2253 text (`CN=client,O=Acme`). A mesh
/// workload's only name is its SPIFFE URI; a client certificate at a file-CA gateway may carry
/// any of them. Unreadable parts are left out (a certificate rustls accepted parses).
pub fn peer_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let sans: Vec<&GeneralName<'_>> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.iter().collect())
        .unwrap_or_default();
    let uris = sans.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(u.to_string()),
        _ => None,
    });
    let dns = sans.iter().filter_map(|n| match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    });
    let mut names: Vec<String> = uris.chain(dns).collect();
    names.push(rfc2253(x509.subject()));
    names
}

/// A distinguished name as Envoy prints it for principal matching (OpenSSL's
/// `X509_NAME_print_ex` with `XN_FLAG_RFC2253`): the attributes last first, `,` between RDNs and
/// `+` within one, OpenSSL's short names (`CN`, `emailAddress`, `UID`; a dotted OID where it has
/// none), values as UTF-8 with RFC 2253's specials, control characters and every byte with the
/// high bit set escaped (`\C3\A9`), and a value of a type that is not a string dumped as `#`
/// and its DER in hex. Written here because x509-parser's `Display` for a name is its own
/// form (first RDN first, `", "` between them, other short names).
fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut entries: Vec<(usize, String)> = Vec::new();
    for (set, rdn) in name.iter_rdn().enumerate() {
        for attr in rdn.iter() {
            let ty = match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok("Email") => "emailAddress".to_string(),
                Ok("uid" | "userId") => "UID".to_string(),
                Ok(short) => short.to_string(),
                Err(_) => attr.attr_type().to_id_string(),
            };
            entries.push((set, format!("{ty}={}", rfc2253_value(attr.attr_value()))));
        }
    }
    let mut out = String::new();
    let mut previous: Option<usize> = None;
    for (set, text) in entries.into_iter().rev() {
        if let Some(p) = previous {
            out.push(if p == set { '+' } else { ',' });
        }
        out.push_str(&text);
        previous = Some(set);
    }
    out
}

fn rfc2253_value(value: &x509_parser::der_parser::asn1_rs::Any<'_>) -> String {
    use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
    let data = value.data;
    let text: Option<String> = match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => std::str::from_utf8(data).ok().map(str::to_string),
        // T61 is read as Latin-1, as OpenSSL does.
        Tag::TeletexString => Some(data.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    };
    let Some(text) = text else {
        let der = value.to_der_vec().unwrap_or_default();
        return std::iter::once("#".to_string())
            .chain(der.iter().map(|b| format!("{b:02X}")))
            .collect();
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let edge = (i == 0 && (b == b' ' || b == b'#')) || (i + 1 == bytes.len() && b == b' ');
        if !(0x20..0x7f).contains(&b) {
            out.push_str(&format!("\\{b:02X}"));
        } else {
            if edge || matches!(b, b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';') {
                out.push('\\');
            }
            out.push(char::from(b));
        }
    }
    out
}

/// A certificate's notBefore and notAfter.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), IdentityError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
        IdentityError::Certificate {
            what: "certificate".into(),
            reason: format!("unreadable: {e}"),
        }
    })?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((
        at(x509.validity().not_before),
        at(x509.validity().not_after),
    ))
}

/// Which peer identities a verifier accepts once the chain is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Any of these ids (an upstream cluster's service accounts).
    AnyOf(Vec<SpiffeId>),
    /// Any workload of this trust domain (inbound mTLS, the control plane's 15012).
    TrustDomain(String),
}

impl Accept {
    fn check(&self, id: &SpiffeId) -> Result<(), rustls::Error> {
        let ok = match self {
            Accept::AnyOf(ids) => ids.contains(id),
            Accept::TrustDomain(td) => &id.trust_domain == td,
        };
        if ok {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

/// The crypto provider of every verifier here: aws-lc-rs, named explicitly so nothing depends
/// on a process-wide default.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// The algorithms every verifier here checks handshake signatures with (and jalur proxy's
/// verifiers of certificate files, through [`handshake_signatures!`](crate::handshake_signatures)).
pub fn signature_algorithms() -> &'static rustls::crypto::WebPkiSupportedAlgorithms {
    &PROVIDER.signature_verification_algorithms
}

/// The handshake-signature methods of a `ServerCertVerifier` or `ClientCertVerifier`, the same
/// for every verifier: the checks webpki verifiers make (with [`signature_algorithms`]), which
/// need no trust bundle, so no watch is read for them. Used inside such an `impl`.
#[macro_export]
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            let algorithms = $crate::verify::signature_algorithms();
            ::rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls::pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            let algorithms = $crate::verify::signature_algorithms();
            ::rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            $crate::verify::signature_algorithms().supported_schemes()
        }
    };
}

/// The webpki verifiers for one trust bundle, built once per bundle (they index the roots).
#[derive(Debug)]
pub(crate) struct BundleVerifiers {
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
    client_optional: Arc<dyn ClientCertVerifier>,
}

impl BundleVerifiers {
    pub(crate) fn new(bundle: &TrustBundle) -> Result<Self, IdentityError> {
        let roots = Arc::new(bundle.root_store());
        let provider = PROVIDER.clone();
        let err = |e: String| IdentityError::Certificate {
            what: "trust bundle".into(),
            reason: e,
        };
        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| err(e.to_string()))?;
        let client_optional = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .allow_unauthenticated()
            .build()
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            server,
            client,
            client_optional,
        })
    }
}

/// Verifies a server (an upstream sidecar, the control plane) against the current bundle, then
/// its SPIFFE id against `accept`.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: ServerRoots,
    accept: Accept,
}

/// Where a server verifier's roots come from.
#[derive(Debug)]
enum ServerRoots {
    /// The bundle of the process's current credentials.
    Current(CredentialsWatch),
    /// A fixed bundle: a workload without a certificate yet (its first CA request).
    Fixed(Arc<WebPkiServerVerifier>),
}

impl SpiffeServerVerifier {
    pub fn new(creds: CredentialsWatch, accept: Accept) -> Arc<Self> {
        Arc::new(Self {
            roots: ServerRoots::Current(creds),
            accept,
        })
    }

    /// Against a fixed bundle, for a client that has no credentials yet.
    pub fn for_bundle(bundle: &TrustBundle, accept: Accept) -> Result<Arc<Self>, IdentityError> {
        let verifiers = BundleVerifiers::new(bundle)?;
        Ok(Arc::new(Self {
            roots: ServerRoots::Fixed(verifiers.server),
            accept,
        }))
    }

    fn inner(&self) -> Arc<WebPkiServerVerifier> {
        match &self.roots {
            ServerRoots::Current(creds) => creds.borrow().verifiers.server.clone(),
            ServerRoots::Fixed(verifier) => verifier.clone(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name: a name mismatch means the chain is good.
        let placeholder = ServerName::try_from("spiffe.invalid")
            .map_err(|_| rustls::Error::General("placeholder server name".into()))?;
        match self.inner().verify_server_cert(
            end_entity,
            intermediates,
            &placeholder,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let id = peer_id(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        self.accept.check(&id)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Verifies a client (a downstream sidecar, a proxy on 15012) against the current bundle, then
/// its SPIFFE id. `optional`: a client without a certificate is let through (PERMISSIVE
/// plaintext is a different path; this is for 15012, where a bootstrap token stands in).
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    creds: CredentialsWatch,
    accept: Accept,
    optional: bool,
}

impl SpiffeClientVerifier {
    pub fn new(creds: CredentialsWatch, accept: Accept, optional: bool) -> Arc<Self> {
        Arc::new(Self {
            creds,
            accept,
            optional,
        })
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        let creds = self.creds.borrow();
        if self.optional {
            creds.verifiers.client_optional.clone()
        } else {
            creds.verifiers.client.clone()
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional (RFC 8446 §4.2.4); sending none avoids borrowing from the watch.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = peer_id(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })?;
        self.accept.check(&id)?;
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Presents the current workload certificate, whatever rotation has happened since the config
/// was built (server side).
#[derive(Debug)]
pub struct CurrentCert(pub CredentialsWatch);

impl rustls::server::ResolvesServerCert for CurrentCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.borrow().cert.certified_key())
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.borrow().cert.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A client config presenting the workload certificate and accepting servers per `accept`.
pub fn client_config(
    creds: CredentialsWatch,
    accept: Accept,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, IdentityError> {
    let mut config = rustls::ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Key(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(SpiffeServerVerifier::new(creds.clone(), accept))
        .with_client_cert_resolver(Arc::new(CurrentCert(creds)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A server config presenting the workload certificate and verifying clients per `accept`
/// (`optional`: clients may come without a certificate).
pub fn server_config(
    creds: CredentialsWatch,
    accept: Accept,
    optional: bool,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, IdentityError> {
    let mut config = rustls::ServerConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| IdentityError::Key(e.to_string()))?
        .with_client_cert_verifier(SpiffeClientVerifier::new(creds.clone(), accept, optional))
        .with_cert_resolver(Arc::new(CurrentCert(creds)));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    #[test]
    fn peer_names_are_uri_sans_then_dns_sans_then_the_rfc2253_subject() {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::DnsName("client.example.com".try_into().expect("dns")),
            SanType::URI(
                "spiffe://partner.example/ns/a/sa/b"
                    .try_into()
                    .expect("uri"),
            ),
        ];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acmé");
        params
            .distinguished_name
            .push(DnType::CommonName, "client, #1");
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            peer_names(cert.der()),
            [
                "spiffe://partner.example/ns/a/sa/b",
                "client.example.com",
                r"CN=client\, #1,O=Acm\C3\A9",
            ]
        );
    }

    #[test]
    fn an_unparsable_certificate_has_no_names() {
        assert!(peer_names(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_empty());
    }
}
