//! Istio's `RequestAuthentication` (security.istio.io/v1, v1beta1) as users write it: which JWTs
//! a workload accepts. A request without a token passes (an AuthorizationPolicy with
//! `requestPrincipals` is what requires one); a request with an invalid token is refused (401).

use serde::{Deserialize, Serialize};

use super::PeerSelector;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    #[serde(default)]
    pub selector: Option<PeerSelector>,
    #[serde(default)]
    pub jwt_rules: Vec<JwtRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    pub issuer: String,
    /// Accepted `aud` values; empty accepts any audience.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS: `https://…`/`http://…`, or (a jalur extension) `file:///path`,
    /// re-read when the file changes.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Inline JWKS (JSON).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Default: `Authorization: Bearer <token>`.
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub forward_original_token: Option<bool>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// Timeout of a JWKS fetch (a duration such as `5s`).
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtHeader {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeader {
    pub header: String,
    pub claim: String,
}
