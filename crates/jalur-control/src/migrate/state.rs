//! The controller's persisted state (`<state dir>/migrations.json`): every migration's record,
//! written atomically on every transition (and while a stage holds, its monotonic held time),
//! read once at start.
//!
//! Format 2 is `{"version": 2, "migrations": {"ns/name": Record}}` with stage numbers counting
//! from 1. Format 1 (before stage numbers were 1-based) was the bare map with stage indexes
//! counting from 0; it is read and converted, so an upgraded control plane resumes a running
//! migration at the stage it was at. A map key is always `namespace/name`, so a bare map can
//! never be mistaken for format 2's `version` key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{now_ms, Record};

const VERSION: u32 = 2;

#[derive(Serialize)]
struct Written<'a> {
    version: u32,
    migrations: &'a BTreeMap<String, Record>,
}

#[derive(Deserialize)]
struct Read {
    version: u32,
    migrations: BTreeMap<String, Record>,
}

/// The records in `file`: empty on a first start (no file); an unreadable or corrupt file is
/// reported and renamed aside (never overwritten silently), and every migration starts Pending.
pub(super) fn load(file: &Path) -> BTreeMap<String, Record> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "cannot read migration state; starting every migration as Pending");
            return BTreeMap::new();
        }
    };
    match parse(&text) {
        Ok(records) => records,
        Err(e) => {
            let aside = file.with_extension(format!("json.unreadable-{}", now_ms()));
            let _ = std::fs::rename(file, &aside);
            tracing::error!(file = %file.display(), kept_as = %aside.display(), error = %e, "migration state is corrupt; kept aside, every migration starts as Pending");
            BTreeMap::new()
        }
    }
}

fn parse(text: &str) -> Result<BTreeMap<String, Record>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if value.get("version").is_some() {
        let read: Read = serde_json::from_value(value).map_err(|e| e.to_string())?;
        if read.version != VERSION {
            return Err(format!(
                "state format {} is not one this jalur reads (1 or {VERSION})",
                read.version
            ));
        }
        return Ok(read.migrations);
    }
    let mut records: BTreeMap<String, Record> =
        serde_json::from_value(value).map_err(|e| format!("format 1: {e}"))?;
    for rec in records.values_mut() {
        rec.stage = rec.stage.map(|index| index + 1);
        for t in &mut rec.history {
            t.stage = t.stage.map(|index| index + 1);
        }
    }
    Ok(records)
}

/// Atomically: a crash mid-write leaves the previous state, never half a file.
pub(super) fn save(file: &Path, records: &BTreeMap<String, Record>) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension("json.tmp");
    let written = Written {
        version: VERSION,
        migrations: records,
    };
    let text = serde_json::to_vec_pretty(&written).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_stage_indexes_become_stage_numbers() {
        let v1 = r#"{"shop/reviews": {"phase": "Holding", "stage": 1, "weight": 50,
            "shiftedAtMs": 1, "holdingSinceMs": 2,
            "history": [{"atMs": 1, "from": "Pending", "to": "Shifting", "stage": 0, "weight": 10, "reason": "started"},
              {"atMs": 2, "from": "Holding", "to": "Shifting", "stage": 1, "weight": 50, "reason": "held",
               "gates": {"atMs": 2, "windowS": 1.0, "mesh": {"requests": 120.0, "errors": 0.0, "p99Ms": 3.0},
                         "legacy": {"requests": 880.0, "errors": 1.0, "p99Ms": null},
                         "meshErrorRate": 0.0, "p99Ratio": null, "observedMeshPercent": 12.0,
                         "verdict": {"result": "pass"}}}]}}"#;
        let records = parse(v1).expect("format 1 reads");
        let rec = &records["shop/reviews"];
        assert_eq!(rec.stage, Some(2), "the second stage");
        assert_eq!(rec.history[0].stage, Some(1));
        let gates = rec.history[1].gates.as_ref().expect("gates kept");
        assert_eq!(
            (gates.mesh.requests, gates.legacy.errors),
            (120, 1),
            "float counts read"
        );
        assert_eq!(rec.held_ms, 0, "format 1 kept no held time");
    }

    #[test]
    fn format_2_round_trips_and_unknown_formats_are_refused() {
        let mut records = BTreeMap::new();
        records.insert(
            "shop/reviews".to_string(),
            Record {
                stage: Some(3),
                held_ms: 4_000,
                ..Record::default()
            },
        );
        let text = serde_json::to_string(&Written {
            version: VERSION,
            migrations: &records,
        })
        .expect("serialize");
        let back = parse(&text).expect("format 2 reads");
        assert_eq!(back["shop/reviews"].stage, Some(3));
        assert_eq!(back["shop/reviews"].held_ms, 4_000);
        let e = parse(r#"{"version": 9, "migrations": {}}"#).expect_err("format 9");
        assert!(e.contains("format 9"), "{e}");
    }
}
