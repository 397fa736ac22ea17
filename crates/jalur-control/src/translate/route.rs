//! VirtualService HTTP routes -> Envoy `Route`s. One Envoy route per Istio match condition (an
//! Istio route with N matches ORs them), in VirtualService order; the default route last.

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    redirect_action, retry_policy::RetryHostPredicate, route::Action, route_action,
    route_action::RequestMirrorPolicy, route_match::PathSpecifier, weighted_cluster::ClusterWeight,
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteMatch, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{fault_delay, FaultDelay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    fault_abort, FaultAbort, HttpFault,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    string_matcher::MatchPattern, RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, BoolValue, UInt32Value};
use envoy_types::util::pack_any;
use jalur_model::host;
use jalur_model::networking::{
    Destination, HeaderOperations, HttpMatchRequest, HttpRoute, Percent, StringMatch,
    VirtualService,
};
use jalur_model::Resource;

use super::{cluster_name, duration, Ctx};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// Routes for one virtual host (one service port, or one gateway server) from the VirtualService
/// that claims it; `None` gives the default: everything to the service's own cluster.
pub fn routes(
    ctx: &Ctx,
    vs: Option<(&Resource, &VirtualService)>,
    default_host: &str,
    port: u32,
) -> Vec<Route> {
    let Some((res, vs)) = vs else {
        return vec![default_route(ctx, default_host, port)];
    };
    let ns = &res.meta.namespace;
    let mut out = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.{i}", res.meta.name, ns));
        let matches: Vec<RouteMatch> = if http.matches.is_empty() {
            vec![prefix_match("/")]
        } else {
            http.matches
                .iter()
                .filter(|m| applies(ctx, m, ns))
                .map(route_match)
                .collect()
        };
        for m in matches {
            out.push(route(ctx, &name, m, http, ns, port));
        }
    }
    out
}

fn default_route(ctx: &Ctx, host: &str, port: u32) -> Route {
    let cluster = cluster_name(port, None, host);
    let action = RouteAction {
        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster)),
        retry_policy: default_retry(ctx),
        timeout: Some(duration(std::time::Duration::ZERO)),
        hash_policy: ctx.hash_policy(host),
        ..RouteAction::default()
    };
    Route {
        name: "default".into(),
        r#match: Some(prefix_match("/")),
        action: Some(Action::Route(action)),
        ..Route::default()
    }
}

/// A match applies to this client unless it is scoped to other gateways or ports.
fn applies(ctx: &Ctx, m: &HttpMatchRequest, ns: &str) -> bool {
    let gateway_ok = m.gateways.is_empty()
        || m.gateways
            .iter()
            .any(|g| ctx.gateway_names.contains(&host::qualify_gateway(g, ns)));
    let port_ok = match (m.port, ctx.gateway_port) {
        (Some(p), Some(gp)) => p == gp,
        _ => true,
    };
    gateway_ok && port_ok
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
        ..RouteMatch::default()
    }
}

fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let path_specifier = Some(match &m.uri {
        None => PathSpecifier::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => PathSpecifier::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch::Regex(r)) => PathSpecifier::SafeRegex(regex(r)),
    });
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(name, sm)| header_matcher(name, sm, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(name, sm)| header_matcher(name, sm, true)),
    );
    for (pseudo, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(pseudo, sm, false));
        }
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|(name, sm)| QueryParameterMatcher {
            name: name.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                string_matcher(sm),
            )),
        })
        .collect();
    RouteMatch {
        path_specifier,
        case_sensitive: m.ignore_uri_case.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        ..RouteMatch::default()
    }
}

fn header_matcher(name: &str, sm: &StringMatch, invert: bool) -> HeaderMatcher {
    // Istio: an empty `regex` / `exact` on withoutHeaders means "header absent".
    HeaderMatcher {
        name: name.to_ascii_lowercase(),
        invert_match: invert,
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(sm))),
        ..HeaderMatcher::default()
    }
}

fn string_matcher(sm: &StringMatch) -> StringMatcher {
    let pattern = match sm {
        StringMatch::Exact(s) => MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(r) => MatchPattern::SafeRegex(regex(r)),
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    }
}

fn regex(r: &str) -> RegexMatcher {
    RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }
}

fn route(ctx: &Ctx, name: &str, m: RouteMatch, http: &HttpRoute, ns: &str, port: u32) -> Route {
    let mut r = Route {
        name: name.to_string(),
        r#match: Some(m),
        ..Route::default()
    };
    if let Some(h) = &http.headers {
        apply_headers(&mut r, h.request.as_ref(), h.response.as_ref());
    }
    if let Some(fault) = &http.fault {
        if !ctx.proxyless {
            r.typed_per_filter_config
                .insert(FAULT_FILTER.into(), fault_config(fault));
        }
    }
    if let Some(redirect) = &http.redirect {
        r.action = Some(Action::Redirect(redirect_action(redirect)));
        return r;
    }
    if let Some(direct) = &http.direct_response {
        let body = direct
            .body
            .as_ref()
            .and_then(|b| b.get("string"))
            .and_then(|s| s.as_str());
        r.action = Some(Action::DirectResponse(DirectResponseAction {
            status: direct.status,
            body: body.map(|s| DataSource {
                specifier: Some(data_source::Specifier::InlineString(s.to_string())),
                ..DataSource::default()
            }),
            ..DirectResponseAction::default()
        }));
        return r;
    }
    r.action = Some(Action::Route(route_action(ctx, http, ns, port)));
    r
}

fn route_action(ctx: &Ctx, http: &HttpRoute, ns: &str, port: u32) -> RouteAction {
    let targets: Vec<(String, u32, Option<&jalur_model::networking::Headers>)> = http
        .route
        .iter()
        .map(|d| {
            (
                destination_cluster(ctx, &d.destination, ns, port),
                d.weight.unwrap_or(0),
                d.headers.as_ref(),
            )
        })
        .collect();
    let cluster_specifier = match targets.as_slice() {
        [(cluster, _, None)] => route_action::ClusterSpecifier::Cluster(cluster.clone()),
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: targets
                .iter()
                .filter(|(_, w, _)| targets.len() == 1 || *w > 0)
                .map(|(name, w, headers)| {
                    weighted(name, if targets.len() == 1 { 100 } else { *w }, *headers)
                })
                .collect(),
            ..WeightedCluster::default()
        }),
    };
    let first_host = http
        .route
        .first()
        .map(|d| host::qualify(&d.destination.host, ns))
        .unwrap_or_default();
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        timeout: Some(duration(
            http.timeout.map(|t| t.as_std()).unwrap_or_default(),
        )),
        retry_policy: match &http.retries {
            Some(r) => retry_policy(ctx, r),
            None => default_retry(ctx),
        },
        hash_policy: ctx.hash_policy(&first_host),
        ..RouteAction::default()
    };
    if let Some(rw) = &http.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(authority) = &rw.authority {
            action.host_rewrite_specifier = Some(
                route_action::HostRewriteSpecifier::HostRewriteLiteral(authority.clone()),
            );
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(regex(&rr.pattern)),
                substitution: rr.rewrite.clone(),
            });
        }
    }
    let mut mirrors: Vec<(&Destination, Option<Percent>)> = http
        .mirrors
        .iter()
        .map(|m| (&m.destination, m.percentage))
        .collect();
    if let Some(m) = &http.mirror {
        mirrors.push((m, http.mirror_percentage));
    }
    action.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, pct)| RequestMirrorPolicy {
            cluster: destination_cluster(ctx, d, ns, port),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fraction(pct.map(|p| p.value).unwrap_or(100.0))),
                runtime_key: String::new(),
            }),
            ..RequestMirrorPolicy::default()
        })
        .collect();
    action
}

/// `outbound|PORT|SUBSET|HOST` for an Istio destination, resolving its port the way Istio does:
/// the explicit one, else the service's only port, else the port the request came in on.
pub fn destination_cluster(ctx: &Ctx, d: &Destination, ns: &str, port: u32) -> String {
    let host = host::qualify(&d.host, ns);
    let port = d
        .port
        .map(|p| p.number)
        .unwrap_or_else(|| match ctx.mesh.service(&host) {
            Some(s) if s.ports.len() == 1 => s.ports[0].number,
            Some(s) if s.port(port).is_none() => s.ports.first().map(|p| p.number).unwrap_or(port),
            _ => port,
        });
    cluster_name(port, d.subset.as_deref(), &host)
}

fn weighted(
    name: &str,
    weight: u32,
    headers: Option<&jalur_model::networking::Headers>,
) -> ClusterWeight {
    let mut cw = ClusterWeight {
        name: name.to_string(),
        weight: Some(UInt32Value { value: weight }),
        ..ClusterWeight::default()
    };
    if let Some(h) = headers {
        if let Some(req) = &h.request {
            cw.request_headers_to_add = header_options(req);
            cw.request_headers_to_remove = req.remove.clone();
        }
        if let Some(resp) = &h.response {
            cw.response_headers_to_add = header_options(resp);
            cw.response_headers_to_remove = resp.remove.clone();
        }
    }
    cw
}

fn apply_headers(r: &mut Route, req: Option<&HeaderOperations>, resp: Option<&HeaderOperations>) {
    if let Some(req) = req {
        r.request_headers_to_add = header_options(req);
        r.request_headers_to_remove = req.remove.clone();
    }
    if let Some(resp) = resp {
        r.response_headers_to_add = header_options(resp);
        r.response_headers_to_remove = resp.remove.clone();
    }
}

fn header_options(ops: &HeaderOperations) -> Vec<HeaderValueOption> {
    let opt = |(k, v): (&String, &String), action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..HeaderValue::default()
        }),
        append_action: action as i32,
        ..HeaderValueOption::default()
    };
    let set = ops
        .set
        .iter()
        .map(|kv| opt(kv, HeaderAppendAction::OverwriteIfExistsOrAdd));
    let add = ops
        .add
        .iter()
        .map(|kv| opt(kv, HeaderAppendAction::AppendIfExistsOrAdd));
    set.chain(add).collect()
}

/// Istio's default for routes without `retries`: 2 attempts on connection-level failures and 503,
/// never on the same host twice. Proxyless gRPC only understands gRPC status conditions.
fn default_retry(ctx: &Ctx) -> Option<RetryPolicy> {
    if ctx.proxyless {
        return None;
    }
    Some(RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: Some(UInt32Value { value: 2 }),
        retriable_status_codes: vec![503],
        retry_host_predicate: vec![previous_hosts()],
        host_selection_retry_max_attempts: 5,
        ..RetryPolicy::default()
    })
}

fn retry_policy(ctx: &Ctx, r: &jalur_model::networking::HttpRetry) -> Option<RetryPolicy> {
    if r.attempts == 0 {
        return None;
    }
    let mut conditions: Vec<String> = Vec::new();
    let mut codes = Vec::new();
    let retry_on = r
        .retry_on
        .as_deref()
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,503");
    for cond in retry_on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        match cond.parse::<u32>() {
            Ok(code) => codes.push(code),
            Err(_) => conditions.push(cond.to_string()),
        }
    }
    if !codes.is_empty() {
        conditions.push("retriable-status-codes".into());
    }
    if ctx.proxyless {
        const GRPC: [&str; 5] = [
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable",
        ];
        conditions.retain(|c| GRPC.contains(&c.as_str()));
        codes.clear();
    }
    Some(RetryPolicy {
        retry_on: conditions.join(","),
        num_retries: Some(UInt32Value { value: r.attempts }),
        per_try_timeout: r.per_try_timeout.map(|t| duration(t.as_std())),
        retriable_status_codes: codes,
        retry_host_predicate: if ctx.proxyless {
            Vec::new()
        } else {
            vec![previous_hosts()]
        },
        host_selection_retry_max_attempts: if ctx.proxyless { 0 } else { 5 },
        ..RetryPolicy::default()
    })
}

fn previous_hosts() -> RetryHostPredicate {
    use envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
    RetryHostPredicate {
        name: "envoy.retry_host_predicates.previous_hosts".into(),
        config_type: Some(ConfigType::TypedConfig(pack_any(
            PreviousHostsPredicate::default(),
        ))),
    }
}

fn redirect_action(r: &jalur_model::networking::HttpRedirect) -> RedirectAction {
    let response_code = match r.redirect_code.unwrap_or(301) {
        302 => redirect_action::RedirectResponseCode::Found,
        303 => redirect_action::RedirectResponseCode::SeeOther,
        307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
        308 => redirect_action::RedirectResponseCode::PermanentRedirect,
        _ => redirect_action::RedirectResponseCode::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect: r.port.unwrap_or(0),
        response_code: response_code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: r
            .uri
            .clone()
            .map(redirect_action::PathRewriteSpecifier::PathRedirect),
        ..RedirectAction::default()
    }
}

fn fault_config(f: &jalur_model::networking::HttpFaultInjection) -> Any {
    let delay = f.delay.as_ref().and_then(|d| {
        let pct = d
            .percentage
            .map(|p| p.value)
            .or(d.percent.map(f64::from))
            .unwrap_or(100.0);
        Some(FaultDelay {
            percentage: Some(fraction(pct)),
            fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
                d.fixed_delay?.as_std(),
            ))),
        })
    });
    let abort = f.abort.as_ref().map(|a| FaultAbort {
        percentage: Some(fraction(a.percentage.map(|p| p.value).unwrap_or(100.0))),
        error_type: a.http_status.map(fault_abort::ErrorType::HttpStatus),
        ..FaultAbort::default()
    });
    pack_any(HttpFault {
        delay,
        abort,
        ..HttpFault::default()
    })
}

/// A percentage (0..=100, fractional) as parts per million.
fn fraction(pct: f64) -> FractionalPercent {
    let ppm = (pct.clamp(0.0, 100.0) * 10_000.0).round() as u32;
    FractionalPercent {
        numerator: ppm,
        denominator: DenominatorType::Million as i32,
    }
}

/// A catch-all route to one cluster (the sidecar's inbound route to its app).
pub fn to_cluster(name: &str, cluster: &str) -> Route {
    Route {
        name: name.to_string(),
        r#match: Some(prefix_match("/")),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: Some(duration(std::time::Duration::ZERO)),
            ..RouteAction::default()
        })),
        ..Route::default()
    }
}
