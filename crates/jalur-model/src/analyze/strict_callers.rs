//! The migration's mTLS hazard: a STRICT PeerAuthentication on workloads that plaintext legacy
//! callers (no mesh identity) still reach. STRICT refuses every connection without a client
//! certificate, so those callers would fail. Two shapes are visible in config:
//!
//! - a `Migration` whose mesh path is a Consul name (`NAME.service.consul`, e.g. the meshed
//!   subset of a service split by origin): legacy code resolves that name in Consul itself and
//!   connects to the instances directly, with no jalur proxy or gateway in between to originate
//!   mTLS. (A mesh path on a mesh host is reached by legacy callers only through proxies —
//!   fronting proxies, gateways — which hold identities under mTLS and are not reported.)
//! - a ConsulRegistry export registering, under a Consul name legacy callers resolve, proxies a
//!   STRICT policy selects (its `matchLabels` all among the export's `gatewaySelector`) on the
//!   exported port: legacy callers then connect to them directly in plaintext.
//!
//! Both are Errors naming the policy and the caller, each with its file:line.

use std::collections::BTreeMap;

use crate::diag::codes;
use crate::jalur::{ConsulRegistry, Migration};
use crate::security::{MtlsMode, PeerPolicies, Resolved};
use crate::{host, Config, Diagnostic, Resource};

use super::location;

pub(super) fn check(config: &Config, root_namespace: &str, out: &mut Vec<Diagnostic>) {
    let policies = PeerPolicies::new(config, root_namespace);
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
    let Some(mesh_host) = m.mesh.host() else {
        return;
    };
    let ns = &r.meta.namespace;
    let fqdn = host::qualify(&mesh_host, ns);
    if super::hybrid::consul_name(&fqdn).is_none() {
        return;
    }
    // Offline, the meshed instances of a Consul name are taken to live in the Migration's
    // namespace (where its subsets and policies are written).
    let labels = subset_labels(config, &fqdn, m.mesh.subset.as_deref());
    let ports: Vec<u32> = m.port.into_iter().collect();
    let strict = policies
        .resolve_all(ns, &labels, &ports)
        .into_iter()
        .find(|res| res.mode == MtlsMode::Strict && res.decided_by.is_some());
    let Some(strict) = strict else { return };
    let msg = format!(
        "the mesh path {fqdn} is STRICT by {} while legacy callers resolving it in Consul (this Migration, {}) connect to its instances directly, with no identity: their plaintext connections would be refused. Keep it PERMISSIVE until the legacy callers are gone, or move them through a gateway (a ConsulRegistry export) and give the mesh path a mesh host",
        policy_name(&strict),
        location(r)
    );
    out.push(r.diag(codes::STRICT_WITH_PLAINTEXT_CALLERS, "spec.mesh", msg));
}

/// The labels of a DestinationRule subset of `fqdn`, if the path names one.
pub(super) fn subset_labels(
    config: &Config,
    fqdn: &str,
    subset: Option<&str>,
) -> BTreeMap<String, String> {
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
