//! AuthorizationPolicy on JWT identities: a RequestAuthentication (inline JWKS, an ES256 key
//! made here) puts jwt_authn before RBAC; `requestPrincipals` and `request.auth.claims[…]` match
//! the verified payload. Stock Envoy column; jalur proxy's column waits for track A's JWT
//! verifier (until then jalur proxy refuses the jwt_authn filter, by design).

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::authz::{case, policy, run, Caller, Case, Matrix};
use common::mesh::NS;

const ISSUER: &str = "https://idp.test";

/// An ES256 signing key and its JWKS.
struct Idp {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Idp {
    fn new() -> Idp {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("key from pkcs8");
        Idp { key, rng }
    }

    /// `{"keys": [ES256 public key, kid "k1"]}`.
    fn jwks(&self) -> String {
        // Uncompressed point: 0x04 || x || y.
        let point = self.key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        serde_json::json!({ "keys": [{ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": "k1", "x": B64.encode(x), "y": B64.encode(y) }] })
        .to_string()
    }

    /// A token for `sub` in `groups`, valid for an hour, as a leaked `Bearer …` header value
    /// (the matrix's cases hold `'static` headers).
    fn bearer(&self, sub: &str, groups: &[&str]) -> &'static str {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": "k1" });
        let claims = serde_json::json!({ "iss": ISSUER, "sub": sub, "iat": now,
            "exp": now + 3600, "groups": groups });
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("signature");
        let token = format!("Bearer {input}.{}", B64.encode(sig.as_ref()));
        Box::leak(token.into_boxed_str())
    }
}

fn with_token(c: Case, bearer: &'static str) -> Case {
    let headers: &'static [(&'static str, &'static str)] =
        Box::leak(vec![("authorization", bearer)].into_boxed_slice());
    Case { headers, ..c }
}

async fn jwt_matrix(with_jalur: bool) {
    let Some(mut m) = Matrix::start(with_jalur).await else {
        return;
    };
    let idp = Idp::new();
    let stranger = Idp::new();
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: {NS}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{}'\n---\n",
        idp.jwks()
    ) + &policy(
        "jwt",
        "ALLOW",
        &format!(
            "  - from:\n    - source: {{requestPrincipals: [\"{ISSUER}/alice\"]}}\n    to:\n    - operation: {{paths: [/jwt]}}\n  \
             - to:\n    - operation: {{paths: [/claims]}}\n    when:\n    - {{key: \"request.auth.claims[groups]\", values: [admins]}}\n  \
             - to:\n    - operation: {{paths: [/open]}}\n"
        ),
    );
    m.apply("jwt", &yaml).await;
    let alice = idp.bearer("alice", &["admins"]);
    let bob = idp.bearer("bob", &["dev"]);
    let plain = Caller::Plain;
    let cases = vec![
        with_token(case("requestPrincipals, alice", plain, "/jwt", true), alice),
        with_token(case("requestPrincipals, bob", plain, "/jwt", false), bob),
        case("requestPrincipals, no token", plain, "/jwt", false),
        with_token(
            case("claims[groups] holds admins", plain, "/claims", true),
            alice,
        ),
        with_token(
            case("claims[groups] without admins", plain, "/claims", false),
            bob,
        ),
        case("no token where none is needed", plain, "/open", true),
    ];
    let mut failures = Vec::new();
    m.check("jwt", &cases, &mut failures).await;
    // A token no provider accepts never reaches RBAC: jwt_authn answers 401.
    let forged = with_token(
        case("forged", plain, "/open", false),
        stranger.bearer("alice", &["admins"]),
    );
    for col in &m.columns {
        let (status, _, body, seen) = m.send(col, &forged).await;
        if status != 401 || seen {
            failures.push(format!(
                "[{}] a token signed by another key: {status} {body:?} (backend saw it: {seen})",
                col.label
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Stock Envoy: jwt_authn then RBAC from `jalur control`'s translation.
#[test]
fn envoy_matches_request_principals_and_claims_of_verified_tokens() {
    run(jwt_matrix(false));
}

/// jalur proxy beside Envoy on the same tokens.
#[test]
fn jalur_and_envoy_match_request_principals_and_claims_alike() {
    run(jwt_matrix(true));
}
