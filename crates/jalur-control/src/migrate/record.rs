//! What the controller remembers of each migration: its phase, stage, weights, the monotonic
//! clock of its current stage, and its history. Persisted by [`super::state`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{now_ms, GateReport};

const HISTORY_LIMIT: usize = 200;

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
    /// The stage number, counting from 1 (as the operator does), once started.
    pub stage: Option<usize>,
    /// Mesh-path percent currently written.
    pub weight: u32,
    /// When the current stage's weights were written / its hold began (unix ms): for people
    /// and the persisted history. Holds and timeouts are measured on `clock`.
    pub shifted_at_ms: u64,
    pub holding_since_ms: u64,
    /// How long the current stage had held (monotonic) when the state was last saved: where a
    /// restarted controller resumes the hold.
    #[serde(default)]
    pub held_ms: u64,
    pub history: Vec<Transition>,
    #[serde(default)]
    pub last_gates: Option<GateReport>,
    /// Generation current when the weights were written: the push is confirmed once every
    /// client is past it. Not persisted: generations restart with the process.
    #[serde(skip)]
    pub(super) written_after_generation: u64,
    #[serde(skip)]
    pub(super) clock: StageClock,
}

/// When the current stage's weights were written and its hold began, on tokio's monotonic
/// clock: a wall-clock jump cannot end a hold or a push-confirm wait early, and tests drive
/// both with paused time. Not persisted (instants mean nothing to another process).
#[derive(Debug, Clone, Default)]
pub(super) struct StageClock {
    pub(super) shifted: Option<Instant>,
    pub(super) holding: Option<Instant>,
}

impl Record {
    /// How long the current stage has held.
    pub(super) fn held(&self, now: Instant) -> Duration {
        self.clock
            .holding
            .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    pub(super) fn begin_hold(&mut self, now: Instant) {
        self.clock.holding = Some(now);
        self.holding_since_ms = now_ms();
        self.held_ms = 0;
    }

    /// After a restart: the push wait starts over, the hold resumes from the held time saved.
    pub(super) fn resume_clock(&mut self, now: Instant) {
        self.clock.shifted = Some(now);
        let held = Duration::from_millis(self.held_ms);
        self.clock.holding = Some(now.checked_sub(held).unwrap_or(now));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub at_ms: u64,
    pub from: Phase,
    pub to: Phase,
    /// The stage number (from 1) after the transition.
    pub stage: Option<usize>,
    pub weight: u32,
    pub reason: String,
    #[serde(default)]
    pub gates: Option<GateReport>,
}

/// Moves `rec` to `to`, logs it and records it in the history (the newest 200 kept).
pub(super) fn transition(
    key: &str,
    rec: &mut Record,
    to: Phase,
    reason: String,
    gates: Option<GateReport>,
) {
    let from = rec.phase;
    rec.phase = to;
    let stage = rec.stage;
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
