//! The migration's mTLS hazard: a STRICT PeerAuthentication on workloads that plaintext legacy
//! callers (no mesh identity) still reach. STRICT refuses every connection without a client
//! certificate, so those callers would fail. Two shapes are visible in config:
//!
//! - a `Migration` with a Consul legacy side (its callers are legacy clients resolving the Consul
//!   name) applied at `mesh` (the default: sidecars *and* the fronting proxies legacy callers go
//!   through, which hold no mesh identity) whose mesh path resolves STRICT. Applied only at named
//!   Gateways (jalur gateways holding credentials originate mTLS) it is fine.
//! - a ConsulRegistry export registering, under a Consul name legacy callers resolve, proxies a
//!   STRICT policy selects (its `matchLabels` all among the export's `gatewaySelector`) on the
//!   exported port: legacy callers then connect to them directly in plaintext.
//!
//! Both are Errors naming the policy and the caller, each with its file:line.

use std::collections::BTreeMap;

use crate::diag::codes;
use crate::jalur::{ConsulRegistry, Migration};
use crate::security::{MtlsMode, PeerPolicies, Resolved, DEFAULT_ROOT_NAMESPACE};
use crate::{host, Config, Diagnostic, Resource};

use super::location;

pub(super) fn check(config: &Config, out: &mut Vec<Diagnostic>) {
    let policies = PeerPolicies::new(config, DEFAULT_ROOT_NAMESPACE);
    if policies.is_empty() {
        return;
    }
    for (r, m) in config.migrations() {
        migration(config, &policies, r, m, out);
    }
    for (r, reg) in config.consul_registries() {
        exports(&policies, r, reg, out);
    }
}

/// `Kind ns/name (file:line) field`: how a message names the policy that decided a mode.
fn policy_name(resolved: &Resolved) -> String {
    match resolved.decided_by {
        Some((r, _)) => format!(
            "{} ({}:{}) {}",
            r.reference(),
            r.origin.file.display(),
            r.origin.line_of(&resolved.field()),
            resolved.field()
        ),
        None => "the default".to_string(),
    }
}

fn migration(
    config: &Config,
    policies: &PeerPolicies,
    r: &Resource,
    m: &Migration,
    out: &mut Vec<Diagnostic>,
) {
    let legacy_is_consul = m.legacy.service.is_some()
        || m.legacy
            .host
            .as_deref()
            .is_some_and(|h| super::hybrid::consul_name(h).is_some());
    let at_mesh = m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh");
    let Some(mesh_host) = m.mesh.host() else {
        return;
    };
    if !legacy_is_consul || !at_mesh {
        return;
    }
    let ns = &r.meta.namespace;
    let fqdn = host::qualify(&mesh_host, ns);
    // `name.NS.svc.cluster.local` lives in NS; any other host in the Migration's namespace.
    let workload_ns = fqdn
        .strip_suffix(&format!(".{}", host::CLUSTER_DOMAIN))
        .and_then(|s| s.split_once('.'))
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| ns.clone());
    let labels = subset_labels(config, &fqdn, m.mesh.subset.as_deref());
    let ports: Vec<u32> = m.port.into_iter().collect();
    let strict = policies
        .resolve_all(&workload_ns, &labels, &ports)
        .into_iter()
        .find(|res| res.mode == MtlsMode::Strict && res.decided_by.is_some());
    let Some(strict) = strict else { return };
    let caller = m.legacy.host().unwrap_or_default();
    let msg = format!(
        "the mesh path {fqdn} is STRICT by {} while legacy callers of {caller} (this Migration's legacy side, {}) reach it through proxies without a mesh identity (the Migration applies at `mesh`, fronting proxies included): their plaintext requests would be refused. Keep the mesh path PERMISSIVE until the legacy side is gone, or apply the Migration only at jalur gateways (spec.gateways), which originate mTLS",
        policy_name(&strict),
        location(r)
    );
    out.push(r.diag(codes::STRICT_WITH_PLAINTEXT_CALLERS, "spec.mesh", msg));
}

/// The labels of a DestinationRule subset of `fqdn`, if the path names one.
fn subset_labels(config: &Config, fqdn: &str, subset: Option<&str>) -> BTreeMap<String, String> {
    let Some(subset) = subset else {
        return BTreeMap::new();
    };
    config
        .destination_rules()
        .filter(|(r, dr)| host::qualify(&dr.host, &r.meta.namespace) == fqdn)
        .flat_map(|(_, dr)| dr.subsets.iter())
        .find(|s| s.name == subset)
        .map(|s| s.labels.clone())
        .unwrap_or_default()
}

fn exports(policies: &PeerPolicies, r: &Resource, reg: &ConsulRegistry, out: &mut Vec<Diagnostic>) {
    for (i, export) in reg.exports.iter().enumerate() {
        let labels = &export.gateway_selector;
        if labels.is_empty() {
            continue;
        }
        // The proxies an export registers may live in any namespace: look for a workload policy
        // in the registry's namespace (where its exports are declared) selecting them.
        if policies
            .workload_policy(&r.meta.namespace, labels)
            .is_none()
        {
            continue;
        }
        let res = policies.resolve(&r.meta.namespace, labels, Some(export.port));
        if res.mode != MtlsMode::Strict {
            continue;
        }
        let msg = format!(
            "export {:?} sends legacy callers resolving {:?} in Consul straight to the proxies labelled {labels:?} on port {}, which {} makes STRICT: without a mesh identity their plaintext connections would be refused. Export gateways (which accept plaintext and originate mTLS), or make that port PERMISSIVE",
            export.name,
            export.name,
            export.port,
            policy_name(&res)
        );
        out.push(r.diag(
            codes::STRICT_WITH_PLAINTEXT_CALLERS,
            &format!("spec.exports[{i}]"),
            msg,
        ));
    }
}

#[cfg(test)]
mod tests;
