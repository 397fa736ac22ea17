//! RequestAuthentication checks: every jwtRule names an issuer and exactly one JWKS source
//! (jalur does not discover the JWKS from the issuer's OpenID configuration, so one is
//! required), the inline JWKS is a JSON Web Key Set, `jwksUri` is http, https or file, the
//! fetch timeout is a positive duration, and no workload gets two rules for one issuer (a token
//! from it could be checked against either key set).

use serde_json::Value;

use crate::diag::codes;
use crate::duration::Duration;
use crate::security::request_authn::JwtRule;
use crate::security::RequestAuthentication;
use crate::{Config, Diagnostic, Resource};

use super::authz_scope::compatible;
use super::location;

pub(super) fn check(
    config: &Config,
    root_namespace: &str,
    r: &Resource,
    ra: &RequestAuthentication,
    out: &mut Vec<Diagnostic>,
) {
    for (i, rule) in ra.jwt_rules.iter().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        check_rule(r, &at, rule, out);
        duplicate_issuer(config, root_namespace, r, ra, i, rule, out);
    }
}

fn check_rule(r: &Resource, at: &str, rule: &JwtRule, out: &mut Vec<Diagnostic>) {
    if rule.issuer.trim().is_empty() {
        let msg = "issuer is empty; write the `iss` value the tokens carry";
        out.push(r.diag(codes::INVALID_JWT_RULE, &format!("{at}.issuer"), msg));
    }
    match (&rule.jwks_uri, &rule.jwks) {
        (None, None) => {
            let msg = "neither jwksUri nor jwks: jalur does not discover keys from the issuer's OpenID configuration; set jwksUri (https://, http:// or file://) or an inline jwks";
            out.push(r.diag(codes::INVALID_JWT_RULE, at, msg));
        }
        (Some(_), Some(_)) => {
            let msg = "both jwksUri and jwks are set, so which keys count is ambiguous; keep one";
            out.push(r.diag(codes::INVALID_JWT_RULE, &format!("{at}.jwks"), msg));
        }
        (Some(uri), None) => {
            if let Err(why) = jwks_uri(uri) {
                out.push(r.diag(codes::INVALID_JWKS_URI, &format!("{at}.jwksUri"), why));
            }
        }
        (None, Some(jwks)) => {
            if let Err(why) = jwks_document(jwks) {
                let msg = format!("jwks is not a JSON Web Key Set: {why}");
                out.push(r.diag(codes::INVALID_JWKS, &format!("{at}.jwks"), msg));
            }
        }
    }
    if let Some(t) = &rule.timeout {
        let ok = t.parse::<Duration>().is_ok_and(|d| !d.as_std().is_zero());
        if !ok {
            let msg = format!("timeout {t:?} is not a positive duration; write e.g. 5s");
            out.push(r.diag(codes::INVALID_JWT_RULE, &format!("{at}.timeout"), msg));
        }
    }
    for (j, h) in rule.output_claim_to_headers.iter().enumerate() {
        if h.header.is_empty() || h.claim.is_empty() {
            let msg = "outputClaimToHeaders needs both header and claim";
            let field = format!("{at}.outputClaimToHeaders[{j}]");
            out.push(r.diag(codes::INVALID_JWT_RULE, &field, msg));
        }
    }
    for (j, h) in rule.from_headers.iter().enumerate() {
        if h.name.is_empty() {
            let msg = "fromHeaders needs a header name";
            out.push(r.diag(
                codes::INVALID_JWT_RULE,
                &format!("{at}.fromHeaders[{j}].name"),
                msg,
            ));
        }
    }
}

/// `https://host[:port]/path`, `http://…`, or `file:///absolute/path`.
pub fn jwks_uri(uri: &str) -> Result<(), String> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(format!(
            "{uri:?} is not a URL; write https://HOST/PATH, or file:///PATH for a local file"
        ));
    };
    match scheme {
        "http" | "https" => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if authority.is_empty() {
                return Err(format!("{uri:?} has no host"));
            }
            Ok(())
        }
        "file" if rest.starts_with('/') => Ok(()),
        "file" => Err(format!(
            "{uri:?}: a file URL needs an absolute path (file:///etc/jwks.json)"
        )),
        _ => Err(format!(
            "scheme {scheme:?} in {uri:?}: jalur fetches JWKS over http, https or from a file"
        )),
    }
}

/// `{"keys": [{"kty": …}, …]}` with at least one key, each of a type Envoy verifies with.
pub fn jwks_document(text: &str) -> Result<(), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    if keys.is_empty() {
        return Err("\"keys\" is empty: no token could verify".to_string());
    }
    for (i, key) in keys.iter().enumerate() {
        let field = |name: &str| key.get(name).and_then(Value::as_str).is_some();
        let kty = key.get("kty").and_then(Value::as_str).unwrap_or_default();
        let needs: &[&str] = match kty {
            "RSA" => &["n", "e"],
            "EC" => &["crv", "x", "y"],
            "OKP" => &["crv", "x"],
            "oct" => &["k"],
            "" => return Err(format!("keys[{i}] has no \"kty\"")),
            other => return Err(format!("keys[{i}] has unknown kty {other:?}")),
        };
        if let Some(missing) = needs.iter().find(|n| !field(n)) {
            return Err(format!("keys[{i}] ({kty}) has no {missing:?}"));
        }
    }
    Ok(())
}

/// A rule for an issuer some earlier rule (this resource's or another's that can select the
/// same workloads) already has.
fn duplicate_issuer(
    config: &Config,
    root_namespace: &str,
    r: &Resource,
    ra: &RequestAuthentication,
    i: usize,
    rule: &JwtRule,
    out: &mut Vec<Diagnostic>,
) {
    if rule.issuer.is_empty() {
        return;
    }
    let labels = |ra: &RequestAuthentication| {
        ra.selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .filter(|l| !l.is_empty())
    };
    let mine = labels(ra);
    let earlier = config
        .request_authentications()
        .take_while(|(other, _)| !std::ptr::eq(*other, r))
        .find(|(other, o)| {
            let ns = &other.meta.namespace;
            (ns == &r.meta.namespace || ns == root_namespace || r.meta.namespace == root_namespace)
                && compatible(labels(o).as_ref(), mine.as_ref())
                && o.jwt_rules.iter().any(|x| x.issuer == rule.issuer)
        });
    let msg = if ra.jwt_rules[..i].iter().any(|x| x.issuer == rule.issuer) {
        format!("issuer {:?} already has a rule in this resource; a token from it would be checked against one of them only: merge them", rule.issuer)
    } else if let Some((first, _)) = earlier {
        format!(
            "issuer {:?} already has a rule in {} ({}) that can apply to the same workloads; a token from it would be checked against one of them only: keep one",
            rule.issuer,
            first.reference(),
            location(first)
        )
    } else {
        return;
    };
    out.push(r.diag(
        codes::DUPLICATE_JWT_ISSUER,
        &format!("spec.jwtRules[{i}].issuer"),
        msg,
    ));
}
