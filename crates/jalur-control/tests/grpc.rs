//! Proxyless gRPC clients (grpcio's and grpc-js's built-in xDS) resolving
//! `xds:///echo.grpc.svc.cluster.local:7070` through jalur's control plane and calling real gRPC
//! backends: plain resolution, an 80/20 VirtualService split between subsets, a weight edit in the
//! config directory, a DNS ServiceEntry with two endpoints, and the client's row in /debug/syncz.
//! Every client run also checks that no proxyless client NACKed anything.

mod common;
#[path = "common/grpc.rs"]
mod grpc_mesh;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{subsets_rule, Plane};
use grpc_mesh::{
    grpc_dns_service_entry, grpc_service_entry, grpc_workload_entry, nacks_in, proxyless_nacks,
    syncz_client, weighted_vs,
};
use jalur_testkit::{
    assert_eventually, eventually, http_get, node_client_dir, python, require_peer, GrpcBackend,
    XdsClient, XdsClientReport,
};

const NS: &str = "grpc";
const APP: &str = "echo";
const HOST: &str = "echo.grpc.svc.cluster.local";
const TARGET: &str = "xds:///echo.grpc.svc.cluster.local:7070";
/// All calls of one client run, xDS resolution included.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

fn python_peer() -> Option<PathBuf> {
    require_peer("python with grpcio", python())
}

/// The echo service with one WorkloadEntry per `(version, backend)`.
fn service_files(backends: &[(&str, &GrpcBackend)]) -> Vec<(String, String)> {
    let mut files = vec![(
        "service.yaml".to_string(),
        grpc_service_entry(APP, NS, HOST),
    )];
    for (version, backend) in backends {
        files.push((
            format!("we-{version}.yaml"),
            grpc_workload_entry(APP, version, NS, backend.addr()),
        ));
    }
    files
}

async fn start_plane(files: &[(String, String)]) -> Plane {
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    Plane::start(&files).await
}

/// Two backends `v1` and `v2`, subsets by label `version`, and a VirtualService splitting
/// `v1_weight`/`v2_weight` between them.
struct Canary {
    plane: Plane,
    _v1: GrpcBackend,
    _v2: GrpcBackend,
}

async fn canary(python: &Path, v1_weight: u32, v2_weight: u32) -> Canary {
    let (v1, v2) = tokio::join!(
        GrpcBackend::start(python, "v1"),
        GrpcBackend::start(python, "v2")
    );
    let (v1, v2) = (v1.expect("backend v1"), v2.expect("backend v2"));
    let mut files = service_files(&[("v1", &v1), ("v2", &v2)]);
    files.push(("dr.yaml".into(), subsets_rule(APP, NS, &["v1", "v2"])));
    files.push((
        "vs.yaml".into(),
        weighted_vs(APP, NS, &[("v1", v1_weight), ("v2", v2_weight)]),
    ));
    Canary {
        plane: start_plane(&files).await,
        _v1: v1,
        _v2: v2,
    }
}

/// Runs `client` against `plane` and returns its report, failing if the client did not run at
/// all or if any proxyless client of `plane` has NACKed (gRPC logs the NACK's reason on stderr,
/// and the client's errors usually repeat it).
async fn run(plane: &Plane, client: &XdsClient) -> XdsClientReport {
    let report = client
        .run()
        .await
        .unwrap_or_else(|err| panic!("xds client did not run: {err}"));
    let metrics = http_get(plane.status(), "status", "/metrics", &[])
        .await
        .expect("metrics")
        .2;
    let nacks = proxyless_nacks(&metrics);
    assert!(
        nacks.is_empty(),
        "proxyless gRPC NACKs: {nacks:?}; client report: {report:?}"
    );
    report
}

fn replies(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn share(report: &XdsClientReport, reply: &str) -> f64 {
    let n = report.replies.get(reply).copied().unwrap_or(0);
    100.0 * n as f64 / report.ok.max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_resolves_the_service_and_calls_its_backend() {
    let Some(python) = python_peer() else { return };
    let backend = GrpcBackend::start(&python, "b1").await.expect("backend");
    let plane = start_plane(&service_files(&[("v1", &backend)])).await;

    let report = run(
        &plane,
        &XdsClient::python(&python, plane.xds(), TARGET)
            .node_id("python-client")
            .count(50)
            .timeout(RUN_TIMEOUT),
    )
    .await;
    assert_eq!(
        (report.ok, report.failed, &report.replies),
        (50, 0, &replies(&[("b1:hello", 50)])),
        "{report:?}"
    );

    // The service's first port also answers to the bare host name.
    let bare = run(
        &plane,
        &XdsClient::python(&python, plane.xds(), &format!("xds:///{HOST}"))
            .node_id("python-bare-host")
            .count(5)
            .timeout(RUN_TIMEOUT),
    )
    .await;
    assert_eq!(
        (bare.failed, &bare.replies),
        (0, &replies(&[("b1:hello", 5)])),
        "{bare:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_grpc_client_resolves_the_service_and_calls_its_backend() {
    let Some(python) = python_peer() else { return };
    let Some(node_dir) = require_peer("node with @grpc/grpc-js-xds", node_client_dir()) else {
        return;
    };
    let backend = GrpcBackend::start(&python, "b1").await.expect("backend");
    let plane = start_plane(&service_files(&[("v1", &backend)])).await;

    let report = run(
        &plane,
        &XdsClient::node(&node_dir, plane.xds(), TARGET)
            .node_id("node-client")
            .count(50)
            .timeout(RUN_TIMEOUT),
    )
    .await;
    assert_eq!(
        (report.ok, report.failed, &report.replies),
        (50, 0, &replies(&[("b1:hello", 50)])),
        "{report:?}"
    );
}

/// gRPC picks a weighted cluster at random per call, so the share over n calls is binomial:
/// over 1,000 calls at 20 % one standard deviation is 1.26 points; the test allows 4σ (5.06
/// points; a spurious failure about once in 16,000 runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_splits_80_20_between_subsets() {
    let Some(python) = python_peer() else { return };
    let c = canary(&python, 80, 20).await;

    let report = run(
        &c.plane,
        &XdsClient::python(&python, c.plane.xds(), TARGET)
            .node_id("python-split")
            .count(1000)
            .timeout(RUN_TIMEOUT),
    )
    .await;
    assert_eq!((report.ok, report.failed), (1000, 0), "{report:?}");
    eprintln!("80/20 split over 1,000 calls: {:?}", report.replies);
    let (v1, v2) = (share(&report, "v1:hello"), share(&report, "v2:hello"));
    let tolerance = jalur_testkit::yaml::four_sigma(20.0, 1000);
    assert!(
        (v1 - 80.0).abs() <= tolerance && (v2 - 20.0).abs() <= tolerance,
        "80/20 split observed as {:?} (±{tolerance:.2} points)",
        report.replies
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_edit_reaches_new_python_grpc_clients() {
    let Some(python) = python_peer() else { return };
    let c = canary(&python, 80, 20).await;
    let client = |id: &str, count: u32| {
        XdsClient::python(&python, c.plane.xds(), TARGET)
            .node_id(id)
            .count(count)
            .timeout(RUN_TIMEOUT)
    };

    // Before the edit v1 takes most calls (all 40 going to v2 has odds of 0.2^40).
    let before = run(&c.plane, &client("python-before", 40)).await;
    assert!(
        before.failed == 0 && before.replies.get("v1:hello").is_some_and(|n| *n > 0),
        "{before:?}"
    );

    // The edit is served once the mesh is rebuilt from it. A client started after that runs
    // once and must see only v2, with no failure (no re-run until a run comes out clean).
    let state = &c.plane.plane.state;
    let unedited = state.store.current();
    c.plane
        .write("vs.yaml", &weighted_vs(APP, NS, &[("v1", 0), ("v2", 100)]));
    assert_eventually(
        "the mesh is rebuilt from the 0/100 edit",
        Duration::from_secs(10),
        || async {
            let edited = state.store.current();
            if *edited != *unedited && *state.mesh.load().config == *edited {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    let after = run(&c.plane, &client("python-after", 200)).await;
    assert_eq!(
        (after.failed, &after.replies),
        (0, &replies(&[("v2:hello", 200)])),
        "{after:?}"
    );
}

/// gRPC resolves a LOGICAL_DNS cluster's one hostname itself, so a DNS ServiceEntry with two
/// endpoints reaches it as an aggregate of two LOGICAL_DNS clusters: one endpoint takes the calls
/// and the other is its fail-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_service_entry_with_two_endpoints_fails_over_for_grpc_clients() {
    let Some(python) = python_peer() else { return };
    let Some(node_dir) = require_peer("node with @grpc/grpc-js-xds", node_client_dir()) else {
        return;
    };
    let (b1, b2) = tokio::join!(
        GrpcBackend::start(&python, "b1"),
        GrpcBackend::start(&python, "b2")
    );
    let mut backends = vec![b1.expect("backend b1"), b2.expect("backend b2")];
    let host = "legacy-echo.example.internal";
    let target = format!("xds:///{host}:7070");
    let endpoints: Vec<(&str, u16)> = backends
        .iter()
        .map(|b| ("localhost", b.addr().port()))
        .collect();
    let plane = start_plane(&[(
        "dns.yaml".to_string(),
        grpc_dns_service_entry("legacy-echo", NS, host, &endpoints),
    )])
    .await;
    let client = |id: &str| {
        XdsClient::python(&python, plane.xds(), &target)
            .node_id(id)
            .count(20)
            .timeout(RUN_TIMEOUT)
    };

    let first = run(&plane, &client("python-dns-first")).await;
    let serving = match first.replies.keys().collect::<Vec<_>>().as_slice() {
        [reply] if first.ok == 20 => reply.trim_end_matches(":hello").to_string(),
        _ => panic!("all 20 calls go to one endpoint: {first:?}"),
    };

    backends.retain(|b| b.name() != serving);
    let other = backends[0].name().to_string();
    let want = replies(&[(&format!("{other}:hello"), 20)]);
    let failover = run(&plane, &client("python-dns-failover")).await;
    assert_eq!(
        (failover.failed, &failover.replies),
        (0, &want),
        "{failover:?}"
    );
    let node = run(
        &plane,
        &XdsClient::node(&node_dir, plane.xds(), &target)
            .node_id("node-dns-failover")
            .count(20)
            .timeout(RUN_TIMEOUT),
    )
    .await;
    assert_eq!((node.failed, &node.replies), (0, &want), "{node:?}");
}

/// While a client is connected (and calling), /debug/syncz lists it as a proxyless gRPC client,
/// in sync on all four types, with grpcio's own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_shows_in_syncz_in_sync_with_its_version() {
    let Some(python) = python_peer() else { return };
    let backend = GrpcBackend::start(&python, "b1").await.expect("backend");
    let plane = start_plane(&service_files(&[("v1", &backend)])).await;

    // Enough calls to stay connected while syncz is read; dropping the task kills the client.
    let long_run = XdsClient::python(&python, plane.xds(), TARGET)
        .node_id("python-syncz")
        .count(1_000_000)
        .timeout(RUN_TIMEOUT);
    let running = tokio::spawn(async move { long_run.run().await });

    let listed = eventually(Duration::from_secs(30), || async {
        let syncz = plane.get_json("/debug/syncz").await;
        let me = syncz_client(&syncz, "python-syncz").ok_or(format!("not listed: {syncz}"))?;
        let nacks = nacks_in(&me);
        if !nacks.is_empty() {
            return Err(format!("NACKed: {nacks:?}"));
        }
        let acked = |t: &str| {
            let nonce = &me["types"][t]["acked_nonce"];
            nonce.as_str().is_some_and(|n| !n.is_empty()) && *nonce == me["types"][t]["sent_nonce"]
        };
        if me["in_sync"] == true && ["lds", "rds", "cds", "eds"].iter().all(|t| acked(t)) {
            Ok(me)
        } else {
            Err(format!("not in sync yet: {me}"))
        }
    })
    .await;
    let me = match listed {
        Ok(me) => {
            running.abort();
            me
        }
        Err(err) if running.is_finished() => panic!(
            "the client is not in syncz, in sync on lds/rds/cds/eds: {err}\nit ended: {:?}",
            running.await
        ),
        Err(err) => {
            running.abort();
            panic!("the client is not in syncz, in sync on lds/rds/cds/eds: {err}")
        }
    };

    assert_eq!(me["kind"], "proxyless-grpc", "{me}");
    assert_eq!(me["mode"], "sotw", "{me}");
    // grpc-core sends user_agent_name "gRPC C-core <platform> Python" and user_agent_version
    // "C-core <core version> Python <grpcio version>"; syncz joins them with a space.
    let grpcio = grpcio_version(&python).await;
    let version = me["client_version"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("gRPC ") && version.ends_with(&format!("Python {grpcio}")),
        "client_version names grpcio and its version {grpcio}: {me}"
    );
}

async fn grpcio_version(python: &Path) -> String {
    let out = tokio::process::Command::new(python)
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .await
        .expect("python runs");
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && version.starts_with("1."),
        "grpcio version {version:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    version
}
