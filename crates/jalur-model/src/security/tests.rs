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

fn authz(ns: &str, name: &str, body: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"
    )
}

#[test]
fn absent_empty_and_match_all_rules_parse_as_documented() {
    let yaml = [
        authz("shop", "a-absent", "  action: ALLOW"),
        authz("shop", "b-empty", "  rules: []"),
        authz("shop", "c-match-all", "  action: DENY\n  rules:\n  - {}"),
    ]
    .concat();
    let c = config(&yaml);
    let p: Vec<&AuthorizationPolicy> = c.authorization_policies().map(|(_, p)| p).collect();
    assert_eq!(p.len(), 3);
    assert_eq!((p[0].rules.as_ref(), p[0].rules().len()), (None, 0));
    assert_eq!(p[0].action, authz::AuthzAction::Allow);
    assert_eq!(
        (p[1].rules.as_deref(), p[1].rules().len()),
        (Some(&[][..]), 0)
    );
    assert_eq!(
        p[1].action,
        authz::AuthzAction::Allow,
        "ALLOW is the default"
    );
    assert_eq!(p[2].rules(), &[authz::Rule::default()]);
    assert_eq!(p[2].action, authz::AuthzAction::Deny);
    assert_eq!(p[0].match_labels(), None);
}

#[test]
fn a_full_policy_and_request_authentication_parse_unchanged() {
    let policy = authz(
        "shop",
        "p",
        "  selector: {matchLabels: {app: payments}}\n  action: AUDIT\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/shop/sa/checkout], notIpBlocks: [10.0.0.0/8], requestPrincipals: ['iss/sub']}\n    to:\n    - operation: {methods: [POST], paths: ['/pay*'], ports: ['8080'], notHosts: [admin]}\n    when:\n    - {key: 'request.auth.claims[groups]', values: [ops], notValues: [guest]}",
    );
    let ra = "---\napiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec:\n  selector: {matchLabels: {app: payments}}\n  jwtRules:\n  - issuer: https://idp.example.com\n    audiences: [pay]\n    jwksUri: https://idp.example.com/keys\n    fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]\n    fromParams: [token]\n    outputClaimToHeaders: [{header: x-sub, claim: sub}]\n    forwardOriginalToken: true\n    timeout: 5s\n";
    let c = config(&format!("{policy}{ra}"));
    let (_, p) = c.authorization_policies().next().expect("policy");
    assert_eq!(p.action, authz::AuthzAction::Audit);
    let rule = &p.rules()[0];
    assert_eq!(rule.from[0].source.not_ip_blocks, ["10.0.0.0/8"]);
    assert_eq!(rule.from[0].source.request_principals, ["iss/sub"]);
    assert_eq!(rule.to[0].operation.ports, ["8080"]);
    assert_eq!(rule.to[0].operation.not_hosts, ["admin"]);
    assert_eq!(rule.when[0].key, "request.auth.claims[groups]");
    assert_eq!(rule.when[0].not_values, ["guest"]);
    let (_, ra) = c.request_authentications().next().expect("ra");
    let jwt = &ra.jwt_rules[0];
    assert_eq!(jwt.issuer, "https://idp.example.com");
    assert_eq!(jwt.from_headers[0].prefix.as_deref(), Some("Bearer "));
    assert_eq!(jwt.output_claim_to_headers[0].claim, "sub");
    assert_eq!(jwt.forward_original_token, Some(true));
}
