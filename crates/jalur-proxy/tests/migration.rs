//! Migration drills: a service moves from its legacy instances (registered in a Consul protocol
//! DOUBLE — no Consul server is obtainable here; the double follows Consul's documented HTTP
//! API) to meshed instances behind jalur sidecars, through a fronting jalur proxy, under steady
//! mixed HTTP and gRPC load. The controller runs inside the control plane and reads the fronting
//! proxy's `/stats/prometheus` (or a real Prometheus scraping it).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{jalur_sidecar, sidecar_opts, Plane};
use jalur_control::migrate::{Command, MigrationStatus, Phase, Verdict};
use jalur_demo::app::SampleApp;
use jalur_demo::load::{LoadGen, LoadProtocol, LoadSpec, LoadTarget, Sample};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::consul::{ConsulDouble, ConsulOpts, Instance, Status};
use jalur_testkit::{assert_eventually, http_get};

const ROUTE: &str = "reviews.service.consul";
const RATE: u32 = 320;

struct Fleet {
    plane: Plane,
    _consul: ConsulDouble,
    legacy: Vec<SampleApp>,
    mesh: Vec<SampleApp>,
    sidecars: Vec<Proxy>,
    front: Proxy,
    front_addr: SocketAddr,
}

/// Two legacy instances in Consul, two meshed ones behind their sidecars, one fronting proxy;
/// `migration` is the Migration's spec body after `stages:`.
async fn fleet(migration: &str, opts: jalur_control::Options) -> Fleet {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    let mut legacy = Vec::new();
    for i in 1..=2 {
        let app = SampleApp::start("reviews", &format!("legacy-{i}")).expect("legacy app");
        consul.register(
            Instance::new(
                "reviews",
                &format!("reviews-{i}"),
                "127.0.0.1",
                app.addr().port(),
            )
            .meta("protocol", "http2")
            .status(Status::Passing),
        );
        legacy.push(app);
    }
    let files = vec![
        ("consul.yaml", format!("apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {{name: legacy, namespace: default}}\nspec:\n  addresses: [\"{}\"]\n  wait: 2s\n  servicePort: 9080\n", consul.url())),
        ("svc.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews, namespace: default}\nspec:\n  hosts: [reviews.default.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {number: 9080, name: http2, protocol: HTTP2}\n".to_string()),
        ("migration.yaml", format!("apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  legacy: {{registry: legacy, service: reviews}}\n  mesh: {{host: reviews}}\n{migration}")),
    ];
    let plane = Plane::start_with(&files, opts).await;
    let mut mesh = Vec::new();
    let mut sidecars = Vec::new();
    for i in 1..=2 {
        let app = SampleApp::start("reviews", &format!("mesh-{i}")).expect("mesh app");
        let sidecar = Proxy::start(ProxyOptions {
            app_port: Some(app.addr().port()),
            ports: vec!["http2:9080".parse().expect("port")],
            labels: [("version".to_string(), format!("mesh-{i}"))].into(),
            ..sidecar_opts(plane.xds, "reviews", "default")
        })
        .await
        .expect("meshed instance's sidecar");
        mesh.push(app);
        sidecars.push(sidecar);
    }
    let (front, front_addr) = jalur_sidecar(sidecar_opts(plane.xds, "front", "default")).await;
    // Before the migration starts the route is the legacy path only; the mesh path is ready.
    assert_eventually(
        "the front reaches the legacy path",
        Duration::from_secs(20),
        || async {
            match http_get(front_addr, ROUTE, "/", &[]).await {
                Ok((200, h, _))
                    if h.get("x-jalur-instance")
                        .is_some_and(|v| v.to_str().is_ok_and(|v| v.starts_with("legacy"))) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eventually(
        "both meshed instances are registered",
        Duration::from_secs(20),
        || async {
            let n = plane
                .control()
                .state
                .mesh
                .load()
                .endpoints
                .iter()
                .filter(|(k, _)| k.contains("reviews.default.svc.cluster.local"))
                .map(|(_, v)| v.len())
                .sum::<usize>();
            if n >= 2 {
                Ok(())
            } else {
                Err(format!("{n} endpoints"))
            }
        },
    )
    .await;
    Fleet {
        plane,
        _consul: consul,
        legacy,
        mesh,
        sidecars,
        front,
        front_addr,
    }
}

impl Fleet {
    fn load(&self) -> LoadGen {
        let target = |name: &str, protocol| LoadTarget {
            name: name.into(),
            addr: self.front_addr,
            authority: ROUTE.into(),
            protocol,
            weight: 1,
        };
        LoadGen::start(LoadSpec {
            rate: RATE,
            targets: vec![
                target("http", LoadProtocol::Http),
                target("grpc", LoadProtocol::Grpc),
            ],
            timeout: Duration::from_secs(10),
        })
    }

    fn command(&self, c: Command) -> MigrationStatus {
        self.plane
            .control()
            .state
            .migrations
            .command("reviews", None, c)
            .expect("command accepted")
    }

    fn status(&self) -> MigrationStatus {
        self.plane
            .control()
            .state
            .migrations
            .status("reviews", None)
            .expect("status")
    }

    async fn wait_phase(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&MigrationStatus) -> bool,
    ) -> MigrationStatus {
        assert_eventually(what, within, || async {
            let s = self.status();
            if done(&s) {
                Ok(s)
            } else {
                Err(format!(
                    "{:?} stage {:?} at {} %, last gates {:?}",
                    s.phase, s.stage, s.requested_percent, s.last_gates
                ))
            }
        })
        .await
    }

    async fn shutdown(self) {
        self.front.shutdown().await;
        for s in self.sidecars {
            s.shutdown().await;
        }
        for a in self.legacy.into_iter().chain(self.mesh) {
            a.stop();
        }
    }
}

fn is_mesh(s: &Sample) -> bool {
    s.instance.as_deref().is_some_and(|i| i.starts_with("mesh"))
}

/// Unix ms -> time since the load started.
fn since_load(load_start_unix_ms: u64, at_ms: u64) -> Duration {
    Duration::from_millis(at_ms.saturating_sub(load_start_unix_ms))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| !s.ok)
        .take(10)
        .map(|s| {
            format!(
                "{:?} target {} status {} grpc {:?} {:?}",
                s.at, s.target, s.status, s.grpc_status, s.error
            )
        })
        .collect()
}

/// Observed mesh share of every stage, measured over the part of its hold after the proxies
/// took its weights (`Holding`) until the next stage was written.
fn stage_shares(
    status: &MigrationStatus,
    load_start: u64,
    samples: &[Sample],
) -> Vec<(u32, f64, u64)> {
    let mut out = Vec::new();
    for (weight, from, to) in status.held_stages() {
        let Some(to) = to else { continue };
        let (total, mesh) = jalur_demo::load::share(
            samples,
            since_load(load_start, from),
            since_load(load_start, to),
            is_mesh,
        );
        if total > 0 {
            out.push((weight, 100.0 * mesh as f64 / total as f64, total));
        }
    }
    out
}

/// ≥ 300 rps, HTTP and gRPC mixed: 0 -> 100 % through four stages, no failed request, each
/// stage's observed share within 2 points of the requested one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_moves_a_service_to_the_mesh_in_four_stages_without_a_failed_request() {
    let fleet = fleet(
        "  stages: [{weight: 5, hold: 3s}, {weight: 25, hold: 3s}, {weight: 50, hold: 3s}, {weight: 100, hold: 3s}]\n  gates: {maxErrorRate: 0.01, maxP99Ratio: 10, p99Allowance: 250ms, minRequests: 10, window: 3s}\n",
        Plane::options(),
    )
    .await;
    let load_start = unix_ms();
    let load = fleet.load();
    let s = fleet.command(Command::Start);
    assert_eq!((s.phase, s.requested_percent), (Phase::Shifting, 5));
    let done = fleet
        .wait_phase("the migration is promoted", Duration::from_secs(90), |s| {
            s.phase.is_terminal()
        })
        .await;
    let samples = load.stop().await;
    assert_eq!(done.phase, Phase::Promoted, "history: {:#?}", done.history);
    let failed = samples.iter().filter(|s| !s.ok).count();
    let secs = samples.last().map(|s| s.at.as_secs_f64()).unwrap_or(1.0);
    let grpc = samples.iter().filter(|s| s.target == 1 && s.ok).count();
    eprintln!(
        "{} requests in {secs:.1}s ({:.0} rps), {grpc} gRPC, {failed} failed",
        samples.len(),
        samples.len() as f64 / secs
    );
    assert!(samples.len() as f64 / secs >= 300.0, "load below 300 rps");
    assert!(grpc > samples.len() / 3, "gRPC is half the load");
    assert_eq!(failed, 0, "failed requests: {:?}", failures(&samples));
    let shares = stage_shares(&done, load_start, &samples);
    eprintln!("stage shares (requested, observed, requests): {shares:?}");
    assert_eq!(
        shares.iter().map(|s| s.0).collect::<Vec<_>>(),
        [5, 25, 50, 100]
    );
    for (requested, observed, _) in &shares {
        assert!(
            (observed - f64::from(*requested)).abs() <= 2.0,
            "stage {requested} %: observed {observed:.2} % ({shares:?})"
        );
    }
    // The controller measured the same split from the proxies' own metrics.
    // The controller measured the same split from the front's own metrics: each advance
    // carries the judged stage's observed share (a scrape interval of slack at its edges).
    let mut holding = None;
    let mut judged = 0;
    for t in &done.history {
        if t.to == Phase::Holding {
            holding = Some(t.weight);
        } else if let (Some(w), Some(g)) = (holding, t.gates.as_ref()) {
            let observed = g.observed_mesh_percent.expect("a share with requests");
            assert!(
                (observed - f64::from(w)).abs() <= 5.0,
                "stage {w} %: the controller observed {observed:.1} %"
            );
            judged += 1;
        }
    }
    assert_eq!(
        judged, 4,
        "every advance carries its gate values: {:#?}",
        done.history
    );
    fleet.shutdown().await;
}

/// The meshed instances start answering 10 % errors mid-migration: the error-rate gate trips,
/// the route goes back to the legacy path by itself, and the last request on the mesh path is
/// sent at most 500 ms after the breach — with the default 100 ms config debounce, which a
/// rollback does not wait for. The failures are the faulty answers inside the gate's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_drill_rolls_back_to_the_legacy_path_within_500_ms_of_the_breach() {
    let opts = jalur_control::Options {
        debounce: jalur_control::Options::default().debounce,
        ..Plane::options()
    };
    let fleet = fleet(
        "  stages: [{weight: 25, hold: 60s}, {weight: 100, hold: 5s}]\n  gates: {maxErrorRate: 0.05, maxP99Ratio: 10, p99Allowance: 250ms, minRequests: 20, window: 3s}\n  onFailure: rollback\n",
        opts,
    )
    .await;
    let load_start = unix_ms();
    let load = fleet.load();
    fleet.command(Command::Start);
    fleet
        .wait_phase(
            "stage 1 holds with clean gates",
            Duration::from_secs(30),
            |s| {
                s.phase == Phase::Holding
                    && s.last_gates
                        .as_ref()
                        .is_some_and(|g| g.mesh.requests >= 40 && g.verdict == Verdict::Pass)
            },
        )
        .await;
    let fault_at = unix_ms();
    for app in &fleet.mesh {
        app.set_fault_percent(10);
    }
    let rolled = fleet
        .wait_phase(
            "the migration rolls back by itself",
            Duration::from_secs(20),
            |s| s.phase.is_terminal(),
        )
        .await;
    assert_eq!(
        rolled.phase,
        Phase::RolledBack,
        "history: {:#?}",
        rolled.history
    );
    let breach = rolled.history.last().expect("rollback recorded");
    let gates = breach
        .gates
        .as_ref()
        .expect("the breach carries its gate values");
    assert!(
        gates.mesh_error_rate.is_some_and(|r| r > 0.05),
        "rolled back on the error-rate gate: {gates:?}"
    );
    // Keep the load on a little, to see it all on the legacy path.
    let settled = since_load(load_start, breach.at_ms) + Duration::from_secs(4);
    assert_eventually(
        "load runs past the rollback",
        Duration::from_secs(10),
        || async {
            let at = load.samples().last().map(|s| s.at).unwrap_or_default();
            if at > settled {
                Ok(())
            } else {
                Err(format!("{at:?}"))
            }
        },
    )
    .await;
    let samples = load.stop().await;
    let breach_at = since_load(load_start, breach.at_ms);
    let fault = since_load(load_start, fault_at);
    let last_mesh = samples
        .iter()
        .filter(|s| is_mesh(s))
        .map(|s| s.at)
        .max()
        .unwrap_or_default();
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    let mesh_in_window = samples
        .iter()
        .filter(|s| is_mesh(s) && s.at >= fault && s.at <= breach_at + Duration::from_millis(500))
        .count();
    eprintln!(
        "fault at {fault:?}, breach detected {:.2}s later, last mesh request {:.0} ms after the breach; {} failed of {} mesh-path requests since the fault ({} requests in all)",
        (breach_at.saturating_sub(fault)).as_secs_f64(),
        last_mesh.as_secs_f64() * 1000.0 - breach_at.as_secs_f64() * 1000.0,
        failed.len(),
        mesh_in_window,
        samples.len()
    );
    // From the verdict: one rebuild, one push, the front applying it. What the README claims.
    assert!(
        last_mesh <= breach_at + Duration::from_millis(500),
        "a request reached the mesh path {:?} after the breach",
        last_mesh.saturating_sub(breach_at)
    );
    assert!(!failed.is_empty(), "the fault was seen");
    for f in &failed {
        assert!(
            // A request sent just before the fault may be answered just after it.
            f.at + Duration::from_millis(250) >= fault
                && f.at <= breach_at + Duration::from_millis(500),
            "a failure outside the fault's window: {:?}",
            failures(&samples)
        );
    }
    // 10 % of the mesh path's requests between the fault and the rollback, with slack for
    // the deterministic fault counter's phase.
    // Detected within the gate's window (3 s) plus a tick, a scrape and slack for a busy CI
    // machine: the failures are the faulty answers of that window, no more.
    let detection = breach_at.saturating_sub(fault);
    assert!(
        detection <= Duration::from_millis(3000 + 200 + 500 + 1500),
        "the breach was detected {detection:?} after the fault"
    );
    let bound = mesh_in_window / 10 + 3;
    // 10 % of the mesh path's share (25 % of 320 rps) over window + slack.
    let fixed = (0.10 * 0.25 * f64::from(RATE) * 5.2).ceil() as usize + 4;
    assert!(
        failed.len() <= fixed,
        "{} failed, at most {fixed} expected",
        failed.len()
    );
    assert!(
        failed.len() <= bound,
        "{} failed, at most {bound} expected",
        failed.len()
    );
    fleet.shutdown().await;
}

/// The control plane restarts mid-migration: it comes back at the same stage with the same
/// weights (state in the config store), waits for its proxies to re-announce before answering,
/// and the migration finishes — no request fails across the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restarted_mid_migration_resumes_at_the_same_stage() {
    let mut opts = Plane::options();
    opts.registry_grace = Duration::from_secs(5);
    let mut fleet = fleet(
        "  stages: [{weight: 10, hold: 2s}, {weight: 30, hold: 8s}, {weight: 60, hold: 2s}, {weight: 100, hold: 2s}]\n  gates: {maxErrorRate: 0.01, maxP99Ratio: 10, p99Allowance: 250ms, minRequests: 10, window: 2s}\n",
        opts,
    )
    .await;
    let load = fleet.load();
    fleet.command(Command::Start);
    fleet
        .wait_phase("stage 2 holds", Duration::from_secs(30), |s| {
            s.phase == Phase::Holding && s.stage == Some(2)
        })
        .await;
    fleet.plane.restart().await;
    let restarted = first_ack(&fleet, load.started_at()).await;
    let s = fleet.status();
    assert_eq!(
        (s.stage, s.requested_percent),
        (Some(2), 30),
        "resumed at the same stage: {s:?}"
    );
    let served = fleet.plane.control().state.migrations.current_overlay();
    assert_eq!(
        served.get("default/reviews"),
        Some(&30),
        "the first push carries stage 2's weights"
    );
    let done = fleet
        .wait_phase(
            "the migration finishes after the restart",
            Duration::from_secs(60),
            |s| s.phase.is_terminal(),
        )
        .await;
    let samples = load.stop().await;
    let failed = samples.iter().filter(|s| !s.ok).count();
    eprintln!(
        "{} requests across the restart, {failed} failed; the front's first ACK of the restarted plane {restarted:?} into the load",
        samples.len()
    );
    // The traffic, not only the controller's memory: once the front has taken the restarted
    // plane's first push, the split is still stage 2's.
    let (total, mesh) = jalur_demo::load::share(
        &samples,
        restarted,
        restarted + Duration::from_secs(2),
        is_mesh,
    );
    let observed = 100.0 * mesh as f64 / total.max(1) as f64;
    assert!(
        total > 300 && (observed - 30.0).abs() <= 2.0,
        "{observed:.1} % of {total} requests on the mesh path in the 2 s after the front's first ACK of the restarted plane ({restarted:?} into the load)"
    );
    assert_eq!(
        done.phase,
        Phase::Promoted,
        "failures {:?}; history: {:#?}",
        failures(&samples),
        done.history
    );
    assert_eq!(failed, 0, "failed requests: {:?}", failures(&samples));
    fleet.shutdown().await;
}

/// When (since `load_started`) the front first ACKed everything the (restarted) control plane
/// sent it: from then on its routes are the new plane's. Polled every 2 ms, so the moment is
/// that precise.
async fn first_ack(fleet: &Fleet, load_started: tokio::time::Instant) -> Duration {
    let ads = fleet.plane.control().state.ads.clone();
    let node = fleet.front.node_id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tick.tick().await;
        let acked = ads.sync().client(&node).is_some_and(|c| {
            let sent = c.types.values().filter(|t| !t.sent_nonce.is_empty());
            c.types.values().any(|t| !t.sent_nonce.is_empty())
                && sent.clone().all(|t| t.acked_nonce == t.sent_nonce)
        });
        if acked {
            return load_started.elapsed();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the front never ACKed the restarted plane: {:?}",
            ads.sync().client(&node)
        );
    }
}

/// The same engine reading a real Prometheus (Debian package, started here, scraping the
/// fronting proxy) instead of scraping the proxies itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_with_a_real_prometheus_as_the_metrics_source() {
    use jalur_testkit::prometheus::{prometheus_binary, Prometheus};
    let Some(binary) = jalur_testkit::require_peer("prometheus", prometheus_binary()) else {
        return;
    };
    let prometheus = Prometheus::start(&binary, &[], Duration::from_secs(1))
        .await
        .expect("prometheus starts");
    let mut opts = Plane::options();
    opts.prometheus = Some(prometheus.url.clone());
    let fleet = fleet(
        "  stages: [{weight: 20, hold: 6s}, {weight: 100, hold: 6s}]\n  gates: {maxErrorRate: 0.01, maxP99Ratio: 10, p99Allowance: 250ms, minRequests: 10, window: 5s}\n",
        opts,
    )
    .await;
    prometheus
        .set_targets(&[fleet.front.stats_addr])
        .expect("prometheus scrapes the front");
    let load = fleet.load();
    fleet.command(Command::Start);
    let done = fleet
        .wait_phase(
            "promoted on Prometheus's numbers",
            Duration::from_secs(120),
            |s| s.phase.is_terminal(),
        )
        .await;
    let samples = load.stop().await;
    assert_eq!(done.phase, Phase::Promoted, "history: {:#?}", done.history);
    assert!(
        done.metrics_source.contains("prometheus"),
        "{}",
        done.metrics_source
    );
    let judged = done
        .history
        .iter()
        .filter_map(|t| t.gates.as_ref())
        .find(|g| g.mesh.requests > 0)
        .expect("an advance judged on Prometheus's numbers");
    assert!(
        judged.legacy.requests > 0,
        "both paths measured side by side: {judged:?}"
    );
    assert_eq!(
        samples.iter().filter(|s| !s.ok).count(),
        0,
        "{:?}",
        failures(&samples)
    );
    fleet.shutdown().await;
}

/// The same engine runs a version canary inside the mesh: subsets v1 -> v2 of one host, both
/// behind jalur sidecars, judged by `destination_version` (the subset) in the front's metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_between_subsets_of_a_meshed_service() {
    const HOST: &str = "reviews.default.svc.cluster.local";
    let files = [
        ("svc.yaml", format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9080, name: http2, protocol: HTTP2}}\n")),
        ("dr.yaml", format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: default}}\nspec:\n  host: {HOST}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n")),
        ("canary.yaml", "apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: reviews-v2, namespace: default}\nspec:\n  legacy: {host: reviews, subset: v1}\n  mesh: {host: reviews, subset: v2}\n  stages: [{weight: 20, hold: 3s}, {weight: 60, hold: 3s}, {weight: 100, hold: 2s}]\n  gates: {maxErrorRate: 0.01, maxP99Ratio: 10, p99Allowance: 250ms, minRequests: 10, window: 3s}\n".to_string()),
    ];
    let plane = Plane::start(&files).await;
    let mut apps = Vec::new();
    let mut sidecars = Vec::new();
    for v in ["v1", "v2"] {
        let app = SampleApp::start("reviews", v).expect("app");
        sidecars.push(
            Proxy::start(ProxyOptions {
                app_port: Some(app.addr().port()),
                ports: vec!["http2:9080".parse().expect("port")],
                labels: [("version".to_string(), v.to_string())].into(),
                ..sidecar_opts(plane.xds, "reviews", "default")
            })
            .await
            .expect("sidecar"),
        );
        apps.push(app);
    }
    let (front, front_addr) = jalur_sidecar(sidecar_opts(plane.xds, "front", "default")).await;
    assert_eventually("both versions answer", Duration::from_secs(20), || async {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            if let Ok((200, h, _)) = http_get(front_addr, HOST, "/", &[]).await {
                if let Some(v) = h.get("x-jalur-instance").and_then(|v| v.to_str().ok()) {
                    seen.insert(v.to_string());
                }
            }
        }
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    let load_start = unix_ms();
    let target = |name: &str, protocol| LoadTarget {
        name: name.into(),
        addr: front_addr,
        authority: HOST.into(),
        protocol,
        weight: 1,
    };
    let load = LoadGen::start(LoadSpec {
        rate: 300,
        targets: vec![
            target("http", LoadProtocol::Http),
            target("grpc", LoadProtocol::Grpc),
        ],
        timeout: Duration::from_secs(10),
    });
    let migrations = &plane.control().state.migrations;
    migrations
        .command("reviews-v2", None, Command::Start)
        .expect("start");
    let done = assert_eventually(
        "the canary is promoted",
        Duration::from_secs(60),
        || async {
            let s = migrations.status("reviews-v2", None).expect("status");
            if s.phase.is_terminal() {
                Ok(s)
            } else {
                Err(format!("{:?} {:?}", s.phase, s.last_gates))
            }
        },
    )
    .await;
    let samples = load.stop().await;
    assert_eq!(done.phase, Phase::Promoted, "history: {:#?}", done.history);
    assert_eq!(
        samples.iter().filter(|s| !s.ok).count(),
        0,
        "{:?}",
        failures(&samples)
    );
    let judged = done
        .history
        .iter()
        .filter_map(|t| t.gates.as_ref())
        .next()
        .expect("gate values recorded");
    assert!(
        judged.mesh.requests > 0 && judged.legacy.requests > 0,
        "v1 and v2 measured apart by subset: {judged:?}"
    );
    // Every stage held, in order, each with its requested share of the traffic.
    let held = done.held_stages();
    assert_eq!(
        held.iter().map(|h| h.0).collect::<Vec<_>>(),
        [20, 60, 100],
        "history: {:#?}",
        done.history
    );
    for (weight, from, to) in held {
        let to = to.expect("a promoted canary's stages all ended");
        let (total, v2) = jalur_demo::load::share(
            &samples,
            since_load(load_start, from),
            since_load(load_start, to),
            |s| s.instance.as_deref() == Some("v2"),
        );
        let observed = 100.0 * v2 as f64 / total.max(1) as f64;
        assert!(
            total >= 300 && (observed - f64::from(weight)).abs() <= 2.0,
            "stage {weight} %: v2 took {observed:.1} % of {total}"
        );
    }
    front.shutdown().await;
    for s in sidecars {
        s.shutdown().await;
    }
}
