//! Host names as Istio resolves them: a short name is qualified with the namespace of the
//! resource that wrote it (`reviews` in `default` is `reviews.default.svc.cluster.local`).

pub const CLUSTER_DOMAIN: &str = "svc.cluster.local";

/// Where a VirtualService (or a Migration) applies, as a set: no gateways means `mesh`; gateway
/// names are qualified with the namespace of the resource that wrote them.
pub fn gateway_set(gateways: &[String], namespace: &str) -> std::collections::BTreeSet<String> {
    if gateways.is_empty() {
        return ["mesh".to_string()].into();
    }
    gateways
        .iter()
        .map(|g| qualify_gateway(g, namespace))
        .collect()
}

/// A gateway name as written in a resource of namespace `namespace`: `mesh` and `ns/name` stay,
/// a bare `name` becomes `namespace/name`.
pub fn qualify_gateway(name: &str, namespace: &str) -> String {
    if name == "mesh" || name.contains('/') {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// Fully qualifies `host` as written in a resource of namespace `namespace`.
pub fn qualify(host: &str, namespace: &str) -> String {
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{namespace}.{CLUSTER_DOMAIN}")
    }
}

/// The host belongs to the mesh's own naming (`*.svc.cluster.local`): such services can be
/// registered at runtime by proxies announcing their workload.
pub fn is_mesh_internal(host: &str) -> bool {
    host.ends_with(&format!(".{CLUSTER_DOMAIN}"))
}

/// Istio host matching: `*.example.com` matches `a.example.com`; `*` matches everything.
pub fn matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_short_names_only() {
        assert_eq!(
            qualify("reviews", "default"),
            "reviews.default.svc.cluster.local"
        );
        assert_eq!(
            qualify("payments.service.consul", "x"),
            "payments.service.consul"
        );
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
    }
}
