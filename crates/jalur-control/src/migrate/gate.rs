//! A stage's judgement: both paths' numbers over one window, and the gates applied to them.

use jalur_model::jalur::Migration;
use serde::{Deserialize, Serialize};

use super::metrics::PathStats;

/// Below this many requests in a window, a p99 is just the slowest request: not judged.
pub const P99_MIN_REQUESTS: u64 = 100;

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

/// Requests and errors of one path over a window: counts, so whole numbers (Prometheus's
/// extrapolated `increase` is rounded), and what the gates judge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    #[serde(deserialize_with = "count")]
    pub requests: u64,
    #[serde(deserialize_with = "count")]
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

impl From<PathStats> for Stats {
    fn from(s: PathStats) -> Stats {
        Stats {
            requests: round(s.requests),
            errors: round(s.errors),
            p99_ms: s.p99_ms,
        }
    }
}

fn round(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

/// A count from the state file: state saved before counts were integers holds `120.0`.
fn count<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    f64::deserialize(d).map(round)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", content = "reason", rename_all = "camelCase")]
pub enum Verdict {
    Pass,
    /// Too few requests (or no metrics) to judge: the stage keeps holding.
    Insufficient(String),
    Fail(String),
}

/// The gates of `m` applied to one window of both paths.
pub fn verdict(m: &Migration, mesh: &Stats, legacy: &Stats) -> Verdict {
    let gates = &m.gates;
    let min = gates.min_requests();
    if mesh.requests < min || mesh.requests == 0 {
        return Verdict::Insufficient(format!(
            "{} mesh-path requests in the window, {min} needed to judge",
            mesh.requests
        ));
    }
    let rate = mesh.errors as f64 / mesh.requests as f64;
    if rate > gates.max_error_rate() {
        return Verdict::Fail(format!(
            "mesh-path error rate {:.2} % > {:.2} % ({} of {} requests)",
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
