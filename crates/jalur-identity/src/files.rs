//! Certificates, keys and CA bundles read from files a user names (a Gateway server's
//! `serverCertificate`/`privateKey`/`caCertificates`, a DestinationRule's client certificate and
//! CA), as Istio's SDS names `file-cert:CERT~KEY` and `file-root:CA`. Both `jalur proxy` (which
//! terminates and originates TLS with them) and `jalur agent` (which serves them to Envoy over
//! SDS) read them here, so both accept and refuse the same files.
//!
//! A [`FileWatch`] re-reads its files when one of them changes and publishes the new content;
//! a change that does not load (half-written, a key that does not match its certificate, a file
//! removed) keeps the last good content and is logged once, naming the file, never its bytes.
//!
//! Why a poll (length, modification time and inode of each file, every [`POLL`]) rather than
//! inotify: operators replace credentials by renaming a new file over the old one or, on
//! Kubernetes, by swapping a symlinked directory; inotify watches on the file itself lose track
//! of both and need re-arming, while a `stat` per file per second sees every form, costs nothing
//! at this scale, and needs no extra crate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::IdentityError;

/// How often a watch looks at its files.
pub const POLL: Duration = Duration::from_secs(1);

/// Istio's SDS name prefix for a certificate and key from files: `file-cert:CERT~KEY`.
pub const FILE_CERT: &str = "file-cert:";
/// Istio's SDS name prefix for a CA bundle from a file: `file-root:CA`.
pub const FILE_ROOT: &str = "file-root:";

/// A secret named by files, parsed from its SDS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FileSecret {
    /// `file-cert:CERT~KEY`.
    Cert { chain: PathBuf, key: PathBuf },
    /// `file-root:CA`.
    Root { ca: PathBuf },
}

impl FileSecret {
    /// `None` when `name` is not a file secret name at all; `Some(Err)` when it is one but
    /// malformed.
    pub fn parse(name: &str) -> Option<Result<FileSecret, String>> {
        if let Some(rest) = name.strip_prefix(FILE_CERT) {
            return Some(match rest.split_once('~') {
                Some((chain, key)) if !chain.is_empty() && !key.is_empty() => {
                    Ok(FileSecret::Cert {
                        chain: chain.into(),
                        key: key.into(),
                    })
                }
                _ => Err(format!(
                    "SDS name \"{name}\" is not {FILE_CERT}CERT_PATH~KEY_PATH"
                )),
            });
        }
        let ca = name.strip_prefix(FILE_ROOT)?;
        Some(if ca.is_empty() {
            Err(format!("SDS name \"{name}\" is not {FILE_ROOT}CA_PATH"))
        } else {
            Ok(FileSecret::Root { ca: ca.into() })
        })
    }

    /// The SDS name Istio gives this secret.
    pub fn sds_name(&self) -> String {
        match self {
            FileSecret::Cert { chain, key } => {
                format!("{FILE_CERT}{}~{}", chain.display(), key.display())
            }
            FileSecret::Root { ca } => format!("{FILE_ROOT}{}", ca.display()),
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        match self {
            FileSecret::Cert { chain, key } => vec![chain.clone(), key.clone()],
            FileSecret::Root { ca } => vec![ca.clone()],
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|e| IdentityError::File {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn bad(what: &'static str, path: &Path, reason: impl fmt::Display) -> IdentityError {
    IdentityError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A certificate chain and its private key, loaded and checked to belong together.
#[derive(Clone)]
pub struct CertFiles {
    /// The chain as read (PEM), leaf first.
    pub chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certified: Arc<CertifiedKey>,
}

impl fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFiles")
            .field("chain_pem_bytes", &self.chain_pem.len())
            .finish_non_exhaustive()
    }
}

impl CertFiles {
    /// Reads and checks `chain` and `key`: PEM, at least one certificate, a key rustls can sign
    /// with, and the key matching the leaf's public key.
    pub fn load(chain: &Path, key: &Path) -> Result<CertFiles, IdentityError> {
        let chain_pem = read("certificate file", chain)?;
        let key_pem = read("private key file", key)?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate file", chain, format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("certificate file", chain, "holds no CERTIFICATE block"));
        }
        // The parser's error never quotes key bytes.
        let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            bad(
                "private key file",
                key,
                format!("no usable private key: {e}"),
            )
        })?;
        let signing = provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| bad("private key file", key, format!("unsupported key: {e}")))?;
        let certified = CertifiedKey::new(certs, signing);
        certified.keys_match().map_err(|e| {
            bad(
                "private key file",
                key,
                format!("does not match the certificate in {}: {e}", chain.display()),
            )
        })?;
        Ok(CertFiles {
            chain_pem,
            key_pem,
            certified: Arc::new(certified),
        })
    }

    /// The private key as read (PEM). A secret: only for an SDS response on the agent's local
    /// socket; never log it.
    pub fn key_pem_secret(&self) -> &[u8] {
        &self.key_pem
    }

    /// What rustls serves or presents.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

/// A CA bundle, loaded, with the verifiers built from it once per load (not per handshake).
#[derive(Clone)]
pub struct RootFiles {
    /// The bundle as read (PEM).
    pub pem: Vec<u8>,
    pub roots: Arc<RootCertStore>,
    /// Verifies a client's chain against these roots (a client certificate is required).
    pub client: Arc<dyn ClientCertVerifier>,
    /// Verifies a server's chain against these roots, and its name against the SNI.
    pub server: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for RootFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootFiles")
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl RootFiles {
    /// Reads `ca`: PEM holding at least one certificate usable as a trust anchor.
    pub fn load(ca: &Path) -> Result<RootFiles, IdentityError> {
        const WHAT: &str = "CA certificates file";
        let pem = read(WHAT, ca)?;
        let mut roots = RootCertStore::empty();
        for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert = cert.map_err(|e| bad(WHAT, ca, format!("not valid PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| bad(WHAT, ca, format!("certificate {i} is not a usable CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(WHAT, ca, "holds no CERTIFICATE block"));
        }
        let roots = Arc::new(roots);
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| bad(WHAT, ca, e))?;
        let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| bad(WHAT, ca, e))?;
        Ok(RootFiles {
            pem,
            roots,
            client,
            server,
        })
    }
}

/// What a file secret holds once loaded.
#[derive(Debug, Clone)]
pub enum Loaded {
    Cert(CertFiles),
    Root(RootFiles),
}

impl FileSecret {
    /// Reads the files now.
    pub fn load(&self) -> Result<Loaded, IdentityError> {
        match self {
            FileSecret::Cert { chain, key } => CertFiles::load(chain, key).map(Loaded::Cert),
            FileSecret::Root { ca } => RootFiles::load(ca).map(Loaded::Root),
        }
    }
}

/// The current content of a file secret, re-read when its files change. Dropping every clone
/// of it stops the poll.
#[derive(Debug, Clone)]
pub struct FileWatch {
    rx: watch::Receiver<Arc<Loaded>>,
}

impl FileWatch {
    /// Loads `secret` now (an error names the file) and polls its files every [`POLL`]. Must be
    /// called inside a tokio runtime.
    pub fn start(secret: &FileSecret) -> Result<FileWatch, IdentityError> {
        FileWatch::start_every(secret, POLL)
    }

    /// [`FileWatch::start`] with another poll period (tests).
    pub fn start_every(secret: &FileSecret, every: Duration) -> Result<FileWatch, IdentityError> {
        let first = secret.load()?;
        let (tx, rx) = watch::channel(Arc::new(first));
        tokio::spawn(poll(secret.clone(), tx, every));
        Ok(FileWatch { rx })
    }

    /// The content now.
    pub fn current(&self) -> Arc<Loaded> {
        self.rx.borrow().clone()
    }

    /// A receiver that sees every new content (the agent pushes each one over SDS).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Loaded>> {
        self.rx.clone()
    }
}

/// What identifies a file's content without reading it; `None` when it cannot be stat'ed.
type Fingerprint = Vec<Option<(u64, SystemTime, u64)>>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    paths
        .iter()
        .map(|p| {
            // `metadata` follows symlinks, so a swapped Kubernetes `..data` link counts.
            let m = std::fs::metadata(p).ok()?;
            Some((m.len(), m.modified().ok()?, m.ino()))
        })
        .collect()
}

async fn poll(secret: FileSecret, tx: watch::Sender<Arc<Loaded>>, every: Duration) {
    let paths = secret.paths();
    let name = secret.sds_name();
    let mut seen = fingerprint(&paths);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = ticks.tick() => {}
        }
        let now = fingerprint(&paths);
        if now == seen {
            continue;
        }
        // A failed load is not retried until the files change again: a half-written pair
        // changes again when its writer finishes.
        seen = now;
        match secret.load() {
            Ok(loaded) => {
                info!(secret = %name, "credentials files changed; new handshakes use them");
                tx.send_replace(Arc::new(loaded));
            }
            Err(e) => {
                warn!(secret = %name, error = %e, "credentials files changed but do not load; keeping the last good ones");
            }
        }
    }
}

/// Whether the certificate carries one of `wanted` as a subject alternative name (DNS, URI, IP
/// or email), as Envoy's `match_subject_alt_names` exact matchers check every SAN type.
pub fn has_san(cert: &CertificateDer<'_>, wanted: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return false;
    };
    let Ok(Some(sans)) = parsed.subject_alternative_name() else {
        return false;
    };
    sans.value.general_names.iter().any(|n| {
        let value = match n {
            GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                s.to_string()
            }
            GeneralName::IPAddress(b) => match b.len() {
                4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())
                    .to_string(),
                16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())
                    .to_string(),
                _ => return false,
            },
            _ => return false,
        };
        wanted.contains(&value)
    })
}

#[cfg(test)]
mod tests;
