//! TLS on the data path: listeners terminating TLS (a gateway's certificate, or the workload's
//! for mesh mTLS) and clusters originating mesh mTLS. Every mesh config reads the proxy's
//! [`CredentialsWatch`] at handshake time (`jalur_identity::verify`), and every config from
//! files reads its file watch (`tls/files.rs`), so a rotated certificate or trust bundle
//! applies to the next handshake without rebuilding anything here.

mod files;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jalur_identity::verify::{self, Accept};
use jalur_identity::{CredentialsWatch, SpiffeId};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{CertSource, ClientTls, PeerMatch, PeerTrust, ServerTls};

/// A TLS handshake (either side) must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS connection: a handshake record (RFC 8446 §5.1, content type 22).
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a connection's security was, for Istio's metric labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnSecurity {
    /// Both sides presented a verified certificate.
    pub mutual: bool,
    /// The peer's SPIFFE id (`spiffe://…`), when it presented one.
    pub peer: Option<Arc<str>>,
    /// This proxy's own SPIFFE id on this connection, when it presented one.
    pub local: Option<Arc<str>>,
    /// What RBAC's `authenticated` matches, in Envoy's order: the peer certificate's URI SANs,
    /// DNS SANs, then its subject (RFC 2253); empty without a peer certificate. Filled on
    /// accepted connections only (an upstream's names are never matched).
    pub peer_names: Vec<String>,
}

fn mesh_creds<'a>(
    creds: Option<&'a CredentialsWatch>,
    what: &str,
) -> Result<&'a CredentialsWatch, String> {
    creds.ok_or_else(|| {
        format!(
            "{what} uses SDS \"default\"/\"ROOTCA\" but this proxy has no mesh identity (start it with --xds-address https://… and a token)"
        )
    })
}

fn accept(peer: &PeerMatch, creds: &CredentialsWatch) -> Accept {
    match peer {
        PeerMatch::AnyOf(ids) => Accept::AnyOf(ids.clone()),
        PeerMatch::TrustDomain(td) => Accept::TrustDomain(td.clone()),
        PeerMatch::OwnTrustDomain => {
            Accept::TrustDomain(creds.borrow().cert.id.trust_domain.clone())
        }
    }
}

fn own_id(creds: Option<&CredentialsWatch>) -> Option<Arc<str>> {
    creds.map(|c| Arc::from(c.borrow().cert.id.to_string().as_str()))
}

// ------------------------------------------------------------------------------------- servers

/// A listener's TLS: one rustls config offering the listener's ALPN protocols, and one offering
/// none for clients whose ALPN list shares nothing with it (Istio's callers offer
/// `istio-peer-exchange`/`istio`; rustls would refuse such a handshake, Envoy goes on without
/// ALPN, and so does jalur).
#[derive(Clone)]
pub struct Terminator {
    with_alpn: Arc<rustls::ServerConfig>,
    without_alpn: Arc<rustls::ServerConfig>,
    local: Option<Arc<str>>,
}

/// A connection accepted on a listener: plaintext, or TLS with what the handshake established.
pub enum Accepted {
    Plain(TcpStream),
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        ConnSecurity,
    ),
}

impl Terminator {
    pub fn new(tls: &ServerTls, creds: Option<&CredentialsWatch>) -> Result<Terminator, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some(PeerTrust::Mesh(peer)) => {
                let creds = mesh_creds(creds, "the listener's client certificate check")?;
                builder.with_client_cert_verifier(verify::SpiffeClientVerifier::new(
                    creds.clone(),
                    accept(peer, creds),
                    false,
                ))
            }
            Some(PeerTrust::Files { ca, sans }) => {
                builder.with_client_cert_verifier(files::FileClientVerifier::start(ca, sans)?)
            }
            // Conversion never asks a listener for this; refuse rather than accept anyone.
            Some(PeerTrust::Unverified) => {
                return Err("client certificates must be verified against a CA".into())
            }
        };
        let mut config = match &tls.cert {
            CertSource::Mesh => {
                let creds = mesh_creds(creds, "the listener's TLS")?;
                builder.with_cert_resolver(Arc::new(verify::CurrentCert(creds.clone())))
            }
            CertSource::Files { chain, key } => {
                builder.with_cert_resolver(files::FileCert::start(chain, key)?)
            }
            CertSource::Pem {
                cert_chain_pem,
                private_key_pem,
            } => pem_server_config(builder, cert_chain_pem, private_key_pem)?,
        };
        let local = match tls.cert {
            CertSource::Mesh => own_id(creds),
            CertSource::Pem { .. } | CertSource::Files { .. } => None,
        };
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Ok(Terminator {
            with_alpn: Arc::new(config),
            without_alpn,
            local,
        })
    }

    /// Terminates TLS on `stream`; with `plaintext_too`, a connection whose first byte is not a
    /// TLS handshake record is handed back as plaintext (PERMISSIVE), else it is refused (no
    /// filter chain matches; Envoy closes it too).
    pub async fn accept(&self, stream: TcpStream, plaintext_too: bool) -> Result<Accepted, String> {
        let mut first = [0u8; 1];
        let n = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
            .await
            .map_err(|_| "no first byte before the handshake timeout".to_string())?
            .map_err(|e| format!("reading the first byte: {e}"))?;
        if n == 0 {
            return Err("closed before its first byte".into());
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return if plaintext_too {
                Ok(Accepted::Plain(stream))
            } else {
                Err("not a TLS handshake and no plaintext chain: closed".into())
            };
        }
        let handshake = async {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
            let start = acceptor.await.map_err(|e| format!("ClientHello: {e}"))?;
            let offers = |ours: &[Vec<u8>]| {
                start
                    .client_hello()
                    .alpn()
                    .is_some_and(|mut theirs| theirs.any(|p| ours.iter().any(|o| o == p)))
            };
            let config = if offers(&self.with_alpn.alpn_protocols) {
                self.with_alpn.clone()
            } else {
                self.without_alpn.clone()
            };
            start
                .into_stream(config)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))
        };
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| "TLS handshake timed out".to_string())??;
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        let peer = leaf
            .and_then(|c| verify::peer_id(c).ok())
            .map(|id| Arc::from(id.to_string().as_str()));
        let security = ConnSecurity {
            mutual: peer.is_some() && self.local.is_some(),
            peer,
            local: self.local.clone(),
            peer_names: leaf.map(verify::peer_names).unwrap_or_default(),
        };
        Ok(Accepted::Tls(Box::new(tls), security))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A server config for a certificate and key given as PEM (a hand-written listener's inline or
/// `filename` data sources, read once).
fn pem_server_config(
    builder: rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
    chain: &[u8],
    key: &[u8],
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate chain is not valid PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("private key is not valid PEM: {e}"))?;
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not make a server identity: {e}"))
}

// ------------------------------------------------------------------------------------- clients

/// A cluster's TLS origination (mesh mTLS, or TLS to a server outside the mesh): the rustls
/// client config (built once per cluster; verifiers and the presented certificate read the
/// credentials watch or the file watches at each handshake) and the SNI.
pub struct Originator {
    connector: tokio_rustls::TlsConnector,
    sni: Option<ServerName<'static>>,
    local: Option<Arc<str>>,
}

impl Originator {
    pub fn new(tls: &ClientTls, creds: Option<&CredentialsWatch>) -> Result<Originator, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous();
        let builder = match &tls.peer {
            PeerTrust::Mesh(peer) => {
                let creds = mesh_creds(creds, "the cluster's TLS")?;
                builder.with_custom_certificate_verifier(verify::SpiffeServerVerifier::new(
                    creds.clone(),
                    accept(peer, creds),
                ))
            }
            PeerTrust::Files { ca, sans } => builder
                .with_custom_certificate_verifier(files::FileServerVerifier::start(ca, sans)?),
            PeerTrust::Unverified => {
                builder.with_custom_certificate_verifier(Arc::new(files::NoVerification))
            }
        };
        let mut config = match &tls.cert {
            None => builder.with_no_client_auth(),
            Some(CertSource::Mesh) => {
                let creds = mesh_creds(creds, "the cluster's client certificate")?;
                builder.with_client_cert_resolver(Arc::new(verify::CurrentCert(creds.clone())))
            }
            Some(CertSource::Files { chain, key }) => {
                builder.with_client_cert_resolver(files::FileCert::start(chain, key)?)
            }
            Some(CertSource::Pem { .. }) => {
                return Err("inline client certificates are not supported".into())
            }
        };
        config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let local = match tls.cert {
            Some(CertSource::Mesh) => own_id(creds),
            _ => None,
        };
        let sni = match &tls.sni {
            None => None,
            Some(s) => Some(
                ServerName::try_from(s.clone())
                    .map_err(|e| format!("SNI \"{s}\" is not a DNS name: {e}"))?,
            ),
        };
        Ok(Originator {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            sni,
            local,
        })
    }

    /// The TLS handshake over a connected `tcp` to `addr` (the name when no SNI is configured:
    /// an IP sends none).
    pub async fn connect<IO>(
        &self,
        io: IO,
        addr: SocketAddr,
    ) -> std::io::Result<(tokio_rustls::client::TlsStream<IO>, ConnSecurity)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, io))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| verify::peer_id(c).ok())
            .map(|id: SpiffeId| Arc::from(id.to_string().as_str()));
        let security = ConnSecurity {
            mutual: self.local.is_some(),
            peer,
            local: self.local.clone(),
            peer_names: Vec::new(),
        };
        Ok((tls, security))
    }
}
