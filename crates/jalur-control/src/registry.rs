//! Service registries: where workloads (service instances) come from besides the config itself.
//! The seam Consul, etcd and Kubernetes implement later is [`Registry`]; the first implementation
//! is [`ProxyRegistry`], fed by proxies announcing their workload in xDS node metadata.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::node::ClientInfo;
use crate::workload::{Workload, WorkloadSet};

/// A source of workloads. `watch` yields the registry's whole current set every time it changes.
pub trait Registry: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn watch(&self) -> watch::Receiver<WorkloadSet>;
}

/// Workloads of connected proxies. Registered once the proxy holds a complete config (it ACKed
/// its listeners, routes, clusters and endpoints, or reconnected holding them), so callers are
/// never sent to a proxy that cannot route yet. Removed at once when the proxy leaves (ends its
/// stream itself, as a draining `jalur proxy` does), and `grace` after a stream that broke (a
/// proxy that reconnects within the grace period keeps its endpoint without a flap).
#[derive(Clone)]
pub struct ProxyRegistry {
    inner: Arc<Mutex<ProxyState>>,
    tx: Arc<watch::Sender<WorkloadSet>>,
    /// Connected gateway proxies (for registering them in legacy registries).
    gateways_tx: Arc<watch::Sender<Arc<Vec<ClientInfo>>>>,
    grace: Duration,
}

#[derive(Default)]
struct ProxyState {
    /// connection id -> workload; several connections may announce the same workload.
    by_conn: HashMap<u64, Workload>,
    /// Workloads of connected proxies that do not hold a complete config yet.
    pending: HashMap<u64, Workload>,
    gateways: HashMap<u64, ClientInfo>,
    /// connection id -> where that proxy serves `/stats/prometheus`.
    stats: HashMap<u64, std::net::SocketAddr>,
    /// connection id -> node id of every connected client.
    ids: HashMap<u64, String>,
}

impl ProxyRegistry {
    pub fn new(grace: Duration) -> ProxyRegistry {
        let (tx, _) = watch::channel(Arc::new(Vec::new()));
        ProxyRegistry {
            inner: Arc::default(),
            tx: Arc::new(tx),
            gateways_tx: Arc::new(watch::channel(Arc::new(Vec::new())).0),
            grace,
        }
    }

    /// Connected gateway proxies, updated on every connect and disconnect.
    pub fn gateways(&self) -> watch::Receiver<Arc<Vec<ClientInfo>>> {
        self.gateways_tx.subscribe()
    }

    /// Built and sent under one lock, as [`ProxyRegistry::publish`].
    fn publish_gateways(&self) {
        let state = self.lock();
        let mut v: Vec<ClientInfo> = state.gateways.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        self.gateways_tx.send_replace(Arc::new(v));
    }

    /// The `/stats/prometheus` endpoints of the connected proxies that announce one.
    pub fn stats_targets(&self) -> Vec<std::net::SocketAddr> {
        let mut v: Vec<_> = self.lock().stats.values().copied().collect();
        v.sort();
        v.dedup();
        v
    }

    /// Node ids of the connected clients (sorted, unique).
    pub fn connected_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().ids.values().cloned().collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn connected(&self, conn_id: u64, client: &ClientInfo) {
        self.lock().ids.insert(conn_id, client.id.clone());
        let stats = client.stats_port.and_then(|port| {
            let ip: std::net::IpAddr = client.ip.as_deref()?.parse().ok()?;
            let ip = if ip.is_unspecified() {
                [127, 0, 0, 1].into()
            } else {
                ip
            };
            Some(std::net::SocketAddr::new(ip, u16::try_from(port).ok()?))
        });
        if let Some(addr) = stats {
            self.lock().stats.insert(conn_id, addr);
        }
        if client.kind == crate::node::ClientKind::Gateway {
            self.lock().gateways.insert(conn_id, client.clone());
            self.publish_gateways();
        }
        let Some(w) = client.workload() else { return };
        tracing::debug!(conn_id, host = %w.host, address = %w.address, "workload announced; routable once its proxy holds a complete config");
        self.lock().pending.insert(conn_id, w);
    }

    /// The proxy on `conn_id` holds a complete config: its workload becomes an endpoint.
    pub fn ready(&self, conn_id: u64) {
        let Some(w) = self.lock().pending.remove(&conn_id) else {
            return;
        };
        tracing::info!(conn_id, host = %w.host, address = %w.address, "workload registered by its proxy");
        self.lock().by_conn.insert(conn_id, w);
        self.publish();
    }

    /// The proxy on `conn_id` ended its stream itself: it is draining and leaving, so its
    /// endpoint goes now, without the grace period a broken connection gets.
    pub fn left(&self, conn_id: u64) {
        self.forget_connection(conn_id);
        let Some(w) = self.lock().by_conn.remove(&conn_id) else {
            return;
        };
        // Also what an earlier, broken stream of the same proxy left behind for its grace
        // period: the proxy is going, whichever connection announced it.
        self.lock()
            .by_conn
            .retain(|_, other| other.source != w.source);
        tracing::info!(conn_id, host = %w.host, address = %w.address, "workload removed: its proxy is leaving");
        self.publish();
    }

    /// Everything but the workload: node id, stats target, gateway, pending workload.
    fn forget_connection(&self, conn_id: u64) {
        self.lock().pending.remove(&conn_id);
        self.lock().stats.remove(&conn_id);
        self.lock().ids.remove(&conn_id);
        if self.lock().gateways.remove(&conn_id).is_some() {
            self.publish_gateways();
        }
    }

    /// The stream on `conn_id` ended without the proxy saying it leaves: its endpoint stays
    /// for the grace period, in case it reconnects.
    pub fn disconnected(&self, conn_id: u64) {
        self.forget_connection(conn_id);
        if !self.lock().by_conn.contains_key(&conn_id) {
            return;
        }
        let this = self.clone();
        let remove = move || {
            if let Some(w) = this.lock().by_conn.remove(&conn_id) {
                tracing::info!(conn_id, host = %w.host, address = %w.address, "workload removed: its proxy disconnected");
            }
            this.publish();
        };
        if self.grace.is_zero() {
            remove();
        } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let grace = self.grace;
            handle.spawn(async move {
                tokio::time::sleep(grace).await;
                remove();
            });
        } else {
            remove();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the current set. Built and sent under one lock: two proxies becoming ready on two
    /// threads at once would otherwise race, and the set built first could be sent last,
    /// leaving the other's workload out of the mesh until some later change.
    fn publish(&self) {
        let state = self.lock();
        let mut set: Vec<Workload> = state.by_conn.values().cloned().collect();
        set.sort_by(|a, b| {
            (&a.host, &a.address, a.target_port, &a.source).cmp(&(
                &b.host,
                &b.address,
                b.target_port,
                &b.source,
            ))
        });
        // Several connections of one proxy announce one endpoint; two proxies on one address
        // (side-by-side sidecars with their own inbound ports) are two.
        set.dedup_by(|a, b| {
            a.host == b.host
                && a.address == b.address
                && a.ports == b.ports
                && a.target_port == b.target_port
        });
        self.tx.send_replace(Arc::new(set));
    }
}

impl Registry for ProxyRegistry {
    fn name(&self) -> &str {
        "proxies"
    }

    fn watch(&self) -> watch::Receiver<WorkloadSet> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

    use super::*;

    fn sidecar(ip: &str) -> ClientInfo {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        let mut md = Struct::default();
        md.fields.insert("JALUR_SERVICE".into(), s("reviews"));
        md.fields.insert("JALUR_PORTS".into(), s("http:9080"));
        ClientInfo::from_node(&Node {
            id: format!("sidecar~{ip}~reviews-v1.shop~shop.svc.cluster.local"),
            metadata: Some(md),
            ..Node::default()
        })
    }

    fn addresses(r: &ProxyRegistry) -> Vec<String> {
        r.watch()
            .borrow()
            .iter()
            .map(|w| w.address.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_workload_is_an_endpoint_only_once_its_proxy_is_ready() {
        let r = ProxyRegistry::new(Duration::from_secs(5));
        r.connected(1, &sidecar("10.0.0.1"));
        assert!(addresses(&r).is_empty(), "announced, not ready yet");
        assert_eq!(r.connected_ids().len(), 1, "counted as connected at once");
        r.ready(1);
        assert_eq!(addresses(&r), ["10.0.0.1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_keeps_the_endpoint_for_the_grace_period() {
        let r = ProxyRegistry::new(Duration::from_secs(5));
        r.connected(1, &sidecar("10.0.0.1"));
        r.ready(1);
        r.disconnected(1);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(addresses(&r), ["10.0.0.1"], "within the grace period");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(addresses(&r).is_empty(), "after the grace period");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leaving_proxy_is_withdrawn_at_once_with_its_earlier_streams() {
        let r = ProxyRegistry::new(Duration::from_secs(5));
        r.connected(1, &sidecar("10.0.0.1"));
        r.ready(1);
        // Its first stream broke (in grace), it reconnected holding config, then it leaves.
        r.disconnected(1);
        r.connected(2, &sidecar("10.0.0.1"));
        r.ready(2);
        r.connected(3, &sidecar("10.0.0.2"));
        r.ready(3);
        r.left(2);
        assert_eq!(addresses(&r), ["10.0.0.2"]);
        // A proxy that leaves before it was ready never shows up.
        r.connected(4, &sidecar("10.0.0.3"));
        r.left(4);
        r.ready(4);
        assert_eq!(addresses(&r), ["10.0.0.2"]);
    }

    #[test]
    fn proxies_becoming_ready_at_once_on_many_threads_are_all_published() {
        // Proxies on several xDS streams (threads) become ready at the same moment; the set
        // published last must hold all of them, whatever the interleaving: a set built before
        // another proxy's insert must never be sent after that proxy's own, fuller, set.
        const THREADS: u64 = 4;
        let mut lost = 0;
        for _ in 0..300 {
            let r = ProxyRegistry::new(Duration::ZERO);
            // Some workloads already there, so building a set takes a moment.
            for conn in 100..140 {
                r.connected(conn, &sidecar(&format!("10.1.0.{conn}")));
                r.ready(conn);
            }
            let start = std::sync::Barrier::new(THREADS as usize);
            std::thread::scope(|scope| {
                for conn in 0..THREADS {
                    let (r, start) = (r.clone(), &start);
                    scope.spawn(move || {
                        r.connected(conn, &sidecar(&format!("10.0.0.{conn}")));
                        start.wait();
                        r.ready(conn);
                    });
                }
            });
            lost += usize::from(addresses(&r).len() != 40 + THREADS as usize);
        }
        assert_eq!(lost, 0, "rounds that lost a workload");
    }
}
