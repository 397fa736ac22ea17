//! RouteConfiguration -> [`RouteTable`]: virtual hosts, their domains and routes, route matches.
//! Route actions, header operations and faults are in `action.rs`.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route, route_match::PathSpecifier, virtual_host::TlsRequirementType, HeaderMatcher,
    QueryParameterMatcher, Route as XdsRoute, RouteConfiguration, RouteMatch as XdsRouteMatch,
    VirtualHost as XdsVirtualHost,
};

use super::action::{direct_response, forward, header_ops, redirect, retry_policy};
use super::fault::per_filter_fault;
use super::{regex, reject_if, string_match, At, Invalid, Res};
use crate::config::{
    Action, DomainMatch, Fault, HeaderMatch, HeaderOps, PathMatch, QueryMatch, RetryPolicy, Route,
    RouteMatch, RouteTable, StringMatch, VirtualHost,
};

/// Envoy's limit on direct response bodies when the route configuration sets none.
const MAX_DIRECT_BODY: u32 = 4096;

pub(super) fn route_table(rc: &RouteConfiguration) -> Res<RouteTable> {
    reject_if(
        rc.vhds.is_some(),
        "vhds",
        "virtual host discovery is not supported",
    )?;
    reject_if(
        !rc.request_mirror_policies.is_empty(),
        "request_mirror_policies",
        "mirroring for a whole route configuration is not supported; mirror per route",
    )?;
    let table = Outer {
        request: header_ops(
            &rc.request_headers_to_add,
            &rc.request_headers_to_remove,
            "request",
        )?,
        response: header_ops(
            &rc.response_headers_to_add,
            &rc.response_headers_to_remove,
            "response",
        )?,
        most_specific_wins: rc.most_specific_header_mutations_wins,
        retry: None,
        fault: per_filter_fault(&rc.typed_per_filter_config)?,
        max_body: rc
            .max_direct_response_body_size_bytes
            .as_ref()
            .map_or(MAX_DIRECT_BODY, |v| v.value),
    };
    // Lowercased domain -> the virtual host that has it.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut virtual_hosts = Vec::with_capacity(rc.virtual_hosts.len());
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        virtual_hosts
            .push(virtual_host(vh, i, &table, &mut seen).at(format_args!("virtual_hosts[{i}]"))?);
    }
    Ok(RouteTable {
        name: rc.name.clone(),
        virtual_hosts,
    })
}

/// What a route inherits from its virtual host and route configuration.
struct Outer {
    request: HeaderOps,
    response: HeaderOps,
    /// Envoy applies the least specific level's header mutations last (so they win) unless
    /// `most_specific_header_mutations_wins` is set.
    most_specific_wins: bool,
    retry: Option<RetryPolicy>,
    /// `Some(None)`: faults disabled at this level.
    fault: Option<Option<Fault>>,
    max_body: u32,
}

impl Outer {
    /// `inner`'s header operations combined with this level's, in the order Envoy applies them.
    fn headers(&self, inner: HeaderOps, outer: &HeaderOps) -> HeaderOps {
        let (mut first, then) = if self.most_specific_wins {
            (outer.clone(), &inner)
        } else {
            (inner.clone(), outer)
        };
        first.add.extend(then.add.iter().cloned());
        first.remove.extend(then.remove.iter().cloned());
        first
    }
}

fn virtual_host(
    vh: &XdsVirtualHost,
    index: usize,
    table: &Outer,
    seen: &mut HashMap<String, usize>,
) -> Res<VirtualHost> {
    reject_if(
        vh.matcher.is_some(),
        "matcher",
        "matcher trees are not supported; use routes",
    )?;
    reject_if(
        vh.require_tls != TlsRequirementType::None as i32,
        "require_tls",
        "TLS not supported yet",
    )?;
    reject_if(
        !vh.request_mirror_policies.is_empty(),
        "request_mirror_policies",
        "mirroring for a whole virtual host is not supported; mirror per route",
    )?;
    reject_if(
        vh.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
        "typed retry policies are not supported",
    )?;
    reject_if(
        vh.domains.is_empty(),
        "domains",
        "at least one domain is required",
    )?;
    let mut domains = Vec::with_capacity(vh.domains.len());
    for (j, d) in vh.domains.iter().enumerate() {
        let lower = d.to_ascii_lowercase();
        reject_if(
            lower.is_empty(),
            &format!("domains[{j}]"),
            "a domain must not be empty",
        )?;
        if let Some(other) = seen.insert(lower.clone(), index) {
            let message = if lower == "*" {
                format!("only one wildcard domain \"*\" is allowed per route configuration (virtual_hosts[{other}] has it)")
            } else {
                format!("duplicate domain \"{lower}\": virtual_hosts[{other}] already has it (Envoy requires unique domains)")
            };
            return Err(Invalid::new(format!("domains[{j}]"), message));
        }
        domains.push(domain(lower));
    }
    let outer = Outer {
        request: table.headers(
            header_ops(
                &vh.request_headers_to_add,
                &vh.request_headers_to_remove,
                "request",
            )?,
            &table.request,
        ),
        response: table.headers(
            header_ops(
                &vh.response_headers_to_add,
                &vh.response_headers_to_remove,
                "response",
            )?,
            &table.response,
        ),
        most_specific_wins: table.most_specific_wins,
        retry: vh
            .retry_policy
            .as_ref()
            .map(retry_policy)
            .transpose()
            .at("retry_policy")?,
        fault: per_filter_fault(&vh.typed_per_filter_config)?.or_else(|| table.fault.clone()),
        max_body: table.max_body,
    };
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (j, r) in vh.routes.iter().enumerate() {
        routes.push(route(r, &outer).at(format_args!("routes[{j}]"))?);
    }
    Ok(VirtualHost {
        name: vh.name.clone(),
        domains,
        routes,
    })
}

/// Envoy's domain forms, decided the way Envoy decides them: `*`, a leading `*`, a trailing `*`,
/// else exact (a `*` elsewhere is a literal character).
fn domain(lower: String) -> DomainMatch {
    if lower == "*" {
        DomainMatch::Any
    } else if let Some(suffix) = lower.strip_prefix('*') {
        DomainMatch::Suffix(suffix.to_string())
    } else if let Some(prefix) = lower.strip_suffix('*') {
        DomainMatch::Prefix(prefix.to_string())
    } else {
        DomainMatch::Exact(lower)
    }
}

fn route(r: &XdsRoute, outer: &Outer) -> Res<Route> {
    let matcher = route_match(r.r#match.as_ref()).at("match")?;
    let action = match &r.action {
        Some(route::Action::Route(a)) => {
            Action::Forward(forward(a, outer.retry.as_ref()).at("route")?)
        }
        Some(route::Action::Redirect(a)) => Action::Redirect(redirect(a).at("redirect")?),
        Some(route::Action::DirectResponse(d)) => {
            direct_response(d, outer.max_body).at("direct_response")?
        }
        Some(route::Action::FilterAction(_)) => {
            return Err(Invalid::new(
                "filter_action",
                "filter actions are not supported",
            ))
        }
        Some(route::Action::NonForwardingAction(_)) => {
            return Err(Invalid::new(
                "non_forwarding_action",
                "non-forwarding actions are for proxyless gRPC servers",
            ))
        }
        None => {
            return Err(Invalid::new(
                "action",
                "route, redirect or direct_response is required",
            ))
        }
    };
    let request = header_ops(
        &r.request_headers_to_add,
        &r.request_headers_to_remove,
        "request",
    )?;
    let response = header_ops(
        &r.response_headers_to_add,
        &r.response_headers_to_remove,
        "response",
    )?;
    let fault = per_filter_fault(&r.typed_per_filter_config)?
        .or_else(|| outer.fault.clone())
        .flatten();
    Ok(Route {
        name: r.name.clone(),
        matcher,
        action,
        request_headers: outer.headers(request, &outer.request),
        response_headers: outer.headers(response, &outer.response),
        fault,
    })
}

fn route_match(m: Option<&XdsRouteMatch>) -> Res<RouteMatch> {
    let Some(m) = m else {
        return Err(Invalid::here("a match is required"));
    };
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(regex(&r.regex, true).at("safe_regex.regex")?)
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(Invalid::new(
                "connect_matcher",
                "CONNECT matching is not supported",
            ))
        }
        Some(PathSpecifier::PathSeparatedPrefix(_)) => {
            return Err(Invalid::new(
                "path_separated_prefix",
                "path_separated_prefix is not supported; use prefix",
            ))
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err(Invalid::new(
                "path_match_policy",
                "path match policies (URI templates) are not supported",
            ))
        }
        None => {
            return Err(Invalid::new(
                "path_specifier",
                "prefix, path or safe_regex is required",
            ))
        }
    };
    reject_if(
        m.runtime_fraction.is_some(),
        "runtime_fraction",
        "runtime fractions are not supported",
    )?;
    reject_if(
        !m.cookies.is_empty(),
        "cookies",
        "cookie matching is not supported",
    )?;
    reject_if(
        m.tls_context.is_some(),
        "tls_context",
        "TLS not supported yet",
    )?;
    reject_if(
        !m.dynamic_metadata.is_empty(),
        "dynamic_metadata",
        "dynamic metadata matching is not supported",
    )?;
    reject_if(
        !m.filter_state.is_empty(),
        "filter_state",
        "filter state matching is not supported",
    )?;
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        headers.push(header_match(h).at(format_args!("headers[{i}]"))?);
    }
    if m.grpc.is_some() {
        // Envoy's gRPC match: the request's content-type starts with application/grpc.
        headers.push(HeaderMatch {
            name: "content-type".into(),
            matcher: StringMatch::Prefix("application/grpc".into()),
            invert: false,
        });
    }
    let mut query = Vec::with_capacity(m.query_parameters.len());
    for (i, q) in m.query_parameters.iter().enumerate() {
        query.push(query_match(q).at(format_args!("query_parameters[{i}]"))?);
    }
    Ok(RouteMatch {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query,
    })
}

// The deprecated exact_match/prefix_match/... forms are still what older control planes send.
#[allow(deprecated)]
fn header_match(h: &HeaderMatcher) -> Res<HeaderMatch> {
    reject_if(h.name.is_empty(), "name", "a header name is required")?;
    reject_if(
        h.treat_missing_header_as_empty,
        "treat_missing_header_as_empty",
        "treat_missing_header_as_empty is not supported",
    )?;
    let non_empty = |s: &str, field: &str| reject_if(s.is_empty(), field, "must not be empty");
    let mut invert = h.invert_match;
    let matcher = match &h.header_match_specifier {
        // Envoy: no specifier means the header must be present.
        None => StringMatch::Present,
        Some(HeaderMatchSpecifier::StringMatch(sm)) => string_match(sm).at("string_match")?,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => StringMatch::Exact(s.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            StringMatch::Regex(regex(&r.regex, true).at("safe_regex_match.regex")?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(Invalid::new(
                "range_match",
                "range matching is not supported",
            ))
        }
        Some(HeaderMatchSpecifier::PresentMatch(present)) => {
            // present_match: false means "absent".
            invert ^= !present;
            StringMatch::Present
        }
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
            non_empty(s, "prefix_match")?;
            StringMatch::Prefix(s.clone())
        }
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
            non_empty(s, "suffix_match")?;
            StringMatch::Suffix(s.clone())
        }
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            non_empty(s, "contains_match")?;
            StringMatch::Contains(s.clone())
        }
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        matcher,
        invert,
    })
}

fn query_match(q: &QueryParameterMatcher) -> Res<QueryMatch> {
    reject_if(
        q.name.is_empty(),
        "name",
        "a query parameter name is required",
    )?;
    let matcher = match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(sm)) => {
            Some(string_match(sm).at("string_match")?)
        }
        // Envoy treats present_match (either value) and no specifier alike: must be present.
        Some(QueryParameterMatchSpecifier::PresentMatch(_)) | None => None,
    };
    Ok(QueryMatch {
        name: q.name.clone(),
        matcher,
    })
}
