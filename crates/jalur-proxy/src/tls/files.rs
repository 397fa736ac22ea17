//! TLS credentials from files (Istio's SDS names `file-cert:` / `file-root:`): a certificate
//! resolver and client- and server-certificate verifiers that read a [`FileWatch`] at every
//! handshake, so
//! a replaced file applies to the next handshake and open connections are not touched. The
//! watch keeps the last good content when a replacement does not load.

use std::path::Path;
use std::sync::Arc;

use jalur_identity::files::{has_san, FileSecret, FileWatch, Loaded};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, SignatureScheme};

/// Presents the current certificate and key from `file-cert:CHAIN~KEY`.
#[derive(Debug)]
pub(super) struct FileCert(FileWatch);

impl FileCert {
    pub(super) fn start(chain: &Path, key: &Path) -> Result<Arc<FileCert>, String> {
        let secret = FileSecret::Cert {
            chain: chain.to_path_buf(),
            key: key.to_path_buf(),
        };
        let watch = FileWatch::start(&secret).map_err(|e| e.to_string())?;
        Ok(Arc::new(FileCert(watch)))
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match &*self.0.current() {
            Loaded::Cert(c) => Some(c.certified_key()),
            Loaded::Root(_) => None,
        }
    }
}

impl rustls::server::ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for FileCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Requires a client certificate chaining to the CA bundle in `file-root:CA` (as read now)
/// and, when `sans` is not empty, carrying one of them as a SAN (Envoy's exact
/// `match_subject_alt_names`).
#[derive(Debug)]
pub(super) struct FileClientVerifier {
    roots: FileWatch,
    sans: Vec<String>,
}

impl FileClientVerifier {
    pub(super) fn start(ca: &Path, sans: &[String]) -> Result<Arc<FileClientVerifier>, String> {
        let secret = FileSecret::Root {
            ca: ca.to_path_buf(),
        };
        let roots = FileWatch::start(&secret).map_err(|e| e.to_string())?;
        Ok(Arc::new(FileClientVerifier {
            roots,
            sans: sans.to_vec(),
        }))
    }

    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        match &*self.roots.current() {
            Loaded::Root(r) => Ok(r.client.clone()),
            Loaded::Cert(_) => Err(rustls::Error::General("not a CA bundle".into())),
        }
    }
}

impl ClientCertVerifier for FileClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
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
        self.inner()?
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.sans.is_empty() && !has_san(end_entity, &self.sans) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    jalur_identity::handshake_signatures!();
}

/// Checks an upstream server (TLS origination) against the CA bundle in `file-root:CA` as read
/// now. With `sans`, the leaf must carry one of them (Envoy's exact `match_subject_alt_names`)
/// and the name it was reached by is not compared; without, the leaf must name the SNI sent.
/// Envoy, given no SAN matcher, accepts any certificate the CA signed whatever name it carries;
/// jalur checks the name as every HTTPS client does (stricter: a CA that signs for many hosts
/// cannot stand in for this one).
#[derive(Debug)]
pub(super) struct FileServerVerifier {
    roots: FileWatch,
    sans: Vec<String>,
}

impl FileServerVerifier {
    pub(super) fn start(ca: &Path, sans: &[String]) -> Result<Arc<FileServerVerifier>, String> {
        let secret = FileSecret::Root {
            ca: ca.to_path_buf(),
        };
        let roots = FileWatch::start(&secret).map_err(|e| e.to_string())?;
        Ok(Arc::new(FileServerVerifier {
            roots,
            sans: sans.to_vec(),
        }))
    }

    fn inner(&self) -> Result<Arc<rustls::client::WebPkiServerVerifier>, rustls::Error> {
        match &*self.roots.current() {
            Loaded::Root(r) => Ok(r.server.clone()),
            Loaded::Cert(_) => Err(rustls::Error::General("not a CA bundle".into())),
        }
    }
}

impl ServerCertVerifier for FileServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let inner = self.inner()?;
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(ok) if self.sans.is_empty() => Ok(ok),
            Err(e) if self.sans.is_empty() => Err(e),
            // With SAN matchers the name reached by is not what counts: the chain must be good
            // (a name mismatch is the only error let through) and a SAN must match.
            Ok(_) | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName)) => {
                if has_san(end_entity, &self.sans) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    jalur_identity::handshake_signatures!();
}

/// Accepts any server certificate (the config said `insecureSkipVerify`); the handshake's
/// signatures are still checked, so the server holds the key of what it presented.
#[derive(Debug)]
pub(super) struct NoVerification;

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    jalur_identity::handshake_signatures!();
}
