//! The state machine driven tick by tick against canned metrics, on paused tokio time: holds,
//! push-confirm timeouts and gate windows are measured on that clock, never the wall clock.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use super::metrics::{MetricsError, PathStats};
use super::*;

#[derive(Default)]
struct Canned {
    stats: Mutex<HashMap<String, PathStats>>,
    /// Every window asked for, in order.
    windows: Mutex<Vec<Duration>>,
}

impl Canned {
    fn set(&self, host: &str, requests: f64, errors: f64, p99_ms: f64) {
        let stats = PathStats {
            requests,
            errors,
            p99_ms: Some(p99_ms),
        };
        self.stats
            .lock()
            .expect("lock")
            .insert(host.to_string(), stats);
    }

    fn windows(&self) -> Vec<Duration> {
        self.windows.lock().expect("lock").clone()
    }
}

impl MetricsSource for Canned {
    fn describe(&self) -> String {
        "canned".into()
    }
    fn stats<'a>(
        &'a self,
        path: &'a PathSelector,
        window: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PathStats, MetricsError>> + Send + 'a>> {
        self.windows.lock().expect("lock").push(window);
        let s = self
            .stats
            .lock()
            .expect("lock")
            .get(&path.destination_service)
            .cloned();
        Box::pin(async move { Ok(s.unwrap_or_default()) })
    }
}

const LEGACY: &str = "reviews.service.consul";
const MESH: &str = "reviews.shop.svc.cluster.local";
const QUICK: &str = "[{weight: 10, hold: 0s}, {weight: 50, hold: 0s}, {weight: 100, hold: 0s}]";
const SLOW: &str = "[{weight: 10, hold: 60s}, {weight: 100, hold: 60s}]";

struct Rig {
    dir: PathBuf,
    source: Arc<Canned>,
    generation: Arc<AtomicU64>,
    m: Migrations,
}

fn rig(name: &str, on_failure: &str, stages: &str) -> Rig {
    let dir = std::env::temp_dir().join(format!("jalur-migrate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("m.yaml"),
        format!(
            r#"
apiVersion: jalur.dev/v1alpha1
kind: Migration
metadata: {{name: reviews, namespace: shop}}
spec:
  legacy: {{host: {LEGACY}}}
  mesh: {{host: reviews}}
  stages: {stages}
  gates: {{maxErrorRate: 0.05, minRequests: 10, window: 3s}}
  onFailure: {on_failure}
"#
        ),
    )
    .expect("write");
    restart(dir)
}

fn restart(dir: PathBuf) -> Rig {
    let store = ConfigStore::open(vec![dir.clone()]).expect("valid config");
    let source = Arc::new(Canned::default());
    let generation = Arc::new(AtomicU64::new(0));
    let m = Migrations::new(
        store,
        Some(dir.join(".jalur")),
        source.clone(),
        generation.clone(),
    );
    Rig {
        dir,
        source,
        generation,
        m,
    }
}

impl Rig {
    /// `after` of (paused) time, then one controller tick after a push (as the rebuild loop
    /// would bump the generation).
    async fn tick_after(&self, after: Duration) -> MigrationStatus {
        tokio::time::advance(after).await;
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.m.tick().await;
        self.status()
    }

    async fn tick(&self) -> MigrationStatus {
        self.tick_after(Duration::ZERO).await
    }

    fn status(&self) -> MigrationStatus {
        self.m.status("reviews", None).expect("status")
    }

    fn healthy(&self) {
        self.source.set(MESH, 100.0, 0.0, 3.0);
        self.source.set(LEGACY, 900.0, 0.0, 2.0);
    }

    /// Clients as the ADS server would report them: (generation, in sync).
    fn clients(&self, clients: Vec<(u64, bool)>) {
        self.m.set_clients(Arc::new(move || {
            clients
                .iter()
                .map(|&(generation, in_sync)| ClientProgress {
                    generation,
                    in_sync,
                })
                .collect()
        }));
    }
}

#[tokio::test(start_paused = true)]
async fn healthy_stages_advance_to_promoted_and_every_step_is_recorded() {
    let r = rig("advance", "rollback", QUICK);
    assert_eq!(r.status().phase, Phase::Pending);
    assert!(
        r.m.current_overlay().is_empty(),
        "nothing written before start"
    );
    r.m.command("reviews", None, Command::Start).expect("start");
    assert_eq!(r.m.current_overlay().get("shop/reviews"), Some(&10));
    r.healthy();
    // The push is confirmed at once (no proxy connected): the stage holds, but is not judged
    // before it has held a second.
    let s = r.tick().await;
    assert_eq!((s.phase, s.stage), (Phase::Holding, Some(1)));
    assert!(
        matches!(&s.last_gates, Some(g) if matches!(&g.verdict, Verdict::Insufficient(why) if why.contains("held 0 ms"))),
        "{:?}",
        s.last_gates
    );
    let s = r.tick_after(MIN_JUDGED_HOLD).await;
    assert_eq!(
        (s.phase, s.stage, s.requested_percent),
        (Phase::Shifting, Some(2), 50)
    );
    let mut s = s;
    for _ in 0..6 {
        s = r.tick_after(MIN_JUDGED_HOLD).await;
    }
    assert_eq!((s.phase, s.requested_percent), (Phase::Promoted, 100));
    assert_eq!(r.m.current_overlay().get("shop/reviews"), Some(&100));
    let steps: Vec<(Phase, Option<usize>)> = s.history.iter().map(|t| (t.to, t.stage)).collect();
    assert_eq!(
        steps,
        [
            (Phase::Shifting, Some(1)),
            (Phase::Holding, Some(1)),
            (Phase::Shifting, Some(2)),
            (Phase::Holding, Some(2)),
            (Phase::Shifting, Some(3)),
            (Phase::Holding, Some(3)),
            (Phase::Promoted, Some(3))
        ],
        "stage numbers count from 1 in the history as in the status"
    );
    let gates = s.history[2].gates.as_ref().expect("gate values recorded");
    assert_eq!(gates.verdict, Verdict::Pass, "{:?}", s.history[2]);
    assert_eq!(gates.observed_mesh_percent, Some(10.0));
    assert_eq!(
        s.observed_percent, None,
        "a new stage starts without an old stage's numbers"
    );
    // What `jalur migrate status -o json` prints: 1-based stages, counts as integers.
    let json = serde_json::to_value(&s).expect("json");
    assert_eq!(json["history"][0]["stage"], 1);
    assert_eq!(json["history"][2]["gates"]["mesh"]["requests"], 100);
    assert!(json["history"][2]["gates"]["mesh"]["requests"].is_u64());
    assert!(
        s.history[1].reason.contains("no proxy is connected"),
        "a stage nobody took does not claim it reached every proxy: {}",
        s.history[1].reason
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_gate_rolls_back_to_the_legacy_path_at_once() {
    let r = rig("rollback", "rollback", QUICK);
    r.m.command("reviews", None, Command::Start).expect("start");
    r.source.set(MESH, 100.0, 12.0, 3.0);
    r.source.set(LEGACY, 900.0, 0.0, 2.0);
    r.tick().await;
    let s = r.tick_after(MIN_JUDGED_HOLD).await;
    assert_eq!((s.phase, s.requested_percent), (Phase::RolledBack, 0));
    assert_eq!(r.m.current_overlay().get("shop/reviews"), Some(&0));
    let last = s.history.last().expect("a transition");
    let gates = last.gates.as_ref().expect("gate values recorded");
    assert!(
        matches!(&gates.verdict, Verdict::Fail(why) if why.contains("12.00 %") && why.contains("(12 of 100 requests)")),
        "{:?}",
        gates.verdict
    );
}

#[tokio::test(start_paused = true)]
async fn too_few_requests_hold_the_stage_and_pause_policy_keeps_the_weights() {
    let r = rig("pause", "pause", QUICK);
    r.m.command("reviews", None, Command::Start).expect("start");
    r.source.set(MESH, 3.0, 0.0, 3.0);
    r.tick().await;
    let s = r.tick_after(MIN_JUDGED_HOLD).await;
    assert_eq!(
        (s.phase, s.stage),
        (Phase::Holding, Some(1)),
        "3 requests cannot pass a gate"
    );
    assert!(
        matches!(&s.last_gates, Some(g) if g.verdict == Verdict::Insufficient("3 mesh-path requests in the window, 10 needed to judge".into())),
        "{:?}",
        s.last_gates
    );
    // 99 requests: a p99 that is only the slowest request is not judged, so the stage passes.
    r.source.set(MESH, 99.0, 0.0, 90.0);
    r.source.set(LEGACY, 900.0, 0.0, 2.0);
    let s = r.tick().await;
    assert_eq!((s.phase, s.requested_percent), (Phase::Shifting, 50));
    r.source.set(MESH, 100.0, 0.0, 90.0);
    r.tick().await;
    let s = r.tick_after(MIN_JUDGED_HOLD).await;
    assert_eq!(
        (s.phase, s.requested_percent),
        (Phase::Paused, 50),
        "p99 90 ms vs 2 ms over 100 requests"
    );
    assert!(
        r.m.command("reviews", None, Command::Start).is_err(),
        "already running"
    );
    let s =
        r.m.command("reviews", None, Command::Resume)
            .expect("resume");
    assert_eq!(s.phase, Phase::Holding);
}

/// A hold is measured on tokio's clock: paused time that has not advanced holds the stage, and
/// a wall clock that jumps an hour ahead (as the persisted unix timestamps would see it) does
/// not end the hold either.
#[tokio::test(start_paused = true)]
async fn a_hold_is_measured_on_the_monotonic_clock_not_the_wall_clock() {
    let r = rig("monotonic", "rollback", SLOW);
    r.m.command("reviews", None, Command::Start).expect("start");
    r.healthy();
    assert_eq!(r.tick().await.phase, Phase::Holding);
    {
        let mut records = r.m.lock();
        let rec = records.get_mut("shop/reviews").expect("record");
        rec.holding_since_ms -= 3_600_000;
        rec.shifted_at_ms -= 3_600_000;
    }
    let s = r.tick_after(Duration::from_secs(59)).await;
    assert_eq!(
        (s.phase, s.stage),
        (Phase::Holding, Some(1)),
        "59 s of a 60 s hold, whatever the wall clock says"
    );
    assert!((59.0..60.0).contains(&s.held_s), "held {} s", s.held_s);
    let s = r.tick_after(Duration::from_secs(1)).await;
    assert_eq!((s.phase, s.stage), (Phase::Shifting, Some(2)));
    assert!(
        s.history[2].reason.contains("stage 1 held 60s"),
        "{}",
        s.history[2].reason
    );
}

/// A stage holds once every connected proxy has taken a generation built after its weights;
/// one proxy that never does holds it up for 10 s of monotonic time, then the reason says so.
#[tokio::test(start_paused = true)]
async fn push_confirmation_waits_for_every_proxy_and_times_out_on_the_monotonic_clock() {
    let r = rig("push", "rollback", SLOW);
    r.clients(vec![(1_000, true), (0, false)]);
    r.m.command("reviews", None, Command::Start).expect("start");
    assert_eq!(r.tick().await.phase, Phase::Shifting, "one proxy lags");
    let s = r.tick_after(Duration::from_secs(9)).await;
    assert_eq!(s.phase, Phase::Shifting, "9 s: still waiting");
    let s = r.tick_after(Duration::from_millis(1_001)).await;
    assert_eq!(s.phase, Phase::Holding);
    let reason = &s.history.last().expect("transition").reason;
    assert_eq!(
        reason,
        "stage 1 (10 %) not confirmed by 1 of 2 proxies within 10s; holding anyway"
    );

    let r = rig("push-ok", "rollback", SLOW);
    r.clients(vec![(1_000, true), (1_000, true)]);
    r.m.command("reviews", None, Command::Start).expect("start");
    let s = r.tick().await;
    assert_eq!(s.phase, Phase::Holding);
    assert_eq!(
        s.history.last().expect("transition").reason,
        "stage 1 (10 %) reached every proxy (2 connected)"
    );
}

/// The first second of a hold is not judged, and after it the window asked for is the time
/// held (up to the gates' 3 s window): never a moment before the hold began.
#[tokio::test(start_paused = true)]
async fn the_gate_window_never_reaches_back_before_the_hold_began() {
    let r = rig("window", "rollback", SLOW);
    r.m.command("reviews", None, Command::Start).expect("start");
    r.healthy();
    r.tick().await;
    r.tick_after(Duration::from_millis(400)).await;
    assert!(r.source.windows().is_empty(), "nothing judged before 1 s");
    r.tick_after(Duration::from_millis(900)).await;
    r.tick_after(Duration::from_millis(900)).await;
    r.tick_after(Duration::from_secs(5)).await;
    let asked: Vec<u128> = r.source.windows().iter().map(|w| w.as_millis()).collect();
    assert_eq!(
        asked,
        [1300, 1300, 2200, 2200, 3000, 3000],
        "mesh and legacy path per judgement"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_controller_resumes_at_the_same_stage_weights_and_held_time() {
    let r = rig("restart", "rollback", SLOW);
    r.m.command("reviews", None, Command::Start).expect("start");
    r.healthy();
    r.tick().await;
    for _ in 0..30 {
        r.tick_after(Duration::from_secs(1)).await;
    }
    let again = restart(r.dir.clone());
    again.healthy();
    assert_eq!(again.m.current_overlay().get("shop/reviews"), Some(&10));
    let s = again.status();
    assert_eq!((s.phase, s.stage), (Phase::Holding, Some(1)));
    assert!(
        (25.0..=30.0).contains(&s.held_s),
        "the hold resumes where it was saved (every 5 s): {} s",
        s.held_s
    );
    let s = again.tick_after(Duration::from_secs(29)).await;
    assert_eq!(s.stage, Some(1), "not yet 60 s held: {} s", s.held_s);
    let s = again.tick_after(Duration::from_secs(6)).await;
    assert_eq!((s.phase, s.stage), (Phase::Shifting, Some(2)));
    again
        .m
        .command("reviews", None, Command::Promote)
        .expect("promote");
    let again = restart(r.dir.clone());
    let s = again.status();
    assert_eq!((s.phase, s.stage), (Phase::Promoted, Some(2)));
}

#[tokio::test]
async fn a_corrupt_state_file_is_kept_aside_not_lost() {
    let r = rig("corrupt", "rollback", QUICK);
    std::fs::create_dir_all(r.dir.join(".jalur")).expect("dir");
    std::fs::write(r.dir.join(".jalur/migrations.json"), "{ not json").expect("write");
    let again = restart(r.dir.clone());
    assert!(again.m.current_overlay().is_empty());
    let aside = std::fs::read_dir(r.dir.join(".jalur"))
        .expect("dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("unreadable"));
    assert!(aside, "the unreadable file is kept for the operator");
}

#[test]
fn unknown_migrations_and_commands_are_clear_errors() {
    let r = rig("errors", "rollback", QUICK);
    let e =
        r.m.command("nope", None, Command::Start)
            .expect_err("no such migration");
    assert_eq!(e.to_string(), "no Migration nope");
    let e =
        r.m.command("reviews", None, Command::Resume)
            .expect_err("not paused");
    assert!(e.to_string().contains("Pending"), "{e}");
}
