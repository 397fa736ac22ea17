//! gRPC over the mesh's TLS, both ends of the control plane's port 15012.
//!
//! - Client: [`connect`] gives a tonic [`Channel`] to `https://HOST:PORT` whose connections are
//!   TLS by tokio-rustls: presenting the workload certificate ([`ClientAuth::Certificate`]:
//!   renewals, ADS), or none at all ([`ClientAuth::Anonymous`]: the first certificate request,
//!   where a bootstrap token stands in). The server is verified against the mesh's trust bundle
//!   and must be the control plane's SPIFFE id ([`control_plane_id`]).
//! - Server: [`incoming`] turns a TCP listener into the stream of TLS connections tonic serves,
//!   each carrying a [`TlsConnectInfo`] (the verified client id, if any) that tonic puts in every
//!   request's extensions.
//!
//! Hand-written on tonic's connector seam because tonic's own TLS feature would build its
//! rustls configs with the process-wide default provider and its own verifier, and a SPIFFE
//! certificate's only name (a URI SAN) needs the verifiers of [`crate::verify`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use tonic::codegen::http::Uri;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

use crate::istio_ca::TlsConnectInfo;
use crate::verify::{self, Accept, SpiffeServerVerifier};
use crate::{CredentialsWatch, IdentityError, SpiffeId, TrustBundle};

/// The control plane's service account; its 15012 certificate is
/// `spiffe://TD/ns/ROOT_NS/sa/jalur-control`.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "jalur-control";
/// Where the control plane's own identity lives when none is configured (Istio's
/// `istio-system`, in jalur's name).
pub const DEFAULT_ROOT_NAMESPACE: &str = "jalur-system";
/// A TCP connect plus handshake to the control plane must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must finish its TLS handshake within this, or the server drops it (a stalled
/// handshake must not hold a task and a socket forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The control plane's SPIFFE id in trust domain `td` with root namespace `root_namespace`.
pub fn control_plane_id(td: &str, root_namespace: &str) -> SpiffeId {
    SpiffeId::new(td, root_namespace, CONTROL_PLANE_SERVICE_ACCOUNT)
}

/// What a client presents on the TLS connection.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// The workload certificate of the watch (the current one at each handshake), verifying
    /// the server against the watch's current bundle.
    Certificate(CredentialsWatch),
    /// No certificate (a workload's first request, authenticated by a bootstrap token);
    /// the server is verified against this bundle.
    Anonymous(TrustBundle),
}

/// The rustls client config for `auth`, accepting servers per `accept`, ALPN h2.
pub fn client_tls(auth: ClientAuth, accept: Accept) -> Result<rustls::ClientConfig, IdentityError> {
    match auth {
        ClientAuth::Certificate(creds) => verify::client_config(creds, accept, &[b"h2"]),
        ClientAuth::Anonymous(bundle) => {
            let verifier = SpiffeServerVerifier::for_bundle(&bundle, accept)?;
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Key(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"h2".to_vec()];
            Ok(config)
        }
    }
}

/// Connects a gRPC channel to `addr` (`https://HOST:PORT`, or `HOST:PORT`) over TLS. Every
/// connection the channel (re)opens does a fresh handshake with the credentials current then.
pub async fn connect(
    addr: &str,
    auth: ClientAuth,
    accept: Accept,
) -> Result<Channel, IdentityError> {
    let (endpoint, target) = endpoint(addr)?;
    let connector = Connector {
        tls: TlsConnector::from(Arc::new(client_tls(auth, accept)?)),
        target: Arc::new(target),
    };
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| IdentityError::Connect {
            addr: addr.to_string(),
            reason: error_chain(&e),
        })
}

/// Where to dial and what to call the server in the handshake.
#[derive(Debug)]
struct Target {
    host: String,
    port: u16,
    name: ServerName<'static>,
}

/// The tonic endpoint for `addr`. It is given an `http://` URI: the TLS is this module's
/// (tonic without its TLS feature refuses nothing, but its scheme must not ask for its own).
fn endpoint(addr: &str) -> Result<(Endpoint, Target), IdentityError> {
    let bad = |reason: &str| IdentityError::Connect {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let authority = match addr.split_once("://") {
        Some(("https", rest)) => rest,
        Some((scheme, _)) => {
            return Err(bad(&format!(
                "scheme {scheme}:// is not TLS; use https://HOST:PORT"
            )))
        }
        None => addr,
    };
    let authority = authority.trim_end_matches('/');
    let uri: Uri = format!("http://{authority}")
        .parse()
        .map_err(|_| bad("not a HOST:PORT address"))?;
    let host = uri
        .host()
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
    let name =
        ServerName::try_from(host.clone()).map_err(|_| bad("host is not a DNS name or IP"))?;
    let endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok((endpoint, Target { host, port, name }))
}

/// tonic's connector: TCP to the target, then the TLS handshake.
#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    target: Arc<Target>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (tls, target) = (self.tls.clone(), self.target.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            tcp.set_nodelay(true)?;
            // A vanished server is found by TCP keepalive, never by pings a busy one answers
            // late (`jalur_wire::keepalive`).
            jalur_wire::keepalive::apply(&tcp)?;
            let stream = tls.connect(target.name.clone(), tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// One accepted TLS connection, as tonic serves it.
pub struct TlsConn {
    stream: server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The TLS connections of `listener`, for `tonic::transport::Server::serve_with_incoming*`.
/// Handshakes run concurrently (a slow client delays only itself); one that fails (no chain
/// to the bundle, a foreign trust domain, not TLS at all) is logged and never reaches tonic.
/// The accept loop ends when the returned stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of descriptors and the like: back off a little instead of spinning.
                    tracing::warn!(%error, "TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(error) = jalur_wire::keepalive::apply(&tcp) {
                tracing::warn!(%error, %remote, "TLS listener: cannot set TCP keepalive");
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(conn) = handshake(acceptor, tcp, remote).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream, remote: SocketAddr) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(%remote, %error, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::warn!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    // The verifier already checked the chain and the trust domain; this only reads the id.
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| verify::peer_id(leaf).ok());
    tracing::debug!(%remote, peer = ?peer.as_ref().map(|p| p.to_string()), "TLS connection accepted");
    Some(TlsConn {
        stream,
        info: TlsConnectInfo {
            remote: Some(remote),
            peer,
        },
    })
}

/// An error and its sources, `a: b: c` (tonic's transport error alone says only "transport
/// error").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_https_or_bare_host_port() {
        for (addr, host, port) in [
            ("https://127.0.0.1:15012", "127.0.0.1", 15012),
            ("127.0.0.1:15012", "127.0.0.1", 15012),
            (
                "https://jalur-control.jalur-system.svc:15012/",
                "jalur-control.jalur-system.svc",
                15012,
            ),
            ("https://[::1]:15012", "::1", 15012),
        ] {
            let (_, target) = endpoint(addr).expect(addr);
            assert_eq!((target.host.as_str(), target.port), (host, port), "{addr}");
        }
        for bad in ["http://127.0.0.1:15010", "https://127.0.0.1", "https://"] {
            let error = endpoint(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
