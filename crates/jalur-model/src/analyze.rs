//! Offline analyzers behind `jalur analyze`: findings that need more than one field, or more than
//! one resource, to see (a route to a subset no DestinationRule defines, weights that do not add
//! up, two VirtualServices claiming one host). Loading has already checked each field's shape.
//!
//! Every finding is a [`Diagnostic`] located at the field that causes it. Hosts are compared after
//! [`host::qualify`] with the namespace of the resource that wrote them, wildcards through
//! [`host::matches`]. The services the mesh knows are the ServiceEntry hosts plus whatever the
//! caller passes as [`KnownServices`] (the control plane adds what its registries see).

mod authz;
mod authz_scope;
mod condition_key;
mod conflicts;
mod destination_rule;
mod gateway;
pub mod hybrid;
mod index;
mod migration;
mod passthrough;
mod peer_authentication;
mod request_authn;
mod service_entry;
mod sidecar;
mod strict_callers;
mod virtual_service;

#[cfg(test)]
mod authz_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::diag::codes;
use crate::security::DEFAULT_ROOT_NAMESPACE;
use crate::{host, Config, Diagnostic, Resource, Spec};

use index::Index;

/// Hosts known outside the config (registries, proxies announcing themselves): fully qualified
/// host (wildcards allowed) -> its ports. An empty set means the ports are not known, so no port
/// check is made against that host.
pub type KnownServices = BTreeMap<String, BTreeSet<u32>>;

/// Runs every analyzer over a loaded config, knowing only the services the config declares,
/// with mesh-wide policies in the default root namespace.
pub fn analyze(config: &Config) -> Vec<Diagnostic> {
    analyze_with(config, &KnownServices::new())
}

/// Runs every analyzer, with `extra` services known besides the ServiceEntry hosts, and
/// mesh-wide policies in the default root namespace.
pub fn analyze_with(config: &Config, extra: &KnownServices) -> Vec<Diagnostic> {
    analyze_in(config, extra, DEFAULT_ROOT_NAMESPACE)
}

/// Runs every analyzer, with `extra` services known besides the ServiceEntry hosts, reading
/// mesh-wide PeerAuthentication, AuthorizationPolicy and RequestAuthentication in `root_namespace` (the control plane's `--root-namespace`).
/// Results are sorted by file, line and code, so output is stable whatever the input order.
pub fn analyze_in(config: &Config, extra: &KnownServices, root_namespace: &str) -> Vec<Diagnostic> {
    let mut known = extra.clone();
    // Hosts a ConsulRegistry will provide at runtime: every `NAME.service.consul`, and aliases.
    for (_, reg) in config.consul_registries() {
        known
            .entry(format!("*.{}", hybrid::CONSUL_DOMAIN))
            .or_default();
        for aliases in reg.aliases.values() {
            for a in aliases {
                known.entry(a.clone()).or_default();
            }
        }
    }
    let index = Index::build(config, &known);
    let mut out = Vec::new();
    conflicts::check(config, &mut out);
    strict_callers::check(config, root_namespace, &mut out);
    authz_scope::legacy_callers(config, root_namespace, &mut out);
    passthrough::check(config, &mut out);
    for r in &config.resources {
        match &r.spec {
            Spec::VirtualService(vs) => virtual_service::check(&index, r, vs, &mut out),
            Spec::DestinationRule(dr) => destination_rule::check(&index, r, dr, &mut out),
            Spec::ServiceEntry(se) => service_entry::check(r, se, &mut out),
            Spec::WorkloadEntry(we) => service_entry::check_workload_entry(r, we, &mut out),
            Spec::Gateway(gw) => gateway::check(r, gw, &mut out),
            Spec::Sidecar(s) => sidecar::check(config, root_namespace, r, s, &mut out),
            Spec::ConsulRegistry(_) => {}
            Spec::Migration(m) => migration::check(config, r, m, &mut out),
            Spec::PeerAuthentication(pa) => peer_authentication::check(config, r, pa, &mut out),
            Spec::AuthorizationPolicy(p) => authz::check(config, root_namespace, r, p, &mut out),
            Spec::RequestAuthentication(ra) => {
                request_authn::check(config, root_namespace, r, ra, &mut out)
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.file, a.line, a.code, &a.field, &a.message)
            .cmp(&(&b.file, b.line, b.code, &b.field, &b.message))
    });
    out
}

/// `file:line` of a resource, for messages that point at another resource.
fn location(r: &Resource) -> String {
    format!("{}:{}", r.origin.file.display(), r.origin.line)
}

/// Two host patterns can name the same host (either one's wildcard covers the other).
fn overlaps(a: &str, b: &str) -> bool {
    host::matches(a, b) || host::matches(b, a)
}

fn is_ip(address: &str) -> bool {
    address.parse::<IpAddr>().is_ok()
}

/// Reports `value` at `field` when it is not a valid TCP port number.
fn port_number(r: &Resource, field: &str, value: u32, out: &mut Vec<Diagnostic>) -> bool {
    let valid = (1..=65535).contains(&value);
    if !valid {
        let msg = format!("port {value} is not a valid port number; use 1-65535");
        out.push(r.diag(codes::INVALID_PORT_NUMBER, field, msg));
    }
    valid
}

/// Reports a percentage outside 0..=100 (NaN included).
fn percentage(r: &Resource, field: &str, value: f64, out: &mut Vec<Diagnostic>) {
    if !(0.0..=100.0).contains(&value) {
        let msg = format!("percentage {value} is outside 0..100");
        out.push(r.diag(codes::PERCENTAGE_OUT_OF_RANGE, field, msg));
    }
}

fn list(items: impl IntoIterator<Item = impl ToString>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}
