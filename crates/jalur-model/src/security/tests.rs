use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::{parse_str, Config};

fn config(yaml: &str) -> Config {
    let (resources, diags) = parse_str(Path::new("pa.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:#?}");
    Config::new(resources)
}

fn pa(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn istio_yaml_parses_unchanged() {
    let c = config(&pa(
        "shop",
        "payments",
        "  selector:\n    matchLabels: {app: payments}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n    9090:\n      mode: PERMISSIVE",
    ));
    let (_, p) = c.peer_authentications().next().expect("one policy");
    assert_eq!(p.mode(), MtlsMode::Strict);
    assert_eq!(p.match_labels(), Some(&labels(&[("app", "payments")])));
    assert_eq!(p.port_level_mtls[&8080].mode, MtlsMode::Disable);
    assert_eq!(p.port_level_mtls[&9090].mode, MtlsMode::Permissive);
}

#[test]
fn a_bad_mode_is_an_error_at_its_line() {
    let yaml = pa("shop", "x", "  mtls:\n    mode: STRICTT");
    let (res, diags) = parse_str(Path::new("pa.yaml"), &yaml);
    assert!(res.is_empty());
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!((d.code, d.line), ("JAL0003", Some(7)), "{d}");
    assert_eq!(d.field.as_deref(), Some("spec.mtls.mode"));
    assert!(d.message.contains("STRICTT"), "{d}");
    let (_, diags) = parse_str(Path::new("pa.yaml"), &pa("shop", "x", "  mtlz: {}"));
    assert_eq!(diags[0].code, "JAL0003", "unknown field: {diags:#?}");
    let yaml = pa(
        "shop",
        "x",
        "  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080: {mode: OFF}",
    );
    let (_, diags) = parse_str(Path::new("pa.yaml"), &yaml);
    assert_eq!(
        diags[0].field.as_deref(),
        Some("spec.portLevelMtls.8080.mode"),
        "{diags:#?}"
    );
    assert_eq!(diags[0].line, Some(8));
}

#[test]
fn workload_beats_namespace_beats_mesh_beats_permissive_default() {
    let app = labels(&[("app", "payments")]);
    let empty = config("");
    let none = PeerPolicies::new(&empty, DEFAULT_ROOT_NAMESPACE).resolve("shop", &app, None);
    assert_eq!((none.mode, none.decided_by), (MtlsMode::Permissive, None));

    let mesh = pa(DEFAULT_ROOT_NAMESPACE, "default", "  mtls: {mode: STRICT}");
    let ns = pa("shop", "default", "  mtls: {mode: DISABLE}");
    let wl = pa(
        "shop",
        "payments",
        "  selector: {matchLabels: {app: payments}}\n  mtls: {mode: PERMISSIVE}",
    );
    let name = |r: Resolved| r.decided_by.map(|(r, _)| r.meta.name.clone());

    let c = config(&mesh);
    let r = PeerPolicies::new(&c, DEFAULT_ROOT_NAMESPACE).resolve("shop", &app, None);
    assert_eq!(r.mode, MtlsMode::Strict);
    let c = config(&(mesh.clone() + &ns));
    let r = PeerPolicies::new(&c, DEFAULT_ROOT_NAMESPACE).resolve("shop", &app, None);
    assert_eq!(
        (r.mode, name(r).as_deref()),
        (MtlsMode::Disable, Some("default"))
    );
    let c = config(&(mesh.clone() + &ns + &wl));
    let p = PeerPolicies::new(&c, DEFAULT_ROOT_NAMESPACE);
    let r = p.resolve("shop", &app, None);
    assert_eq!(
        (r.mode, name(r).as_deref()),
        (MtlsMode::Permissive, Some("payments"))
    );
    // Another workload of the namespace keeps the namespace's mode; another namespace the mesh's.
    let other = labels(&[("app", "orders")]);
    assert_eq!(p.resolve("shop", &other, None).mode, MtlsMode::Disable);
    assert_eq!(p.resolve("billing", &app, None).mode, MtlsMode::Strict);
    // The root namespace is the translator's to say.
    let p = PeerPolicies::new(&c, "istio-system");
    assert_eq!(p.resolve("billing", &app, None).mode, MtlsMode::Permissive);
}

#[test]
fn unset_inherits_and_port_level_overrides_by_port_number() {
    let app = labels(&[("app", "payments"), ("version", "v1")]);
    let c = config(
        &(pa("shop", "default", "  mtls: {mode: STRICT}")
            + &pa(
                "shop",
                "payments",
                "  selector: {matchLabels: {app: payments}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    9090: {mode: DISABLE}\n    8080: {mode: UNSET}",
            )),
    );
    let p = PeerPolicies::new(&c, DEFAULT_ROOT_NAMESPACE);
    let whole = p.resolve("shop", &app, None);
    assert_eq!(
        whole.mode,
        MtlsMode::Strict,
        "UNSET inherits the namespace's"
    );
    assert_eq!(whole.field(), "spec.mtls.mode");
    let metrics = p.resolve("shop", &app, Some(9090));
    assert_eq!(
        (metrics.mode, metrics.port),
        (MtlsMode::Disable, Some(9090))
    );
    assert_eq!(metrics.field(), "spec.portLevelMtls.9090.mode");
    assert_eq!(p.resolve("shop", &app, Some(8080)).mode, MtlsMode::Strict);
    assert_eq!(p.resolve("shop", &app, Some(7070)).mode, MtlsMode::Strict);
    let all = p.resolve_all("shop", &app, &[8080, 9090]);
    let modes: Vec<MtlsMode> = all.iter().map(|r| r.mode).collect();
    assert_eq!(modes, [MtlsMode::Strict, MtlsMode::Disable]);
    // A namespace-wide policy's port-level settings are ignored (Istio refuses them; analyze
    // reports JAL0140).
    let c = config(&pa(
        "shop",
        "default",
        "  mtls: {mode: STRICT}\n  portLevelMtls:\n    9090: {mode: DISABLE}",
    ));
    let p = PeerPolicies::new(&c, DEFAULT_ROOT_NAMESPACE);
    assert_eq!(p.resolve("shop", &app, Some(9090)).mode, MtlsMode::Strict);
}
