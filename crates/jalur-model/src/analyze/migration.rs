//! Migrations: stages that can run, paths that exist, gates that can be judged, one Migration per
//! route.

use crate::diag::codes;
use crate::jalur::{Migration, MigrationPath};
use crate::{host, Config, Diagnostic, Resource};

pub(super) fn check(config: &Config, r: &Resource, m: &Migration, out: &mut Vec<Diagnostic>) {
    let mut bad = |field: &str, msg: String| out.push(r.diag(codes::INVALID_MIGRATION, field, msg));
    if m.stages.is_empty() {
        bad(
            "spec.stages",
            "a migration needs at least one stage (the last one at 100)".into(),
        );
    }
    let mut previous = 0;
    for (i, stage) in m.stages.iter().enumerate() {
        let field = format!("spec.stages[{i}].weight");
        if stage.weight == 0 || stage.weight > 100 {
            bad(
                &field,
                format!("stage weight {} is outside 1..100", stage.weight),
            );
        } else if stage.weight <= previous {
            bad(
                &field,
                format!(
                    "stage weights must increase: {} follows {previous}",
                    stage.weight
                ),
            );
        }
        previous = previous.max(stage.weight);
    }
    if let Some(last) = m.stages.last() {
        if last.weight != 100 {
            let field = format!("spec.stages[{}].weight", m.stages.len() - 1);
            bad(
                &field,
                format!(
                    "the last stage must move 100 % to the mesh path, not {}",
                    last.weight
                ),
            );
        }
    }
    for (side, path) in [("legacy", &m.legacy), ("mesh", &m.mesh)] {
        path_check(config, r, side, path, &mut bad);
    }
    let ns = &r.meta.namespace;
    let qualified = |p: &MigrationPath| p.host().map(|h| (host::qualify(&h, ns), p.subset.clone()));
    if qualified(&m.legacy).is_some() && qualified(&m.legacy) == qualified(&m.mesh) {
        bad(
            "spec.mesh",
            "the mesh path is the legacy path: give it another host or subset".into(),
        );
    }
    let gates = &m.gates;
    if let Some(rate) = gates.max_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            bad(
                "spec.gates.maxErrorRate",
                format!("{rate} is not a rate in 0..1 (0.01 is 1 %)"),
            );
        }
    }
    if let Some(ratio) = gates.max_p99_ratio {
        if ratio.is_nan() || ratio <= 0.0 {
            bad(
                "spec.gates.maxP99Ratio",
                format!("{ratio} must be a positive multiple"),
            );
        }
    }
    if gates.window.is_some_and(|w| w.as_std().is_zero()) {
        bad(
            "spec.gates.window",
            "the gate window must be longer than 0s".into(),
        );
    }
    route_reaches_legacy(config, r, m, out);
    // One controller per route: two Migrations moving the same route would fight over its weights.
    if let Some(route) = m.route_host().map(|h| host::qualify(&h, ns)) {
        for (other, om) in config.migrations() {
            let same = om
                .route_host()
                .map(|h| host::qualify(&h, &other.meta.namespace));
            if other.reference() < r.reference() && same.as_ref() == Some(&route) {
                let msg = format!(
                    "{} already migrates the route of {route}",
                    other.reference()
                );
                out.push(r.diag(codes::INVALID_MIGRATION, "spec.host", msg));
            }
        }
    }
}

fn path_check(
    config: &Config,
    r: &Resource,
    side: &str,
    path: &MigrationPath,
    bad: &mut impl FnMut(&str, String),
) {
    if path.host.is_none() && path.service.is_none() {
        bad(
            &format!("spec.{side}"),
            format!("the {side} path needs a `host`, or a Consul `service` (with its `registry`)"),
        );
    }
    if let Some(name) = &path.registry {
        let found = config
            .consul_registries()
            .any(|(reg, _)| reg.meta.name == *name && reg.meta.namespace == r.meta.namespace);
        if !found {
            bad(
                &format!("spec.{side}.registry"),
                format!("no ConsulRegistry {}/{name}", r.meta.namespace),
            );
        }
        if path.service.is_none() {
            bad(
                &format!("spec.{side}.service"),
                format!("the {side} path names a registry but not the Consul service to move"),
            );
        }
    }
    let (Some(subset), Some(h)) = (&path.subset, path.host()) else {
        return;
    };
    let h = host::qualify(&h, &r.meta.namespace);
    let defined = config.destination_rules().any(|(dr_r, dr)| {
        host::qualify(&dr.host, &dr_r.meta.namespace) == h
            && dr.subsets.iter().any(|s| s.name == *subset)
    });
    if !defined {
        bad(
            &format!("spec.{side}.subset"),
            format!("no DestinationRule for {h} defines subset {subset:?}"),
        );
    }
}

/// A VirtualService that claims the route where the Migration applies must send something to
/// the legacy path: the controller only splits routes that do, so otherwise nothing would move.
fn route_reaches_legacy(config: &Config, r: &Resource, m: &Migration, out: &mut Vec<Diagnostic>) {
    let ns = &r.meta.namespace;
    let (Some(route), Some(legacy)) = (m.route_host(), m.legacy.host()) else {
        return;
    };
    let route = host::qualify(&route, ns);
    let legacy = (host::qualify(&legacy, ns), m.legacy.subset.clone());
    let wanted = host::gateway_set(&m.gateways, ns);
    for (vr, vs) in config.virtual_services() {
        let vns = &vr.meta.namespace;
        let claims = vs.hosts.iter().any(|h| host::qualify(h, vns) == route)
            && !host::gateway_set(&vs.gateways, vns).is_disjoint(&wanted);
        if !claims {
            continue;
        }
        let reaches = vs.http.iter().flat_map(|h| h.route.iter()).any(|d| {
            host::qualify(&d.destination.host, vns) == legacy.0 && d.destination.subset == legacy.1
        });
        if !reaches {
            let subset = legacy
                .1
                .as_deref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default();
            let msg = format!(
                "{} claims {route} here but none of its routes goes to the legacy path ({}{subset}): the migration would move nothing",
                vr.reference(),
                legacy.0
            );
            out.push(r.diag(codes::INVALID_MIGRATION, "spec.legacy", msg));
        }
    }
}
