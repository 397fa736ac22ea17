//! The ADS client against the real `jalur_xds::AdsServer` on 127.0.0.1, serving hand-built
//! Envoy resources through a fake `Generator`. Conversion goes through [`FAKE`], so these tests
//! say nothing about what the real conversion accepts.

use std::net::SocketAddr;
use std::sync::Mutex;

use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as XdsEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost as XdsVirtualHost,
};
use jalur_testkit::assert_eventually;
use jalur_xds::{AdsServer, ClientSnapshot, ClientStatus, Generator, Resource, TypeUrl};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::config::convert::ConvertError;
use crate::config::{
    Cluster, Discovery, Endpoint, EndpointSet, HttpListener, LbPolicy, Listener, ListenerKind,
    RouteSource, RouteTable, TcpListener, Thresholds, UpstreamProtocol, VirtualHost,
};

const DEADLINE: Duration = Duration::from_secs(10);
const NODE_ID: &str = "sidecar~127.0.0.1~web-1.default~default.svc.cluster.local";

// ---- the fake conversion -----------------------------------------------------------------

/// Rejects resources named `bad-*`; otherwise builds the smallest domain value that carries what
/// the client cares about (names, RDS and EDS references, endpoint ports).
pub(super) const FAKE: Convert = Convert {
    listener: fake_listener,
    route_table: fake_route_table,
    cluster: fake_cluster,
    endpoints: fake_endpoints,
};

fn reject_bad(kind: &'static str, name: &str, field: &str) -> Result<(), ConvertError> {
    if name.starts_with("bad-") {
        return Err(ConvertError {
            kind,
            name: name.to_string(),
            field: field.to_string(),
            message: "rejected by the fake conversion".to_string(),
        });
    }
    Ok(())
}

/// The RDS name travels in `stat_prefix` (standing in for the HTTP connection manager's
/// `rds.route_config_name`); no stat_prefix makes a TCP listener.
fn fake_listener(l: &XdsListener) -> Result<Listener, ConvertError> {
    reject_bad("Listener", &l.name, "filter_chains[0].filters[0]")?;
    let kind = if l.stat_prefix.is_empty() {
        ListenerKind::Tcp(TcpListener {
            stat_prefix: l.name.clone(),
            targets: Vec::new(),
            idle_timeout: None,
        })
    } else {
        ListenerKind::Http(HttpListener {
            stat_prefix: l.name.clone(),
            routes: RouteSource::Rds(l.stat_prefix.clone()),
            faults: false,
            rbac: Default::default(),
            jwt: None,
            normalize_path: false,
        })
    };
    Ok(Listener {
        name: l.name.clone(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        kind,
        tls: None,
        plaintext_too: true,
        network_rbac: Vec::new(),
    })
}

fn fake_route_table(rc: &RouteConfiguration) -> Result<RouteTable, ConvertError> {
    reject_bad("RouteConfiguration", &rc.name, "virtual_hosts[0]")?;
    let virtual_hosts = rc
        .virtual_hosts
        .iter()
        .map(|v| VirtualHost {
            name: v.name.clone(),
            domains: Vec::new(),
            routes: Vec::new(),
        })
        .collect();
    Ok(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
    })
}

fn fake_cluster(c: &XdsCluster) -> Result<(Cluster, Option<EndpointSet>), ConvertError> {
    reject_bad("Cluster", &c.name, "lb_policy")?;
    let (discovery, inline) = match &c.eds_cluster_config {
        Some(eds) if eds.service_name.is_empty() => (
            Discovery::Eds {
                service_name: c.name.clone(),
            },
            None,
        ),
        Some(eds) => (
            Discovery::Eds {
                service_name: eds.service_name.clone(),
            },
            None,
        ),
        None => (
            Discovery::Static,
            c.load_assignment.as_ref().map(endpoint_set),
        ),
    };
    let cluster = Cluster {
        name: c.name.clone(),
        discovery,
        lb: LbPolicy::RoundRobin,
        connect_timeout: Duration::from_secs(1),
        protocol: UpstreamProtocol::Http1,
        breakers: Thresholds::default(),
        retry_budget: None,
        health_check: None,
        outlier: None,
        max_requests_per_connection: None,
        idle_timeout: None,
        transport: Default::default(),
    };
    Ok((cluster, inline))
}

fn fake_endpoints(cla: &ClusterLoadAssignment) -> Result<EndpointSet, ConvertError> {
    reject_bad("ClusterLoadAssignment", &cla.cluster_name, "endpoints[0]")?;
    Ok(endpoint_set(cla))
}

fn endpoint_set(cla: &ClusterLoadAssignment) -> EndpointSet {
    let port = |e: &LbEndpoint| match &e.host_identifier {
        Some(HostIdentifier::Endpoint(XdsEndpoint {
            address:
                Some(Address {
                    address: Some(address::Address::SocketAddress(sa)),
                }),
            ..
        })) => match sa.port_specifier {
            Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
            _ => None,
        },
        _ => None,
    };
    let endpoints = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(port)
        .map(|port| Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight: 1,
            healthy: true,
            locality: String::new(),
            socket_match: Default::default(),
        })
        .collect();
    EndpointSet {
        cluster: cla.cluster_name.clone(),
        endpoints,
    }
}

// ---- wire resources ----------------------------------------------------------------------

pub(super) fn eds_cluster(name: &str, service: &str) -> XdsCluster {
    XdsCluster {
        name: name.into(),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: service.into(),
            eds_config: None,
        }),
        ..Default::default()
    }
}

pub(super) fn static_cluster(name: &str, ports: &[u32]) -> XdsCluster {
    XdsCluster {
        name: name.into(),
        load_assignment: Some(cla(name, ports)),
        ..Default::default()
    }
}

pub(super) fn cla(name: &str, ports: &[u32]) -> ClusterLoadAssignment {
    let lb_endpoints = ports
        .iter()
        .map(|port| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(XdsEndpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(*port)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints,
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub(super) fn http_listener(name: &str, rds: &str) -> XdsListener {
    XdsListener {
        name: name.into(),
        stat_prefix: rds.into(),
        ..Default::default()
    }
}

pub(super) fn tcp_listener(name: &str) -> XdsListener {
    XdsListener {
        name: name.into(),
        ..Default::default()
    }
}

pub(super) fn routes(name: &str, vhosts: &[&str]) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vhosts
            .iter()
            .map(|v| XdsVirtualHost {
                name: v.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// What the fake control plane serves.
#[derive(Clone, Default)]
struct Served(ClientSnapshot);

impl Served {
    fn cluster(mut self, c: XdsCluster) -> Served {
        self.0
            .insert(TypeUrl::Cluster, Resource::new(c.name.clone(), c));
        self
    }
    fn cla(mut self, c: ClusterLoadAssignment) -> Served {
        let name = c.cluster_name.clone();
        self.0
            .insert(TypeUrl::ClusterLoadAssignment, Resource::new(name, c));
        self
    }
    fn listener(mut self, l: XdsListener) -> Served {
        self.0
            .insert(TypeUrl::Listener, Resource::new(l.name.clone(), l));
        self
    }
    fn routes(mut self, r: RouteConfiguration) -> Served {
        let name = r.name.clone();
        self.0
            .insert(TypeUrl::RouteConfiguration, Resource::new(name, r));
        self
    }
    fn without(mut self, t: TypeUrl, name: &str) -> Served {
        if let Some(of_type) = self.0.resources.get_mut(&t) {
            of_type.remove(name);
        }
        self
    }
}

/// EDS cluster `a` (two endpoints) and static `s`; HTTP listener `outbound` on RDS `r1` and TCP
/// listener `tcp`; plus `r2` and CLA `orphan`, which nothing references.
fn base() -> Served {
    Served::default()
        .cluster(eds_cluster("a", "a"))
        .cluster(static_cluster("s", &[9001]))
        .cla(cla("a", &[8001, 8002]))
        .cla(cla("orphan", &[1]))
        .listener(http_listener("outbound", "r1"))
        .listener(tcp_listener("tcp"))
        .routes(routes("r1", &["v1"]))
        .routes(routes("r2", &["v2"]))
}

// ---- harness -----------------------------------------------------------------------------

#[derive(Default)]
struct FakeGenerator {
    served: Mutex<Arc<ClientSnapshot>>,
}

impl Generator for FakeGenerator {
    fn client_kind(&self, _node: &jalur_xds::Node) -> String {
        "sidecar".into()
    }
    fn generate(&self, _node: &jalur_xds::Node) -> Arc<ClientSnapshot> {
        self.served.lock().expect("served lock").clone()
    }
}

struct ControlPlane {
    addr: SocketAddr,
    server: AdsServer,
    generator: Arc<FakeGenerator>,
    changes: watch::Sender<u64>,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), jalur_xds::Error>>,
}

impl ControlPlane {
    async fn start(served: Served) -> ControlPlane {
        ControlPlane::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), served).await
    }

    /// Binds `addr`, retrying while the port is still held by a previous server.
    async fn start_at(addr: SocketAddr, served: Served) -> ControlPlane {
        let generator = Arc::new(FakeGenerator::default());
        *generator.served.lock().expect("served lock") = Arc::new(served.0);
        let (changes, rx) = watch::channel(1);
        let server = AdsServer::new(generator.clone(), rx);
        let listener = assert_eventually("bind the xDS port", DEADLINE, || async move {
            jalur_xds::server::bind(addr)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        ControlPlane {
            addr,
            server,
            generator,
            changes,
            stop: Some(stop),
            serving,
        }
    }

    fn update(&self, served: Served) {
        *self.generator.served.lock().expect("served lock") = Arc::new(served.0);
        self.changes.send_modify(|g| *g += 1);
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = tokio::time::timeout(DEADLINE, &mut self.serving)
            .await
            .expect("server stops in time")
            .expect("serve task");
        assert!(served.is_ok(), "{served:?}");
    }

    fn client(&self) -> Option<ClientStatus> {
        self.server.sync().client(NODE_ID)
    }

    /// Waits until the proxy has ACKed the last response of every type, with `eds` and `rds`
    /// subscribed as given; returns its status.
    async fn synced(&self, eds: &[&str], rds: &[&str]) -> ClientStatus {
        let (eds, rds) = (strings(eds), strings(rds));
        assert_eventually("the proxy to ACK everything", DEADLINE, || {
            let status = self.client();
            let (eds, rds) = (eds.clone(), rds.clone());
            async move {
                let status = status.ok_or("not connected")?;
                for t in ["cds", "eds", "lds", "rds"] {
                    let ts = status.types.get(t).ok_or(format!("no {t} yet"))?;
                    if ts.sent_nonce.is_empty() || ts.acked_nonce != ts.sent_nonce {
                        return Err(format!("{t} not ACKed: {ts:?}"));
                    }
                }
                let subscribed = |t: &str| status.types[t].subscribed.clone();
                if subscribed("eds") != eds || subscribed("rds") != rds {
                    return Err(format!("subscriptions: {:?}", status.types));
                }
                Ok(status)
            }
        })
        .await
    }
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn node() -> Node {
    Node {
        id: NODE_ID.into(),
        cluster: "web.default".into(),
        user_agent_name: "jalur-proxy".into(),
        ..Default::default()
    }
}

struct Proxy {
    state: Arc<ConfigState>,
    stop: watch::Sender<Lifecycle>,
    task: JoinHandle<()>,
}

impl Proxy {
    fn start(addr: SocketAddr, delta: bool) -> Proxy {
        let opts = XdsOptions {
            delta,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
            ..XdsOptions::new(addr.to_string(), node())
        };
        let state = ConfigState::new();
        let (stop, stopped) = watch::channel(Lifecycle::Serve);
        let task = tokio::spawn(run_with(opts, state.clone(), stopped, FAKE));
        Proxy { state, stop, task }
    }

    async fn ready(&self) {
        let mut ready = self.state.ready();
        tokio::time::timeout(DEADLINE, ready.wait_for(|r| *r))
            .await
            .expect("ready in time")
            .expect("state alive");
    }

    /// Waits until the live snapshot satisfies `check` (which says what is missing otherwise).
    async fn until(&self, what: &str, check: impl Fn(&Snapshot) -> Result<(), String>) {
        assert_eventually(what, DEADLINE, || {
            let result = check(&self.state.snapshot());
            async move { result }
        })
        .await;
    }

    async fn shut_down(self) {
        self.stop.send_replace(Lifecycle::Stop);
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("client stops in time")
            .expect("client task");
        assert!(!self.state.status().connected);
    }
}

fn names<T>(map: &BTreeMap<String, T>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

fn ports(snapshot: &Snapshot, key: &str) -> Vec<u16> {
    snapshot
        .endpoints
        .get(key)
        .map(|set| set.endpoints.iter().map(|e| e.addr.port()).collect())
        .unwrap_or_default()
}

fn has_cluster(name: &'static str) -> impl Fn(&Snapshot) -> Result<(), String> {
    move |s: &Snapshot| match s.clusters.contains_key(name) {
        true => Ok(()),
        false => Err(format!("no cluster {name}: {:?}", names(&s.clusters))),
    }
}

/// The proxy holds exactly what `base()` calls for.
fn assert_base(s: &Snapshot) {
    assert_eq!(names(&s.listeners), ["outbound", "tcp"]);
    assert_eq!(names(&s.routes), ["r1"]);
    assert_eq!(s.routes["r1"].virtual_hosts[0].name, "v1");
    assert_eq!(names(&s.clusters), ["a", "s"]);
    assert_eq!(names(&s.endpoints), ["a", "s"]);
    assert_eq!(ports(s, "a"), [8001, 8002]);
    assert_eq!(ports(s, "s"), [9001]);
}

// ---- initial sync --------------------------------------------------------------------------

async fn initial_sync(delta: bool) {
    let cp = ControlPlane::start(base()).await;
    let proxy = Proxy::start(cp.addr, delta);
    proxy.ready().await;
    assert_base(&proxy.state.snapshot());

    let server_view = cp.synced(&["a"], &["r1"]).await;
    assert_eq!(
        server_view.mode.as_str(),
        if delta { "delta" } else { "sotw" }
    );
    assert!(server_view.in_sync);
    assert!(server_view.types["cds"].wildcard && server_view.types["lds"].wildcard);

    let status = proxy.state.status();
    assert!(status.connected && status.ready, "{status:?}");
    assert_eq!(status.mode, if delta { Mode::Delta } else { Mode::Sotw });
    assert_eq!(status.streams, 1);
    for (t, count) in [("cds", 2), ("eds", 2), ("lds", 2), ("rds", 1)] {
        let ts = &status.types[t];
        let server = &server_view.types[t];
        assert_eq!(ts.resources, count, "{t}: {ts:?}");
        assert!(ts.accepted && ts.last_nack.is_none(), "{t}: {ts:?}");
        assert_eq!(ts.nonce, server.sent_nonce, "{t}");
        assert_eq!(ts.version, server.sent_version, "{t}");
    }
    assert_eq!(status.types["eds"].subscribed, ["a"]);
    assert_eq!(status.types["rds"].subscribed, ["r1"]);
    proxy.shut_down().await;
}

#[tokio::test]
async fn delta_initial_sync() {
    initial_sync(true).await;
}

#[tokio::test]
async fn sotw_initial_sync() {
    initial_sync(false).await;
}

// ---- NACK ----------------------------------------------------------------------------------

async fn bad_resource_is_nacked(delta: bool) {
    let cp = ControlPlane::start(base()).await;
    let proxy = Proxy::start(cp.addr, delta);
    proxy.ready().await;
    cp.synced(&["a"], &["r1"]).await;
    let before = proxy.state.snapshot();

    // A good change and a bad resource in one response: neither may land.
    cp.update(
        base()
            .cluster(static_cluster("s", &[9002]))
            .cluster(eds_cluster("bad-c", "c")),
    );
    let nack = assert_eventually("the server to record a NACK", DEADLINE, || {
        let nack = cp.client().and_then(|c| c.types["cds"].last_nack.clone());
        async move { nack.ok_or_else(|| "no NACK yet".to_string()) }
    })
    .await;
    let expected = "Cluster bad-c: lb_policy: rejected by the fake conversion";
    assert_eq!(nack.detail, expected);
    let server_view = cp.client().expect("connected");
    assert!(!server_view.types["cds"].in_sync && !server_view.in_sync);

    let status = proxy.state.status();
    let cds = &status.types["cds"];
    assert!(!cds.accepted, "{cds:?}");
    let proxy_nack = cds.last_nack.as_ref().expect("NACK in the proxy's status");
    assert_eq!(proxy_nack.detail, expected);
    assert_eq!(proxy_nack.nonce, nack.nonce);
    let after = proxy.state.snapshot();
    assert!(Arc::ptr_eq(&before, &after), "the snapshot changed");
    assert_base(&after);

    // The control plane fixes its config. (A delta server that counts NACKed versions as held
    // would not re-send `s` unless it changes again, so it does.)
    cp.update(base().cluster(static_cluster("s", &[9003])));
    proxy
        .until("the fixed config", |s| match ports(s, "s").as_slice() {
            [9003] => Ok(()),
            other => Err(format!("s has {other:?}")),
        })
        .await;
    let server_view = cp.synced(&["a"], &["r1"]).await;
    assert!(server_view.in_sync);
    assert!(proxy.state.status().types["cds"].accepted);
    assert!(!proxy.state.snapshot().clusters.contains_key("bad-c"));
    proxy.shut_down().await;
}

#[tokio::test]
async fn delta_bad_resource_is_nacked_and_last_good_config_kept() {
    bad_resource_is_nacked(true).await;
}

#[tokio::test]
async fn sotw_bad_resource_is_nacked_and_last_good_config_kept() {
    bad_resource_is_nacked(false).await;
}

// ---- removal and subscriptions -----------------------------------------------------------

#[tokio::test]
async fn delta_removed_resources_are_dropped_with_what_only_they_used() {
    let cp = ControlPlane::start(base()).await;
    let proxy = Proxy::start(cp.addr, true);
    proxy.ready().await;
    cp.synced(&["a"], &["r1"]).await;

    cp.update(
        base()
            .without(TypeUrl::Listener, "outbound")
            .without(TypeUrl::Cluster, "s"),
    );
    proxy
        .until("outbound and s removed", |s| {
            match (
                names(&s.listeners).as_slice(),
                names(&s.clusters).as_slice(),
            ) {
                (["tcp"], ["a"]) => Ok(()),
                other => Err(format!("listeners, clusters: {other:?}")),
            }
        })
        .await;
    let s = proxy.state.snapshot();
    assert!(s.routes.is_empty(), "r1 outlived its listener");
    assert_eq!(
        names(&s.endpoints),
        ["a"],
        "s's inline endpoints outlived it"
    );
    // No listener references r1 any more: the proxy unsubscribed.
    cp.synced(&["a"], &[]).await;
    assert!(proxy.state.status().types["rds"].subscribed.is_empty());
    proxy.shut_down().await;
}

async fn eds_subscription_follows_clusters(delta: bool) {
    let cp = ControlPlane::start(base()).await;
    let proxy = Proxy::start(cp.addr, delta);
    proxy.ready().await;
    cp.synced(&["a"], &["r1"]).await;

    cp.update(
        base()
            .cluster(eds_cluster("c", "svc-c"))
            .cla(cla("svc-c", &[7001])),
    );
    proxy
        .until("svc-c's endpoints", |s| {
            match ports(s, "svc-c").as_slice() {
                [7001] => Ok(()),
                other => Err(format!("svc-c has {other:?}")),
            }
        })
        .await;
    cp.synced(&["a", "svc-c"], &["r1"]).await;

    cp.update(base());
    proxy
        .until("c and its endpoints gone", |s| {
            match names(&s.endpoints).as_slice() {
                ["a", "s"] => Ok(()),
                other => Err(format!("endpoints {other:?}")),
            }
        })
        .await;
    cp.synced(&["a"], &["r1"]).await;
    assert_base(&proxy.state.snapshot());
    proxy.shut_down().await;
}

#[tokio::test]
async fn delta_eds_subscription_follows_clusters() {
    eds_subscription_follows_clusters(true).await;
}

#[tokio::test]
async fn sotw_eds_subscription_follows_clusters() {
    eds_subscription_follows_clusters(false).await;
}

// ---- outages -------------------------------------------------------------------------------

async fn survives_a_control_plane_restart(delta: bool) {
    let mut cp = ControlPlane::start(base()).await;
    let addr = cp.addr;
    let proxy = Proxy::start(addr, delta);
    proxy.ready().await;
    cp.synced(&["a"], &["r1"]).await;
    let before = proxy.state.snapshot();

    cp.stop().await;
    assert_eventually("the proxy to notice", DEADLINE, || {
        let status = proxy.state.status();
        async move {
            match (status.connected, &status.last_error) {
                (false, Some(_)) => Ok(()),
                _ => Err(format!("{status:?}")),
            }
        }
    })
    .await;
    let status = proxy.state.status();
    assert!(status.ready, "ready must stay true through an outage");
    assert!(
        Arc::ptr_eq(&before, &proxy.state.snapshot()),
        "snapshot changed while offline"
    );

    // Back on the same address, with one more cluster.
    let cp = ControlPlane::start_at(addr, base().cluster(static_cluster("d", &[9100]))).await;
    proxy
        .until("the restarted server's config", has_cluster("d"))
        .await;
    cp.synced(&["a"], &["r1"]).await;
    let status = proxy.state.status();
    assert!(status.connected, "{status:?}");
    assert!(status.streams >= 2, "{status:?}");
    let s = proxy.state.snapshot();
    assert_eq!(names(&s.clusters), ["a", "d", "s"]);
    assert_eq!(ports(&s, "d"), [9100]);
    assert_eq!(ports(&s, "a"), [8001, 8002]);
    proxy.shut_down().await;
}

#[tokio::test]
async fn delta_survives_a_control_plane_restart() {
    survives_a_control_plane_restart(true).await;
}

#[tokio::test]
async fn sotw_survives_a_control_plane_restart() {
    survives_a_control_plane_restart(false).await;
}

#[tokio::test]
async fn unreachable_control_plane_is_reported_and_retried() {
    // A port nobody listens on: bind one, read it, let it go.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let proxy = Proxy::start(addr, true);
    assert_eventually("a connection error in the status", DEADLINE, || {
        let status = proxy.state.status();
        async move {
            match &status.last_error {
                Some(e)
                    if e == &format!(
                        "cannot reach the control plane at {addr}: connection refused"
                    ) =>
                {
                    Ok(())
                }
                _ => Err(format!("{status:?}")),
            }
        }
    })
    .await;
    let status = proxy.state.status();
    assert!(!status.connected && !status.ready);
    assert_eq!(status.addr, addr.to_string());
    // It keeps trying: a server appearing there is found.
    let cp = ControlPlane::start_at(addr, base()).await;
    proxy.ready().await;
    cp.synced(&["a"], &["r1"]).await;
    proxy.shut_down().await;
}
