//! AuthorizationPolicy → Envoy RBAC filters, in the shape Istio gives them, so stock Envoy and
//! jalur proxy enforce one policy from one xDS.
//!
//! A policy applies to a proxy when it lives in the proxy's namespace, or in the root namespace
//! (mesh-wide), and its selector matches the proxy's labels (no selector: every workload). The
//! policies become one RBAC filter per action, in this order: AUDIT (`LOG`), DENY, ALLOW; no ALLOW
//! policy → no ALLOW filter (everything allowed), ALLOW policies without a single rule → an ALLOW
//! filter without policies (everything denied). Each rule is one RBAC policy named
//! `ns[NS]-policy[NAME]-rule[I]`: `permissions` one per `to` (its operation's fields AND the
//! `when` conditions Envoy evaluates as permissions), `principals` one per `from` (its source's
//! fields AND the remaining conditions); within a field any value may match (`or`), `not*` values
//! none may (`not(or)`).
//!
//! Fail-closed where Envoy cannot express a rule (an HTTP-only field on a TCP port, an unknown
//! condition key, a bad CIDR or port, a path template): an ALLOW rule is dropped (it matches
//! nothing), a DENY/AUDIT rule loses that whole field (it matches more). Istio drops only the
//! bad value of a DENY field; jalur drops the field, so a DENY never narrows. Each such case is
//! logged as a warning naming the policy; `jalur analyze` reports them offline.
//!
//! `ports` and `destination.port` are resolved here, against the port the listener serves for
//! the workload (the app port on a sidecar's inbound listener, the server port on a gateway):
//! jalur has no iptables redirect, so the destination port a proxy sees is its own listener's,
//! not the workload port Istio's users write. A matching value becomes `any`, another value
//! matches nothing; no `destination_port` matcher is ever emitted.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac::Action, Permission, Policy, Principal,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, HeaderMatcher,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    list_matcher,
    metadata_matcher::{path_segment, PathSegment},
    path_matcher,
    string_matcher::MatchPattern,
    value_matcher, ListMatcher, MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher,
    ValueMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use jalur_model::security::authz::{AuthzAction, Condition, Operation, Rule, Source};
use jalur_model::security::AuthorizationPolicy;
use jalur_model::Resource;
use prost::Message;

use super::Ctx;

pub mod render;

pub const HTTP_RBAC_FILTER: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC_FILTER: &str = "envoy.filters.network.rbac";
/// Where `requestPrincipals` and `request.auth.*` are read from: track A's jwt_authn filter
/// stores the verified payload under this key (`payload_in_metadata`).
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";
pub const JWT_PAYLOAD_KEY: &str = "jwt_payload";
/// Istio's stat prefix of the network filter: Envoy counts `tcp.rbac.allowed|denied`.
pub const TCP_STAT_PREFIX: &str = "tcp.";
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// Where the filters go: whether the chain is TCP, and the workload port it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub tcp: bool,
    pub port: u32,
}

/// `envoy.config.rbac.v3.RBAC` with its policies in key order. envoy-types keeps them in a
/// HashMap, which prost encodes in a random order: the same policy would get a new resource
/// version, and be pushed again, on every rebuild. Same field numbers, so the same wire message.
#[derive(Clone, PartialEq, Message)]
pub struct RbacRules {
    #[prost(int32, tag = "1")]
    pub action: i32,
    #[prost(btree_map = "string, message", tag = "2")]
    pub policies: BTreeMap<String, Policy>,
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC`, only the fields jalur sets.
#[derive(Clone, PartialEq, Message)]
struct HttpRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacRules>,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`, only the fields jalur sets.
#[derive(Clone, PartialEq, Message)]
struct NetworkRbac {
    #[prost(message, optional, tag = "1")]
    rules: Option<RbacRules>,
    #[prost(string, tag = "3")]
    stat_prefix: String,
}

/// The policies that apply to this client, in config order.
pub fn applicable<'a>(ctx: &Ctx<'a>) -> Vec<(&'a Resource, &'a AuthorizationPolicy)> {
    let c = ctx.client;
    let root = &ctx.mesh.security.root_namespace;
    ctx.mesh
        .config
        .authorization_policies()
        .filter(|(r, p)| {
            (r.meta.namespace == c.namespace || &r.meta.namespace == root)
                && p.match_labels()
                    .is_none_or(|sel| sel.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
        })
        .collect()
}

/// What authenticates and authorizes an HCM serving workload port `port`, to go after fault and
/// before the router: jwt_authn when a RequestAuthentication applies to this proxy (it verifies
/// tokens and leaves the payload RBAC's `requestPrincipals` and claims matchers read), then the
/// RBAC filters.
pub fn http_filters(ctx: &Ctx, port: u32) -> Vec<HttpFilter> {
    let mut filters: Vec<HttpFilter> = jwt(ctx).map(|j| j.filter).into_iter().collect();
    filters.extend(rbac_http_filters(ctx, port));
    filters
}

fn jwt(ctx: &Ctx) -> Option<super::jwt::Jwt> {
    let c = ctx.client;
    let root = &ctx.mesh.security.root_namespace;
    let applying = super::jwt::applying(&ctx.mesh.config, root, &c.namespace, &c.labels);
    super::jwt::http_filter(&applying, &ctx.mesh.jwks)
}

fn rbac_http_filters(ctx: &Ctx, port: u32) -> Vec<HttpFilter> {
    rules(ctx, Target { tcp: false, port })
        .into_iter()
        .map(|r| HttpFilter {
            name: HTTP_RBAC_FILTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(Any {
                type_url: HTTP_RBAC_TYPE.into(),
                value: HttpRbac { rules: Some(r) }.encode_to_vec(),
            })),
            ..HttpFilter::default()
        })
        .collect()
}

/// The network RBAC filters for a TCP chain serving workload port `port`, before its tcp_proxy.
pub fn network_filters(ctx: &Ctx, port: u32) -> Vec<Filter> {
    rules(ctx, Target { tcp: true, port })
        .into_iter()
        .map(|r| Filter {
            name: NETWORK_RBAC_FILTER.into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: NETWORK_RBAC_TYPE.into(),
                value: NetworkRbac {
                    rules: Some(r),
                    stat_prefix: TCP_STAT_PREFIX.into(),
                }
                .encode_to_vec(),
            })),
        })
        .collect()
}

/// One RBAC config per action present: AUDIT, DENY, ALLOW. CUSTOM has no provider in jalur: its
/// rules deny what they would have sent to the provider (fail closed).
pub fn rules(ctx: &Ctx, target: Target) -> Vec<RbacRules> {
    let policies = applicable(ctx);
    let mut out = Vec::new();
    for action in [Action::Log, Action::Deny, Action::Allow] {
        let mine: Vec<_> = policies
            .iter()
            .filter(|(_, p)| rbac_action(p.action) == action)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut map = BTreeMap::new();
        for (r, p) in mine {
            map.extend(translate_policy(r, p, action, target));
        }
        if map.is_empty() && action != Action::Allow {
            continue;
        }
        out.push(RbacRules {
            action: action as i32,
            policies: map,
        });
    }
    out
}

fn rbac_action(a: AuthzAction) -> Action {
    match a {
        AuthzAction::Allow => Action::Allow,
        AuthzAction::Deny | AuthzAction::Custom => Action::Deny,
        AuthzAction::Audit => Action::Log,
    }
}

/// The RBAC policies of one AuthorizationPolicy, by Istio's key; what could not be expressed is
/// logged as a warning naming the policy and rule.
pub fn translate_policy(
    r: &Resource,
    p: &AuthorizationPolicy,
    action: Action,
    target: Target,
) -> Vec<(String, Policy)> {
    let ns = &r.meta.namespace;
    let name = format!("{ns}/{}", r.meta.name);
    if p.action == AuthzAction::Custom {
        tracing::warn!(policy = %name, "CUSTOM authorization has no provider in jalur: its rules deny");
    }
    let mut out = Vec::new();
    for (i, rule) in p.rules().iter().enumerate() {
        let mut skipped = Vec::new();
        match rule_policy(ns, rule, action, target, &mut skipped) {
            Ok(policy) => out.push((policy_key(ns, &r.meta.name, i), policy)),
            Err(why) => skipped.push(format!(
                "{why}; the ALLOW rule is dropped (matches nothing)"
            )),
        }
        for why in skipped {
            tracing::warn!(policy = %name, rule = i, action = action.as_str_name(),
                "authorization rule not expressible as written: {why}");
        }
    }
    out
}

/// Istio's RBAC policy name for rule `i` of a policy.
pub fn policy_key(ns: &str, name: &str, i: usize) -> String {
    format!("ns[{ns}]-policy[{name}]-rule[{i}]")
}

/// One rule as an RBAC policy. `Err` (ALLOW only): the rule cannot be expressed and must match
/// nothing. For DENY/AUDIT an inexpressible field is left out and noted in `skipped`.
fn rule_policy(
    policy_ns: &str,
    rule: &Rule,
    action: Action,
    target: Target,
    skipped: &mut Vec<String>,
) -> Result<Policy, String> {
    let strict = action == Action::Allow;
    let (perm_conds, princ_conds): (Vec<Field>, Vec<Field>) = rule
        .when
        .iter()
        .map(|c| condition_field(c, policy_ns))
        .partition(|f| f.key.is_permission());
    let ops: Vec<Option<&Operation>> = if rule.to.is_empty() {
        vec![None]
    } else {
        rule.to.iter().map(|t| Some(&t.operation)).collect()
    };
    let mut permissions = Vec::new();
    for op in ops {
        let mut fields = op.map(operation_fields).unwrap_or_default();
        fields.extend(perm_conds.iter().cloned());
        permissions.push(combine::<Permission>(&fields, target, strict, skipped)?);
    }
    let sources: Vec<Option<&Source>> = if rule.from.is_empty() {
        vec![None]
    } else {
        rule.from.iter().map(|f| Some(&f.source)).collect()
    };
    let mut principals = Vec::new();
    for src in sources {
        let mut fields = src.map(|s| source_fields(s, policy_ns)).unwrap_or_default();
        fields.extend(princ_conds.iter().cloned());
        principals.push(combine::<Principal>(&fields, target, strict, skipped)?);
    }
    Ok(Policy {
        permissions,
        principals,
        ..Policy::default()
    })
}

/// What a field or condition is about, which decides its Envoy matcher.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Host,
    Method,
    Path,
    Port,
    DestIp,
    Sni,
    SrcIp,
    RemoteIp,
    Namespace,
    Principal,
    /// `serviceAccounts`: `SA` (in the policy's namespace, carried here) or `NS/SA`.
    ServiceAccount(String),
    RequestPrincipal,
    Header(String),
    /// A JWT claim path under the payload, e.g. `["groups"]`, `["aud"]`.
    Claim(Vec<String>),
    /// A condition key jalur has no matcher for: never expressible.
    Unknown(String),
}

impl Key {
    fn is_permission(&self) -> bool {
        matches!(
            self,
            Key::Host
                | Key::Method
                | Key::Path
                | Key::Port
                | Key::DestIp
                | Key::Sni
                | Key::Unknown(_)
        )
    }

    fn http_only(&self) -> bool {
        matches!(
            self,
            Key::Host
                | Key::Method
                | Key::Path
                | Key::RequestPrincipal
                | Key::Header(_)
                | Key::Claim(_)
        )
    }
}

#[derive(Debug, Clone)]
struct Field {
    /// The YAML name, for warnings: `paths`, `when request.headers[x-user]`.
    name: String,
    key: Key,
    values: Vec<String>,
    not_values: Vec<String>,
}

fn field(name: &str, key: Key, values: &[String], not_values: &[String]) -> Option<Field> {
    (!values.is_empty() || !not_values.is_empty()).then(|| Field {
        name: name.to_string(),
        key,
        values: values.to_vec(),
        not_values: not_values.to_vec(),
    })
}

/// Istio's order: hosts, methods, paths, ports.
fn operation_fields(o: &Operation) -> Vec<Field> {
    [
        field("hosts", Key::Host, &o.hosts, &o.not_hosts),
        field("methods", Key::Method, &o.methods, &o.not_methods),
        field("paths", Key::Path, &o.paths, &o.not_paths),
        field("ports", Key::Port, &o.ports, &o.not_ports),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Istio's order: principals (then service accounts), requestPrincipals, namespaces,
/// remoteIpBlocks, ipBlocks.
fn source_fields(s: &Source, policy_ns: &str) -> Vec<Field> {
    let sa = Key::ServiceAccount(policy_ns.to_string());
    [
        field(
            "principals",
            Key::Principal,
            &s.principals,
            &s.not_principals,
        ),
        field(
            "serviceAccounts",
            sa,
            &s.service_accounts,
            &s.not_service_accounts,
        ),
        field(
            "requestPrincipals",
            Key::RequestPrincipal,
            &s.request_principals,
            &s.not_request_principals,
        ),
        field(
            "namespaces",
            Key::Namespace,
            &s.namespaces,
            &s.not_namespaces,
        ),
        field(
            "remoteIpBlocks",
            Key::RemoteIp,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
        ),
        field("ipBlocks", Key::SrcIp, &s.ip_blocks, &s.not_ip_blocks),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `request.headers[NAME]` → `[NAME]`; `request.auth.claims[a][b]` → `[a, b]`.
fn bracketed(key: &str, prefix: &str) -> Option<Vec<String>> {
    let rest = key
        .strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let parts: Vec<String> = rest.split("][").map(str::to_string).collect();
    parts.iter().all(|p| !p.is_empty()).then_some(parts)
}

fn condition_field(c: &Condition, policy_ns: &str) -> Field {
    let k = c.key.as_str();
    let key = match k {
        "destination.ip" => Key::DestIp,
        "destination.port" => Key::Port,
        "connection.sni" => Key::Sni,
        "source.ip" => Key::SrcIp,
        "remote.ip" => Key::RemoteIp,
        "source.namespace" => Key::Namespace,
        "source.principal" => Key::Principal,
        "source.serviceAccount" => Key::ServiceAccount(policy_ns.to_string()),
        "request.auth.principal" => Key::RequestPrincipal,
        "request.auth.audiences" => Key::Claim(vec!["aud".into()]),
        "request.auth.presenter" => Key::Claim(vec!["azp".into()]),
        _ => match (
            bracketed(k, "request.headers"),
            bracketed(k, "request.auth.claims"),
        ) {
            (Some(h), _) if h.len() == 1 => Key::Header(h[0].clone()),
            (_, Some(path)) => Key::Claim(path),
            _ => Key::Unknown(k.to_string()),
        },
    };
    Field {
        name: format!("when {k}"),
        key,
        values: c.values.clone(),
        not_values: c.not_values.clone(),
    }
}

/// The two RBAC trees (permissions, principals) share one way of combining fields.
trait Node: Sized {
    fn and(v: Vec<Self>) -> Self;
    fn or(v: Vec<Self>) -> Self;
    fn not(self) -> Self;
    fn any() -> Self;
    fn matcher(key: &Key, value: &str, port: u32) -> Result<Self, String>;
}

/// `and` of every field (`or` of its values, `not(or)` of its not-values); `any` when nothing
/// constrains. A field that cannot be expressed fails the whole rule when `strict` (ALLOW), and
/// is left out otherwise (DENY/AUDIT: the rule matches more).
fn combine<N: Node>(
    fields: &[Field],
    target: Target,
    strict: bool,
    skipped: &mut Vec<String>,
) -> Result<N, String> {
    let mut and = Vec::new();
    for f in fields {
        match field_matchers::<N>(f, target) {
            Ok(m) => and.extend(m),
            Err(why) if strict => return Err(why),
            Err(why) => skipped.push(format!(
                "{why}; the field is left out (the rule matches more)"
            )),
        }
    }
    if and.is_empty() {
        and.push(N::any());
    }
    Ok(N::and(and))
}

fn field_matchers<N: Node>(f: &Field, target: Target) -> Result<Vec<N>, String> {
    if target.tcp && f.key.http_only() {
        return Err(format!("`{}` is HTTP only and this port is TCP", f.name));
    }
    if let Key::Unknown(k) = &f.key {
        return Err(format!("unknown condition key `{k}`"));
    }
    let each = |values: &[String]| -> Result<Vec<N>, String> {
        values
            .iter()
            .map(|v| N::matcher(&f.key, v, target.port).map_err(|e| format!("`{}`: {e}", f.name)))
            .collect()
    };
    let mut out = Vec::new();
    if !f.values.is_empty() {
        out.push(N::or(each(&f.values)?));
    }
    if !f.not_values.is_empty() {
        out.push(N::or(each(&f.not_values)?).not());
    }
    Ok(out)
}

impl Node for Permission {
    fn and(rules: Vec<Self>) -> Self {
        perm(permission::Rule::AndRules(permission::Set { rules }))
    }
    fn or(rules: Vec<Self>) -> Self {
        perm(permission::Rule::OrRules(permission::Set { rules }))
    }
    fn not(self) -> Self {
        perm(permission::Rule::NotRule(Box::new(self)))
    }
    fn any() -> Self {
        perm(permission::Rule::Any(true))
    }
    fn matcher(key: &Key, v: &str, port: u32) -> Result<Self, String> {
        use permission::Rule as R;
        Ok(match key {
            Key::Host => perm(R::Header(host_matcher(v))),
            Key::Method => perm(R::Header(header_matcher(":method", v))),
            Key::Path if v.contains('{') => {
                return Err(format!("path template `{v}` is not supported"))
            }
            Key::Path => perm(R::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(string_matcher(v, ""))),
            })),
            Key::Port => {
                let p: u16 = v.parse().map_err(|_| format!("`{v}` is not a port"))?;
                if u32::from(p) == port {
                    Self::any()
                } else {
                    Self::any().not()
                }
            }
            Key::DestIp => perm(R::DestinationIp(cidr(v)?)),
            Key::Sni => perm(R::RequestedServerName(string_matcher(v, ""))),
            other => return Err(format!("{other:?} is not a permission")),
        })
    }
}

fn perm(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

impl Node for Principal {
    fn and(ids: Vec<Self>) -> Self {
        princ(principal::Identifier::AndIds(principal::Set { ids }))
    }
    fn or(ids: Vec<Self>) -> Self {
        princ(principal::Identifier::OrIds(principal::Set { ids }))
    }
    fn not(self) -> Self {
        princ(principal::Identifier::NotId(Box::new(self)))
    }
    fn any() -> Self {
        princ(principal::Identifier::Any(true))
    }
    fn matcher(key: &Key, v: &str, _port: u32) -> Result<Self, String> {
        use principal::Identifier as I;
        Ok(match key {
            Key::Principal => authenticated(string_matcher(v, "spiffe://")),
            Key::Namespace => authenticated(regex(&format!(".*/ns/{}/.*", glob(v)))),
            Key::ServiceAccount(policy_ns) => {
                let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
                let (ns, sa) = (glob(ns), glob(sa));
                authenticated(regex(&format!("spiffe://.+/ns/{ns}/(.+/|)sa/{sa}(/.+)?")))
            }
            Key::SrcIp => princ(I::DirectRemoteIp(cidr(v)?)),
            Key::RemoteIp => princ(I::RemoteIp(cidr(v)?)),
            Key::Header(name) => princ(I::Header(header_matcher(name, v))),
            Key::RequestPrincipal => request_principal(v),
            Key::Claim(path) => claim(path, v),
            other => return Err(format!("{other:?} is not a principal")),
        })
    }
}

fn princ(id: principal::Identifier) -> Principal {
    Principal {
        identifier: Some(id),
    }
}

fn authenticated(m: StringMatcher) -> Principal {
    princ(principal::Identifier::Authenticated(
        principal::Authenticated {
            principal_name: Some(m),
        },
    ))
}

/// `ISS/SUB` as iss AND sub of the verified payload, with Istio's `*` forms. Istio matches the
/// joined string `iss/sub`; jalur has the two claims apart, so a `prefix*` or `*suffix` whose
/// fixed part holds a `/` may cut anywhere: either the issuer alone carries the fixed part (and
/// the subject is anything), or the cut is at one of its `/` — every cut is an alternative. An
/// exact value is split at its last `/` (issuers are URLs; subjects rarely hold a `/`).
fn request_principal(v: &str) -> Principal {
    let any = || regex(".+");
    let exact = |s: &str| pattern(MatchPattern::Exact(s.to_string()));
    // Envoy refuses an empty prefix or suffix (min_len 1): an empty fixed part is "anything".
    let suffix = |s: &str| match s {
        "" => any(),
        s => pattern(MatchPattern::Suffix(s.to_string())),
    };
    let prefix = |s: &str| match s {
        "" => any(),
        s => pattern(MatchPattern::Prefix(s.to_string())),
    };
    let claim = |name: &str, m| jwt_metadata(&[name.to_string()], value_string(m));
    let both = |iss, sub| Principal::and(vec![claim("iss", iss), claim("sub", sub)]);
    let cuts = |fixed: &str| -> Vec<(String, String)> {
        fixed
            .match_indices('/')
            .map(|(k, _)| (fixed[..k].to_string(), fixed[k + 1..].to_string()))
            .collect()
    };
    if v == "*" {
        return both(any(), any());
    }
    if let Some(fixed) = v.strip_suffix('*') {
        // iss/sub starts with `fixed`.
        let mut alternatives = vec![both(prefix(fixed), any())];
        for (iss, sub) in cuts(fixed) {
            alternatives.push(both(exact(&iss), prefix(&sub)));
        }
        return Principal::or(alternatives);
    }
    if let Some(fixed) = v.strip_prefix('*') {
        // iss/sub ends with `fixed`.
        let mut alternatives = vec![both(any(), suffix(fixed))];
        for (iss, sub) in cuts(fixed) {
            alternatives.push(both(suffix(&iss), exact(&sub)));
        }
        return Principal::or(alternatives);
    }
    match v.rsplit_once('/') {
        Some((iss, sub)) => both(exact(iss), exact(sub)),
        None => both(exact(v), any()),
    }
}

/// A claim equals `v` whether the payload holds it as a string or as a list of strings (`aud`,
/// `groups`): Envoy's list matcher sees only lists, its string matcher only strings.
fn claim(path: &[String], v: &str) -> Principal {
    let list = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
            ListMatcher {
                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(value_string(
                    string_matcher(v, ""),
                )))),
            },
        ))),
    };
    Principal::or(vec![
        jwt_metadata(path, value_string(string_matcher(v, ""))),
        jwt_metadata(path, list),
    ])
}

fn value_string(m: StringMatcher) -> ValueMatcher {
    ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    }
}

/// A matcher on the jwt_authn filter's dynamic metadata `jwt_payload.PATH...`. Envoy deprecated
/// the `metadata` principal for `sourced_metadata`, but it is what Istio emits and what every
/// Envoy of the fleet evaluates.
#[allow(deprecated)]
fn jwt_metadata(path: &[String], value: ValueMatcher) -> Principal {
    let key = |k: &str| PathSegment {
        segment: Some(path_segment::Segment::Key(k.to_string())),
    };
    let mut segments = vec![key(JWT_PAYLOAD_KEY)];
    segments.extend(path.iter().map(|k| key(k)));
    princ(principal::Identifier::Metadata(MetadataMatcher {
        filter: JWT_AUTHN_FILTER.into(),
        path: segments,
        value: Some(value),
        invert: false,
    }))
}

fn pattern(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..StringMatcher::default()
    }
}

fn regex(r: &str) -> StringMatcher {
    pattern(MatchPattern::SafeRegex(RegexMatcher {
        regex: r.to_string(),
        engine_type: None,
    }))
}

/// Istio's value forms: `*` present (non-empty), `*suffix`, `prefix*`, else exact; `prefix` is
/// put before the value (not before a lone `*`; before a `*suffix` as a regex
/// `PREFIX.*SUFFIX`, as Istio does).
fn string_matcher(v: &str, prefix: &str) -> StringMatcher {
    if v == "*" {
        regex(".+")
    } else if let Some(s) = v.strip_prefix('*') {
        if prefix.is_empty() {
            pattern(MatchPattern::Suffix(s.to_string()))
        } else {
            regex(&format!("{}.*{}", glob(prefix), glob(s)))
        }
    } else if let Some(p) = v.strip_suffix('*') {
        pattern(MatchPattern::Prefix(format!("{prefix}{p}")))
    } else {
        pattern(MatchPattern::Exact(format!("{prefix}{v}")))
    }
}

fn header_matcher(name: &str, v: &str) -> HeaderMatcher {
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else {
        HeaderMatchSpecifier::StringMatch(string_matcher(v, ""))
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

/// `:authority` compared without case (host names are case-insensitive) and with an optional
/// `:PORT`, as Istio does: `Host: admin.example.com:80` is the host `admin.example.com`, and a
/// DENY naming it must not be side-stepped by writing the port. `prefix*` already takes any
/// port; `*` is any host.
fn host_matcher(v: &str) -> HeaderMatcher {
    const PORT: &str = "(:[0-9]+)?";
    let spec = if v == "*" {
        HeaderMatchSpecifier::PresentMatch(true)
    } else if let Some(s) = v.strip_prefix('*') {
        HeaderMatchSpecifier::StringMatch(regex(&format!("(?i).*{}{PORT}", glob(s))))
    } else if let Some(p) = v.strip_suffix('*') {
        HeaderMatchSpecifier::StringMatch(regex(&format!("(?i){}.*", glob(p))))
    } else {
        HeaderMatchSpecifier::StringMatch(regex(&format!("(?i){}{PORT}", glob(v))))
    };
    HeaderMatcher {
        name: ":authority".to_string(),
        header_match_specifier: Some(spec),
        ..HeaderMatcher::default()
    }
}

/// A name as a regex, Istio's `*` (any run of characters) kept as `.*`. Istio pastes names in
/// unescaped; a `.` in an account name must not match any character, so jalur escapes them.
fn glob(v: &str) -> String {
    let escape = |part: &str| -> String {
        part.chars()
            .flat_map(|c| {
                let special = "\\.+?()|[]{}^$".contains(c);
                special.then_some('\\').into_iter().chain([c])
            })
            .collect()
    };
    v.split('*').map(escape).collect::<Vec<_>>().join(".*")
}

/// `10.0.0.1` (a /32 or /128) or `10.0.0.0/8`.
fn cidr(v: &str) -> Result<CidrRange, String> {
    let (addr, len) = match v.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (v, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{v}` is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("`{v}` has a bad prefix length"))?,
    };
    Ok(CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value { value: len }),
    })
}

#[cfg(test)]
mod tests;
