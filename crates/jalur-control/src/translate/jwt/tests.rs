use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;

use super::*;

fn config(yaml: &str) -> Config {
    let (resources, diags) = jalur_model::parse_str(Path::new("ra.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:#?}");
    Config::new(resources)
}

fn ra(ns: &str, name: &str, body: &str) -> String {
    format!("---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n")
}

const JWKS: &str = r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"k1"}]}"#;

fn decode(jwt: &Jwt) -> JwtAuthentication {
    let Some(http_filter::ConfigType::TypedConfig(any)) = &jwt.filter.config_type else {
        panic!("no typed config: {:?}", jwt.filter);
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
    );
    JwtAuthentication::decode(any.value.as_slice()).expect("decodes")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn filter_for(c: &Config, ns: &str, l: &[(&str, &str)]) -> Option<Jwt> {
    http_filter(
        &applying(c, "jalur-system", ns, &labels(l)),
        &JwksSet::default(),
    )
}

#[test]
fn no_rules_no_filter() {
    let c = config(&ra("shop", "empty", "  jwtRules: []"));
    assert_eq!(filter_for(&c, "shop", &[]), None);
    assert_eq!(filter_for(&config(""), "shop", &[]), None);
}

#[test]
fn an_inline_rule_becomes_one_provider_allowing_missing_tokens() {
    let body = format!("  jwtRules:\n  - issuer: https://idp.example.com\n    audiences: [pay, orders]\n    jwks: '{JWKS}'\n    fromHeaders: [{{name: x-jwt, prefix: 'Bearer '}}]\n    fromParams: [token]\n    fromCookies: [session]\n    forwardOriginalToken: true\n    outputPayloadToHeader: x-payload\n    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]");
    let c = config(&ra("shop", "jwt", &body));
    let jwt = filter_for(&c, "shop", &[("app", "pay")]).expect("filter");
    assert_eq!(jwt.filter.name, "envoy.filters.http.jwt_authn");
    let cfg = decode(&jwt);
    assert!(cfg.bypass_cors_preflight);
    assert_eq!(cfg.providers.len(), 1);
    let p = &cfg.providers["origins-0"];
    assert_eq!(p.issuer, "https://idp.example.com");
    assert_eq!(p.audiences, ["pay", "orders"]);
    assert_eq!(p.payload_in_metadata, "jwt_payload");
    assert_eq!(
        (
            p.from_headers[0].name.as_str(),
            p.from_headers[0].value_prefix.as_str()
        ),
        ("x-jwt", "Bearer ")
    );
    assert_eq!(p.from_params, ["token"]);
    assert_eq!(p.from_cookies, ["session"]);
    assert!(p.forward);
    assert_eq!(p.forward_payload_header, "x-payload");
    assert_eq!(
        (
            p.claim_to_headers[0].header_name.as_str(),
            p.claim_to_headers[0].claim_name.as_str()
        ),
        ("x-sub", "sub")
    );
    let Some(JwksSourceSpecifier::LocalJwks(ds)) = &p.jwks_source_specifier else {
        panic!("{p:?}");
    };
    assert_eq!(
        ds.specifier,
        Some(Specifier::InlineString(JWKS.to_string()))
    );
    // One rule for every path: origins-0 OR no token at all.
    assert_eq!(cfg.rules.len(), 1);
    let rule = &cfg.rules[0];
    assert_eq!(
        rule.r#match.as_ref().and_then(|m| m.path_specifier.clone()),
        Some(PathSpecifier::Prefix("/".into()))
    );
    let Some(RequirementType::Requires(req)) = &rule.requirement_type else {
        panic!("{rule:?}");
    };
    let Some(RequiresType::RequiresAny(any)) = &req.requires_type else {
        panic!("{req:?}");
    };
    assert_eq!(
        any.requirements,
        [
            JwtRequirement {
                requires_type: Some(RequiresType::ProviderName("origins-0".into()))
            },
            JwtRequirement {
                requires_type: Some(RequiresType::AllowMissing(Empty::default()))
            },
        ]
    );
}

#[test]
fn file_jwks_is_read_by_the_proxy_and_remote_jwks_is_inlined_as_fetched() {
    let body = "  jwtRules:\n  - issuer: a\n    jwksUri: file:///etc/jalur/a.jwks\n  - issuer: b\n    jwksUri: https://idp.example.com/.well-known/jwks.json\n    timeout: 2s\n  - issuer: c\n    jwksUri: http://10.0.0.7:8080/keys";
    let c = config(&ra("shop", "jwt", body));
    let fetched = JwksSet(BTreeMap::from([(
        "https://idp.example.com/.well-known/jwks.json".to_string(),
        crate::jwks::Fetched::Keys(JWKS.to_string()),
    )]));
    let jwt = http_filter(
        &applying(&c, "jalur-system", "shop", &labels(&[])),
        &fetched,
    )
    .expect("filter");
    let cfg = decode(&jwt);
    let source = |name: &str| cfg.providers[name].jwks_source_specifier.clone();
    let local = |s: Specifier| {
        Some(JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(s),
            ..DataSource::default()
        }))
    };
    assert_eq!(
        source("origins-0"),
        local(Specifier::Filename("/etc/jalur/a.jwks".into()))
    );
    assert_eq!(
        source("origins-1"),
        local(Specifier::InlineString(JWKS.into())),
        "the fetched document, inlined: no proxy dials the provider"
    );
    // Never fetched: keys nobody holds, so every token of this issuer is refused.
    assert_eq!(
        source("origins-2"),
        local(Specifier::InlineString(
            crate::jwks::unusable_jwks().to_string()
        ))
    );
}

#[test]
fn selection_follows_namespace_root_namespace_and_labels() {
    let yaml = [
        ra("shop", "a-all", &format!("  jwtRules: [{{issuer: shop-all, jwks: '{JWKS}'}}]")),
        ra("shop", "b-pay", &format!("  selector: {{matchLabels: {{app: pay}}}}\n  jwtRules: [{{issuer: shop-pay, jwks: '{JWKS}'}}]")),
        ra("jalur-system", "mesh", &format!("  jwtRules: [{{issuer: mesh, jwks: '{JWKS}'}}]")),
        ra("other", "x", &format!("  jwtRules: [{{issuer: other, jwks: '{JWKS}'}}]")),
    ]
    .concat();
    let c = config(&yaml);
    let issuers = |ns: &str, l: &[(&str, &str)]| -> Vec<String> {
        let jwt = filter_for(&c, ns, l).expect("filter");
        let cfg = decode(&jwt);
        (0..cfg.providers.len())
            .map(|i| cfg.providers[&provider_name(i)].issuer.clone())
            .collect()
    };
    assert_eq!(
        issuers("shop", &[("app", "pay")]),
        ["mesh", "shop-all", "shop-pay"]
    );
    assert_eq!(issuers("shop", &[("app", "cart")]), ["mesh", "shop-all"]);
    assert_eq!(issuers("elsewhere", &[]), ["mesh"]);
}

#[test]
fn the_filter_goes_after_fault_and_before_rbac_and_router() {
    let c = config(&ra(
        "shop",
        "jwt",
        &format!("  jwtRules: [{{issuer: a, jwks: '{JWKS}'}}]"),
    ));
    let jwt = filter_for(&c, "shop", &[]).expect("filter");
    let named = |n: &str| HttpFilter {
        name: n.to_string(),
        ..HttpFilter::default()
    };
    let names = |f: &[HttpFilter]| f.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
    let mut filters = vec![
        named("envoy.filters.http.fault"),
        named("envoy.filters.http.rbac"),
        named("envoy.filters.http.rbac"),
        named("envoy.filters.http.router"),
    ];
    insert(&mut filters, &jwt.filter);
    insert(&mut filters, &jwt.filter);
    assert_eq!(
        names(&filters),
        [
            "envoy.filters.http.fault",
            "envoy.filters.http.jwt_authn",
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    let mut filters = vec![named("envoy.filters.http.router")];
    insert(&mut filters, &jwt.filter);
    assert_eq!(names(&filters)[0], "envoy.filters.http.jwt_authn");
}
