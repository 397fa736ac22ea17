//! A JWT split and parsed the way Envoy's jwt_verify_lib does, so a bad token fails with the
//! same status (and so the same 401 body) in jalur proxy as in Envoy.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::Status;

/// A parsed, not yet verified token.
#[derive(Debug, Clone)]
pub(super) struct Token<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
    pub audiences: Vec<String>,
    pub exp: u64,
    pub nbf: u64,
    pub payload: Map<String, Value>,
    /// `header.payload`, what the signature covers.
    pub signed: &'a str,
    pub signature: &'a str,
    /// The payload segment as sent (base64url), for `forward_payload_header`.
    pub payload_b64: &'a str,
}

/// Decodes base64url the way Envoy's lib does: padding tolerated.
fn b64(segment: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()
}

/// The algorithms Envoy verifies; anything else (`none` included) is "not supported".
fn algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

pub(super) fn parse(jwt: &str) -> Result<Token<'_>, Status> {
    let parts: Vec<&str> = jwt.split('.').collect();
    // An empty signature (`alg: none` tokens end in a dot) is a bad shape to Envoy too.
    let [header, payload, signature] = parts.as_slice() else {
        return Err(Status::JwtBadFormat);
    };
    if signature.is_empty() {
        return Err(Status::JwtBadFormat);
    }
    let header_json = b64(header).ok_or(Status::JwtHeaderParseErrorBadBase64)?;
    let header_obj: Map<String, Value> =
        serde_json::from_slice(&header_json).map_err(|_| Status::JwtHeaderParseErrorBadJson)?;
    let alg = match header_obj.get("alg") {
        Some(Value::String(a)) => algorithm(a).ok_or(Status::JwtHeaderNotImplementedAlg)?,
        _ => return Err(Status::JwtHeaderBadAlg),
    };
    let kid = match header_obj.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Status::JwtHeaderBadKid),
    };
    let payload_json = b64(payload).ok_or(Status::JwtPayloadParseErrorBadBase64)?;
    let claims: Map<String, Value> =
        serde_json::from_slice(&payload_json).map_err(|_| Status::JwtPayloadParseErrorBadJson)?;
    let iss = match claims.get("iss") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(Status::JwtPayloadParseErrorIssNotString),
    };
    let time = |name: &str, not_int: Status, out_of_range: Status| match claims.get(name) {
        None => Ok(0),
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().unwrap_or(0)),
        Some(Value::Number(n)) if n.is_i64() => Err(out_of_range),
        Some(_) => Err(not_int),
    };
    let exp = time(
        "exp",
        Status::JwtPayloadParseErrorExpNotInteger,
        Status::JwtPayloadParseErrorExpOutOfRange,
    )?;
    let nbf = time(
        "nbf",
        Status::JwtPayloadParseErrorNbfNotInteger,
        Status::JwtPayloadParseErrorNbfOutOfRange,
    )?;
    let audiences = match claims.get("aud") {
        None => Vec::new(),
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|a| a.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or(Status::JwtPayloadParseErrorAudNotString)?,
        Some(_) => return Err(Status::JwtPayloadParseErrorAudNotString),
    };
    if b64(signature).is_none() {
        return Err(Status::JwtSignatureParseErrorBadBase64);
    }
    let signed_len = header.len() + 1 + payload.len();
    Ok(Token {
        alg,
        kid,
        iss,
        audiences,
        exp,
        nbf,
        payload: claims,
        signed: &jwt[..signed_len],
        signature,
        payload_b64: payload,
    })
}
