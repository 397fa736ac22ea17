//! AuthorizationPolicy and RequestAuthentication findings, one shape per test.

use std::path::Path;

use super::*;
use crate::{parse_str, Severity};

/// Workloads the policies select: payments (HTTP 8080, TCP 5432) in shop, a gateway.
const WORKLOADS: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.shop.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 8080, name: http, protocol: HTTP}, {number: 5432, name: tcp-pg, protocol: TCP}]
  resolution: STATIC
  workloadSelector: {labels: {app: payments}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;

fn run(yaml: &str) -> Vec<Diagnostic> {
    let text = format!("{WORKLOADS}---\n{yaml}");
    let (resources, load) = parse_str(Path::new("p.yaml"), &text);
    assert!(load.is_empty(), "test config does not load: {load:#?}");
    analyze(&Config::new(resources))
        .into_iter()
        .filter(|d| d.severity > Severity::Info)
        .collect()
}

/// (code, field) of every Warning and Error.
fn found(yaml: &str) -> Vec<(&'static str, String)> {
    run(yaml)
        .into_iter()
        .map(|d| (d.code, d.field.unwrap_or_default()))
        .collect()
}

fn policy(body: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: payments}}}}\n{body}\n")
}

fn rule(body: &str) -> String {
    policy(&format!("  rules:\n  - {body}"))
}

fn authn(body: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  jwtRules:\n{body}\n")
}

const JWKS: &str = r#"'{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"k1"}]}'"#;

#[test]
fn a_well_formed_policy_has_no_findings() {
    let p = rule(
        "from: [{source: {principals: [cluster.local/ns/shop/sa/checkout, 'cluster.local/ns/ops/*', '*'], namespaces: [shop], ipBlocks: [10.0.0.0/8, '::1']}}]\n    to: [{operation: {methods: [GET, POST], paths: [/pay, '/admin/*', '*.json'], ports: ['8080'], hosts: ['*.example.com']}}]\n    when: [{key: 'request.headers[x-tenant]', values: [a]}, {key: source.ip, notValues: [10.1.0.0/16]}, {key: destination.port, values: ['8080']}]",
    );
    assert_eq!(found(&p), vec![]);
}

#[test]
fn principals_must_be_spiffe_paths_without_scheme_or_inner_wildcards() {
    let p = rule(
        "from: [{source: {principals: ['spiffe://cluster.local/ns/shop/sa/a', checkout, 'cluster.local/*/sa/a', ''], notPrincipals: [cluster.local/ns/shop]}}]",
    );
    let f = found(&p);
    let field = "spec.rules[0].from[0].source";
    assert_eq!(
        f,
        vec![
            ("JAL0150", format!("{field}.notPrincipals[0]")),
            ("JAL0150", format!("{field}.principals[0]")),
            ("JAL0150", format!("{field}.principals[1]")),
            ("JAL0150", format!("{field}.principals[2]")),
            ("JAL0150", format!("{field}.principals[3]")),
        ]
        .into_iter()
        .map(|(c, f)| (c, f.to_string()))
        .collect::<Vec<_>>()
    );
    let msgs: Vec<String> = run(&p).iter().map(|d| d.message.clone()).collect();
    assert!(msgs[1].contains("drop the spiffe:// prefix"), "{msgs:?}");
}

#[test]
fn unknown_condition_keys_and_empty_conditions_are_errors() {
    let p = rule(
        "when: [{key: 'request.header[x]', values: [a]}, {key: 'request.headers[]', values: [a]}, {key: source.ip}, {key: 'experimental.envoy.filters.a.b[c]', values: [x]}, {key: 'request.auth.claims[groups]', values: [admin]}]",
    );
    let codes: Vec<&str> = found(&p)
        .into_iter()
        .filter(|(c, _)| *c != "JAL0161")
        .map(|(c, _)| c)
        .collect();
    assert_eq!(codes, vec!["JAL0151", "JAL0151", "JAL0152", "JAL0156"]);
}

#[test]
fn ips_ports_methods_and_paths_are_checked() {
    let p = rule(
        "from: [{source: {ipBlocks: [10.0.0.0/33, 300.1.1.1], remoteIpBlocks: [10.0.0.1]}}]\n    to: [{operation: {ports: ['0', http], methods: [get], paths: [admin, '/a*b', '/{*}/x']}}]",
    );
    let f: Vec<(&str, String)> = found(&p);
    let codes: Vec<&str> = f.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        vec![
            "JAL0153", "JAL0153", "JAL0124", "JAL0124", "JAL0154", "JAL0155", "JAL0155", "JAL0156"
        ],
        "{f:#?}"
    );
}

#[test]
fn empty_sources_and_operations_are_errors() {
    let p = rule("from: [{source: {}}]\n    to: [{operation: {}}]");
    assert_eq!(
        found(&p),
        vec![
            ("JAL0152", "spec.rules[0].from[0].source".to_string()),
            ("JAL0152", "spec.rules[0].to[0].operation".to_string()),
        ]
    );
}

#[test]
fn custom_is_not_supported() {
    let p = policy("  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]");
    assert_eq!(found(&p), vec![("JAL0156", "spec.action".to_string())]);
}

#[test]
fn an_empty_deny_rule_shadows_everything() {
    let p = policy("  action: DENY\n  rules:\n  - {}");
    assert_eq!(found(&p), vec![("JAL0157", "spec.rules[0]".to_string())]);
    // An empty ALLOW rule allows everything, which is what it says; no rules at all denies.
    assert_eq!(found(&policy("  rules:\n  - {}")), vec![]);
    assert_eq!(found(&policy("  action: DENY")), vec![]);
}

#[test]
fn a_selector_matching_no_known_workload_is_a_warning() {
    let p = policy("  rules: [{}]").replace("app: payments", "app: paymnets");
    let d = run(&p);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(
        (d[0].code, d[0].severity, d[0].field.as_deref()),
        ("JAL0158", Severity::Warning, Some("spec.selector"))
    );
    // A gateway's selector counts, in any namespace; so do WorkloadEntry labels.
    let gw = policy("  rules: [{}]").replace("app: payments", "istio: ingressgateway");
    assert_eq!(found(&gw), vec![]);
    let we = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm, namespace: shop}\nspec: {address: 10.0.0.9, labels: {app: paymnets}}\n---\n";
    assert_eq!(found(&format!("{we}{p}")), vec![]);
}

#[test]
fn http_fields_on_a_tcp_port_are_reported_with_what_happens() {
    let allow = rule("to: [{operation: {ports: ['5432'], methods: [GET]}}]");
    let d = run(&allow);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "JAL0159");
    assert!(d[0].message.contains("dropped"), "{}", d[0].message);
    assert!(d[0].message.contains("methods"), "{}", d[0].message);
    let deny = policy(
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [/admin]}}]\n    when: [{key: destination.port, values: ['5432']}]",
    );
    let d = run(&deny);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].message.contains("removed"), "{}", d[0].message);
    // The HTTP port is fine, and so is a TCP-only rule without HTTP fields.
    assert_eq!(
        found(&rule(
            "to: [{operation: {ports: ['8080'], methods: [GET]}}]"
        )),
        vec![]
    );
    assert_eq!(found(&rule("to: [{operation: {ports: ['5432']}}]")), vec![]);
}

#[test]
fn request_principals_need_a_request_authentication() {
    let p = rule("from: [{source: {requestPrincipals: ['https://issuer.example.com/alice']}}]");
    assert_eq!(
        found(&p),
        vec![(
            "JAL0161",
            "spec.rules[0].from[0].source.requestPrincipals".to_string()
        )]
    );
    let ra = authn(&format!(
        "  - issuer: https://issuer.example.com\n    jwks: {JWKS}"
    ));
    assert_eq!(found(&format!("{ra}---\n{p}")), vec![]);
    // A RequestAuthentication for other workloads does not count.
    let other = ra.replace(
        "jwtRules:",
        "selector: {matchLabels: {app: other}}\n  jwtRules:",
    );
    assert_eq!(found(&format!("{other}---\n{p}")).len(), 1);
    let bad = rule("from: [{source: {requestPrincipals: [alice]}}]");
    assert_eq!(found(&format!("{ra}---\n{bad}"))[0].0, "JAL0150");
}

const MIGRATION: &str = r#"apiVersion: jalur.dev/v1alpha1
kind: ConsulRegistry
metadata: {name: legacy, namespace: shop}
spec:
  addresses: [127.0.0.1:8500]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pay, namespace: shop}
spec:
  host: pay.service.consul
  subsets:
  - {name: legacy, labels: {jalur.dev/origin: consul}}
  - {name: mesh, labels: {jalur.dev/origin: mesh}}
---
apiVersion: jalur.dev/v1alpha1
kind: Migration
metadata: {name: pay, namespace: shop}
spec:
  legacy: {host: pay.service.consul, subset: legacy}
  mesh: {host: pay.service.consul, subset: mesh}
  stages: [{weight: 100, hold: 10s}]
---
"#;

#[test]
fn an_allow_policy_requiring_identities_locks_out_a_migrations_legacy_callers() {
    let ns_wide = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-mesh, namespace: shop}\nspec:\n  rules:\n  - from: [{source: {namespaces: [shop]}}]\n";
    let d = run(&format!("{MIGRATION}{ns_wide}"));
    let lock: Vec<&Diagnostic> = d.iter().filter(|d| d.code == "JAL0160").collect();
    assert_eq!(lock.len(), 1, "{d:#?}");
    assert_eq!(lock[0].severity, Severity::Error);
    assert!(
        lock[0].message.contains("Migration shop/pay"),
        "{}",
        lock[0].message
    );
    assert!(lock[0].message.contains("p.yaml:"), "{}", lock[0].message);
    // A rule admitting callers without identity (by address) keeps them in.
    let with_ips = ns_wide.replace(
        "namespaces: [shop]}}]",
        "namespaces: [shop]}}, {source: {ipBlocks: [10.0.0.0/8]}}]",
    );
    let d = run(&format!("{MIGRATION}{with_ips}"));
    assert!(!d.iter().any(|d| d.code == "JAL0160"), "{d:#?}");
    // A policy for other workloads does not apply.
    let other = ns_wide.replace(
        "spec:\n",
        "spec:\n  selector: {matchLabels: {app: payments}}\n",
    );
    let d = run(&format!("{MIGRATION}{other}"));
    assert!(!d.iter().any(|d| d.code == "JAL0160"), "{d:#?}");
}

#[test]
fn request_authentication_rules_are_checked() {
    let cases = [
        ("  - issuer: ''\n    jwks: JWKS", vec!["JAL0162"]),
        ("  - issuer: a", vec!["JAL0162"]),
        (
            "  - issuer: a\n    jwks: JWKS\n    jwksUri: https://a/k",
            vec!["JAL0162"],
        ),
        ("  - issuer: a\n    jwks: '{\"keys\": []}'", vec!["JAL0163"]),
        ("  - issuer: a\n    jwks: 'not json'", vec!["JAL0163"]),
        (
            "  - issuer: a\n    jwks: '{\"keys\": [{\"kty\": \"RSA\", \"n\": \"x\"}]}'",
            vec!["JAL0163"],
        ),
        ("  - issuer: a\n    jwksUri: ftp://a/k", vec!["JAL0164"]),
        (
            "  - issuer: a\n    jwksUri: file://relative",
            vec!["JAL0164"],
        ),
        ("  - issuer: a\n    jwksUri: https:///k", vec!["JAL0164"]),
        (
            "  - issuer: a\n    jwksUri: file:///etc/jwks.json\n    timeout: 0s",
            vec!["JAL0162"],
        ),
        (
            "  - issuer: a\n    jwksUri: http://idp:8080/k\n    timeout: soon",
            vec!["JAL0162"],
        ),
        (
            "  - issuer: a\n    jwks: JWKS\n  - issuer: a\n    jwksUri: file:///k",
            vec!["JAL0165"],
        ),
        ("  - issuer: a\n    jwks: JWKS\n    timeout: 5s", vec![]),
        // The control plane fetches a remote JWKS and inlines it: nothing to say.
        ("  - issuer: a\n    jwksUri: https://idp/k", vec![]),
    ];
    for (body, want) in cases {
        let body = body.replace("JWKS", JWKS);
        let got: Vec<&str> = found(&authn(&body)).into_iter().map(|(c, _)| c).collect();
        assert_eq!(got, want, "for\n{body}");
    }
}

#[test]
fn a_second_request_authentication_for_the_same_issuer_and_workloads_is_reported() {
    let a = authn(&format!("  - issuer: https://idp\n    jwks: {JWKS}"));
    let b = a.replace("name: jwt", "name: jwt2");
    let d = run(&format!("{a}---\n{b}"));
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].code, "JAL0165");
    assert!(d[0].message.contains("shop/jwt"), "{}", d[0].message);
    let c = b.replace(
        "jwtRules:",
        "selector: {matchLabels: {app: other}}\n  jwtRules:",
    );
    let with_selector = format!(
        "{}---\n{c}",
        a.replace(
            "jwtRules:",
            "selector: {matchLabels: {app: payments}}\n  jwtRules:"
        )
    );
    assert_eq!(run(&with_selector).len(), 0);
}
