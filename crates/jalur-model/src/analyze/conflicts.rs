//! Checks across resources: the same resource twice, two VirtualServices claiming one host on one
//! gateway, two DestinationRules for one host. The later one (by file, then line) is reported and
//! the message says where the earlier one is.

use std::collections::BTreeMap;

use crate::diag::codes;
use crate::{host, Config, Diagnostic, Resource, ResourceRef, Spec};

use super::{list, location};

pub(super) fn check(config: &Config, out: &mut Vec<Diagnostic>) {
    let mut in_order: Vec<&Resource> = config.resources.iter().collect();
    in_order.sort_by(|a, b| (&a.origin.file, a.origin.line).cmp(&(&b.origin.file, b.origin.line)));
    duplicates(&in_order, out);
    virtual_service_hosts(&in_order, out);
    destination_rule_hosts(&in_order, out);
}

fn duplicates(resources: &[&Resource], out: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<ResourceRef, &Resource> = BTreeMap::new();
    for r in resources {
        match seen.get(&r.reference()) {
            Some(first) => {
                let msg = format!(
                    "{} is already defined at {}; rename one of them or delete the copy",
                    r.reference(),
                    location(first)
                );
                out.push(r.diag(codes::DUPLICATE_RESOURCE, "metadata.name", msg));
            }
            None => {
                seen.insert(r.reference(), r);
            }
        }
    }
}

/// Per gateway (`mesh` for sidecars), one VirtualService per host: a second one is ignored or
/// merged unpredictably.
fn virtual_service_hosts(resources: &[&Resource], out: &mut Vec<Diagnostic>) {
    let mut claims: BTreeMap<(String, String), &Resource> = BTreeMap::new();
    for r in resources {
        let Spec::VirtualService(vs) = &r.spec else {
            continue;
        };
        let ns = &r.meta.namespace;
        let mut gateways: Vec<String> = if vs.gateways.is_empty() {
            vec!["mesh".to_string()]
        } else {
            vs.gateways.iter().map(|g| gateway_key(g, ns)).collect()
        };
        gateways.sort();
        gateways.dedup();
        for (k, h) in vs.hosts.iter().enumerate() {
            let fqdn = host::qualify(h, ns);
            let mut conflicts = Vec::new();
            for gw in &gateways {
                match claims.get(&(gw.clone(), fqdn.clone())) {
                    Some(other) if other.reference() != r.reference() => {
                        conflicts.push((gw.clone(), *other));
                    }
                    Some(_) => {}
                    None => {
                        claims.insert((gw.clone(), fqdn.clone()), r);
                    }
                }
            }
            let Some((_, other)) = conflicts.first() else {
                continue;
            };
            let on = list(conflicts.iter().map(|(gw, _)| gw));
            let msg = format!(
                "host {fqdn:?} on {on} is already claimed by VirtualService {}/{} ({}); merge the routes into one VirtualService",
                other.meta.namespace,
                other.meta.name,
                location(other)
            );
            out.push(r.diag(
                codes::CONFLICTING_VS_HOSTS,
                &format!("spec.hosts[{k}]"),
                msg,
            ));
        }
    }
}

/// `mesh`, or `namespace/name` of a gateway whatever the form it was written in.
fn gateway_key(entry: &str, namespace: &str) -> String {
    match entry.split_once('/') {
        _ if entry == "mesh" => entry.to_string(),
        Some(_) => entry.to_string(),
        None => format!("{namespace}/{entry}"),
    }
}

/// Two rules for one host in one namespace: only the first one's traffic policy applies.
fn destination_rule_hosts(resources: &[&Resource], out: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<(String, String), &Resource> = BTreeMap::new();
    for r in resources {
        let Spec::DestinationRule(dr) = &r.spec else {
            continue;
        };
        if dr.workload_selector.is_some() || dr.host.is_empty() {
            continue;
        }
        let key = (
            r.meta.namespace.clone(),
            host::qualify(&dr.host, &r.meta.namespace),
        );
        match seen.get(&key) {
            Some(first) if first.reference() != r.reference() => {
                let msg = format!(
                    "host {:?} already has DestinationRule {}/{} ({}); only the first rule's traffic policy applies, so merge them into one",
                    key.1,
                    first.meta.namespace,
                    first.meta.name,
                    location(first)
                );
                out.push(r.diag(codes::DUPLICATE_DESTINATION_RULE_HOST, "spec.host", msg));
            }
            Some(_) => {}
            None => {
                seen.insert(key, r);
            }
        }
    }
}
