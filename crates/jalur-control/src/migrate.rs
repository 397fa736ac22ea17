//! The migration controller: moves a route from its legacy path to its mesh path stage by stage,
//! judging each stage by the two paths' metrics side by side, and puts everything back on the
//! legacy path the moment a gate fails.
//!
//! ```text
//! Pending ──start──> Shifting(stage) ──pushed──> Holding ──hold over, gates pass──> Shifting(next)
//!                          │                         │ ──last stage held──> Promoted
//!                          └──────── gate fails ─────┴──> RolledBack (weight 0) | Paused
//! ```
//!
//! The controller writes only weights ([`overlay`]): the served config is the store's config with
//! each started migration's route split `legacy: 100 - w, mesh: w`, rebuilt and pushed like any
//! other change. Its state lives beside the config (`<config dir>/.jalur/migrations.json`), so a
//! restarted control plane serves the same weights from its first push and resumes the stage.

pub mod metrics;
pub mod overlay;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jalur_model::jalur::{FailureAction, Migration};
use jalur_model::Resource;
use jalur_xds::AdsServer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::ConfigStore;
use metrics::{MetricsSource, PathSelector, PathStats};
pub use overlay::{apply, Overlay, Paths};

/// How long a stage waits for every connected proxy to take its weights before holding anyway.
const PUSH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const HISTORY_LIMIT: usize = 200;
/// Below this many requests in a window, a p99 is just the slowest request: not judged.
pub const P99_MIN_REQUESTS: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Pending,
    /// Weights of the stage written; waiting for the proxies to take them.
    Shifting,
    /// The stage holds while its gates are judged.
    Holding,
    Paused,
    Promoted,
    RolledBack,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack)
    }
}

/// What the controller remembers of one migration (persisted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub phase: Phase,
    /// Index into the stages, once started.
    pub stage: Option<usize>,
    /// Mesh-path percent currently written.
    pub weight: u32,
    /// When the current stage's weights were written / its hold began (unix ms).
    pub shifted_at_ms: u64,
    pub holding_since_ms: u64,
    pub history: Vec<Transition>,
    #[serde(default)]
    pub last_gates: Option<GateReport>,
    /// Generation current when the weights were written: the push is confirmed once every
    /// client is past it. Not persisted: generations restart with the process.
    #[serde(skip)]
    written_after_generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub at_ms: u64,
    pub from: Phase,
    pub to: Phase,
    pub stage: Option<usize>,
    pub weight: u32,
    pub reason: String,
    #[serde(default)]
    pub gates: Option<GateReport>,
}

/// One judgement of a stage: both paths over the same window, and the verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateReport {
    pub at_ms: u64,
    pub window_s: f64,
    pub mesh: Stats,
    pub legacy: Stats,
    pub mesh_error_rate: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// Percent of the route's requests that took the mesh path in the window.
    pub observed_mesh_percent: Option<f64>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub requests: f64,
    pub errors: f64,
    pub p99_ms: Option<f64>,
}

impl From<PathStats> for Stats {
    fn from(s: PathStats) -> Stats {
        Stats {
            requests: s.requests,
            errors: s.errors,
            p99_ms: s.p99_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "camelCase")]
pub enum Verdict {
    Pass,
    /// Too few requests (or no metrics) to judge: the stage keeps holding.
    Insufficient(String),
    Fail(String),
}

/// An operator's command (`jalur migrate ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    /// The next stage now, without waiting for the hold.
    Promote,
    Pause,
    Resume,
    Rollback,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "start" => Command::Start,
            "promote" => Command::Promote,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "rollback" => Command::Rollback,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no Migration {0}")]
    NotFound(String),
    #[error("Migration {name} is {phase:?}: cannot {command}")]
    Invalid {
        name: String,
        phase: Phase,
        command: &'static str,
    },
    #[error(
        "Migration {0} is ambiguous: it exists in several namespaces ({1}); give the namespace"
    )]
    Ambiguous(String, String),
}

/// What `jalur migrate status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    pub name: String,
    pub namespace: String,
    pub route: String,
    pub legacy: String,
    pub mesh: String,
    pub phase: Phase,
    /// 1-based stage number, once started.
    pub stage: Option<usize>,
    pub stages: Vec<u32>,
    /// Mesh-path percent written into the route.
    pub requested_percent: u32,
    /// Mesh-path percent measured over the last window.
    pub observed_percent: Option<f64>,
    pub hold_s: f64,
    pub held_s: f64,
    pub on_failure: String,
    pub gates: GateLimits,
    pub last_gates: Option<GateReport>,
    pub metrics_source: String,
    pub history: Vec<Transition>,
}

impl MigrationStatus {
    /// Every stage that held, in order: its mesh weight, when its hold began and when the next
    /// weights were written (unix ms; `None` while it still holds). The windows to compare a
    /// client's view of the split against.
    pub fn held_stages(&self) -> Vec<(u32, u64, Option<u64>)> {
        let h = &self.history;
        h.iter()
            .enumerate()
            .filter(|(_, t)| t.to == Phase::Holding)
            .map(|(i, t)| {
                let end = h[i + 1..].iter().find(|n| n.to != Phase::Holding);
                (t.weight, t.at_ms, end.map(|n| n.at_ms))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateLimits {
    pub max_error_rate: f64,
    pub max_p99_ratio: f64,
    pub p99_allowance_ms: f64,
    pub min_requests: u64,
    pub window_s: f64,
}

/// The controller. Cheap to clone; the status API and the plane share one.
#[derive(Clone)]
pub struct Migrations {
    inner: Arc<Inner>,
}

struct Inner {
    records: Mutex<BTreeMap<String, Record>>,
    overlay: watch::Sender<Arc<Overlay>>,
    state_file: Option<PathBuf>,
    source: Arc<dyn MetricsSource>,
    store: ConfigStore,
    generation: Arc<AtomicU64>,
    ads: Mutex<Option<AdsServer>>,
}

impl Migrations {
    /// Loads the persisted state (a missing file is a first start; an unreadable one is reported
    /// and kept aside, never overwritten silently).
    pub fn new(
        store: ConfigStore,
        state_dir: Option<PathBuf>,
        source: Arc<dyn MetricsSource>,
        generation: Arc<AtomicU64>,
    ) -> Migrations {
        let state_file = state_dir.map(|d| d.join("migrations.json"));
        let records = state_file
            .as_ref()
            .map(|f| load_records(f))
            .unwrap_or_default();
        let overlay = overlay_of(&records);
        if !records.is_empty() {
            tracing::info!(migrations = records.len(), "migration state restored");
        }
        Migrations {
            inner: Arc::new(Inner {
                records: Mutex::new(records),
                overlay: watch::channel(Arc::new(overlay)).0,
                state_file,
                source,
                store,
                generation,
                ads: Mutex::new(None),
            }),
        }
    }

    /// The ADS server whose clients must take a stage's weights before it holds.
    pub fn set_ads(&self, ads: AdsServer) {
        *self.inner.ads.lock().unwrap_or_else(|p| p.into_inner()) = Some(ads);
    }

    pub fn overlay(&self) -> watch::Receiver<Arc<Overlay>> {
        self.inner.overlay.subscribe()
    }

    pub fn current_overlay(&self) -> Arc<Overlay> {
        self.inner.overlay.borrow().clone()
    }

    pub fn source(&self) -> &Arc<dyn MetricsSource> {
        &self.inner.source
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.inner.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every Migration in the served config with its state.
    pub fn statuses(&self) -> Vec<MigrationStatus> {
        let config = self.inner.store.current();
        let records = self.lock();
        config
            .migrations()
            .map(|(r, m)| {
                let rec = records.get(&overlay::key(r)).cloned().unwrap_or_default();
                status_of(r, m, &rec, &self.inner.source.describe())
            })
            .collect()
    }

    /// Finds a Migration by name (and namespace, when given or needed).
    fn find(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<(Resource, Migration), CommandError> {
        let config = self.inner.store.current();
        let found: Vec<(Resource, Migration)> = config
            .migrations()
            .filter(|(r, _)| {
                r.meta.name == name && namespace.is_none_or(|ns| r.meta.namespace == ns)
            })
            .map(|(r, m)| (r.clone(), m.clone()))
            .collect();
        match found.len() {
            0 => Err(CommandError::NotFound(match namespace {
                Some(ns) => format!("{ns}/{name}"),
                None => name.to_string(),
            })),
            1 => Ok(found.into_iter().next().expect("one")),
            _ => Err(CommandError::Ambiguous(
                name.to_string(),
                found
                    .iter()
                    .map(|(r, _)| r.meta.namespace.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    pub fn status(
        &self,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<MigrationStatus, CommandError> {
        let (r, m) = self.find(name, namespace)?;
        let rec = self
            .lock()
            .get(&overlay::key(&r))
            .cloned()
            .unwrap_or_default();
        Ok(status_of(&r, &m, &rec, &self.inner.source.describe()))
    }

    pub fn command(
        &self,
        name: &str,
        namespace: Option<&str>,
        command: Command,
    ) -> Result<MigrationStatus, CommandError> {
        let (r, m) = self.find(name, namespace)?;
        let key = overlay::key(&r);
        {
            let mut records = self.lock();
            let rec = records.entry(key.clone()).or_default();
            let invalid = |what: &'static str| CommandError::Invalid {
                name: key.clone(),
                phase: rec.phase,
                command: what,
            };
            match command {
                Command::Start => {
                    if matches!(rec.phase, Phase::Shifting | Phase::Holding | Phase::Paused) {
                        return Err(invalid("start (it is already running)"));
                    }
                    // Restarting a finished move would put 95 % back on the legacy path.
                    if rec.phase == Phase::Promoted {
                        return Err(invalid(
                            "start (it is promoted; roll it back first to move again)",
                        ));
                    }
                    self.shift(&key, rec, &m, 0, "started by the operator".into(), None);
                }
                Command::Promote => {
                    if !matches!(rec.phase, Phase::Shifting | Phase::Holding | Phase::Paused) {
                        return Err(invalid("promote (start it first)"));
                    }
                    self.advance(&key, rec, &m, "promoted by the operator".into(), None);
                }
                Command::Pause => {
                    if !matches!(rec.phase, Phase::Shifting | Phase::Holding) {
                        return Err(invalid("pause"));
                    }
                    transition(
                        &key,
                        rec,
                        Phase::Paused,
                        "paused by the operator".into(),
                        None,
                    );
                }
                Command::Resume => {
                    if rec.phase != Phase::Paused {
                        return Err(invalid("resume (it is not paused)"));
                    }
                    rec.holding_since_ms = now_ms();
                    transition(
                        &key,
                        rec,
                        Phase::Holding,
                        "resumed by the operator".into(),
                        None,
                    );
                }
                Command::Rollback => {
                    if rec.phase == Phase::Pending {
                        return Err(invalid("roll back (it has not started)"));
                    }
                    self.roll_back(&key, rec, "rolled back by the operator".into(), None);
                }
            }
            self.publish(&records);
        }
        self.status(&r.meta.name, Some(&r.meta.namespace))
    }

    /// Writes stage `stage`'s weight and waits (in `tick`) for the proxies to take it.
    fn shift(
        &self,
        key: &str,
        rec: &mut Record,
        m: &Migration,
        stage: usize,
        reason: String,
        gates: Option<GateReport>,
    ) {
        let weight = m.stages.get(stage).map(|s| s.weight).unwrap_or(100);
        rec.stage = Some(stage);
        rec.weight = weight;
        rec.last_gates = None;
        rec.shifted_at_ms = now_ms();
        rec.written_after_generation = self.inner.generation.load(Ordering::SeqCst);
        transition(key, rec, Phase::Shifting, reason, gates);
    }

    fn advance(
        &self,
        key: &str,
        rec: &mut Record,
        m: &Migration,
        reason: String,
        gates: Option<GateReport>,
    ) {
        let next = rec.stage.map_or(0, |s| s + 1);
        if next < m.stages.len() {
            self.shift(key, rec, m, next, reason, gates);
        } else {
            rec.weight = 100;
            rec.last_gates = None;
            transition(key, rec, Phase::Promoted, reason, gates);
        }
    }

    fn roll_back(&self, key: &str, rec: &mut Record, reason: String, gates: Option<GateReport>) {
        rec.weight = 0;
        rec.last_gates = None;
        rec.written_after_generation = self.inner.generation.load(Ordering::SeqCst);
        transition(key, rec, Phase::RolledBack, reason, gates);
    }

    /// Pushes the weights and saves the state. Called with the records locked, after a change.
    fn publish(&self, records: &BTreeMap<String, Record>) {
        let overlay = overlay_of(records);
        self.inner.overlay.send_if_modified(|o| {
            let changed = **o != overlay;
            if changed {
                *o = Arc::new(overlay);
            }
            changed
        });
        if let Some(file) = &self.inner.state_file {
            if let Err(e) = save_records(file, records) {
                tracing::error!(file = %file.display(), error = %e, "cannot save migration state");
            }
        }
    }

    /// Runs the controller until shutdown: every `tick`, confirm pushes, judge holding stages,
    /// advance or roll back.
    pub async fn run(self, tick: Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.tick().await;
        }
    }

    pub async fn tick(&self) {
        let config = self.inner.store.current();
        let mut judge = Vec::new();
        {
            let mut records = self.lock();
            let live: Vec<String> = config.migrations().map(|(r, _)| overlay::key(r)).collect();
            let before = records.len();
            records.retain(|k, _| live.contains(k));
            let mut changed = records.len() != before;
            for (r, m) in config.migrations() {
                let key = overlay::key(r);
                let Some(rec) = records.get_mut(&key) else {
                    continue;
                };
                if rec.phase == Phase::Shifting && self.pushed(rec) {
                    rec.holding_since_ms = now_ms();
                    let reason = format!(
                        "stage {} ({} %) reached every proxy",
                        rec.stage.map_or(0, |s| s + 1),
                        rec.weight
                    );
                    transition(&key, rec, Phase::Holding, reason, None);
                    changed = true;
                }
                if rec.phase == Phase::Holding {
                    judge.push((key, r.clone(), m.clone(), rec.stage, rec.holding_since_ms));
                }
            }
            if changed {
                self.publish(&records);
            }
        }
        // Judged together: one slow metrics query never delays another migration's rollback.
        let reports = futures::future::join_all(
            judge
                .iter()
                .map(|(_, r, m, _, since)| self.judge(r, m, *since)),
        )
        .await;
        for ((key, _, m, stage, _), report) in judge.into_iter().zip(reports) {
            let mut records = self.lock();
            let Some(rec) = records.get_mut(&key) else {
                continue;
            };
            // An operator's command may have moved it while the metrics were read.
            if rec.phase != Phase::Holding || rec.stage != stage {
                continue;
            }
            rec.last_gates = Some(report.clone());
            let held = Duration::from_millis(now_ms().saturating_sub(rec.holding_since_ms));
            let hold = hold_of(&m, stage.unwrap_or(0));
            match &report.verdict {
                Verdict::Fail(why) => {
                    let reason = format!("gate failed: {why}");
                    match m.on_failure() {
                        FailureAction::Rollback => self.roll_back(&key, rec, reason, Some(report)),
                        FailureAction::Pause => {
                            transition(&key, rec, Phase::Paused, reason, Some(report))
                        }
                    }
                    self.publish(&records);
                }
                Verdict::Pass if held >= hold => {
                    let reason = format!(
                        "stage {} held {:.0}s with gates passing",
                        stage.unwrap_or(0) + 1,
                        held.as_secs_f64()
                    );
                    self.advance(&key, rec, &m, reason, Some(report));
                    self.publish(&records);
                }
                _ => {}
            }
        }
    }

    /// Every connected client has taken a generation built after the weights were written.
    fn pushed(&self, rec: &Record) -> bool {
        if now_ms().saturating_sub(rec.shifted_at_ms) > PUSH_CONFIRM_TIMEOUT.as_millis() as u64 {
            tracing::warn!("stage weights not confirmed by every proxy within {PUSH_CONFIRM_TIMEOUT:?}; holding anyway");
            return true;
        }
        let after = rec.written_after_generation;
        if self.inner.generation.load(Ordering::SeqCst) <= after {
            return false;
        }
        let ads = self
            .inner
            .ads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ads.is_none_or(|ads| {
            ads.sync()
                .clients()
                .iter()
                .all(|c| c.generation > after && c.in_sync)
        })
    }

    async fn judge(&self, r: &Resource, m: &Migration, holding_since_ms: u64) -> GateReport {
        let gates = &m.gates;
        let since = Duration::from_millis(now_ms().saturating_sub(holding_since_ms));
        // Judge only this stage's traffic: the window never reaches back before the hold began.
        let window = gates.window().min(since).max(Duration::from_secs(1));
        let at_ms = now_ms();
        let report = |mesh: Stats, legacy: Stats, verdict: Verdict| {
            let total = mesh.requests + legacy.requests;
            GateReport {
                at_ms,
                window_s: window.as_secs_f64(),
                mesh_error_rate: (mesh.requests > 0.0).then(|| mesh.errors / mesh.requests),
                p99_ratio: match (mesh.p99_ms, legacy.p99_ms) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                observed_mesh_percent: (total > 0.0).then(|| 100.0 * mesh.requests / total),
                mesh,
                legacy,
                verdict,
            }
        };
        let Some(paths) = Paths::of(r, m) else {
            return report(
                Stats::default(),
                Stats::default(),
                Verdict::Insufficient("paths unresolved".into()),
            );
        };
        let selector = |(h, subset): &(String, Option<String>)| PathSelector {
            destination_service: h.clone(),
            destination_version: subset.clone(),
        };
        let source = &self.inner.source;
        let (mesh_sel, legacy_sel) = (selector(&paths.mesh), selector(&paths.legacy));
        let (mesh, legacy) = tokio::join!(
            source.stats(&mesh_sel, window),
            source.stats(&legacy_sel, window)
        );
        let (mesh, legacy) = match (mesh, legacy) {
            (Ok(a), Ok(b)) => (Stats::from(a), Stats::from(b)),
            // Without the legacy side only the latency comparison is lost: the mesh path's
            // error rate is still judged (a failing mesh path must not hide behind it).
            (Ok(a), Err(e)) => {
                tracing::warn!(error = %e, "legacy-path metrics unavailable; judging the mesh path alone");
                (Stats::from(a), Stats::default())
            }
            (Err(e), _) => {
                return report(
                    Stats::default(),
                    Stats::default(),
                    Verdict::Insufficient(format!("metrics unavailable: {e}")),
                );
            }
        };
        let verdict = verdict(m, &mesh, &legacy);
        report(mesh, legacy, verdict)
    }
}

/// The gates of `m` applied to one window of both paths.
pub fn verdict(m: &Migration, mesh: &Stats, legacy: &Stats) -> Verdict {
    let gates = &m.gates;
    let min = gates.min_requests() as f64;
    if mesh.requests < min || mesh.requests <= 0.0 {
        return Verdict::Insufficient(format!(
            "{:.0} mesh-path requests in the window, {min:.0} needed to judge",
            mesh.requests
        ));
    }
    let rate = mesh.errors / mesh.requests;
    if rate > gates.max_error_rate() {
        return Verdict::Fail(format!(
            "mesh-path error rate {:.2} % > {:.2} % ({:.0} of {:.0} requests)",
            rate * 100.0,
            gates.max_error_rate() * 100.0,
            mesh.errors,
            mesh.requests
        ));
    }
    // Latency is compared side by side, so only while both paths carry traffic — and only on
    // enough requests for a 99th percentile to be more than the slowest request of a handful.
    let latency_min = min.max(P99_MIN_REQUESTS);
    if legacy.requests >= latency_min && mesh.requests >= latency_min {
        if let (Some(m99), Some(l99)) = (mesh.p99_ms, legacy.p99_ms) {
            let allowance = gates.p99_allowance().as_secs_f64() * 1000.0;
            let limit = gates.max_p99_ratio() * l99 + allowance;
            if m99 > limit {
                return Verdict::Fail(format!(
                    "mesh-path p99 {m99:.1} ms > {:.2} × legacy p99 {l99:.1} ms + {allowance:.0} ms",
                    gates.max_p99_ratio()
                ));
            }
        }
    }
    Verdict::Pass
}

fn hold_of(m: &Migration, stage: usize) -> Duration {
    m.stages
        .get(stage)
        .and_then(|s| s.hold)
        .map(|h| h.as_std())
        .unwrap_or_else(|| m.gates.window())
}

fn transition(key: &str, rec: &mut Record, to: Phase, reason: String, gates: Option<GateReport>) {
    let from = rec.phase;
    rec.phase = to;
    let stage = rec.stage.map(|s| s + 1);
    match to {
        Phase::RolledBack | Phase::Paused if gates.is_some() => {
            tracing::warn!(migration = key, ?from, ?to, ?stage, weight = rec.weight, %reason, "migration transition")
        }
        _ => {
            tracing::info!(migration = key, ?from, ?to, ?stage, weight = rec.weight, %reason, "migration transition")
        }
    }
    rec.history.push(Transition {
        at_ms: now_ms(),
        from,
        to,
        stage: rec.stage,
        weight: rec.weight,
        reason,
        gates,
    });
    if rec.history.len() > HISTORY_LIMIT {
        rec.history.remove(0);
    }
}

fn overlay_of(records: &BTreeMap<String, Record>) -> Overlay {
    records
        .iter()
        .filter(|(_, r)| r.phase != Phase::Pending)
        .map(|(k, r)| (k.clone(), r.weight))
        .collect()
}

fn status_of(r: &Resource, m: &Migration, rec: &Record, source: &str) -> MigrationStatus {
    let side = |p: &jalur_model::jalur::MigrationPath| {
        let h = p.host().unwrap_or_default();
        match &p.subset {
            Some(s) => format!("{h} (subset {s})"),
            None => h,
        }
    };
    let held = if matches!(rec.phase, Phase::Holding) {
        now_ms().saturating_sub(rec.holding_since_ms) as f64 / 1000.0
    } else {
        0.0
    };
    let g = &m.gates;
    MigrationStatus {
        name: r.meta.name.clone(),
        namespace: r.meta.namespace.clone(),
        route: Paths::of(r, m).map(|p| p.route).unwrap_or_default(),
        legacy: side(&m.legacy),
        mesh: side(&m.mesh),
        phase: rec.phase,
        stage: rec.stage.map(|s| s + 1),
        stages: m.stages.iter().map(|s| s.weight).collect(),
        requested_percent: rec.weight,
        observed_percent: rec
            .last_gates
            .as_ref()
            .and_then(|g| g.observed_mesh_percent),
        hold_s: hold_of(m, rec.stage.unwrap_or(0)).as_secs_f64(),
        held_s: held,
        on_failure: match m.on_failure() {
            FailureAction::Rollback => "rollback".into(),
            FailureAction::Pause => "pause".into(),
        },
        gates: GateLimits {
            max_error_rate: g.max_error_rate(),
            max_p99_ratio: g.max_p99_ratio(),
            p99_allowance_ms: g.p99_allowance().as_secs_f64() * 1000.0,
            min_requests: g.min_requests(),
            window_s: g.window().as_secs_f64(),
        },
        last_gates: rec.last_gates.clone(),
        metrics_source: source.to_string(),
        history: rec.history.clone(),
    }
}

fn load_records(file: &std::path::Path) -> BTreeMap<String, Record> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read migration state; starting every migration as Pending");
            return BTreeMap::new();
        }
    };
    match serde_json::from_str(&text) {
        Ok(records) => records,
        Err(e) => {
            let aside = file.with_extension(format!("json.unreadable-{}", now_ms()));
            let _ = std::fs::rename(file, &aside);
            tracing::error!(file = %file.display(), kept_as = %aside.display(), error = %e, "migration state is corrupt; kept aside, every migration starts as Pending");
            BTreeMap::new()
        }
    }
}

/// Atomically: a crash mid-write leaves the previous state, never half a file.
fn save_records(file: &std::path::Path, records: &BTreeMap<String, Record>) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
