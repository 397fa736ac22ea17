//! AuthorizationPolicy on JWT identities: a RequestAuthentication (inline JWKS, an ES256 key
//! made here) puts jwt_authn before RBAC; `requestPrincipals` and `request.auth.claims[…]` match
//! the verified payload, in stock Envoy and jalur proxy alike. A `jwksUri` on http is fetched
//! by the control plane and inlined (istiod's default): a key rotation at the provider reaches
//! both proxies without a restart, and an issuer whose keys were never fetched is refused.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::authz::{case, policy, run, Caller, Case, Matrix};
use common::mesh::NS;

const ISSUER: &str = "https://idp.test";
/// An issuer whose tokens must name the audience `shop-api`.
const AUD_ISSUER: &str = "https://aud.idp.test";

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
        self.bearer_of(ISSUER, sub, groups)
    }

    fn bearer_of(&self, issuer: &str, sub: &str, groups: &[&str]) -> &'static str {
        let now = now();
        self.signed(serde_json::json!({ "iss": issuer, "sub": sub, "iat": now,
            "exp": now + 3600, "groups": groups }))
    }

    /// `claims` signed with ES256 under kid "k1", as a leaked `Bearer …` header value.
    fn signed(&self, claims: serde_json::Value) -> &'static str {
        let header = serde_json::json!({ "alg": "ES256", "typ": "JWT", "kid": "k1" });
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

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An unsigned token (`alg: none`, empty signature) claiming `sub` of [`ISSUER`].
fn unsigned(sub: &str) -> &'static str {
    let header = serde_json::json!({ "alg": "none", "typ": "JWT" });
    let claims = serde_json::json!({ "iss": ISSUER, "sub": sub, "exp": now() + 3600 });
    let token = format!(
        "Bearer {}.{}.",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    Box::leak(token.into_boxed_str())
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
    // A second issuer with an audience, for the wrong-audience refusal.
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: {NS}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwks: '{jwks}'\n  - issuer: {AUD_ISSUER}\n    audiences: [shop-api]\n    jwks: '{jwks}'\n---\n",
        jwks = idp.jwks()
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
    // A token jwt_authn refuses never reaches RBAC or the backend, even on a path every
    // caller may use: 401 (403 for a token of the wrong audience), with the same text from
    // Envoy and jalur proxy, over the wire.
    let t = now();
    let refused: [(&str, &'static str, u16); 5] = [
        (
            "signed by another key",
            stranger.bearer("alice", &["admins"]),
            401,
        ),
        (
            "expired an hour ago",
            idp.signed(serde_json::json!({ "iss": ISSUER, "sub": "alice", "exp": t - 3600 })),
            401,
        ),
        (
            "of an issuer no rule names",
            idp.bearer_of("https://other.test", "alice", &[]),
            401,
        ),
        ("alg: none", unsigned("alice"), 401),
        (
            "for another audience",
            idp.signed(
                serde_json::json!({ "iss": AUD_ISSUER, "sub": "alice", "aud": "billing",
                "exp": t + 3600 }),
            ),
            403,
        ),
    ];
    for (what, bearer, want) in refused {
        let c = with_token(case(what, plain, "/open", false), bearer);
        let mut answers = Vec::new();
        for col in &m.columns {
            let (status, _, body, seen) = m.send(col, &c).await;
            if status != want || seen {
                failures.push(format!(
                    "[{}] a token {what}: {status} {body:?}, want {want} (backend saw it: {seen})",
                    col.label
                ));
            }
            answers.push((col.label, status, body));
        }
        if let [(a, sa, ba), (b, sb, bb), ..] = answers.as_slice() {
            if (sa, ba) != (sb, bb) {
                failures.push(format!(
                    "a token {what}: {a} answered {sa} {ba:?}, {b} {sb} {bb:?}"
                ));
            }
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

async fn remote_jwks_rotation() {
    let Some(mut m) = Matrix::start(true).await else {
        return;
    };
    let (old, new) = (Idp::new(), Idp::new());
    let server = jalur_testkit::DocServer::start(old.jwks()).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    const DOWN: &str = "https://down.idp.test";
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: {NS}\nspec:\n  jwtRules:\n  - issuer: {ISSUER}\n    jwksUri: http://{}/jwks\n  - issuer: {DOWN}\n    jwksUri: http://{dead}/jwks\n---\n",
        server.addr
    ) + &policy(
        "jwt",
        "ALLOW",
        "  - from:\n    - source: {requestPrincipals: [\"*\"]}\n    to:\n    - operation: {paths: [/jwt]}\n",
    );
    m.apply("remote-jwks", &yaml).await;
    let plain = Caller::Plain;
    // Every column answers `bearer` on /jwt with `want` (200 or 401).
    let expect = |bearer: &'static str, want: u16| {
        let m = &m;
        async move {
            let mut wrong = Vec::new();
            for col in &m.columns {
                let c = with_token(case("remote jwks", plain, "/jwt", want == 200), bearer);
                let (status, _, body, _) = m.send(col, &c).await;
                if status != want {
                    wrong.push(format!("[{}] {status} {body:?}, want {want}", col.label));
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("; "))
            }
        }
    };
    let deadline = std::time::Duration::from_secs(15);
    let old_token = old.bearer("alice", &[]);
    let new_token = new.bearer("alice", &[]);
    jalur_testkit::assert_eventually("the fetched keys verify", deadline, || {
        expect(old_token, 200)
    })
    .await;
    expect(new_token, 401)
        .await
        .expect("a key the provider does not publish");
    // Never fetched (nobody listens): keys nobody holds, every token of the issuer refused.
    let down_token = old.bearer_of(DOWN, "alice", &[]);
    expect(down_token, 401).await.expect("fail closed");
    // The provider rotates: the control plane's next fetch reaches both proxies by a push.
    server.serve(Some(new.jwks()));
    jalur_testkit::assert_eventually("the rotated keys verify", deadline, || async {
        expect(new_token, 200).await?;
        expect(old_token, 401).await
    })
    .await;
    // The provider goes down: the last good keys stay in use over several refreshes.
    server.serve(None);
    for _ in 0..4 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        expect(new_token, 200)
            .await
            .expect("the last good keys stay while the provider is down");
    }
}

/// A remote JWKS, fetched by the control plane: rotation without a restart, fail closed when
/// it was never fetched, last good keys while the provider is down — Envoy and jalur alike.
#[test]
fn jalur_and_envoy_pick_up_a_rotated_remote_jwks_without_restart() {
    run(remote_jwks_rotation());
}
