//! The jwt_authn evaluation on tokens signed here with keys generated here (ES256 by rcgen,
//! signed by jsonwebtoken), against configs translated by jalur's control plane.

use std::path::Path;

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const ISS: &str = "https://idp.example.com";
const NOW: u64 = 1_800_000_000;

/// An ES256 signing key and its public JWK (with `kid`).
struct Signer {
    key: EncodingKey,
    kid: String,
    jwk: serde_json::Value,
}

fn signer(kid: &str) -> Signer {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let key = EncodingKey::from_ec_der(&pair.serialize_der());
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&key, Algorithm::ES256).expect("jwk"))
            .expect("json");
    jwk["kid"] = json!(kid);
    Signer {
        key,
        kid: kid.to_string(),
        jwk,
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn sign(s: &Signer, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&header, &claims, &s.key).expect("sign")
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "alice", "aud": "pay", "exp": NOW + 300, "groups": "ops", "n": 7})
}

/// The filter jalur's control plane translates for this RequestAuthentication body, converted
/// by jalur proxy as a listener's filter would be.
fn filter(jwt_rules: &str) -> JwtAuthn {
    let yaml = format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  jwtRules:\n{jwt_rules}\n");
    let (resources, diags) = jalur_model::parse_str(Path::new("ra.yaml"), &yaml);
    assert!(diags.is_empty(), "{diags:#?}");
    let config = jalur_model::Config::new(resources);
    let applying = jalur_control::translate::jwt::applying(
        &config,
        "jalur-system",
        "shop",
        &Default::default(),
    );
    let jwt = jalur_control::translate::jwt::http_filter(&applying, &Default::default())
        .expect("a filter");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &jwt.filter.config_type else {
        panic!("typed config");
    };
    crate::config::convert::jwt_filter(any).expect("jalur proxy accepts it")
}

fn rule(jwks_json: &str, extra: &str) -> String {
    format!("  - issuer: {ISS}\n    audiences: [pay]\n    jwks: '{jwks_json}'\n{extra}")
}

fn request(token: Option<&str>) -> Parts {
    let mut b = http::Request::builder()
        .uri("/pay?x=1")
        .header("host", "payments:8080");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    b.body(()).expect("request").into_parts().0
}

fn outcome(f: &JwtAuthn, token: &str) -> Result<Option<JwtPayload>, Denial> {
    f.authenticate(&mut request(Some(token)), NOW)
}

fn denied(f: &JwtAuthn, token: &str) -> (u16, &'static str) {
    let d = outcome(f, token).expect_err("denied");
    (d.code.as_u16(), d.body())
}

#[test]
fn a_valid_token_passes_and_its_payload_reaches_rbac_and_headers() {
    let s = signer("k1");
    let f = filter(&rule(
        &jwks(&[&s]),
        "    outputClaimToHeaders: [{header: x-user, claim: sub}, {header: x-n, claim: n}]",
    ));
    let mut req = request(Some(&sign(&s, claims())));
    let payload = f
        .authenticate(&mut req, NOW)
        .expect("allowed")
        .expect("payload");
    assert_eq!(payload.get(&["jwt_payload", "iss"]), Some(&json!(ISS)));
    assert_eq!(payload.get(&["jwt_payload", "sub"]), Some(&json!("alice")));
    assert_eq!(payload.get(&["jwt_payload", "groups"]), Some(&json!("ops")));
    assert_eq!(req.headers["x-user"], "alice");
    assert_eq!(req.headers["x-n"], "7");
    assert!(
        !req.headers.contains_key("authorization"),
        "not forwarded by default"
    );
    // forwardOriginalToken keeps it.
    let f = filter(&rule(&jwks(&[&s]), "    forwardOriginalToken: true"));
    let mut req = request(Some(&sign(&s, claims())));
    f.authenticate(&mut req, NOW).expect("allowed");
    assert!(req.headers.contains_key("authorization"));
}

#[test]
fn no_token_passes_because_istio_allows_missing() {
    let s = signer("k1");
    let f = filter(&rule(&jwks(&[&s]), ""));
    assert_eq!(f.authenticate(&mut request(None), NOW), Ok(None));
}

#[test]
fn expired_not_yet_valid_and_the_60s_skew() {
    let s = signer("k1");
    let f = filter(&rule(&jwks(&[&s]), ""));
    let with = |k: &str, v: u64| {
        let mut c = claims();
        c[k] = json!(v);
        sign(&s, c)
    };
    assert_eq!(denied(&f, &with("exp", NOW - 61)), (401, "Jwt is expired"));
    assert!(
        outcome(&f, &with("exp", NOW - 59)).is_ok(),
        "inside the skew"
    );
    assert_eq!(
        denied(&f, &with("nbf", NOW + 61)),
        (401, "Jwt not yet valid")
    );
    assert!(outcome(&f, &with("nbf", NOW + 59)).is_ok());
}

#[test]
fn wrong_issuer_audience_signature_kid_and_alg_none_are_refused_as_envoy_says() {
    let s = signer("k1");
    let f = filter(&rule(&jwks(&[&s]), ""));
    let mut c = claims();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(
        denied(&f, &sign(&s, c)),
        (401, "Jwt issuer is not configured")
    );
    let mut c = claims();
    c["aud"] = json!(["other"]);
    assert_eq!(
        denied(&f, &sign(&s, c)),
        (403, "Audiences in Jwt are not allowed")
    );
    // Same kid, another key: the signature does not verify.
    let impostor = signer("k1");
    assert_eq!(
        denied(&f, &sign(&impostor, claims())),
        (401, "Jwt verification fails")
    );
    let stranger = signer("k9");
    assert_eq!(
        denied(&f, &sign(&stranger, claims())),
        (401, "Jwks doesn't have key to match kid or alg from Jwt")
    );
    // `alg: none` with no signature: refused before any key is looked at.
    let b64 = |v: serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!("{}.{}.c2ln", b64(json!({"alg": "none"})), b64(claims()));
    assert_eq!(
        denied(&f, &none),
        (401, "Jwt header [alg] is not supported")
    );
    // Unsigned (an empty third part): a bad shape, as Envoy answers.
    let unsigned = format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims()));
    assert_eq!(
        denied(&f, &unsigned).1,
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
    assert_eq!(
        denied(&f, "not-a-jwt"),
        (
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        )
    );
}

#[test]
fn a_denial_is_answered_like_envoy() {
    let s = signer("k1");
    let f = filter(&rule(&jwks(&[&s]), ""));
    let mut c = claims();
    c["exp"] = json!(NOW - 3600);
    let d = outcome(&f, &sign(&s, c)).expect_err("expired");
    assert_eq!(d.details(), "jwt_authn_access_denied{Jwt_is_expired}");
    assert_eq!(
        d.www_authenticate,
        "Bearer realm=\"http://payments:8080/pay\", error=\"invalid_token\""
    );
    let resp = d.response();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.body(), "Jwt is expired");
    assert_eq!(resp.headers()["content-type"], "text/plain");
}

#[test]
fn a_required_provider_refuses_a_missing_token() {
    let s = signer("k1");
    let mut f = filter(&rule(&jwks(&[&s]), ""));
    if let Some(r) = f.requirement.as_mut() {
        r.allow_missing = false;
    }
    let d = f
        .authenticate(&mut request(None), NOW)
        .expect_err("missing");
    assert_eq!((d.code.as_u16(), d.body()), (401, "Jwt is missing"));
    assert_eq!(
        d.www_authenticate,
        "Bearer realm=\"http://payments:8080/pay\""
    );
}

#[test]
fn tokens_in_params_cookies_and_custom_headers() {
    let s = signer("k1");
    let token = sign(&s, claims());
    let f = filter(&rule(
        &jwks(&[&s]),
        "    fromHeaders: [{name: x-jwt, prefix: 'Token '}]\n    fromParams: [t]\n    fromCookies: [session]",
    ));
    let req = |name: &str, value: String, uri: &str| {
        http::Request::builder()
            .uri(uri)
            .header(name, value)
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let mut by_header = req("x-jwt", format!("Token {token}"), "/");
    assert!(f.authenticate(&mut by_header, NOW).expect("ok").is_some());
    let mut by_param = req("x-other", "1".into(), &format!("/?a=b&t={token}"));
    assert!(f.authenticate(&mut by_param, NOW).expect("ok").is_some());
    let mut by_cookie = req("cookie", format!("a=b; session={token}"), "/");
    assert!(f.authenticate(&mut by_cookie, NOW).expect("ok").is_some());
    // The default Authorization header is not looked at once locations are given.
    let mut default = request(Some(&token));
    assert_eq!(f.authenticate(&mut default, NOW), Ok(None));
}

/// A good token beside a forged one is refused whichever comes first: the forged one would
/// otherwise travel on to the backend (here in the query) next to a verified identity.
#[test]
fn a_valid_token_beside_a_forged_one_is_refused() {
    let s = signer("k1");
    let mallory = signer("k1");
    let good = sign(&s, claims());
    let forged = sign(&mallory, claims());
    let f = filter(&rule(&jwks(&[&s]), ""));
    for (header, param) in [(&good, &forged), (&forged, &good)] {
        let mut req = http::Request::builder()
            .uri(format!("/pay?access_token={param}"))
            .header("authorization", format!("Bearer {header}"))
            .body(())
            .expect("request")
            .into_parts()
            .0;
        let d = f.authenticate(&mut req, NOW).expect_err("refused");
        assert_eq!((d.code.as_u16(), d.body()), (401, "Jwt verification fails"));
    }
}

#[test]
fn a_jwks_file_is_reread_when_it_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("keys.json");
    let (old, new) = (signer("k1"), signer("k2-rotated"));
    std::fs::write(&path, jwks(&[&old])).expect("write");
    let f = filter(&format!(
        "  - issuer: {ISS}\n    jwksUri: file://{}",
        path.display()
    ));
    assert!(outcome(&f, &sign(&old, claims())).is_ok());
    assert!(outcome(&f, &sign(&new, claims())).is_err());
    std::fs::write(&path, jwks(&[&new])).expect("rotate");
    assert!(
        outcome(&f, &sign(&new, claims())).is_ok(),
        "the new key counts"
    );
    assert_eq!(
        denied(&f, &sign(&old, claims())).1,
        "Jwks doesn't have key to match kid or alg from Jwt",
        "the old key is gone"
    );
    // A broken rewrite keeps the last good keys.
    std::fs::write(&path, "{not json").expect("break");
    assert!(outcome(&f, &sign(&new, claims())).is_ok());
}

#[test]
fn unsupported_shapes_are_nacked_naming_the_field() {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
        jwt_provider::JwksSourceSpecifier, JwtAuthentication, JwtProvider, RemoteJwks,
    };
    let mut cfg = JwtAuthentication::default();
    cfg.providers.insert(
        "origins-0".into(),
        JwtProvider {
            issuer: ISS.into(),
            jwks_source_specifier: Some(JwksSourceSpecifier::RemoteJwks(RemoteJwks::default())),
            ..JwtProvider::default()
        },
    );
    let any = envoy_types::util::pack_any(cfg);
    let err = crate::config::convert::jwt_filter(&any).expect_err("remote is NACKed");
    assert_eq!(err.field, "providers[\"origins-0\"].remote_jwks", "{err}");
    let missing = std::env::temp_dir().join("jalur-no-such-jwks.json");
    let f = format!(
        "  - issuer: {ISS}\n    jwksUri: file://{}",
        missing.display()
    );
    let yaml = format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  jwtRules:\n{f}\n");
    let (resources, _) = jalur_model::parse_str(Path::new("ra.yaml"), &yaml);
    let config = jalur_model::Config::new(resources);
    let applying = jalur_control::translate::jwt::applying(
        &config,
        "jalur-system",
        "shop",
        &Default::default(),
    );
    let jwt =
        jalur_control::translate::jwt::http_filter(&applying, &Default::default()).expect("filter");
    let Some(http_filter::ConfigType::TypedConfig(any)) = &jwt.filter.config_type else {
        panic!("typed config");
    };
    let err = crate::config::convert::jwt_filter(any).expect_err("missing file is NACKed");
    assert!(err.message.contains("jalur-no-such-jwks.json"), "{err}");
}
