//! `jalur proxy`: build the node the control plane sees, start the xDS client, apply every
//! accepted config to the runtime and the listeners, serve admin/health/stats, and on shutdown
//! drain the way a rolling restart needs it (see [`Proxy::shutdown`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use jalur_wire::{NamedPort, NodeMeta, Role as MetaRole};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};

use jalur_identity::CredentialsWatch;

use crate::admin::{self, AdminState, Endpoints};
use crate::listener::Listeners;
use crate::runtime::{Identity, Runtime};
use crate::xds::{ConfigState, Lifecycle, XdsOptions, XdsTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    Gateway,
}

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub xds: String,
    pub role: Role,
    pub service: Option<String>,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// The local app's port (sidecars): inbound traffic goes to 127.0.0.1:PORT.
    pub app_port: Option<u16>,
    /// Ports the workload serves, `name:port` (defaults to `http:APP_PORT`).
    pub ports: Vec<NamedPort>,
    pub instance_ip: String,
    pub listen_address: String,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    /// Bind every xDS listener on port 0 (tests, several proxies on one host).
    pub ephemeral_ports: bool,
    /// Delta xDS (default) or state of the world.
    pub delta: bool,
    /// After SIGTERM: how long to keep serving (not ready, endpoint withdrawn, every answer
    /// saying "go elsewhere") before the listeners close; like Istio's terminationDrainDuration.
    pub drain_period: Duration,
    /// Then how long the requests in flight may take to finish.
    pub drain_timeout: Duration,
    /// A downstream connection must deliver each request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// One structured log line per request.
    pub access_log: bool,
    /// The proxy's mesh identity, already obtained (tests build one from a test CA; `jalur
    /// proxy --xds-address https://…` gets it from the control plane's CA). With it the node
    /// announces its SERVICE_ACCOUNT and `security.istio.io/tlsMode: istio`, and the data path
    /// does mTLS as xDS says (`Runtime::credentials`).
    pub credentials: Option<CredentialsWatch>,
    /// The namespace of the control plane's identity (`jalur-control` there), checked when
    /// `xds` is `https://`.
    pub xds_root_namespace: String,
}

impl ProxyOptions {
    /// A sidecar of `service` on loopback with OS-chosen ports everywhere: several proxies on
    /// one host (tests, `jalur demo`). Its real ports are announced to the control plane.
    pub fn loopback(xds: SocketAddr, service: &str, namespace: &str) -> ProxyOptions {
        ProxyOptions {
            xds: xds.to_string(),
            service: Some(service.into()),
            namespace: namespace.into(),
            listen_address: "127.0.0.1".into(),
            outbound_port: 0,
            inbound_port: 0,
            admin_addr: ([127, 0, 0, 1], 0).into(),
            health_addr: ([127, 0, 0, 1], 0).into(),
            stats_addr: ([127, 0, 0, 1], 0).into(),
            // Tests and `jalur demo` stop proxies nothing routes to any more.
            drain_period: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            ..ProxyOptions::default()
        }
    }
}

impl Default for ProxyOptions {
    fn default() -> ProxyOptions {
        ProxyOptions {
            xds: "127.0.0.1:15010".into(),
            role: Role::Sidecar,
            service: None,
            namespace: "default".into(),
            labels: BTreeMap::new(),
            app_port: None,
            ports: Vec::new(),
            instance_ip: "127.0.0.1".into(),
            listen_address: "0.0.0.0".into(),
            outbound_port: 15001,
            inbound_port: 15006,
            admin_addr: ([127, 0, 0, 1], 15000).into(),
            health_addr: ([0, 0, 0, 0], 15021).into(),
            stats_addr: ([0, 0, 0, 0], 15090).into(),
            ephemeral_ports: false,
            delta: true,
            drain_period: DEFAULT_DRAIN_PERIOD,
            drain_timeout: Duration::from_secs(20),
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            access_log: false,
            credentials: None,
            xds_root_namespace: jalur_identity::channel::DEFAULT_ROOT_NAMESPACE.into(),
        }
    }
}

/// The workload label (Istio's) saying its proxy accepts mesh mTLS.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Istio's terminationDrainDuration default: long enough for the control plane to withdraw
/// the endpoint and for callers to take the change (one push, well under a second here).
pub const DEFAULT_DRAIN_PERIOD: Duration = Duration::from_secs(5);
/// Long enough for any honest client on a slow link, short enough that a slowloris holds a
/// connection for seconds, not minutes. hyper starts the timer whenever it waits for a head,
/// so an HTTP/1 keep-alive connection idle this long is closed too.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the {what} endpoint on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("xDS address {0} is TLS (https://) but the proxy has no workload certificate (give it --root-cert and --token-file)")]
    TlsWithoutIdentity(String),
    #[error("invalid {what} address {value:?}: {reason}")]
    Address {
        what: &'static str,
        value: String,
        reason: String,
    },
}

/// A running proxy.
pub struct Proxy {
    /// A sidecar's own outbound and inbound addresses (bound at start).
    pub outbound_addr: Option<SocketAddr>,
    pub inbound_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub stats_addr: SocketAddr,
    pub node_id: String,
    pub state: AdminState,
    listeners: Arc<Mutex<Listeners>>,
    /// Tells the xDS client to leave the control plane, then to stop.
    xds: watch::Sender<Lifecycle>,
    drain: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_period: Duration,
    drain_timeout: Duration,
}

impl Proxy {
    pub async fn start(mut opts: ProxyOptions) -> Result<Proxy, Error> {
        // A sidecar owns its outbound and inbound ports from the start (as Envoy's bootstrap
        // would): bound now, so a taken port fails fast and port 0 resolves before the control
        // plane hears which ports to configure and register.
        let mut reserved = Vec::new();
        if opts.role == Role::Sidecar && !opts.ephemeral_ports {
            for (what, port) in [
                ("outbound", &mut opts.outbound_port),
                ("inbound", &mut opts.inbound_port),
            ] {
                let addr: SocketAddr = format!("{}:{}", opts.listen_address, port)
                    .parse()
                    .map_err(|e| Error::Address {
                        what,
                        value: format!("{}:{port}", opts.listen_address),
                        reason: format!("{e}"),
                    })?;
                let socket = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { what, addr, source })?;
                *port = socket.local_addr().map(|a| a.port()).unwrap_or(*port);
                reserved.push(socket);
            }
        }
        let local_of = |i: usize| {
            reserved
                .get(i)
                .and_then(|l: &TcpListener| l.local_addr().ok())
        };
        let (outbound_addr, inbound_addr) = (local_of(0), local_of(1));
        let node_id = node(&opts).id;
        let service = opts.service.clone().unwrap_or_else(|| "unknown".into());
        let identity = Identity {
            workload: Arc::from(workload_name(&opts).as_str()),
            canonical_service: Arc::from(service.as_str()),
            version: Arc::from(
                opts.labels
                    .get("version")
                    .map(String::as_str)
                    .unwrap_or("unknown"),
            ),
        };
        let rt = Runtime::new(
            identity,
            opts.access_log,
            opts.header_read_timeout,
            opts.credentials.clone(),
        );
        let config = ConfigState::new();
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let admin_l = bind("admin", opts.admin_addr).await?;
        let health_l = bind("health", opts.health_addr).await?;
        let stats_l = bind("stats", opts.stats_addr).await?;
        let local = |l: &TcpListener, a: SocketAddr| l.local_addr().unwrap_or(a);
        let (admin_addr, health_addr, stats_addr) = (
            local(&admin_l, opts.admin_addr),
            local(&health_l, opts.health_addr),
            local(&stats_l, opts.stats_addr),
        );

        let state = AdminState {
            rt: rt.clone(),
            config: config.clone(),
            listeners: Arc::new(ArcSwap::from_pointee(Vec::new())),
        };
        let (xds, xds_rx) = watch::channel(Lifecycle::Serve);
        let (drain, drain_rx) = watch::channel(false);
        let listeners = Arc::new(Mutex::new(Listeners::with_reserved(reserved)));
        let mut tasks = vec![
            tokio::spawn(admin::serve(admin_l, state.clone(), Endpoints::Admin)),
            tokio::spawn(admin::serve(health_l, state.clone(), Endpoints::Health)),
            tokio::spawn(admin::serve(stats_l, state.clone(), Endpoints::Stats)),
        ];
        // The node goes out after the admin ports are bound, so it carries the real health and
        // stats ports.
        opts.health_addr = health_addr;
        opts.stats_addr = stats_addr;
        let node = node(&opts);
        let xds_opts = XdsOptions {
            delta: opts.delta,
            tls: xds_tls(&opts)?,
            ..XdsOptions::new(opts.xds.clone(), node)
        };
        tasks.push(tokio::spawn(crate::xds::run(
            xds_opts,
            config.clone(),
            xds_rx,
        )));
        tasks.push(tokio::spawn(apply_loop(
            state.clone(),
            listeners.clone(),
            drain_rx,
        )));
        tracing::info!(node = %node_id, xds = %opts.xds, %admin_addr, "jalur proxy started");
        Ok(Proxy {
            outbound_addr,
            inbound_addr,
            admin_addr,
            health_addr,
            stats_addr,
            node_id,
            state,
            listeners,
            xds,
            drain,
            tasks,
            drain_period: opts.drain_period,
            drain_timeout: opts.drain_timeout,
        })
    }

    /// Bound listener addresses by name (port 0 resolved).
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        self.state.listeners.load().as_ref().clone()
    }

    /// Drains the way a rolling restart needs it, then stops:
    /// 1. at once: `/healthz/ready` says 503, and the xDS stream is ended cleanly, which the
    ///    control plane takes as "leaving" and withdraws the endpoint (no grace period);
    /// 2. for the drain period: keep accepting and serving (callers route here until their EDS
    ///    drops the endpoint), answers telling callers to go away (HTTP/1 `Connection: close`,
    ///    HTTP/2 GOAWAY) ever more often, as Envoy's gradual drain does (`drain.rs`);
    /// 3. stop accepting, let the requests in flight finish (up to the drain timeout).
    pub async fn shutdown(self) {
        self.state.rt.drain.start(self.drain_period);
        let _ = self.xds.send(Lifecycle::Leave);
        if !self.drain_period.is_zero() {
            tracing::info!(
                drain_period_ms = self.drain_period.as_millis() as u64,
                "draining: not ready, leaving the control plane, still serving with Connection: close / GOAWAY"
            );
            tokio::time::sleep(self.drain_period).await;
        }
        tracing::info!("draining: no new connections; waiting for requests in flight");
        let _ = self.drain.send(true);
        self.listeners.lock().await.close_all();
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        while self.state.rt.connections.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.rt.connections.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "drain timeout reached; closing the remaining connections"
            );
        }
        let _ = self.xds.send(Lifecycle::Stop);
        for t in self.tasks {
            t.abort();
        }
    }
}

/// TLS to the control plane when its address is `https://`: the proxy's certificate, and the
/// control plane's id (`jalur-control` in the root namespace of the proxy's trust domain).
fn xds_tls(opts: &ProxyOptions) -> Result<Option<XdsTls>, Error> {
    if !opts.xds.starts_with("https://") {
        return Ok(None);
    }
    let creds = opts
        .credentials
        .clone()
        .ok_or_else(|| Error::TlsWithoutIdentity(opts.xds.clone()))?;
    let td = creds.borrow().cert.id.trust_domain.clone();
    Ok(Some(XdsTls {
        credentials: creds,
        control_plane: jalur_identity::channel::control_plane_id(&td, &opts.xds_root_namespace),
    }))
}

async fn apply_loop(
    state: AdminState,
    listeners: Arc<Mutex<Listeners>>,
    drain: watch::Receiver<bool>,
) {
    let mut changes = state.config.changes();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        if *drain.borrow() {
            return;
        }
        let snap = state.config.snapshot();
        state.rt.apply(snap.clone());
        let mut guard = listeners.lock().await;
        let failures = guard.reconcile(&state.rt, &snap, &drain).await;
        state.listeners.store(Arc::new(guard.bound()));
        for (name, error) in failures {
            tracing::error!(listener = %name, %error, "listener not serving");
        }
    }
}

fn workload_name(opts: &ProxyOptions) -> String {
    let service = opts.service.clone().unwrap_or_else(|| "proxy".into());
    match opts.labels.get("version") {
        Some(v) => format!("{service}-{v}"),
        None => service,
    }
}

/// The node in Istio's shape, with jalur's metadata as `jalur_wire::NodeMeta` writes it (the
/// type the control plane reads it with).
pub fn node(opts: &ProxyOptions) -> Node {
    let kind = match opts.role {
        Role::Sidecar => "sidecar",
        Role::Gateway => "router",
    };
    let workload = workload_name(opts);
    let ns = &opts.namespace;
    let mut labels = opts.labels.clone();
    if let Some(svc) = &opts.service {
        labels.entry("app".into()).or_insert_with(|| svc.clone());
    }
    // With an identity the proxy can terminate and originate mesh mTLS: Istio's label tells
    // the control plane to send callers' auto mTLS here, and the account names the SPIFFE id
    // the control plane checks the certificate on 15012 against.
    let service_account = opts.credentials.as_ref().map(|creds| {
        labels.insert(TLS_MODE_LABEL.into(), "istio".into());
        creds.borrow().cert.id.service_account.clone()
    });
    let mut ports = opts.ports.clone();
    if let (true, Some(number)) = (ports.is_empty(), opts.app_port) {
        ports.push(NamedPort {
            name: "http".into(),
            number: u32::from(number),
        });
    }
    let md = NodeMeta {
        namespace: Some(ns.clone()),
        labels,
        instance_ips: vec![opts.instance_ip.clone()],
        workload_name: Some(workload.clone()),
        service_account,
        service: opts.service.clone(),
        role: Some(match opts.role {
            Role::Sidecar => MetaRole::Sidecar,
            Role::Gateway => MetaRole::Gateway,
        }),
        ports,
        app_port: opts.app_port.map(u32::from),
        inbound_port: Some(u32::from(opts.inbound_port)),
        outbound_port: Some(u32::from(opts.outbound_port)),
        health_port: Some(u32::from(opts.health_addr.port())),
        stats_port: Some(u32::from(opts.stats_addr.port())),
        listen_address: Some(opts.listen_address.clone()),
        ephemeral_ports: opts.ephemeral_ports,
    }
    .to_struct();
    Node {
        id: format!(
            "{kind}~{}~{workload}.{ns}~{ns}.svc.cluster.local",
            opts.instance_ip
        ),
        cluster: format!(
            "{}.{ns}",
            opts.service.clone().unwrap_or_else(|| "proxy".into())
        ),
        metadata: Some(md),
        user_agent_name: "jalur-proxy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Node::default()
    }
}
