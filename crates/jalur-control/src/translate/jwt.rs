//! RequestAuthentication -> Envoy's `envoy.filters.http.jwt_authn`, in Istio's shape: one
//! provider per jwtRule, and one requirement `requires_any: [provider…, allow_missing]`, so a
//! request without a token passes (an AuthorizationPolicy decides whether it needed one) and a
//! request whose token no provider accepts gets 401. Each provider puts the verified payload in
//! the filter's dynamic metadata under `jwt_payload`, where the RBAC filter's `metadata` matchers
//! (requestPrincipals, `request.auth.claims[…]`) read it.
//!
//! JWKS: inline `jwks` -> `local_jwks.inline_string`; `jwksUri: file:///PATH` (a jalur
//! extension) -> `local_jwks.filename`; `http(s)://HOST[:PORT]/…` -> `remote_jwks` on a cluster
//! this module also emits, `jwks|HOST|PORT` (STRICT_DNS, or STATIC for an IP), with TLS for https
//! validated against the system trust bundle by SDS name `file-root:` (never key bytes in xDS).
//!
//! Pure: `(RequestAuthentications for one proxy) -> (filter, clusters)`; where the filter goes
//! (before RBAC) is the listener translation's business.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    data_source::Specifier, transport_socket, DataSource, HttpUri, TransportSocket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtClaimToHeader, JwtHeader, JwtProvider,
    JwtRequirement, JwtRequirementOrList, RemoteJwks, RequirementRule,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, CommonTlsContext, UpstreamTlsContext,
};
use envoy_types::pb::google::protobuf::Empty;
use envoy_types::util::pack_any;
use jalur_model::duration::Duration;
use jalur_model::security::request_authn::JwtRule;
use jalur_model::security::RequestAuthentication;
use jalur_model::{Config, Resource};

use super::{cluster::socket, duration, tls};

/// The filter's name in the HCM, and the dynamic-metadata namespace RBAC reads.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
/// The key under [`JWT_FILTER`]'s metadata where each provider writes the verified payload.
pub const PAYLOAD_METADATA_KEY: &str = "jwt_payload";
const RBAC_FILTER: &str = "envoy.filters.http.rbac";
const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// Where https JWKS servers are validated from: the system trust bundle, by SDS name.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Istio's default JWKS fetch timeout, and Envoy's default cache duration (5 minutes).
const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const CACHE_DURATION: std::time::Duration = std::time::Duration::from_secs(300);
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

/// What one proxy needs for JWT: the HTTP filter (before RBAC) and the JWKS clusters.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub filter: HttpFilter,
    pub clusters: Vec<Cluster>,
}

/// The jwt_authn filter for these RequestAuthentications, or `None` when they have no rule (no
/// filter at all: requests pass untouched, as in Istio).
pub fn http_filter(policies: &[(&Resource, &RequestAuthentication)]) -> Option<Jwt> {
    let rules: Vec<&JwtRule> = policies
        .iter()
        .flat_map(|(_, ra)| ra.jwt_rules.iter())
        .filter(|r| !r.issuer.is_empty())
        .collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = HashMap::new();
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut any_of = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let name = provider_name(i);
        let (source, cluster) = jwks_source(rule);
        if let Some(c) = cluster {
            if clusters.iter().all(|k| k.name != c.name) {
                clusters.push(c);
            }
        }
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
    Some(Jwt { filter, clusters })
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

/// Where a rule's keys come from, and the cluster a remote JWKS is fetched over.
fn jwks_source(rule: &JwtRule) -> (JwksSourceSpecifier, Option<Cluster>) {
    let local = |s: Specifier| {
        JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(s),
            ..DataSource::default()
        })
    };
    if let Some(jwks) = &rule.jwks {
        return (local(Specifier::InlineString(jwks.clone())), None);
    }
    let uri = rule.jwks_uri.clone().unwrap_or_default();
    if let Some(path) = uri.strip_prefix("file://") {
        return (local(Specifier::Filename(path.to_string())), None);
    }
    let target = JwksTarget::parse(&uri);
    let timeout = rule
        .timeout
        .as_deref()
        .and_then(|t| t.parse::<Duration>().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::as_std);
    let remote = RemoteJwks {
        http_uri: Some(HttpUri {
            uri: uri.clone(),
            timeout: Some(duration(timeout)),
            http_upstream_type: Some(
                envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(
                    target.cluster_name(),
                ),
            ),
        }),
        cache_duration: Some(duration(CACHE_DURATION)),
        ..RemoteJwks::default()
    };
    (
        JwksSourceSpecifier::RemoteJwks(remote),
        Some(target.cluster()),
    )
}

/// The server of an http(s) JWKS URI. `jalur analyze` (JAL0164) rejects other shapes; a URI it
/// would reject still yields a well-formed cluster here (host empty -> `localhost`), so
/// translation never panics on config that skipped analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksTarget {
    pub host: String,
    pub port: u32,
    pub tls: bool,
}

impl JwksTarget {
    pub fn parse(uri: &str) -> JwksTarget {
        let (scheme, rest) = uri.split_once("://").unwrap_or(("https", uri));
        let tls = scheme != "http";
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            // `[::1]:8443`, `idp:8443`; a bare IPv6 `[::1]` has no port after its bracket.
            Some((h, p)) if !p.contains(']') => (h, p.parse().unwrap_or(default_port)),
            _ => (authority, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "localhost" } else { host };
        JwksTarget {
            host: host.to_string(),
            port,
            tls,
        }
    }

    /// `jwks|HOST|PORT`: one cluster per JWKS server, shared by the rules that use it.
    pub fn cluster_name(&self) -> String {
        format!("jwks|{}|{}", self.host, self.port)
    }

    fn cluster(&self) -> Cluster {
        let name = self.cluster_name();
        let is_ip = self.host.parse::<std::net::IpAddr>().is_ok();
        let kind = if is_ip {
            cluster::DiscoveryType::Static
        } else {
            cluster::DiscoveryType::StrictDns
        };
        let endpoint = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket(&self.host, self.port)),
                ..EnvoyEndpoint::default()
            })),
            ..LbEndpoint::default()
        };
        Cluster {
            name: name.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(kind as i32)),
            connect_timeout: Some(duration(CONNECT_TIMEOUT)),
            dns_lookup_family: cluster::DnsLookupFamily::V4Preferred as i32,
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![endpoint],
                    ..LocalityLbEndpoints::default()
                }],
                ..ClusterLoadAssignment::default()
            }),
            transport_socket: self.tls.then(|| self.tls_socket()),
            ..Cluster::default()
        }
    }

    /// TLS to the JWKS server: SNI its host, its certificate checked against the system roots.
    fn tls_socket(&self) -> TransportSocket {
        let context = UpstreamTlsContext {
            sni: self.host.clone(),
            common_tls_context: Some(CommonTlsContext {
                validation_context_type: Some(
                    ValidationContextType::ValidationContextSdsSecretConfig(tls::sds(&format!(
                        "file-root:{SYSTEM_ROOTS}"
                    ))),
                ),
                ..CommonTlsContext::default()
            }),
            ..UpstreamTlsContext::default()
        };
        TransportSocket {
            name: tls::TLS_SOCKET.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
        }
    }
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
