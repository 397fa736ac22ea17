//! VirtualService checks: destinations (host, subset, port), weights, matches, gateways, and the
//! route-level settings whose values a schema cannot bound (percentages, status codes, timeouts).

use crate::diag::codes;
use crate::networking::{
    Destination, HttpMatchRequest, HttpRoute, RouteDestination, StringMatch, TcpRoute,
    VirtualService,
};
use crate::{host, Diagnostic, Resource, Severity};

use super::index::{Bound, Index, Ports};
use super::{list, overlaps, percentage, port_number};

pub(super) fn check(ix: &Index, r: &Resource, vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    if vs.hosts.is_empty() {
        let msg =
            "a VirtualService needs at least one host (delegate VirtualServices are not supported)";
        out.push(r.diag(codes::MISSING_HOSTS, "spec.hosts", msg));
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        let msg = "no http, tcp or tls routes: this VirtualService routes nothing";
        out.push(r.diag(codes::INVALID_ROUTE_ACTION, "spec", msg));
    }
    let bound = bound_gateways(ix, r, &vs.gateways, "spec.gateways", out);
    hosts_in_gateways(r, vs, &bound, out);
    for (i, route) in vs.http.iter().enumerate() {
        http_route(ix, r, &bound, &format!("spec.http[{i}]"), route, out);
    }
    unreachable_http(r, vs, out);
    l4_routes(ix, r, vs, &bound, out);
}

/// tcp and tls routes: destinations, weights, match ports and gateways; tls ones match on SNI.
fn l4_routes(
    ix: &Index,
    r: &Resource,
    vs: &VirtualService,
    bound: &[Bound],
    out: &mut Vec<Diagnostic>,
) {
    for (i, route) in vs.tcp.iter().enumerate() {
        let p = format!("spec.tcp[{i}]");
        l4_route(ix, r, &p, &route.route, out);
        for (j, m) in route.matches.iter().enumerate() {
            l4_match(
                ix,
                r,
                bound,
                &format!("{p}.match[{j}]"),
                m.port,
                &m.gateways,
                out,
            );
        }
    }
    unreachable_tcp(r, vs, out);
    for (i, route) in vs.tls.iter().enumerate() {
        let p = format!("spec.tls[{i}]");
        l4_route(ix, r, &p, &route.route, out);
        if route.matches.is_empty() {
            let msg = "a tls route needs a match with sniHosts";
            out.push(r.diag(codes::MISSING_HOSTS, &p, msg));
        }
        for (j, m) in route.matches.iter().enumerate() {
            let mp = format!("{p}.match[{j}]");
            if m.sni_hosts.is_empty() {
                let msg = "a tls match needs at least one SNI host in sniHosts";
                out.push(r.diag(codes::MISSING_HOSTS, &format!("{mp}.sniHosts"), msg));
            }
            l4_match(ix, r, bound, &mp, m.port, &m.gateways, out);
        }
    }
}

/// Resolves `gateways` (empty means the mesh), reporting the ones that name no Gateway.
fn bound_gateways<'a>(
    ix: &Index<'a>,
    r: &Resource,
    entries: &[String],
    field: &str,
    out: &mut Vec<Diagnostic>,
) -> Vec<Bound<'a>> {
    if entries.is_empty() {
        return vec![Bound::Mesh];
    }
    let mut bound = Vec::new();
    for (k, entry) in entries.iter().enumerate() {
        let b = ix.gateway(entry, &r.meta.namespace);
        if let Bound::Missing = b {
            let msg = format!(
                "no Gateway {entry:?} (looked for {}); write `namespace/name`, or `mesh` for sidecars",
                gateway_name(entry, &r.meta.namespace)
            );
            out.push(r.diag(codes::GATEWAY_NOT_FOUND, &format!("{field}[{k}]"), msg));
        }
        bound.push(b);
    }
    bound
}

fn gateway_name(entry: &str, namespace: &str) -> String {
    if entry.contains('/') {
        entry.to_string()
    } else {
        format!("{namespace}/{entry}")
    }
}

/// A VirtualService host that no server of a bound Gateway exposes never receives traffic there.
fn hosts_in_gateways(
    r: &Resource,
    vs: &VirtualService,
    bound: &[Bound],
    out: &mut Vec<Diagnostic>,
) {
    for b in bound {
        let Bound::Gateway(gr, gw) = b else { continue };
        if gw.servers.is_empty() {
            continue;
        }
        for (k, h) in vs.hosts.iter().enumerate() {
            let fqdn = host::qualify(h, &r.meta.namespace);
            let exposed = gw
                .servers
                .iter()
                .flat_map(|s| &s.hosts)
                .any(|sh| server_host_covers(sh, &gr.meta.namespace, &r.meta.namespace, &fqdn));
            if !exposed {
                let msg = format!(
                    "host {h:?} is not among the hosts of any server of Gateway {}/{}; add it to a server's hosts or remove it here",
                    gr.meta.namespace, gr.meta.name
                );
                out.push(r.diag(codes::HOST_NOT_IN_GATEWAY, &format!("spec.hosts[{k}]"), msg));
            }
        }
    }
}

/// A Gateway server host is `[namespace/]dnsName`; the namespace part says whose
/// VirtualServices may bind (`*` anyone, `.` the Gateway's own namespace).
fn server_host_covers(server_host: &str, gw_ns: &str, vs_ns: &str, fqdn: &str) -> bool {
    let (ns, dns) = server_host.split_once('/').unwrap_or(("*", server_host));
    let ns_ok = match ns {
        "*" => true,
        "." => gw_ns == vs_ns,
        other => other == vs_ns,
    };
    ns_ok && overlaps(&host::qualify(dns, gw_ns), fqdn)
}

fn http_route(
    ix: &Index,
    r: &Resource,
    bound: &[Bound],
    p: &str,
    route: &HttpRoute,
    out: &mut Vec<Diagnostic>,
) {
    route_action(r, p, route, out);
    weights(
        r,
        &format!("{p}.route"),
        route.route.iter().map(|d| d.weight),
        out,
    );
    for (j, d) in route.route.iter().enumerate() {
        destination(
            ix,
            r,
            &format!("{p}.route[{j}].destination"),
            &d.destination,
            out,
        );
    }
    if let Some(m) = &route.mirror {
        destination(ix, r, &format!("{p}.mirror"), m, out);
    }
    if let Some(pc) = route.mirror_percentage {
        percentage(r, &format!("{p}.mirrorPercentage.value"), pc.value, out);
    }
    for (k, m) in route.mirrors.iter().enumerate() {
        destination(
            ix,
            r,
            &format!("{p}.mirrors[{k}].destination"),
            &m.destination,
            out,
        );
        if let Some(pc) = m.percentage {
            percentage(
                r,
                &format!("{p}.mirrors[{k}].percentage.value"),
                pc.value,
                out,
            );
        }
    }
    for (j, m) in route.matches.iter().enumerate() {
        http_match(ix, r, bound, &format!("{p}.match[{j}]"), m, out);
    }
    if let Some(rw) = route
        .rewrite
        .as_ref()
        .and_then(|rw| rw.uri_regex_rewrite.as_ref())
    {
        regex(
            r,
            &format!("{p}.rewrite.uriRegexRewrite.match"),
            &rw.pattern,
            out,
        );
    }
    route_values(r, p, route, out);
}

/// Exactly one of route, redirect, directResponse says what an http route does.
fn route_action(r: &Resource, p: &str, route: &HttpRoute, out: &mut Vec<Diagnostic>) {
    let actions: Vec<&str> = [
        (!route.route.is_empty(), "route"),
        (route.redirect.is_some(), "redirect"),
        (route.direct_response.is_some(), "directResponse"),
    ]
    .into_iter()
    .filter_map(|(set, name)| set.then_some(name))
    .collect();
    let msg = match actions.len() {
        0 => "an http route needs one of route, redirect or directResponse".to_string(),
        1 => return,
        _ => format!("{} are exclusive: keep one", actions.join(" and ")),
    };
    out.push(r.diag(codes::INVALID_ROUTE_ACTION, p, msg));
}

/// Status codes, retries against the timeout, fault percentages.
fn route_values(r: &Resource, p: &str, route: &HttpRoute, out: &mut Vec<Diagnostic>) {
    if let Some(rd) = &route.redirect {
        if let Some(c) = rd.redirect_code.filter(|c| !(300..=399).contains(c)) {
            let msg = format!("redirect code {c} is not a 3xx status");
            out.push(r.diag(
                codes::INVALID_STATUS_CODE,
                &format!("{p}.redirect.redirectCode"),
                msg,
            ));
        }
        if let Some(port) = rd.port {
            port_number(r, &format!("{p}.redirect.port"), port, out);
        }
    }
    if let Some(dr) = route
        .direct_response
        .as_ref()
        .filter(|d| !(200..=599).contains(&d.status))
    {
        let msg = format!("status {} is not an HTTP status; use 200-599", dr.status);
        out.push(r.diag(
            codes::INVALID_STATUS_CODE,
            &format!("{p}.directResponse.status"),
            msg,
        ));
    }
    if let (Some(timeout), Some(per_try)) = (
        route.timeout,
        route.retries.as_ref().and_then(|rt| rt.per_try_timeout),
    ) {
        if !timeout.as_std().is_zero() && per_try > timeout {
            let msg = format!(
                "perTryTimeout {per_try} is longer than the route timeout {timeout}, so no retry can happen; shorten perTryTimeout or raise timeout"
            );
            let field = format!("{p}.retries.perTryTimeout");
            out.push(r.diag(codes::PER_TRY_TIMEOUT_EXCEEDS_TIMEOUT, &field, msg));
        }
    }
    let Some(fault) = &route.fault else { return };
    if let Some(delay) = &fault.delay {
        if let Some(pc) = delay.percentage {
            percentage(
                r,
                &format!("{p}.fault.delay.percentage.value"),
                pc.value,
                out,
            );
        }
        if let Some(pc) = delay.percent {
            percentage(r, &format!("{p}.fault.delay.percent"), f64::from(pc), out);
        }
    }
    if let Some(abort) = &fault.abort {
        if let Some(pc) = abort.percentage {
            percentage(
                r,
                &format!("{p}.fault.abort.percentage.value"),
                pc.value,
                out,
            );
        }
        if let Some(s) = abort.http_status.filter(|s| !(200..=599).contains(s)) {
            let msg = format!("abort status {s} is not an HTTP status; use 200-599");
            let field = format!("{p}.fault.abort.httpStatus");
            out.push(r.diag(codes::INVALID_STATUS_CODE, &field, msg));
        }
    }
}

/// With several destinations, weights must add up to 100 (a missing weight counts as 0).
fn weights(
    r: &Resource,
    field: &str,
    weights: impl Iterator<Item = Option<u32>>,
    out: &mut Vec<Diagnostic>,
) {
    let weights: Vec<Option<u32>> = weights.collect();
    if weights.len() < 2 {
        return;
    }
    let sum: u64 = weights.iter().map(|w| u64::from(w.unwrap_or(0))).sum();
    if sum != 100 {
        let shown = list(
            weights
                .iter()
                .map(|w| w.map_or("-".to_string(), |w| w.to_string())),
        );
        let msg = format!(
            "weights of the {} destinations ({shown}) sum to {sum}, not 100; a destination without weight counts as 0",
            weights.len()
        );
        out.push(r.diag(codes::WEIGHTS_NOT_100, field, msg));
    }
}

/// The host must be known, the subset defined by a DestinationRule, the port one of the host's.
fn destination(ix: &Index, r: &Resource, p: &str, d: &Destination, out: &mut Vec<Diagnostic>) {
    let fqdn = host::qualify(&d.host, &r.meta.namespace);
    let known = ix.service(&fqdn);
    if d.host.is_empty() {
        let msg = "destination has no host";
        out.push(r.diag(codes::UNKNOWN_HOST, &format!("{p}.host"), msg));
    } else if known.is_none() {
        let mut diag = r.diag(
            codes::UNKNOWN_HOST,
            &format!("{p}.host"),
            format!("host {fqdn:?} is not a known service; declare it with a ServiceEntry"),
        );
        if host::is_mesh_internal(&fqdn) {
            diag.message
                .push_str(" (or make sure a workload registers it at runtime)");
            diag = diag.with_severity(Severity::Warning);
        }
        out.push(diag);
    }
    if let Some(subset) = &d.subset {
        subset_defined(ix, r, p, &fqdn, subset, out);
    }
    let port = d.port.map(|ps| ps.number);
    if let Some(n) = port {
        if !port_number(r, &format!("{p}.port.number"), n, out) {
            return;
        }
    }
    let Some(Ports::Only(ports)) = known else {
        return;
    };
    match port {
        Some(n) if !ports.contains(&n) => {
            let msg = format!(
                "host {fqdn:?} has no port {n} (its ports: {})",
                list(&ports)
            );
            out.push(r.diag(codes::PORT_MISMATCH, &format!("{p}.port.number"), msg));
        }
        None if ports.len() > 1 => {
            // Istio's rule, which translation follows: a request keeps the port it came in on.
            // Well defined, so a Warning (served), not an Error.
            let msg = format!(
                "host {fqdn:?} has several ports ({}) and no port.number: a request keeps the port it came in on; choose one to route across ports",
                list(&ports)
            );
            out.push(
                r.diag(codes::PORT_MISMATCH, p, msg)
                    .with_severity(Severity::Warning),
            );
        }
        _ => {}
    }
}

fn subset_defined(
    ix: &Index,
    r: &Resource,
    p: &str,
    fqdn: &str,
    subset: &str,
    out: &mut Vec<Diagnostic>,
) {
    let rules: Vec<_> = ix.rules_for(fqdn).collect();
    if rules
        .iter()
        .any(|(_, dr)| dr.subsets.iter().any(|s| s.name == subset))
    {
        return;
    }
    let msg = if rules.is_empty() {
        format!("subset {subset:?} of host {fqdn:?}: no DestinationRule for this host defines subsets; add one")
    } else {
        let names = rules
            .iter()
            .flat_map(|(_, dr)| dr.subsets.iter().map(|s| s.name.as_str()));
        let (rr, _) = rules[0];
        format!(
            "subset {subset:?} is not defined by DestinationRule {}/{} for host {fqdn:?} (its subsets: {})",
            rr.meta.namespace,
            rr.meta.name,
            list(names)
        )
    };
    out.push(r.diag(codes::UNDEFINED_SUBSET, &format!("{p}.subset"), msg));
}

fn http_match(
    ix: &Index,
    r: &Resource,
    bound: &[Bound],
    mp: &str,
    m: &HttpMatchRequest,
    out: &mut Vec<Diagnostic>,
) {
    let singles = [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ];
    for (name, sm) in singles {
        if let Some(sm) = sm {
            string_match(r, &format!("{mp}.{name}"), sm, out);
        }
    }
    for (field, headers) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in headers {
            let hp = format!("{mp}.{field}.{name}");
            header_name(r, &hp, name, out);
            string_match(r, &hp, sm, out);
        }
    }
    for (name, sm) in &m.query_params {
        let qp = format!("{mp}.queryParams.{name}");
        if let StringMatch::Prefix(_) = sm {
            let msg = format!("query parameter {name:?}: prefix matching is not supported for query parameters; use exact or regex");
            out.push(r.diag(codes::INVALID_MATCH_CONDITION, &format!("{qp}.prefix"), msg));
        }
        string_match(r, &qp, sm, out);
    }
    l4_match(ix, r, bound, mp, m.port, &m.gateways, out);
}

fn string_match(r: &Resource, field: &str, sm: &StringMatch, out: &mut Vec<Diagnostic>) {
    if let StringMatch::Regex(pattern) = sm {
        regex(r, &format!("{field}.regex"), pattern, out);
    }
}

/// Patterns are RE2; the `regex` crate accepts the same syntax.
fn regex(r: &Resource, field: &str, pattern: &str, out: &mut Vec<Diagnostic>) {
    let Err(e) = regex::Regex::new(pattern) else {
        return;
    };
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim);
    let first = lines.next().unwrap_or_default();
    let detail = lines.find_map(|l| l.strip_prefix("error:")).map(str::trim);
    let reason = match detail {
        Some(d) => format!("{first} {d}"),
        None => first.to_string(),
    };
    let msg = format!("regex {pattern:?} does not compile (RE2 syntax): {reason}");
    out.push(r.diag(codes::INVALID_REGEX, field, msg));
}

fn header_name(r: &Resource, field: &str, name: &str, out: &mut Vec<Diagnostic>) {
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    let (msg, severity) = if name.starts_with(':') {
        let msg = format!("header {name:?} is a pseudo-header; match it with uri, method, authority or scheme instead");
        (msg, Severity::Error)
    } else if name.is_empty() || !name.chars().all(is_token) {
        (
            format!("{name:?} is not a valid HTTP header name"),
            Severity::Error,
        )
    } else if ["uri", "scheme", "method", "authority"].contains(&name) {
        let msg =
            format!("a header named {name:?} is ignored by Istio's semantics; use match.{name}");
        (msg, Severity::Warning)
    } else {
        return;
    };
    out.push(
        r.diag(codes::INVALID_MATCH_CONDITION, field, msg)
            .with_severity(severity),
    );
}

/// A match's port and gateways: the gateways must exist and, when the match only applies at
/// gateways, one of their servers must listen on the port.
fn l4_match(
    ix: &Index,
    r: &Resource,
    bound: &[Bound],
    mp: &str,
    port: Option<u32>,
    gateways: &[String],
    out: &mut Vec<Diagnostic>,
) {
    let own;
    let bound = if gateways.is_empty() {
        bound
    } else {
        own = bound_gateways(ix, r, gateways, &format!("{mp}.gateways"), out);
        &own
    };
    let Some(port) = port else { return };
    if !port_number(r, &format!("{mp}.port"), port, out) {
        return;
    }
    if bound.iter().any(|b| matches!(b, Bound::Mesh)) {
        return;
    }
    let gws: Vec<_> = bound
        .iter()
        .filter_map(|b| match b {
            Bound::Gateway(gr, gw) => Some((gr, gw)),
            _ => None,
        })
        .collect();
    if gws.is_empty()
        || gws
            .iter()
            .flat_map(|(_, gw)| &gw.servers)
            .any(|s| s.port.number == port)
    {
        return;
    }
    let names = list(
        gws.iter()
            .map(|(gr, _)| format!("{}/{}", gr.meta.namespace, gr.meta.name)),
    );
    let ports = list(
        gws.iter()
            .flat_map(|(_, gw)| gw.servers.iter().map(|s| s.port.number)),
    );
    let msg =
        format!("no server of Gateway {names} listens on port {port} (server ports: {ports})");
    out.push(r.diag(codes::PORT_MISMATCH, &format!("{mp}.port"), msg));
}

fn l4_route(
    ix: &Index,
    r: &Resource,
    p: &str,
    route: &[RouteDestination],
    out: &mut Vec<Diagnostic>,
) {
    if route.is_empty() {
        let msg = "a route needs at least one destination";
        out.push(r.diag(codes::INVALID_ROUTE_ACTION, p, msg));
    }
    weights(
        r,
        &format!("{p}.route"),
        route.iter().map(|d| d.weight),
        out,
    );
    for (j, d) in route.iter().enumerate() {
        destination(
            ix,
            r,
            &format!("{p}.route[{j}].destination"),
            &d.destination,
            out,
        );
    }
}

/// A route that matches every request hides the routes after it.
fn unreachable_http(r: &Resource, vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    let catch_all = |route: &HttpRoute| {
        route.matches.is_empty() || route.matches.iter().any(is_catch_all_match)
    };
    let n = vs.http.len();
    if let Some(i) = vs.http.iter().position(catch_all).filter(|i| i + 1 < n) {
        shadowed(r, "http", i, n, out);
    }
}

fn unreachable_tcp(r: &Resource, vs: &VirtualService, out: &mut Vec<Diagnostic>) {
    let n = vs.tcp.len();
    let catch_all = |route: &TcpRoute| {
        route.matches.is_empty() || route.matches.iter().any(|m| *m == Default::default())
    };
    if let Some(i) = vs.tcp.iter().position(catch_all).filter(|i| i + 1 < n) {
        shadowed(r, "tcp", i, n, out);
    }
}

fn shadowed(r: &Resource, kind: &str, i: usize, n: usize, out: &mut Vec<Diagnostic>) {
    let msg = format!(
        "never used: spec.{kind}[{i}] matches every request, so the {} route(s) after it cannot match; move the catch-all route last",
        n - i - 1
    );
    out.push(r.diag(
        codes::UNREACHABLE_ROUTE,
        &format!("spec.{kind}[{}]", i + 1),
        msg,
    ));
}

fn is_catch_all_match(m: &HttpMatchRequest) -> bool {
    let any_uri = match &m.uri {
        None => true,
        Some(StringMatch::Prefix(p)) => p.is_empty() || p == "/",
        Some(StringMatch::Regex(re)) => re == ".*",
        Some(StringMatch::Exact(_)) => false,
    };
    any_uri
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.source_namespace.is_none()
        && m.gateways.is_empty()
}
