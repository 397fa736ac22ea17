//! Opaque TCP proxying (ServiceEntry TCP ports, gateway TCP servers): pick a cluster by weight and
//! a host by the cluster's balancer, connect within the connect timeout, then copy both ways,
//! counting bytes in Istio's `istio_tcp_*` metrics.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::TcpListener;
use crate::error::Flag;
use crate::routing::pick_weighted;
use crate::runtime::Runtime;
use crate::tls::ConnSecurity;

/// Proxies one downstream connection. `inbound`: this proxy is its destination (a sidecar's
/// inbound listener), and `downstream_tls` what its TLS handshake established, if any.
pub async fn proxy<D>(
    rt: Arc<Runtime>,
    cfg: TcpListener,
    mut downstream: D,
    peer: SocketAddr,
    inbound: bool,
    downstream_tls: Option<Arc<ConnSecurity>>,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    let compiled = rt.compiled();
    let Some(target) = pick_weighted(&cfg.targets, fastrand::u64(..)) else {
        return;
    };
    let Some(cluster) = compiled.cluster(&target.cluster) else {
        tracing::debug!(cluster = %target.cluster, "TCP: cluster not configured; closing");
        return;
    };
    // The destination reporter knows its principals from the downstream handshake; the source
    // reporter only once the upstream one is done (Istio labels it from the upstream
    // connection's certificates), so it counts the opening then.
    let opened = |security: Option<&ConnSecurity>| {
        let labels = rt.tcp_labels(&cluster, None, inbound, security);
        rt.metrics.tcp_opened.get_or_create(&labels).inc();
    };
    if inbound {
        opened(downstream_tls.as_deref());
    }
    // The cluster's max connections (DestinationRule connectionPool.tcp.maxConnections): over it,
    // the connection is closed at once and counted with flag UO.
    let Ok(_connection) = cluster.breakers.try_connection() else {
        tracing::debug!(cluster = %cluster.config.name, "TCP: max connections reached; closing");
        if !inbound {
            opened(None);
        }
        let labels = rt.tcp_labels(
            &cluster,
            Some(Flag::UpstreamOverflow),
            inbound,
            downstream_tls.as_deref(),
        );
        rt.metrics.tcp_closed.get_or_create(&labels).inc();
        return;
    };
    let mut flag: Option<Flag> = None;
    let mut tried = Vec::new();
    let upstream = loop {
        let Some(host) = cluster.pick(None, &tried) else {
            flag = Some(Flag::NoHealthyUpstream);
            break None;
        };
        tried.push(host.addr);
        let connect = tokio::time::timeout(
            cluster.config.connect_timeout,
            cluster.upstream.connect_stream(&host),
        )
        .await;
        match connect {
            Ok(Ok(s)) => {
                cluster.report_tcp(&host, true);
                break Some(s);
            }
            Ok(Err(e)) => {
                tracing::debug!(host = %host.addr, error = %e, "TCP connect failed");
                cluster.report_tcp(&host, false);
            }
            Err(_) => cluster.report_tcp(&host, false),
        }
        if tried.len() >= 3 {
            flag = Some(Flag::UpstreamConnectFailure);
            break None;
        }
    };
    let upstream_tls = upstream
        .as_ref()
        .and_then(|(_, security)| security.mutual.then(|| Arc::new(security.clone())));
    if !inbound {
        opened(upstream_tls.as_deref());
    }
    let (sent, received) = match upstream {
        Some((up, _)) => {
            // Count bytes as they pass, so a connection that ends with a reset still reports
            // what it carried.
            let (from_down, from_up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let mut down = Counting {
                inner: &mut downstream,
                read: from_down.clone(),
            };
            let mut up = Counting {
                inner: up,
                read: from_up.clone(),
            };
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(%peer, error = %e, "TCP stream ended with an error");
            }
            (
                from_up.load(Ordering::Relaxed),
                from_down.load(Ordering::Relaxed),
            )
        }
        None => (0, 0),
    };
    let security = if inbound {
        downstream_tls
    } else {
        upstream_tls
    };
    let labels = rt.tcp_labels(&cluster, flag, inbound, security.as_deref());
    rt.metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
    rt.metrics
        .tcp_received
        .get_or_create(&labels)
        .inc_by(received);
    rt.metrics.tcp_closed.get_or_create(&labels).inc();
}

/// A stream that counts the bytes read from it.
struct Counting<T> {
    inner: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counting<T> {
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

/// The listener's network RBAC filters on a new connection (Envoy decides on its first bytes;
/// jalur as soon as it is accepted, since nothing it evaluates comes later): `false` closes it
/// before any upstream is dialled. `tls`: on a TLS connection, the peer certificate's names.
pub fn network_rbac_allows(
    chain: &crate::rbac::Chain,
    peer: SocketAddr,
    downstream: &crate::rbac::Downstream,
    tls: Option<&[String]>,
) -> bool {
    let subject = crate::rbac::Subject {
        direct_remote: peer,
        remote: peer.ip(),
        local: downstream.local,
        sni: downstream.sni.as_deref(),
        tls,
        http: None,
        jwt: None,
    };
    matches!(
        chain.evaluate(&subject),
        crate::rbac::Verdict::Allowed { .. }
    )
}
