//! Connections to upstream endpoints: one pooled hyper client per cluster, speaking the
//! cluster's protocol (HTTP/1.1 keep-alive or HTTP/2 multiplexed), in plaintext or over mesh
//! mTLS per endpoint (the cluster's transport socket matches). The pool is keyed by scheme and
//! endpoint address, so each endpoint keeps its own warm connections and a plaintext one is
//! never reused for TLS.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use jalur_identity::CredentialsWatch;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{Cluster, UpstreamProtocol, UpstreamTransport};
use crate::host::Host;
use crate::tls::ConnSecurity;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A cluster's pooled clients (HTTP/1.1 and HTTP/2) and how it reaches each endpoint.
#[derive(Clone)]
pub struct Upstream {
    h1: Client<Connector, Body>,
    h2: Client<Connector, Body>,
    protocol: UpstreamProtocol,
    transport: UpstreamTransport,
    connector: Connector,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(cluster: &Cluster, creds: Option<&CredentialsWatch>) -> Upstream {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cluster.connect_timeout));
        http.set_nodelay(true);
        // `https` is this connector's own choice of TLS, decided per endpoint (below).
        http.enforce_http(false);
        let tls = cluster.transport.tls().map(|t| {
            crate::tls::Originator::new(t, creds).map(Arc::new).map_err(|e| {
                tracing::warn!(cluster = %cluster.name, error = %e, "TLS endpoints of this cluster cannot be reached");
                Arc::<str>::from(e.as_str())
            })
        });
        let connector = Connector { http, tls };
        let idle = cluster.idle_timeout.unwrap_or(Duration::from_secs(60));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .http2_only(true)
            .http2_keep_alive_interval(Some(Duration::from_secs(30)))
            .build(connector.clone());
        Upstream {
            h1,
            h2,
            protocol: cluster.protocol,
            transport: cluster.transport.clone(),
            connector,
        }
    }

    /// The client for a request that arrived over HTTP/2 (`downstream_h2`) or HTTP/1.
    pub fn client(&self, downstream_h2: bool) -> &Client<Connector, Body> {
        if self.is_h2(downstream_h2) {
            &self.h2
        } else {
            &self.h1
        }
    }

    /// Whether such a request goes upstream over HTTP/2.
    pub fn is_h2(&self, downstream_h2: bool) -> bool {
        match self.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Downstream => downstream_h2,
        }
    }

    /// Whether `host` is reached over mTLS (its `envoy.transport_socket_match` metadata against
    /// the cluster's matches).
    pub fn uses_tls(&self, host: &Host) -> bool {
        self.transport.for_endpoint(&host.socket_match).is_some()
    }

    /// The URI scheme that selects the transport for `host`: the pools are keyed by scheme and
    /// address, so a plaintext and a TLS connection to one address are never shared.
    pub fn scheme(&self, host: &Host) -> &'static str {
        if self.uses_tls(host) {
            "https"
        } else {
            "http"
        }
    }

    /// A raw connection to `host` (TCP proxying), over mTLS when the cluster says so.
    pub async fn connect_stream(&self, host: &Host) -> std::io::Result<(Stream, ConnSecurity)> {
        let tcp = TcpStream::connect(host.addr).await?;
        let _ = tcp.set_nodelay(true);
        if !self.uses_tls(host) {
            return Ok((Stream::Plain(tcp), ConnSecurity::default()));
        }
        let origin = self.connector.originator()?;
        let (tls, security) = origin.connect(tcp, host.addr).await?;
        Ok((Stream::Tls(Box::new(tls)), security))
    }
}

/// A raw upstream connection for the TCP proxy.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects `http://` URIs in plaintext and `https://` ones over the cluster's mesh mTLS.
/// Hand-written rather than hyper-rustls: the SNI is the cluster's (`outbound_.PORT_._.HOST`),
/// not the URI's host (an IP), and the peer's SPIFFE id goes into every response's extensions.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    /// The cluster's TLS, or why it cannot be had (no mesh identity).
    tls: Option<Result<Arc<crate::tls::Originator>, Arc<str>>>,
}

impl Connector {
    fn originator(&self) -> std::io::Result<Arc<crate::tls::Originator>> {
        match &self.tls {
            Some(Ok(o)) => Ok(o.clone()),
            Some(Err(e)) => Err(std::io::Error::other(e.to_string())),
            None => Err(std::io::Error::other("the cluster has no TLS settings")),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Conn, BoxError>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = uri.scheme_str() == Some("https");
        let origin = tls.then(|| self.originator());
        let addr = uri
            .authority()
            .and_then(|a| a.as_str().parse::<std::net::SocketAddr>().ok());
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let tcp = connecting.await?;
            let Some(origin) = origin else {
                return Ok(Conn::Plain(tcp));
            };
            let (origin, addr) = (origin?, addr.ok_or("an upstream address is an IP:port")?);
            let (tls, security) = origin.connect(tcp.into_inner(), addr).await?;
            Ok(Conn::Tls(Box::new(TokioIo::new(tls)), Arc::new(security)))
        })
    }
}

/// An upstream connection as hyper's pool holds it.
pub enum Conn {
    Plain(TokioIo<TcpStream>),
    // Boxed: a TLS session is far larger than a socket.
    Tls(
        Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>,
        Arc<ConnSecurity>,
    ),
}

/// Put into every response's extensions from a TLS connection (hyper's `Connected::extra`).
#[derive(Debug, Clone)]
pub struct UpstreamSecurity(pub Arc<ConnSecurity>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        match self {
            Conn::Plain(io) => io.connected(),
            Conn::Tls(io, security) => io
                .inner()
                .get_ref()
                .0
                .connected()
                .extra(UpstreamSecurity(security.clone())),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Conn::Tls($io, _) => {
                let $io = Pin::new($io.as_mut());
                $e
            }
        }
    };
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(io) => io.is_write_vectored(),
            Conn::Tls(io, _) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
