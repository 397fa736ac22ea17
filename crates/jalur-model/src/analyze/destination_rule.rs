//! DestinationRule checks: the host, the subsets, and the traffic policies (top, per port, per
//! subset).

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::codes;
use crate::networking::{
    ClientTlsSettings, DestinationRule, OutlierDetection, TlsMode, TrafficPolicy,
};
use crate::{host, Diagnostic, Resource, Severity};

use super::index::{Index, Ports};
use super::{list, percentage, port_number};

pub(super) fn check(ix: &Index, r: &Resource, dr: &DestinationRule, out: &mut Vec<Diagnostic>) {
    let fqdn = host::qualify(&dr.host, &r.meta.namespace);
    if dr.host.is_empty() {
        out.push(r.diag(
            codes::MISSING_HOSTS,
            "spec.host",
            "a DestinationRule needs a host",
        ));
    } else if !ix.knows_pattern(&fqdn) {
        let mut diag = r.diag(
            codes::DR_UNKNOWN_HOST,
            "spec.host",
            format!("host {fqdn:?} is not a known service, so this rule applies to nothing; declare it with a ServiceEntry"),
        );
        if host::is_mesh_internal(&fqdn) {
            diag.message
                .push_str(" (or make sure a workload registers it at runtime)");
            diag = diag.with_severity(Severity::Info);
        }
        out.push(diag);
    }
    subsets(r, dr, out);
    let ports = match ix.service(&fqdn) {
        Some(Ports::Only(p)) => Some(p),
        _ => None,
    };
    let policies = dr
        .traffic_policy
        .iter()
        .map(|tp| ("spec.trafficPolicy".to_string(), tp))
        .chain(dr.subsets.iter().enumerate().filter_map(|(i, s)| {
            s.traffic_policy
                .as_ref()
                .map(|tp| (format!("spec.subsets[{i}].trafficPolicy"), tp))
        }));
    for (field, tp) in policies {
        traffic_policy(r, &field, tp, &fqdn, ports.as_ref(), out);
    }
}

fn subsets(r: &Resource, dr: &DestinationRule, out: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        let first = *seen.entry(&s.name).or_insert(i);
        if first != i {
            let msg = format!(
                "subset {:?} is already defined as spec.subsets[{first}]; rename one of them",
                s.name
            );
            out.push(r.diag(
                codes::DUPLICATE_SUBSET,
                &format!("spec.subsets[{i}].name"),
                msg,
            ));
        }
        if s.labels.is_empty() {
            let msg = format!(
                "subset {:?} has no labels, so it selects every endpoint of the host; add labels such as version: {}",
                s.name, s.name
            );
            out.push(r.diag(
                codes::SUBSET_WITHOUT_LABELS,
                &format!("spec.subsets[{i}]"),
                msg,
            ));
        }
    }
}

fn traffic_policy(
    r: &Resource,
    field: &str,
    tp: &TrafficPolicy,
    fqdn: &str,
    ports: Option<&BTreeSet<u32>>,
    out: &mut Vec<Diagnostic>,
) {
    if let Some(od) = &tp.outlier_detection {
        outlier(r, &format!("{field}.outlierDetection"), od, out);
    }
    if let Some(tls) = &tp.tls {
        client_tls(r, &format!("{field}.tls"), tls, out);
    }
    for (k, pl) in tp.port_level_settings.iter().enumerate() {
        let pf = format!("{field}.portLevelSettings[{k}]");
        let n = pl.port.number;
        if !port_number(r, &format!("{pf}.port.number"), n, out) {
            continue;
        }
        if let Some(ports) = ports.filter(|p| !p.contains(&n)) {
            let msg = format!("host {fqdn:?} has no port {n} (its ports: {})", list(ports));
            out.push(r.diag(codes::PORT_MISMATCH, &format!("{pf}.port.number"), msg));
        }
        if let Some(od) = &pl.outlier_detection {
            outlier(r, &format!("{pf}.outlierDetection"), od, out);
        }
        if let Some(tls) = &pl.tls {
            client_tls(r, &format!("{pf}.tls"), tls, out);
        }
    }
}

fn outlier(r: &Resource, field: &str, od: &OutlierDetection, out: &mut Vec<Diagnostic>) {
    if let Some(v) = od.max_ejection_percent {
        percentage(r, &format!("{field}.maxEjectionPercent"), f64::from(v), out);
    }
    if let Some(v) = od.min_health_percent {
        percentage(r, &format!("{field}.minHealthPercent"), f64::from(v), out);
    }
}

/// MUTUAL needs a client certificate and key, from files or from a credential. SIMPLE and MUTUAL
/// originate TLS from the files named here; `credentialName` (a Kubernetes secret) cannot be
/// read without Kubernetes, so such a rule is not translated: say so rather than let traffic go
/// in plaintext unannounced.
fn client_tls(r: &Resource, field: &str, tls: &ClientTlsSettings, out: &mut Vec<Diagnostic>) {
    if matches!(tls.mode, TlsMode::Simple | TlsMode::Mutual) && tls.credential_name.is_some() {
        let mode = if tls.mode == TlsMode::Simple {
            "SIMPLE"
        } else {
            "MUTUAL"
        };
        let msg = format!(
            "tls mode {mode} with credentialName (a Kubernetes secret) is not supported: connections to this host stay as they are (plaintext unless the mesh's mTLS applies); name the files (caCertificates, clientCertificate, privateKey) instead"
        );
        out.push(r.diag(
            codes::TLS_MODE_NOT_SUPPORTED,
            &format!("{field}.credentialName"),
            msg,
        ));
    }
    if tls.mode != TlsMode::Mutual || tls.credential_name.is_some() {
        return;
    }
    let missing: Vec<&str> = [
        (tls.client_certificate.is_none(), "clientCertificate"),
        (tls.private_key.is_none(), "privateKey"),
    ]
    .into_iter()
    .filter_map(|(m, name)| m.then_some(name))
    .collect();
    if !missing.is_empty() {
        let msg = format!(
            "tls mode MUTUAL without credentialName needs {}",
            missing.join(" and ")
        );
        out.push(r.diag(
            codes::INCOMPLETE_TLS_SETTINGS,
            &format!("{field}.mode"),
            msg,
        ));
    }
}
