//! Hybrid findings: the config checked against what a live Consul holds (`jalur analyze
//! --consul ADDR`). Pure: the caller fetches the [`ConsulView`].

use std::collections::BTreeMap;

use crate::diag::codes;
use crate::{host, Config, Diagnostic, Resource, Spec};

pub const CONSUL_DOMAIN: &str = "service.consul";

/// What Consul holds, as far as analysis cares: per service name, its tags and instance counts.
#[derive(Debug, Clone, Default)]
pub struct ConsulView {
    pub services: BTreeMap<String, ConsulService>,
}

#[derive(Debug, Clone, Default)]
pub struct ConsulService {
    pub tags: Vec<String>,
    pub passing: usize,
    pub total: usize,
}

/// The Consul service a mesh host names, if it is `NAME.service.consul`.
pub fn consul_name(fqdn: &str) -> Option<&str> {
    fqdn.strip_suffix(&format!(".{CONSUL_DOMAIN}"))
        .filter(|n| !n.is_empty() && !n.contains('.'))
}

pub fn check(config: &Config, consul: &ConsulView) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let aliased: Vec<&str> = config
        .consul_registries()
        .flat_map(|(_, c)| c.aliases.keys().map(String::as_str))
        .collect();
    for r in &config.resources {
        match &r.spec {
            Spec::ServiceEntry(se) => {
                for (i, h) in se.hosts.iter().enumerate() {
                    let fqdn = host::qualify(h, &r.meta.namespace);
                    if let Some(name) =
                        consul_name(&fqdn).filter(|n| consul.services.contains_key(*n))
                    {
                        let msg = format!("{fqdn} is also Consul service {name:?}: this ServiceEntry shadows the Consul import (its endpoints win); remove it or rename the host");
                        out.push(r.diag(
                            codes::CONSUL_NAME_SHADOWED,
                            &format!("spec.hosts[{i}]"),
                            msg,
                        ));
                    }
                    if let Some(short) = host::is_mesh_internal(&fqdn)
                        .then(|| fqdn.split('.').next())
                        .flatten()
                    {
                        if consul.services.contains_key(short) && !aliased.contains(&short) {
                            let msg = format!("Consul also has a service {short:?}: legacy callers resolving it through Consul reach the legacy instances while mesh callers of {fqdn} reach these; alias it in the ConsulRegistry if they are one service");
                            out.push(r.diag(
                                codes::CONSUL_NAME_COLLIDES,
                                &format!("spec.hosts[{i}]"),
                                msg,
                            ));
                        }
                    }
                }
            }
            Spec::VirtualService(vs) => destinations(r, vs, consul, &mut out),
            Spec::ConsulRegistry(reg) => {
                for (i, name) in reg.services.iter().flat_map(|s| s.names.iter()).enumerate() {
                    match consul.services.get(name) {
                        None => {
                            let msg = format!("Consul has no service {name:?} to import");
                            out.push(
                                r.diag(
                                    codes::CONSUL_SERVICE_MISSING,
                                    &format!("spec.services.names[{i}]"),
                                    msg,
                                )
                                .with_severity(crate::Severity::Warning),
                            );
                        }
                        Some(s) if s.passing == 0 => {
                            let msg = format!("Consul service {name:?} has no passing instance ({} registered): mesh callers will get 503s", s.total);
                            out.push(r.diag(
                                codes::CONSUL_NO_PASSING,
                                &format!("spec.services.names[{i}]"),
                                msg,
                            ));
                        }
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn destinations(
    r: &Resource,
    vs: &crate::networking::VirtualService,
    consul: &ConsulView,
    out: &mut Vec<Diagnostic>,
) {
    for (i, http) in vs.http.iter().enumerate() {
        for (j, d) in http.route.iter().enumerate() {
            let fqdn = host::qualify(&d.destination.host, &r.meta.namespace);
            let Some(name) = consul_name(&fqdn) else {
                continue;
            };
            let field = format!("spec.http[{i}].route[{j}].destination.host");
            match consul.services.get(name) {
                None => {
                    let msg = format!("{fqdn} routes to Consul service {name:?}, which is not registered in Consul: requests will fail (registration missing for a migrating service?)");
                    out.push(r.diag(codes::CONSUL_SERVICE_MISSING, &field, msg));
                }
                Some(s) if s.passing == 0 => {
                    let msg = format!(
                        "Consul service {name:?} has no passing instance ({} registered)",
                        s.total
                    );
                    out.push(r.diag(codes::CONSUL_NO_PASSING, &field, msg));
                }
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn view(services: &[(&str, usize)]) -> ConsulView {
        ConsulView {
            services: services
                .iter()
                .map(|(n, p)| {
                    (
                        n.to_string(),
                        ConsulService {
                            tags: Vec::new(),
                            passing: *p,
                            total: 2,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn reports_shadowing_collisions_missing_and_unhealthy() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: shop}\nspec:\n  hosts: [payments.service.consul, ledger.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 80, name: http}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v, namespace: shop}\nspec:\n  hosts: [x.example.com]\n  http:\n  - route:\n    - destination: {host: refunds.service.consul}\n      weight: 50\n    - destination: {host: fraud.service.consul}\n      weight: 50\n";
        let (res, diags) = crate::parse_str(Path::new("h.yaml"), yaml);
        assert!(diags.is_empty(), "{diags:?}");
        let config = Config::new(res);
        let found = check(
            &config,
            &view(&[("payments", 1), ("ledger", 1), ("fraud", 0)]),
        );
        let codes: Vec<(&str, Option<usize>)> = found.iter().map(|d| (d.code, d.line)).collect();
        assert!(codes.contains(&("JAL0130", Some(5))), "{found:#?}");
        assert!(codes.contains(&("JAL0131", Some(5))), "{found:#?}");
        assert!(codes.contains(&("JAL0132", Some(16))), "{found:#?}");
        assert!(codes.contains(&("JAL0133", Some(18))), "{found:#?}");
    }
}
