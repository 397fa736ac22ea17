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
//!
//! Holds, push-confirm timeouts and gate windows are measured on tokio's monotonic clock (a
//! wall-clock jump cannot advance a stage; tests run them on paused time); unix time appears
//! only in what is persisted and shown. Stage numbers count from 1 everywhere.

mod gate;
pub mod metrics;
pub mod overlay;
mod record;
mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jalur_model::jalur::{FailureAction, Migration, MigrationStage};
use jalur_model::Resource;
use jalur_xds::AdsServer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::ConfigStore;
pub use gate::{verdict, GateReport, Stats, Verdict, P99_MIN_REQUESTS};
use metrics::{MetricsSource, PathSelector};
pub use overlay::{apply, Overlay, Paths};
use record::{transition, StageClock};
pub use record::{Phase, Record, Transition};

/// How long a stage waits for every connected proxy to take its weights before holding anyway.
const PUSH_CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// A stage is judged once it has held this long: its window is then the time held (up to the
/// gates' window), so it never reaches back into the previous stage's traffic.
const MIN_JUDGED_HOLD: Duration = Duration::from_secs(1);
/// While a stage holds, its held time is saved this often, so a restarted controller resumes
/// the hold about where it was (measured on the monotonic clock, never the wall clock).
const HELD_SAVE_EVERY: Duration = Duration::from_secs(5);

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
    /// The stage number (from 1), once started.
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
    clients: Mutex<Option<Clients>>,
}

/// Each connected xDS client's generation and whether it ACKed everything sent: all a stage
/// needs to know that its weights reached the proxies (the ADS server's sync registry).
type Clients = Arc<dyn Fn() -> Vec<ClientProgress> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
struct ClientProgress {
    generation: u64,
    in_sync: bool,
}

/// A holding stage to judge, as it was when the tick began.
struct Held {
    key: String,
    resource: Resource,
    migration: Migration,
    stage: Option<usize>,
    held: Duration,
}

/// Whether a stage's weights reached the proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Push {
    Waiting,
    Confirmed { proxies: usize },
    NoProxy,
    TimedOut { pending: usize, proxies: usize },
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
        let mut records = state_file
            .as_ref()
            .map(|f| state::load(f))
            .unwrap_or_default();
        let now = Instant::now();
        records.values_mut().for_each(|rec| rec.resume_clock(now));
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
                clients: Mutex::new(None),
            }),
        }
    }

    /// The ADS server whose clients must take a stage's weights before it holds.
    pub fn set_ads(&self, ads: AdsServer) {
        self.set_clients(Arc::new(move || {
            ads.sync()
                .clients()
                .iter()
                .map(|c| ClientProgress {
                    generation: c.generation,
                    in_sync: c.in_sync,
                })
                .collect()
        }));
    }

    fn set_clients(&self, clients: Clients) {
        *self.inner.clients.lock().unwrap_or_else(|p| p.into_inner()) = Some(clients);
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
                    self.shift(&key, rec, &m, 1, "started by the operator".into(), None);
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
                    rec.begin_hold(Instant::now());
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

    /// Writes stage number `stage`'s weight and waits (in `tick`) for the proxies to take it.
    fn shift(
        &self,
        key: &str,
        rec: &mut Record,
        m: &Migration,
        stage: usize,
        reason: String,
        gates: Option<GateReport>,
    ) {
        let weight = stage_of(m, stage).map(|s| s.weight).unwrap_or(100);
        rec.stage = Some(stage);
        rec.weight = weight;
        rec.last_gates = None;
        rec.shifted_at_ms = now_ms();
        rec.clock = StageClock {
            shifted: Some(Instant::now()),
            holding: None,
        };
        rec.held_ms = 0;
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
        let next = rec.stage.map_or(1, |s| s + 1);
        if next <= m.stages.len() {
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
            if let Err(e) = state::save(file, records) {
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

    /// One controller step: confirm pushes, then judge every holding stage (together: one slow
    /// metrics query never delays another migration's rollback) and act on the verdicts.
    pub async fn tick(&self) {
        let holding = self.confirm_pushes();
        let reports = futures::future::join_all(
            holding
                .iter()
                .map(|h| self.judge(&h.resource, &h.migration, h.held)),
        )
        .await;
        for (h, report) in holding.into_iter().zip(reports) {
            self.act_on(h, report);
        }
    }

    /// Turns every shifting stage whose weights reached the proxies into a holding one, saves
    /// held time now and then, and returns the holding stages to judge.
    fn confirm_pushes(&self) -> Vec<Held> {
        let config = self.inner.store.current();
        let now = Instant::now();
        let mut holding = Vec::new();
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
            if rec.phase == Phase::Shifting {
                if let Some(reason) = self.push_reason(rec, now) {
                    rec.begin_hold(now);
                    transition(&key, rec, Phase::Holding, reason, None);
                    changed = true;
                }
            }
            if rec.phase == Phase::Holding {
                let held = rec.held(now);
                if held.saturating_sub(Duration::from_millis(rec.held_ms)) >= HELD_SAVE_EVERY {
                    rec.held_ms = held.as_millis() as u64;
                    changed = true;
                }
                holding.push(Held {
                    key,
                    resource: r.clone(),
                    migration: m.clone(),
                    stage: rec.stage,
                    held,
                });
            }
        }
        if changed {
            self.publish(&records);
        }
        holding
    }

    /// A failed gate rolls back (or pauses); a pass after the stage's hold advances.
    fn act_on(&self, h: Held, report: GateReport) {
        let mut records = self.lock();
        let Some(rec) = records.get_mut(&h.key) else {
            return;
        };
        // An operator's command may have moved it while the metrics were read.
        if rec.phase != Phase::Holding || rec.stage != h.stage {
            return;
        }
        rec.last_gates = Some(report.clone());
        let (key, m, stage) = (&h.key, &h.migration, h.stage.unwrap_or(1));
        let held = rec.held(Instant::now());
        match &report.verdict {
            Verdict::Fail(why) => {
                let reason = format!("gate failed: {why}");
                match m.on_failure() {
                    FailureAction::Rollback => self.roll_back(key, rec, reason, Some(report)),
                    FailureAction::Pause => {
                        transition(key, rec, Phase::Paused, reason, Some(report))
                    }
                }
                self.publish(&records);
            }
            Verdict::Pass if held >= hold_of(m, stage) => {
                let reason = format!(
                    "stage {stage} held {:.0}s with gates passing",
                    held.as_secs_f64()
                );
                self.advance(key, rec, m, reason, Some(report));
                self.publish(&records);
            }
            _ => {}
        }
    }

    /// Why a shifting stage may hold now, or `None` while its weights are on their way.
    fn push_reason(&self, rec: &Record, now: Instant) -> Option<String> {
        let stage = format!("stage {} ({} %)", rec.stage.unwrap_or(1), rec.weight);
        match self.pushed(rec, now) {
            Push::Waiting => None,
            Push::Confirmed { proxies } => {
                Some(format!("{stage} reached every proxy ({proxies} connected)"))
            }
            Push::NoProxy => Some(format!("{stage} written; no proxy is connected to take it")),
            Push::TimedOut { pending, proxies } => {
                tracing::warn!(pending, proxies, "stage weights not confirmed by every proxy within {PUSH_CONFIRM_TIMEOUT:?}; holding anyway");
                Some(format!(
                    "{stage} not confirmed by {pending} of {proxies} proxies within {}s; holding anyway",
                    PUSH_CONFIRM_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Whether every connected client has taken a generation built after the weights were
    /// written (or the wait timed out, on the monotonic clock).
    fn pushed(&self, rec: &Record, now: Instant) -> Push {
        let after = rec.written_after_generation;
        let built = self.inner.generation.load(Ordering::SeqCst) > after;
        let clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let clients = clients.map(|c| c()).unwrap_or_default();
        let pending = clients
            .iter()
            .filter(|c| !(built && c.generation > after && c.in_sync))
            .count();
        let waited = rec
            .clock
            .shifted
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        if waited > PUSH_CONFIRM_TIMEOUT {
            return Push::TimedOut {
                pending: if built { pending } else { clients.len() },
                proxies: clients.len(),
            };
        }
        if !built {
            Push::Waiting
        } else if clients.is_empty() {
            Push::NoProxy
        } else if pending == 0 {
            Push::Confirmed {
                proxies: clients.len(),
            }
        } else {
            Push::Waiting
        }
    }

    /// Both paths over the time this stage has held (up to the gates' window): never a moment
    /// before its hold began, so a previous stage's traffic cannot decide it.
    async fn judge(&self, r: &Resource, m: &Migration, held: Duration) -> GateReport {
        let gates = &m.gates;
        let window = gates.window().min(held);
        let at_ms = now_ms();
        let report = |mesh: Stats, legacy: Stats, verdict: Verdict| {
            let total = mesh.requests + legacy.requests;
            GateReport {
                at_ms,
                window_s: window.as_secs_f64(),
                mesh_error_rate: (mesh.requests > 0)
                    .then(|| mesh.errors as f64 / mesh.requests as f64),
                p99_ratio: match (mesh.p99_ms, legacy.p99_ms) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                observed_mesh_percent: (total > 0)
                    .then(|| 100.0 * mesh.requests as f64 / total as f64),
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
        if held < MIN_JUDGED_HOLD {
            return report(
                Stats::default(),
                Stats::default(),
                Verdict::Insufficient(format!(
                    "held {} ms; a stage is judged once it has held {} s",
                    held.as_millis(),
                    MIN_JUDGED_HOLD.as_secs()
                )),
            );
        }
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

/// Stage number `number` (from 1) of `m`.
fn stage_of(m: &Migration, number: usize) -> Option<&MigrationStage> {
    m.stages.get(number.checked_sub(1)?)
}

/// How long stage number `stage` holds.
fn hold_of(m: &Migration, stage: usize) -> Duration {
    stage_of(m, stage)
        .and_then(|s| s.hold)
        .map(|h| h.as_std())
        .unwrap_or_else(|| m.gates.window())
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
        rec.held(Instant::now()).as_secs_f64()
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
        stage: rec.stage,
        stages: m.stages.iter().map(|s| s.weight).collect(),
        requested_percent: rec.weight,
        observed_percent: rec
            .last_gates
            .as_ref()
            .and_then(|g| g.observed_mesh_percent),
        hold_s: hold_of(m, rec.stage.unwrap_or(1)).as_secs_f64(),
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

/// Unix ms: timestamps for people and the persisted state, never for measuring a hold.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
