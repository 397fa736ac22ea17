//! Service registries: where workloads (service instances) come from besides the config itself.
//! The seam Consul, etcd and Kubernetes implement later is [`Registry`]; the first implementation
//! is [`ProxyRegistry`], fed by proxies announcing their workload in xDS node metadata.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::mesh::Port;
use crate::node::ClientInfo;

/// One instance of a service, as a registry reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Workload {
    /// Fully qualified service host, e.g. `reviews.bookinfo.svc.cluster.local`.
    pub host: String,
    pub namespace: String,
    pub name: String,
    pub address: String,
    /// Application ports (numbers the service is called on).
    pub ports: Vec<Port>,
    /// Every service port is dialled at this port: a sidecar's inbound port, or a registry
    /// instance's own port (Consul instances of one service often differ in port).
    pub target_port: Option<u32>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub locality: String,
    pub healthy: bool,
    /// Who reported it, e.g. `proxy:sidecar~10.0.0.1~reviews-v1.bookinfo~bookinfo.svc.cluster.local`.
    pub source: String,
}

pub type WorkloadSet = Arc<Vec<Workload>>;

/// A source of workloads. `watch` yields the registry's whole current set every time it changes.
pub trait Registry: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn watch(&self) -> watch::Receiver<WorkloadSet>;
}

/// Workloads of connected proxies. Registered on connect; removed `grace` after the stream ends
/// (a proxy that reconnects within the grace period keeps its endpoint without a flap).
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

    fn publish_gateways(&self) {
        let mut v: Vec<ClientInfo> = self.lock().gateways.values().cloned().collect();
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
        tracing::info!(conn_id, host = %w.host, address = %w.address, "workload registered by its proxy");
        self.lock().by_conn.insert(conn_id, w);
        self.publish();
    }

    pub fn disconnected(&self, conn_id: u64) {
        self.lock().stats.remove(&conn_id);
        self.lock().ids.remove(&conn_id);
        if self.lock().gateways.remove(&conn_id).is_some() {
            self.publish_gateways();
        }
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

    fn publish(&self) {
        let mut set: Vec<Workload> = self.lock().by_conn.values().cloned().collect();
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
