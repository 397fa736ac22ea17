//! Golden tests of the AuthorizationPolicy → RBAC mapping, one per field, form and condition
//! key, written as the readable JSON of `authz::render` (the xDS itself is what Envoy enforces
//! in `tests/authz_envoy.rs`).

use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use prost::Message;
use serde_json::{json, Value};

use super::{render, rules, Target};
use crate::mesh::Mesh;
use crate::node::ClientInfo;
use crate::translate::{translate, Ctx};

const HTTP: Target = Target {
    tcp: false,
    port: 8080,
};
const TCP: Target = Target {
    tcp: true,
    port: 8080,
};

fn mesh(yaml: &str) -> Mesh {
    let (res, diags) = jalur_model::parse_str(Path::new("authz.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:#?}");
    Mesh::build(Arc::new(jalur_model::Config::new(res)), &[])
}

fn string(v: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(v.into())),
    }
}

/// A sidecar of `payments` in namespace `shop` (labels `app: payments`), app port 8080, with
/// mesh credentials when `secure`; `tcp`: its port is declared TCP.
fn client(secure: bool, tcp: bool) -> ClientInfo {
    let mut md = Struct::default();
    md.fields.insert("JALUR_SERVICE".into(), string("payments"));
    let ports = if tcp { "tcp-db:8080" } else { "http:8080" };
    md.fields.insert("JALUR_PORTS".into(), string(ports));
    let mut labels = Struct::default();
    labels.fields.insert("app".into(), string("payments"));
    if secure {
        labels
            .fields
            .insert("security.istio.io/tlsMode".into(), string("istio"));
    }
    md.fields.insert(
        "LABELS".into(),
        PbValue {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    ClientInfo::from_node(&Node {
        id: "sidecar~10.0.1.1~payments-1.shop~shop.svc.cluster.local".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(md),
        ..Node::default()
    })
}

/// The RBAC configs for the `payments` sidecar, rendered.
fn rendered(yaml: &str, target: Target) -> Vec<Value> {
    let m = mesh(yaml);
    let c = client(false, target.tcp);
    let ctx = Ctx::new(&m, &c);
    rules(&ctx, target)
        .iter()
        .map(|r| {
            let bytes = r.encode_to_vec();
            let decoded = envoy_types::pb::envoy::config::rbac::v3::Rbac::decode(bytes.as_slice())
                .expect("RbacRules is envoy.config.rbac.v3.RBAC on the wire");
            render::rbac(&decoded)
        })
        .collect()
}

fn policy(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  \
         namespace: shop\nspec:\n  action: {action}\n  rules:\n{rules}\n---\n"
    )
}

/// Rule 0 of policy `p` (ALLOW) over HTTP: (permissions, principals).
fn allow_rule(rules: &str) -> (Value, Value) {
    one(&policy("p", "ALLOW", rules), HTTP, "ALLOW")
}

fn one(yaml: &str, target: Target, action: &str) -> (Value, Value) {
    let all = rendered(yaml, target);
    let f = all
        .iter()
        .find(|r| r["action"] == action)
        .unwrap_or_else(|| panic!("no {action} filter in {all:#?}"));
    let p = &f["policies"]["ns[shop]-policy[p]-rule[0]"];
    (p["permissions"].clone(), p["principals"].clone())
}

fn from(source: &str) -> Value {
    allow_rule(&format!("  - from:\n    - source:\n        {source}\n")).1
}

fn to(op: &str) -> Value {
    allow_rule(&format!("  - to:\n    - operation:\n        {op}\n")).0
}

fn when(key: &str, values: &str) -> (Value, Value) {
    allow_rule(&format!("  - when:\n    - key: {key}\n      {values}\n"))
}

fn principal(m: Value) -> Value {
    json!({ "principal": m })
}

#[test]
fn principals_exact_prefix_suffix_and_any() {
    let got = from(
        r#"principals: ["cluster.local/ns/shop/sa/checkout", "cluster.local/ns/ops/*", "*/sa/admin", "*"]"#,
    );
    let expected = json!([{ "and": [{ "or": [
        principal(json!({ "exact": "spiffe://cluster.local/ns/shop/sa/checkout" })),
        principal(json!({ "prefix": "spiffe://cluster.local/ns/ops/" })),
        principal(json!({ "regex": "spiffe://.*/sa/admin" })),
        principal(json!({ "regex": ".+" })),
    ]}]}]);
    assert_eq!(got, expected);
}

#[test]
fn not_principals_wrap_the_same_matchers_in_not() {
    let got = from(r#"notPrincipals: ["cluster.local/ns/shop/sa/legacy"]"#);
    let expected = json!([{ "and": [{ "not": { "or": [
        principal(json!({ "exact": "spiffe://cluster.local/ns/shop/sa/legacy" })),
    ]}}]}]);
    assert_eq!(got, expected);
}

#[test]
fn namespaces_and_not_namespaces_match_the_spiffe_path() {
    let got = from(
        r#"namespaces: ["shop", "team-*"]
        notNamespaces: ["shop-test"]"#,
    );
    let expected = json!([{ "and": [
        { "or": [
            principal(json!({ "regex": ".*/ns/shop/.*" })),
            principal(json!({ "regex": ".*/ns/team-.*/.*" })),
        ]},
        { "not": { "or": [principal(json!({ "regex": ".*/ns/shop-test/.*" }))] } },
    ]}]);
    assert_eq!(got, expected);
}

#[test]
fn service_accounts_default_to_the_policy_namespace_and_escape_dots() {
    let got = from(r#"serviceAccounts: ["checkout", "ops/deploy.bot"]"#);
    let expected = json!([{ "and": [{ "or": [
        principal(json!({ "regex": "spiffe://.+/ns/shop/(.+/|)sa/checkout(/.+)?" })),
        principal(json!({ "regex": "spiffe://.+/ns/ops/(.+/|)sa/deploy\\.bot(/.+)?" })),
    ]}]}]);
    assert_eq!(got, expected);
}

#[test]
fn ip_blocks_are_the_direct_peer_and_remote_ip_blocks_the_original_client() {
    let got = from(
        r#"ipBlocks: ["10.1.0.0/16", "192.168.1.7"]
        notIpBlocks: ["10.1.2.0/24"]
        remoteIpBlocks: ["2001:db8::/32"]"#,
    );
    let expected = json!([{ "and": [
        { "or": [{ "remote_ip": "2001:db8::/32" }] },
        { "or": [{ "direct_remote_ip": "10.1.0.0/16" }, { "direct_remote_ip": "192.168.1.7/32" }] },
        { "not": { "or": [{ "direct_remote_ip": "10.1.2.0/24" }] } },
    ]}]);
    assert_eq!(got, expected);
}

#[test]
fn methods_paths_and_hosts_in_istio_order() {
    let got = to(r#"paths: ["/pay", "/api/*", "*.json", "*"]
        methods: ["POST"]
        hosts: ["Payments.shop", "*.example.com"]"#);
    let expected = json!([{ "and": [
        { "or": [
            { "header": { ":authority": { "regex": "(?i)Payments\\.shop(:[0-9]+)?" } } },
            { "header": { ":authority": { "regex": "(?i).*\\.example\\.com(:[0-9]+)?" } } },
        ]},
        { "or": [{ "header": { ":method": { "exact": "POST" } } }] },
        { "or": [
            { "path": { "exact": "/pay" } },
            { "path": { "prefix": "/api/" } },
            { "path": { "suffix": ".json" } },
            { "path": { "regex": ".+" } },
        ]},
    ]}]);
    assert_eq!(got, expected);
}

#[test]
fn not_methods_not_paths_not_hosts_are_not_rules() {
    let got = to(r#"notMethods: ["DELETE"]
        notPaths: ["/admin*"]
        notHosts: ["*"]"#);
    let expected = json!([{ "and": [
        { "not": { "or": [{ "header": { ":authority": { "present": true } } }] } },
        { "not": { "or": [{ "header": { ":method": { "exact": "DELETE" } } }] } },
        { "not": { "or": [{ "path": { "prefix": "/admin" } }] } },
    ]}]);
    assert_eq!(got, expected);
}

#[test]
fn ports_resolve_against_the_listener_workload_port() {
    // The listener serves 8080: that value is `any`, another matches nothing.
    let got = to(r#"ports: ["8080", "9090"]"#);
    assert_eq!(
        got,
        json!([{ "and": [{ "or": ["any", { "not": "any" }] }] }])
    );
    let got = to(r#"notPorts: ["8080"]"#);
    assert_eq!(got, json!([{ "and": [{ "not": { "or": ["any"] } }] }]));
}

#[test]
fn each_operation_is_its_own_permission_and_each_source_its_own_principal() {
    let (perms, princs) = allow_rule(
        "  - from:\n    - source:\n        namespaces: [a]\n    - source:\n        namespaces: [b]\n    \
         to:\n    - operation:\n        methods: [GET]\n    - operation:\n        paths: [/x]\n",
    );
    assert_eq!(perms.as_array().map(Vec::len), Some(2), "{perms}");
    assert_eq!(princs.as_array().map(Vec::len), Some(2), "{princs}");
    assert_eq!(
        perms[1],
        json!({ "and": [{ "or": [{ "path": { "exact": "/x" } }] }] })
    );
}

#[test]
fn an_empty_rule_matches_everything() {
    let (perms, princs) = allow_rule("  - {}\n");
    assert_eq!(perms, json!([{ "and": ["any"] }]));
    assert_eq!(princs, json!([{ "and": ["any"] }]));
}

#[test]
fn when_request_headers_is_a_principal_header_matcher() {
    let (perms, princs) = when(
        "request.headers[x-user]",
        r#"values: ["alice", "bob*"]
      notValues: ["*"]"#,
    );
    assert_eq!(perms, json!([{ "and": ["any"] }]));
    assert_eq!(
        princs,
        json!([{ "and": [
            { "or": [
                { "header": { "x-user": { "exact": "alice" } } },
                { "header": { "x-user": { "prefix": "bob" } } },
            ]},
            { "not": { "or": [{ "header": { "x-user": { "present": true } } }] } },
        ]}])
    );
}

#[test]
fn when_source_keys_are_principals() {
    let (_, p) = when(
        "source.principal",
        r#"values: ["cluster.local/ns/shop/sa/checkout"]"#,
    );
    assert_eq!(
        p,
        json!([{ "and": [{ "or": [principal(json!({ "exact": "spiffe://cluster.local/ns/shop/sa/checkout" }))] }] }])
    );
    let (_, p) = when("source.namespace", r#"values: ["shop"]"#);
    assert_eq!(
        p,
        json!([{ "and": [{ "or": [principal(json!({ "regex": ".*/ns/shop/.*" }))] }] }])
    );
    let (_, p) = when("source.ip", r#"values: ["10.0.0.0/8"]"#);
    assert_eq!(
        p,
        json!([{ "and": [{ "or": [{ "direct_remote_ip": "10.0.0.0/8" }] }] }])
    );
    let (_, p) = when("remote.ip", r#"values: ["10.0.0.1"]"#);
    assert_eq!(
        p,
        json!([{ "and": [{ "or": [{ "remote_ip": "10.0.0.1/32" }] }] }])
    );
}

#[test]
fn when_destination_keys_are_permissions() {
    let (p, princs) = when("destination.ip", r#"values: ["10.0.1.1"]"#);
    assert_eq!(
        p,
        json!([{ "and": [{ "or": [{ "destination_ip": "10.0.1.1/32" }] }] }])
    );
    assert_eq!(princs, json!([{ "and": ["any"] }]));
    let (p, _) = when("destination.port", r#"notValues: ["9090"]"#);
    assert_eq!(
        p,
        json!([{ "and": [{ "not": { "or": [{ "not": "any" }] } }] }])
    );
    let (p, _) = when("connection.sni", r#"values: ["*.shop.svc.cluster.local"]"#);
    assert_eq!(
        p,
        json!([{ "and": [{ "or": [{ "sni": { "suffix": ".shop.svc.cluster.local" } }] }] }])
    );
}

#[test]
fn conditions_join_every_operation() {
    let (perms, _) = allow_rule(
        "  - to:\n    - operation:\n        methods: [GET]\n    when:\n    - key: destination.ip\n      values: [10.0.0.1]\n",
    );
    assert_eq!(
        perms,
        json!([{ "and": [
            { "or": [{ "header": { ":method": { "exact": "GET" } } }] },
            { "or": [{ "destination_ip": "10.0.0.1/32" }] },
        ]}])
    );
}

fn jwt(path: &str, m: Value) -> Value {
    json!({ "metadata": { "filter": "envoy.filters.http.jwt_authn", "path": path, "value": m } })
}

#[test]
fn request_principals_match_iss_and_sub_of_the_jwt_payload() {
    let got = from(r#"requestPrincipals: ["https://idp.example.com/alice", "*"]"#);
    let expected = json!([{ "and": [{ "or": [
        { "and": [
            jwt("jwt_payload.iss", json!({ "exact": "https://idp.example.com" })),
            jwt("jwt_payload.sub", json!({ "exact": "alice" })),
        ]},
        { "and": [
            jwt("jwt_payload.iss", json!({ "regex": ".+" })),
            jwt("jwt_payload.sub", json!({ "regex": ".+" })),
        ]},
    ]}]}]);
    assert_eq!(got, expected);
}

/// A `prefix*` whose fixed part holds a `/` may cut iss/sub anywhere: the issuer alone carries
/// it, or the cut is at one of its `/` (before, the fixed part was split at its last `/` and
/// `https://bad.example.com*` became iss `https:/`, which no token has: a DENY never fired).
#[test]
fn a_request_principal_prefix_inside_the_issuer_matches_the_issuer() {
    let got = from(r#"requestPrincipals: ["https://bad.example.com*"]"#);
    let alternatives = got[0]["and"][0]["or"][0]["or"]
        .as_array()
        .expect("or")
        .clone();
    assert_eq!(
        alternatives[0],
        json!({ "and": [
            jwt("jwt_payload.iss", json!({ "prefix": "https://bad.example.com" })),
            jwt("jwt_payload.sub", json!({ "regex": ".+" })),
        ]}),
        "{got}"
    );
    // The cuts at `https:/` and `https:` stay (no issuer is that short), none matches an empty
    // prefix (Envoy refuses one).
    assert_eq!(alternatives.len(), 3, "{got}");
    let rendered = got.to_string();
    assert!(!rendered.contains(r#""prefix":"""#), "{rendered}");
}

#[test]
fn claims_match_a_string_or_a_list_member() {
    let (_, p) = when("request.auth.claims[groups]", r#"values: ["admins"]"#);
    let expected = json!([{ "and": [{ "or": [{ "or": [
        jwt("jwt_payload.groups", json!({ "exact": "admins" })),
        jwt("jwt_payload.groups", json!({ "list_one_of": { "exact": "admins" } })),
    ]}]}]}]);
    assert_eq!(p, expected);
    let (_, p) = when("request.auth.claims[realm][role]", r#"values: ["ops"]"#);
    assert_eq!(
        p[0]["and"][0]["or"][0]["or"][0],
        jwt("jwt_payload.realm.role", json!({ "exact": "ops" }))
    );
    let (_, p) = when("request.auth.audiences", r#"values: ["shop"]"#);
    assert_eq!(
        p[0]["and"][0]["or"][0]["or"][0],
        jwt("jwt_payload.aud", json!({ "exact": "shop" }))
    );
}

#[test]
fn filters_come_audit_deny_allow() {
    let yaml = [
        policy("p", "ALLOW", "  - {}"),
        policy(
            "q",
            "DENY",
            "  - to:\n    - operation:\n        paths: [/admin]",
        ),
        policy("r", "AUDIT", "  - {}"),
    ]
    .concat();
    let actions: Vec<Value> = rendered(&yaml, HTTP)
        .iter()
        .map(|r| r["action"].clone())
        .collect();
    assert_eq!(actions, vec![json!("LOG"), json!("DENY"), json!("ALLOW")]);
}

#[test]
fn allow_policies_without_rules_leave_an_allow_filter_with_no_policy() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-all\n  namespace: shop\nspec: {}\n";
    assert_eq!(
        rendered(yaml, HTTP),
        vec![json!({ "action": "ALLOW", "policies": {} })]
    );
    // A DENY policy without rules denies nothing: no filter at all.
    let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: d\n  namespace: shop\nspec:\n  action: DENY\n";
    assert_eq!(rendered(yaml, HTTP), Vec::<Value>::new());
}

#[test]
fn no_applicable_policy_means_no_filter() {
    assert!(rendered("", HTTP).is_empty());
    // Another namespace, another workload's selector: not this sidecar's.
    let other_ns = policy("p", "ALLOW", "  - {}").replace("namespace: shop", "namespace: web");
    let other_app = policy("p", "ALLOW", "  - {}").replace(
        "spec:\n",
        "spec:\n  selector:\n    matchLabels:\n      app: web\n",
    );
    assert!(rendered(&other_ns, HTTP).is_empty());
    assert!(rendered(&other_app, HTTP).is_empty());
}

#[test]
fn root_namespace_policies_apply_mesh_wide_and_selectors_narrow() {
    let mesh_wide =
        policy("p", "DENY", "  - {}").replace("namespace: shop", "namespace: jalur-system");
    let got = rendered(&mesh_wide, HTTP);
    assert_eq!(got.len(), 1);
    assert!(
        got[0]["policies"]
            .get("ns[jalur-system]-policy[p]-rule[0]")
            .is_some(),
        "{got:?}"
    );
    let mine = policy("p", "DENY", "  - {}").replace(
        "spec:\n",
        "spec:\n  selector:\n    matchLabels:\n      app: payments\n",
    );
    assert_eq!(rendered(&mine, HTTP).len(), 1);
}

#[test]
fn on_tcp_an_allow_rule_with_http_fields_is_dropped() {
    let yaml = policy(
        "p",
        "ALLOW",
        "  - to:\n    - operation:\n        methods: [GET]\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/8]",
    );
    let got = rendered(&yaml, TCP);
    let keys: Vec<&String> = got[0]["policies"]
        .as_object()
        .expect("policies")
        .keys()
        .collect();
    assert_eq!(
        keys,
        vec!["ns[shop]-policy[p]-rule[1]"],
        "rule 0 (methods) must be dropped"
    );
}

#[test]
fn on_tcp_a_deny_rule_loses_its_http_fields_and_denies_more() {
    let yaml = policy(
        "p",
        "DENY",
        "  - to:\n    - operation:\n        paths: [/admin]\n        ports: [\"8080\"]\n    when:\n    - key: request.headers[x-debug]\n      values: [\"1\"]",
    );
    let (perms, princs) = one(&yaml, TCP, "DENY");
    assert_eq!(perms, json!([{ "and": [{ "or": ["any"] }] }]));
    assert_eq!(princs, json!([{ "and": ["any"] }]));
}

#[test]
fn what_cannot_be_expressed_fails_closed() {
    // ALLOW: a bad CIDR, an unknown key, a path template drop the rule.
    for rule in [
        "  - from:\n    - source:\n        ipBlocks: [10.0.0.0/99]",
        "  - when:\n    - key: request.weird\n      values: [x]",
        "  - to:\n    - operation:\n        paths: [\"/a/{*}\"]",
    ] {
        let got = rendered(&policy("p", "ALLOW", rule), HTTP);
        assert_eq!(
            got,
            vec![json!({ "action": "ALLOW", "policies": {} })],
            "{rule}"
        );
    }
    // DENY: the same field is left out, so the rule matches more.
    let (perms, _) = one(
        &policy(
            "p",
            "DENY",
            "  - to:\n    - operation:\n        paths: [\"/a/{*}\", /b]\n        methods: [GET]",
        ),
        HTTP,
        "DENY",
    );
    assert_eq!(
        perms,
        json!([{ "and": [{ "or": [{ "header": { ":method": { "exact": "GET" } } }] }] }])
    );
}

#[test]
fn custom_without_a_provider_denies_what_it_selects() {
    let (perms, _) = one(
        &policy(
            "p",
            "CUSTOM",
            "  - to:\n    - operation:\n        paths: [/x]",
        ),
        HTTP,
        "DENY",
    );
    assert_eq!(
        perms,
        json!([{ "and": [{ "or": [{ "path": { "exact": "/x" } }] }] }])
    );
}

#[test]
fn the_encoding_is_deterministic() {
    let yaml: String = (0..20)
        .map(|i| {
            policy(
                &format!("p{i}"),
                "ALLOW",
                "  - {}\n  - to:\n    - operation:\n        paths: [/a]",
            )
        })
        .collect();
    let m = mesh(&yaml);
    let c = client(false, false);
    let a = translate(&m, &c);
    let b = translate(&m, &c);
    let versions = |s: &jalur_xds::ClientSnapshot| {
        s.of_type(jalur_xds::TypeUrl::Listener)
            .map(|l| l.values().map(|r| r.version.clone()).collect::<Vec<_>>())
    };
    assert_eq!(versions(&a), versions(&b));
}

fn listener(snap: &jalur_xds::ClientSnapshot, name: &str) -> Listener {
    let r = &snap.of_type(jalur_xds::TypeUrl::Listener).expect("lds")[name];
    Listener::decode(r.body.value.as_slice()).expect("listener")
}

fn http_filter_names(l: &Listener) -> Vec<Vec<String>> {
    l.filter_chains
        .iter()
        .map(|fc| {
            let Some(filter::ConfigType::TypedConfig(any)) = &fc.filters[0].config_type else {
                panic!("typed config");
            };
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
            hcm.http_filters
                .iter()
                .map(|f| {
                    assert!(matches!(
                        f.config_type,
                        Some(http_filter::ConfigType::TypedConfig(_))
                    ));
                    f.name.clone()
                })
                .collect()
        })
        .collect()
}

const DENY_ADMIN: &str = "  - to:\n    - operation:\n        paths: [/admin]";

#[test]
fn the_inbound_listener_carries_rbac_on_every_chain_and_outbound_none() {
    let yaml = policy("p", "DENY", DENY_ADMIN)
        + "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: PERMISSIVE\n";
    let m = mesh(&yaml);
    let snap = translate(&m, &client(true, false));
    let inbound = listener(&snap, "inbound");
    let names = http_filter_names(&inbound);
    assert_eq!(names.len(), 2, "PERMISSIVE: a TLS and a plaintext chain");
    for chain in names {
        assert_eq!(
            chain,
            [
                "envoy.filters.http.fault",
                "envoy.filters.http.rbac",
                "envoy.filters.http.router"
            ]
        );
    }
    let outbound = http_filter_names(&listener(&snap, "outbound"));
    assert!(
        outbound
            .iter()
            .all(|c| !c.iter().any(|n| n.contains("rbac"))),
        "{outbound:?}"
    );
}

#[test]
fn a_tcp_inbound_listener_gets_the_network_filter_before_tcp_proxy() {
    let m = mesh(&policy(
        "p",
        "DENY",
        "  - from:\n    - source:\n        ipBlocks: [10.9.0.0/16]",
    ));
    let snap = translate(&m, &client(false, true));
    let inbound = listener(&snap, "inbound");
    let names: Vec<&str> = inbound.filter_chains[0]
        .filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.network.rbac",
            "envoy.filters.network.tcp_proxy"
        ]
    );
    let Some(filter::ConfigType::TypedConfig(any)) =
        &inbound.filter_chains[0].filters[0].config_type
    else {
        panic!("typed config");
    };
    let shown = render::filter(any).expect("network rbac");
    assert_eq!(shown["stat_prefix"], "tcp.");
    assert_eq!(shown["action"], "DENY");
}

#[test]
fn gateway_listeners_get_the_policies_selecting_the_gateway() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: edge\n  namespace: istio-system\nspec:\n  selector:\n    istio: ingressgateway\n  servers:\n  - port: {number: 8443, name: http, protocol: HTTP}\n    hosts: ['*']\n---\n"
        .to_string()
        + &policy("p", "DENY", DENY_ADMIN)
            .replace("namespace: shop", "namespace: istio-system")
            .replace("spec:\n", "spec:\n  selector:\n    matchLabels:\n      istio: ingressgateway\n");
    let m = mesh(&yaml);
    let mut md = Struct::default();
    let mut labels = Struct::default();
    labels
        .fields
        .insert("istio".into(), string("ingressgateway"));
    md.fields.insert(
        "LABELS".into(),
        PbValue {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    let gw = ClientInfo::from_node(&Node {
        id: "router~10.0.9.1~edge-gw-x.istio-system~istio-system.svc.cluster.local".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(md),
        ..Node::default()
    });
    let snap = translate(&m, &gw);
    let names = http_filter_names(&listener(&snap, "0.0.0.0_8443"));
    assert_eq!(
        names[0],
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
}

#[test]
fn jwt_authn_goes_before_rbac_and_a_remote_jwks_needs_no_cluster() {
    let yaml = policy("p", "ALLOW", "  - from:\n    - source:\n        requestPrincipals: [\"*\"]")
        + "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: shop\nspec:\n  jwtRules:\n  - issuer: https://idp.example.com\n    jwksUri: http://idp.example.com:8080/jwks\n";
    let m = mesh(&yaml);
    let snap = translate(&m, &client(false, false));
    let names = http_filter_names(&listener(&snap, "inbound"));
    assert_eq!(
        names[0],
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    let cds = snap.of_type(jalur_xds::TypeUrl::Cluster).expect("cds");
    // The control plane fetches the keys and inlines them: no proxy dials the provider.
    assert!(
        !cds.keys().any(|k| k.starts_with("jwks|")),
        "{:?}",
        cds.keys()
    );
    // Without a RequestAuthentication: no jwt_authn.
    let m = mesh(&policy("p", "ALLOW", "  - {}"));
    let snap = translate(&m, &client(false, false));
    let names = http_filter_names(&listener(&snap, "inbound"));
    assert!(!names[0].iter().any(|n| n.contains("jwt")), "{names:?}");
}
