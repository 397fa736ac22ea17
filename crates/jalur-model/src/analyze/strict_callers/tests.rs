use std::path::Path;

use crate::analyze::analyze;
use crate::{parse_str, Config};

const BASE: &str = "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {name: legacy, namespace: shop}\nspec:\n  addresses: [127.0.0.1:8500]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: payments, namespace: shop}\nspec:\n  hosts: [payments.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 80, name: http, protocol: HTTP}, {number: 9090, name: http-admin, protocol: HTTP}]\n  workloadSelector: {labels: {app: payments}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: payments, namespace: shop}\nspec:\n  host: payments\n  subsets: [{name: mesh, labels: {app: payments}}]\n";

fn strict_findings(extra: &str) -> Vec<String> {
    let (res, diags) = parse_str(Path::new("m.yaml"), &format!("{BASE}---\n{extra}"));
    assert!(diags.is_empty(), "{diags:#?}");
    analyze(&Config::new(res))
        .into_iter()
        .filter(|d| d.code == "JAL0143")
        .map(|d| d.to_string())
        .collect()
}

fn migration(gateways: &str, port: &str) -> String {
    format!("apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {{name: payments, namespace: shop}}\nspec:\n  gateways: {gateways}\n  legacy: {{registry: legacy, service: payments}}\n  mesh: {{host: payments, subset: mesh}}\n{port}  stages: [{{weight: 100}}]\n")
}

fn pa(name: &str, body: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n{body}\n")
}

#[test]
fn a_strict_mesh_path_under_a_consul_migration_names_policy_and_caller() {
    let found = strict_findings(&(migration("[]", "") + &pa("default", "  mtls: {mode: STRICT}")));
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
        "payments",
        "  selector: {matchLabels: {app: payments}}\n  mtls: {mode: STRICT}",
    );
    assert_eq!(strict_findings(&(migration("[]", "") + &wl)).len(), 1);
}

#[test]
fn permissive_gateway_only_or_a_disabled_port_is_not_reported() {
    let strict = pa("default", "  mtls: {mode: STRICT}");
    let permissive = pa("default", "  mtls: {mode: PERMISSIVE}");
    assert!(strict_findings(&(migration("[]", "") + &permissive)).is_empty());
    // Applied only at a jalur gateway, which originates mTLS with its own identity.
    assert!(strict_findings(&(migration("[istio-system/edge]", "") + &strict)).is_empty());
    assert_eq!(
        strict_findings(&(migration("[mesh, istio-system/edge]", "") + &strict)).len(),
        1
    );
    // The migrated port is left plaintext at port level: no hazard; another port is STRICT.
    let port_level = pa(
        "payments",
        "  selector: {matchLabels: {app: payments}}\n  portLevelMtls:\n    80: {mode: PERMISSIVE}",
    );
    let policies = strict.clone() + &port_level;
    assert!(strict_findings(&(migration("[]", "  port: 80\n") + &policies)).is_empty());
    assert_eq!(
        strict_findings(&(migration("[]", "  port: 9090\n") + &policies)).len(),
        1
    );
}
