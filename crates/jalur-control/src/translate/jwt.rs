//! RequestAuthentication -> Envoy's `envoy.filters.http.jwt_authn`, in Istio's shape: one
//! provider per jwtRule, and one requirement `requires_any: [provider…, allow_missing]`, so a
//! request without a token passes (an AuthorizationPolicy decides whether it needed one) and a
//! request whose token no provider accepts gets 401. Each provider puts the verified payload in
//! the filter's dynamic metadata under `jwt_payload`, where the RBAC filter's `metadata` matchers
//! (requestPrincipals, `request.auth.claims[…]`) read it.
//!
//! JWKS: inline `jwks` -> `local_jwks.inline_string`; `jwksUri: file:///PATH` (a jalur
//! extension) -> `local_jwks.filename`; `http(s)://…` -> `local_jwks.inline_string` with the
//! document the control plane fetched (`crate::jwks`, istiod's default), or a key set no token
//! verifies against while no fetch has succeeded (fail closed). Proxies never dial the provider.
//!
//! Pure: `(RequestAuthentications for one proxy, fetched JWKS) -> filter`; where the filter goes
//! (before RBAC) is the listener translation's business.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider,
    JwtRequirement, JwtRequirementOrList, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::google::protobuf::Empty;
use envoy_types::util::pack_any;
use jalur_model::security::request_authn::JwtRule;
use jalur_model::security::RequestAuthentication;
use jalur_model::{Config, Resource};

use crate::jwks::JwksSet;

/// The filter's name in the HCM, and the dynamic-metadata namespace RBAC reads.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The key under [`JWT_FILTER`]'s metadata where each provider writes the verified payload.
pub const PAYLOAD_METADATA_KEY: &str = "jwt_payload";
const RBAC_FILTER: &str = "envoy.filters.http.rbac";
const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// The RequestAuthentications that apply to one workload: those of its namespace and of the
/// root namespace (mesh-wide) whose selector is absent, empty, or matches its labels. In config
/// order (namespace/name), which fixes provider order.
pub fn applying<'a>(
    config: &'a Config,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'a Resource, &'a RequestAuthentication)> {
    config
        .request_authentications()
        .filter(|(r, ra)| {
            let ns = r.meta.namespace.as_str();
            let selected = ra
                .selector
                .as_ref()
                .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)));
            (ns == namespace || ns == root_namespace) && selected
        })
        .collect()
}

/// What one proxy needs for JWT: the HTTP filter (before RBAC).
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub filter: HttpFilter,
}

/// The jwt_authn filter for these RequestAuthentications, or `None` when they have no rule (no
/// filter at all: requests pass untouched, as in Istio).
pub fn http_filter(
    policies: &[(&Resource, &RequestAuthentication)],
    jwks: &JwksSet,
) -> Option<Jwt> {
    let rules: Vec<&JwtRule> = policies
        .iter()
        .flat_map(|(_, ra)| ra.jwt_rules.iter())
        .filter(|r| !r.issuer.is_empty())
        .collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = HashMap::new();
    let mut any_of = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = provider_name(i);
        let source = jwks_source(rule, jwks);
        providers.insert(name.clone(), provider(rule, source));
        any_of.push(JwtRequirement {
            requires_type: Some(RequiresType::ProviderName(name)),
        });
    }
    any_of.push(JwtRequirement {
        requires_type: Some(RequiresType::AllowMissing(Empty::default())),
    });
    let config = JwtAuthentication {
        providers,
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                ..RouteMatch::default()
            }),
            requirement_type: Some(RequirementType::Requires(JwtRequirement {
                requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                    requirements: any_of,
                })),
            })),
        }],
        // CORS preflights carry no token (Istio sets this too).
        bypass_cors_preflight: true,
        ..JwtAuthentication::default()
    };
    let filter = HttpFilter {
        name: JWT_FILTER.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(config))),
        ..HttpFilter::default()
    };
    Some(Jwt { filter })
}

/// Istio's provider names: `origins-0`, `origins-1`, … in rule order.
pub fn provider_name(index: usize) -> String {
    format!("origins-{index}")
}

fn provider(rule: &JwtRule, source: JwksSourceSpecifier) -> JwtProvider {
    let from_headers = rule
        .from_headers
        .iter()
        .map(|h| JwtHeader {
            name: h.name.clone(),
            value_prefix: h.prefix.clone().unwrap_or_default(),
        })
        .collect();
    JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule.audiences.clone(),
        from_headers,
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        forward: rule.forward_original_token.unwrap_or(false),
        forward_payload_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        payload_in_metadata: PAYLOAD_METADATA_KEY.to_string(),
        claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| JwtClaimToHeader {
                header_name: c.header.clone(),
                claim_name: c.claim.clone(),
                ..JwtClaimToHeader::default()
            })
            .collect(),
        jwks_source_specifier: Some(source),
        ..JwtProvider::default()
    }
}

/// Where a rule's keys come from: inline, a file, or the document the control plane fetched.
fn jwks_source(rule: &JwtRule, jwks: &JwksSet) -> JwksSourceSpecifier {
    let local = |s: Specifier| {
        JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(s),
            ..DataSource::default()
        })
    };
    if let Some(doc) = &rule.jwks {
        return local(Specifier::InlineString(doc.clone()));
    }
    let uri = rule.jwks_uri.clone().unwrap_or_default();
    if let Some(path) = uri.strip_prefix("file://") {
        return local(Specifier::Filename(path.to_string()));
    }
    // http(s), or a shape `jalur analyze` rejects: what was fetched, else keys nobody holds.
    local(Specifier::InlineString(jwks.inline(&uri)))
}

/// Inserts the JWT filter into an HCM's HTTP filters where the contract puts it: after fault,
/// before the first RBAC filter (authentication before authorization), else before the router.
/// Idempotent. The hook for the inbound and gateway listeners.
pub fn insert(filters: &mut Vec<HttpFilter>, jwt: &HttpFilter) {
    if filters.iter().any(|f| f.name == JWT_FILTER) {
        return;
    }
    let at = filters
        .iter()
        .position(|f| f.name == RBAC_FILTER || f.name == ROUTER_FILTER)
        .unwrap_or(filters.len());
    filters.insert(at, jwt.clone());
}

#[cfg(test)]
mod tests;
