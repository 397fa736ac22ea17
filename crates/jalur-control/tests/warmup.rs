//! The first answers of a starting control plane carry what its registries already hold.
//!
//! Both tests failed every time before the fix (2026-12-03, the "Consul-double flake"): a
//! registry's set published before the rebuild loop subscribed was marked seen, so the mesh built
//! at start (with no workloads) was never rebuilt when the warm-up found nothing to wait for;
//! and the warm-up's own rebuild waited for the debounce, longer than the warm-up waits for it.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::ads::{endpoints, node, AdsClient};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use jalur_control::registry::Registry;
use jalur_control::workload::{Port, Protocol, Workload, WorkloadSet};
use jalur_control::{ControlPlane, Options};
use jalur_testkit::consul::{ConsulDouble, ConsulOpts, Instance, Status};
use jalur_xds::TypeUrl;
use prost::Message;
use tokio::sync::watch;

/// A registry whose whole set is there before the control plane starts (as a Consul that
/// answered during the start, or any registry filled from a file).
struct Filled(watch::Sender<WorkloadSet>);

impl Registry for Filled {
    fn name(&self) -> &str {
        "filled"
    }

    fn watch(&self) -> watch::Receiver<WorkloadSet> {
        self.0.subscribe()
    }
}

fn ledger(address: &str) -> Workload {
    Workload {
        host: "ledger.default.svc.cluster.local".into(),
        namespace: "default".into(),
        name: "ledger".into(),
        address: address.into(),
        ports: vec![Port {
            number: 8080,
            name: "http".into(),
            protocol: Protocol::Http,
        }],
        target_port: None,
        labels: BTreeMap::new(),
        weight: 1,
        locality: String::new(),
        healthy: true,
        source: "filled".into(),
        service_account: None,
    }
}

/// Test defaults on loopback; `debounce` as given.
fn options(dir: &std::path::Path, debounce: Duration) -> Options {
    Options {
        config: vec![dir.to_path_buf()],
        xds_addr: ([127, 0, 0, 1], 0).into(),
        status_addr: ([127, 0, 0, 1], 0).into(),
        debounce,
        registry_grace: Duration::ZERO,
        watch_interval: Duration::from_millis(50),
        ..Options::default()
    }
}

/// The first CDS answer a new client gets, and the endpoints of its clusters.
async fn first_answer(plane: &ControlPlane) -> (Vec<String>, Vec<String>) {
    let mut ads = AdsClient::connect(
        plane.xds_addr,
        node("sidecar~10.0.0.9~x.default~default.svc.cluster.local", &[]),
    )
    .await;
    let cds = ads.fetch(TypeUrl::Cluster, &[]).await;
    let clusters: Vec<String> = cds
        .resources
        .iter()
        .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
        .map(|c| c.name)
        .collect();
    let eds = ads.fetch(TypeUrl::ClusterLoadAssignment, &clusters).await;
    (clusters, endpoints(&eds))
}

/// No ConsulRegistry and nothing remembered: the warm-up has nothing to wait for, so the mesh
/// built at start must already hold what every registry had then. The long debounce makes sure
/// a later rebuild cannot hide a lost one within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_filled_before_start_is_in_the_first_answer() {
    let tmp = tempfile::TempDir::with_prefix("jalur-warmup-").expect("temp dir");
    let (tx, _) = watch::channel(Arc::new(vec![ledger("10.1.0.7")]));
    let filled: Arc<dyn Registry> = Arc::new(Filled(tx));
    let plane = ControlPlane::start_with_registries(
        options(tmp.path(), Duration::from_secs(30)),
        vec![filled],
    )
    .await
    .expect("control plane starts");
    let (clusters, eps) = first_answer(&plane).await;
    assert!(
        clusters.contains(&"outbound|8080||ledger.default.svc.cluster.local".to_string()),
        "the filled registry's service is in the first CDS answer: {clusters:?}"
    );
    assert_eq!(eps, vec!["10.1.0.7:8080".to_string()], "first EDS answer");
    plane.stop().await;
}

/// A ConsulRegistry: the warm-up holds every answer until Consul has answered, then rebuilds
/// once, at once (not a debounce later), so a proxy's first config already routes to the
/// legacy instances. A 30 s debounce: the warm-up must not depend on it (it gives up waiting
/// for its rebuild after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_answers_are_in_the_first_answer_whatever_the_debounce() {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    consul.register(
        Instance::new("payments", "payments-a", "127.0.0.1", 18080).status(Status::Passing),
    );
    let tmp = tempfile::TempDir::with_prefix("jalur-warmup-").expect("temp dir");
    let registry = format!(
        "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {{name: legacy, namespace: default}}\nspec:\n  addresses: [\"{}\"]\n  wait: 2s\n",
        consul.url()
    );
    std::fs::write(tmp.path().join("consul.yaml"), registry).expect("write config");
    let plane = ControlPlane::start(options(tmp.path(), Duration::from_secs(30)))
        .await
        .expect("control plane starts");
    let started = tokio::time::Instant::now();
    let (clusters, eps) = first_answer(&plane).await;
    assert!(
        clusters
            .iter()
            .any(|c| c.ends_with("||payments.service.consul")),
        "Consul's service is in the first CDS answer: {clusters:?}"
    );
    assert_eq!(eps, vec!["127.0.0.1:18080".to_string()], "first EDS answer");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered {:?} after start: the warm-up's rebuild is not debounced",
        started.elapsed()
    );
    plane.stop().await;
}

const RATINGS: &str = "ratings.default.svc.cluster.local";

fn ratings_node() -> envoy_types::pb::envoy::config::core::v3::Node {
    node(
        "sidecar~127.0.0.9~ratings-v1-abc.default~default.svc.cluster.local",
        &[
            (
                "POD_PORTS",
                r#"[{"name":"http","containerPort":9080,"protocol":"TCP"}]"#,
            ),
            ("JALUR_SERVICE", "ratings"),
        ],
    )
}

/// A plane stopped right after its proxies connected (within the second between two writes of
/// `clients.json`) still makes the next start wait for them: a caller's first answer after the
/// restart has the endpoint of the sidecar that reconnects holding its config. Before, the
/// list was missing, the restart answered at once from an empty mesh, and the caller lost its
/// routes until the next rebuild (secure_xds.rs's restart test failed about two runs in three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_restart_waits_for_the_proxies_connected_at_stop() {
    let tmp = tempfile::TempDir::with_prefix("jalur-warmup-").expect("temp dir");
    let opts = Options {
        registry_grace: Duration::from_secs(10),
        ..options(tmp.path(), Duration::from_secs(30))
    };
    let first = ControlPlane::start(opts.clone())
        .await
        .expect("control plane starts");
    let mut ratings = AdsClient::connect(first.xds_addr, ratings_node()).await;
    let held = ratings.fetch(TypeUrl::Cluster, &[]).await;
    ratings.sync_after_clusters(&held).await;
    first.stop().await;
    let remembered = std::fs::read_to_string(tmp.path().join(".jalur/clients.json"))
        .expect("clients.json written at stop");
    assert!(remembered.contains("ratings-v1-abc"), "{remembered}");
    drop(ratings);

    let second = ControlPlane::start(opts)
        .await
        .expect("control plane restarts");
    // The sidecar comes back holding the config it had (a version in its first request).
    let mut ratings = AdsClient::connect(second.xds_addr, ratings_node()).await;
    ratings.request(TypeUrl::Cluster, &[], Some(&held)).await;
    let (clusters, eps) = first_answer(&second).await;
    let cluster = format!("outbound|9080||{RATINGS}");
    assert!(clusters.contains(&cluster), "{clusters:?}");
    assert_eq!(eps, vec!["127.0.0.9:15006".to_string()], "first EDS answer");
    second.stop().await;
}
