//! Who may change things through the status API, and the bootstrap token endpoints.
//!
//! With `--admin-token-file`, the endpoints that change the mesh or reveal what a proxy is
//! served (migration commands, `/api/tokens`, `/debug/config_dump`) need
//! `authorization: Bearer <that token>`; the read-only status pages stay open for dashboards
//! and `jalur proxy-status`. Without the file those endpoints answer loopback callers only (a
//! warning says so at start): a token mint open to the network would hand any identity to
//! anyone who reaches 15014.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use http::{header, HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{json_reply, Reply, State};
use crate::ca::files;
use crate::ca::token::{TokenError, TokenRecord};
use crate::ca::CaError;

/// How errors name the file.
const ADMIN_TOKEN_FILE: &str = "the admin token file, --admin-token-file";

/// How often the admin token file is read again: a rotated token is in force, and the old one
/// refused, within this long.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The operator's admin token, as its file says now: rotating the file rotates the token
/// without a restart (the old token stops working), and a file that turns unreadable or
/// invalid keeps the last good token in force. Compared in constant time; never printed.
#[derive(Clone)]
pub struct AdminToken {
    path: Arc<Path>,
    current: Arc<ArcSwap<String>>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Reads the token from `path` (0600 or stricter, as for any secret the plane reads).
    pub fn read(path: &Path) -> Result<AdminToken, CaError> {
        Ok(AdminToken {
            path: Arc::from(path),
            current: Arc::new(ArcSwap::from_pointee(read_token(path)?)),
        })
    }

    /// [`AdminToken::read`], then the file read again every `every` for as long as a clone of
    /// the token lives (the poller holds it weakly).
    pub fn watched(path: &Path, every: Duration) -> Result<AdminToken, CaError> {
        let token = AdminToken::read(path)?;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&token.current);
            handle.spawn(reload_loop(token.path.clone(), weak, every));
        }
        Ok(token)
    }

    fn matches(&self, presented: &str) -> bool {
        let current = self.current.load();
        aws_lc_rs::constant_time::verify_slices_are_equal(current.as_bytes(), presented.as_bytes())
            .is_ok()
    }
}

/// The token in `path`, checked: private, and long enough to resist guessing.
fn read_token(path: &Path) -> Result<String, CaError> {
    let text = files::read_private(path, ADMIN_TOKEN_FILE)?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(CaError::Invalid {
            path: path.to_path_buf(),
            reason: "the admin token must be at least 16 characters (try `openssl rand -hex 32`)"
                .into(),
        });
    }
    Ok(token.to_string())
}

/// Polls the file (a stat and a small read; no inotify, which misses the symlink swaps a
/// Kubernetes secret mount makes) until the token is dropped. Logs say what happened to the
/// file, never what it holds; a problem is logged once until it changes.
async fn reload_loop(path: Arc<Path>, current: Weak<ArcSwap<String>>, every: Duration) {
    let mut problem: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        let Some(current) = current.upgrade() else {
            return;
        };
        match read_token(&path) {
            Ok(token) => {
                if problem.take().is_some() {
                    tracing::info!(path = %path.display(), "the admin token file is valid again");
                }
                if **current.load() != token {
                    current.store(Arc::new(token));
                    tracing::info!(path = %path.display(), "the admin token file changed: the new token is in force, the previous one no longer works");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if problem.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "cannot use the admin token file as it is now; the last good admin token stays in force");
                    problem = Some(text);
                }
            }
        }
    }
}

/// Without an admin token, who may use the protected endpoints: callers on this host.
pub fn local_only_allows(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Does this request need the admin token?
pub fn protected(method: &Method, path: &str) -> bool {
    path.starts_with("/api/tokens")
        || path == "/debug/config_dump"
        || (path.starts_with("/api/migrations") && method != Method::GET)
}

/// `None` when the request may go on; the 401 (or, without an admin token, the 403 for a caller
/// off this host) otherwise.
pub fn check(state: &State, peer: SocketAddr, headers: &HeaderMap) -> Option<Reply> {
    let Some(admin) = state.admin.as_ref() else {
        return (!local_only_allows(peer)).then(|| {
            json_reply(
                StatusCode::FORBIDDEN,
                &json!({ "error": format!(
                    "{} is not on this host: without --admin-token-file the control plane \
                     answers token, migration and config_dump requests from loopback only",
                    peer.ip()
                ) }),
            )
        });
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let error = match presented {
        Some(token) if admin.matches(token) => return None,
        Some(_) => "the admin token does not match",
        None => {
            "this endpoint needs the admin token: send `authorization: Bearer <token>` with the \
             contents of the control plane's --admin-token-file (jalur CLI: --token-file)"
        }
    };
    let mut reply = json_reply(StatusCode::UNAUTHORIZED, &json!({ "error": error }));
    reply.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"jalur-control\""),
    );
    Some(reply)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateToken {
    namespace: String,
    service_account: String,
    #[serde(default = "default_ttl")]
    ttl_seconds: u64,
    #[serde(default)]
    reusable: bool,
}

fn default_ttl() -> u64 {
    3600
}

/// `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/ID`.
pub fn tokens(state: &State, method: &Method, rest: &str, body: &[u8]) -> Reply {
    let Some(ca) = &state.ca else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": "this control plane has no certificate authority" }),
        );
    };
    let bad = |status: StatusCode, e: String| json_reply(status, &json!({ "error": e }));
    match (method, rest.trim_matches('/')) {
        (&Method::GET, "") => {
            let list: Vec<_> = ca.tokens.list().iter().map(record_json).collect();
            json_reply(StatusCode::OK, &json!(list))
        }
        (&Method::POST, "") => {
            let req: CreateToken = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => return bad(StatusCode::BAD_REQUEST, format!("request body: {e}")),
            };
            let ttl = Duration::from_secs(req.ttl_seconds);
            match ca
                .tokens
                .create(&req.namespace, &req.service_account, ttl, req.reusable)
            {
                Ok(t) => json_reply(StatusCode::OK, &json!(t)),
                Err(e) => token_error(e),
            }
        }
        (&Method::DELETE, id) if !id.is_empty() && !id.contains('/') => {
            match ca.tokens.revoke(id) {
                Ok(r) => json_reply(StatusCode::OK, &record_json(&r)),
                Err(e) => token_error(e),
            }
        }
        _ => bad(
            StatusCode::NOT_FOUND,
            "use POST /api/tokens, GET /api/tokens or DELETE /api/tokens/ID".into(),
        ),
    }
}

fn token_error(e: TokenError) -> Reply {
    let status = match e {
        TokenError::Invalid(_) => StatusCode::BAD_REQUEST,
        TokenError::NotFound(_) => StatusCode::NOT_FOUND,
        TokenError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_reply(status, &json!({ "error": e.to_string() }))
}

fn record_json(r: &TokenRecord) -> serde_json::Value {
    let expires = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(r.expires);
    json!({
        "id": r.id,
        "namespace": r.namespace,
        "serviceAccount": r.service_account,
        "expires": crate::ca::rfc3339(expires),
        "reusable": r.reusable,
        "used": r.used,
        "revoked": r.revoked,
        "expired": std::time::SystemTime::now() >= expires,
    })
}

#[cfg(test)]
mod tests {
    use super::{local_only_allows, AdminToken};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Log lines written while a test runs on this thread.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    #[cfg(unix)]
    fn write_token(path: &std::path::Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        // As an operator (or a secret mount) replaces it: a new file renamed over the old.
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text).expect("write");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::fs::rename(&tmp, path).expect("rename");
    }

    /// Rotation without a restart: the new token works and the old one stops within one
    /// interval; an invalid or exposed file keeps the last good token and says why in a log
    /// line that never holds a token.
    #[cfg(unix)]
    #[tokio::test(start_paused = true)]
    async fn a_rotated_admin_token_file_is_in_force_and_a_bad_one_keeps_the_last_good() {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin-token");
        let (first, second, third) = (
            "first-admin-token-0123456789",
            "second-admin-token-abcdefghij",
            "third-admin-token-klmnopqrstu",
        );
        write_token(&path, first, 0o600);
        let every = Duration::from_secs(2);
        let admin = AdminToken::watched(&path, every).expect("token");
        let next_round = || tokio::time::sleep(every + Duration::from_millis(100));
        assert!(admin.matches(first) && !admin.matches(second));

        write_token(&path, &format!("{second}\n"), 0o600);
        assert!(
            admin.matches(first),
            "changed before the file was read again"
        );
        next_round().await;
        assert!(admin.matches(second), "the rotated token is not in force");
        assert!(!admin.matches(first), "the old token still works");
        assert!(
            logs.text().contains("the admin token file changed"),
            "{}",
            logs.text()
        );

        // Too short: refused, the last good token stays, once in the log.
        write_token(&path, "short", 0o600);
        next_round().await;
        next_round().await;
        assert!(admin.matches(second) && !admin.matches("short"));
        let text = logs.text();
        assert_eq!(
            text.matches("at least 16 characters").count(),
            1,
            "logged once: {text}"
        );
        assert!(
            text.contains("the last good admin token stays in force"),
            "{text}"
        );
        // Readable by others: refused too, naming the file for what it is.
        write_token(&path, third, 0o644);
        next_round().await;
        assert!(admin.matches(second) && !admin.matches(third));
        assert!(logs.text().contains("admin token file, --admin-token-file"));
        // Fixed: in force.
        write_token(&path, third, 0o600);
        next_round().await;
        assert!(admin.matches(third) && !admin.matches(second));

        let text = logs.text();
        for secret in [first, second, third, "short"] {
            assert!(!text.contains(secret), "a token was logged: {text}");
        }
    }

    /// The refusal names what the file is: an operator with several secrets must know which.
    #[cfg(unix)]
    #[test]
    fn an_admin_token_file_readable_by_others_is_refused_as_such() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("admin-token");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = AdminToken::read(&path).expect_err("0644 accepted");
        let text = err.to_string();
        assert!(
            text.contains("admin token file")
                && text.contains("--admin-token-file")
                && text.contains(&path.display().to_string())
                && text.contains("mode 644")
                && text.contains("chmod 600"),
            "{text}"
        );
        assert!(!text.contains("CA key"), "{text}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(AdminToken::read(&path).is_ok());
    }

    #[test]
    fn without_an_admin_token_only_loopback_callers_reach_protected_endpoints() {
        for ok in [
            "127.0.0.1:5000",
            "127.8.9.1:1",
            "[::1]:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(local_only_allows(ok.parse().expect("addr")), "{ok}");
        }
        for refused in [
            "10.0.0.7:5000",
            "192.168.1.2:1",
            "[fd00::1]:5000",
            "[::ffff:10.0.0.1]:9",
        ] {
            assert!(
                !local_only_allows(refused.parse().expect("addr")),
                "{refused}"
            );
        }
    }
}
