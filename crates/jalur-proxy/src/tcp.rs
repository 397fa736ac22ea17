//! Opaque TCP proxying (ServiceEntry TCP ports, gateway TCP servers): pick a cluster by weight and
//! a host by the cluster's balancer, connect within the connect timeout, then copy both ways,
//! counting bytes in Istio's `istio_tcp_*` metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::config::TcpListener;
use crate::error::Flag;
use crate::routing::pick_weighted;
use crate::runtime::Runtime;

pub async fn proxy(
    rt: Arc<Runtime>,
    cfg: TcpListener,
    mut downstream: TcpStream,
    peer: SocketAddr,
) {
    let compiled = rt.compiled();
    let Some(target) = pick_weighted(&cfg.targets, crate::http::fastrand()) else {
        return;
    };
    let Some(cluster) = compiled.cluster(&target.cluster) else {
        tracing::debug!(cluster = %target.cluster, "TCP: cluster not configured; closing");
        return;
    };
    let labels = rt.tcp_labels(&cluster, None);
    rt.metrics.tcp_opened.get_or_create(&labels).inc();
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
            TcpStream::connect(host.addr),
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
    let (sent, received) = match upstream {
        Some(mut up) => {
            let _ = up.set_nodelay(true);
            match tokio::io::copy_bidirectional(&mut downstream, &mut up).await {
                // (from downstream to upstream, from upstream to downstream)
                Ok((to_up, to_down)) => (to_down, to_up),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TCP stream ended with an error");
                    (0, 0)
                }
            }
        }
        None => (0, 0),
    };
    let labels = rt.tcp_labels(&cluster, flag);
    rt.metrics.tcp_sent.get_or_create(&labels).inc_by(sent);
    rt.metrics
        .tcp_received
        .get_or_create(&labels)
        .inc_by(received);
    rt.metrics.tcp_closed.get_or_create(&labels).inc();
}
