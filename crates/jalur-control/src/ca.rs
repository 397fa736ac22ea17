//! The mesh's certificate authority: it signs workload CSRs (Istio's `CreateCertificate`) and the
//! control plane's own 15012 certificate.
//!
//! Its root is either self-signed on first start and kept in `<state>/ca/` (ECDSA P-256, 10
//! years; the same root after every restart, since a new one would orphan every issued
//! certificate) or an operator's intermediate read in place (Istio's `cacerts`: `--ca-cert`,
//! `--ca-key`, `--ca-chain`). `ca/trust-bundle.pem` holds every root the mesh trusts; it is the
//! file proxies and agents get as `--root-cert`.
//!
//! - [`files`]: the state files (private ones 0600, written atomically, refused when readable
//!   by others).
//! - [`service`]: who is asking ([`service::WorkloadAuthenticator`]) and the gRPC service.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use jalur_identity::{verify, Credentials, CredentialsWatch, SpiffeId, TrustBundle, WorkloadCert};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use tonic::Status;

pub mod files;
pub mod service;
pub mod token;

pub use service::{CaMetrics, CaService, ClientCertAuthenticator, WorkloadAuthenticator};
pub use token::{TokenAuthenticator, Tokens};

/// The service account of the control plane's own certificate.
pub const CONTROL_SERVICE_ACCOUNT: &str = "jalur-control";
/// The root's lifetime when self-signed.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start up to this much in the past: the workload's clock may run behind ours. At most
/// a tenth of the lifetime, so a short-lived certificate's half life (its renewal time) is
/// still ahead when it is issued.
const BACKDATE: Duration = Duration::from_secs(60);
/// After a failed renewal of the control plane's certificate, try again this soon.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// An operator's intermediate CA (Istio's `cacerts` secret), used in place.
#[derive(Debug, Clone)]
pub struct PluginCa {
    /// `ca-cert.pem`: the certificate that signs workloads.
    pub cert: PathBuf,
    /// `ca-key.pem`: its key (0600 or stricter).
    pub key: PathBuf,
    /// `cert-chain.pem`: from `cert` (optional) through any intermediates to the root, last.
    pub chain: PathBuf,
}

#[derive(Debug, Clone)]
pub struct CaOptions {
    pub trust_domain: String,
    /// The namespace the control plane's own identity lives in (`--root-namespace`).
    pub root_namespace: String,
    /// The longest a workload certificate lives (`--workload-cert-ttl`), and the default.
    pub workload_ttl: Duration,
    pub plugin: Option<PluginCa>,
    /// More roots to trust beside the CA's own (`--extra-roots`): a root being rotated in.
    pub extra_roots: Option<PathBuf>,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            trust_domain: jalur_identity::DEFAULT_TRUST_DOMAIN.into(),
            root_namespace: "jalur-system".into(),
            workload_ttl: Duration::from_secs(24 * 3600),
            plugin: None,
            extra_roots: None,
        }
    }
}

/// Why the CA could not start or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} ({what}) is readable by group or others (mode {mode:o}): it must be private; \
         run `chmod 600 {}`",
        path.display(), path.display()
    )]
    KeyPermissions {
        what: &'static str,
        path: PathBuf,
        mode: u32,
    },
    #[error("{} (the plug-in CA key, --ca-key) {problem} (mode {mode:o}); run `chmod 600 {}` \
             (in Kubernetes: the secret volume's defaultMode 0400, or 0440 with an fsGroup)",
            path.display(), path.display())]
    PluginKeyPermissions {
        path: PathBuf,
        mode: u32,
        problem: String,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{} exists but {} does not: restore it, or remove both to create a new root \
         (every issued certificate would then need re-issuing)",
        present.display(), missing.display()
    )]
    HalfRoot { present: PathBuf, missing: PathBuf },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("bootstrap tokens: {0}")]
    Tokens(String),
}

/// The control plane's CA as [`crate::ControlPlane`] builds it: the authority and the gRPC
/// service in front of it, whose metrics are on `/metrics`. The 15012 server serves
/// `IstioCertificateServiceServer::new(ca.service.clone())` and presents
/// `ca.authority.server_credentials(&[bind_ip])`.
pub struct MeshCa {
    pub authority: Arc<Authority>,
    pub service: Arc<CaService>,
    pub metrics: CaMetrics,
    pub tokens: Arc<Tokens>,
}

impl MeshCa {
    pub fn start(
        state_dir: &Path,
        opts: &CaOptions,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<MeshCa, CaError> {
        let authority = Authority::load_or_create(state_dir, opts)?;
        let metrics = CaMetrics::default();
        metrics.register(registry);
        let tokens = Tokens::load_or_create(state_dir, &opts.trust_domain)?;
        // The client certificate first: a workload renewing with its certificate is that
        // identity whatever token it may still carry.
        let authenticators: Vec<Arc<dyn WorkloadAuthenticator>> = vec![
            Arc::new(ClientCertAuthenticator),
            Arc::new(TokenAuthenticator(tokens.clone())),
        ];
        let service = Arc::new(CaService::new(
            authority.clone(),
            authenticators,
            metrics.clone(),
        ));
        Ok(MeshCa {
            authority,
            service,
            metrics,
            tokens,
        })
    }
}

/// The signing key and what goes with it. Shared by the gRPC service, the control plane's own
/// certificate renewal, and the status API.
pub struct Authority {
    opts: CaOptions,
    issuer: Issuer<'static, KeyPair>,
    /// When the signing certificate expires: no leaf may outlive it.
    signer_not_after: SystemTime,
    /// PEM certificates after the leaf in every response: intermediates, then the root.
    chain_tail: Vec<String>,
    bundle: TrustBundle,
    bundle_pem: String,
    bundle_path: PathBuf,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.opts.trust_domain)
            .field("chain_len", &self.chain_tail.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the CA from `state_dir/ca/` (or the plug-in files), creating a self-signed root on
    /// first start; writes `ca/trust-bundle.pem`.
    pub fn load_or_create(state_dir: &Path, opts: &CaOptions) -> Result<Arc<Authority>, CaError> {
        let dir = state_dir.join("ca");
        files::create_dir(&dir)?;
        let signer = match &opts.plugin {
            Some(plugin) => load_plugin(plugin)?,
            None => load_or_create_root(&dir, &opts.trust_domain)?,
        };
        let root_pem = signer.chain_tail.last().cloned().unwrap_or_default();
        let mut bundle_pem = root_pem;
        if let Some(extra) = &opts.extra_roots {
            let text = files::read_string(extra)?;
            TrustBundle::from_pem(&text).map_err(|e| CaError::Invalid {
                path: extra.clone(),
                reason: e.to_string(),
            })?;
            bundle_pem.push_str(&text);
            if !text.ends_with('\n') {
                bundle_pem.push('\n');
            }
        }
        let bundle_path = dir.join("trust-bundle.pem");
        let bundle = TrustBundle::from_pem(&bundle_pem).map_err(|e| CaError::Invalid {
            path: bundle_path.clone(),
            reason: e.to_string(),
        })?;
        files::write_public(&bundle_path, bundle_pem.as_bytes())?;
        Ok(Arc::new(Authority {
            opts: opts.clone(),
            issuer: signer.issuer,
            signer_not_after: signer.not_after,
            chain_tail: signer.chain_tail,
            bundle,
            bundle_pem,
            bundle_path,
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.opts.trust_domain
    }

    /// Every root the mesh trusts.
    pub fn trust_bundle(&self) -> TrustBundle {
        self.bundle.clone()
    }

    /// `ca/trust-bundle.pem`: the file proxies and agents take as `--root-cert`.
    pub fn bundle_path(&self) -> &Path {
        &self.bundle_path
    }

    /// The same as PEM (what `ca/trust-bundle.pem` holds).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The control plane's own identity: `spiffe://TD/ns/ROOT_NS/sa/jalur-control`.
    pub fn control_id(&self) -> SpiffeId {
        SpiffeId::new(
            &self.opts.trust_domain,
            &self.opts.root_namespace,
            CONTROL_SERVICE_ACCOUNT,
        )
    }

    /// Signs a workload's CSR for `caller` (already authenticated). The CSR's only SAN must be
    /// the caller's id; anything else it asks for (subject, other names, CA bits) is ignored.
    /// Returns the chain as Istio does: leaf, intermediates, root, one PEM each.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        caller: &SpiffeId,
        requested: Option<Duration>,
    ) -> Result<Vec<String>, Status> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Status::invalid_argument(format!(
                "the CSR is not a valid signed PKCS#10 request: {e}"
            ))
        })?;
        check_requested_names(&csr.params.subject_alt_names, caller)?;
        if caller.trust_domain != self.opts.trust_domain {
            return Err(Status::permission_denied(format!(
                "{caller} is not in this CA's trust domain {}",
                self.opts.trust_domain
            )));
        }
        let lifetime = self.lifetime(requested)?;
        let uri = caller
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| Status::invalid_argument(e.to_string()))?;
        let params = leaf_params(vec![SanType::URI(uri)], lifetime)
            .map_err(|e| Status::internal(e.to_string()))?;
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| Status::internal(format!("signing failed: {e}")))?;
        Ok(self.chain_with(leaf.pem()))
    }

    /// min(requested or the default, `--workload-cert-ttl`, what the signing certificate has
    /// left).
    fn lifetime(&self, requested: Option<Duration>) -> Result<Duration, Status> {
        let ttl = self.opts.workload_ttl;
        let wanted = requested.filter(|d| !d.is_zero()).unwrap_or(ttl).min(ttl);
        let left = self
            .signer_not_after
            .duration_since(SystemTime::now())
            .map_err(|_| {
                Status::failed_precondition(format!(
                    "the CA certificate expired at {}",
                    rfc3339(self.signer_not_after)
                ))
            })?;
        Ok(wanted.min(left))
    }

    fn chain_with(&self, leaf_pem: String) -> Vec<String> {
        std::iter::once(leaf_pem)
            .chain(self.chain_tail.iter().cloned())
            .collect()
    }

    /// A fresh certificate for the control plane's 15012 port: its SPIFFE id plus the DNS
    /// names clients dial it by and `ips` (loopback and the bind address).
    fn issue_control_cert(&self, ips: &[IpAddr]) -> Result<WorkloadCert, CaError> {
        let id = self.control_id();
        let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
        let mut sans = vec![SanType::URI(id.to_string().try_into().map_err(sign)?)];
        for dns in [
            "localhost".to_string(),
            CONTROL_SERVICE_ACCOUNT.to_string(),
            format!("{CONTROL_SERVICE_ACCOUNT}.{}.svc", self.opts.root_namespace),
        ] {
            sans.push(SanType::DnsName(dns.try_into().map_err(sign)?));
        }
        let mut all_ips = vec![IpAddr::from([127, 0, 0, 1])];
        all_ips.extend(ips.iter().filter(|ip| !ip.is_unspecified()));
        all_ips.dedup();
        sans.extend(all_ips.into_iter().map(SanType::IpAddress));
        let lifetime = self
            .lifetime(None)
            .map_err(|s| CaError::Sign(s.message().to_string()))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
        let cert = leaf_params(sans, lifetime)?
            .signed_by(&key, &self.issuer)
            .map_err(sign)?;
        let chain = self.chain_with(cert.pem()).concat();
        WorkloadCert::from_pem(&key.serialize_pem(), &chain)
            .map_err(|e| CaError::Sign(e.to_string()))
    }

    /// The control plane's own credentials for 15012, renewed at half life by a task that ends
    /// when every receiver is gone (or the authority is dropped). `ips`: addresses to name
    /// besides 127.0.0.1 (the bind IP). Needs a tokio runtime.
    pub fn server_credentials(
        self: &Arc<Self>,
        ips: &[IpAddr],
    ) -> Result<CredentialsWatch, CaError> {
        let creds = self.control_credentials(ips)?;
        let renew_at = creds.cert.renew_at();
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(creds));
        tokio::spawn(renew_control_cert(
            Arc::downgrade(self),
            ips.to_vec(),
            tx,
            renew_at,
        ));
        Ok(rx)
    }

    fn control_credentials(&self, ips: &[IpAddr]) -> Result<Credentials, CaError> {
        let cert = self.issue_control_cert(ips)?;
        Credentials::new(cert, self.trust_bundle()).map_err(|e| CaError::Sign(e.to_string()))
    }
}

async fn renew_control_cert(
    authority: Weak<Authority>,
    ips: Vec<IpAddr>,
    tx: tokio::sync::watch::Sender<Arc<Credentials>>,
    mut renew_at: SystemTime,
) {
    loop {
        let wait = renew_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
        let Some(authority) = authority.upgrade() else {
            return;
        };
        match authority.control_credentials(&ips) {
            Ok(creds) => {
                renew_at = creds.cert.renew_at();
                tracing::info!(not_after = %rfc3339(creds.cert.not_after), "control plane certificate renewed");
                tx.send_replace(Arc::new(creds));
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the control plane certificate failed; retrying");
                renew_at = SystemTime::now() + RENEW_RETRY;
            }
        }
    }
}

/// The CSR must name exactly one thing, the caller's SPIFFE id.
fn check_requested_names(sans: &[SanType], caller: &SpiffeId) -> Result<(), Status> {
    let caller_uri = caller.to_string();
    let names: Vec<String> = sans.iter().map(san_text).collect();
    match sans {
        [SanType::URI(uri)] if uri.as_str() == caller_uri => Ok(()),
        [SanType::URI(uri)] => Err(Status::permission_denied(format!(
            "a credential for {}/{} may not request {}",
            caller.namespace,
            caller.service_account,
            uri.as_str()
        ))),
        _ => Err(Status::permission_denied(format!(
            "the CSR must name exactly one subject alternative name, {caller_uri}; it names [{}]",
            names.join(", ")
        ))),
    }
}

fn san_text(san: &SanType) -> String {
    match san {
        SanType::URI(u) => u.as_str().to_string(),
        SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
        SanType::IpAddress(ip) => format!("IP:{ip}"),
        SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
        other => format!("{other:?}"),
    }
}

/// A leaf: no subject (the SPIFFE id is its name; the SAN is then critical), serverAuth and
/// clientAuth (it serves inbound mTLS and dials upstreams), a random serial.
fn leaf_params(sans: Vec<SanType>, lifetime: Duration) -> Result<CertificateParams, CaError> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    params.not_before = (now - BACKDATE.min(lifetime / 10)).into();
    params.not_after = (now + lifetime).into();
    Ok(params)
}

/// 128 random bits, positive (RFC 5280 §4.1.2.2: unique per CA, at most 20 octets).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Sign("no randomness".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// What signs: the issuer, its expiry, and the PEM chain after the leaf.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    not_after: SystemTime,
    chain_tail: Vec<String>,
}

fn load_or_create_root(dir: &Path, trust_domain: &str) -> Result<Signer, CaError> {
    let cert_path = dir.join("root-cert.pem");
    let key_path = dir.join("root-key.pem");
    if !cert_path.exists() && !key_path.exists() {
        let (cert_pem, key_pem) = self_signed_root(trust_domain)?;
        // The certificate is the claim: whoever links it first (two control planes may start
        // on one state directory) owns the root and writes its key; the other loads theirs.
        if files::create_exclusive(&cert_path, cert_pem.as_bytes(), 0o644)? {
            files::write_private(&key_path, key_pem.as_bytes())?;
            tracing::info!(path = %cert_path.display(), "created a self-signed mesh root");
        }
    }
    // A root's certificate without its key is either being written right now by another
    // process or was left by a crash; give the writer a moment before calling it broken.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while cert_path.exists() && !key_path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let key_pem = files::read_private(&key_path, "the CA root key")?;
            let cert_pem = files::read_string(&cert_path)?;
            signer_from(
                &cert_path,
                &cert_pem,
                &key_path,
                &key_pem,
                vec![cert_pem.clone()],
            )
        }
        (false, true) => Err(CaError::HalfRoot {
            present: key_path,
            missing: cert_path,
        }),
        _ => Err(CaError::HalfRoot {
            present: cert_path,
            missing: key_path,
        }),
    }
}

fn self_signed_root(trust_domain: &str) -> Result<(String, String), CaError> {
    let sign = |e: rcgen::Error| CaError::Sign(e.to_string());
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign)?;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "jalur mesh root");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_LIFETIME).into();
    let cert = params.self_signed(&key).map_err(sign)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load_plugin(plugin: &PluginCa) -> Result<Signer, CaError> {
    let key_pem = files::read_plugin_key(&plugin.key)?;
    let cert_pem = files::read_string(&plugin.cert)?;
    let chain_text = files::read_string(&plugin.chain)?;
    let invalid = |path: &Path, reason: String| CaError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let cert = first_cert(&plugin.cert, &cert_pem)?;
    let mut chain = TrustBundle::from_pem(&chain_text)
        .map_err(|e| invalid(&plugin.chain, e.to_string()))?
        .roots;
    // Istio's cert-chain.pem starts with ca-cert.pem itself; the response carries it once.
    if chain.first() == Some(&cert) {
        chain.remove(0);
    }
    let Some(root) = chain.last() else {
        return Err(invalid(
            &plugin.chain,
            "no certificate besides --ca-cert: it must end with the root".into(),
        ));
    };
    if !self_issued(root) {
        return Err(invalid(
            &plugin.chain,
            "the last certificate is not self-signed: the chain must end with the root".into(),
        ));
    }
    let mut tail = vec![pem_of(&cert)];
    tail.extend(chain.iter().map(pem_of));
    signer_from(&plugin.cert, &cert_pem, &plugin.key, &key_pem, tail)
}

/// Pairs a CA certificate with its key, checking they belong together and that it is a CA.
fn signer_from(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
    chain_tail: Vec<String>,
) -> Result<Signer, CaError> {
    let invalid = |path: &Path, reason: String| CaError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let key = KeyPair::from_pem(key_pem).map_err(|e| {
        invalid(
            key_path,
            format!("not a usable private key (PKCS#8 ECDSA, Ed25519 or RSA): {e}"),
        )
    })?;
    let der = first_cert(cert_path, cert_pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| invalid(cert_path, format!("unreadable certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(invalid(
            cert_path,
            "is not a CA certificate (basicConstraints CA:FALSE or missing)".into(),
        ));
    }
    if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(invalid(
            key_path,
            format!("is not the key of {}", cert_path.display()),
        ));
    }
    let (_, not_after) = verify::validity(&der).map_err(|e| invalid(cert_path, e.to_string()))?;
    let issuer = Issuer::from_ca_cert_der(&der, key)
        .map_err(|e| invalid(cert_path, format!("cannot sign with it: {e}")))?;
    Ok(Signer {
        issuer,
        not_after,
        chain_tail,
    })
}

fn first_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, CaError> {
    TrustBundle::from_pem(pem)
        .map(|b| b.roots[0].clone())
        .map_err(|e| CaError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn self_issued(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, x)| x.subject().as_raw() == x.issuer().as_raw())
        .unwrap_or(false)
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    jalur_identity::cert::certs_pem(std::slice::from_ref(cert))
}

/// `2026-12-03T13:44:54Z`, for messages.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{t:?}"))
}

#[cfg(test)]
mod tests;
