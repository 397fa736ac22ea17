//! JSON Web Key Sets: parsed once into verification keys, from inline text or from a file that
//! is re-read when it changes (its modification time or length), so a rotated JWKS is used
//! without a restart or a config push. A file that turns unreadable or invalid keeps the last
//! good keys (and says so in the log once per change), as Envoy keeps a cached JWKS.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::token::Token;
use super::Status;

/// One usable public key of a JWKS.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    alg: Option<String>,
    /// The JWT algorithms this key can verify (by kty, and crv for EC/OKP).
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// A parsed JWKS.
#[derive(Clone, Default)]
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<Option<&str>> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("Jwks").field("kids", &kids).finish()
    }
}

impl PartialEq for Jwks {
    /// Keys compare by identity fields only (key material has no equality); enough for config
    /// diffs, which also compare the source text.
    fn eq(&self, other: &Jwks) -> bool {
        let ids = |j: &Jwks| -> Vec<(Option<String>, Option<String>)> {
            j.keys
                .iter()
                .map(|k| (k.kid.clone(), k.alg.clone()))
                .collect()
        };
        ids(self) == ids(other)
    }
}

fn key_algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKey(_) => vec![HS256, HS384, HS512],
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        _ => vec![],
    }
}

impl Jwks {
    /// Parses a JWKS document; the error is Envoy's status text, for the NACK or the log.
    pub fn parse(text: &str) -> Result<Jwks, Status> {
        let doc: Value = serde_json::from_str(text).map_err(|_| Status::JwksParseError)?;
        let keys = match doc.get("keys") {
            None => return Err(Status::JwksNoKeys),
            Some(Value::Array(keys)) => keys,
            Some(_) => return Err(Status::JwksBadKeys),
        };
        let mut out = Vec::new();
        for k in keys {
            // Keys jalur cannot use are skipped, as Envoy skips them; none left is an error.
            let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let algorithms = key_algorithms(&jwk);
            if algorithms.is_empty() {
                continue;
            }
            let alg = k.get("alg").and_then(Value::as_str).map(str::to_string);
            out.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                algorithms,
                key,
            });
        }
        if out.is_empty() {
            return Err(Status::JwksNoValidKeys);
        }
        Ok(Jwks { keys: out })
    }

    /// jwt_verify_lib's key choice: skip keys whose `kid` or `alg` differ from the token's, try
    /// the rest of the right type; none tried is a kid/alg mismatch, none verifying a failure.
    pub(super) fn verify(&self, token: &Token) -> Result<(), Status> {
        let mut matched = false;
        for k in &self.keys {
            if let (Some(want), Some(have)) = (&token.kid, &k.kid) {
                if want != have {
                    continue;
                }
            }
            if k.alg.as_deref().is_some_and(|a| a != alg_name(token.alg)) {
                continue;
            }
            if !k.algorithms.contains(&token.alg) {
                continue;
            }
            matched = true;
            let ok = jsonwebtoken::crypto::verify(
                token.signature,
                token.signed.as_bytes(),
                &k.key,
                token.alg,
            );
            if ok.unwrap_or(false) {
                return Ok(());
            }
        }
        Err(if matched {
            Status::JwtVerificationFail
        } else {
            Status::JwksKidAlgMismatch
        })
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        ES256 => "ES256",
        ES384 => "ES384",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        EdDSA => "EdDSA",
        // Newer algorithms parse() never yields (it maps Envoy's list only).
        _ => "",
    }
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Inline { text: String, jwks: Arc<Jwks> },
    File(Arc<FileKeys>),
}

impl PartialEq for KeySource {
    fn eq(&self, other: &KeySource) -> bool {
        match (self, other) {
            (KeySource::Inline { text: a, .. }, KeySource::Inline { text: b, .. }) => a == b,
            (KeySource::File(a), KeySource::File(b)) => a.path == b.path,
            _ => false,
        }
    }
}

impl KeySource {
    pub fn current(&self) -> Arc<Jwks> {
        match self {
            KeySource::Inline { jwks, .. } => jwks.clone(),
            KeySource::File(f) => f.current(),
        }
    }
}

/// A JWKS file, re-read when its modification time or length changes.
#[derive(Debug)]
pub struct FileKeys {
    pub path: PathBuf,
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    stamp: Option<(SystemTime, u64)>,
    jwks: Arc<Jwks>,
}

impl FileKeys {
    /// Reads the file now: a missing or invalid file is an error (the config is NACKed naming
    /// it), where Envoy would reject the listener too.
    pub fn load(path: PathBuf) -> Result<FileKeys, String> {
        let (stamp, jwks) = read(&path)?;
        Ok(FileKeys {
            path,
            state: Mutex::new(FileState {
                stamp: Some(stamp),
                jwks: Arc::new(jwks),
            }),
        })
    }

    /// The keys, re-read first if the file changed since the last read. A `stat` per call: a
    /// rotated key must count from the next request on, and a stat is cheap next to a signature
    /// check.
    pub fn current(&self) -> Arc<Jwks> {
        let stamp = stamp_of(&self.path);
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if stamp.is_some() && stamp != state.stamp {
            state.stamp = stamp;
            match read(&self.path) {
                Ok((_, jwks)) => {
                    tracing::info!(path = %self.path.display(), "JWKS file changed: keys reloaded");
                    state.jwks = Arc::new(jwks);
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "JWKS file changed but cannot be used: keeping the last good keys");
                }
            }
        }
        state.jwks.clone()
    }
}

fn stamp_of(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read(path: &PathBuf) -> Result<((SystemTime, u64), Jwks), String> {
    let stamp =
        stamp_of(path).ok_or_else(|| format!("cannot read JWKS file {}", path.display()))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
    let jwks =
        Jwks::parse(&text).map_err(|s| format!("JWKS file {}: {}", path.display(), s.text()))?;
    Ok((stamp, jwks))
}
