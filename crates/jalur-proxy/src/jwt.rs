//! Envoy's `envoy.filters.http.jwt_authn`, evaluated by jalur proxy from the same config
//! (converted in `config/convert/jwt.rs`). What it does to a request, in Envoy's order:
//!
//! 1. take the tokens from the providers' locations (default: `Authorization: Bearer …` and the
//!    `access_token` query parameter);
//! 2. none: pass when the requirement allows a missing token, else 401 `Jwt is missing`;
//! 3. each token: parse (bad shape, `alg: none` -> 401), find the provider of its issuer (none:
//!    `Jwt issuer is not configured`), check `nbf`/`exp` with the provider's clock skew (60 s by
//!    default), the audiences (403 `Audiences in Jwt are not allowed`), then the signature
//!    against the provider's JWKS (`Jwt verification fails`);
//! 4. verified: drop the token unless `forward`, add `forward_payload_header` and
//!    `claim_to_headers`, and hand the payload on as [`JwtPayload`] for RBAC.
//!
//! Only the requirement shapes Istio generates are accepted (one rule for every path:
//! `requires_any` of providers with or without `allow_missing`, or one provider); anything else
//! is NACKed, never guessed at.

mod keys;
mod token;

#[cfg(test)]
mod tests;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::request::Parts;
use http::StatusCode;
use serde_json::{Map, Value};

pub use keys::{FileKeys, Jwks, KeySource};

/// The verified payloads of a request, as Envoy's dynamic metadata of the jwt_authn filter:
/// an object whose keys are the providers' `payload_in_metadata` names (`jwt_payload` in jalur's
/// translation) and whose values are the token payloads. Put in the request's extensions; the
/// RBAC evaluator walks a `metadata` matcher's path over it (`filter` must be
/// `envoy.filters.http.jwt_authn`). Absent: no verified token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JwtPayload(pub Value);

impl JwtPayload {
    /// The value at a metadata path (`["jwt_payload", "iss"]`), if present.
    pub fn get(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.0, |v, key| v.get(key))
    }
}

/// Envoy's name for the filter, and the dynamic-metadata namespace RBAC matches on.
pub const FILTER_NAME: &str = "envoy.filters.http.jwt_authn";
/// Envoy's default clock skew for `exp` and `nbf`.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;

/// Where a provider looks for tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Header { name: HeaderName, prefix: String },
    Param(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any.
    pub audiences: Vec<String>,
    pub locations: Vec<Location>,
    pub forward: bool,
    pub forward_payload_header: Option<HeaderName>,
    pub payload_in_metadata: Option<String>,
    pub claim_to_headers: Vec<(HeaderName, String)>,
    pub clock_skew_secs: u64,
    pub keys: KeySource,
}

impl Provider {
    /// Envoy's default locations when none are configured.
    pub fn default_locations() -> Vec<Location> {
        vec![
            Location::Header {
                name: AUTHORIZATION,
                prefix: "Bearer ".to_string(),
            },
            Location::Param("access_token".to_string()),
        ]
    }
}

/// The filter: its providers and the one requirement every request must meet.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtAuthn {
    pub providers: Vec<Provider>,
    /// `None`: no rule matches, requests pass untouched.
    pub requirement: Option<Requirement>,
    pub bypass_cors_preflight: bool,
}

/// Any of `providers` (indexes), or no token at all when `allow_missing`.
#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub providers: Vec<usize>,
    pub allow_missing: bool,
}

/// A refused request, as Envoy answers it: status, body (the status text), `www-authenticate`
/// and the response code details.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub status: Status,
    pub code: StatusCode,
    pub www_authenticate: String,
}

impl Denial {
    pub fn body(&self) -> &'static str {
        self.status.text()
    }

    /// `jwt_authn_access_denied{Jwt_is_expired}`: Envoy's details, spaces as underscores.
    pub fn details(&self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.status.text().replace(' ', "_")
        )
    }

    /// The local reply: `code`, `text/plain` body, `www-authenticate`.
    pub fn response(&self) -> http::Response<String> {
        let mut resp = http::Response::new(self.body().to_string());
        *resp.status_mut() = self.code;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if let Ok(v) = HeaderValue::from_str(&self.www_authenticate) {
            headers.insert(http::header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

/// A token found in a request, and where.
struct Found {
    token: String,
    /// The providers whose locations include where it was found.
    providers: Vec<usize>,
    location: Location,
}

impl JwtAuthn {
    /// Checks the request at `now` (Unix seconds). On success the request's headers are already
    /// rewritten (token dropped unless forwarded, payload and claim headers added) and the
    /// verified payloads are returned for the request's extensions.
    pub fn authenticate(&self, req: &mut Parts, now: u64) -> Result<Option<JwtPayload>, Denial> {
        let Some(requirement) = &self.requirement else {
            return Ok(None);
        };
        if self.bypass_cors_preflight && is_cors_preflight(req) {
            return Ok(None);
        }
        let tokens = self.extract(req, &requirement.providers);
        if tokens.is_empty() {
            if requirement.allow_missing {
                return Ok(None);
            }
            return Err(self.deny(req, Status::JwtMissed));
        }
        // Every token the request carries must verify, not just one of them: a good token
        // beside a forged one would let the forged one reach the backend (in a query parameter,
        // say), which the backend may read. Envoy refuses that for a single provider; for
        // Istio's `requires_any` its answer depends on the tokens' order — jalur always refuses.
        let mut verified = None;
        for found in tokens.iter().rev() {
            match self.verify(found, now) {
                Ok(v) => {
                    if verified.is_none() {
                        verified = Some((found, v));
                    }
                }
                Err(status) => return Err(self.deny(req, status)),
            }
        }
        match verified {
            Some((found, (provider, tok))) => Ok(self.accept(req, provider, found, tok)),
            None => Err(self.deny(req, Status::JwtMissed)),
        }
    }

    fn extract(&self, req: &Parts, allowed: &[usize]) -> Vec<Found> {
        let mut out: Vec<Found> = Vec::new();
        for &i in allowed {
            let Some(p) = self.providers.get(i) else {
                continue;
            };
            for loc in &p.locations {
                for token in find(req, loc) {
                    match out.iter_mut().find(|f| f.token == token) {
                        Some(f) => f.providers.push(i),
                        None => out.push(Found {
                            token,
                            providers: vec![i],
                            location: loc.clone(),
                        }),
                    }
                }
            }
        }
        out
    }

    fn verify<'s, 't>(
        &'s self,
        found: &'t Found,
        now: u64,
    ) -> Result<(&'s Provider, token::Token<'t>), Status> {
        let tok = token::parse(&found.token)?;
        let provider = found
            .providers
            .iter()
            .filter_map(|&i| self.providers.get(i))
            .find(|p| p.issuer.is_empty() || p.issuer == tok.iss)
            .ok_or(Status::JwtUnknownIssuer)?;
        let skew = provider.clock_skew_secs;
        if tok.nbf > now.saturating_add(skew) {
            return Err(Status::JwtNotYetValid);
        }
        if tok.exp > 0 && now > tok.exp.saturating_add(skew) {
            return Err(Status::JwtExpired);
        }
        if !provider.audiences.is_empty()
            && !tok.audiences.iter().any(|a| provider.audiences.contains(a))
        {
            return Err(Status::JwtAudienceNotAllowed);
        }
        provider.keys.current().verify(&tok)?;
        Ok((provider, tok))
    }

    /// A verified token: rewrite the headers as Envoy does and build the metadata.
    fn accept(
        &self,
        req: &mut Parts,
        p: &Provider,
        found: &Found,
        tok: token::Token,
    ) -> Option<JwtPayload> {
        if !p.forward {
            if let Location::Header { name, .. } = &found.location {
                req.headers.remove(name);
            }
        }
        if let Some(h) = &p.forward_payload_header {
            if let Ok(v) = HeaderValue::from_str(tok.payload_b64) {
                req.headers.insert(h.clone(), v);
            }
        }
        for (header, claim) in &p.claim_to_headers {
            if let Some(v) =
                claim_text(&tok.payload, claim).and_then(|s| HeaderValue::from_str(&s).ok())
            {
                req.headers.insert(header.clone(), v);
            }
        }
        let key = p.payload_in_metadata.as_ref()?;
        let mut meta = Map::new();
        meta.insert(key.clone(), Value::Object(tok.payload));
        Some(JwtPayload(Value::Object(meta)))
    }

    fn deny(&self, req: &Parts, status: Status) -> Denial {
        let code = if status == Status::JwtAudienceNotAllowed {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        let mut www = format!("Bearer realm=\"{}\"", original_uri(req));
        if status != Status::JwtMissed {
            www.push_str(", error=\"invalid_token\"");
        }
        Denial {
            status,
            code,
            www_authenticate: www,
        }
    }
}

/// A claim as a header value: strings as they are, numbers and booleans as JSON writes them;
/// objects and arrays are not copied (as Envoy).
fn claim_text(payload: &Map<String, Value>, claim: &str) -> Option<String> {
    match payload.get(claim)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `scheme://host/path` without the query, as Envoy's `buildOriginalUri`.
fn original_uri(req: &Parts) -> String {
    let scheme = req
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .or(req.uri.scheme_str())
        .unwrap_or("http");
    let host = req
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    format!("{scheme}://{host}{}", req.uri.path())
}

fn is_cors_preflight(req: &Parts) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The tokens at one location of a request.
fn find(req: &Parts, loc: &Location) -> Vec<String> {
    match loc {
        Location::Header { name, prefix } => req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| strip_prefix(v, prefix))
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Location::Param(name) => req
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.to_string())
            .collect(),
        Location::Cookie(name) => req
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .filter(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.to_string())
            .collect(),
    }
}

/// Envoy matches the prefix case-insensitively (`bearer x` works) and takes the rest.
fn strip_prefix<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(value.trim());
    }
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value[prefix.len()..].trim())
}

/// jwt_verify_lib's statuses that jalur can produce, with Envoy's exact texts (the 401 body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksParseError,
    JwksNoKeys,
    JwksBadKeys,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
}

impl Status {
    pub fn text(self) -> &'static str {
        use Status::*;
        match self {
            JwtMissed => "Jwt is missing",
            JwtNotYetValid => "Jwt not yet valid",
            JwtExpired => "Jwt is expired",
            JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtUnknownIssuer => "Jwt issuer is not configured",
            JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtVerificationFail => "Jwt verification fails",
            JwksParseError => "Jwks is an invalid JSON",
            JwksNoKeys => "Jwks does not have [keys] field",
            JwksBadKeys => "[keys] in Jwks is not an array",
            JwksNoValidKeys => "Jwks doesn't have any valid public key",
            JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
        }
    }
}

/// The current time as Envoy's authenticator reads it (Unix seconds).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
