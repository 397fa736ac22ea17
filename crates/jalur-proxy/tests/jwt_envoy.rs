//! RequestAuthentication as jalur's control plane translates it (envoy.filters.http.jwt_authn),
//! enforced by stock Envoy, next to jalur proxy's evaluator of the same filter config: each token
//! (valid, none, expired, wrong issuer, wrong audience, bad signature, `alg: none`, garbage)
//! gets the same status, body and `www-authenticate` from both. Then the JWKS file is rotated.
//!
//! The jalur column is the evaluator (`jalur_proxy::jwt`) on the request Envoy received, not
//! jalur proxy's listener: the request-path hook belongs to the RBAC track (issue 11, track C).

#[path = "common/istio_tls.rs"]
mod istio_tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpConnectionManager,
};
use envoy_types::util::pack_any;
use istio_tls::{cluster, listener, Mode, StaticPlane};
use jalur_proxy::jwt::{unix_now, JwtAuthn};
use jalur_testkit::{http_get, EchoServer, Envoy, EnvoyOpts};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::json;

const ISS: &str = "https://idp.example.com";

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

fn jwks(s: &Signer) -> String {
    json!({ "keys": [s.jwk.clone()] }).to_string()
}

fn sign(s: &Signer, claims: serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&header, &claims, &s.key).expect("sign")
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "alice", "aud": "pay", "exp": unix_now() + 600})
}

/// The jwt_authn HTTP filter jalur's control plane makes of one RequestAuthentication.
fn translated(
    jwks_path: &Path,
) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter {
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  jwtRules:\n  - issuer: {ISS}\n    audiences: [pay]\n    jwksUri: file://{}\n    outputClaimToHeaders: [{{header: x-echo-user, claim: sub}}]\n",
        jwks_path.display()
    );
    let (resources, diags) = jalur_model::parse_str(Path::new("ra.yaml"), &yaml);
    assert!(diags.is_empty(), "{diags:#?}");
    let config = jalur_model::Config::new(resources);
    let found = jalur_model::analyze::analyze(&config);
    assert!(found.is_empty(), "the policy is clean: {found:#?}");
    let applying = jalur_control::translate::jwt::applying(
        &config,
        "jalur-system",
        "shop",
        &Default::default(),
    );
    jalur_control::translate::jwt::http_filter(&applying, &Default::default())
        .expect("a filter")
        .filter
}

/// `base` with `jwt` in its HCM, where the listener translation puts it (before the router).
fn with_jwt(
    mut base: Listener,
    jwt: &envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter,
) -> Listener {
    for chain in &mut base.filter_chains {
        for f in &mut chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                continue;
            };
            let Ok(mut hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
                continue;
            };
            jalur_control::translate::jwt::insert(&mut hcm.http_filters, jwt);
            f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
        }
    }
    base
}

/// What Envoy answered, and what jalur's evaluator says about the same request.
async fn both(
    envoy: SocketAddr,
    jalur: &JwtAuthn,
    token: Option<&str>,
) -> ((u16, String, String), (u16, String, String)) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let (status, h, body) = http_get(envoy, "payments", "/pay", &headers)
        .await
        .expect("Envoy answers");
    let www = |h: &http::HeaderMap| {
        h.get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let envoy_said = (status, body, www(&h));
    let mut req = http::Request::builder()
        .uri("/pay")
        .header("host", "payments");
    if let Some(a) = &auth {
        req = req.header("authorization", a);
    }
    let mut parts = req.body(()).expect("request").into_parts().0;
    let jalur_said = match jalur.authenticate(&mut parts, unix_now()) {
        Ok(_) => (200, "payments".to_string(), String::new()),
        Err(d) => (
            d.code.as_u16(),
            d.body().to_string(),
            d.www_authenticate.clone(),
        ),
    };
    (envoy_said, jalur_said)
}

#[tokio::test]
async fn envoy_and_jalur_refuse_the_same_tokens_with_the_same_answers() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("jwks.json");
    let (idp, impostor) = (signer("k1"), signer("k1"));
    std::fs::write(&keys, jwks(&idp)).expect("write jwks");
    let jwt = translated(&keys);
    let Some(http_filter::ConfigType::TypedConfig(any)) = &jwt.config_type else {
        panic!("typed config");
    };
    let jalur = jalur_proxy::config::convert::jwt_filter(any).expect("jalur accepts the filter");

    let echo = EchoServer::start("payments").await;
    let plane = StaticPlane::start().await;
    plane.serve(
        "payments.shop",
        vec![with_jwt(
            listener("inbound", "backend", false, Mode::Disable),
            &jwt,
        )],
        vec![cluster("backend", &[echo.addr()], false, None, false)],
    );
    let mut opts = EnvoyOpts::new(
        plane.addr,
        "sidecar~127.0.0.1~payments.shop~shop.svc.cluster.local",
    );
    opts.cluster = "payments.shop".into();
    let envoy = Envoy::start_with(&binary, opts)
        .await
        .expect("envoy starts");
    let port = envoy.listener_port("inbound").await.expect("listener");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims();
        c[k] = v;
        sign(&idp, c)
    };
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 200, "payments"),
        ("valid", Some(sign(&idp, claims())), 200, "payments"),
        (
            "expired",
            Some(with("exp", json!(unix_now() - 3600))),
            401,
            "Jwt is expired",
        ),
        (
            "not yet valid",
            Some(with("nbf", json!(unix_now() + 3600))),
            401,
            "Jwt not yet valid",
        ),
        (
            "wrong issuer",
            Some(with("iss", json!("https://evil.example.com"))),
            401,
            "Jwt issuer is not configured",
        ),
        (
            "wrong audience",
            Some(with("aud", json!("other"))),
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            "bad signature",
            Some(sign(&impostor, claims())),
            401,
            "Jwt verification fails",
        ),
        (
            "alg none, unsigned",
            Some(format!(
                "{}.{}.",
                b64(json!({"alg": "none"})),
                b64(claims())
            )),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
        (
            "alg none, with a signature",
            Some(format!(
                "{}.{}.c2ln",
                b64(json!({"alg": "none"})),
                b64(claims())
            )),
            401,
            "Jwt header [alg] is not supported",
        ),
        (
            "garbage",
            Some("not-a-jwt".to_string()),
            401,
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ];
    for (name, token, status, body) in &cases {
        let (envoy_said, jalur_said) = both(addr, &jalur, token.as_deref()).await;
        assert_eq!(
            (envoy_said.0, envoy_said.1.as_str()),
            (*status, *body),
            "Envoy, {name}"
        );
        assert_eq!(jalur_said, envoy_said, "jalur vs Envoy, {name}");
    }
    // The claim reaches the application as a header, from Envoy.
    let token = format!("Bearer {}", sign(&idp, claims()));
    let (_, h, _) = http_get(addr, "payments", "/pay", &[("authorization", &token)])
        .await
        .expect("answer");
    assert_eq!(
        h.get("x-echo-user").map(|v| v.as_bytes()),
        Some(&b"alice"[..])
    );

    // Rotation: the file now holds only a new key.
    let rotated = signer("k2-rotated");
    let staged = dir.path().join(".jwks.json.new");
    std::fs::write(&staged, jwks(&rotated)).expect("stage");
    std::fs::rename(&staged, &keys).expect("rotate by rename");
    let new_token = sign(&rotated, claims());
    let mut parts = http::Request::builder()
        .uri("/pay")
        .header("authorization", format!("Bearer {new_token}"))
        .body(())
        .expect("request")
        .into_parts()
        .0;
    assert!(
        jalur.authenticate(&mut parts, unix_now()).is_ok(),
        "jalur reads the rotated file"
    );
    // Stock Envoy (1.40) reads `local_jwks.filename` once, when the listener is built (its
    // `watched_directory` is not honoured there either: tried): the rotated key stays refused
    // until the control plane pushes the filter again. Asserted so that the difference the
    // architecture documents is noticed the day it stops being true.
    let auth = format!("Bearer {new_token}");
    let envoy_rotated = jalur_testkit::eventually(Duration::from_secs(2), || {
        let auth = auth.clone();
        async move {
            let (status, _, body) = http_get(addr, "payments", "/pay", &[("authorization", &auth)])
                .await
                .map_err(|e| e.to_string())?;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        }
    })
    .await;
    let refusal = envoy_rotated.expect_err("Envoy does not re-read a JWKS file");
    assert!(
        refusal.contains("401 Jwks doesn't have key to match kid or alg from Jwt"),
        "{refusal}"
    );
}
