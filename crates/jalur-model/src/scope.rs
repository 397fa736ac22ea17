//! Istio's `Sidecar` scoping: which `Sidecar` applies to a workload, and which services its
//! `egress[].hosts` let the workload's proxy see. Pure functions over the config; translation
//! (`jalur-control`) leaves every other service out of that proxy's clusters, endpoints and
//! routes, and `analyze/sidecar.rs` checks the host entries this reads.

use std::collections::BTreeMap;

use crate::networking::Sidecar;
use crate::{Config, Resource};

/// The `Sidecar` that applies to a workload in `namespace` with `labels`, in Istio's order: one
/// in its namespace whose `workloadSelector` matches (the first by name when several do), else
/// its namespace's `Sidecar` without a selector, else the one without a selector in the root
/// namespace (the mesh-wide default). None: the workload sees every service.
pub fn select<'a>(
    config: &'a Config,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    root_namespace: &str,
) -> Option<(&'a Resource, &'a Sidecar)> {
    fn in_ns<'c>(config: &'c Config, ns: &str) -> Vec<(&'c Resource, &'c Sidecar)> {
        config
            .sidecars()
            .filter(|(r, _)| r.meta.namespace == ns)
            .collect()
    }
    let selects = |s: &Sidecar| {
        s.workload_selector
            .as_ref()
            .is_some_and(|w| w.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    let unselective = |s: &Sidecar| s.workload_selector.is_none();
    let own = in_ns(config, namespace);
    own.iter()
        .find(|(_, s)| selects(s))
        .or_else(|| own.iter().find(|(_, s)| unselective(s)))
        .copied()
        .or_else(|| {
            in_ns(config, root_namespace)
                .into_iter()
                .find(|(_, s)| unselective(s))
        })
}

/// Whether `sidecar` (in namespace `own`) lets its proxies see `host`, a service of namespace
/// `service_ns`: some `egress[].hosts` entry `NS/DNS` matches both. NS is `*` (any namespace),
/// `.` (the Sidecar's own), `~` (none) or a name; DNS is `*`, `*.SUFFIX` or an exact name. A
/// Sidecar without egress listeners hides nothing.
pub fn admits(sidecar: &Sidecar, own: &str, service_ns: &str, host: &str) -> bool {
    if sidecar.egress.is_empty() {
        return true;
    }
    sidecar
        .egress
        .iter()
        .flat_map(|e| e.hosts.iter())
        .any(|entry| entry_admits(entry, own, service_ns, host))
}

fn entry_admits(entry: &str, own: &str, service_ns: &str, host: &str) -> bool {
    let Some((ns, dns)) = entry.split_once('/') else {
        return false;
    };
    let ns_ok = match ns {
        "*" => true,
        "." => service_ns == own,
        "~" => false,
        name => service_ns == name,
    };
    ns_ok && dns_matches(dns, host)
}

/// `*`, `*.SUFFIX` (any name ending in `.SUFFIX`) or an exact name, case-insensitively.
pub fn dns_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) if suffix.starts_with('.') => host.ends_with(suffix),
        _ => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;

    fn config(yaml: &str) -> Config {
        let (resources, diags) = parse_str(std::path::Path::new("sidecars.yaml"), yaml);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
        Config::new(resources)
    }

    fn sidecar(ns: &str, name: &str, selector: &str, hosts: &str) -> String {
        format!("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{selector}  egress:\n  - hosts: {hosts}\n---\n")
    }

    #[test]
    fn the_workloads_own_then_its_namespaces_then_the_root_namespaces_sidecar_applies() {
        let c = config(&format!(
            "{}{}{}{}",
            sidecar(
                "shop",
                "cart-only",
                "  workloadSelector: {labels: {app: cart}}\n",
                "[\"./*\"]"
            ),
            sidecar("shop", "default", "", "[\"./*\", \"istio-system/*\"]"),
            sidecar("istio-system", "default", "", "[\"*/*\"]"),
            sidecar(
                "istio-system",
                "selective",
                "  workloadSelector: {labels: {app: cart}}\n",
                "[\"~/*\"]"
            ),
        ));
        let labels = |app: &str| BTreeMap::from([("app".to_string(), app.to_string())]);
        let name = |s: Option<(&Resource, &Sidecar)>| s.map(|(r, _)| r.reference().to_string());
        assert_eq!(
            name(select(&c, "shop", &labels("cart"), "istio-system")),
            Some("Sidecar shop/cart-only".into())
        );
        assert_eq!(
            name(select(&c, "shop", &labels("ledger"), "istio-system")),
            Some("Sidecar shop/default".into())
        );
        assert_eq!(
            name(select(&c, "billing", &labels("cart"), "istio-system")),
            Some("Sidecar istio-system/default".into()),
            "a selector in the root namespace selects nothing elsewhere"
        );
        assert_eq!(
            name(select(&c, "billing", &labels("cart"), "jalur-system")),
            None
        );
    }

    #[test]
    fn egress_hosts_admit_by_namespace_and_dns_name() {
        let c = config(&sidecar(
            "shop",
            "default",
            "",
            "[\"./*\", \"billing/ledger.billing.svc.cluster.local\", \"*/*.example.com\", \"~/*\"]",
        ));
        let (_, s) = c.sidecars().next().expect("one");
        let admits = |ns: &str, host: &str| admits(s, "shop", ns, host);
        assert!(
            admits("shop", "cart.shop.svc.cluster.local"),
            "./* is its own namespace"
        );
        assert!(admits("billing", "ledger.billing.svc.cluster.local"));
        assert!(!admits("billing", "invoices.billing.svc.cluster.local"));
        assert!(
            admits("egress", "API.example.com"),
            "wildcard suffix, any case"
        );
        assert!(
            !admits("egress", "example.com"),
            "*.example.com is not example.com"
        );
        assert!(!admits("other", "db.other.svc.cluster.local"));
        let open = Sidecar::default();
        assert!(super::admits(
            &open,
            "shop",
            "other",
            "db.other.svc.cluster.local"
        ));
    }
}
