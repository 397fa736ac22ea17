//! RBAC filter configs as short, readable JSON: what `/debug/config_dump` and the golden tests
//! show. `{"and": [..]}`, `{"or": [..]}`, `{"not": ..}`, `"any"`, and one key per matcher.

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Principal, Rbac,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher, metadata_matcher::path_segment, path_matcher, string_matcher::MatchPattern,
    value_matcher, MetadataMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use serde_json::{json, Map, Value};

use super::{HTTP_RBAC_TYPE, NETWORK_RBAC_TYPE};

/// An HTTP or network RBAC filter's typed config, or `None` for any other type.
pub fn filter(any: &Any) -> Option<Value> {
    let (rules, stat_prefix) = match any.type_url.as_str() {
        HTTP_RBAC_TYPE => (HttpRbac::decode(any.value.as_slice()).ok()?.rules, None),
        NETWORK_RBAC_TYPE => {
            let n = NetworkRbac::decode(any.value.as_slice()).ok()?;
            (n.rules, Some(n.stat_prefix))
        }
        _ => return None,
    };
    let mut out = rules.as_ref().map(rbac).unwrap_or(Value::Null);
    if let (Some(p), Some(m)) = (stat_prefix, out.as_object_mut()) {
        m.insert("stat_prefix".into(), json!(p));
    }
    Some(out)
}

/// `{"action": "DENY", "policies": {key: {"permissions": [..], "principals": [..]}}}`, keys in
/// order.
pub fn rbac(r: &Rbac) -> Value {
    let action = Action::try_from(r.action).map_or("?", |a| a.as_str_name());
    let mut keys: Vec<&String> = r.policies.keys().collect();
    keys.sort();
    let policies: Map<String, Value> = keys
        .into_iter()
        .map(|k| {
            let p = &r.policies[k];
            let perms: Vec<Value> = p.permissions.iter().map(permission).collect();
            let princs: Vec<Value> = p.principals.iter().map(principal).collect();
            (
                k.clone(),
                json!({ "permissions": perms, "principals": princs }),
            )
        })
        .collect();
    json!({ "action": action, "policies": policies })
}

pub fn permission(p: &Permission) -> Value {
    use permission::Rule as R;
    match &p.rule {
        Some(R::AndRules(s)) => {
            json!({ "and": s.rules.iter().map(permission).collect::<Vec<_>>() })
        }
        Some(R::OrRules(s)) => json!({ "or": s.rules.iter().map(permission).collect::<Vec<_>>() }),
        Some(R::NotRule(n)) => json!({ "not": permission(n) }),
        Some(R::Any(true)) => json!("any"),
        Some(R::Header(h)) => json!({ "header": header(h) }),
        Some(R::UrlPath(m)) => match &m.rule {
            Some(path_matcher::Rule::Path(s)) => json!({ "path": string(s) }),
            None => json!({ "path": null }),
        },
        Some(R::DestinationIp(c)) => json!({ "destination_ip": cidr(c) }),
        Some(R::DestinationPort(p)) => json!({ "destination_port": p }),
        Some(R::RequestedServerName(s)) => json!({ "sni": string(s) }),
        other => json!({ "unrendered": format!("{other:?}") }),
    }
}

pub fn principal(p: &Principal) -> Value {
    use principal::Identifier as I;
    #[allow(deprecated)]
    match &p.identifier {
        Some(I::AndIds(s)) => json!({ "and": s.ids.iter().map(principal).collect::<Vec<_>>() }),
        Some(I::OrIds(s)) => json!({ "or": s.ids.iter().map(principal).collect::<Vec<_>>() }),
        Some(I::NotId(n)) => json!({ "not": principal(n) }),
        Some(I::Any(true)) => json!("any"),
        Some(I::Authenticated(a)) => {
            json!({ "principal": a.principal_name.as_ref().map(string) })
        }
        Some(I::DirectRemoteIp(c)) => json!({ "direct_remote_ip": cidr(c) }),
        Some(I::RemoteIp(c)) => json!({ "remote_ip": cidr(c) }),
        Some(I::Header(h)) => json!({ "header": header(h) }),
        Some(I::Metadata(m)) => json!({ "metadata": metadata(m) }),
        other => json!({ "unrendered": format!("{other:?}") }),
    }
}

/// `{"exact": "GET"}`, `{"prefix": ..}`, `{"suffix": ..}`, `{"regex": ..}`, with
/// `"ignore_case": true` when set.
pub fn string(s: &StringMatcher) -> Value {
    let mut v = match &s.match_pattern {
        Some(MatchPattern::Exact(x)) => json!({ "exact": x }),
        Some(MatchPattern::Prefix(x)) => json!({ "prefix": x }),
        Some(MatchPattern::Suffix(x)) => json!({ "suffix": x }),
        Some(MatchPattern::SafeRegex(r)) => json!({ "regex": r.regex }),
        Some(MatchPattern::Contains(x)) => json!({ "contains": x }),
        other => json!({ "unrendered": format!("{other:?}") }),
    };
    if let (true, Some(m)) = (s.ignore_case, v.as_object_mut()) {
        m.insert("ignore_case".into(), json!(true));
    }
    v
}

fn header(h: &HeaderMatcher) -> Value {
    let m = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => string(s),
        Some(HeaderMatchSpecifier::PresentMatch(p)) => json!({ "present": p }),
        other => json!({ "unrendered": format!("{other:?}") }),
    };
    json!({ h.name.clone(): m })
}

fn cidr(c: &CidrRange) -> String {
    let len = c.prefix_len.as_ref().map_or(0, |l| l.value);
    format!("{}/{len}", c.address_prefix)
}

fn metadata(m: &MetadataMatcher) -> Value {
    let path: Vec<&str> = m
        .path
        .iter()
        .filter_map(|s| {
            s.segment
                .as_ref()
                .map(|path_segment::Segment::Key(k)| k.as_str())
        })
        .collect();
    json!({ "filter": m.filter, "path": path.join("."), "value": m.value.as_ref().map(value) })
}

fn value(v: &ValueMatcher) -> Value {
    match &v.match_pattern {
        Some(value_matcher::MatchPattern::StringMatch(s)) => string(s),
        Some(value_matcher::MatchPattern::ListMatch(l)) => match &l.match_pattern {
            Some(list_matcher::MatchPattern::OneOf(o)) => json!({ "list_one_of": value(o) }),
            None => json!({ "list_one_of": null }),
        },
        other => json!({ "unrendered": format!("{other:?}") }),
    }
}
