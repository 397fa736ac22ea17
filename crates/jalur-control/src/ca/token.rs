//! Bootstrap tokens: how a workload without a certificate gets its first one.
//!
//! A token is `jalur.v1.<base64url(claims)>.<base64url(HMAC-SHA256(key, "jalur.v1." + claims
//! part))>`, claims `{"id","td","ns","sa","exp","reusable"}`. The key (`ca/token-key`, 32 random
//! bytes, 0600) never leaves the control plane, so only it can mint or check one. What it
//! issued is remembered in `tokens.json` (id, namespace, account, expiry, reusable, used,
//! revoked; never the token itself) so a token can be revoked, and a one-shot token is spent by
//! the first certificate signed on it, across restarts. Records expired for longer than
//! [`EXPIRED_RECORD_GRACE`] are pruned.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jalur_identity::istio_ca::TlsConnectInfo;
use jalur_identity::SpiffeId;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::service::WorkloadAuthenticator;
use super::{files, rfc3339, CaError};

const PREFIX: &str = "jalur.v1.";
const KEY_LEN: usize = 32;

/// How long a record outlives its token before it is pruned (on start, create and list):
/// `jalur token list` still shows what expired in the last day. Past that a record serves
/// nothing (an expired token is refused on its signed expiry before its record is read, and
/// a token without a record is refused too) and would only grow `tokens.json` for ever.
/// Revoked tokens are pruned on the same rule: kept while they could still be presented.
pub const EXPIRED_RECORD_GRACE: Duration = Duration::from_secs(24 * 3600);

/// The longest a bootstrap token may live. A token only has to reach its workload's first
/// certificate; a year covers a `--reusable` token baked into a VM image, and the bound keeps
/// every expiry (and expiry + grace) far inside `SystemTime`'s range.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a token says, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub id: String,
    pub td: String,
    pub ns: String,
    pub sa: String,
    /// Unix seconds.
    pub exp: u64,
    pub reusable: bool,
}

/// What `tokens.json` remembers of a token (no secret: the token cannot be rebuilt from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    /// Unix seconds.
    pub expires: u64,
    pub reusable: bool,
    pub used: bool,
    pub revoked: bool,
}

/// A freshly minted token: the only time the secret exists outside the caller.
#[derive(Clone, Serialize)]
pub struct IssuedToken {
    pub id: String,
    pub token: String,
    /// RFC 3339.
    pub expires: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why a token API call failed (the status API maps these to HTTP statuses).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("no bootstrap token with id {0:?}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] CaError),
}

/// The control plane's bootstrap tokens.
pub struct Tokens {
    key: aws_lc_rs::hmac::Key,
    trust_domain: String,
    path: PathBuf,
    records: Mutex<BTreeMap<String, TokenRecord>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Loads `ca/token-key` (creating it on first start) and `tokens.json` from `state_dir`.
    pub fn load_or_create(state_dir: &Path, trust_domain: &str) -> Result<Arc<Tokens>, CaError> {
        let key_path = state_dir.join("ca").join("token-key");
        files::create_dir(&state_dir.join("ca"))?;
        if !key_path.exists() {
            let mut bytes = vec![0u8; KEY_LEN];
            aws_lc_rs::rand::fill(&mut bytes)
                .map_err(|_| CaError::Tokens("the system has no randomness".into()))?;
            // Another control plane on the same state directory may have won: use its key.
            files::create_exclusive(&key_path, &bytes, 0o600)?;
        }
        let key = {
            let bytes = files::read_private_bytes(&key_path, "the bootstrap-token signing key")?;
            if bytes.len() != KEY_LEN {
                return Err(CaError::Invalid {
                    path: key_path,
                    reason: format!("holds {} bytes, expected {KEY_LEN}", bytes.len()),
                });
            }
            bytes
        };
        let path = state_dir.join("tokens.json");
        let records = if path.exists() {
            let text = files::read_string(&path)?;
            let list: Vec<TokenRecord> =
                serde_json::from_str(&text).map_err(|e| CaError::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            list.into_iter().map(|r| (r.id.clone(), r)).collect()
        } else {
            BTreeMap::new()
        };
        let tokens = Arc::new(Tokens {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            trust_domain: trust_domain.to_string(),
            path,
            records: Mutex::new(records),
        });
        tokens.prune_logged(SystemTime::now());
        Ok(tokens)
    }

    /// Mints a token for `namespace`/`service_account` valid for `ttl`.
    pub fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        reusable: bool,
    ) -> Result<IssuedToken, TokenError> {
        self.create_at(namespace, service_account, ttl, reusable, SystemTime::now())
    }

    pub(crate) fn create_at(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
        reusable: bool,
        now: SystemTime,
    ) -> Result<IssuedToken, TokenError> {
        // The same rules as the SPIFFE id the token will be turned into.
        let id = SpiffeId::new(&self.trust_domain, namespace, service_account);
        id.to_string()
            .parse::<SpiffeId>()
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(TokenError::Invalid(format!(
                "ttlSeconds must be between 1 and {} (366 days)",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let mut raw = [0u8; 12];
        aws_lc_rs::rand::fill(&mut raw)
            .map_err(|_| CaError::Tokens("the system has no randomness".into()))?;
        let expires = now + ttl;
        let claims = Claims {
            id: hex(&raw),
            td: self.trust_domain.clone(),
            ns: namespace.into(),
            sa: service_account.into(),
            exp: unix(expires),
            reusable,
        };
        let token = self.sign(&claims)?;
        let record = TokenRecord {
            id: claims.id.clone(),
            namespace: claims.ns,
            service_account: claims.sa,
            expires: claims.exp,
            reusable,
            used: false,
            revoked: false,
        };
        let mut pruned = 0;
        self.update(|records| {
            pruned = prune(records, now);
            records.insert(record.id.clone(), record.clone());
            Ok(())
        })?;
        log_pruned(pruned);
        tracing::info!(id = %claims.id, namespace, service_account, reusable, "bootstrap token created");
        Ok(IssuedToken {
            id: claims.id,
            token,
            expires: rfc3339(expires),
        })
    }

    fn sign(&self, claims: &Claims) -> Result<String, CaError> {
        let json = serde_json::to_vec(claims).map_err(|e| CaError::Tokens(e.to_string()))?;
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let tag = aws_lc_rs::hmac::sign(&self.key, signed.as_bytes());
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref())))
    }

    /// Every token issued and not yet pruned, newest expiry last; no secrets.
    pub fn list(&self) -> Vec<TokenRecord> {
        self.list_at(SystemTime::now())
    }

    pub(crate) fn list_at(&self, now: SystemTime) -> Vec<TokenRecord> {
        self.prune_logged(now);
        let mut list: Vec<TokenRecord> = self.lock().values().cloned().collect();
        list.sort_by(|a, b| (a.expires, &a.id).cmp(&(b.expires, &b.id)));
        list
    }

    pub fn revoke(&self, id: &str) -> Result<TokenRecord, TokenError> {
        let mut revoked = None;
        self.update(|records| {
            let record = records
                .get_mut(id)
                .ok_or_else(|| TokenError::NotFound(id.to_string()))?;
            record.revoked = true;
            revoked = Some(record.clone());
            Ok(())
        })?;
        tracing::info!(id, "bootstrap token revoked");
        revoked.ok_or_else(|| TokenError::NotFound(id.to_string()))
    }

    /// The identity a token vouches for, if it is ours, unexpired, not revoked and (one-shot)
    /// not yet spent.
    pub fn verify(&self, token: &str) -> Result<(Claims, SpiffeId), Status> {
        self.verify_at(token, SystemTime::now())
    }

    pub(crate) fn verify_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<(Claims, SpiffeId), Status> {
        let claims = self.claims(token)?;
        let name = &claims.id;
        if claims.td != self.trust_domain {
            return Err(Status::unauthenticated(format!(
                "bootstrap token {name} is for trust domain {}, not {}",
                claims.td, self.trust_domain
            )));
        }
        let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
        if now >= exp {
            return Err(Status::unauthenticated(format!(
                "bootstrap token {name} expired at {}",
                rfc3339(exp)
            )));
        }
        let records = self.lock();
        let Some(record) = records.get(name) else {
            return Err(Status::unauthenticated(format!(
                "bootstrap token {name} is not known to this control plane (its tokens.json was lost?)"
            )));
        };
        usable(record)?;
        let id = SpiffeId::new(&claims.td, &claims.ns, &claims.sa);
        Ok((claims, id))
    }

    /// Checks the signature (constant time) before reading anything the token says.
    fn claims(&self, token: &str) -> Result<Claims, Status> {
        let malformed = || {
            Status::unauthenticated(
                "malformed bootstrap token (expected jalur.v1.CLAIMS.SIGNATURE)",
            )
        };
        let rest = token.strip_prefix(PREFIX).ok_or_else(malformed)?;
        let (claims_b64, sig_b64) = rest.split_once('.').ok_or_else(malformed)?;
        let signed = &token[..PREFIX.len() + claims_b64.len()];
        let sig = URL_SAFE_NO_PAD.decode(sig_b64).map_err(|_| malformed())?;
        aws_lc_rs::hmac::verify(&self.key, signed.as_bytes(), &sig).map_err(|_| {
            Status::unauthenticated(
                "bootstrap token signature does not verify: it was not issued by this control plane, or was altered",
            )
        })?;
        let json = URL_SAFE_NO_PAD
            .decode(claims_b64)
            .map_err(|_| malformed())?;
        serde_json::from_slice(&json).map_err(|_| malformed())
    }

    /// Marks a one-shot token used; refuses if another request spent it first.
    pub fn spend(&self, claims: &Claims) -> Result<(), Status> {
        if claims.reusable {
            return Ok(());
        }
        self.update(|records| {
            let record = records.get_mut(&claims.id).ok_or_else(|| {
                TokenError::Invalid(format!("bootstrap token {} is not known", claims.id))
            })?;
            usable(record).map_err(|s| TokenError::Invalid(s.message().to_string()))?;
            record.used = true;
            Ok(())
        })
        .map_err(|e| match e {
            TokenError::Store(e) => {
                Status::unavailable(format!("recording the token as used failed: {e}"))
            }
            other => Status::unauthenticated(other.to_string()),
        })
    }

    /// Applies `change` and writes `tokens.json`; on a failed write the change is undone.
    fn update(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, TokenRecord>) -> Result<(), TokenError>,
    ) -> Result<(), TokenError> {
        let mut records = self.lock();
        let before = records.clone();
        change(&mut records)?;
        let list: Vec<&TokenRecord> = records.values().collect();
        let json = serde_json::to_vec_pretty(&list).map_err(|e| CaError::Tokens(e.to_string()))?;
        if let Err(e) = files::write_private(&self.path, &json) {
            *records = before;
            return Err(e.into());
        }
        Ok(())
    }

    /// Drops the records expired for longer than [`EXPIRED_RECORD_GRACE`] (writing
    /// `tokens.json` only when there are some). A failed write keeps them and is logged: it
    /// must not fail the start or a listing.
    fn prune_logged(&self, now: SystemTime) {
        if !self.lock().values().any(|r| stale(r, now)) {
            return;
        }
        let mut pruned = 0;
        match self.update(|records| {
            pruned = prune(records, now);
            Ok(())
        }) {
            Ok(()) => log_pruned(pruned),
            Err(e) => tracing::warn!(error = %e, "pruning expired bootstrap token records failed"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TokenRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Expired for longer than the grace.
fn stale(record: &TokenRecord, now: SystemTime) -> bool {
    // Checked: `expires` comes from tokens.json, which an operator may have edited; a time past
    // SystemTime's range is simply not stale.
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(record.expires))
        .and_then(|t| t.checked_add(EXPIRED_RECORD_GRACE))
        .is_some_and(|t| t <= now)
}

/// Removes the stale records; how many.
fn prune(records: &mut BTreeMap<String, TokenRecord>, now: SystemTime) -> usize {
    let before = records.len();
    records.retain(|_, r| !stale(r, now));
    before - records.len()
}

fn log_pruned(pruned: usize) {
    if pruned > 0 {
        tracing::info!(
            pruned,
            grace_hours = EXPIRED_RECORD_GRACE.as_secs() / 3600,
            "bootstrap token records expired for longer than the grace removed from tokens.json"
        );
    }
}

fn usable(record: &TokenRecord) -> Result<(), Status> {
    if record.revoked {
        return Err(Status::unauthenticated(format!(
            "bootstrap token {} was revoked",
            record.id
        )));
    }
    if record.used && !record.reusable {
        return Err(Status::unauthenticated(format!(
            "bootstrap token {} was already used (it is one-shot: create another, or --reusable)",
            record.id
        )));
    }
    Ok(())
}

/// `authorization: Bearer <bootstrap token>`.
pub struct TokenAuthenticator(pub Arc<Tokens>);

impl TokenAuthenticator {
    fn bearer(metadata: &MetadataMap) -> Result<Option<&str>, Status> {
        let Some(value) = metadata.get("authorization") else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
        value
            .strip_prefix("Bearer ")
            .map(|t| Some(t.trim()))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))
    }
}

impl WorkloadAuthenticator for TokenAuthenticator {
    fn authenticate(
        &self,
        metadata: &MetadataMap,
        _tls: Option<&TlsConnectInfo>,
    ) -> Result<Option<SpiffeId>, Status> {
        match Self::bearer(metadata)? {
            Some(token) => self.0.verify(token).map(|(_, id)| Some(id)),
            None => Ok(None),
        }
    }

    fn issued(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match Self::bearer(metadata)? {
            Some(token) => {
                let (claims, _) = self.0.verify(token)?;
                self.0.spend(&claims)
            }
            None => Ok(()),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
