//! Envoy's RBAC, enforced by jalur proxy: the HTTP filter (`envoy.filters.http.rbac`) and the
//! network filter (`envoy.filters.network.rbac`), compiled at conversion
//! (`config/convert/rbac.rs`) into the plain matchers below and evaluated per request (HTTP) or
//! per connection (TCP) without allocating.
//!
//! Semantics follow Envoy's engine: a policy matches when one of its permissions AND one of its
//! principals match; policies are tried in name order (Envoy keeps them in a sorted map) and the
//! first match names the decision. ALLOW allows iff a policy matches, DENY denies iff one
//! matches, LOG always allows (Envoy's `access_log_hint`). Filters run in chain order; the first
//! denial answers. Shadow rules are evaluated and counted, never enforced.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;

use crate::string_match::{string_matches, StringMatch};

pub mod stats;
#[cfg(test)]
mod tests;

pub use stats::{Counter, EnvoyCounters};

/// Envoy's name for what the JWT filter leaves in the dynamic metadata: RBAC `metadata`
/// matchers read `filter` = this, path `[jwt_payload, claim…]`.
pub const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";

/// One RBAC filter of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacFilter {
    /// `rules`; `None`: nothing is enforced (Envoy allows by default).
    pub rules: Option<Engine>,
    pub shadow: Option<Engine>,
    /// The counter names, as Envoy builds them.
    pub stats: StatNames,
}

/// Envoy's stat names of one filter: `<scope>rbac.<rules_prefix>allowed` …
#[derive(Debug, Clone, PartialEq)]
pub struct StatNames {
    pub allowed: String,
    pub denied: String,
    pub shadow_allowed: String,
    pub shadow_denied: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    pub action: Action,
    /// Sorted by name: the order Envoy tries them, so the first match is the one it reports.
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: Arc<str>,
    pub permissions: Vec<Permission>,
    pub principals: Vec<Principal>,
}

/// What is asked for (Envoy's `Permission`).
#[derive(Debug, Clone, PartialEq)]
pub enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderRule),
    /// The path without query and fragment.
    UrlPath(StringMatch),
    DestinationIp(Cidr),
    DestinationPort(u32),
    /// `[start, end)` as Envoy's Int32Range.
    DestinationPortRange(i64, i64),
    RequestedServerName(StringMatch),
    Metadata(MetadataRule),
}

/// Who asks (Envoy's `Principal`).
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    /// A TLS connection whose peer's SPIFFE id matches (`None`: any TLS connection).
    Authenticated(Option<StringMatch>),
    /// The peer address of the connection (`direct_remote_ip`, deprecated `source_ip`).
    DirectRemoteIp(Cidr),
    /// The client address as the connection manager derives it (x-forwarded-for).
    RemoteIp(Cidr),
    Header(HeaderRule),
    UrlPath(StringMatch),
    Metadata(MetadataRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer is compared as the IPv4 address it is.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Envoy's `HeaderMatcher` as RBAC uses it: all values of the header joined by `,`.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderRule {
    /// Lowercase; `host` is read as `:authority`, as Envoy's header map does.
    pub name: String,
    pub check: HeaderCheck,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderCheck {
    /// `present_match`: whether the header must be there.
    Present(bool),
    Value(StringMatch),
}

/// A `metadata` matcher on the JWT filter's dynamic metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataRule {
    pub path: Vec<String>,
    pub value: ValueCheck,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ValueCheck {
    String(StringMatch),
    Bool(bool),
    Present(bool),
    /// `list_match.one_of`: some element of a list value matches.
    OneOf(Box<ValueCheck>),
}

/// The HTTP request as RBAC sees it.
#[derive(Clone, Copy)]
pub struct HttpView<'a> {
    pub method: &'a str,
    pub authority: &'a str,
    /// With the query (`:path`).
    pub path: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

/// Everything an RBAC decision reads. `http` is `None` on a TCP connection: header and path
/// matchers then see no headers, as Envoy's network filter evaluates them.
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub direct_remote: SocketAddr,
    pub remote: IpAddr,
    pub local: SocketAddr,
    pub sni: Option<&'a str>,
    /// `Some` on a TLS connection: the names of the peer's certificate (URI SANs, DNS SANs,
    /// subject), empty when it presented none.
    pub tls: Option<&'a [String]>,
    pub http: Option<HttpView<'a>>,
    /// The JWT filter's metadata (`{"jwt_payload": {...}}`) when a token was verified.
    pub jwt: Option<&'a serde_json::Value>,
}

/// What a downstream connection tells RBAC beyond its peer address: the local address it was
/// accepted on and the SNI its TLS handshake asked for. Put on each request of a listener with
/// HTTP RBAC (`listener.rs`).
#[derive(Debug, Clone)]
pub struct Downstream {
    pub local: SocketAddr,
    pub sni: Option<Arc<str>>,
}

/// What a chain of filters decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        /// A LOG engine matched (Envoy's `access_log_hint: true`).
        logged: bool,
    },
    /// Denied by the filter at this index; Envoy's response code details name the policy.
    Denied { filter: usize, details: String },
}

/// The counters one filter of a compiled chain increments.
#[derive(Debug, Clone)]
pub struct FilterCounters {
    pub allowed: Counter,
    pub denied: Counter,
    pub shadow_allowed: Counter,
    pub shadow_denied: Counter,
}

/// A chain of filters with its counters, compiled once per listener config.
#[derive(Debug)]
pub struct Chain {
    pub filters: Vec<RbacFilter>,
    counters: Vec<FilterCounters>,
}

impl Chain {
    /// `None` for an empty chain, so a listener without RBAC pays nothing per request.
    pub fn compile(filters: &[RbacFilter], envoy: &EnvoyCounters) -> Option<Arc<Chain>> {
        if filters.is_empty() {
            return None;
        }
        let counters = filters
            .iter()
            .map(|f| FilterCounters {
                allowed: envoy.counter(&f.stats.allowed),
                denied: envoy.counter(&f.stats.denied),
                shadow_allowed: envoy.counter(&f.stats.shadow_allowed),
                shadow_denied: envoy.counter(&f.stats.shadow_denied),
            })
            .collect();
        Some(Arc::new(Chain {
            filters: filters.to_vec(),
            counters,
        }))
    }

    pub fn evaluate(&self, s: &Subject<'_>) -> Verdict {
        evaluate(&self.filters, &self.counters, s)
    }
}

/// Runs the chain in order, counting as Envoy counts: every filter with rules counts allowed or
/// denied, shadow rules count apart; evaluation stops at the first denial.
pub fn evaluate(chain: &[RbacFilter], counters: &[FilterCounters], s: &Subject<'_>) -> Verdict {
    let mut logged = false;
    for (i, f) in chain.iter().enumerate() {
        let c = counters.get(i);
        if let Some(shadow) = &f.shadow {
            let (allowed, _) = shadow.decide(s);
            if let Some(c) = c {
                if allowed {
                    &c.shadow_allowed
                } else {
                    &c.shadow_denied
                }
                .inc();
            }
        }
        let Some(rules) = &f.rules else { continue };
        let (allowed, matched) = rules.decide(s);
        if rules.action == Action::Log && matched.is_some() {
            logged = true;
        }
        if allowed {
            if let Some(c) = c {
                c.allowed.inc();
            }
            continue;
        }
        if let Some(c) = c {
            c.denied.inc();
        }
        return Verdict::Denied {
            filter: i,
            details: format!(
                "rbac_access_denied_matched_policy[{}]",
                matched.as_deref().unwrap_or("none")
            ),
        };
    }
    Verdict::Allowed { logged }
}

impl Engine {
    /// (allowed, the first matching policy's name).
    pub fn decide(&self, s: &Subject<'_>) -> (bool, Option<Arc<str>>) {
        let matched = self.policies.iter().find(|p| p.matches(s));
        let name = matched.map(|p| p.name.clone());
        let allowed = match self.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
            Action::Log => true,
        };
        (allowed, name)
    }
}

impl Policy {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s))
            && self.principals.iter().any(|p| p.matches(s))
    }
}

impl Permission {
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
            Permission::Header(h) => h.matches(s.http.as_ref()),
            Permission::UrlPath(m) => url_path_matches(m, s.http.as_ref()),
            Permission::DestinationIp(c) => c.contains(s.local.ip()),
            Permission::DestinationPort(p) => u32::from(s.local.port()) == *p,
            Permission::DestinationPortRange(start, end) => {
                (*start..*end).contains(&i64::from(s.local.port()))
            }
            Permission::RequestedServerName(m) => string_matches(m, s.sni.unwrap_or("")),
            Permission::Metadata(m) => m.matches(s.jwt),
        }
    }
}

impl Principal {
    pub fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
            Principal::Authenticated(m) => match (s.tls, m) {
                (None, _) => false,
                (Some(_), None) => true,
                // Envoy tries the URI SANs, then DNS SANs, then the subject; a mesh peer's
                // only name is its SPIFFE URI.
                (Some(names), Some(m)) => names.iter().any(|n| string_matches(m, n)),
            },
            Principal::DirectRemoteIp(c) => c.contains(s.direct_remote.ip()),
            Principal::RemoteIp(c) => c.contains(s.remote),
            Principal::Header(h) => h.matches(s.http.as_ref()),
            Principal::UrlPath(m) => url_path_matches(m, s.http.as_ref()),
            Principal::Metadata(m) => m.matches(s.jwt),
        }
    }
}

fn url_path_matches(m: &StringMatch, http: Option<&HttpView<'_>>) -> bool {
    let Some(http) = http else { return false };
    let end = http.path.find(['?', '#']).unwrap_or(http.path.len());
    string_matches(m, &http.path[..end])
}

impl HeaderRule {
    /// Envoy's `HeaderUtility::matchHeaders`: a missing header matches only a `present_match`
    /// asking for absence (or, inverted, presence) — never an inverted value matcher.
    fn matches(&self, http: Option<&HttpView<'_>>) -> bool {
        let mut joined = None;
        let value: Option<&str> = http.and_then(|h| match self.name.as_str() {
            ":method" => Some(h.method),
            ":authority" => Some(h.authority).filter(|a| !a.is_empty()),
            ":path" => Some(h.path),
            ":scheme" => Some(h.scheme),
            name => {
                let mut all = h.headers.get_all(name).iter();
                let first = all.next()?;
                match all.next() {
                    None => match first.to_str() {
                        Ok(v) => Some(v),
                        // Not UTF-8: match what it says (lossily), as Envoy matches the bytes,
                        // never an empty string a DENY prefix would not match.
                        Err(_) => {
                            joined = Some(String::from_utf8_lossy(first.as_bytes()).into_owned());
                            joined.as_deref()
                        }
                    },
                    Some(second) => {
                        let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
                        for v in std::iter::once(second).chain(all) {
                            s.push(',');
                            s.push_str(&String::from_utf8_lossy(v.as_bytes()));
                        }
                        joined = Some(s);
                        joined.as_deref()
                    }
                }
            }
        });
        match (value, &self.check) {
            (None, HeaderCheck::Present(present)) => self.invert == *present,
            (None, HeaderCheck::Value(_)) => false,
            (Some(_), HeaderCheck::Present(present)) => *present != self.invert,
            (Some(v), HeaderCheck::Value(m)) => string_matches(m, v) != self.invert,
        }
    }
}

impl MetadataRule {
    fn matches(&self, jwt: Option<&serde_json::Value>) -> bool {
        let value = jwt.and_then(|root| {
            self.path
                .iter()
                .try_fold(root, |v, key| v.as_object()?.get(key))
        });
        let hit = match value {
            Some(v) => self.value.matches(v),
            None => false,
        };
        hit != self.invert
    }
}

impl ValueCheck {
    fn matches(&self, v: &serde_json::Value) -> bool {
        match self {
            ValueCheck::Present(p) => *p,
            ValueCheck::String(m) => v.as_str().is_some_and(|s| string_matches(m, s)),
            ValueCheck::Bool(b) => v.as_bool() == Some(*b),
            ValueCheck::OneOf(inner) => v
                .as_array()
                .is_some_and(|items| items.iter().any(|i| inner.matches(i))),
        }
    }
}

/// The client address Envoy's connection manager derives: the peer with `use_remote_address`,
/// else the address `xff_num_trusted_hops` from the right of `x-forwarded-for` (the peer when
/// the header has no such valid address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoteAddress {
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
}

impl RemoteAddress {
    /// Envoy's trusted client address. With `use_remote_address` RBAC runs after the edge has
    /// appended the peer to `x-forwarded-for`, so the N trusted hops are counted past that
    /// right-most entry (Envoy's "N-th from the right of the XFF it received").
    pub fn derive(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let hops = if self.use_remote_address {
            match self.xff_num_trusted_hops {
                0 => return peer.ip(),
                // The appended peer is the right-most entry: skip it too.
                n => n,
            }
        } else {
            self.xff_num_trusted_hops
        };
        // Entries are split from the raw bytes: one entry a client wrote in non-UTF-8 must not
        // hide the addresses proxies appended after it (a whole line judged unreadable would
        // leave the peer — the gateway — as the client, review finding).
        let mut entries = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|b| *b == b','));
        entries
            .nth(hops as usize)
            .and_then(|e| std::str::from_utf8(e).ok())
            .and_then(|e| e.trim().parse::<IpAddr>().ok())
            .unwrap_or(peer.ip())
    }
}
