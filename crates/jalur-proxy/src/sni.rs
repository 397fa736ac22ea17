//! TLS passthrough by SNI (a gateway's PASSTHROUGH server): read the ClientHello, pick the
//! filter chain by its server name the way Envoy does, and proxy the connection as TCP with the
//! ClientHello replayed first, so the TLS session runs untouched between client and backend.
//!
//! The ClientHello is read (not peeked): a hello split over several segments would have
//! `peek` return the same partial bytes again and again. The bytes read are kept and sent
//! upstream before anything else ([`Replay`]). rustls's `Acceptor` parses them, so no TLS parser
//! is hand-written here.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{SniRoutes, TcpListener};
use crate::runtime::Runtime;
use crate::tls::{HANDSHAKE_TIMEOUT, TLS_HANDSHAKE_RECORD};

/// Envoy's tls_inspector gives up on larger ClientHellos (`max_client_hello_size`, 64 KiB).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// One connection on a listener routing by SNI: closed when no chain takes it (as Envoy does
/// when no filter chain matches), or when the listener's network RBAC denies it — judged with
/// the SNI, which a policy on `connection.sni` needs (`downstream`: the accepted socket's).
pub async fn proxy(
    rt: Arc<Runtime>,
    routes: &SniRoutes,
    network_rbac: Option<Arc<crate::rbac::Chain>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    downstream: &crate::rbac::Downstream,
) {
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, client_hello(&mut stream)).await;
    let (read, sni) = match hello {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SNI: no ClientHello; closing");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "SNI: no ClientHello before the handshake timeout; closing");
            return;
        }
    };
    let Some(tcp) = pick(routes, sni.as_deref()) else {
        tracing::debug!(%peer, sni = sni.as_deref().unwrap_or("(none)"), "SNI: no filter chain matches; closing");
        return;
    };
    if let Some(chain) = &network_rbac {
        let downstream = crate::rbac::Downstream {
            local: downstream.local,
            sni: sni.as_deref().map(Arc::from),
        };
        // Passed through, not terminated: no peer certificate to judge.
        if !crate::tcp::network_rbac_allows(chain, peer, &downstream, None) {
            tracing::debug!(%peer, "SNI: connection denied by network RBAC; closing");
            return;
        }
    }
    let downstream = Replay {
        head: read,
        at: 0,
        inner: stream,
    };
    crate::tcp::proxy(rt, tcp.clone(), downstream, peer, false, None).await;
}

/// The chain for a server name, in Envoy's order: the exact name, then wildcards from the
/// longest suffix to the shortest (`a.b.example.com`: `*.b.example.com`, `*.example.com`,
/// `*.com`), then the chain without names. No SNI (or not TLS at all) takes only the last.
pub fn pick<'a>(routes: &'a SniRoutes, sni: Option<&str>) -> Option<&'a TcpListener> {
    let named = |name: &str| {
        routes
            .chains
            .iter()
            .find(|c| c.server_names.iter().any(|n| n == name))
    };
    let by_name = sni.map(str::to_ascii_lowercase).and_then(|sni| {
        named(&sni).or_else(|| {
            sni.match_indices('.')
                .find_map(|(i, _)| named(&format!("*{}", &sni[i..])))
        })
    });
    by_name
        .or_else(|| routes.chains.iter().find(|c| c.server_names.is_empty()))
        .map(|c| &c.tcp)
}

/// Reads until the ClientHello is whole. Returns every byte read and the SNI; a connection
/// that does not start with a TLS handshake record has no SNI (Envoy: `raw_buffer`).
async fn client_hello(stream: &mut TcpStream) -> Result<(Vec<u8>, Option<String>), String> {
    let mut read = Vec::with_capacity(2048);
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("closed before its ClientHello was whole".into());
        }
        if read.is_empty() && chunk[0] != TLS_HANDSHAKE_RECORD {
            return Ok((chunk[..n].to_vec(), None));
        }
        read.extend_from_slice(&chunk[..n]);
        if read.len() > MAX_CLIENT_HELLO {
            return Err(format!("ClientHello larger than {MAX_CLIENT_HELLO} bytes"));
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            acceptor
                .read_tls(&mut rest)
                .map_err(|e| format!("ClientHello: {e}"))?;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => {
                let sni = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((read, sni));
            }
            Err((e, _)) => return Err(format!("ClientHello: {e}")),
        }
    }
}

/// A stream that yields `head` first, then reads on from `inner`; writes go to `inner`.
/// Hand-written: the few lines hyper-util has for this are private.
struct Replay {
    head: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.head.len() {
            let n = buf.remaining().min(self.head.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.head[at..at + n]);
            self.at += n;
            if self.at == self.head.len() {
                self.head = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SniChain, WeightedCluster};

    fn routes(chains: &[(&[&str], &str)]) -> SniRoutes {
        SniRoutes {
            chains: chains
                .iter()
                .map(|(names, cluster)| SniChain {
                    server_names: names.iter().map(|n| n.to_string()).collect(),
                    tcp: TcpListener {
                        stat_prefix: String::new(),
                        targets: vec![WeightedCluster {
                            cluster: cluster.to_string(),
                            weight: 1,
                            request_headers: Default::default(),
                            response_headers: Default::default(),
                        }],
                        idle_timeout: None,
                    },
                })
                .collect(),
        }
    }

    fn picked(r: &SniRoutes, sni: Option<&str>) -> Option<String> {
        pick(r, sni).map(|t| t.targets[0].cluster.clone())
    }

    #[test]
    fn exact_then_longest_wildcard_then_the_chain_without_names() {
        let r = routes(&[
            (&["*.com"], "com"),
            (&["*.example.com"], "example"),
            (&["a.example.com"], "a"),
            (&["*.b.example.com"], "b"),
            (&[], "rest"),
        ]);
        assert_eq!(picked(&r, Some("a.example.com")).as_deref(), Some("a"));
        assert_eq!(picked(&r, Some("A.Example.COM")).as_deref(), Some("a"));
        assert_eq!(picked(&r, Some("x.b.example.com")).as_deref(), Some("b"));
        assert_eq!(
            picked(&r, Some("c.example.com")).as_deref(),
            Some("example")
        );
        assert_eq!(
            picked(&r, Some("deep.c.example.com")).as_deref(),
            Some("example")
        );
        assert_eq!(picked(&r, Some("other.com")).as_deref(), Some("com"));
        assert_eq!(picked(&r, Some("example.org")).as_deref(), Some("rest"));
        assert_eq!(picked(&r, None).as_deref(), Some("rest"));
    }

    #[test]
    fn without_a_nameless_chain_unknown_and_missing_names_match_nothing() {
        let r = routes(&[(&["a.example.com"], "a"), (&["*.example.com"], "w")]);
        assert_eq!(picked(&r, Some("example.com")), None);
        assert_eq!(picked(&r, Some("a.example.org")), None);
        assert_eq!(picked(&r, None), None);
    }
}
