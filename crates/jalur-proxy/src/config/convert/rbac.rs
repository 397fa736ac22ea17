//! Envoy's RBAC filters (HTTP `envoy.extensions.filters.http.rbac.v3.RBAC`, network
//! `envoy.extensions.filters.network.rbac.v3.RBAC`) into [`crate::rbac`] matchers. Every
//! matcher jalur proxy does not evaluate is refused by name: a policy silently dropped would
//! allow (or deny) by mistake, so here jalur is stricter than "ignore what you do not know".

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action as XdsAction, MetadataSource, Permission as XdsPermission,
    Policy as XdsPolicy, Principal as XdsPrincipal, Rbac as XdsRbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment::Segment, path_matcher, value_matcher,
    MetadataMatcher, PathMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::Any;

use super::{decode, regex, reject_if, string_match, At, Invalid, Res};
use crate::config::StringMatch;
use crate::rbac::stats::scoped;
use crate::rbac::{
    Action, Cidr, Engine, HeaderCheck, HeaderRule, MetadataRule, Permission, Policy, Principal,
    RbacFilter, StatNames, ValueCheck, JWT_FILTER,
};

/// An HTTP RBAC filter in a connection manager whose `stat_prefix` is `hcm_prefix`.
pub(super) fn http_filter(any: &Any, hcm_prefix: &str) -> Res<RbacFilter> {
    let f: HttpRbac = decode(any)?;
    reject_if(
        f.matcher.is_some(),
        "matcher",
        "RBAC matcher trees are not supported; use rules",
    )?;
    reject_if(
        f.shadow_matcher.is_some(),
        "shadow_matcher",
        "RBAC matcher trees are not supported; use shadow_rules",
    )?;
    // `track_per_rule_stats` only adds counters; it changes no decision.
    let base = format!("http.{hcm_prefix}.rbac.");
    Ok(RbacFilter {
        rules: f.rules.as_ref().map(engine).transpose().at("rules")?,
        shadow: f
            .shadow_rules
            .as_ref()
            .map(engine)
            .transpose()
            .at("shadow_rules")?,
        stats: stat_names(
            &format!("{base}{}", f.rules_stat_prefix),
            &format!("{base}{}", f.shadow_rules_stat_prefix),
        ),
    })
}

/// A network RBAC filter (before tcp_proxy or the connection manager).
pub(super) fn network_filter(any: &Any) -> Res<RbacFilter> {
    let f: NetworkRbac = decode(any)?;
    reject_if(
        f.matcher.is_some(),
        "matcher",
        "RBAC matcher trees are not supported; use rules",
    )?;
    reject_if(
        f.shadow_matcher.is_some(),
        "shadow_matcher",
        "RBAC matcher trees are not supported; use shadow_rules",
    )?;
    reject_if(
        f.delay_deny.is_some(),
        "delay_deny",
        "delayed denial is not supported",
    )?;
    reject_if(
        f.stat_prefix.is_empty(),
        "stat_prefix",
        "a stat_prefix is required",
    )?;
    // Both enforcement types decide once per connection here: every input jalur evaluates
    // (addresses, SNI, the peer's certificate) is fixed when the connection is accepted.
    let base = scoped(&f.stat_prefix, "rbac.");
    Ok(RbacFilter {
        rules: f.rules.as_ref().map(engine).transpose().at("rules")?,
        shadow: f
            .shadow_rules
            .as_ref()
            .map(engine)
            .transpose()
            .at("shadow_rules")?,
        stats: stat_names(&base, &format!("{base}{}", f.shadow_rules_stat_prefix)),
    })
}

fn stat_names(rules: &str, shadow: &str) -> StatNames {
    StatNames {
        allowed: scoped(rules, "allowed"),
        denied: scoped(rules, "denied"),
        shadow_allowed: scoped(shadow, "shadow_allowed"),
        shadow_denied: scoped(shadow, "shadow_denied"),
    }
}

fn engine(r: &XdsRbac) -> Res<Engine> {
    let action = match XdsAction::try_from(r.action) {
        Ok(XdsAction::Allow) => Action::Allow,
        Ok(XdsAction::Deny) => Action::Deny,
        Ok(XdsAction::Log) => Action::Log,
        Err(_) => {
            return Err(Invalid::new(
                "action",
                format!("unknown action {}", r.action),
            ))
        }
    };
    reject_if(
        r.audit_logging_options.is_some(),
        "audit_logging_options",
        "RBAC audit loggers are not supported",
    )?;
    let mut names: Vec<&String> = r.policies.keys().collect();
    names.sort();
    let mut policies = Vec::with_capacity(names.len());
    for name in names {
        policies.push(policy(name, &r.policies[name]).at(format_args!("policies[\"{name}\"]"))?);
    }
    Ok(Engine { action, policies })
}

fn policy(name: &str, p: &XdsPolicy) -> Res<Policy> {
    reject_if(
        p.condition.is_some() || p.checked_condition.is_some(),
        if p.condition.is_some() {
            "condition"
        } else {
            "checked_condition"
        },
        "CEL conditions are not supported",
    )?;
    reject_if(p.cel_config.is_some(), "cel_config", "CEL is not supported")?;
    reject_if(
        p.permissions.is_empty(),
        "permissions",
        "at least one permission is required",
    )?;
    reject_if(
        p.principals.is_empty(),
        "principals",
        "at least one principal is required",
    )?;
    Ok(Policy {
        name: name.into(),
        permissions: each(&p.permissions, permission).at("permissions")?,
        principals: each(&p.principals, principal_of).at("principals")?,
    })
}

fn each<T, U>(items: &[T], f: fn(&T) -> Res<U>) -> Res<Vec<U>> {
    items
        .iter()
        .enumerate()
        .map(|(i, x)| f(x).at(format_args!("[{i}]")))
        .collect()
}

#[allow(deprecated)] // `metadata`: the form Istio still sends.
fn permission(p: &XdsPermission) -> Res<Permission> {
    use permission::Rule;
    Ok(match &p.rule {
        None => return Err(Invalid::here("a permission rule is required")),
        Some(Rule::Any(true)) => Permission::Any,
        Some(Rule::Any(false)) => return Err(Invalid::new("any", "must be true when set")),
        Some(Rule::AndRules(s)) => {
            Permission::And(each(&s.rules, permission).at("and_rules.rules")?)
        }
        Some(Rule::OrRules(s)) => Permission::Or(each(&s.rules, permission).at("or_rules.rules")?),
        Some(Rule::NotRule(inner)) => Permission::Not(Box::new(permission(inner).at("not_rule")?)),
        Some(Rule::Header(h)) => Permission::Header(header(h).at("header")?),
        Some(Rule::UrlPath(m)) => Permission::UrlPath(path(m).at("url_path")?),
        Some(Rule::DestinationIp(c)) => Permission::DestinationIp(cidr(c).at("destination_ip")?),
        Some(Rule::DestinationPort(port)) => Permission::DestinationPort(*port),
        Some(Rule::DestinationPortRange(r)) => {
            reject_if(
                r.start > r.end,
                "destination_port_range",
                "start is after end",
            )?;
            Permission::DestinationPortRange(i64::from(r.start), i64::from(r.end))
        }
        Some(Rule::RequestedServerName(m)) => {
            Permission::RequestedServerName(string_match(m).at("requested_server_name")?)
        }
        Some(Rule::Metadata(m)) => Permission::Metadata(metadata(m).at("metadata")?),
        Some(Rule::SourcedMetadata(s)) => Permission::Metadata(sourced(s).at("sourced_metadata")?),
        Some(Rule::Matcher(m)) => {
            return Err(Invalid::new(
                "matcher",
                format!("RBAC matcher extension \"{}\" is not supported", m.name),
            ))
        }
        Some(Rule::UriTemplate(_)) => {
            return Err(Invalid::new(
                "uri_template",
                "URI templates are not supported",
            ))
        }
    })
}

#[allow(deprecated)] // `source_ip`, `metadata`: still sent by control planes.
fn principal_of(p: &XdsPrincipal) -> Res<Principal> {
    use principal::Identifier as Id;
    Ok(match &p.identifier {
        None => return Err(Invalid::here("a principal identifier is required")),
        Some(Id::Any(true)) => Principal::Any,
        Some(Id::Any(false)) => return Err(Invalid::new("any", "must be true when set")),
        Some(Id::AndIds(s)) => Principal::And(each(&s.ids, principal_of).at("and_ids.ids")?),
        Some(Id::OrIds(s)) => Principal::Or(each(&s.ids, principal_of).at("or_ids.ids")?),
        Some(Id::NotId(inner)) => Principal::Not(Box::new(principal_of(inner).at("not_id")?)),
        Some(Id::Authenticated(a)) => Principal::Authenticated(
            a.principal_name
                .as_ref()
                .map(string_match)
                .transpose()
                .at("authenticated.principal_name")?,
        ),
        Some(Id::SourceIp(c)) => Principal::DirectRemoteIp(cidr(c).at("source_ip")?),
        Some(Id::DirectRemoteIp(c)) => Principal::DirectRemoteIp(cidr(c).at("direct_remote_ip")?),
        Some(Id::RemoteIp(c)) => Principal::RemoteIp(cidr(c).at("remote_ip")?),
        Some(Id::Header(h)) => Principal::Header(header(h).at("header")?),
        Some(Id::UrlPath(m)) => Principal::UrlPath(path(m).at("url_path")?),
        Some(Id::Metadata(m)) => Principal::Metadata(metadata(m).at("metadata")?),
        Some(Id::SourcedMetadata(s)) => Principal::Metadata(sourced(s).at("sourced_metadata")?),
        Some(Id::FilterState(_)) => {
            return Err(Invalid::new(
                "filter_state",
                "filter state matchers are not supported",
            ))
        }
        Some(Id::Custom(c)) => {
            return Err(Invalid::new(
                "custom",
                format!("custom principal \"{}\" is not supported", c.name),
            ))
        }
    })
}

fn cidr(c: &CidrRange) -> Res<Cidr> {
    let addr: std::net::IpAddr = c.address_prefix.parse().map_err(|_| {
        Invalid::new(
            "address_prefix",
            format!("\"{}\" is not an IP address", c.address_prefix),
        )
    })?;
    let len = c.prefix_len.as_ref().map_or(0, |v| v.value);
    let max = if addr.is_ipv4() { 32 } else { 128 };
    reject_if(
        len > max,
        "prefix_len",
        &format!("{len} is longer than the address ({max} bits)"),
    )?;
    Ok(Cidr {
        addr,
        len: len as u8,
    })
}

fn path(m: &PathMatcher) -> Res<StringMatch> {
    match &m.rule {
        Some(path_matcher::Rule::Path(s)) => string_match(s).at("path"),
        None => Err(Invalid::new("path", "a path matcher is required")),
    }
}

// The deprecated exact_match/prefix_match/... forms are what older control planes send.
#[allow(deprecated)]
fn header(h: &HeaderMatcher) -> Res<HeaderRule> {
    reject_if(h.name.is_empty(), "name", "a header name is required")?;
    reject_if(
        h.treat_missing_header_as_empty,
        "treat_missing_header_as_empty",
        "treat_missing_header_as_empty is not supported",
    )?;
    let check = match &h.header_match_specifier {
        None => HeaderCheck::Present(true),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderCheck::Present(*p),
        Some(HeaderMatchSpecifier::StringMatch(sm)) => {
            HeaderCheck::Value(string_match(sm).at("string_match")?)
        }
        Some(HeaderMatchSpecifier::ExactMatch(s)) => {
            HeaderCheck::Value(StringMatch::Exact(s.clone()))
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => HeaderCheck::Value(StringMatch::Regex(
            regex(&r.regex, true).at("safe_regex_match.regex")?,
        )),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
            HeaderCheck::Value(StringMatch::Prefix(s.clone()))
        }
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
            HeaderCheck::Value(StringMatch::Suffix(s.clone()))
        }
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            HeaderCheck::Value(StringMatch::Contains(s.clone()))
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(Invalid::new(
                "range_match",
                "range matching is not supported",
            ))
        }
    };
    let name = h.name.to_ascii_lowercase();
    Ok(HeaderRule {
        // Envoy's header map answers `host` with `:authority`.
        name: if name == "host" {
            ":authority".to_string()
        } else {
            name
        },
        check,
        invert: h.invert_match,
    })
}

fn sourced(s: &envoy_types::pb::envoy::config::rbac::v3::SourcedMetadata) -> Res<MetadataRule> {
    reject_if(
        s.metadata_source != MetadataSource::Dynamic as i32,
        "metadata_source",
        "only DYNAMIC metadata is supported",
    )?;
    let m = s
        .metadata_matcher
        .as_ref()
        .ok_or_else(|| Invalid::new("metadata_matcher", "a metadata_matcher is required"))?;
    metadata(m).at("metadata_matcher")
}

/// Only the JWT filter's metadata exists in jalur proxy: any other filter's is refused rather
/// than read as absent (Envoy's other filters could set it).
fn metadata(m: &MetadataMatcher) -> Res<MetadataRule> {
    reject_if(
        m.filter != JWT_FILTER,
        "filter",
        &format!(
            "only {JWT_FILTER} metadata is supported, not \"{}\"",
            m.filter
        ),
    )?;
    reject_if(m.path.is_empty(), "path", "a path is required")?;
    let path = m
        .path
        .iter()
        .map(|s| match &s.segment {
            Some(Segment::Key(k)) => Ok(k.clone()),
            None => Err(Invalid::new("path", "every segment needs a key")),
        })
        .collect::<Res<Vec<String>>>()?;
    let value = m
        .value
        .as_ref()
        .ok_or_else(|| Invalid::new("value", "a value matcher is required"))
        .and_then(|v| value_check(v).at("value"))?;
    Ok(MetadataRule {
        path,
        value,
        invert: m.invert,
    })
}

fn value_check(v: &ValueMatcher) -> Res<ValueCheck> {
    use value_matcher::MatchPattern as P;
    Ok(match &v.match_pattern {
        Some(P::StringMatch(s)) => ValueCheck::String(string_match(s).at("string_match")?),
        Some(P::BoolMatch(b)) => ValueCheck::Bool(*b),
        Some(P::PresentMatch(p)) => ValueCheck::Present(*p),
        Some(P::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(inner)) => {
                ValueCheck::OneOf(Box::new(value_check(inner).at("list_match.one_of")?))
            }
            None => return Err(Invalid::new("list_match", "one_of is required")),
        },
        Some(P::NullMatch(_)) => return Err(Invalid::new("null_match", "not supported")),
        Some(P::DoubleMatch(_)) => return Err(Invalid::new("double_match", "not supported")),
        Some(P::OrMatch(_)) => return Err(Invalid::new("or_match", "not supported")),
        None => return Err(Invalid::here("a match pattern is required")),
    })
}
