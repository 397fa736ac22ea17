//! A workload's key and certificate chain, the roots it trusts, and the two together as the
//! [`Credentials`] every TLS config of a process reads at handshake time.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::{verify, IdentityError, SpiffeId};

/// A key generated in this process. Its private half leaves the process only as the SDS
/// `default` secret `jalur agent` hands the Envoy beside it over a local Unix socket.
pub struct WorkloadKey {
    pair: KeyPair,
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey(<redacted>)")
    }
}

impl WorkloadKey {
    /// A fresh ECDSA P-256 key (what Istio's agents generate by default).
    pub fn generate() -> Result<Self, IdentityError> {
        let pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        Ok(Self { pair })
    }

    /// A PEM CSR whose only subject alternative name is `id` (the CA ignores anything else).
    pub fn csr_pem(&self, id: &SpiffeId) -> Result<String, IdentityError> {
        let mut params = CertificateParams::default();
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| IdentityError::Key(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&self.pair)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        csr.pem().map_err(|e| IdentityError::Key(e.to_string()))
    }

    fn der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pair.serialize_der()))
    }
}

/// A signed chain (leaf first) with the key it certifies.
pub struct WorkloadCert {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("id", &self.id.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCert {
    /// Pairs a chain (PEM, leaf first, as the CA returns it) with the key it was issued for,
    /// checking the leaf names exactly one SPIFFE id and certifies that key.
    pub fn new(key: &WorkloadKey, chain_pem: &str) -> Result<Self, IdentityError> {
        Self::from_parts(key.der(), chain_pem)
    }

    /// The same from a PEM private key (an operator-supplied or test certificate).
    pub fn from_pem(key_pem: &str, chain_pem: &str) -> Result<Self, IdentityError> {
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| IdentityError::Pem {
                what: "private key".into(),
                reason: e.to_string(),
            })?;
        Self::from_parts(key, chain_pem)
    }

    fn from_parts(key: PrivateKeyDer<'static>, chain_pem: &str) -> Result<Self, IdentityError> {
        let chain = parse_certs("certificate chain", chain_pem)?;
        let leaf = chain.first().ok_or_else(|| IdentityError::Pem {
            what: "certificate chain".into(),
            reason: "no certificate in it".into(),
        })?;
        let id = verify::peer_id(leaf)?;
        let (not_before, not_after) = verify::validity(leaf)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified =
            CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(|e| {
                IdentityError::Certificate {
                    what: id.to_string(),
                    reason: format!("does not match its key: {e}"),
                }
            })?;
        Ok(Self {
            id,
            chain,
            key,
            not_before,
            not_after,
            certified: Arc::new(certified),
        })
    }

    /// When to renew: half-way through the lifetime (Istio's default grace ratio).
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life / 2
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        certs_pem(&self.chain)
    }

    /// The private key as PKCS#8 PEM. A secret: only for the SDS `default` secret on a local
    /// socket; never log it or put it in a config dump.
    pub fn key_pem_secret(&self) -> String {
        pem_block("PRIVATE KEY", self.key.secret_der())
    }

    /// What rustls serves and presents.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

/// The roots a workload trusts. Several are allowed so a root can be rotated by distributing
/// the new one before anything is signed by it.
#[derive(Clone)]
pub struct TrustBundle {
    pub roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustBundle({} roots)", self.roots.len())
    }
}

impl TrustBundle {
    pub fn from_pem(pem: &str) -> Result<Self, IdentityError> {
        let roots = parse_certs("trust bundle", pem)?;
        if roots.is_empty() {
            return Err(IdentityError::Pem {
                what: "trust bundle".into(),
                reason: "no certificate in it".into(),
            });
        }
        Ok(Self { roots })
    }

    pub fn to_pem(&self) -> String {
        certs_pem(&self.roots)
    }

    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        // A root rustls cannot use is skipped here and reported by the verifier's failures.
        let _ = store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }
}

/// A process's current certificate and bundle. Replaced whole on rotation (a new
/// `Arc<Credentials>` on the [`CredentialsWatch`]); handshakes read the latest.
#[derive(Debug)]
pub struct Credentials {
    pub cert: WorkloadCert,
    pub bundle: TrustBundle,
    pub(crate) verifiers: verify::BundleVerifiers,
}

impl Credentials {
    pub fn new(cert: WorkloadCert, bundle: TrustBundle) -> Result<Self, IdentityError> {
        let verifiers = verify::BundleVerifiers::new(&bundle)?;
        Ok(Self {
            cert,
            bundle,
            verifiers,
        })
    }
}

/// Where a process's TLS configs read their credentials: the sender side renews.
pub type CredentialsWatch = tokio::sync::watch::Receiver<Arc<Credentials>>;

fn parse_certs(what: &str, pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            what: what.into(),
            reason: e.to_string(),
        })
}

/// PEM of several certificates, one block each.
pub fn certs_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

/// One PEM block (the `pem` crate, which rcgen already brings).
fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}
