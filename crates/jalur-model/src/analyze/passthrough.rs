//! Gateway TLS passthrough: a PASSTHROUGH server only carries what VirtualService `tls` routes
//! bound to its Gateway send by SNI, and only for SNI names its `hosts` expose. AUTO_PASSTHROUGH
//! (Istio's SNI-encoded cluster names for multi-network east-west) is not built.

use crate::diag::codes;
use crate::networking::{Gateway, Server, ServerTlsMode, TlsMatchAttributes, VirtualService};
use crate::{host, Config, Diagnostic, Resource};

/// A VirtualService's tls route match, bound to a gateway port.
struct SniMatch<'a> {
    vs: &'a Resource,
    field: String,
    sni_hosts: &'a [String],
}

pub(super) fn check(config: &Config, out: &mut Vec<Diagnostic>) {
    for (gr, gw) in config.gateways() {
        for (i, s) in gw.servers.iter().enumerate() {
            let sf = format!("spec.servers[{i}]");
            match s.tls.as_ref().and_then(|t| t.mode) {
                Some(ServerTlsMode::AutoPassthrough) => {
                    let msg = "tls mode AUTO_PASSTHROUGH is not supported (it routes by Istio's SNI-encoded cluster names); jalur emits no listener for this server: use PASSTHROUGH with VirtualService tls routes, or ISTIO_MUTUAL";
                    out.push(gr.diag(
                        codes::AUTO_PASSTHROUGH_NOT_SUPPORTED,
                        &format!("{sf}.tls.mode"),
                        msg,
                    ));
                }
                Some(ServerTlsMode::Passthrough) => {
                    server(config, gr, gw, s, &sf, out);
                }
                _ => {}
            }
        }
    }
}

/// One PASSTHROUGH server: some tls route must reach it, and every SNI host a route sends to its
/// port must be one of its hosts.
fn server(
    config: &Config,
    gr: &Resource,
    gw: &Gateway,
    s: &Server,
    sf: &str,
    out: &mut Vec<Diagnostic>,
) {
    let matches = sni_matches(config, gr, s.port.number);
    let reached = matches.iter().any(|m| {
        m.sni_hosts
            .iter()
            .any(|sni| covers(s, &gr.meta.namespace, &m.vs.meta.namespace, sni))
    });
    if !reached {
        let msg = format!(
            "PASSTHROUGH server on port {} has no VirtualService tls route bound to Gateway {}/{} with an SNI host among {:?}: jalur emits no listener for it, and connections to the port are refused",
            s.port.number, gr.meta.namespace, gr.meta.name, s.hosts
        );
        out.push(gr.diag(codes::PASSTHROUGH_WITHOUT_TLS_ROUTE, sf, msg));
    }
    // Checked once per gateway port: the first PASSTHROUGH server of the port reports.
    let first = gw.servers.iter().find(|o| {
        o.port.number == s.port.number
            && o.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::Passthrough)
    });
    if !first.is_some_and(|f| std::ptr::eq(f, s)) {
        return;
    }
    let servers: Vec<&Server> = gw
        .servers
        .iter()
        .filter(|o| {
            o.port.number == s.port.number
                && o.tls.as_ref().and_then(|t| t.mode) == Some(ServerTlsMode::Passthrough)
        })
        .collect();
    for m in &matches {
        for (k, sni) in m.sni_hosts.iter().enumerate() {
            let vs_ns = &m.vs.meta.namespace;
            if servers
                .iter()
                .any(|o| covers(o, &gr.meta.namespace, vs_ns, sni))
            {
                continue;
            }
            let msg = format!(
                "SNI host {sni:?} is not among the hosts of a PASSTHROUGH server on port {} of Gateway {}/{} ({}): connections with this SNI are refused; add it to the server's hosts or remove it here",
                s.port.number,
                gr.meta.namespace,
                gr.meta.name,
                super::list(servers.iter().flat_map(|o| &o.hosts)),
            );
            out.push(m.vs.diag(
                codes::SNI_HOST_NOT_IN_GATEWAY,
                &format!("{}.sniHosts[{k}]", m.field),
                msg,
            ));
        }
    }
}

/// The tls route matches that apply to `port` of the Gateway `gr`: the VirtualService binds the
/// Gateway, and the match's own `port` and `gateways` (when set) agree.
fn sni_matches<'a>(config: &'a Config, gr: &Resource, port: u32) -> Vec<SniMatch<'a>> {
    let name = format!("{}/{}", gr.meta.namespace, gr.meta.name);
    let mut out = Vec::new();
    for (r, vs) in config.virtual_services() {
        if !binds(vs, &r.meta.namespace, &name) {
            continue;
        }
        for (i, route) in vs.tls.iter().enumerate() {
            for (j, m) in route.matches.iter().enumerate() {
                if applies(m, &r.meta.namespace, &name, port) {
                    out.push(SniMatch {
                        vs: r,
                        field: format!("spec.tls[{i}].match[{j}]"),
                        sni_hosts: &m.sni_hosts,
                    });
                }
            }
        }
    }
    out
}

fn binds(vs: &VirtualService, ns: &str, gateway: &str) -> bool {
    vs.gateways
        .iter()
        .any(|g| host::qualify_gateway(g, ns) == gateway)
}

fn applies(m: &TlsMatchAttributes, ns: &str, gateway: &str, port: u32) -> bool {
    m.port.is_none_or(|p| p == port)
        && (m.gateways.is_empty()
            || m.gateways
                .iter()
                .any(|g| host::qualify_gateway(g, ns) == gateway))
}

/// A server host `[namespace/]dnsName` exposes `sni` to VirtualServices of namespace `vs_ns`.
fn covers(s: &Server, gw_ns: &str, vs_ns: &str, sni: &str) -> bool {
    s.hosts.iter().any(|h| {
        let (ns, pattern) = match h.split_once('/') {
            Some((".", p)) => (gw_ns, p),
            Some((ns, p)) => (ns, p),
            None => ("*", h.as_str()),
        };
        (ns == "*" || ns == vs_ns) && (host::matches(pattern, sni) || host::matches(sni, pattern))
    })
}
