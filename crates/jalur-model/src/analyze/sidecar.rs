//! Sidecar checks: egress host entries in Istio's `namespace/dnsName` form, one Sidecar per
//! workload, and the fields jalur accepts but does not act on (it captures no traffic).

use crate::diag::codes;
use crate::networking::{OutboundMode, Sidecar};
use crate::{Config, Diagnostic, Resource};

pub(super) fn check(
    config: &Config,
    root_namespace: &str,
    r: &Resource,
    s: &Sidecar,
    out: &mut Vec<Diagnostic>,
) {
    for (i, egress) in s.egress.iter().enumerate() {
        let ef = format!("spec.egress[{i}]");
        if egress.hosts.is_empty() {
            let msg = "an egress listener needs hosts (`namespace/dnsName`, e.g. `./*` or `istio-system/*`)";
            out.push(r.diag(codes::INVALID_SIDECAR_HOST, &format!("{ef}.hosts"), msg));
        }
        for (k, host) in egress.hosts.iter().enumerate() {
            if let Err(why) = host_entry(host) {
                let msg = format!("egress host {host:?} {why}");
                out.push(r.diag(
                    codes::INVALID_SIDECAR_HOST,
                    &format!("{ef}.hosts[{k}]"),
                    msg,
                ));
            }
        }
        let ignored = [
            ("port", egress.port.is_some()),
            ("bind", egress.bind.is_some()),
            ("captureMode", egress.capture_mode.is_some()),
        ];
        for (field, set) in ignored {
            if set {
                let msg = format!("{field} is ignored: jalur proxies call services through one outbound listener and capture no traffic; only hosts scope what the proxy sees");
                out.push(r.diag(codes::SIDECAR_FIELD_IGNORED, &format!("{ef}.{field}"), msg));
            }
        }
    }
    if !s.ingress.is_empty() {
        let msg = "ingress listeners are ignored: a jalur sidecar's inbound listener is set by its proxy (JALUR_PORTS/JALUR_APP_PORT)";
        out.push(r.diag(codes::SIDECAR_FIELD_IGNORED, "spec.ingress", msg));
    }
    if s.inbound_connection_pool.is_some() {
        let msg = "inboundConnectionPool is ignored";
        out.push(r.diag(
            codes::SIDECAR_FIELD_IGNORED,
            "spec.inboundConnectionPool",
            msg,
        ));
    }
    if let Some(policy) = &s.outbound_traffic_policy {
        if policy.mode == Some(OutboundMode::AllowAny) {
            let msg = "ALLOW_ANY has no effect: jalur has no passthrough, a host no service declares gets 404 as with REGISTRY_ONLY (declare external hosts with a ServiceEntry)";
            out.push(r.diag(
                codes::SIDECAR_FIELD_IGNORED,
                "spec.outboundTrafficPolicy.mode",
                msg,
            ));
        }
        if policy.egress_proxy.is_some() {
            let msg = "egressProxy is ignored";
            out.push(r.diag(
                codes::SIDECAR_FIELD_IGNORED,
                "spec.outboundTrafficPolicy.egressProxy",
                msg,
            ));
        }
    }
    if s.workload_selector.is_some() && r.meta.namespace == root_namespace {
        let msg = format!("a workloadSelector in the root namespace {root_namespace:?} selects nothing: a mesh-wide default Sidecar has no selector (Istio ignores this one too)");
        out.push(r.diag(codes::SIDECAR_FIELD_IGNORED, "spec.workloadSelector", msg));
    }
    conflicts(config, r, s, out);
}

/// `NS/DNS`: NS is `*`, `.`, `~` or a namespace name; DNS is `*`, `*.SUFFIX` or a name.
fn host_entry(entry: &str) -> Result<(), &'static str> {
    let Some((ns, dns)) = entry.split_once('/') else {
        return Err("is not `namespace/dnsName` (e.g. `./*`, `*/*.example.com`)");
    };
    if ns.is_empty() || dns.is_empty() {
        return Err("has an empty namespace or dnsName");
    }
    if dns.contains('/') || ns.contains('*') && ns != "*" {
        return Err("has a malformed namespace or dnsName");
    }
    let rest = dns.strip_prefix('*').unwrap_or(dns);
    if rest.contains('*') || (dns.starts_with('*') && !rest.is_empty() && !rest.starts_with('.')) {
        return Err("has a wildcard that is not `*` or a leading `*.`");
    }
    Ok(())
}

/// Two Sidecars that would apply to the same workloads: both without a selector in one
/// namespace, or with the same selector. Istio picks one arbitrarily; jalur refuses.
fn conflicts(config: &Config, r: &Resource, s: &Sidecar, out: &mut Vec<Diagnostic>) {
    let selector = |x: &Sidecar| x.workload_selector.as_ref().map(|w| w.labels.clone());
    let earlier = config
        .sidecars()
        .take_while(|(other, _)| !std::ptr::eq(*other, r))
        .find(|(other, o)| other.meta.namespace == r.meta.namespace && selector(o) == selector(s));
    if let Some((other, _)) = earlier {
        let what = if s.workload_selector.is_none() {
            "a second Sidecar without workloadSelector".to_string()
        } else {
            "a second Sidecar with the same workloadSelector".to_string()
        };
        let msg = format!(
            "{what} in namespace {:?}, besides {} ({}): which one applies would be arbitrary",
            r.meta.namespace,
            other.reference(),
            super::location(other)
        );
        out.push(r.diag(codes::CONFLICTING_SIDECARS, "metadata.name", msg));
    }
}
