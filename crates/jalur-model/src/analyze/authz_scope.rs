//! AuthorizationPolicy checks that need the rest of the config:
//!
//! - a selector that matches no workload the config knows (WorkloadEntries, ServiceEntry
//!   endpoints and workloadSelectors, DestinationRule subsets of those, Gateway selectors,
//!   ConsulRegistry exports). Sidecars register their labels at runtime, so this is a Warning.
//! - HTTP-only fields in a rule whose ports are all TCP ports of the selected workloads: the
//!   network RBAC filter cannot see them, and Istio drops such an ALLOW rule (it matches nothing)
//!   and strips them from a DENY or AUDIT rule (it matches more).
//! - an ALLOW policy on the workloads that legacy callers reach in plaintext (a Migration's mesh
//!   path on a Consul name, a ConsulRegistry export's proxies) whose every rule needs a mesh
//!   identity: those callers have none and would all be refused (the same shapes as
//!   [`super::strict_callers`]).
//! - JWT fields (`requestPrincipals`, `request.auth.*`) without a RequestAuthentication that can
//!   apply to the same workloads: no request then carries a JWT principal.

use std::collections::{BTreeMap, BTreeSet};

use crate::diag::codes;
use crate::security::authz::AuthzAction;
use crate::security::authz::{Rule, Source};
use crate::security::AuthorizationPolicy;
use crate::{host, Config, Diagnostic, Resource};

use super::condition_key::ConditionKey;
use super::location;

type Labels = BTreeMap<String, String>;

pub(super) fn check(
    config: &Config,
    root_namespace: &str,
    r: &Resource,
    p: &AuthorizationPolicy,
    out: &mut Vec<Diagnostic>,
) {
    let mesh_wide = r.meta.namespace == root_namespace;
    if let Some(selector) = p.match_labels() {
        let ns = (!mesh_wide).then_some(r.meta.namespace.as_str());
        if !known_workloads(config, ns)
            .iter()
            .any(|l| selects(selector, l))
        {
            let msg = format!(
                "selector {selector:?} matches no workload this config knows (WorkloadEntry, ServiceEntry endpoints or workloadSelector, DestinationRule subset, Gateway selector, ConsulRegistry export{}); a proxy registering with these labels at runtime would still get the policy, so check them for typos",
                if mesh_wide { "" } else { " in this namespace" }
            );
            out.push(r.diag(codes::POLICY_SELECTS_NO_WORKLOAD, "spec.selector", msg));
        }
    }
    tcp_only_rules(config, mesh_wide, r, p, out);
    jwt_without_authentication(config, root_namespace, r, p, out);
}

/// Every `selector` key has its value in `labels`.
pub(super) fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Two selectors can pick the same workload: they agree on every key both name.
pub(super) fn compatible(a: Option<&Labels>, b: Option<&Labels>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v)),
        _ => true,
    }
}

/// The label sets of workloads the config declares, in namespace `ns` (all when `None`).
/// Gateway and export selectors count in any namespace: their proxies may run anywhere.
fn known_workloads(config: &Config, ns: Option<&str>) -> Vec<Labels> {
    let in_ns = |r: &Resource| ns.is_none_or(|ns| r.meta.namespace == ns);
    let mut sets = Vec::new();
    for (r, we) in config.workload_entries() {
        if in_ns(r) {
            sets.push(we.labels.clone());
        }
    }
    for (r, se) in config.service_entries() {
        if !in_ns(r) {
            continue;
        }
        sets.extend(se.endpoints.iter().map(|e| e.labels.clone()));
        let Some(base) = se.workload_selector.as_ref().map(|w| &w.labels) else {
            continue;
        };
        sets.push(base.clone());
        let hosts: Vec<String> = se
            .hosts
            .iter()
            .map(|h| host::qualify(h, &r.meta.namespace))
            .collect();
        for (dr_r, dr) in config.destination_rules() {
            let dr_host = host::qualify(&dr.host, &dr_r.meta.namespace);
            if hosts.iter().any(|h| super::overlaps(h, &dr_host)) {
                for s in &dr.subsets {
                    let mut l = base.clone();
                    l.extend(s.labels.clone());
                    sets.push(l);
                }
            }
        }
    }
    sets.extend(config.gateways().map(|(_, gw)| gw.selector.clone()));
    for (_, reg) in config.consul_registries() {
        sets.extend(reg.exports.iter().map(|e| e.gateway_selector.clone()));
    }
    sets.retain(|l| !l.is_empty());
    sets
}

/// Port numbers declared non-HTTP (TCP, TLS, Redis, …) on the workloads the policy selects,
/// minus any number also declared HTTP there.
fn tcp_ports(
    config: &Config,
    mesh_wide: bool,
    r: &Resource,
    p: &AuthorizationPolicy,
) -> BTreeSet<u32> {
    let sel = p.match_labels();
    let (mut tcp, mut http) = (BTreeSet::new(), BTreeSet::new());
    let mut note = |proto: Option<&str>, name: Option<&str>, number: u32| {
        if proto.or(name).is_some_and(is_tcp_protocol) {
            tcp.insert(number);
        } else {
            http.insert(number);
        }
    };
    for (res, se) in config.service_entries() {
        let mut labels: Vec<&Labels> = se.endpoints.iter().map(|e| &e.labels).collect();
        labels.extend(se.workload_selector.as_ref().map(|w| &w.labels));
        let in_scope = mesh_wide || res.meta.namespace == r.meta.namespace;
        if in_scope && sel.is_none_or(|s| labels.iter().any(|l| selects(s, l))) {
            for port in &se.ports {
                let number = port.target_port.unwrap_or(port.number);
                note(port.protocol.as_deref(), port.name.as_deref(), number);
            }
        }
    }
    // A gateway's proxies may live in any namespace: only its selector decides.
    for (_, gw) in config.gateways() {
        if sel.is_some_and(|s| selects(s, &gw.selector)) {
            for s in &gw.servers {
                let number = s.port.target_port.unwrap_or(s.port.number);
                note(s.port.protocol.as_deref(), s.port.name.as_deref(), number);
            }
        }
    }
    tcp.retain(|n| !http.contains(n));
    tcp
}

/// Istio's protocol names (or port-name prefixes) that the inbound listener carries as TCP.
fn is_tcp_protocol(name: &str) -> bool {
    let prefix = name.split('-').next().unwrap_or(name).to_ascii_lowercase();
    matches!(
        prefix.as_str(),
        "tcp" | "tls" | "https" | "mongo" | "redis" | "mysql"
    )
}

/// The ports a rule is limited to (`to.operation.ports` of every operation, or a
/// `destination.port` condition); `None` when some part of it applies to any port.
pub(super) fn rule_ports(rule: &Rule) -> Option<BTreeSet<u32>> {
    let parse = |v: &[String]| {
        v.iter()
            .filter_map(|p| p.parse().ok())
            .collect::<BTreeSet<u32>>()
    };
    let by_when = rule
        .when
        .iter()
        .find(|c| c.key == "destination.port" && !c.values.is_empty())
        .map(|c| parse(&c.values));
    let by_to = (!rule.to.is_empty() && rule.to.iter().all(|t| !t.operation.ports.is_empty()))
        .then(|| {
            rule.to
                .iter()
                .flat_map(|t| parse(&t.operation.ports))
                .collect()
        });
    by_when.or(by_to).filter(|p: &BTreeSet<u32>| !p.is_empty())
}

/// The HTTP-only fields a rule uses, by name, for the message.
fn http_only_fields(rule: &Rule) -> Vec<String> {
    let mut fields = BTreeSet::new();
    for t in &rule.to {
        let o = &t.operation;
        for (name, v) in [
            ("hosts", &o.hosts),
            ("notHosts", &o.not_hosts),
            ("methods", &o.methods),
            ("notMethods", &o.not_methods),
            ("paths", &o.paths),
            ("notPaths", &o.not_paths),
        ] {
            if !v.is_empty() {
                fields.insert(name.to_string());
            }
        }
    }
    for f in &rule.from {
        if !f.source.request_principals.is_empty() {
            fields.insert("requestPrincipals".to_string());
        }
        if !f.source.not_request_principals.is_empty() {
            fields.insert("notRequestPrincipals".to_string());
        }
    }
    for c in &rule.when {
        if ConditionKey::parse(&c.key).is_ok_and(ConditionKey::is_http_only) {
            fields.insert(c.key.clone());
        }
    }
    fields.into_iter().collect()
}

fn tcp_only_rules(
    config: &Config,
    mesh_wide: bool,
    r: &Resource,
    p: &AuthorizationPolicy,
    out: &mut Vec<Diagnostic>,
) {
    let tcp = tcp_ports(config, mesh_wide, r, p);
    for (i, rule) in p.rules().iter().enumerate() {
        let Some(ports) = rule_ports(rule).filter(|ports| ports.is_subset(&tcp)) else {
            continue;
        };
        let fields = http_only_fields(rule);
        if fields.is_empty() {
            continue;
        }
        let effect = match p.action {
            AuthzAction::Allow => "this ALLOW rule is dropped there (it matches no connection)",
            _ => "they are removed from this rule there, so it matches every connection its other fields match",
        };
        let msg = format!(
            "the rule applies only to TCP port(s) {} of the selected workloads, where the network RBAC filter cannot see HTTP fields ({}): {effect}; move those fields to a rule for an HTTP port",
            super::list(&ports),
            fields.join(", ")
        );
        out.push(r.diag(
            codes::HTTP_RULE_ON_TCP_PORT,
            &format!("spec.rules[{i}]"),
            msg,
        ));
    }
}

/// The first field of a policy that reads a JWT, if any.
fn jwt_field(p: &AuthorizationPolicy) -> Option<String> {
    for (i, rule) in p.rules().iter().enumerate() {
        for (j, f) in rule.from.iter().enumerate() {
            let at = format!("spec.rules[{i}].from[{j}].source");
            if !f.source.request_principals.is_empty() {
                return Some(format!("{at}.requestPrincipals"));
            }
            if !f.source.not_request_principals.is_empty() {
                return Some(format!("{at}.notRequestPrincipals"));
            }
        }
        for (j, c) in rule.when.iter().enumerate() {
            if ConditionKey::parse(&c.key).is_ok_and(ConditionKey::is_jwt) {
                return Some(format!("spec.rules[{i}].when[{j}].key"));
            }
        }
    }
    None
}

fn jwt_without_authentication(
    config: &Config,
    root_namespace: &str,
    r: &Resource,
    p: &AuthorizationPolicy,
    out: &mut Vec<Diagnostic>,
) {
    let Some(field) = jwt_field(p) else { return };
    let covered = config.request_authentications().any(|(ra_r, ra)| {
        let ns = &ra_r.meta.namespace;
        let ra_labels = ra
            .selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty());
        (ns == &r.meta.namespace || ns == root_namespace)
            && !ra.jwt_rules.is_empty()
            && compatible(ra_labels, p.match_labels())
    });
    if !covered {
        let msg = "no RequestAuthentication applies to the workloads this policy selects, so no request carries a JWT identity: a rule requiring one matches nothing, a rule excluding one matches everything; add a RequestAuthentication with the issuer's jwtRules";
        out.push(r.diag(codes::REQUEST_PRINCIPAL_WITHOUT_AUTHENTICATION, &field, msg));
    }
}

/// Run once per config: ALLOW policies that refuse every plaintext legacy caller.
pub(super) fn legacy_callers(config: &Config, root_namespace: &str, out: &mut Vec<Diagnostic>) {
    let allows: Vec<(&Resource, &AuthorizationPolicy)> = config
        .authorization_policies()
        .filter(|(_, p)| p.action == AuthzAction::Allow)
        .collect();
    if allows.is_empty() {
        return;
    }
    for (mr, m) in config.migrations() {
        let Some(mesh_host) = m.mesh.host() else {
            continue;
        };
        let fqdn = host::qualify(&mesh_host, &mr.meta.namespace);
        if super::hybrid::consul_name(&fqdn).is_none() {
            continue;
        }
        let labels = super::strict_callers::subset_labels(config, &fqdn, m.mesh.subset.as_deref());
        let scope = Scope {
            root_namespace,
            namespace: &mr.meta.namespace,
            labels: &labels,
            port: m.port,
        };
        let caller = format!(
            "legacy callers of the mesh path {fqdn} (Migration {} at {}), who resolve it in Consul and connect directly, without a mesh identity",
            mr.reference(),
            location(mr)
        );
        lockout(&allows, &scope, &caller, out);
    }
    for (rr, reg) in config.consul_registries() {
        for (i, export) in reg.exports.iter().enumerate() {
            if export.gateway_selector.is_empty() {
                continue;
            }
            let scope = Scope {
                root_namespace,
                namespace: &rr.meta.namespace,
                labels: &export.gateway_selector,
                port: Some(export.port),
            };
            let caller = format!(
                "legacy callers resolving {:?} in Consul (ConsulRegistry {} spec.exports[{i}] at {}), who connect to these proxies in plaintext, without a mesh identity",
                export.name,
                rr.reference(),
                location(rr)
            );
            lockout(&allows, &scope, &caller, out);
        }
    }
}

/// The workloads (and port) legacy callers reach.
struct Scope<'a> {
    root_namespace: &'a str,
    namespace: &'a str,
    labels: &'a Labels,
    port: Option<u32>,
}

fn lockout(
    allows: &[(&Resource, &AuthorizationPolicy)],
    scope: &Scope,
    caller: &str,
    out: &mut Vec<Diagnostic>,
) {
    let applying: Vec<_> = allows
        .iter()
        .filter(|(r, p)| {
            (r.meta.namespace == scope.namespace || r.meta.namespace == scope.root_namespace)
                && p.match_labels()
                    .is_none_or(|sel| selects(sel, scope.labels))
        })
        .collect();
    if applying.is_empty()
        || applying
            .iter()
            .any(|(_, p)| admits_anonymous(p, scope.port))
    {
        return;
    }
    for (r, p) in applying {
        let field = if p.rules().is_empty() {
            "spec"
        } else {
            "spec.rules"
        };
        let msg = format!(
            "this ALLOW policy admits only callers with a mesh identity (principals, namespaces, serviceAccounts) and no other ALLOW policy admits the others, so it refuses every one of the {caller}. Add a rule for them (e.g. their ipBlocks) until the migration is done"
        );
        out.push(r.diag(codes::ALLOW_LOCKS_OUT_LEGACY_CALLERS, field, msg));
    }
}

/// Some rule of the policy can match a plaintext caller on `port`.
fn admits_anonymous(p: &AuthorizationPolicy, port: Option<u32>) -> bool {
    p.rules().iter().any(|rule| {
        let on_port = match (port, rule_ports(rule)) {
            (Some(port), Some(ports)) => ports.contains(&port),
            _ => true,
        };
        let source_ok =
            rule.from.is_empty() || rule.from.iter().any(|f| !needs_identity(&f.source));
        let when_ok = !rule.when.iter().any(|c| {
            matches!(c.key.as_str(), "source.principal" | "source.namespace")
                && !c.values.is_empty()
        });
        on_port && source_ok && when_ok
    })
}

fn needs_identity(s: &Source) -> bool {
    !s.principals.is_empty() || !s.namespaces.is_empty() || !s.service_accounts.is_empty()
}
