//! The rebuild loop's ordering on paused time: what the warm-up's rebuild reads and when it
//! happens, and that a registry's set is never lost to the moment it was subscribed.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::*;
use crate::migrate::overlay::Overlay;
use crate::workload::{Port, Protocol};

const HOST: &str = "ledger.default.svc.cluster.local";

fn workload(address: &str) -> Workload {
    Workload {
        host: HOST.into(),
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
        source: "test".into(),
        service_account: None,
    }
}

fn addresses(mesh: &Mesh) -> Vec<String> {
    mesh.endpoints
        .get(HOST)
        .into_iter()
        .flatten()
        .map(|e| e.address.clone())
        .collect()
}

/// A rebuild loop over one registry, as `start_with_registries` wires it.
struct Loop {
    registry: watch::Sender<WorkloadSet>,
    mesh: Arc<ArcSwap<Mesh>>,
    generation: watch::Receiver<u64>,
    now: mpsc::Sender<oneshot::Sender<u64>>,
    _config: watch::Sender<Arc<jalur_model::Config>>,
    _overlay: watch::Sender<Arc<Overlay>>,
}

fn start(debounce: Duration) -> Loop {
    let (config_tx, config) = watch::channel(Arc::new(jalur_model::Config::default()));
    let (overlay_tx, overlay) = watch::channel(Arc::new(Overlay::default()));
    let (registry, rx) = watch::channel(Arc::new(Vec::new()));
    let mut changes = Changes {
        config,
        overlay,
        registries: vec![rx],
        jwks: watch::channel(Arc::default()).1,
    };
    let mesh = Arc::new(ArcSwap::from_pointee(changes.build(Security::default()).0));
    let (gen_tx, generation) = watch::channel(0);
    let (now, now_rx) = mpsc::channel(1);
    tokio::spawn(rebuild_loop(
        mesh.clone(),
        Arc::new(AtomicU64::new(0)),
        changes,
        gen_tx,
        debounce,
        PlaneMetrics::default(),
        now_rx,
    ));
    Loop {
        registry,
        mesh,
        generation,
        now,
        _config: config_tx,
        _overlay: overlay_tx,
    }
}

/// The flake of 2026-12-03: Consul answered while the plane was still binding its ports, the
/// registry's receiver was subscribed after that (so the answer counted as seen), and the mesh
/// built at start stayed empty. A set published before subscribing is in the first build.
#[tokio::test(start_paused = true)]
async fn a_set_published_before_subscribing_is_in_the_first_build() {
    let (registry, _) = watch::channel(Arc::new(Vec::new()));
    registry.send_replace(Arc::new(vec![workload("10.0.0.1")]));
    let (_config, config) = watch::channel(Arc::new(jalur_model::Config::default()));
    let (_overlay, overlay) = watch::channel(Arc::new(Overlay::default()));
    let mut changes = Changes {
        config,
        overlay,
        registries: vec![registry.subscribe()],
        jwks: watch::channel(Arc::default()).1,
    };
    let (mesh, workloads) = changes.build(Security::default());
    assert_eq!(workloads, 1);
    assert_eq!(addresses(&mesh), ["10.0.0.1"]);
}

/// The warm-up asks for its rebuild while a registry change is being debounced (Consul's
/// first answer arrived just before): the rebuild happens at once, not a debounce later (the
/// warm-up gives up after 5 s, and the debounce may be longer), and it reads what was
/// published up to the request.
#[tokio::test(start_paused = true)]
async fn the_warm_up_rebuild_does_not_wait_for_a_pending_debounce() {
    let l = start(Duration::from_secs(30));
    l.registry
        .send_replace(Arc::new(vec![workload("10.0.0.1")]));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(*l.generation.borrow(), 0, "the change is being debounced");
    l.registry
        .send_replace(Arc::new(vec![workload("10.0.0.1"), workload("10.0.0.2")]));
    let asked = Instant::now();
    let (reply, built) = oneshot::channel();
    l.now.send(reply).await.expect("the loop runs");
    let generation = tokio::time::timeout(Duration::from_secs(1), built)
        .await
        .expect("rebuilt before the debounce ends")
        .expect("answered");
    assert_eq!(generation, 1, "one rebuild for the change and the request");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(addresses(&l.mesh.load()), ["10.0.0.1", "10.0.0.2"]);
}

/// A burst of registry changes becomes one rebuild, a debounce after the first, carrying the
/// last set; nothing more follows.
#[tokio::test(start_paused = true)]
async fn a_burst_of_registry_changes_is_one_rebuild_after_the_debounce() {
    let debounce = Duration::from_millis(100);
    let mut l = start(debounce);
    let first = Instant::now();
    for n in 1..=5 {
        let set = (1..=n).map(|i| workload(&format!("10.0.0.{i}"))).collect();
        l.registry.send_replace(Arc::new(set));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    l.generation.changed().await.expect("rebuilt");
    assert!(first.elapsed() >= debounce, "{:?}", first.elapsed());
    assert_eq!(*l.generation.borrow_and_update(), 1);
    assert_eq!(addresses(&l.mesh.load()).len(), 5);
    tokio::time::sleep(debounce * 10).await;
    assert_eq!(
        *l.generation.borrow(),
        1,
        "no second rebuild for the same burst"
    );
}
