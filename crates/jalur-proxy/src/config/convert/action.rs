//! Route actions (forward, redirect, direct response) and what hangs off them: retries,
//! mirrors, hash policies, header operations. Faults are in `fault.rs`.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, HeaderValueOption,
};
use envoy_types::pb::envoy::config::route::v3::{
    redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier},
    retry_policy::retry_host_predicate,
    route_action::{self, hash_policy::PolicySpecifier, HostRewriteSpecifier},
    weighted_cluster::ClusterWeight,
    DirectResponseAction, RedirectAction, RetryPolicy as XdsRetryPolicy, RouteAction,
    WeightedCluster as XdsWeightedCluster,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use prost::Name;

use super::fault::per_filter_fault;
use super::{duration, positive, ppm, regex, reject_if, timeout, type_name, At, Invalid, Res};
use crate::config::{
    Action, Forward, HashPolicy, HeaderOps, Mirror, Redirect, RegexRewrite, RetryOn, RetryPolicy,
    WeightedCluster,
};

/// Envoy's route timeout when the route sets none.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's retry back-off base when the policy sets none; the maximum defaults to 10x the base.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";

/// A route's forward action. `vhost_retry` applies when the route has no retry policy.
pub(super) fn forward(a: &RouteAction, vhost_retry: Option<&RetryPolicy>) -> Res<Forward> {
    let targets = targets(a)?;
    unsupported(a)?;
    let retry = match &a.retry_policy {
        Some(p) => Some(retry_policy(p).at("retry_policy")?),
        None => vhost_retry.cloned(),
    };
    let regex_rewrite = regex_rewrite(a)?;
    let host_rewrite = host_rewrite(a)?;
    let mut mirrors = Vec::with_capacity(a.request_mirror_policies.len());
    for (i, m) in a.request_mirror_policies.iter().enumerate() {
        mirrors.push(mirror(m).at(format_args!("request_mirror_policies[{i}]"))?);
    }
    let mut hash = Vec::with_capacity(a.hash_policy.len());
    for (i, h) in a.hash_policy.iter().enumerate() {
        hash.extend(hash_policy(h).at(format_args!("hash_policy[{i}]"))?);
    }
    Ok(Forward {
        targets,
        timeout: timeout(a.timeout.as_ref(), Some(ROUTE_TIMEOUT)).at("timeout")?,
        retry,
        prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite,
        host_rewrite,
        mirrors,
        hash,
        draws: Default::default(),
    })
}

fn targets(a: &RouteAction) -> Res<Vec<WeightedCluster>> {
    Ok(match &a.cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => {
            reject_if(c.is_empty(), "cluster", "a cluster name is required")?;
            vec![target(c, 1)]
        }
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            weighted(w).at("weighted_clusters")?
        }
        Some(route_action::ClusterSpecifier::ClusterHeader(_)) => {
            return Err(Invalid::new(
                "cluster_header",
                "routing to a cluster named by a header is not supported",
            ))
        }
        Some(route_action::ClusterSpecifier::ClusterSpecifierPlugin(_))
        | Some(route_action::ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            return Err(Invalid::new(
                "cluster_specifier_plugin",
                "cluster specifier plugins are not supported",
            ))
        }
        None => {
            return Err(Invalid::new(
                "cluster_specifier",
                "cluster or weighted_clusters is required",
            ))
        }
    })
}

/// Route action features that change how a request is handled and that jalur does not implement.
#[allow(deprecated)] // internal_redirect_action: still honoured by Envoy, so still refused.
fn unsupported(a: &RouteAction) -> Res<()> {
    reject_if(
        a.metadata_match.is_some(),
        "metadata_match",
        "subset load balancing is not supported",
    )?;
    reject_if(
        a.retry_policy_typed_config.is_some(),
        "retry_policy_typed_config",
        "typed retry policies are not supported",
    )?;
    reject_if(
        a.path_rewrite_policy.is_some(),
        "path_rewrite_policy",
        "path rewrite policies are not supported; use prefix_rewrite or regex_rewrite",
    )?;
    reject_if(
        !a.path_rewrite.is_empty(),
        "path_rewrite",
        "path_rewrite is not supported; use prefix_rewrite or regex_rewrite",
    )?;
    reject_if(
        a.internal_redirect_policy.is_some()
            || a.internal_redirect_action
                != route_action::InternalRedirectAction::PassThroughInternalRedirect as i32,
        "internal_redirect_policy",
        "internal redirects are not supported",
    )?;
    reject_if(
        a.hedge_policy.is_some(),
        "hedge_policy",
        "request hedging is not supported",
    )?;
    reject_if(
        !a.prefix_rewrite.is_empty() && a.regex_rewrite.is_some(),
        "regex_rewrite",
        "prefix_rewrite and regex_rewrite cannot both be set",
    )?;
    Ok(())
}

fn regex_rewrite(a: &RouteAction) -> Res<Option<RegexRewrite>> {
    Ok(match &a.regex_rewrite {
        None => None,
        Some(rw) => {
            let Some(pattern) = &rw.pattern else {
                return Err(Invalid::new(
                    "regex_rewrite.pattern",
                    "a pattern is required",
                ));
            };
            let pattern = regex(&pattern.regex, false).at("regex_rewrite.pattern.regex")?;
            let substitution = substitution(&rw.substitution, pattern.captures_len())
                .at("regex_rewrite.substitution")?;
            Some(RegexRewrite {
                pattern,
                substitution,
            })
        }
    })
}

fn host_rewrite(a: &RouteAction) -> Res<Option<String>> {
    Ok(match &a.host_rewrite_specifier {
        None => None,
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => {
            Some(h.clone()).filter(|h| !h.is_empty())
        }
        Some(HostRewriteSpecifier::AutoHostRewrite(b)) if !b.value => None,
        Some(HostRewriteSpecifier::AutoHostRewrite(_)) => {
            return Err(Invalid::new(
                "auto_host_rewrite",
                "auto_host_rewrite is not supported; use host_rewrite_literal",
            ))
        }
        Some(HostRewriteSpecifier::HostRewriteHeader(_)) => {
            return Err(Invalid::new(
                "host_rewrite_header",
                "host_rewrite_header is not supported; use host_rewrite_literal",
            ))
        }
        // A format string; literal ones (no %...% commands) are a plain rewrite.
        Some(HostRewriteSpecifier::HostRewrite(h)) => {
            Some(literal_value(h).at("host_rewrite")?).filter(|h| !h.is_empty())
        }
        Some(HostRewriteSpecifier::HostRewritePathRegex(_)) => {
            return Err(Invalid::new(
                "host_rewrite_path_regex",
                "host_rewrite_path_regex is not supported; use host_rewrite_literal",
            ))
        }
    })
}

fn target(cluster: &str, weight: u32) -> WeightedCluster {
    WeightedCluster {
        cluster: cluster.to_string(),
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn weighted(w: &XdsWeightedCluster) -> Res<Vec<WeightedCluster>> {
    reject_if(
        w.clusters.is_empty(),
        "clusters",
        "at least one cluster is required",
    )?;
    reject_if(
        w.random_value_specifier.is_some(),
        "header_name",
        "picking by a header's value is not supported",
    )?;
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(w.clusters.len());
    for (i, c) in w.clusters.iter().enumerate() {
        let entry = cluster_weight(c).at(format_args!("clusters[{i}]"))?;
        total += u64::from(entry.weight);
        reject_if(
            total > u64::from(u32::MAX),
            &format!("clusters[{i}].weight"),
            "the sum of weights exceeds 4294967295",
        )?;
        out.push(entry);
    }
    reject_if(
        total == 0,
        "clusters",
        "the sum of weights must be greater than 0",
    )?;
    Ok(out)
}

fn cluster_weight(c: &ClusterWeight) -> Res<WeightedCluster> {
    reject_if(
        !c.cluster_header.is_empty(),
        "cluster_header",
        "routing to a cluster named by a header is not supported",
    )?;
    reject_if(c.name.is_empty(), "name", "a cluster name is required")?;
    let Some(weight) = &c.weight else {
        return Err(Invalid::new("weight", "a weight is required"));
    };
    reject_if(
        c.metadata_match.is_some(),
        "metadata_match",
        "subset load balancing is not supported",
    )?;
    reject_if(
        c.host_rewrite_specifier.is_some(),
        "host_rewrite_literal",
        "per-cluster host rewrites are not supported; rewrite on the route",
    )?;
    reject_if(
        per_filter_fault(&c.typed_per_filter_config)?.is_some(),
        "typed_per_filter_config",
        "per-cluster faults are not supported; set them on the route",
    )?;
    Ok(WeightedCluster {
        cluster: c.name.clone(),
        weight: weight.value,
        request_headers: header_ops(
            &c.request_headers_to_add,
            &c.request_headers_to_remove,
            "request",
        )?,
        response_headers: header_ops(
            &c.response_headers_to_add,
            &c.response_headers_to_remove,
            "response",
        )?,
    })
}

/// RE2's substitution (`\1`, `\\`) in the `regex` crate's syntax (`${1}`, `$$` for a literal `$`).
fn substitution(s: &str, groups: usize) -> Res<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.next() {
                Some(d @ '0'..='9') => {
                    let n = d as usize - '0' as usize;
                    if n >= groups {
                        return Err(Invalid::here(format!(
                            "\\{n} refers to a group the pattern does not have"
                        )));
                    }
                    out.push_str(&format!("${{{n}}}"));
                }
                Some('\\') => out.push('\\'),
                _ => return Err(Invalid::here(
                    "a backslash must be followed by a group number (\\0-\\9) or another backslash",
                )),
            },
            c => out.push(c),
        }
    }
    Ok(out)
}

pub(super) fn retry_policy(p: &XdsRetryPolicy) -> Res<RetryPolicy> {
    reject_if(
        !p.retriable_request_headers.is_empty(),
        "retriable_request_headers",
        "retriable_request_headers is not supported",
    )?;
    let mut retriable_status_codes = Vec::with_capacity(p.retriable_status_codes.len());
    for (i, code) in p.retriable_status_codes.iter().enumerate() {
        let code = u16::try_from(*code).ok().filter(|c| (100..600).contains(c));
        let Some(code) = code else {
            return Err(Invalid::new(
                format!("retriable_status_codes[{i}]"),
                "must be an HTTP status in [100, 600)",
            ));
        };
        retriable_status_codes.push(code);
    }
    let (backoff_base, backoff_max) = match &p.retry_back_off {
        None => (BACKOFF_BASE, BACKOFF_BASE * 10),
        Some(b) => {
            let Some(base) = &b.base_interval else {
                return Err(Invalid::new(
                    "retry_back_off.base_interval",
                    "a base_interval is required",
                ));
            };
            let base = positive(Some(base), BACKOFF_BASE).at("retry_back_off.base_interval")?;
            let max = positive(b.max_interval.as_ref(), base.saturating_mul(10))
                .at("retry_back_off.max_interval")?;
            reject_if(
                max < base,
                "retry_back_off.max_interval",
                "max_interval must not be less than base_interval",
            )?;
            (base, max)
        }
    };
    let other_hosts = p.retry_host_predicate.iter().any(|h| {
        let typed = match &h.config_type {
            Some(retry_host_predicate::ConfigType::TypedConfig(any)) => {
                type_name(any) == PreviousHostsPredicate::full_name()
            }
            None => false,
        };
        // Other predicates (canary hosts, host metadata) only narrow which host a retry may
        // pick; skipping them keeps the retry, which is what matters.
        typed || h.name == PREVIOUS_HOSTS
    });
    Ok(RetryPolicy {
        num_retries: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: timeout(p.per_try_timeout.as_ref(), None).at("per_try_timeout")?,
        on: retry_on(&p.retry_on),
        retriable_status_codes,
        backoff_base,
        backoff_max,
        other_hosts,
    })
}

/// Envoy's `retry_on` list. Like Envoy, conditions it does not know are ignored. Envoy counts
/// an upstream reset as a 5xx, so `5xx` and `gateway-error` also retry resets, connection
/// failures and refused streams; the flags say so here, once, for the retry logic.
fn retry_on(s: &str) -> RetryOn {
    let mut on = RetryOn::default();
    let any_reset = |on: &mut RetryOn| {
        on.reset = true;
        on.connect_failure = true;
        on.refused_stream = true;
    };
    for cond in s.split(',').map(str::trim) {
        match cond {
            "5xx" => {
                on.server_error = true;
                any_reset(&mut on);
            }
            "gateway-error" => {
                on.gateway_error = true;
                any_reset(&mut on);
            }
            "connect-failure" => on.connect_failure = true,
            "reset" => on.reset = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            "cancelled" => on.grpc_statuses[1] = true,
            "deadline-exceeded" => on.grpc_statuses[4] = true,
            "resource-exhausted" => on.grpc_statuses[8] = true,
            "internal" => on.grpc_statuses[13] = true,
            "unavailable" => on.grpc_statuses[14] = true,
            _ => {}
        }
    }
    on
}

fn mirror(m: &route_action::RequestMirrorPolicy) -> Res<Mirror> {
    reject_if(
        !m.cluster_header.is_empty(),
        "cluster_header",
        "mirroring to a cluster named by a header is not supported",
    )?;
    reject_if(
        m.cluster.is_empty(),
        "cluster",
        "a cluster name is required",
    )?;
    reject_if(
        !m.request_headers_mutations.is_empty(),
        "request_headers_mutations",
        "header mutations of mirrored requests are not supported",
    )?;
    reject_if(
        !m.host_rewrite_literal.is_empty(),
        "host_rewrite_literal",
        "host rewrites of mirrored requests are not supported",
    )?;
    let ppm = match &m.runtime_fraction {
        // Envoy: no fraction mirrors every request.
        None => 1_000_000,
        Some(rf) => match &rf.default_value {
            Some(f) => ppm(f).at("runtime_fraction.default_value")?,
            None => {
                return Err(Invalid::new(
                    "runtime_fraction.default_value",
                    "a default_value is required",
                ))
            }
        },
    };
    Ok(Mirror {
        cluster: m.cluster.clone(),
        ppm,
    })
}

/// `None` for policies that hash nothing (connection properties without source_ip).
fn hash_policy(h: &route_action::HashPolicy) -> Res<Option<HashPolicy>> {
    let named = |name: &str, field: &str| reject_if(name.is_empty(), field, "a name is required");
    Ok(match &h.policy_specifier {
        Some(PolicySpecifier::Header(hd)) => {
            named(&hd.header_name, "header.header_name")?;
            reject_if(
                hd.regex_rewrite.is_some(),
                "header.regex_rewrite",
                "rewriting hashed header values is not supported",
            )?;
            Some(HashPolicy::Header(hd.header_name.to_ascii_lowercase()))
        }
        Some(PolicySpecifier::Cookie(c)) => {
            named(&c.name, "cookie.name")?;
            reject_if(
                !c.attributes.is_empty(),
                "cookie.attributes",
                "cookie attributes are not supported",
            )?;
            match &c.ttl {
                None => Some(HashPolicy::Cookie(c.name.clone())),
                Some(ttl) => Some(HashPolicy::GeneratedCookie {
                    name: c.name.clone(),
                    path: c.path.clone(),
                    ttl: duration(ttl).at("cookie.ttl")?,
                }),
            }
        }
        Some(PolicySpecifier::ConnectionProperties(cp)) => {
            cp.source_ip.then_some(HashPolicy::SourceIp)
        }
        Some(PolicySpecifier::QueryParameter(q)) => {
            named(&q.name, "query_parameter.name")?;
            Some(HashPolicy::QueryParameter(q.name.clone()))
        }
        Some(PolicySpecifier::FilterState(_)) => {
            return Err(Invalid::new(
                "filter_state",
                "hashing on filter state is not supported",
            ))
        }
        None => {
            return Err(Invalid::here(
                "header, cookie, query_parameter or connection_properties is required",
            ))
        }
    })
}

pub(super) fn redirect(r: &RedirectAction) -> Res<Redirect> {
    let status = match RedirectResponseCode::try_from(r.response_code) {
        Ok(RedirectResponseCode::MovedPermanently) => 301,
        Ok(RedirectResponseCode::Found) => 302,
        Ok(RedirectResponseCode::SeeOther) => 303,
        Ok(RedirectResponseCode::TemporaryRedirect) => 307,
        Ok(RedirectResponseCode::PermanentRedirect) => 308,
        Err(_) => {
            return Err(Invalid::new(
                "response_code",
                format!("unknown response code {}", r.response_code),
            ))
        }
    };
    let scheme = match &r.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if !s.is_empty() => {
            Some(s.to_ascii_lowercase())
        }
        _ => None,
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| Invalid::new("port_redirect", format!("port {p} is out of range")))?,
        ),
    };
    let (path, prefix_rewrite) = match &r.path_rewrite_specifier {
        None => (None, None),
        Some(PathRewriteSpecifier::PathRedirect(p)) => (Some(p.clone()), None),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => (None, Some(p.clone())),
        Some(PathRewriteSpecifier::PathRewrite(p)) => (
            Some(literal_value(p).at("path_rewrite")?).filter(|p| !p.is_empty()),
            None,
        ),
        Some(PathRewriteSpecifier::RegexRewrite(_)) => {
            return Err(Invalid::new(
                "regex_rewrite",
                "regex rewrites in redirects are not supported",
            ))
        }
    };
    Ok(Redirect {
        status,
        scheme,
        host: Some(r.host_redirect.clone()).filter(|h| !h.is_empty()),
        port,
        path,
        prefix_rewrite,
        strip_query: r.strip_query,
    })
}

pub(super) fn direct_response(d: &DirectResponseAction, max_body: u32) -> Res<Action> {
    let status = u16::try_from(d.status)
        .ok()
        .filter(|s| (100..600).contains(s));
    let Some(status) = status else {
        return Err(Invalid::new(
            "status",
            format!("{} is not an HTTP status in [100, 600)", d.status),
        ));
    };
    reject_if(
        d.body_format.is_some(),
        "body_format",
        "body formatting is not supported",
    )?;
    let body = match d.body.as_ref().map(|b| b.specifier.as_ref()) {
        None => None,
        Some(Some(data_source::Specifier::InlineString(s))) => Some(s.clone()),
        Some(Some(data_source::Specifier::InlineBytes(b))) => Some(
            String::from_utf8(b.clone())
                .map_err(|_| Invalid::new("body.inline_bytes", "the body is not UTF-8"))?,
        ),
        Some(_) => {
            return Err(Invalid::new(
                "body",
                "only inline_string and inline_bytes bodies are supported",
            ))
        }
    };
    if let Some(b) = &body {
        reject_if(
            b.len() > max_body as usize,
            "body",
            &format!(
                "the body is {} bytes, more than max_direct_response_body_size_bytes ({max_body})",
                b.len()
            ),
        )?;
    }
    Ok(Action::Direct { status, body })
}

// ----------------------------------------------------------------------------------- headers

/// `<dir>_headers_to_add` / `<dir>_headers_to_remove` of one level (dir: request or response).
pub(super) fn header_ops(
    add: &[HeaderValueOption],
    remove: &[String],
    dir: &str,
) -> Res<HeaderOps> {
    let mut ops = HeaderOps::default();
    for (i, o) in add.iter().enumerate() {
        ops.add
            .extend(header_add(o).at(format_args!("{dir}_headers_to_add[{i}]"))?);
    }
    for (i, name) in remove.iter().enumerate() {
        modifiable(name).at(format_args!("{dir}_headers_to_remove[{i}]"))?;
        ops.remove.push(name.to_ascii_lowercase());
    }
    Ok(ops)
}

/// Envoy forbids touching pseudo-headers and `host` through header operations.
fn modifiable(name: &str) -> Res<()> {
    reject_if(name.is_empty(), "", "a header name is required")?;
    reject_if(
        name.starts_with(':') || name.eq_ignore_ascii_case("host"),
        "",
        &format!("\"{name}\": :-prefixed or host headers may not be modified"),
    )
}

/// `None` when the value is empty and not kept (Envoy then adds nothing).
#[allow(deprecated)] // `append`: older control planes still send it.
fn header_add(o: &HeaderValueOption) -> Res<Option<(String, String, bool)>> {
    let Some(h) = &o.header else {
        return Err(Invalid::new("header", "a header is required"));
    };
    modifiable(&h.key).at("header.key")?;
    let value = if h.raw_value.is_empty() {
        h.value.clone()
    } else {
        reject_if(
            !h.value.is_empty(),
            "header.raw_value",
            "value and raw_value cannot both be set",
        )?;
        String::from_utf8(h.raw_value.clone())
            .map_err(|_| Invalid::new("header.raw_value", "the value is not UTF-8"))?
    };
    reject_if(
        value.contains(['\r', '\n', '\0']),
        "header.value",
        "a header value must not contain CR, LF or NUL",
    )?;
    let value = literal_value(&value).at("header.value")?;
    let append = match &o.append {
        Some(_) if o.append_action != HeaderAppendAction::AppendIfExistsOrAdd as i32 => {
            return Err(Invalid::new(
                "append",
                "append and append_action cannot both be set",
            ))
        }
        Some(b) => b.value,
        None => match HeaderAppendAction::try_from(o.append_action) {
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) => true,
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => false,
            Ok(other) => {
                return Err(Invalid::new(
                    "append_action",
                    format!("{} is not supported", other.as_str_name()),
                ))
            }
            Err(_) => {
                return Err(Invalid::new(
                    "append_action",
                    format!("unknown append_action {}", o.append_action),
                ))
            }
        },
    };
    if value.is_empty() && !o.keep_empty_value {
        return Ok(None);
    }
    Ok(Some((h.key.to_ascii_lowercase(), value, append)))
}

/// Envoy reads `%...%` in header values as formatter commands; jalur only takes literals, with
/// `%%` for a literal `%`.
fn literal_value(v: &str) -> Res<String> {
    if !v.contains('%') {
        return Ok(v.to_string());
    }
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        if !rest[i + 1..].starts_with('%') {
            return Err(Invalid::here(format!(
                "\"{v}\": header value formatters (%...%) are not supported; write %% for a literal %"
            )));
        }
        out.push('%');
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    Ok(out)
}
