use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jalur_identity::istio_ca::{create_certificate, IstioCertificateServiceServer};
use jalur_identity::{SpiffeId, WorkloadCert, WorkloadKey};
use tonic::Code;

use super::*;
use crate::ca::{CaOptions, MeshCa};

const HOUR: Duration = Duration::from_secs(3600);

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa)
}

fn tokens(dir: &Path) -> Arc<Tokens> {
    Tokens::load_or_create(dir, "cluster.local").expect("tokens")
}

/// The CA's gRPC service on a plaintext loopback port (15012's TLS is the transport track's;
/// a token-authenticated request needs no client certificate).
async fn serve(dir: &Path) -> (MeshCa, SocketAddr) {
    let mut registry = prometheus_client::registry::Registry::default();
    let ca = MeshCa::start(dir, &CaOptions::default(), &mut registry).expect("ca");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let service = IstioCertificateServiceServer::new(ca.service.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (ca, addr)
}

async fn ask(
    addr: SocketAddr,
    for_id: &SpiffeId,
    token: &str,
) -> Result<Vec<String>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(for_id).expect("csr");
    let chain = create_certificate(channel, csr, HOUR, Some(token)).await?;
    WorkloadCert::new(&key, &chain.concat()).expect("the chain certifies the key");
    Ok(chain)
}

#[tokio::test]
async fn a_token_for_one_account_cannot_get_a_certificate_for_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, addr) = serve(dir.path()).await;
    let token = ca
        .tokens
        .create("shop", "storefront", HOUR, true)
        .expect("token");
    let err = ask(addr, &id("shop", "payments"), &token.token)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "a credential for shop/storefront may not request spiffe://cluster.local/ns/shop/sa/payments"
    );
    let chain = ask(addr, &id("shop", "storefront"), &token.token)
        .await
        .expect("its own identity is signed");
    assert_eq!(chain.len(), 2);
    assert_eq!(ca.metrics.issued.get(), 1);
}

#[tokio::test]
async fn a_one_shot_token_is_spent_by_its_first_certificate_even_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, addr) = serve(dir.path()).await;
    let storefront = id("shop", "storefront");
    let once = ca
        .tokens
        .create("shop", "storefront", HOUR, false)
        .expect("token");
    // A refused request (wrong identity) does not spend it.
    ask(addr, &id("shop", "payments"), &once.token)
        .await
        .expect_err("refused");
    ask(addr, &storefront, &once.token)
        .await
        .expect("first use");
    let err = ask(addr, &storefront, &once.token)
        .await
        .expect_err("second use");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        err.message(),
        format!(
            "bootstrap token {} was already used (it is one-shot: create another, or --reusable)",
            once.id
        )
    );
    let again = tokens(dir.path());
    assert!(
        again.verify(&once.token).is_err(),
        "spent state was not persisted"
    );

    let reusable = ca
        .tokens
        .create("shop", "storefront", HOUR, true)
        .expect("token");
    for _ in 0..2 {
        ask(addr, &storefront, &reusable.token)
            .await
            .expect("reusable");
    }
}

#[test]
fn a_one_shot_token_can_be_spent_once_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let once = tokens
        .create("shop", "storefront", HOUR, false)
        .expect("token");
    // Two requests verified it before either signed; only the first spend counts.
    let (a, _) = tokens.verify(&once.token).expect("valid");
    let (b, _) = tokens.verify(&once.token).expect("valid");
    tokens.spend(&a).expect("first");
    assert_eq!(
        tokens.spend(&b).expect_err("second").code(),
        Code::Unauthenticated
    );
}

#[test]
fn an_expired_token_is_refused_naming_its_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let t = tokens
        .create("shop", "storefront", HOUR, true)
        .expect("token");
    tokens
        .verify_at(&t.token, SystemTime::now() + HOUR - Duration::from_secs(60))
        .expect("valid before expiry");
    let err = tokens
        .verify_at(&t.token, SystemTime::now() + HOUR + Duration::from_secs(1))
        .expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        err.message(),
        format!("bootstrap token {} expired at {}", t.id, t.expires)
    );
}

#[test]
fn a_revoked_token_is_refused_and_listed_as_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let t = tokens
        .create("shop", "storefront", HOUR, true)
        .expect("token");
    let keep = tokens
        .create("shop", "payments", HOUR, true)
        .expect("token");
    assert!(tokens.revoke(&t.id).expect("revoked").revoked);
    let err = tokens.verify(&t.token).expect_err("revoked");
    assert_eq!(
        err.message(),
        format!("bootstrap token {} was revoked", t.id)
    );
    tokens
        .verify(&keep.token)
        .expect("the other token still works");
    assert!(matches!(
        tokens.revoke("nope"),
        Err(TokenError::NotFound(_))
    ));
    let list = tokens.list();
    assert_eq!(list.len(), 2);
    assert!(list.iter().any(|r| r.id == t.id && r.revoked));
    // Revocation survives a restart.
    assert!(self::tokens(dir.path()).verify(&t.token).is_err());
}

#[test]
fn a_tampered_token_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let t = tokens
        .create("shop", "storefront", HOUR, true)
        .expect("token");
    let (claims_b64, sig) = t
        .token
        .strip_prefix(PREFIX)
        .and_then(|r| r.split_once('.'))
        .expect("shape");
    // Claims rewritten to another service account, the old signature kept.
    let mut claims: Claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims_b64).expect("b64")).expect("json");
    claims.sa = "payments".into();
    let forged = format!(
        "{PREFIX}{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"))
    );
    let err = tokens.verify(&forged).expect_err("forged claims");
    assert!(
        err.message().contains("signature does not verify"),
        "{}",
        err.message()
    );
    // One signature byte changed.
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).expect("b64");
    sig_bytes[0] ^= 1;
    let flipped = format!(
        "{PREFIX}{claims_b64}.{}",
        URL_SAFE_NO_PAD.encode(&sig_bytes)
    );
    assert!(tokens.verify(&flipped).is_err());
    for garbage in [
        "",
        "jalur.v1.",
        "jalur.v2.a.b",
        "Bearer x",
        &t.token[..t.token.len() - 3],
    ] {
        assert_eq!(
            tokens.verify(garbage).expect_err(garbage).code(),
            Code::Unauthenticated
        );
    }
    tokens
        .verify(&t.token)
        .expect("the genuine token still verifies");
}

#[test]
fn a_token_from_another_control_plane_is_refused() {
    let ours = tempfile::tempdir().expect("tempdir");
    let theirs = tempfile::tempdir().expect("tempdir");
    let other = self::tokens(theirs.path());
    let t = other
        .create("shop", "storefront", HOUR, true)
        .expect("token");
    let err = tokens(ours.path()).verify(&t.token).expect_err("foreign");
    assert!(
        err.message().contains("not issued by this control plane"),
        "{}",
        err.message()
    );
}

#[test]
fn the_key_is_private_and_tokens_json_holds_no_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let t = tokens
        .create("shop", "storefront", HOUR, false)
        .expect("token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("ca/token-key")), 0o600);
    }
    let key = std::fs::read(dir.path().join("ca/token-key")).expect("key");
    assert_eq!(key.len(), KEY_LEN);
    let json = std::fs::read_to_string(dir.path().join("tokens.json")).expect("json");
    let sig = t.token.rsplit('.').next().expect("sig");
    assert!(!json.contains(sig) && !json.contains(&t.token), "{json}");
    assert!(json.contains(&t.id));
    assert!(!format!("{t:?}").contains(sig), "Debug shows the secret");
    // The same key after a restart: the token still verifies.
    self::tokens(dir.path())
        .verify(&t.token)
        .expect("verifies after restart");
}

/// `tokens.json` on disk: the ids it holds.
fn ids_on_disk(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("tokens.json")).expect("tokens.json");
    let list: Vec<TokenRecord> = serde_json::from_str(&text).expect("records");
    list.into_iter().map(|r| r.id).collect()
}

fn ids(list: &[TokenRecord]) -> Vec<&str> {
    list.iter().map(|r| r.id.as_str()).collect()
}

/// Records expired for longer than the grace (24 h) go on create and on list; expired within
/// it, and revoked but unexpired, stay.
#[test]
fn expired_records_are_pruned_after_the_grace_on_create_and_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let t = SystemTime::now();
    let short = tokens
        .create_at("shop", "a", HOUR, false, t)
        .expect("create");
    let revoked = tokens
        .create_at("shop", "b", 48 * HOUR, true, t)
        .expect("create");
    tokens.revoke(&revoked.id).expect("revoke");
    let grace = EXPIRED_RECORD_GRACE;
    assert_eq!(grace, 24 * HOUR);

    // Expired, but within the grace: still listed.
    let listed = tokens.list_at(t + HOUR + grace - Duration::from_secs(60));
    assert_eq!(ids(&listed), [short.id.as_str(), revoked.id.as_str()]);
    // Past it: a create prunes the short one, keeps the revoked one (not expired yet).
    let later = t + HOUR + grace + Duration::from_secs(60);
    let fresh = tokens
        .create_at("shop", "c", 72 * HOUR, false, later)
        .expect("create");
    let mut expect = vec![revoked.id.clone(), fresh.id.clone()];
    expect.sort();
    let mut on_disk = ids_on_disk(dir.path());
    on_disk.sort();
    assert_eq!(on_disk, expect, "tokens.json after the create");
    // A list prunes too: the revoked one a day after its own expiry, the fresh one later.
    let listed = tokens.list_at(t + 48 * HOUR + grace + Duration::from_secs(60));
    assert_eq!(ids(&listed), [fresh.id.as_str()]);
    assert_eq!(ids_on_disk(dir.path()), [fresh.id.as_str()]);
}

/// A start prunes what expired long ago while the control plane was down; an expired token
/// stays refused whether its record is there or not.
#[test]
fn a_start_prunes_records_expired_long_ago() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = tokens(dir.path());
    let t = SystemTime::now();
    let recent = first
        .create_at("shop", "recent", HOUR, false, t - 2 * HOUR)
        .expect("create");
    let revoked = first
        .create("shop", "revoked", HOUR, false)
        .expect("create");
    first.revoke(&revoked.id).expect("revoke");
    // Minted 3 days ago for an hour, by a control plane that has not pruned since: its record
    // is still in tokens.json when this one starts.
    let old = Claims {
        id: "0123456789abcdef01234567".into(),
        td: "cluster.local".into(),
        ns: "shop".into(),
        sa: "old".into(),
        exp: unix(t - 71 * HOUR),
        reusable: false,
    };
    let old_token = first.sign(&old).expect("sign");
    let mut records: Vec<TokenRecord> = first.lock().values().cloned().collect();
    records.push(TokenRecord {
        id: old.id.clone(),
        namespace: old.ns.clone(),
        service_account: old.sa.clone(),
        expires: old.exp,
        reusable: false,
        used: false,
        revoked: false,
    });
    std::fs::write(
        dir.path().join("tokens.json"),
        serde_json::to_vec(&records).expect("json"),
    )
    .expect("write");
    drop(first);

    let restarted = tokens(dir.path());
    let mut kept = vec![recent.id.clone(), revoked.id.clone()];
    kept.sort();
    let mut on_disk = ids_on_disk(dir.path());
    on_disk.sort();
    assert_eq!(on_disk, kept);
    assert!(!ids(&restarted.list()).contains(&old.id.as_str()));
    let refused = restarted
        .verify(&old_token)
        .expect_err("an expired token verified");
    assert!(
        refused.message().contains("expired at"),
        "{}",
        refused.message()
    );
    let refused = restarted
        .verify(&revoked.token)
        .expect_err("a revoked token verified");
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
}

/// A TTL past the bound is refused (it could overflow the expiry arithmetic), and a record whose
/// expiry is out of range (an edited tokens.json) is kept, not a panic on every start and list.
#[test]
fn absurd_lifetimes_are_refused_and_out_of_range_records_do_not_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = tokens(dir.path());
    let t = SystemTime::now();
    for ttl in [
        MAX_TOKEN_TTL + Duration::from_secs(1),
        Duration::from_secs(i64::MAX as u64 - 1),
        Duration::MAX,
    ] {
        match tokens.create_at("shop", "a", ttl, false, t) {
            Err(TokenError::Invalid(msg)) => assert!(msg.contains("ttlSeconds"), "{msg}"),
            other => panic!("{ttl:?}: {other:?}"),
        }
    }
    tokens
        .create_at("shop", "a", MAX_TOKEN_TTL, true, t)
        .expect("the longest allowed");
    let far = TokenRecord {
        id: "edited".into(),
        namespace: "shop".into(),
        service_account: "a".into(),
        expires: u64::MAX,
        reusable: true,
        used: false,
        revoked: false,
    };
    assert!(!stale(&far, t));
}
