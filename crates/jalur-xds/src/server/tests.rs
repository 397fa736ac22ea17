//! End-to-end tests: the real server on 127.0.0.1:0, driven by tonic ADS clients.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prometheus_client::registry::Registry;
use prost::Message;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;

use super::*;
use crate::resource::{Resource, TypeUrl};
use crate::status::{ClientStatus, TypeStatus};

const DEADLINE: Duration = Duration::from_secs(10);

mod lifecycle;

// ---- fixtures ----------------------------------------------------------------------------

#[derive(Default)]
struct FakeGenerator {
    snapshot: Mutex<Arc<ClientSnapshot>>,
    events: Mutex<Vec<(&'static str, u64, String)>>,
}

impl Generator for FakeGenerator {
    fn client_kind(&self, node: &Node) -> String {
        match node.user_agent_name.as_str() {
            "envoy" => "sidecar".into(),
            _ => "proxyless-grpc".into(),
        }
    }
    fn generate(&self, _node: &Node) -> Arc<ClientSnapshot> {
        self.snapshot.lock().expect("snapshot lock").clone()
    }
    fn admit(&self, node: &Node, _extensions: &http::Extensions) -> Result<(), Status> {
        match node.id.strip_prefix("impostor-") {
            Some(who) => Err(Status::permission_denied(format!("{who} may not register"))),
            None => Ok(()),
        }
    }
    fn connected(&self, conn_id: u64, node: &Node) {
        self.events
            .lock()
            .expect("events lock")
            .push(("connected", conn_id, node.id.clone()));
    }
    fn disconnected(&self, conn_id: u64, node: &Node) {
        self.events
            .lock()
            .expect("events lock")
            .push(("disconnected", conn_id, node.id.clone()));
    }
    fn ready(&self, conn_id: u64, node: &Node) {
        self.events
            .lock()
            .expect("events lock")
            .push(("ready", conn_id, node.id.clone()));
    }
    fn left(&self, conn_id: u64, node: &Node) {
        self.events
            .lock()
            .expect("events lock")
            .push(("left", conn_id, node.id.clone()));
    }
}

impl FakeGenerator {
    fn events(&self) -> Vec<(&'static str, u64, String)> {
        self.events.lock().expect("events lock").clone()
    }
}

fn cluster(name: &str) -> (TypeUrl, Resource) {
    (
        TypeUrl::Cluster,
        Resource::new(
            name,
            Cluster {
                name: name.into(),
                ..Default::default()
            },
        ),
    )
}

/// Cluster `name` whose content, and so version, depends on `tag` ("bad" stands in for a cluster
/// the client rejects).
fn cluster_tagged(name: &str, tag: &str) -> (TypeUrl, Resource) {
    (
        TypeUrl::Cluster,
        Resource::new(
            name,
            Cluster {
                name: name.into(),
                alt_stat_name: tag.into(),
                ..Default::default()
            },
        ),
    )
}

/// Endpoints of `name`; `priority` stands in for "the endpoint set changed".
fn endpoints(name: &str, priority: u32) -> (TypeUrl, Resource) {
    let cla = ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            priority,
            ..Default::default()
        }],
        ..Default::default()
    };
    (TypeUrl::ClusterLoadAssignment, Resource::new(name, cla))
}

fn listener(name: &str) -> (TypeUrl, Resource) {
    (
        TypeUrl::Listener,
        Resource::new(
            name,
            Listener {
                name: name.into(),
                ..Default::default()
            },
        ),
    )
}

fn route(name: &str) -> (TypeUrl, Resource) {
    let rc = RouteConfiguration {
        name: name.into(),
        ..Default::default()
    };
    (TypeUrl::RouteConfiguration, Resource::new(name, rc))
}

fn snapshot(items: impl IntoIterator<Item = (TypeUrl, Resource)>) -> ClientSnapshot {
    let mut snap = ClientSnapshot::default();
    for (t, r) in items {
        snap.insert(t, r);
    }
    snap
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "demo.default".into(),
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion("1.40.0".into())),
        ..Default::default()
    }
}

/// Name of a packed resource, whatever its type.
fn name_of(any: &Any) -> String {
    let bytes = any.value.as_slice();
    match TypeUrl::parse(&any.type_url) {
        Some(TypeUrl::Cluster) => Cluster::decode(bytes).map(|c| c.name),
        Some(TypeUrl::ClusterLoadAssignment) => {
            ClusterLoadAssignment::decode(bytes).map(|c| c.cluster_name)
        }
        Some(TypeUrl::Listener) => Listener::decode(bytes).map(|l| l.name),
        Some(TypeUrl::RouteConfiguration) => RouteConfiguration::decode(bytes).map(|r| r.name),
        _ => panic!("unexpected type {}", any.type_url),
    }
    .expect("decodable resource")
}

fn names(resources: &[Any]) -> Vec<String> {
    resources.iter().map(name_of).collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---- harness -----------------------------------------------------------------------------

struct Harness {
    addr: SocketAddr,
    server: AdsServer,
    generator: Arc<FakeGenerator>,
    changes: watch::Sender<u64>,
    registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), Error>>,
}

impl Harness {
    async fn start(snap: ClientSnapshot) -> Harness {
        let generator = Arc::new(FakeGenerator::default());
        *generator.snapshot.lock().expect("snapshot lock") = Arc::new(snap);
        let (changes, rx) = watch::channel(1);
        let server = AdsServer::new(generator.clone(), rx);
        let mut registry = Registry::default();
        server.register_metrics(&mut registry);
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = tokio::spawn(server.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Harness {
            addr,
            server,
            generator,
            changes,
            registry,
            stop: Some(stop),
            serving,
        }
    }

    /// Publishes a new snapshot and bumps the generation, as the control plane does.
    fn update(&self, snap: ClientSnapshot) {
        *self.generator.snapshot.lock().expect("snapshot lock") = Arc::new(snap);
        self.changes.send_modify(|g| *g += 1);
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        let url = format!("http://{}", self.addr);
        within("connect", AggregatedDiscoveryServiceClient::connect(url))
            .await
            .expect("connect")
    }

    async fn sotw(&self, node_id: &str) -> SotwClient {
        let (tx, rx) = mpsc::channel(16);
        let mut client = self.client().await;
        let response = within(
            "open stream",
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("stream");
        SotwClient {
            tx,
            rx: response.into_inner(),
            node: Some(node(node_id)),
        }
    }

    async fn delta(&self, node_id: &str) -> DeltaClient {
        let (tx, rx) = mpsc::channel(16);
        let mut client = self.client().await;
        let response = within(
            "open stream",
            client.delta_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("stream");
        DeltaClient {
            tx,
            rx: response.into_inner(),
            node: Some(node(node_id)),
        }
    }

    fn status(&self, node_id: &str) -> Option<ClientStatus> {
        self.server.sync().client(node_id)
    }

    fn type_status(&self, node_id: &str, t: TypeUrl) -> TypeStatus {
        self.status(node_id)
            .and_then(|s| s.types.get(t.short()).cloned())
            .unwrap_or_default()
    }

    async fn wait_acked(&self, node_id: &str, t: TypeUrl, nonce: &str) {
        let what = format!("{node_id} to ACK {} nonce {nonce}", t.short());
        eventually(&what, || self.type_status(node_id, t).acked_nonce == nonce).await;
    }

    fn metrics(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("encode");
        text
    }
}

struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    /// Sent with the first request only, as gRPC clients do.
    node: Option<Node>,
}

impl SotwClient {
    async fn send(&mut self, mut req: DiscoveryRequest) {
        req.node = self.node.take();
        self.tx.send(req).await.expect("request stream open");
    }

    async fn request(&mut self, t: TypeUrl, names: &[&str]) {
        let resource_names = names.iter().map(|s| s.to_string()).collect();
        let req = DiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names,
            ..Default::default()
        };
        self.send(req).await;
    }

    /// ACKs `resp`, keeping the subscription `names`.
    async fn ack(&mut self, resp: &DiscoveryResponse, names: &[&str]) {
        let req = DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.send(req).await;
    }

    /// NACKs `resp`, keeping the subscription `names`.
    async fn nack(&mut self, resp: &DiscoveryResponse, names: &[&str], detail: &str) {
        let req = DiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: detail.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.send(req).await;
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        within("SotW response", self.rx.message())
            .await
            .expect("stream ok")
            .expect("a response")
    }
}

struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    node: Option<Node>,
}

impl DeltaClient {
    async fn send(&mut self, mut req: DeltaDiscoveryRequest) {
        req.node = self.node.take();
        self.tx.send(req).await.expect("request stream open");
    }

    async fn subscribe(&mut self, t: TypeUrl, names: &[&str]) {
        let req = DeltaDiscoveryRequest {
            type_url: t.as_str().into(),
            resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.send(req).await;
    }

    async fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        let req = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        self.send(req).await;
    }

    async fn nack(&mut self, resp: &DeltaDiscoveryResponse, detail: &str) {
        let req = DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: detail.into(),
                details: vec![],
            }),
            ..Default::default()
        };
        self.send(req).await;
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        within("delta response", self.rx.message())
            .await
            .expect("stream ok")
            .expect("a response")
    }
}

fn delta_names(resp: &DeltaDiscoveryResponse) -> Vec<String> {
    resp.resources.iter().map(|r| r.name.clone()).collect()
}

async fn wait_nacked(h: &Harness, node_id: &str, t: TypeUrl, nonce: &str) {
    let what = format!("{node_id} to NACK {} nonce {nonce}", t.short());
    eventually(&what, || {
        h.type_status(node_id, t)
            .last_nack
            .is_some_and(|n| n.nonce == nonce)
    })
    .await;
}

// ---- SotW --------------------------------------------------------------------------------

#[tokio::test]
async fn sotw_wildcard_cds_gets_all_clusters() {
    let h = Harness::start(snapshot([cluster("a"), cluster("b"), endpoints("a", 0)])).await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::Cluster, &[]).await;
    let resp = c.recv().await;
    assert_eq!(resp.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&resp.resources), vec!["a", "b"]);
    assert!(!resp.version_info.is_empty());
    assert_eq!(resp.nonce, "1");
    let status = h.status("sidecar-1").expect("registered");
    assert_eq!(status.types["cds"].sent_nonce, "1");
    assert!(status.types["cds"].wildcard);
    assert_eq!(status.client_version, "envoy 1.40.0");
    assert_eq!(
        (status.cluster.as_str(), status.kind.as_str()),
        ("demo.default", "sidecar")
    );
}

#[tokio::test]
async fn sotw_wildcard_type_gets_a_response_even_when_empty() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::Listener, &[]).await;
    let resp = c.recv().await;
    assert_eq!(resp.type_url, TypeUrl::Listener.as_str());
    assert!(resp.resources.is_empty());
}

#[tokio::test]
async fn sotw_named_eds_gets_only_requested_and_follows_subscription() {
    let h = Harness::start(snapshot([
        endpoints("a", 0),
        endpoints("b", 0),
        endpoints("c", 0),
    ]))
    .await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::ClusterLoadAssignment, &["a", "c", "missing"])
        .await;
    let resp = c.recv().await;
    assert_eq!(names(&resp.resources), vec!["a", "c"]);
    // A changed subscription gets a response although no config changed.
    c.ack(&resp, &["a", "b"]).await;
    let resp = c.recv().await;
    assert_eq!(names(&resp.resources), vec!["a", "b"]);
    assert_eq!(
        h.type_status("sidecar-1", TypeUrl::ClusterLoadAssignment)
            .subscribed,
        ["a", "b"]
    );
}

#[tokio::test]
async fn sotw_ack_is_recorded() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::Cluster, &[]).await;
    let resp = c.recv().await;
    c.ack(&resp, &[]).await;
    h.wait_acked("sidecar-1", TypeUrl::Cluster, &resp.nonce)
        .await;
    let cds = h.type_status("sidecar-1", TypeUrl::Cluster);
    assert_eq!(cds.acked_version, resp.version_info);
    assert_eq!(cds.resources, 1);
    assert!(cds.in_sync && cds.last_nack.is_none());
    assert!(h.status("sidecar-1").expect("registered").in_sync);
}

#[tokio::test]
async fn sotw_nack_is_visible_while_another_client_stays_in_sync() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    let mut bad = h.sotw("rejecting").await;
    let mut good = h.sotw("accepting").await;
    bad.request(TypeUrl::Cluster, &[]).await;
    good.request(TypeUrl::Cluster, &[]).await;
    let bad_resp = bad.recv().await;
    let good_resp = good.recv().await;
    bad.nack(&bad_resp, &[], "cluster a: unknown lb policy")
        .await;
    good.ack(&good_resp, &[]).await;
    h.wait_acked("accepting", TypeUrl::Cluster, &good_resp.nonce)
        .await;
    eventually("NACK recorded", || {
        h.type_status("rejecting", TypeUrl::Cluster)
            .last_nack
            .is_some()
    })
    .await;

    let cds = h.type_status("rejecting", TypeUrl::Cluster);
    let nack = cds.last_nack.clone().expect("nack");
    assert_eq!(nack.detail, "cluster a: unknown lb policy");
    assert_eq!(
        (nack.nonce.as_str(), nack.version.as_str()),
        (bad_resp.nonce.as_str(), bad_resp.version_info.as_str())
    );
    assert!(!cds.in_sync);
    assert!(!h.status("rejecting").expect("registered").in_sync);
    assert!(h.status("accepting").expect("registered").in_sync);
    let text = h.metrics();
    assert!(
        text.contains(r#"jalur_xds_nacks_total{type="cds",kind="sidecar"} 1"#),
        "{text}"
    );
    assert!(text.contains("jalur_xds_clients_out_of_sync 1"), "{text}");
}

#[tokio::test]
async fn sotw_endpoint_only_change_pushes_only_eds() {
    let base = [cluster("a"), endpoints("a", 0), listener("l"), route("r")];
    let h = Harness::start(snapshot(base.clone())).await;
    let mut c = h.sotw("sidecar-1").await;
    let subs: [(TypeUrl, &[&str]); 4] = [
        (TypeUrl::Cluster, &[]),
        (TypeUrl::ClusterLoadAssignment, &["a"]),
        (TypeUrl::Listener, &[]),
        (TypeUrl::RouteConfiguration, &["r"]),
    ];
    let mut before = BTreeMap::new();
    for (t, names) in subs {
        c.request(t, names).await;
        let resp = c.recv().await;
        c.ack(&resp, names).await;
        h.wait_acked("sidecar-1", t, &resp.nonce).await;
        before.insert(t, resp.nonce);
    }

    let [cds, _, lds, rds] = base;
    h.update(snapshot([cds, endpoints("a", 7), lds, rds]));
    // Pushes go out in type order, so a CDS push would arrive before this one.
    let resp = c.recv().await;
    assert_eq!(resp.type_url, TypeUrl::ClusterLoadAssignment.as_str());
    c.ack(&resp, &["a"]).await;
    h.wait_acked("sidecar-1", TypeUrl::ClusterLoadAssignment, &resp.nonce)
        .await;
    for t in [
        TypeUrl::Cluster,
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
    ] {
        assert_eq!(
            h.type_status("sidecar-1", t).sent_nonce,
            before[&t],
            "{} re-sent",
            t.short()
        );
    }
    let status = h.status("sidecar-1").expect("registered");
    assert_eq!(status.generation, 2);
    let text = h.metrics();
    assert!(
        text.contains(r#"jalur_xds_pushes_total{type="eds",kind="sidecar"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"jalur_xds_pushes_total{type="cds",kind="sidecar"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"jalur_xds_push_latency_seconds_count{type="eds"} 1"#),
        "{text}"
    );
}

/// A SotW EDS (or RDS) push after a change carries only the assignments that changed; the
/// ones the client holds stay out. A NACKed one is sent again at the next generation; the
/// `version_info` always names the whole held set, so it equals a full response's.
#[tokio::test]
async fn sotw_change_of_one_endpoint_set_sends_only_that_set() {
    let all = ["a", "b", "c"];
    let h = Harness::start(snapshot(all.map(|n| endpoints(n, 0)))).await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::ClusterLoadAssignment, &all).await;
    let first = c.recv().await;
    assert_eq!(names(&first.resources), all);
    c.ack(&first, &all).await;
    h.wait_acked("sidecar-1", TypeUrl::ClusterLoadAssignment, &first.nonce)
        .await;

    h.update(snapshot([
        endpoints("a", 0),
        endpoints("b", 5),
        endpoints("c", 0),
    ]));
    let only_b = c.recv().await;
    assert_eq!(
        names(&only_b.resources),
        vec!["b"],
        "only the changed set is sent"
    );
    c.nack(&only_b, &all, "b: bad priority").await;
    wait_nacked(
        &h,
        "sidecar-1",
        TypeUrl::ClusterLoadAssignment,
        &only_b.nonce,
    )
    .await;

    // Another set changes: the client still holds the old b, so b goes again with c.
    h.update(snapshot([
        endpoints("a", 0),
        endpoints("b", 5),
        endpoints("c", 3),
    ]));
    let retry = c.recv().await;
    assert_eq!(names(&retry.resources), vec!["b", "c"]);
    c.ack(&retry, &all).await;
    h.wait_acked("sidecar-1", TypeUrl::ClusterLoadAssignment, &retry.nonce)
        .await;

    // The version names the whole set held: a client starting now, sent all three in full,
    // is told the same version.
    let mut fresh = h.sotw("sidecar-2").await;
    fresh.request(TypeUrl::ClusterLoadAssignment, &all).await;
    let full = fresh.recv().await;
    assert_eq!(names(&full.resources), all);
    assert_eq!(full.version_info, retry.version_info);
}

#[tokio::test]
async fn sotw_after_nack_a_later_generation_resends_the_full_set() {
    let h = Harness::start(snapshot([
        cluster_tagged("a", "1"),
        cluster_tagged("b", "1"),
    ]))
    .await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::Cluster, &[]).await;
    let resp = c.recv().await;
    c.ack(&resp, &[]).await;
    h.wait_acked("sidecar-1", TypeUrl::Cluster, &resp.nonce)
        .await;
    let acked_version = resp.version_info.clone();

    // A good new version of a and a bad b, in one response: the client rejects all of it.
    let rejected = [cluster_tagged("a", "2"), cluster_tagged("b", "bad")];
    h.update(snapshot(rejected.clone()));
    let bad = c.recv().await;
    assert_eq!(names(&bad.resources), vec!["a", "b"]);
    c.nack(&bad, &[], "cluster b: unknown lb policy").await;
    wait_nacked(&h, "sidecar-1", TypeUrl::Cluster, &bad.nonce).await;
    // The NACK alone triggers no push (re-sending the same content would only loop).
    let cds = h.type_status("sidecar-1", TypeUrl::Cluster);
    assert_eq!(cds.sent_nonce, bad.nonce);
    assert_eq!(cds.acked_version, acked_version);

    // A later generation with the same clusters (only endpoints changed) retries the full set:
    // the client still holds the ACKed one.
    h.update(snapshot(
        rejected.iter().cloned().chain([endpoints("a", 1)]),
    ));
    let retry = c.recv().await;
    assert_eq!(retry.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&retry.resources), vec!["a", "b"]);
    assert_eq!(retry.version_info, bad.version_info);
    c.nack(&retry, &[], "cluster b: unknown lb policy").await;
    wait_nacked(&h, "sidecar-1", TypeUrl::Cluster, &retry.nonce).await;

    // The control plane fixes b: the client gets the whole set, a's new version included.
    h.update(snapshot([
        cluster_tagged("a", "2"),
        cluster_tagged("b", "3"),
    ]));
    let fixed = c.recv().await;
    assert_eq!(fixed.type_url, TypeUrl::Cluster.as_str());
    assert_eq!(names(&fixed.resources), vec!["a", "b"]);
    let a = Cluster::decode(fixed.resources[0].value.as_slice()).expect("cluster a");
    assert_eq!(a.alt_stat_name, "2");
    c.ack(&fixed, &[]).await;
    h.wait_acked("sidecar-1", TypeUrl::Cluster, &fixed.nonce)
        .await;

    // Once ACKed, an unrelated generation sends nothing for the type.
    h.update(snapshot([
        cluster_tagged("a", "2"),
        cluster_tagged("b", "3"),
        endpoints("a", 2),
    ]));
    eventually("generation 5 processed", || {
        h.status("sidecar-1").is_some_and(|s| s.generation == 5)
    })
    .await;
    assert_eq!(
        h.type_status("sidecar-1", TypeUrl::Cluster).sent_nonce,
        fixed.nonce
    );
}

#[tokio::test]
async fn node_is_remembered_when_later_requests_omit_it() {
    let h = Harness::start(snapshot([cluster("a"), endpoints("a", 0)])).await;
    let mut c = h.sotw("grpc-client").await;
    c.request(TypeUrl::Cluster, &[]).await;
    let cds = c.recv().await;
    assert!(c.node.is_none(), "node only on the first request");
    c.ack(&cds, &[]).await;
    c.request(TypeUrl::ClusterLoadAssignment, &["a"]).await;
    let eds = c.recv().await;
    assert_eq!(names(&eds.resources), vec!["a"]);
    assert_eq!(
        h.status("grpc-client").expect("registered").node_id,
        "grpc-client"
    );
}

#[tokio::test]
async fn first_request_without_node_is_rejected() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    let mut c = h.sotw("ignored").await;
    c.node = None;
    c.request(TypeUrl::Cluster, &[]).await;
    let err = within("rejection", c.rx.message())
        .await
        .expect_err("stream must fail");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("node"), "{}", err.message());
    assert!(h.generator.events().is_empty());
}

#[tokio::test]
async fn a_node_the_generator_does_not_admit_is_refused_and_never_registered() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    for delta in [false, true] {
        let err = if delta {
            let mut c = h.delta("impostor-payments").await;
            c.subscribe(TypeUrl::Cluster, &[]).await;
            within("refusal", c.rx.message()).await.err()
        } else {
            let mut c = h.sotw("impostor-payments").await;
            c.request(TypeUrl::Cluster, &[]).await;
            within("refusal", c.rx.message()).await.err()
        };
        let err = err.expect("stream must fail");
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "payments may not register");
    }
    assert!(
        h.generator.events().is_empty(),
        "{:?}",
        h.generator.events()
    );
    assert!(h.status("impostor-payments").is_none());
    let metrics = h.metrics();
    assert!(
        metrics.contains("jalur_xds_streams_refused_total{code=\"PermissionDenied\"} 2"),
        "{metrics}"
    );
    // Others are still served.
    let mut c = h.sotw("honest").await;
    c.request(TypeUrl::Cluster, &[]).await;
    assert_eq!(names(&c.recv().await.resources), ["a"]);
}

// ---- delta -------------------------------------------------------------------------------

#[tokio::test]
async fn delta_initial_wildcard_gets_everything() {
    let h = Harness::start(snapshot([cluster("a"), cluster("b")])).await;
    let mut c = h.delta("delta-1").await;
    c.subscribe(TypeUrl::Cluster, &[]).await;
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["a", "b"]);
    assert!(resp.removed_resources.is_empty());
    assert_eq!(resp.system_version_info, "1");
    let status = h.status("delta-1").expect("registered");
    assert_eq!(status.mode.as_str(), "delta");
    assert!(status.types["cds"].wildcard);
}

#[tokio::test]
async fn delta_update_sends_only_the_changed_name() {
    let h = Harness::start(snapshot([endpoints("a", 0), endpoints("b", 0)])).await;
    let mut c = h.delta("delta-1").await;
    c.subscribe(TypeUrl::ClusterLoadAssignment, &["a", "b"])
        .await;
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["a", "b"]);
    c.ack(&resp).await;
    h.wait_acked("delta-1", TypeUrl::ClusterLoadAssignment, &resp.nonce)
        .await;

    h.update(snapshot([endpoints("a", 0), endpoints("b", 3)]));
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["b"]);
    assert_eq!(resp.resources[0].version, endpoints("b", 3).1.version);
    assert!(resp.removed_resources.is_empty());
    assert_eq!(resp.system_version_info, "2");
}

#[tokio::test]
async fn delta_removal_is_sent_in_removed_resources() {
    let h = Harness::start(snapshot([cluster("a"), cluster("b")])).await;
    let mut c = h.delta("delta-1").await;
    c.subscribe(TypeUrl::Cluster, &[]).await;
    let resp = c.recv().await;
    c.ack(&resp).await;
    h.wait_acked("delta-1", TypeUrl::Cluster, &resp.nonce).await;

    h.update(snapshot([cluster("a")]));
    let resp = c.recv().await;
    assert!(resp.resources.is_empty());
    assert_eq!(resp.removed_resources, vec!["b"]);
    c.ack(&resp).await;
    h.wait_acked("delta-1", TypeUrl::Cluster, &resp.nonce).await;
    assert_eq!(h.type_status("delta-1", TypeUrl::Cluster).resources, 1);
}

#[tokio::test]
async fn delta_initial_resource_versions_skip_up_to_date_resources() {
    let h = Harness::start(snapshot([cluster("a"), cluster("b")])).await;
    let mut c = h.delta("delta-1").await;
    let held = HashMap::from([
        ("a".to_string(), cluster("a").1.version),
        ("b".to_string(), "stale".to_string()),
        ("gone".to_string(), "old".to_string()),
    ]);
    let req = DeltaDiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        initial_resource_versions: held,
        ..Default::default()
    };
    c.send(req).await;
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["b"]);
    assert_eq!(resp.removed_resources, vec!["gone"]);
}

/// Subscribes `c` to every cluster, ACKs a@1 and b@1, then has the control plane publish a@2
/// with a bad b; returns that response, unanswered.
async fn delta_bad_update(h: &Harness, c: &mut DeltaClient) -> DeltaDiscoveryResponse {
    c.subscribe(TypeUrl::Cluster, &[]).await;
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["a", "b"]);
    c.ack(&resp).await;
    h.wait_acked("delta-1", TypeUrl::Cluster, &resp.nonce).await;
    h.update(snapshot([
        cluster_tagged("a", "2"),
        cluster_tagged("b", "bad"),
    ]));
    let bad = c.recv().await;
    assert_eq!(delta_names(&bad), vec!["a", "b"]);
    bad
}

#[tokio::test]
async fn delta_nacked_resources_are_sent_again_after_the_bad_one_is_removed() {
    let h = Harness::start(snapshot([
        cluster_tagged("a", "1"),
        cluster_tagged("b", "1"),
    ]))
    .await;
    let mut c = h.delta("delta-1").await;
    let bad = delta_bad_update(&h, &mut c).await;
    c.nack(&bad, "cluster b: unknown lb policy").await;
    wait_nacked(&h, "delta-1", TypeUrl::Cluster, &bad.nonce).await;
    // The client kept a@1 and b@1; the NACK alone triggers no push.
    let cds = h.type_status("delta-1", TypeUrl::Cluster);
    assert_eq!(
        (cds.sent_nonce.as_str(), cds.resources),
        (bad.nonce.as_str(), 2)
    );

    // The control plane drops only b: a@2 must come again, with b's removal.
    h.update(snapshot([cluster_tagged("a", "2")]));
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["a"]);
    assert_eq!(
        resp.resources[0].version,
        cluster_tagged("a", "2").1.version
    );
    assert_eq!(resp.removed_resources, vec!["b"]);
    c.ack(&resp).await;
    h.wait_acked("delta-1", TypeUrl::Cluster, &resp.nonce).await;
    assert_eq!(h.type_status("delta-1", TypeUrl::Cluster).resources, 1);
}

#[tokio::test]
async fn delta_nacked_resources_are_sent_again_when_the_bad_one_is_fixed() {
    let h = Harness::start(snapshot([
        cluster_tagged("a", "1"),
        cluster_tagged("b", "1"),
    ]))
    .await;
    let mut c = h.delta("delta-1").await;
    let bad = delta_bad_update(&h, &mut c).await;
    c.nack(&bad, "cluster b: unknown lb policy").await;
    wait_nacked(&h, "delta-1", TypeUrl::Cluster, &bad.nonce).await;

    h.update(snapshot([
        cluster_tagged("a", "2"),
        cluster_tagged("b", "3"),
    ]));
    let resp = c.recv().await;
    assert_eq!(delta_names(&resp), vec!["a", "b"]);
    assert_eq!(
        resp.resources[0].version,
        cluster_tagged("a", "2").1.version
    );
    assert!(resp.removed_resources.is_empty());
}

#[tokio::test]
async fn delta_nack_of_an_older_response_is_rolled_back_too() {
    let h = Harness::start(snapshot([
        cluster_tagged("a", "1"),
        cluster_tagged("b", "1"),
    ]))
    .await;
    let mut c = h.delta("delta-1").await;
    let bad = delta_bad_update(&h, &mut c).await;
    // Another push goes out before the client answers the bad one.
    h.update(snapshot([
        cluster_tagged("a", "2"),
        cluster_tagged("b", "bad"),
        cluster_tagged("c", "1"),
    ]));
    let next = c.recv().await;
    assert_eq!(delta_names(&next), vec!["c"]);
    c.nack(&bad, "cluster b: unknown lb policy").await;
    c.ack(&next).await;
    h.wait_acked("delta-1", TypeUrl::Cluster, &next.nonce).await;

    h.update(snapshot([
        cluster_tagged("a", "2"),
        cluster_tagged("c", "1"),
    ]));
    let resp = c.recv().await;
    // a@2 comes again; c may be re-sent too (the server cannot tell it was kept), which is
    // harmless.
    assert!(delta_names(&resp).contains(&"a".to_string()), "{resp:?}");
    assert_eq!(resp.removed_resources, vec!["b"]);
}

// ---- lifecycle and metrics ---------------------------------------------------------------

#[tokio::test]
async fn disconnect_deregisters_the_client_once() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    let mut c = h.sotw("leaving").await;
    c.request(TypeUrl::Cluster, &[]).await;
    c.recv().await;
    assert!(h.status("leaving").is_some());
    drop(c);
    eventually("client removed from the registry", || {
        h.server.sync().is_empty()
    })
    .await;
    eventually("disconnected called", || h.generator.events().len() == 2).await;
    let events = h.generator.events();
    assert_eq!(events[0].0, "connected");
    // Dropping a client both half-closes and resets its stream; either way it is gone once.
    assert!(matches!(events[1].0, "disconnected" | "left"), "{events:?}");
    assert_eq!((events[0].1, &events[0].2), (events[1].1, &events[1].2));
}

#[tokio::test]
async fn metrics_expose_the_families() {
    let h = Harness::start(snapshot([cluster("a")])).await;
    let mut sotw = h.sotw("sidecar-1").await;
    let mut delta = h.delta("sidecar-2").await;
    sotw.request(TypeUrl::Cluster, &[]).await;
    delta.subscribe(TypeUrl::Cluster, &[]).await;
    let s = sotw.recv().await;
    let d = delta.recv().await;
    sotw.ack(&s, &[]).await;
    delta.ack(&d).await;
    h.wait_acked("sidecar-1", TypeUrl::Cluster, &s.nonce).await;
    h.wait_acked("sidecar-2", TypeUrl::Cluster, &d.nonce).await;

    h.update(snapshot([cluster("a"), cluster("b")]));
    let s = sotw.recv().await;
    let d = delta.recv().await;
    sotw.ack(&s, &[]).await;
    delta.ack(&d).await;
    let converged = |h: &Harness| {
        h.metrics()
            .contains("jalur_xds_convergence_seconds_count 1")
    };
    eventually("convergence observed", || converged(&h)).await;

    let text = h.metrics();
    for family in [
        r#"jalur_xds_pushes_total{type="cds",kind="sidecar"} 4"#,
        "jalur_xds_push_bytes_total",
        r#"jalur_xds_push_latency_seconds_count{type="cds"} 2"#,
        r#"jalur_xds_connected_clients{kind="sidecar"} 2"#,
        r#"jalur_xds_clients_by_version{kind="sidecar",version="envoy 1.40.0"} 2"#,
        "jalur_xds_clients_out_of_sync 0",
        "# TYPE jalur_xds_convergence_seconds histogram",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
}

#[tokio::test]
async fn shutdown_ends_streams_and_serve_returns() {
    let mut h = Harness::start(snapshot([cluster("a")])).await;
    let mut c = h.sotw("sidecar-1").await;
    c.request(TypeUrl::Cluster, &[]).await;
    c.recv().await;
    h.stop
        .take()
        .expect("not stopped yet")
        .send(())
        .expect("server running");
    let end = within("stream end", c.rx.message()).await;
    assert!(
        matches!(&end, Err(s) if s.code() == Code::Unavailable),
        "{end:?}"
    );
    drop(c);
    let served = within("serve to return", &mut h.serving)
        .await
        .expect("serve task");
    assert!(served.is_ok(), "{served:?}");
    assert_eq!(h.generator.events().len(), 2);
}
