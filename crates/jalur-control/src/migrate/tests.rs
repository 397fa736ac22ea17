//! The state machine driven tick by tick against canned metrics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use super::metrics::MetricsError;
use super::*;

#[derive(Default)]
struct Canned(Mutex<HashMap<String, PathStats>>);

impl Canned {
    fn set(&self, host: &str, requests: f64, errors: f64, p99_ms: f64) {
        let stats = PathStats {
            requests,
            errors,
            p99_ms: Some(p99_ms),
        };
        self.0.lock().expect("lock").insert(host.to_string(), stats);
    }
}

impl MetricsSource for Canned {
    fn describe(&self) -> String {
        "canned".into()
    }
    fn stats<'a>(
        &'a self,
        path: &'a PathSelector,
        _window: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PathStats, MetricsError>> + Send + 'a>> {
        let s = self
            .0
            .lock()
            .expect("lock")
            .get(&path.destination_service)
            .cloned();
        Box::pin(async move { Ok(s.unwrap_or_default()) })
    }
}

const LEGACY: &str = "reviews.service.consul";
const MESH: &str = "reviews.shop.svc.cluster.local";

struct Rig {
    dir: PathBuf,
    source: Arc<Canned>,
    generation: Arc<AtomicU64>,
    m: Migrations,
}

fn rig(name: &str, on_failure: &str) -> Rig {
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
  stages: [{{weight: 10, hold: 0s}}, {{weight: 50, hold: 0s}}, {{weight: 100, hold: 0s}}]
  gates: {{maxErrorRate: 0.05, minRequests: 10}}
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
    /// One controller tick after a push (as the rebuild loop would bump the generation).
    async fn tick(&self) -> MigrationStatus {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.m.tick().await;
        self.m.status("reviews", None).expect("status")
    }
}

#[tokio::test]
async fn healthy_stages_advance_to_promoted_and_every_step_is_recorded() {
    let r = rig("advance", "rollback");
    assert_eq!(
        r.m.status("reviews", None).expect("status").phase,
        Phase::Pending
    );
    assert!(
        r.m.current_overlay().is_empty(),
        "nothing written before start"
    );
    r.m.command("reviews", None, Command::Start).expect("start");
    assert_eq!(r.m.current_overlay().get("shop/reviews"), Some(&10));
    r.source.set(MESH, 100.0, 0.0, 3.0);
    r.source.set(LEGACY, 900.0, 0.0, 2.0);
    // Hold 0s: each tick confirms the push, judges the stage and writes the next one.
    let s = r.tick().await;
    assert_eq!(
        (s.phase, s.stage, s.requested_percent),
        (Phase::Shifting, Some(2), 50)
    );
    let mut s = s;
    for _ in 0..5 {
        s = r.tick().await;
    }
    assert_eq!((s.phase, s.requested_percent), (Phase::Promoted, 100));
    assert_eq!(r.m.current_overlay().get("shop/reviews"), Some(&100));
    let phases: Vec<Phase> = s.history.iter().map(|t| t.to).collect();
    assert_eq!(
        phases,
        [
            Phase::Shifting,
            Phase::Holding,
            Phase::Shifting,
            Phase::Holding,
            Phase::Shifting,
            Phase::Holding,
            Phase::Promoted
        ]
    );
    assert!(
        s.history[2]
            .gates
            .as_ref()
            .is_some_and(|g| g.verdict == Verdict::Pass),
        "an advance records the gate values behind it: {:?}",
        s.history[2]
    );
    assert_eq!(
        s.history[2]
            .gates
            .as_ref()
            .and_then(|g| g.observed_mesh_percent),
        Some(10.0)
    );
    assert_eq!(
        s.observed_percent, None,
        "a new stage starts without an old stage's numbers"
    );
}

#[tokio::test]
async fn a_failed_gate_rolls_back_to_the_legacy_path_at_once() {
    let r = rig("rollback", "rollback");
    r.m.command("reviews", None, Command::Start).expect("start");
    r.source.set(MESH, 100.0, 12.0, 3.0);
    r.source.set(LEGACY, 900.0, 0.0, 2.0);
    r.tick().await;
    let s = r.tick().await;
    assert_eq!((s.phase, s.requested_percent), (Phase::RolledBack, 0));
    assert_eq!(r.m.current_overlay().get("shop/reviews"), Some(&0));
    let last = s.history.last().expect("a transition");
    let gates = last.gates.as_ref().expect("gate values recorded");
    assert!(
        matches!(&gates.verdict, Verdict::Fail(why) if why.contains("12.00 %")),
        "{:?}",
        gates.verdict
    );
}

#[tokio::test]
async fn too_few_requests_hold_the_stage_and_pause_policy_keeps_the_weights() {
    let r = rig("pause", "pause");
    r.m.command("reviews", None, Command::Start).expect("start");
    r.source.set(MESH, 3.0, 0.0, 3.0);
    r.tick().await;
    let s = r.tick().await;
    assert_eq!(
        (s.phase, s.stage),
        (Phase::Holding, Some(1)),
        "3 requests cannot pass a gate"
    );
    // 99 requests: a p99 that is only the slowest request is not judged, so the stage passes.
    r.source.set(MESH, 99.0, 0.0, 90.0);
    r.source.set(LEGACY, 900.0, 0.0, 2.0);
    let s = r.tick().await;
    assert_eq!((s.phase, s.requested_percent), (Phase::Shifting, 50));
    r.source.set(MESH, 100.0, 0.0, 90.0);
    let s = r.tick().await;
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

#[tokio::test]
async fn a_restarted_controller_resumes_at_the_same_stage_and_weights() {
    let r = rig("restart", "rollback");
    r.m.command("reviews", None, Command::Start).expect("start");
    r.m.command("reviews", None, Command::Promote)
        .expect("promote");
    let again = restart(r.dir.clone());
    assert_eq!(again.m.current_overlay().get("shop/reviews"), Some(&50));
    let s = again.m.status("reviews", None).expect("status");
    assert_eq!((s.phase, s.stage), (Phase::Shifting, Some(2)));
    assert_eq!(s.history.len(), 2);
}

#[tokio::test]
async fn a_corrupt_state_file_is_kept_aside_not_lost() {
    let r = rig("corrupt", "rollback");
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
    let r = rig("errors", "rollback");
    let e =
        r.m.command("nope", None, Command::Start)
            .expect_err("no such migration");
    assert_eq!(e.to_string(), "no Migration nope");
    let e =
        r.m.command("reviews", None, Command::Resume)
            .expect_err("not paused");
    assert!(e.to_string().contains("Pending"), "{e}");
}
