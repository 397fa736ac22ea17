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
use crate::mesh::{Mesh, Security};
use crate::migrate::metrics::{MetricsSource, PrometheusSource, ScrapeSource};
use crate::migrate::Migrations;
use crate::node::ClientInfo;
use crate::registry::{ProxyRegistry, Registry};
use crate::status::State;
use crate::store::ConfigStore;
use crate::views::Views;
use crate::workload::{Workload, WorkloadSet};

#[derive(Debug, Clone)]
pub struct Options {
    pub config: Vec<PathBuf>,
    /// Plaintext ADS (15010): served only with `insecure_xds`.
    pub xds_addr: SocketAddr,
    /// ADS and the CA over TLS (15012): served when a CA is configured (`ca`).
    pub xds_tls_addr: SocketAddr,
    /// Serve plaintext ADS on `xds_addr`: anyone who reaches it can register as any service.
    /// For development and in-process tests (the library default); `jalur control` needs
    /// `--insecure-xds`.
    pub insecure_xds: bool,
    pub status_addr: SocketAddr,
    /// Changes arriving within this window are pushed together.
    pub debounce: Duration,
    /// How long a disconnected proxy's workload stays registered.
    pub registry_grace: Duration,
    /// How often the config paths are polled for edits: the safety net under the inotify
    /// watch, which sees a write at once.
    pub watch_interval: Duration,
    /// How long an edit must be quiet before it is loaded (editors write in several steps).
    pub watch_settle: Duration,
    /// Where controller state lives (migrations); default `.jalur/` in the first config
    /// directory (or beside the first config file).
    pub state_dir: Option<PathBuf>,
    /// A Prometheus server to read migration metrics from (PromQL); default: the controller
    /// scrapes the connected proxies' `/stats/prometheus` itself.
    pub prometheus: Option<String>,
    /// Extra `/stats/prometheus` endpoints to scrape besides the proxies that announce theirs.
    pub scrape_targets: Vec<SocketAddr>,
    pub scrape_interval: Duration,
    /// How often the migration controller judges its stages.
    pub migration_tick: Duration,
    /// The mesh CA (its files under `<state dir>/ca/`); `None`: no CA, no mesh identities.
    pub ca: Option<crate::ca::CaOptions>,
    /// `--admin-token-file`: the token the status API's write endpoints require.
    pub admin_token_file: Option<PathBuf>,
    /// How often remote JWKS (RequestAuthentication `jwksUri`) are fetched again.
    pub jwks_refresh: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            config: Vec::new(),
            xds_addr: ([0, 0, 0, 0], 15010).into(),
            xds_tls_addr: ([0, 0, 0, 0], 15012).into(),
            insecure_xds: true,
            status_addr: ([0, 0, 0, 0], 15014).into(),
            debounce: Duration::from_millis(100),
            registry_grace: Duration::from_secs(5),
            watch_interval: Duration::from_secs(1),
            watch_settle: Duration::from_millis(50),
            state_dir: None,
            prometheus: None,
            scrape_targets: Vec::new(),
            scrape_interval: Duration::from_millis(500),
            migration_tick: Duration::from_millis(200),
            ca: None,
            admin_token_file: None,
            jwks_refresh: crate::jwks::DEFAULT_REFRESH,
        }
    }
}

/// Why a control plane cannot start (in `error.rs`, which `xds_tls.rs` uses too).
pub use crate::error::Error;

/// A started control plane: its bound addresses, and its state.
pub struct ControlPlane {
    /// Where plaintext ADS is served (`insecure_xds`); without it, the same as `xds_tls_addr`.
    pub xds_addr: SocketAddr,
    /// ADS + CA over TLS, when a CA is configured.
    pub xds_tls_addr: Option<SocketAddr>,
    pub status_addr: SocketAddr,
    pub state: State,
    /// Background loops (config watch, rebuilds, controller): aborted at once on stop.
    loops: Vec<tokio::task::JoinHandle<()>>,
    /// The servers: given a moment to end their connections on stop.
    servers: Vec<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    /// `clients.json`, written once more by a graceful stop (see [`ControlPlane::stop`]).
    clients_file: Option<PathBuf>,
    warm: watch::Receiver<bool>,
}

struct MeshGenerator {
    mesh: Arc<ArcSwap<Mesh>>,
    proxies: ProxyRegistry,
    views: Arc<Views>,
}

impl Generator for MeshGenerator {
    fn admit(&self, node: &Node, extensions: &http::Extensions) -> Result<(), tonic::Status> {
        crate::xds_tls::admit(node, extensions)
    }

    fn client_kind(&self, node: &Node) -> String {
        ClientInfo::from_node(node).kind.label().to_string()
    }

    fn generate(&self, node: &Node) -> Arc<ClientSnapshot> {
        self.views
            .snapshot(self.mesh.load_full(), &ClientInfo::from_node(node))
    }

    fn connected(&self, conn_id: u64, node: &Node) {
        let client = ClientInfo::from_node(node);
        for error in &client.metadata_errors {
            tracing::warn!(conn_id, node = %client.id, %error, "node metadata key ignored");
        }
        self.proxies.connected(conn_id, &client);
    }

    fn ready(&self, conn_id: u64, _node: &Node) {
        self.proxies.ready(conn_id);
    }

    fn disconnected(&self, conn_id: u64, _node: &Node) {
        self.proxies.disconnected(conn_id);
    }

    fn left(&self, conn_id: u64, _node: &Node) {
        self.proxies.left(conn_id);
    }
}

#[derive(Default)]
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
        let root_namespace = opts
            .ca
            .as_ref()
            .map_or(jalur_model::security::DEFAULT_ROOT_NAMESPACE, |ca| {
                ca.root_namespace.as_str()
            });
        let store = ConfigStore::open_in(opts.config.clone(), root_namespace)?;
        let proxies = ProxyRegistry::new(opts.registry_grace);
        let generation = Arc::new(AtomicU64::new(0));
        let state_dir = opts
            .state_dir
            .clone()
            .or_else(|| default_state_dir(&opts.config));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let source: Arc<dyn MetricsSource> = match &opts.prometheus {
            Some(url) => Arc::new(PrometheusSource::new(url)),
            None => {
                let (proxies, extra) = (proxies.clone(), opts.scrape_targets.clone());
                let targets = Arc::new(move || {
                    let mut t = proxies.stats_targets();
                    t.extend(extra.iter().copied());
                    t
                });
                let scraper =
                    ScrapeSource::new(targets, opts.scrape_interval, Duration::from_secs(600));
                tokio::spawn(scraper.clone().run(shutdown_rx.clone()));
                scraper
            }
        };
        let migrations =
            Migrations::new(store.clone(), state_dir.clone(), source, generation.clone());
        let (warm_tx, warm_rx) = watch::channel(false);
        let consul = ConsulRegistries::start(
            store.subscribe(),
            proxies.gateways(),
            shutdown_rx.clone(),
            warm_tx.subscribe(),
        );
        let registries: Vec<Arc<dyn Registry>> = [
            Arc::new(proxies.clone()) as Arc<dyn Registry>,
            consul.clone() as Arc<dyn Registry>,
        ]
        .into_iter()
        .chain(extra)
        .collect();
        // The rebuild loop's receivers are taken here, and the first mesh is built from the
        // values they hold, so nothing published before the loop first runs is lost: not a
        // `migrate start` right after start, not a registry's set (Consul often answers while
        // the ports are still being bound; a receiver subscribed after that would have counted
        // its answer as seen, and the mesh would have stayed empty). The first push already
        // carries the persisted weights: a restarted control plane resumes a migration where
        // it was, never at the route's unmigrated default.
        // Remote JWKS too: the first push carries the keys fetched now (within a bound), not
        // the fail-closed set, so proxies that verified tokens before a restart keep doing so.
        let mut jwks =
            crate::jwks::start(store.subscribe(), opts.jwks_refresh, shutdown_rx.clone());
        if !crate::jwks::first_round(&mut jwks, JWKS_FIRST_MAX).await {
            tracing::warn!(
                waited_s = JWKS_FIRST_MAX.as_secs(),
                "remote JWKS not all fetched yet; their issuers' tokens are refused until they are"
            );
        }
        let mut changes = Changes {
            config: store.subscribe(),
            overlay: migrations.overlay(),
            registries: registries.iter().map(|r| r.watch()).collect(),
            jwks,
        };
        let (first, workloads) =
            changes.build(opts.ca.as_ref().map(Security::from).unwrap_or_default());
        let mesh = Arc::new(ArcSwap::from_pointee(first));
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let views = Arc::new(Views::default());
        let generator = MeshGenerator {
            mesh: mesh.clone(),
            proxies: proxies.clone(),
            views: views.clone(),
        };
        let ads = AdsServer::with_warmup(Arc::new(generator), gen_rx, warm_rx);
        let (rebuild_tx, rebuild_rx) = tokio::sync::mpsc::channel(1);

        let mut registry = MetricsRegistry::default();
        ads.register_metrics(&mut registry);
        views.register_metrics(&mut registry);
        let ca = match &opts.ca {
            Some(ca) => {
                let dir = state_dir.as_deref().ok_or(Error::CaWithoutStateDir)?;
                Some(Arc::new(crate::ca::MeshCa::start(dir, ca, &mut registry)?))
            }
            None => None,
        };
        let admin = match &opts.admin_token_file {
            Some(path) => Some(crate::status::admin::AdminToken::watched(
                path,
                crate::status::admin::RELOAD_INTERVAL,
            )?),
            None => {
                if ca.is_some() {
                    tracing::warn!("no --admin-token-file: bootstrap tokens, migration commands and config_dump answer callers on this host only");
                }
                None
            }
        };
        let pm = PlaneMetrics::default();
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
        consul.register_metrics(&mut registry);
        pm.services
            .set(i64::try_from(mesh.load().services.len()).unwrap_or(i64::MAX));
        pm.workloads
            .set(i64::try_from(workloads).unwrap_or(i64::MAX));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let xds = XdsPorts::bind(&opts, ca.as_ref()).await?;
        let status_listener = bind("status API", opts.status_addr).await?;
        let (xds_addr, xds_tls_addr) = (xds.xds_addr, xds.xds_tls_addr);
        let status_addr = status_listener.local_addr().map_err(|source| Error::Bind {
            what: "status API",
            addr: opts.status_addr,
            source,
        })?;

        let state = State {
            store: store.clone(),
            mesh: mesh.clone(),
            proxies: proxies.clone(),
            registries,
            consul,
            ads: ads.clone(),
            metrics: Arc::new(registry),
            generation,
            migrations: migrations.clone(),
            ca,
            admin,
        };
        migrations.set_ads(ads.clone());
        let mut tasks = Vec::new();
        let mut servers = Vec::new();
        tasks.push(tokio::spawn(
            store.clone().watch(opts.watch_interval, opts.watch_settle),
        ));
        tasks.push(tokio::spawn(
            migrations.run(opts.migration_tick, shutdown_rx.clone()),
        ));
        tasks.push(tokio::spawn(rebuild_loop(
            state.mesh.clone(),
            state.generation.clone(),
            changes,
            gen_tx,
            opts.debounce,
            pm,
            rebuild_rx,
        )));
        let clients_file = state_dir.map(|d| d.join("clients.json"));
        tasks.push(tokio::spawn(warm_up(
            state.clone(),
            clients_file.clone(),
            opts.registry_grace,
            rebuild_tx,
            warm_tx.clone(),
        )));
        if let Some(file) = clients_file.clone() {
            tasks.push(tokio::spawn(remember_clients(
                state.proxies.clone(),
                file,
                warm_tx.subscribe(),
            )));
        }
        let mut rx = shutdown_rx.clone();
        if let Some(listener) = xds.plain {
            let ads = ads.clone();
            servers.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = ads.serve(listener, stop).await {
                    tracing::error!(error = %e, "xDS server stopped");
                }
            }));
        }
        if let Some((listener, config, ca)) = xds.tls {
            servers.push(tokio::spawn(crate::xds_tls::serve(
                listener,
                config,
                ads,
                ca,
                shutdown_rx.clone(),
            )));
        }
        servers.push(tokio::spawn(crate::status::serve(
            status_listener,
            state.clone(),
            shutdown_rx,
        )));
        tracing::info!(%xds_addr, %status_addr, "control plane serving");
        Ok(ControlPlane {
            xds_addr,
            xds_tls_addr,
            status_addr,
            state,
            loops: tasks,
            servers,
            shutdown,
            clients_file,
            warm: warm_tx.subscribe(),
        })
    }

    /// Stops serving: xDS streams end (clients keep their last config and reconnect elsewhere).
    pub async fn stop(mut self) {
        // The loops first: nothing may record the proxies leaving as the fleet's new shape
        // (`clients.json` must still list whom the next start waits for).
        for t in &self.loops {
            t.abort();
        }
        let _ = futures::future::join_all(self.loops.drain(..)).await;
        // Who is connected now, as the periodic write would have recorded it within a second:
        // a plane stopped soon after its proxies connected (a quick rolling restart) otherwise
        // left no list, and the next start answered them at once from an empty mesh. Not
        // while warming up: the list being waited for stays as it was.
        if let (Some(file), true) = (&self.clients_file, *self.warm.borrow()) {
            if let Err(e) = write_clients(file, &self.state.proxies.connected_ids()) {
                tracing::warn!(file = %file.display(), error = %e, "cannot record connected clients at stop; a restart will not wait for them");
            }
        }
        // Then end every ADS stream: connected proxies see the control plane go away at once
        // (and keep serving their last config), instead of holding a half-dead stream.
        self.state.ads.close_streams();
        let _ = self.shutdown.send(true);
        self.state
            .consul
            .exports_stopped(Duration::from_secs(5))
            .await;
        let servers = futures::future::join_all(self.servers.iter_mut());
        if tokio::time::timeout(Duration::from_secs(2), servers)
            .await
            .is_err()
        {
            for t in &self.servers {
                t.abort();
            }
        }
    }
}

/// The bound xDS ports: plaintext (`insecure_xds`) and TLS (with a CA), at least one.
struct XdsPorts {
    plain: Option<TcpListener>,
    tls: Option<(
        TcpListener,
        Arc<rustls::ServerConfig>,
        Arc<crate::ca::MeshCa>,
    )>,
    xds_addr: SocketAddr,
    xds_tls_addr: Option<SocketAddr>,
}

impl XdsPorts {
    async fn bind(opts: &Options, ca: Option<&Arc<crate::ca::MeshCa>>) -> Result<XdsPorts, Error> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            let listener = jalur_xds::server::listen(addr).map_err(|source| Error::Bind {
                what,
                addr,
                source,
            })?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| Error::Bind { what, addr, source })?;
            Ok::<_, Error>((listener, local))
        };
        let tls = match ca {
            Some(ca) => {
                let (listener, local) = bind("xDS (TLS)", opts.xds_tls_addr).await?;
                let config = crate::xds_tls::tls_config(ca, opts.xds_tls_addr.ip())?;
                Some((listener, config, ca.clone(), local))
            }
            None => None,
        };
        let plain = match opts.insecure_xds {
            true => Some(bind("xDS", opts.xds_addr).await?),
            false => None,
        };
        let xds_tls_addr = tls.as_ref().map(|t| t.3);
        let xds_addr = plain
            .as_ref()
            .map(|p| p.1)
            .or(xds_tls_addr)
            .ok_or(Error::NoXdsPort)?;
        Ok(XdsPorts {
            plain: plain.map(|p| p.0),
            tls: tls.map(|(l, c, ca, _)| (l, c, ca)),
            xds_addr,
            xds_tls_addr,
        })
    }
}

/// What the mesh is built from, as the rebuild loop watches it.
struct Changes {
    config: watch::Receiver<Arc<jalur_model::Config>>,
    overlay: watch::Receiver<Arc<crate::migrate::Overlay>>,
    registries: Vec<watch::Receiver<WorkloadSet>>,
    jwks: watch::Receiver<Arc<crate::jwks::JwksSet>>,
}

impl Changes {
    /// A mesh from the current config, migration weights and every registry's workloads (all
    /// marked seen), and how many workloads it holds.
    fn build(&mut self, security: Security) -> (Mesh, usize) {
        let workloads: Vec<Workload> = self
            .registries
            .iter_mut()
            .flat_map(|rx| rx.borrow_and_update().iter().cloned().collect::<Vec<_>>())
            .collect();
        let config = self.config.borrow_and_update().clone();
        let config = crate::migrate::apply(&config, &self.overlay.borrow_and_update());
        let mut mesh = Mesh::build_with(config, &workloads, security);
        mesh.jwks = self.jwks.borrow_and_update().clone();
        (mesh, workloads.len())
    }
}

/// Asks the rebuild loop for a rebuild now (no debounce); answered with the generation of a
/// mesh whose inputs were read after the request.
type RebuildNow = tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<u64>>;

/// Rebuilds the mesh when config or any registry's workloads change, at most once per
/// `debounce`, then bumps the generation the ADS server pushes on. A migration step and the
/// warm-up's request (`now`) are rebuilt at once.
async fn rebuild_loop(
    served: Arc<ArcSwap<Mesh>>,
    generation: Arc<AtomicU64>,
    mut changes: Changes,
    gen_tx: watch::Sender<u64>,
    debounce: Duration,
    pm: PlaneMetrics,
    mut now: RebuildNow,
) {
    let (changed_tx, mut changed_rx) = tokio::sync::mpsc::channel::<()>(1);
    for mut rx in changes.registries.clone() {
        let changed_tx = changed_tx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                // A full channel already means "rebuild pending": dropping this signal is fine.
                let _ = changed_tx.try_send(());
            }
        });
    }
    let mut jwks = changes.jwks.clone();
    let jwks_changed = changed_tx.clone();
    tokio::spawn(async move {
        while jwks.changed().await.is_ok() {
            let _ = jwks_changed.try_send(());
        }
    });
    loop {
        let mut asked = None;
        let at_once = tokio::select! {
            r = changes.config.changed() => if r.is_err() { return } else { false },
            r = changes.overlay.changed() => if r.is_err() { return } else { true },
            Some(()) = changed_rx.recv() => false,
            Some(reply) = now.recv() => { asked = Some(reply); true },
        };
        // Let a burst settle (a directory of edits, a fleet reconnecting), then push once. Not a
        // migration's weights: they change a few times per migration, and a rollback must
        // reach the proxies at once, not a debounce later. Nor the warm-up's rebuild: every
        // xDS answer waits for it.
        if !at_once {
            tokio::select! {
                () = tokio::time::sleep(debounce) => {},
                r = changes.overlay.changed() => if r.is_err() { return },
                Some(reply) = now.recv() => asked = Some(reply),
            }
        }
        while changed_rx.try_recv().is_ok() {}
        let (mesh, workloads) = changes.build(served.load().security.clone());
        pm.services
            .set(i64::try_from(mesh.services.len()).unwrap_or(i64::MAX));
        pm.workloads
            .set(i64::try_from(workloads).unwrap_or(i64::MAX));
        pm.rebuilds.inc();
        served.store(Arc::new(mesh));
        let built = generation.fetch_add(1, Ordering::SeqCst) + 1;
        gen_tx.send_replace(built);
        tracing::debug!(generation = built, workloads, "mesh rebuilt");
        if let Some(reply) = asked {
            let _ = reply.send(built);
        }
    }
}

/// The longest a start waits for Consul's first answers before serving what it has.
const CONSUL_WARM_MAX: Duration = Duration::from_secs(3);

/// The longest a start waits for the first fetch of every remote JWKS.
const JWKS_FIRST_MAX: Duration = Duration::from_secs(10);

/// The longest the warm-up waits for its rebuild (a mesh of thousands of services builds in
/// well under a second).
const WARM_REBUILD_MAX: Duration = Duration::from_secs(5);

/// Holds every xDS answer until the registries are filled: Consul has answered once, and the
/// proxies connected at the last run (`clients.json`) have re-announced themselves, or
/// `grace` passed. Then one rebuild with all of it, and the first answers go out. A fresh
/// start (nothing remembered, no ConsulRegistry) is warm at once: the mesh built at start holds
/// every registry's set as it was then, and any later change is rebuilt as usual.
async fn warm_up(
    state: State,
    clients_file: Option<PathBuf>,
    grace: Duration,
    rebuild: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<u64>>,
    warm: watch::Sender<bool>,
) {
    let previous: Vec<String> = clients_file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let started = tokio::time::Instant::now();
    let consul_expected = state.store.current().consul_registries().count() > 0;
    // Whether to wait is decided by what there is to wait for, never by whether it is already
    // there: a Consul that answered before this first look still needs the rebuild below (its
    // answer may not be in the mesh yet, and a rebuild it triggered waits for the debounce).
    let waited_for = match (consul_expected, !previous.is_empty()) {
        (false, false) => {
            warm.send_replace(true);
            return;
        }
        (true, false) => "Consul",
        (false, true) => "proxies",
        (true, true) => "Consul and proxies",
    };
    loop {
        let expected = state.store.current().consul_registries().count();
        let consul = state.consul.synced(expected) || started.elapsed() > CONSUL_WARM_MAX;
        let ids = state.proxies.connected_ids();
        let back = previous.iter().filter(|p| ids.contains(p)).count();
        let proxies = back == previous.len() || started.elapsed() > grace;
        if consul && proxies {
            if back < previous.len() {
                tracing::warn!(missing = previous.len() - back, "proxies of the last run did not reconnect within the grace period; serving without them");
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (reply, built) = tokio::sync::oneshot::channel();
    // The rebuild loop is gone only when the plane is stopping.
    let generation = match rebuild.send(reply).await {
        Ok(()) => tokio::time::timeout(WARM_REBUILD_MAX, built)
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => None,
    };
    match generation {
        Some(generation) => tracing::info!(
            waited_ms = started.elapsed().as_millis() as u64,
            waited_for,
            remembered_proxies = previous.len(),
            generation,
            "control plane warm: answering xDS clients"
        ),
        None => tracing::warn!(
            waited_for,
            "the warm-up's rebuild did not finish in time; answering with the mesh as it is"
        ),
    }
    warm.send_replace(true);
}

/// Keeps `clients.json` (node ids of the connected clients) current, so the next start knows
/// whom to wait for.
async fn remember_clients(proxies: ProxyRegistry, file: PathBuf, mut warm: watch::Receiver<bool>) {
    // Not while warming up: a quick second restart must still wait for everyone the first
    // one was waiting for.
    if warm.wait_for(|w| *w).await.is_err() {
        return;
    }
    let mut written: Option<Vec<String>> = None;
    let mut warned = false;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ids = proxies.connected_ids();
        if written.as_ref() == Some(&ids) {
            continue;
        }
        match write_clients(&file, &ids) {
            Ok(()) => written = Some(ids),
            // Once: a read-only config directory would otherwise log this every second.
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(file = %file.display(), error = %e, "cannot record connected clients; a restart will not wait for them (set --state-dir)");
            }
            Err(_) => {}
        }
    }
}

/// Replaces `file` with `ids` (whole or not at all: written beside it, then renamed).
fn write_clients(file: &std::path::Path, ids: &[String]) -> std::io::Result<()> {
    file.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let tmp = file.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec(ids).unwrap_or_default())?;
            std::fs::rename(&tmp, file)
        })
}

/// `.jalur/` in the first config directory, or beside the first config file.
fn default_state_dir(config: &[PathBuf]) -> Option<PathBuf> {
    let first = config.first()?;
    let dir = if first.is_dir() {
        first.clone()
    } else {
        first.parent()?.to_path_buf()
    };
    Some(dir.join(".jalur"))
}

#[cfg(test)]
mod tests;
