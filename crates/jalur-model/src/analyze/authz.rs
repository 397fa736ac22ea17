//! AuthorizationPolicy checks, field by field: the value forms Istio accepts (principals as
//! `TRUST_DOMAIN/ns/NS/sa/SA`, `*` only as a whole value, a prefix or a suffix, IPs and CIDRs,
//! ports, paths from `/`), Istio's condition keys, and the actions jalur enforces (no CUSTOM).
//! What needs other resources (workloads, Migrations, RequestAuthentications) is in
//! [`super::authz_scope`].

use std::net::IpAddr;

use crate::diag::codes;
use crate::security::authz::AuthzAction;
use crate::security::authz::{Condition, Operation, Rule, Source};
use crate::security::AuthorizationPolicy;
use crate::{Config, Diagnostic, Resource};

use super::authz_scope;
use super::condition_key::ConditionKey;

pub(super) fn check(
    config: &Config,
    root_namespace: &str,
    r: &Resource,
    p: &AuthorizationPolicy,
    out: &mut Vec<Diagnostic>,
) {
    if p.action == AuthzAction::Custom {
        let msg = "action CUSTOM delegates to an external authorizer (ext_authz), which jalur does not run; use ALLOW/DENY rules, or keep this check in the application";
        out.push(r.diag(codes::AUTHORIZATION_NOT_SUPPORTED, "spec.action", msg));
    }
    for (i, rule) in p.rules().iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        check_rule(r, &at, rule, out);
        if p.action == AuthzAction::Deny && is_match_all(rule) {
            let msg = "this empty rule matches every request, so the DENY policy refuses every request to the workloads it selects whatever the ALLOW policies say; give the rule `from`, `to` or `when` fields, or delete the policy";
            out.push(r.diag(codes::DENY_SHADOWS_ALLOW, &at, msg));
        }
    }
    authz_scope::check(config, root_namespace, r, p, out);
}

/// `- {}`: no field narrows it, so it matches every request.
pub(super) fn is_match_all(rule: &Rule) -> bool {
    rule.from.is_empty() && rule.to.is_empty() && rule.when.is_empty()
}

fn check_rule(r: &Resource, at: &str, rule: &Rule, out: &mut Vec<Diagnostic>) {
    for (j, from) in rule.from.iter().enumerate() {
        check_source(r, &format!("{at}.from[{j}].source"), &from.source, out);
    }
    for (j, to) in rule.to.iter().enumerate() {
        check_operation(r, &format!("{at}.to[{j}].operation"), &to.operation, out);
    }
    for (j, when) in rule.when.iter().enumerate() {
        check_condition(r, &format!("{at}.when[{j}]"), when, out);
    }
}

fn check_source(r: &Resource, at: &str, s: &Source, out: &mut Vec<Diagnostic>) {
    if source_is_empty(s) {
        let msg = "a source with no field matches nothing in Istio (it refuses it); write the fields the caller must match, or drop this `from` entry";
        out.push(r.diag(codes::INVALID_AUTHORIZATION_RULE, at, msg));
    }
    for (name, values) in [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
    ] {
        each(at, name, values, |f, v| principal(r, f, v, out));
    }
    for (name, values) in [
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
    ] {
        each(at, name, values, |f, v| request_principal(r, f, v, out));
    }
    for (name, values) in [
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
    ] {
        each(at, name, values, |f, v| plain(r, f, v, "namespace", out));
    }
    for (name, values) in [
        ("serviceAccounts", &s.service_accounts),
        ("notServiceAccounts", &s.not_service_accounts),
    ] {
        each(at, name, values, |f, v| service_account(r, f, v, out));
    }
    for (name, values) in [
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ] {
        each(at, name, values, |f, v| ip_block(r, f, v, out));
    }
}

fn source_is_empty(s: &Source) -> bool {
    [
        &s.principals,
        &s.not_principals,
        &s.request_principals,
        &s.not_request_principals,
        &s.namespaces,
        &s.not_namespaces,
        &s.service_accounts,
        &s.not_service_accounts,
        &s.ip_blocks,
        &s.not_ip_blocks,
        &s.remote_ip_blocks,
        &s.not_remote_ip_blocks,
    ]
    .iter()
    .all(|v| v.is_empty())
}

fn check_operation(r: &Resource, at: &str, o: &Operation, out: &mut Vec<Diagnostic>) {
    let all = [
        &o.hosts,
        &o.not_hosts,
        &o.ports,
        &o.not_ports,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ];
    if all.iter().all(|v| v.is_empty()) {
        let msg = "an operation with no field matches nothing in Istio (it refuses it); write the hosts, ports, methods or paths it must match, or drop this `to` entry";
        out.push(r.diag(codes::INVALID_AUTHORIZATION_RULE, at, msg));
    }
    for (name, values) in [("hosts", &o.hosts), ("notHosts", &o.not_hosts)] {
        each(at, name, values, |f, v| plain(r, f, v, "host", out));
    }
    for (name, values) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
        each(at, name, values, |f, v| port(r, f, v, out));
    }
    for (name, values) in [("methods", &o.methods), ("notMethods", &o.not_methods)] {
        each(at, name, values, |f, v| method(r, f, v, out));
    }
    for (name, values) in [("paths", &o.paths), ("notPaths", &o.not_paths)] {
        each(at, name, values, |f, v| path(r, f, v, out));
    }
}

fn check_condition(r: &Resource, at: &str, c: &Condition, out: &mut Vec<Diagnostic>) {
    if c.values.is_empty() && c.not_values.is_empty() {
        let msg = "a condition needs values or notValues; Istio refuses one with neither";
        out.push(r.diag(codes::INVALID_AUTHORIZATION_RULE, at, msg));
    }
    let key = match ConditionKey::parse(&c.key) {
        Ok(key) => key,
        Err(why) if c.key.starts_with("experimental.envoy.filters.") => {
            let msg = format!("{:?} reads Envoy filter metadata directly, which jalur proxy does not carry; use one of Istio's stable keys ({why})", c.key);
            out.push(r.diag(
                codes::AUTHORIZATION_NOT_SUPPORTED,
                &format!("{at}.key"),
                msg,
            ));
            return;
        }
        Err(why) => {
            let msg = format!("unknown condition key {:?}: {why}", c.key);
            out.push(r.diag(codes::UNKNOWN_CONDITION_KEY, &format!("{at}.key"), msg));
            return;
        }
    };
    for (name, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        each(at, name, values, |f, v| match key {
            ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                ip_block(r, f, v, out)
            }
            ConditionKey::DestinationPort => port(r, f, v, out),
            ConditionKey::SourcePrincipal => principal(r, f, v, out),
            ConditionKey::RequestPrincipal => request_principal(r, f, v, out),
            _ => {
                plain(r, f, v, "value", out);
            }
        });
    }
}

fn each<R>(at: &str, name: &str, values: &[String], mut f: impl FnMut(&str, &str) -> R) {
    for (k, v) in values.iter().enumerate() {
        let _ = f(&format!("{at}.{name}[{k}]"), v);
    }
}

/// Istio's matching forms: exact, `prefix*`, `*suffix`, or `*` (present). `None` when the
/// value has a `*` anywhere else (or two).
fn wildcard_ok(v: &str) -> bool {
    match v.matches('*').count() {
        0 => true,
        1 => v.starts_with('*') || v.ends_with('*'),
        _ => false,
    }
}

fn has_wildcard(v: &str) -> bool {
    v.contains('*')
}

/// A value of any field: not empty, `*` only at one end.
fn plain(r: &Resource, f: &str, v: &str, what: &str, out: &mut Vec<Diagnostic>) -> bool {
    let msg = if v.is_empty() {
        format!("empty {what}: it matches nothing; write one, or `*` for any")
    } else if !wildcard_ok(v) {
        format!("{what} {v:?} has a `*` in the middle (or two); Istio matches only exact values, `prefix*`, `*suffix` and `*`")
    } else {
        return true;
    };
    out.push(r.diag(codes::INVALID_AUTHORIZATION_RULE, f, msg));
    false
}

/// `TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT`, the SPIFFE id without its scheme.
fn principal(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    let why = if let Some(rest) = v.strip_prefix("spiffe://") {
        format!(
            "drop the spiffe:// prefix: Istio adds it, so {v:?} matches no peer; write {rest:?}"
        )
    } else if v.is_empty() || !wildcard_ok(v) {
        format!("{v:?} is neither an identity nor `prefix*`, `*suffix` or `*`")
    } else if has_wildcard(v) || is_spiffe_path(v) {
        return;
    } else {
        format!("{v:?} is not an identity; write TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT, e.g. cluster.local/ns/default/sa/checkout")
    };
    out.push(r.diag(codes::INVALID_PRINCIPAL, f, why));
}

fn is_spiffe_path(v: &str) -> bool {
    matches!(v.split('/').collect::<Vec<_>>().as_slice(),
        [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty())
}

/// `ISSUER/SUBJECT` of a JWT (the issuer may itself contain `/`).
fn request_principal(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    if !plain(r, f, v, "request principal", out) || has_wildcard(v) {
        return;
    }
    let ok = v
        .rsplit_once('/')
        .is_some_and(|(iss, sub)| !iss.is_empty() && !sub.is_empty());
    if !ok {
        let msg = format!("{v:?} is not a JWT identity; write ISSUER/SUBJECT, e.g. https://issuer.example.com/alice");
        out.push(r.diag(codes::INVALID_PRINCIPAL, f, msg));
    }
}

/// `NAMESPACE/ACCOUNT`, no wildcards (Istio's form for serviceAccounts).
fn service_account(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    let ok = matches!(v.split('/').collect::<Vec<_>>().as_slice(),
        [ns, sa] if !ns.is_empty() && !sa.is_empty() && !v.contains('*'));
    if !ok {
        let msg = format!("{v:?} is not a service account; write NAMESPACE/ACCOUNT without wildcards, e.g. default/checkout");
        out.push(r.diag(codes::INVALID_PRINCIPAL, f, msg));
    }
}

/// An IP (`10.0.0.1`, `::1`) or a CIDR (`10.0.0.0/8`).
pub(super) fn parse_ip_block(v: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
    };
    Some((addr, len))
}

fn ip_block(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    if parse_ip_block(v).is_none() {
        let msg =
            format!("{v:?} is not an IP address or CIDR range; write e.g. 10.0.0.1 or 10.0.0.0/16");
        out.push(r.diag(codes::INVALID_IP_BLOCK, f, msg));
    }
}

fn port(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    match v.parse::<u32>() {
        Ok(n) => {
            super::port_number(r, f, n, out);
        }
        Err(_) => {
            let msg = format!("{v:?} is not a port number; use 1-65535 (ports take no wildcards)");
            out.push(r.diag(codes::INVALID_PORT_NUMBER, f, msg));
        }
    }
}

fn method(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    if !plain(r, f, v, "method", out) {
        return;
    }
    if v != v.to_ascii_uppercase() {
        let msg = format!(
            "method {v:?} is compared exactly with the request's (always upper case), so it matches nothing; write {:?}",
            v.to_ascii_uppercase()
        );
        out.push(r.diag(codes::METHOD_NOT_UPPER_CASE, f, msg));
    }
}

fn path(r: &Resource, f: &str, v: &str, out: &mut Vec<Diagnostic>) {
    let msg = if v.contains('{') {
        format!("{v:?} is a path template ({{*}}, {{**}}), which jalur does not match; use `prefix*` or `*suffix`")
    } else if !(v.starts_with('/') || v.starts_with('*')) {
        format!("path {v:?} matches no request: a request path starts with `/`; write e.g. /{v}, or `*{v}` for a suffix")
    } else if !wildcard_ok(v) {
        format!("path {v:?} has a `*` in the middle (or two); Istio matches only exact paths, `prefix*`, `*suffix` and `*`")
    } else {
        return;
    };
    let code = if v.contains('{') {
        codes::AUTHORIZATION_NOT_SUPPORTED
    } else {
        codes::INVALID_AUTHORIZATION_PATH
    };
    out.push(r.diag(code, f, msg));
}
