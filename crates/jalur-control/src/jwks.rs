//! Remote JWKS, fetched by the control plane and inlined into every proxy's jwt_authn, as istiod
//! does by default: a RequestAuthentication's `jwksUri` on http(s) is read here, and the proxies
//! (stock Envoy and jalur proxy alike) verify with the same keys from the same push, never
//! dialling the identity provider themselves. A key rotation at the provider reaches them at the
//! next refresh (`--jwks-refresh`, Istio's 20 minutes by default) as an ordinary push.
//!
//! Fail closed: a URI that was never fetched successfully is inlined as a key set whose only key
//! has no private half anywhere ([`unusable_jwks`]), so every token is refused (401) rather than
//! the listener being NACKed or tokens passing unchecked. A refresh that fails keeps the keys of
//! the last good fetch and says so in the log.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use jalur_model::Config;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the control plane holds for each http(s) `jwksUri` the config names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwksSet(pub BTreeMap<String, Fetched>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The JWKS document of the last good fetch.
    Keys(String),
    /// No fetch has succeeded yet: why the last one failed.
    Failed(String),
}

impl JwksSet {
    /// The JWKS to inline for `uri`: the fetched document, or the unusable key set.
    pub fn inline(&self, uri: &str) -> String {
        match self.0.get(uri) {
            Some(Fetched::Keys(doc)) => doc.clone(),
            _ => unusable_jwks().to_string(),
        }
    }
}

/// Istio's default refresh interval (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(20 * 60);
/// Istio's default fetch timeout when a jwtRule sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a rule's `timeout` is honoured: every URI is fetched in the same round, so a
/// `timeout: 24h` on a server that never answers would hold back every other issuer's keys.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// How soon a URI whose first fetch failed is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// A JWKS document larger than this is refused (a key set is a few KiB).
const MAX_DOCUMENT: usize = 1 << 20;
/// Where https JWKS servers are validated from when `SSL_CERT_FILE` names no other bundle.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Starts the resolver: it fetches every http(s) `jwksUri` of `config` as soon as the config
/// names it, again every `refresh`, and publishes the set whenever it changes — and once after
/// the first round of fetches, even if nothing was fetched, so the caller can wait for it
/// ([`first_round`]).
pub fn start(
    mut config: watch::Receiver<Arc<Config>>,
    refresh: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Arc<JwksSet>> {
    // A zero interval would fetch without pause; the CLI refuses under a second too.
    let refresh = refresh.max(Duration::from_secs(1));
    let (tx, rx) = watch::channel(Arc::new(JwksSet::default()));
    tokio::spawn(async move {
        let mut wanted = wanted(&config.borrow_and_update());
        let mut set = JwksSet::default();
        let mut first = true;
        let mut next_refresh = Instant::now() + refresh;
        // When URIs never fetched are tried again: an instant, not a delay restarted by every
        // pass, so config changes arriving faster than RETRY cannot postpone it (review finding).
        let mut next_retry: Option<Instant> = None;
        let (mut refresh_all, mut retry_failed) = (false, false);
        loop {
            let stale: Vec<(String, Duration)> = wanted
                .iter()
                .filter(|(u, _)| match set.0.get(*u) {
                    None => true,
                    Some(Fetched::Failed(_)) => retry_failed || refresh_all,
                    Some(Fetched::Keys(_)) => refresh_all,
                })
                .map(|(u, t)| (u.clone(), *t))
                .collect();
            (refresh_all, retry_failed) = (false, false);
            let mut next = set.clone();
            next.0.retain(|u, _| wanted.contains_key(u));
            // Concurrently, each within its own timeout (at most MAX_TIMEOUT): one slow server
            // holds this round back by that much at worst.
            let fetched = futures::future::join_all(stale.iter().map(|(u, t)| fetch(u, *t))).await;
            for ((uri, _), result) in stale.into_iter().zip(fetched) {
                let entry = match (result, next.0.get(&uri)) {
                    (Ok(doc), _) => Fetched::Keys(doc),
                    (Err(e), Some(Fetched::Keys(old))) => {
                        tracing::warn!(%uri, error = %e, "JWKS refresh failed; the keys of the last good fetch stay in use");
                        Fetched::Keys(old.clone())
                    }
                    (Err(e), _) => {
                        tracing::warn!(%uri, error = %e, "JWKS fetch failed; tokens of this issuer are refused until it succeeds");
                        Fetched::Failed(e)
                    }
                };
                next.0.insert(uri, entry);
            }
            if next != set || first {
                set = next;
                first = false;
                tx.send_replace(Arc::new(set.clone()));
            }
            let failing = set.0.values().any(|f| matches!(f, Fetched::Failed(_)));
            let now = Instant::now();
            next_retry = match next_retry {
                _ if !failing => None,
                Some(t) if t > now => Some(t),
                _ => Some(now + RETRY.min(refresh)),
            };
            let wake = next_retry.map_or(next_refresh, |t| t.min(next_refresh));
            tokio::select! {
                r = config.changed() => {
                    if r.is_err() { return; }
                    wanted = wanted_of(&config);
                }
                () = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_refresh {
                        refresh_all = true;
                        next_refresh = now + refresh;
                        next_retry = None;
                    } else {
                        retry_failed = true;
                        next_retry = None;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    });
    rx
}

/// Waits, at most `bound`, for the resolver's first round of fetches (see [`start`]), so the
/// first config a restarted control plane pushes carries the keys proxies verify with now,
/// not the fail-closed set (Istio fetches synchronously when a key is not cached; review
/// finding). Returns whether the round finished in time.
pub async fn first_round(keys: &mut watch::Receiver<Arc<JwksSet>>, bound: Duration) -> bool {
    matches!(
        tokio::time::timeout(bound, keys.changed()).await,
        Ok(Ok(()))
    )
}

fn wanted_of(config: &watch::Receiver<Arc<Config>>) -> BTreeMap<String, Duration> {
    let c = config.borrow().clone();
    wanted(&c)
}

/// Every http(s) `jwksUri` of a rule without inline `jwks`, with its fetch timeout.
fn wanted(config: &Config) -> BTreeMap<String, Duration> {
    config
        .request_authentications()
        .flat_map(|(_, ra)| ra.jwt_rules.iter())
        .filter(|r| r.jwks.is_none())
        .filter_map(|r| {
            let uri = r.jwks_uri.as_deref()?;
            is_remote(uri).then(|| {
                let timeout = r
                    .timeout
                    .as_deref()
                    .and_then(|t| t.parse::<jalur_model::duration::Duration>().ok())
                    .map_or(DEFAULT_TIMEOUT, |d| d.as_std().min(MAX_TIMEOUT));
                (uri.to_string(), timeout)
            })
        })
        .collect()
}

/// Whether the control plane fetches this `jwksUri` (http or https).
pub fn is_remote(uri: &str) -> bool {
    uri.starts_with("http://") || uri.starts_with("https://")
}

/// GETs `uri` within `timeout` and checks it is a JWKS document (`{"keys": [ … ]}`, not empty).
pub async fn fetch(uri: &str, timeout: Duration) -> Result<String, String> {
    tokio::time::timeout(timeout, fetch_inner(uri))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn fetch_inner(uri: &str) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("not a URI: {e}"))?;
    let tls = parsed.scheme_str() == Some("https");
    let host = parsed
        .host()
        .ok_or("the URI names no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let request = http::Request::get(
        parsed
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str),
    )
    .header(
        http::header::HOST,
        parsed.authority().map_or("", |a| a.as_str()),
    )
    .header(http::header::ACCEPT, "application/json")
    .body(http_body_util::Empty::<bytes::Bytes>::new())
    .map_err(|e| e.to_string())?;
    let response = if tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{host}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(client_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
        send(TokioIo::new(stream), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    if status != http::StatusCode::OK {
        return Err(format!("answered {status}"));
    }
    let doc = String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_string())?;
    let value: serde_json::Value =
        serde_json::from_str(&doc).map_err(|e| format!("not JSON: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("not a JWKS document: no \"keys\"")?;
    if !keys.iter().any(usable) {
        return Err(format!(
            "none of its {} keys is one a proxy verifies with (RSA; EC P-256/P-384; OKP Ed25519; oct)",
            keys.len()
        ));
    }
    Ok(doc)
}

/// Whether a proxy can verify with this JWK: a document without one would be NACKed by jalur
/// proxy (Envoy logs it and refuses every token), so it is kept out like a failed fetch and the
/// fail-closed set (or the last good keys) goes out instead. Mirrors the key types jalur proxy's
/// `jwt/keys.rs` accepts; written here because jalur-control does not depend on jalur-proxy.
fn usable(key: &serde_json::Value) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let b64 = |name: &str| {
        key.get(name)
            .and_then(serde_json::Value::as_str)
            .and_then(|v| URL_SAFE_NO_PAD.decode(v.trim_end_matches('=')).ok())
            .is_some_and(|b| !b.is_empty())
    };
    let crv = key.get("crv").and_then(serde_json::Value::as_str);
    match key.get("kty").and_then(serde_json::Value::as_str) {
        Some("RSA") => b64("n") && b64("e"),
        Some("EC") => matches!(crv, Some("P-256" | "P-384")) && b64("x") && b64("y"),
        Some("OKP") => crv == Some("Ed25519") && b64("x"),
        Some("oct") => b64("k"),
        _ => false,
    }
}

async fn send<I>(
    io: I,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))
}

/// TLS to JWKS servers: the roots of `SSL_CERT_FILE` if set (as OpenSSL and curl read it), else
/// the system bundle.
fn client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let path = std::env::var_os("SSL_CERT_FILE").map_or_else(|| SYSTEM_ROOTS.into(), Into::into);
    let path: std::path::PathBuf = path;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| format!("trust bundle {}: {e}", path.display()))?;
    for cert in certs.flatten() {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "trust bundle {} holds no certificate",
            path.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A JWKS whose only key is a P-256 public key whose private half was dropped when this process
/// made it: no token verifies against it (Istio inlines a similar key when a fetch fails).
pub fn unusable_jwks() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("a P-256 key can be generated");
        // Uncompressed point: 0x04 || x || y.
        let point = key.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
            "kid": "jalur-jwks-unavailable",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]})
        .to_string()
    });
    &DOC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unusable_key_set_is_a_valid_jwks_with_one_ec_key() {
        let v: serde_json::Value = serde_json::from_str(unusable_jwks()).expect("json");
        let keys = v["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0]["crv"], "P-256");
        assert_eq!(keys[0]["x"].as_str().map(str::len), Some(43));
    }

    #[test]
    fn only_http_and_https_uris_are_fetched() {
        assert!(is_remote("https://idp/k") && is_remote("http://127.0.0.1:9/k"));
        assert!(!is_remote("file:///etc/jwks.json"));
        let set = JwksSet(BTreeMap::from([
            (
                "https://a/k".to_string(),
                Fetched::Keys("{\"keys\":[1]}".into()),
            ),
            ("https://b/k".to_string(), Fetched::Failed("refused".into())),
        ]));
        assert_eq!(set.inline("https://a/k"), "{\"keys\":[1]}");
        assert_eq!(set.inline("https://b/k"), unusable_jwks());
        assert_eq!(set.inline("https://never/k"), unusable_jwks());
    }

    #[test]
    fn a_document_is_kept_only_with_a_key_a_proxy_verifies_with() {
        let ok = |k: serde_json::Value| usable(&k);
        let unusable: serde_json::Value = serde_json::from_str(unusable_jwks()).expect("json");
        assert!(ok(unusable["keys"][0].clone()));
        assert!(ok(
            serde_json::json!({"kty": "RSA", "n": "sXch", "e": "AQAB"})
        ));
        assert!(ok(
            serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": "11qY"})
        ));
        assert!(!ok(serde_json::json!({})));
        assert!(!ok(serde_json::json!({"kty": "RSA", "n": "sXch"})));
        assert!(!ok(
            serde_json::json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"})
        ));
        assert!(!ok(
            serde_json::json!({"kty": "RSA", "n": "not base64!", "e": "AQAB"})
        ));
    }

    #[tokio::test]
    async fn a_dead_server_or_a_bad_document_is_an_error_naming_why() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = dead.local_addr().expect("addr").port();
        drop(dead);
        let e = fetch(
            &format!("http://127.0.0.1:{port}/k"),
            Duration::from_secs(2),
        )
        .await
        .expect_err("nobody listens");
        assert!(e.contains(&format!("connect 127.0.0.1:{port}")), "{e}");
        let e = fetch("ftp://x/k", Duration::from_secs(2)).await;
        assert!(e.is_err());
    }

    fn config_naming(uri: &str) -> (tempfile::TempDir, Arc<Config>) {
        let dir = tempfile::tempdir().expect("dir");
        let yaml = format!("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: jwt, namespace: shop}}\nspec:\n  jwtRules:\n  - issuer: https://idp.example.com\n    jwksUri: {uri}\n");
        std::fs::write(dir.path().join("ra.yaml"), yaml).expect("write");
        let loaded = jalur_model::load_paths(&[dir.path().to_path_buf()]);
        assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
        (dir, Arc::new(loaded.config))
    }

    #[tokio::test]
    async fn the_first_round_holds_the_keys_the_config_names() {
        let doc = unusable_jwks().to_string();
        let server = jalur_testkit::DocServer::start(doc.clone()).await;
        let uri = format!("http://{}/keys", server.addr);
        let (_dir, config) = config_naming(&uri);
        let (_config_tx, config_rx) = watch::channel(config);
        let (_stop, shutdown) = watch::channel(false);
        let mut keys = start(config_rx, Duration::from_secs(3600), shutdown);
        assert!(first_round(&mut keys, Duration::from_secs(5)).await);
        assert_eq!(keys.borrow().0.get(&uri), Some(&Fetched::Keys(doc)));
    }

    #[tokio::test]
    async fn without_remote_jwks_the_first_round_is_over_at_once() {
        let (_config_tx, config_rx) = watch::channel(Arc::new(Config::default()));
        let (_stop, shutdown) = watch::channel(false);
        let mut keys = start(config_rx, Duration::from_secs(3600), shutdown);
        assert!(first_round(&mut keys, Duration::from_secs(1)).await);
        assert!(keys.borrow().0.is_empty());
    }
}
