//! ServiceEntry and WorkloadEntry checks: hosts, ports, and endpoints that fit the resolution.

use std::collections::BTreeMap;

use crate::diag::codes;
use crate::networking::{Resolution, ServiceEntry, WorkloadEntry};
use crate::{Diagnostic, Resource, Severity};

use super::{is_ip, list, port_number};

pub(super) fn check(r: &Resource, se: &ServiceEntry, out: &mut Vec<Diagnostic>) {
    if se.hosts.is_empty() {
        let msg = "a ServiceEntry needs at least one host";
        out.push(r.diag(codes::MISSING_HOSTS, "spec.hosts", msg));
    }
    ports(r, se, out);
    resolution(r, se, out);
    let names: Vec<&str> = se.ports.iter().filter_map(|p| p.name.as_deref()).collect();
    for (i, ep) in se.endpoints.iter().enumerate() {
        let ef = format!("spec.endpoints[{i}]");
        endpoint_ports(r, &ef, ep, out);
        for name in ep.ports.keys().filter(|n| !names.contains(&n.as_str())) {
            let msg = format!(
                "endpoint port {name:?} is not a port name of this ServiceEntry (its port names: {})",
                list(&names)
            );
            out.push(r.diag(codes::PORT_MISMATCH, &format!("{ef}.ports.{name}"), msg));
        }
    }
}

pub(super) fn check_workload_entry(r: &Resource, we: &WorkloadEntry, out: &mut Vec<Diagnostic>) {
    endpoint_ports(r, "spec", we, out);
}

fn endpoint_ports(r: &Resource, field: &str, ep: &WorkloadEntry, out: &mut Vec<Diagnostic>) {
    for (name, number) in &ep.ports {
        port_number(r, &format!("{field}.ports.{name}"), *number, out);
    }
}

fn ports(r: &Resource, se: &ServiceEntry, out: &mut Vec<Diagnostic>) {
    if se.ports.is_empty() {
        let msg = "a ServiceEntry needs at least one port (number, name and protocol)";
        out.push(r.diag(codes::SERVICE_ENTRY_WITHOUT_PORTS, "spec.ports", msg));
    }
    let mut numbers = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (i, p) in se.ports.iter().enumerate() {
        let pf = format!("spec.ports[{i}]");
        if port_number(r, &format!("{pf}.number"), p.number, out) {
            let first = *numbers.entry(p.number).or_insert(i);
            if first != i {
                let msg = format!(
                    "port {} is already declared as spec.ports[{first}]",
                    p.number
                );
                out.push(r.diag(codes::INVALID_PORT_NUMBER, &format!("{pf}.number"), msg));
            }
        }
        if let Some(tp) = p.target_port {
            port_number(r, &format!("{pf}.targetPort"), tp, out);
        }
        if let Some(name) = &p.name {
            let first = *names.entry(name.as_str()).or_insert(i);
            if first != i {
                let msg = format!("port name {name:?} is already used by spec.ports[{first}]");
                out.push(r.diag(codes::INVALID_PORT_NUMBER, &format!("{pf}.name"), msg));
            }
        }
    }
}

/// What the endpoints must look like for the resolution (Istio's default is NONE).
fn resolution(r: &Resource, se: &ServiceEntry, out: &mut Vec<Diagnostic>) {
    let code = codes::RESOLUTION_MISMATCH;
    match se.resolution.unwrap_or(Resolution::None) {
        Resolution::None => {
            if !se.endpoints.is_empty() {
                let msg = "resolution NONE passes traffic to the address the caller dialed, so endpoints are not used; remove them or use STATIC or DNS";
                out.push(r.diag(code, "spec.endpoints", msg));
            }
        }
        Resolution::Static => {
            if se.endpoints.is_empty() && se.workload_selector.is_none() {
                // Only runtime can say whether this is empty: in jalur, proxies announcing the
                // host (`JALUR_SERVICE`) are its endpoints. A Warning, so it is served.
                let msg = "resolution STATIC without endpoints or a workloadSelector: its only endpoints are the proxies that register this host at runtime";
                out.push(
                    r.diag(code, "spec.resolution", msg)
                        .with_severity(Severity::Warning),
                );
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let addr = ep.address.as_deref().unwrap_or_default();
                if !is_ip(addr) && !addr.starts_with("unix://") {
                    let msg = format!(
                        "resolution STATIC needs IP addresses, not {addr:?}; use resolution DNS for host names"
                    );
                    out.push(r.diag(code, &format!("spec.endpoints[{i}].address"), msg));
                }
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin => {
            if se.endpoints.is_empty() {
                for (k, h) in se
                    .hosts
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.starts_with('*'))
                {
                    let msg = format!(
                        "resolution DNS cannot resolve the wildcard host {h:?}; add endpoints or use resolution NONE"
                    );
                    out.push(r.diag(code, &format!("spec.hosts[{k}]"), msg));
                }
            }
            for (i, ep) in se.endpoints.iter().enumerate() {
                let addr = ep.address.as_deref().unwrap_or_default();
                if addr.is_empty() {
                    let msg = "resolution DNS needs an address (a host name) for each endpoint";
                    out.push(r.diag(code, &format!("spec.endpoints[{i}]"), msg));
                } else if is_ip(addr) {
                    let msg = format!(
                        "endpoint {addr:?} is an IP address, which DNS resolution has nothing to resolve for; use resolution STATIC"
                    );
                    let field = format!("spec.endpoints[{i}].address");
                    out.push(r.diag(code, &field, msg).with_severity(Severity::Warning));
                }
            }
        }
    }
}
