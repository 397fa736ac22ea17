//! Active health checking of a cluster's hosts (Envoy's `health_checks`): every interval, each
//! host gets an HTTP GET (2xx = pass) or a connect within the timeout; `unhealthy_threshold`
//! failures in a row take it out of rotation, `healthy_threshold` passes bring it back.
//!
//! A check goes over the transport the request path would use for that host, as Envoy sends
//! a cluster's checks over its matched transport socket: to an endpoint matched to mesh mTLS
//! the GET travels on the cluster's TLS pool and the connect check is a full mTLS handshake.
//! A plaintext check against a STRICT sidecar would fail and eject every healthy meshed host.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Weak;

use crate::config::HealthCheckConfig;
use crate::host::Host;
use crate::runtime::ClusterRuntime;
use crate::upstream::Upstream;

/// Checks the hosts of the cluster behind `weak` until the cluster is gone.
pub async fn check_loop(weak: Weak<ClusterRuntime>, hc: HealthCheckConfig) {
    let mut streaks: HashMap<SocketAddr, (u32, u32)> = HashMap::new();
    loop {
        let Some(cluster) = weak.upgrade() else {
            return;
        };
        let hosts = cluster.hosts();
        let upstream = cluster.upstream.clone();
        drop(cluster);
        for host in hosts.hosts() {
            let ok = probe(&upstream, host, &hc).await;
            let (fails, oks) = streaks.entry(host.addr).or_insert((0, 0));
            if ok {
                *fails = 0;
                *oks += 1;
            } else {
                *oks = 0;
                *fails += 1;
            }
            let verdict = if *fails >= hc.unhealthy_threshold {
                Some(true)
            } else if *oks >= hc.healthy_threshold {
                Some(false)
            } else {
                None
            };
            if let Some(failed) = verdict {
                if host.set_check_failed(failed) {
                    tracing::info!(host = %host.addr, healthy = !failed, "active health check changed a host");
                }
            }
        }
        streaks.retain(|addr, _| hosts.get(*addr).is_some());
        tokio::time::sleep(hc.interval).await;
    }
}

/// One check of `host` within the timeout, over the host's own transport (plaintext or mTLS).
async fn probe(upstream: &Upstream, host: &Host, hc: &HealthCheckConfig) -> bool {
    let check = async {
        match &hc.http_path {
            Some(path) => {
                let uri = format!("{}://{}{path}", upstream.scheme(host), host.addr);
                let req = http::Request::get(uri)
                    .body(crate::upstream::empty())
                    .map_err(|e| e.to_string())?;
                let response = upstream
                    .client(false)
                    .request(req)
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("answered {}", response.status()))
                }
            }
            None => upstream
                .connect_stream(host)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    };
    match tokio::time::timeout(hc.timeout, check).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::debug!(host = %host.addr, error = %e, "active health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(host = %host.addr, "active health check timed out");
            false
        }
    }
}
