//! The proxy at run time: the current config compiled for the request path (route tables
//! indexed, clusters with their balancers, breakers, outlier detectors and connection pools),
//! rebuilt on every config change while keeping per-host state (active requests, ejections) and
//! warm connections for everything that did not change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, Response};
use jalur_identity::CredentialsWatch;
use jalur_wire::ClusterName;
use tokio::sync::watch;

use crate::config::{Cluster, Endpoint, HashPolicy, Listener, ListenerKind, RouteSource, Snapshot};
use crate::dns;
use crate::drain::Drain;
use crate::error::{Flag, ProxyError};
use crate::host::{Host, HostSet};
use crate::lb::{Balancer, PickContext};
pub use crate::metrics::Identity;
use crate::metrics::{ClusterLabels, Metrics, Outcome, TcpLabels};
use crate::resilience::{self, Breakers, Outlier, Permit};
use crate::routing::CompiledTable;
use crate::upstream::{Body, Upstream};

/// How long a request that reached a listener before the listener's route table waits for it
/// (a proxy just started: its listeners bound, RDS still on the way). Callers are not sent to a
/// proxy before it holds a complete config, so this covers stragglers, not traffic.
pub const ROUTES_WAIT: Duration = Duration::from_secs(5);

pub struct Runtime {
    compiled: ArcSwap<Compiled>,
    /// Ticks after every [`Runtime::apply`], for requests waiting on their routes.
    applied: watch::Sender<u64>,
    /// SIGTERM arrived: the listeners keep accepting for the drain period (callers still route
    /// here until the endpoint is gone from their EDS) while answers tell callers to go away.
    pub drain: Drain,
    pub metrics: Metrics,
    pub identity: Identity,
    /// Downstream connections open now (drain waits for this to reach zero).
    pub connections: AtomicUsize,
    /// Log one structured line per request (target `jalur::access`; JSON with `--log-format json`).
    pub access_log: bool,
    /// A downstream connection must deliver each request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// The proxy's mesh identity (certificate + trust bundle), renewed in place by the
    /// `CertRotator` behind it: what xDS's SDS names `default` and `ROOTCA` resolve to for
    /// upstream and downstream mTLS. `None` without an identity (plaintext xDS).
    pub credentials: Option<CredentialsWatch>,
}

/// Where a listener's routes come from, resolved for lookup.
#[derive(Debug, Clone)]
pub enum ListenerRoutes {
    Rds(String),
    Inline(Arc<CompiledTable>),
    None,
}

/// What a listener's connections need on every request; swapped when the listener's config
/// changes without its address changing.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: String,
    pub routes: ListenerRoutes,
    pub faults: bool,
    /// `inbound` listeners report as the destination, everything else as the source.
    pub inbound: bool,
    /// HTTP RBAC filters (with their counters); `None` when the chain has none.
    pub rbac: Option<Arc<crate::rbac::Chain>>,
    pub rbac_after_fault: bool,
    pub remote_address: crate::rbac::RemoteAddress,
    /// Network RBAC filters, decided when a connection is accepted.
    pub network_rbac: Option<Arc<crate::rbac::Chain>>,
    /// jwt_authn, checked just before the HTTP RBAC filters.
    pub jwt: Option<Arc<crate::jwt::JwtAuthn>>,
    /// Remove dot segments from the path before RBAC and routing (the HCM's normalize_path).
    pub normalize_path: bool,
}

impl ListenerCtx {
    pub fn new(rt: &Arc<Runtime>, l: &Listener) -> ListenerCtx {
        let (routes, faults) = match &l.kind {
            ListenerKind::Http(h) => (
                match &h.routes {
                    RouteSource::Rds(name) => ListenerRoutes::Rds(name.clone()),
                    RouteSource::Inline(t) => {
                        ListenerRoutes::Inline(Arc::new(CompiledTable::new(t.clone())))
                    }
                },
                h.faults,
            ),
            ListenerKind::Tcp(_) | ListenerKind::Sni(_) => (ListenerRoutes::None, false),
        };
        let envoy = &rt.metrics.envoy;
        let (rbac, rbac_after_fault, remote_address) = match &l.kind {
            ListenerKind::Http(h) => (
                crate::rbac::Chain::compile(&h.rbac.filters, envoy),
                h.rbac.after_fault,
                h.rbac.remote,
            ),
            ListenerKind::Tcp(_) | ListenerKind::Sni(_) => (None, false, Default::default()),
        };
        let (jwt, normalize_path) = match &l.kind {
            ListenerKind::Http(h) => (h.jwt.clone(), h.normalize_path),
            ListenerKind::Tcp(_) | ListenerKind::Sni(_) => (None, false),
        };
        ListenerCtx {
            name: l.name.clone(),
            routes,
            faults,
            inbound: l.name.starts_with("inbound"),
            rbac,
            rbac_after_fault,
            remote_address,
            network_rbac: crate::rbac::Chain::compile(&l.network_rbac, envoy),
            jwt,
            normalize_path,
        }
    }
}

#[derive(Default)]
pub struct Compiled {
    pub snapshot: Arc<Snapshot>,
    tables: HashMap<String, Arc<CompiledTable>>,
    clusters: HashMap<String, Arc<ClusterRuntime>>,
}

impl Compiled {
    pub fn table(&self, routes: &ListenerRoutes) -> Option<Arc<CompiledTable>> {
        match routes {
            ListenerRoutes::Rds(name) => self.tables.get(name).cloned(),
            ListenerRoutes::Inline(t) => Some(t.clone()),
            ListenerRoutes::None => None,
        }
    }

    pub fn cluster(&self, name: &str) -> Option<Arc<ClusterRuntime>> {
        self.clusters.get(name).cloned()
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Arc<ClusterRuntime>> {
        self.clusters.values()
    }
}

impl Runtime {
    pub fn new(
        identity: Identity,
        access_log: bool,
        header_read_timeout: Duration,
        credentials: Option<CredentialsWatch>,
    ) -> Arc<Runtime> {
        Arc::new(Runtime {
            compiled: ArcSwap::from_pointee(Compiled::default()),
            applied: watch::channel(0).0,
            drain: Drain::default(),
            metrics: Metrics::new(),
            identity,
            connections: AtomicUsize::new(0),
            access_log,
            header_read_timeout,
            credentials,
        })
    }

    pub fn compiled(&self) -> Arc<Compiled> {
        self.compiled.load_full()
    }

    /// The compiled config, once it holds the table `routes` names: at once when it does; else
    /// the request is held until a config brings it, up to [`ROUTES_WAIT`] (after which the
    /// config as it stands answers, i.e. 404 NR). A request that arrives before its routes is
    /// held until the config lands, not answered with an error.
    pub async fn compiled_with_routes(&self, routes: &ListenerRoutes) -> Arc<Compiled> {
        let compiled = self.compiled();
        if compiled.table(routes).is_some() || matches!(routes, ListenerRoutes::None) {
            return compiled;
        }
        // Subscribed before looking again, so an apply in between is not missed.
        let mut applied = self.applied.subscribe();
        let wait = async {
            loop {
                let compiled = self.compiled();
                if compiled.table(routes).is_some() || applied.changed().await.is_err() {
                    return compiled;
                }
            }
        };
        tracing::debug!(?routes, "request held until its route table arrives");
        match tokio::time::timeout(ROUTES_WAIT, wait).await {
            Ok(compiled) => compiled,
            Err(_) => self.compiled(),
        }
    }

    pub fn draining(&self) -> bool {
        self.drain.draining()
    }

    /// Compiles a new snapshot, reusing the runtime of every cluster whose config is unchanged.
    pub fn apply(&self, snap: Arc<Snapshot>) {
        let prev = self.compiled.load_full();
        let tables = snap
            .routes
            .iter()
            .map(|(name, t)| match prev.tables.get(name) {
                Some(old) if Arc::ptr_eq(&old.table, t) || *old.table == **t => {
                    (name.clone(), old.clone())
                }
                _ => (name.clone(), Arc::new(CompiledTable::new(t.clone()))),
            })
            .collect();
        let mut clusters = HashMap::new();
        let creds = self.credentials.as_ref();
        for (name, cfg) in &snap.clusters {
            let endpoints = endpoints_of(&snap, cfg);
            let rt = match prev.clusters.get(name) {
                Some(old) if *old.config == **cfg => {
                    // A DNS cluster's endpoints come from its own resolver, not from the snapshot.
                    if !matches!(cfg.discovery, crate::config::Discovery::Dns { .. }) {
                        old.update_endpoints(endpoints);
                    }
                    old.clone()
                }
                Some(old) => ClusterRuntime::new(cfg.clone(), endpoints, Some(old), creds),
                None => ClusterRuntime::new(cfg.clone(), endpoints, None, creds),
            };
            clusters.insert(name.clone(), rt);
        }
        self.compiled.store(Arc::new(Compiled {
            snapshot: snap,
            tables,
            clusters,
        }));
        self.applied.send_modify(|n| *n += 1);
    }

    /// Counts one finished request in Istio's metrics.
    pub fn record(
        &self,
        ln: &ListenerCtx,
        o: &Outcome,
        protocol: &'static str,
        elapsed: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        self.metrics.record_request(
            &self.identity,
            ln.inbound,
            o,
            protocol,
            elapsed,
            (request_bytes, response_bytes),
        );
    }

    /// The `istio_tcp_*` labels of one connection: `inbound` when this proxy is its
    /// destination, `security` the TLS the reporter saw (downstream when inbound, else the
    /// upstream connection's).
    pub fn tcp_labels(
        &self,
        cluster: &ClusterRuntime,
        flag: Option<Flag>,
        inbound: bool,
        security: Option<&crate::tls::ConnSecurity>,
    ) -> TcpLabels {
        TcpLabels {
            reporter: Arc::from(if inbound { "destination" } else { "source" }),
            source_workload: if inbound {
                self.metrics.unknown.clone()
            } else {
                self.identity.workload.clone()
            },
            destination_service: if inbound {
                self.identity.canonical_service.clone()
            } else {
                cluster.labels.service.clone()
            },
            response_flags: flag.map(Flag::as_str).unwrap_or("-"),
            security: crate::metrics::SecurityLabels::new(inbound, security, &self.metrics.unknown),
        }
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::SeqCst);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn endpoints_of(snap: &Snapshot, cfg: &Cluster) -> Vec<Endpoint> {
    let key = match &cfg.discovery {
        crate::config::Discovery::Eds { service_name } => service_name.as_str(),
        _ => cfg.name.as_str(),
    };
    snap.endpoints
        .get(key)
        .map(|e| e.endpoints.clone())
        .unwrap_or_default()
}

/// One cluster at run time.
pub struct ClusterRuntime {
    pub config: Arc<Cluster>,
    balancer: ArcSwap<Balancer>,
    pub breakers: Breakers,
    outlier: Option<Arc<Outlier>>,
    pub upstream: Upstream,
    /// Its `destination_*` labels, shared with every request's [`Outcome`].
    pub labels: Arc<ClusterLabels>,
    /// Background work tied to the cluster's life: outlier detection intervals, DNS refresh.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for ClusterRuntime {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Resolves a DNS cluster's hostnames now and again as `crate::dns` says, until the cluster is
/// gone. A failed round keeps the last addresses.
async fn resolve_loop(
    weak: Weak<ClusterRuntime>,
    hosts: Vec<(String, u16)>,
    refresh: Duration,
    respect_ttl: bool,
) {
    let resolver = dns::resolver();
    loop {
        let round = dns::resolve(resolver.as_ref(), &hosts).await;
        let wait = dns::next_refresh(refresh, respect_ttl, round.ttl);
        let Some(cluster) = weak.upgrade() else {
            return;
        };
        if let Some(endpoints) = round.endpoints() {
            cluster.update_endpoints(endpoints);
        }
        drop(cluster);
        tokio::time::sleep(wait).await;
    }
}

impl ClusterRuntime {
    fn new(
        config: Arc<Cluster>,
        endpoints: Vec<Endpoint>,
        previous: Option<&Arc<ClusterRuntime>>,
        creds: Option<&CredentialsWatch>,
    ) -> Arc<ClusterRuntime> {
        // Keep host state (active requests, ejections) across a policy change.
        let hosts = match previous {
            Some(p) => p.balancer.load().hosts().update(&endpoints),
            None => HostSet::new(&endpoints),
        };
        let (service, subset) = names(&config.name);
        let outlier = config.outlier.clone().map(|o| Arc::new(Outlier::new(o)));
        Arc::new_cyclic(|weak: &Weak<ClusterRuntime>| {
            let mut tasks = Vec::new();
            if let (Some(hc), Ok(handle)) = (
                config.health_check.clone(),
                tokio::runtime::Handle::try_current(),
            ) {
                tasks.push(
                    handle
                        .spawn(crate::health::check_loop(weak.clone(), hc))
                        .abort_handle(),
                );
            }
            if let (
                crate::config::Discovery::Dns {
                    hosts,
                    refresh,
                    respect_ttl,
                },
                Ok(handle),
            ) = (&config.discovery, tokio::runtime::Handle::try_current())
            {
                let resolve = resolve_loop(weak.clone(), hosts.clone(), *refresh, *respect_ttl);
                tasks.push(handle.spawn(resolve).abort_handle());
            }
            let outlier_task = outlier.as_ref().and_then(|o| {
                let o = o.clone();
                let weak = weak.clone();
                let handle = tokio::runtime::Handle::try_current().ok()?;
                Some(
                    handle
                        .spawn(async move {
                            o.run(move || weak.upgrade().map(|c| c.balancer.load_full()))
                                .await
                        })
                        .abort_handle(),
                )
            });
            ClusterRuntime {
                balancer: ArcSwap::from_pointee(Balancer::new(config.lb, hosts)),
                breakers: {
                    let b = Breakers::new(config.breakers);
                    b.set_retry_budget(config.retry_budget.map(|r| resilience::RetryBudget {
                        budget_percent: r.percent,
                        min_retry_concurrency: r.min_concurrency,
                    }));
                    b
                },
                outlier,
                upstream: Upstream::new(&config, creds),
                labels: Arc::new(ClusterLabels {
                    name: Arc::from(config.name.as_str()),
                    canonical: Arc::from(service.split('.').next().unwrap_or("unknown")),
                    service,
                    subset,
                }),
                tasks: tasks.into_iter().chain(outlier_task).collect(),
                config,
            }
        })
    }

    fn update_endpoints(&self, endpoints: Vec<Endpoint>) {
        let current = self.balancer.load();
        let same = current.hosts().len() == endpoints.len()
            && endpoints.iter().all(|e| {
                current.hosts().get(e.addr).is_some_and(|h| {
                    h.weight == e.weight.max(1)
                        && h.healthy == e.healthy
                        && h.socket_match == e.socket_match
                })
            });
        if !same {
            let hosts = current.hosts().update(&endpoints);
            self.balancer
                .store(Arc::new(Balancer::new(self.config.lb, hosts)));
        }
    }

    pub fn hosts(&self) -> HostSet {
        self.balancer.load().hosts().clone()
    }

    pub fn outlier(&self) -> Option<&Arc<Outlier>> {
        self.outlier.as_ref()
    }

    /// A host for the next attempt, preferring ones not `tried` yet.
    pub fn pick(&self, hash: Option<u64>, tried: &[SocketAddr]) -> Option<Arc<Host>> {
        let balancer = self.balancer.load();
        let avoid = |h: &Host| tried.contains(&h.addr);
        balancer.pick(&PickContext { hash }, &avoid)
    }

    pub fn request_hash(
        &self,
        policies: &[HashPolicy],
        headers: &HeaderMap,
        path_and_query: &str,
        peer: SocketAddr,
    ) -> Option<u64> {
        if policies.is_empty() {
            return None;
        }
        crate::lb::request_hash(policies, headers, path_and_query, Some(peer.ip()))
    }

    pub fn report(&self, host: &Host, result: &Result<Response<Body>, ProxyError>) {
        let Some(outlier) = &self.outlier else { return };
        let outcome = match result {
            Ok(r) => resilience::Outcome::status(r.status().as_u16()),
            Err(e) if e.flag == Flag::UpstreamConnectFailure => {
                resilience::Outcome::connect_failure()
            }
            Err(e) if e.flag == Flag::UpstreamTimeout => resilience::Outcome::status(504),
            Err(_) => resilience::Outcome::status(503),
        };
        let hosts = self.balancer.load();
        if let Some(ej) = outlier.report(hosts.hosts(), host, outcome, tokio::time::Instant::now())
        {
            tracing::info!(cluster = %self.config.name, host = %host.addr, kind = ?ej.kind, duration = ?ej.duration, "host ejected");
        }
    }

    pub fn report_tcp(&self, host: &Host, connected: bool) {
        let Some(outlier) = &self.outlier else { return };
        let outcome = if connected {
            resilience::Outcome::status(200)
        } else {
            resilience::Outcome::connect_failure()
        };
        let hosts = self.balancer.load();
        outlier.report(hosts.hosts(), host, outcome, tokio::time::Instant::now());
    }

    pub fn breakers_try_request(&self) -> Result<Permit, ProxyError> {
        self.breakers.try_request().map_err(|o| {
            ProxyError::new(
                Flag::UpstreamOverflow,
                format!("circuit breaker open for {}: {o}", self.config.name),
            )
        })
    }

    pub fn breakers_try_retry(&self) -> Result<Permit, ProxyError> {
        self.breakers.try_retry().map_err(|o| {
            ProxyError::new(
                Flag::UpstreamOverflow,
                format!("retry budget exhausted for {}: {o}", self.config.name),
            )
        })
    }
}

/// (`destination_service`, subset) from Istio's cluster name `outbound|9080|v1|reviews.ns.svc...`;
/// any other name is its own service, subset unknown.
fn names(cluster: &str) -> (Arc<str>, Arc<str>) {
    match cluster.parse::<ClusterName>() {
        Ok(ClusterName::Outbound { subset, host, .. }) => (
            Arc::from(host),
            Arc::from(subset.as_deref().unwrap_or("unknown")),
        ),
        // Istio's inbound names carry no host: as before the names were typed, no service.
        Ok(ClusterName::Inbound { .. }) => (Arc::from(""), Arc::from("unknown")),
        Err(_) => (Arc::from(cluster), Arc::from("unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteTable;

    fn runtime() -> Arc<Runtime> {
        let id: Arc<str> = Arc::from("test");
        Runtime::new(
            Identity {
                workload: id.clone(),
                canonical_service: id.clone(),
                version: id,
            },
            false,
            Duration::from_secs(10),
            None,
        )
    }

    fn with_table(name: &str) -> Arc<Snapshot> {
        let mut snap = Snapshot::default();
        snap.routes.insert(
            name.into(),
            Arc::new(RouteTable {
                name: name.into(),
                virtual_hosts: Vec::new(),
            }),
        );
        Arc::new(snap)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_before_its_routes_is_held_until_they_arrive() {
        let rt = runtime();
        let routes = ListenerRoutes::Rds("inbound".into());
        let waiting = tokio::spawn({
            let (rt, routes) = (rt.clone(), routes.clone());
            async move {
                rt.compiled_with_routes(&routes)
                    .await
                    .table(&routes)
                    .is_some()
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another table first: still held.
        rt.apply(with_table("outbound"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "held while its table is missing");
        rt.apply(with_table("inbound"));
        assert!(
            waiting.await.expect("join"),
            "served from the table that arrived"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_gives_up_after_the_bound() {
        let rt = runtime();
        let routes = ListenerRoutes::Rds("inbound".into());
        let started = tokio::time::Instant::now();
        let compiled = rt.compiled_with_routes(&routes).await;
        assert!(compiled.table(&routes).is_none());
        assert_eq!(started.elapsed(), ROUTES_WAIT);
    }
}
