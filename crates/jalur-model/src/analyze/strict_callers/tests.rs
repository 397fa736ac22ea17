use std::path::Path;

use crate::analyze::analyze;
use crate::{parse_str, Config};

/// `payments` split by origin: its Consul instances (legacy) and its meshed ones (mesh), one
/// Consul name that legacy code resolves itself.
const BASE: &str = "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {name: legacy, namespace: shop}\nspec:\n  addresses: [127.0.0.1:8500]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: payments, namespace: shop}\nspec:\n  host: payments.service.consul\n  subsets:\n  - {name: legacy, labels: {jalur.dev/origin: consul}}\n  - {name: mesh, labels: {jalur.dev/origin: mesh}}\n";

fn strict_findings(extra: &str) -> Vec<String> {
    let (res, diags) = parse_str(Path::new("m.yaml"), &format!("{BASE}---\n{extra}"));
    assert!(diags.is_empty(), "{diags:#?}");
    analyze(&Config::new(res))
        .into_iter()
        .filter(|d| d.code == "JAL0143")
        .map(|d| d.to_string())
        .collect()
}

fn migration(mesh: &str, port: &str) -> String {
    format!("apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {{name: payments, namespace: shop}}\nspec:\n  legacy: {{host: payments.service.consul, subset: legacy}}\n  mesh: {mesh}\n{port}  stages: [{{weight: 100}}]\n")
}

const BY_ORIGIN: &str = "{host: payments.service.consul, subset: mesh}";

fn pa(name: &str, body: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{body}\n")
}

#[test]
fn a_strict_mesh_path_legacy_callers_resolve_in_consul_names_policy_and_caller() {
    let found =
        strict_findings(&(migration(BY_ORIGIN, "") + &pa("default", "  mtls: {mode: STRICT}")));
    assert_eq!(found.len(), 1, "{found:?}");
    let f = &found[0];
    for part in [
        "PeerAuthentication shop/default (m.yaml:",
        "spec.mtls.mode",
        "payments.service.consul",
        "Migration shop/payments m.yaml:",
    ] {
        assert!(f.contains(part), "{part} missing from {f}");
    }
    // The subset's labels find a workload policy too.
    let wl = pa(
        "meshed",
        "  selector: {matchLabels: {jalur.dev/origin: mesh}}\n  mtls: {mode: STRICT}",
    );
    assert_eq!(strict_findings(&(migration(BY_ORIGIN, "") + &wl)).len(), 1);
}

#[test]
fn permissive_a_mesh_host_or_a_permissive_port_is_not_reported() {
    let strict = pa("default", "  mtls: {mode: STRICT}");
    let permissive = pa("default", "  mtls: {mode: PERMISSIVE}");
    assert!(strict_findings(&(migration(BY_ORIGIN, "") + &permissive)).is_empty());
    // A mesh host is reached by legacy callers only through proxies, which hold identities.
    assert!(strict_findings(&(migration("{host: payments}", "") + &strict)).is_empty());
    // The migrated port is left PERMISSIVE at port level: no hazard; another port is STRICT.
    let port_level = pa(
        "meshed",
        "  selector: {matchLabels: {jalur.dev/origin: mesh}}\n  portLevelMtls:\n    80: {mode: PERMISSIVE}",
    );
    let policies = strict.clone() + &port_level;
    assert!(strict_findings(&(migration(BY_ORIGIN, "  port: 80\n") + &policies)).is_empty());
    assert_eq!(
        strict_findings(&(migration(BY_ORIGIN, "  port: 9090\n") + &policies)).len(),
        1
    );
}

/// A mesh-wide policy is the root namespace's: another namespace's is not mesh-wide.
#[test]
fn the_mesh_wide_policy_is_read_in_the_given_root_namespace() {
    let mesh_wide = "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n";
    let text = format!("{BASE}---\n{}{mesh_wide}", migration(BY_ORIGIN, ""));
    let (res, diags) = parse_str(Path::new("m.yaml"), &text);
    assert!(diags.is_empty(), "{diags:#?}");
    let config = Config::new(res);
    let strict = |root: &str| {
        crate::analyze::analyze_in(&config, &Default::default(), root)
            .into_iter()
            .filter(|d| d.code == "JAL0143")
            .count()
    };
    assert_eq!(strict(crate::security::DEFAULT_ROOT_NAMESPACE), 0);
    assert_eq!(strict("istio-system"), 1);
}
