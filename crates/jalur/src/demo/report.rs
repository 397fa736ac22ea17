//! The demo's closing report: load, failures per service, observed shares per stage, and how
//! fast the faulty migration went back to the legacy path.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jalur_control::migrate::{MigrationStatus, Phase};
use jalur_demo::{share, Sample};

use super::fleet::{is_mesh_instance, Fleet};
use super::{FAULTY, MIGRATED};

pub struct Report {
    lines: Vec<String>,
    success: bool,
}

impl Report {
    pub fn build(
        fleet: &Fleet,
        statuses: &[MigrationStatus],
        samples: &[Sample],
        load_start_ms: u64,
        fault_at_ms: Option<u64>,
    ) -> Report {
        let mut lines = vec!["== jalur demo report ==".to_string()];
        let secs = samples.last().map_or(1.0, |s| s.at.as_secs_f64().max(1.0));
        let failed = samples.iter().filter(|s| !s.ok).count();
        lines.push(format!(
            "load: {} requests in {secs:.1} s ({:.0} rps), {} ok, {failed} failed",
            samples.len(),
            samples.len() as f64 / secs,
            samples.len() - failed
        ));
        let since = |ms: u64| Duration::from_millis(ms.saturating_sub(load_start_ms));
        let mut success = true;
        for (i, t) in fleet.targets().iter().enumerate() {
            let of: Vec<&Sample> = samples.iter().filter(|s| s.target == i).collect();
            let bad = of.iter().filter(|s| !s.ok).count();
            // Only the faulty service may fail, and only while its gate catches the fault.
            if !t.name.starts_with(&format!("{FAULTY} ")) {
                success &= bad == 0;
            }
            lines.push(format!(
                "  {:<16} {:>7} requests {:>4} failed",
                t.name,
                of.len(),
                bad
            ));
        }
        for s in statuses {
            let targets = fleet.targets_of(&s.name);
            let mine: Vec<Sample> = samples
                .iter()
                .filter(|x| targets.contains(&x.target))
                .cloned()
                .collect();
            let bad = mine.iter().filter(|x| !x.ok).count();
            lines.push(String::new());
            lines.push(format!(
                "{}: {:?} — {} requests, {bad} failed",
                s.name,
                s.phase,
                mine.len()
            ));
            let mut shares = Vec::new();
            for (weight, from, to) in s.held_stages() {
                let to = to.map_or(Duration::MAX, since);
                let (total, mesh) = share(&mine, since(from), to, |x| {
                    is_mesh_instance(x.instance.as_deref())
                });
                if total > 0 {
                    shares.push(format!(
                        "{weight} % → {:.1} % ({total} req)",
                        100.0 * mesh as f64 / total as f64
                    ));
                }
            }
            if !shares.is_empty() {
                lines.push(format!(
                    "  requested → observed mesh share per stage: {}",
                    shares.join(", ")
                ));
            }
            let mut by_instance: std::collections::BTreeMap<&str, usize> = Default::default();
            for x in mine.iter().filter(|x| x.ok) {
                *by_instance
                    .entry(x.instance.as_deref().unwrap_or("?"))
                    .or_default() += 1;
            }
            let served: Vec<String> = by_instance
                .iter()
                .map(|(i, n)| format!("{i} {n}"))
                .collect();
            lines.push(format!("  served by: {}", served.join(", ")));
            if let Some(last) = s.history.last() {
                lines.push(format!("  ended: {}", last.reason));
            }
            if MIGRATED.contains(&s.name.as_str()) {
                success &= s.phase == Phase::Promoted && bad == 0;
            }
            if s.name == FAULTY {
                success &= s.phase == Phase::RolledBack;
                if let (Phase::RolledBack, Some(breach), Some(fault)) =
                    (s.phase, s.history.last(), fault_at_ms)
                {
                    let last_mesh = mine
                        .iter()
                        .filter(|x| is_mesh_instance(x.instance.as_deref()))
                        .map(|x| x.at)
                        .max()
                        .unwrap_or_default();
                    let breach_at = since(breach.at_ms);
                    let after = last_mesh.as_secs_f64() * 1000.0 - breach_at.as_secs_f64() * 1000.0;
                    let last = if after >= 0.0 {
                        format!("last request on the mesh path {after:.0} ms after the breach")
                    } else {
                        format!("no request on the mesh path after the breach (the last {:.0} ms before it)", -after)
                    };
                    lines.push(format!(
                        "  rollback: breach detected {:.2} s after the fault; {last}; {bad} requests failed (the faulty answers inside the gate window)",
                        breach.at_ms.saturating_sub(fault) as f64 / 1000.0,
                    ));
                }
            }
        }
        lines.push(String::new());
        lines.push(fleet.security());
        lines.push(if success {
            "result: OK — reviews and ratings moved with 0 failed requests; payments rolled back by itself".into()
        } else {
            "result: NOT OK — see above".into()
        });
        Report { lines, success }
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn success(&self) -> bool {
        self.success
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
