//! `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication` -> [`JwtAuthn`]. Accepts
//! what Istio (and jalur's control plane) generate: providers with inline or file JWKS, one
//! rule for every path whose requirement is a provider, or `requires_any` of providers with an
//! optional `allow_missing`. Everything else that changes who gets in (remote JWKS, subjects,
//! requires_all, per-path rules, requirement maps, filter-state rules) is NACKed naming the
//! field: a token check that is silently skipped would let requests in that Envoy refuses.

use std::path::PathBuf;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtProvider, JwtRequirement,
};
use envoy_types::pb::google::protobuf::Any;
use http::header::HeaderName;

use super::{decode, reject_if, At, Invalid, Res};
use crate::jwt::{
    FileKeys, Jwks, JwtAuthn, KeySource, Location, Provider, Requirement, DEFAULT_CLOCK_SKEW_SECS,
};

/// Converts the filter's typed config.
pub(crate) fn jwt_authn(any: &Any) -> Res<JwtAuthn> {
    let cfg: JwtAuthentication = decode(any)?;
    reject_if(
        !cfg.requirement_map.is_empty(),
        "requirement_map",
        "per-route requirements (requirement_map) are not supported",
    )?;
    reject_if(
        cfg.filter_state_rules.is_some(),
        "filter_state_rules",
        "filter_state_rules are not supported",
    )?;
    let mut names: Vec<&String> = cfg.providers.keys().collect();
    names.sort();
    let mut providers = Vec::new();
    for name in names {
        let p = provider(name, &cfg.providers[name]).at(format_args!("providers[\"{name}\"]"))?;
        providers.push(p);
    }
    let requirement = match cfg.rules.as_slice() {
        [] => None,
        [rule] => {
            let prefix = rule
                .r#match
                .as_ref()
                .and_then(|m| m.path_specifier.as_ref());
            let every_path = matches!(prefix, Some(PathSpecifier::Prefix(p)) if p == "/")
                && rule.r#match.as_ref().is_some_and(|m| {
                    m.headers.is_empty() && m.query_parameters.is_empty() && m.grpc.is_none()
                });
            reject_if(
                !every_path,
                "rules[0].match",
                "only one rule matching every path (prefix \"/\") is supported",
            )?;
            match &rule.requirement_type {
                Some(RequirementType::Requires(req)) => {
                    Some(requirement(req, &providers).at("rules[0].requires")?)
                }
                _ => {
                    return Err(Invalid::new(
                        "rules[0]",
                        "only an inline `requires` is supported (not requirement_name)",
                    ))
                }
            }
        }
        _ => {
            return Err(Invalid::new(
                "rules",
                "only one rule matching every path is supported",
            ))
        }
    };
    Ok(JwtAuthn {
        providers,
        requirement,
        bypass_cors_preflight: cfg.bypass_cors_preflight,
    })
}

fn requirement(req: &JwtRequirement, providers: &[Provider]) -> Res<Requirement> {
    let index = |name: &str| {
        providers
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| Invalid::here(format!("provider \"{name}\" is not configured")))
    };
    match &req.requires_type {
        Some(RequiresType::ProviderName(name)) => Ok(Requirement {
            providers: vec![index(name).at("provider_name")?],
            allow_missing: false,
        }),
        Some(RequiresType::RequiresAny(any)) => {
            let mut out = Requirement {
                providers: Vec::new(),
                allow_missing: false,
            };
            for (i, r) in any.requirements.iter().enumerate() {
                let at = format!("requires_any.requirements[{i}]");
                match &r.requires_type {
                    Some(RequiresType::ProviderName(name)) => {
                        out.providers.push(index(name).at(&at)?)
                    }
                    Some(RequiresType::AllowMissing(_)) => out.allow_missing = true,
                    _ => return Err(Invalid::new(
                        at,
                        "only provider_name and allow_missing are supported inside requires_any",
                    )),
                }
            }
            Ok(out)
        }
        _ => Err(Invalid::here(
            "only provider_name or requires_any (of provider_name and allow_missing) is supported",
        )),
    }
}

fn provider(name: &str, p: &JwtProvider) -> Res<Provider> {
    reject_if(
        p.subjects.is_some(),
        "subjects",
        "subjects are not supported",
    )?;
    reject_if(
        p.max_lifetime.is_some(),
        "max_lifetime",
        "max_lifetime is not supported",
    )?;
    reject_if(
        p.require_expiration,
        "require_expiration",
        "require_expiration is not supported",
    )?;
    reject_if(
        !p.header_in_metadata.is_empty() || !p.failed_status_in_metadata.is_empty(),
        "header_in_metadata",
        "header_in_metadata and failed_status_in_metadata are not supported",
    )?;
    reject_if(
        p.normalize_payload_in_metadata.is_some(),
        "normalize_payload_in_metadata",
        "normalize_payload_in_metadata is not supported",
    )?;
    let mut locations = Vec::new();
    for (i, h) in p.from_headers.iter().enumerate() {
        let name = header(&h.name).at(format_args!("from_headers[{i}].name"))?;
        locations.push(Location::Header {
            name,
            prefix: h.value_prefix.clone(),
        });
    }
    locations.extend(p.from_params.iter().cloned().map(Location::Param));
    locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
    if locations.is_empty() {
        locations = Provider::default_locations();
    }
    let forward_payload_header = match p.forward_payload_header.as_str() {
        "" => None,
        h => Some(header(h).at("forward_payload_header")?),
    };
    let mut claim_to_headers = Vec::new();
    for (i, c) in p.claim_to_headers.iter().enumerate() {
        let h = header(&c.header_name).at(format_args!("claim_to_headers[{i}].header_name"))?;
        reject_if(
            c.claim_name.is_empty(),
            &format!("claim_to_headers[{i}].claim_name"),
            "claim_name is required (nested claim_path is not supported)",
        )?;
        claim_to_headers.push((h, c.claim_name.clone()));
    }
    Ok(Provider {
        name: name.to_string(),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        locations,
        forward: p.forward,
        forward_payload_header,
        payload_in_metadata: Some(p.payload_in_metadata.clone()).filter(|k| !k.is_empty()),
        claim_to_headers,
        clock_skew_secs: match p.clock_skew_seconds {
            0 => DEFAULT_CLOCK_SKEW_SECS,
            s => u64::from(s),
        },
        keys: keys(p.jwks_source_specifier.as_ref())?,
    })
}

fn header(name: &str) -> Res<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| Invalid::here(format!("\"{name}\" is not a valid header name")))
}

fn keys(source: Option<&JwksSourceSpecifier>) -> Res<KeySource> {
    let local = match source {
        Some(JwksSourceSpecifier::LocalJwks(ds)) => ds,
        Some(JwksSourceSpecifier::RemoteJwks(_)) => {
            return Err(Invalid::new(
                "remote_jwks",
                "remote JWKS is not fetched by jalur proxy yet; use inline jwks or jwksUri file:///PATH",
            ))
        }
        None => return Err(Invalid::new("jwks_source_specifier", "local_jwks or remote_jwks is required")),
    };
    let inline = |text: String| -> Res<KeySource> {
        let jwks = Jwks::parse(&text)
            .map_err(|s| Invalid::new("local_jwks", format!("invalid JWKS: {}", s.text())))?;
        Ok(KeySource::Inline {
            text,
            jwks: Arc::new(jwks),
        })
    };
    match &local.specifier {
        Some(Specifier::InlineString(s)) => inline(s.clone()),
        Some(Specifier::InlineBytes(b)) => inline(String::from_utf8_lossy(b).into_owned()),
        Some(Specifier::Filename(path)) => {
            let keys = FileKeys::load(PathBuf::from(path))
                .map_err(|e| Invalid::new("local_jwks.filename", e))?;
            Ok(KeySource::File(Arc::new(keys)))
        }
        Some(Specifier::EnvironmentVariable(_)) | None => Err(Invalid::new(
            "local_jwks",
            "inline_string, inline_bytes or filename is required",
        )),
    }
}
