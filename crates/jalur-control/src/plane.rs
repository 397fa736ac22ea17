//! The running control plane: config store + registries -> debounced mesh rebuilds -> ADS pushes,
//! and the status API beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jalur_xds::{AdsServer, ClientSnapshot, Generator, Node};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as MetricsRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::consul::ConsulRegistries;
use crate::mesh::Mesh;
use crate::node::ClientInfo;
use crate::registry::{ProxyRegistry, Registry, Workload, WorkloadSet};
use crate::store::{ConfigStore, InvalidConfig};
use crate::translate::translate;

#[derive(Debug, Clone)]
pub struct Options {
    pub config: Vec<PathBuf>,
    pub xds_addr: SocketAddr,
    pub status_addr: SocketAddr,
    /// Changes arriving within this window are pushed together.
    pub debounce: Duration,
    /// How long a disconnected proxy's workload stays registered.
    pub registry_grace: Duration,
    /// How often the config paths are checked for edits.
    pub watch_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: Vec::new(),
            xds_addr: ([0, 0, 0, 0], 15010).into(),
            status_addr: ([0, 0, 0, 0], 15014).into(),
            debounce: Duration::from_millis(100),
            registry_grace: Duration::from_secs(5),
            watch_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Xds(#[from] jalur_xds::server::Error),
}

/// Shared state the status API reads.
#[derive(Clone)]
pub struct State {
    pub store: ConfigStore,
    pub mesh: Arc<ArcSwap<Mesh>>,
    pub proxies: ProxyRegistry,
    /// Every workload source: the proxy registry first, then Consul, then any others.
    pub registries: Vec<Arc<dyn Registry>>,
    pub consul: Arc<ConsulRegistries>,
    pub ads: AdsServer,
    pub metrics: Arc<MetricsRegistry>,
    pub generation: Arc<AtomicU64>,
}

/// A started control plane: its bound addresses, and its state.
pub struct ControlPlane {
    pub xds_addr: SocketAddr,
    pub status_addr: SocketAddr,
    pub state: State,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

struct MeshGenerator {
    mesh: Arc<ArcSwap<Mesh>>,
    proxies: ProxyRegistry,
}

impl Generator for MeshGenerator {
    fn client_kind(&self, node: &Node) -> String {
        ClientInfo::from_node(node).kind.label().to_string()
    }

    fn generate(&self, node: &Node) -> Arc<ClientSnapshot> {
        Arc::new(translate(&self.mesh.load(), &ClientInfo::from_node(node)))
    }

    fn connected(&self, conn_id: u64, node: &Node) {
        self.proxies
            .connected(conn_id, &ClientInfo::from_node(node));
    }

    fn disconnected(&self, conn_id: u64, _node: &Node) {
        self.proxies.disconnected(conn_id);
    }
}

struct PlaneMetrics {
    rebuilds: Counter,
    services: Gauge,
    workloads: Gauge,
}

impl ControlPlane {
    /// Loads the config, binds both ports and starts serving. Returns once everything listens.
    pub async fn start(opts: Options) -> Result<ControlPlane, Error> {
        ControlPlane::start_with_registries(opts, Vec::new()).await
    }

    /// As [`ControlPlane::start`], with more workload sources beside the connected proxies.
    pub async fn start_with_registries(
        opts: Options,
        extra: Vec<Arc<dyn Registry>>,
    ) -> Result<ControlPlane, Error> {
        let store = ConfigStore::open(opts.config.clone())?;
        let proxies = ProxyRegistry::new(opts.registry_grace);
        let mesh = Arc::new(ArcSwap::from_pointee(Mesh::build(store.current(), &[])));
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let generator = MeshGenerator {
            mesh: mesh.clone(),
            proxies: proxies.clone(),
        };
        let ads = AdsServer::new(Arc::new(generator), gen_rx);

        let mut registry = MetricsRegistry::default();
        ads.register_metrics(&mut registry);
        let pm = PlaneMetrics {
            rebuilds: Counter::default(),
            services: Gauge::default(),
            workloads: Gauge::default(),
        };
        registry.register(
            "jalur_mesh_rebuilds",
            "Mesh rebuilds (config or endpoint changes) pushed to clients",
            pm.rebuilds.clone(),
        );
        registry.register(
            "jalur_mesh_services",
            "Services known to the mesh",
            pm.services.clone(),
        );
        registry.register(
            "jalur_registry_workloads",
            "Workloads reported by registries",
            pm.workloads.clone(),
        );
        store.register_metrics(&mut registry);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let consul =
            ConsulRegistries::start(store.subscribe(), proxies.gateways(), shutdown_rx.clone());
        consul.register_metrics(&mut registry);
        pm.services
            .set(i64::try_from(mesh.load().services.len()).unwrap_or(i64::MAX));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let xds_listener = bind("xDS", opts.xds_addr).await?;
        let status_listener = bind("status API", opts.status_addr).await?;
        let xds_addr = xds_listener.local_addr().map_err(|source| Error::Bind {
            what: "xDS",
            addr: opts.xds_addr,
            source,
        })?;
        let status_addr = status_listener.local_addr().map_err(|source| Error::Bind {
            what: "status API",
            addr: opts.status_addr,
            source,
        })?;

        let state = State {
            store: store.clone(),
            mesh: mesh.clone(),
            proxies: proxies.clone(),
            registries: [
                Arc::new(proxies.clone()) as Arc<dyn Registry>,
                consul.clone() as Arc<dyn Registry>,
            ]
            .into_iter()
            .chain(extra)
            .collect(),
            consul,
            ads: ads.clone(),
            metrics: Arc::new(registry),
            generation: Arc::new(AtomicU64::new(0)),
        };
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(
            store
                .clone()
                .watch(opts.watch_interval, opts.watch_interval),
        ));
        tasks.push(tokio::spawn(rebuild_loop(
            state.clone(),
            gen_tx,
            opts.debounce,
            pm,
        )));
        let mut rx = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stop = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = ads.serve(xds_listener, stop).await {
                tracing::error!(error = %e, "xDS server stopped");
            }
        }));
        tasks.push(tokio::spawn(crate::status::serve(
            status_listener,
            state.clone(),
            shutdown_rx,
        )));
        tracing::info!(%xds_addr, %status_addr, "control plane serving");
        Ok(ControlPlane {
            xds_addr,
            status_addr,
            state,
            tasks,
            shutdown,
        })
    }

    /// Stops serving: xDS streams end (clients keep their last config and reconnect elsewhere).
    pub async fn stop(self) {
        // End every ADS stream first: connected proxies see the control plane go away at once
        // (and keep serving their last config), instead of holding a half-dead stream.
        self.state.ads.close_streams();
        let _ = self.shutdown.send(true);
        self.state
            .consul
            .exports_stopped(Duration::from_secs(5))
            .await;
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// Rebuilds the mesh when config or any registry's workloads change, at most once per
/// `debounce`, then bumps the generation the ADS server pushes on.
async fn rebuild_loop(
    state: State,
    gen_tx: watch::Sender<u64>,
    debounce: Duration,
    pm: PlaneMetrics,
) {
    let mut config_rx = state.store.subscribe();
    config_rx.borrow_and_update();
    let mut registry_rxs: Vec<watch::Receiver<WorkloadSet>> =
        state.registries.iter().map(|r| r.watch()).collect();
    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    for mut rx in registry_rxs.clone() {
        let changed_tx = changed_tx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                // A full channel already means "rebuild pending": dropping this signal is fine.
                let _ = changed_tx.try_send(());
            }
        });
    }
    loop {
        tokio::select! {
            r = config_rx.changed() => if r.is_err() { return },
            Some(()) = changed_rx.recv() => {},
        }
        // Let a burst settle (a directory of edits, a fleet reconnecting), then push once.
        tokio::time::sleep(debounce).await;
        while changed_rx.try_recv().is_ok() {}
        let workloads: Vec<Workload> = registry_rxs
            .iter_mut()
            .flat_map(|rx| rx.borrow_and_update().iter().cloned().collect::<Vec<_>>())
            .collect();
        let config = config_rx.borrow_and_update().clone();
        let mesh = Mesh::build(config, &workloads);
        pm.services
            .set(i64::try_from(mesh.services.len()).unwrap_or(i64::MAX));
        pm.workloads
            .set(i64::try_from(workloads.len()).unwrap_or(i64::MAX));
        pm.rebuilds.inc();
        state.mesh.store(Arc::new(mesh));
        let generation = state.generation.fetch_add(1, Ordering::SeqCst) + 1;
        gen_tx.send_replace(generation);
        tracing::debug!(generation, workloads = workloads.len(), "mesh rebuilt");
    }
}
