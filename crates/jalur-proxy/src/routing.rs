//! Route tables compiled for lookup: virtual host by authority (exact domains hashed, wildcards
//! longest first, as Envoy orders them), then the first route whose match holds. Pure; no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use crate::config::{
    DomainMatch, PathMatch, QueryMatch, Route, RouteTable, StringMatch, VirtualHost,
    WeightedCluster,
};

/// What route matching looks at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
pub struct CompiledTable {
    pub table: Arc<RouteTable>,
    exact: HashMap<String, usize>,
    /// `*.example.com` as (".example.com", vhost), longest suffix first.
    suffixes: Vec<(String, usize)>,
    /// `api.*` as ("api.", vhost), longest prefix first.
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl CompiledTable {
    pub fn new(table: Arc<RouteTable>) -> CompiledTable {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut any = None;
        for (i, vh) in table.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    DomainMatch::Exact(h) => {
                        exact.entry(h.to_ascii_lowercase()).or_insert(i);
                    }
                    DomainMatch::Suffix(s) => suffixes.push((s.to_ascii_lowercase(), i)),
                    DomainMatch::Prefix(p) => prefixes.push((p.to_ascii_lowercase(), i)),
                    DomainMatch::Any => {
                        any.get_or_insert(i);
                    }
                }
            }
        }
        suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        CompiledTable {
            table,
            exact,
            suffixes,
            prefixes,
            any,
        }
    }

    /// Envoy's order: exact, then suffix wildcards, then prefix wildcards, then `*`.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        // Hosts are almost always lowercase already: allocate only when they are not.
        let host: std::borrow::Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(authority.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(authority)
        };
        let hit = self
            .exact
            .get(host.as_ref())
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, i)| *i)
            })
            .or(self.any);
        hit.map(|i| &self.table.virtual_hosts[i])
    }

    pub fn route<'a>(&'a self, req: &RequestView<'_>) -> Option<(&'a VirtualHost, &'a Route)> {
        let vh = self.virtual_host(req.authority)?;
        vh.routes
            .iter()
            .find(|r| route_matches(r, req))
            .map(|r| (vh, r))
    }
}

pub fn route_matches(route: &Route, req: &RequestView<'_>) -> bool {
    let m = &route.matcher;
    let path_ok = match &m.path {
        PathMatch::Prefix(p) if m.case_sensitive => req.path.starts_with(p.as_str()),
        PathMatch::Prefix(p) => {
            req.path.len() >= p.len() && req.path[..p.len()].eq_ignore_ascii_case(p)
        }
        PathMatch::Exact(p) if m.case_sensitive => req.path == p,
        PathMatch::Exact(p) => req.path.eq_ignore_ascii_case(p),
        PathMatch::Regex(r) => r
            .find(req.path)
            .is_some_and(|f| f.start() == 0 && f.end() == req.path.len()),
    };
    path_ok
        && m.headers.iter().all(|h| {
            let value = header_value(req, &h.name);
            let hit = match (&h.matcher, value) {
                (StringMatch::Present, v) => v.is_some(),
                (matcher, Some(v)) => string_matches(matcher, v),
                (_, None) => false,
            };
            hit != h.invert
        })
        && m.query.iter().all(|q| query_matches(q, req.query))
}

fn header_value<'a>(req: &'a RequestView<'_>, name: &str) -> Option<&'a str> {
    match name {
        ":method" => Some(req.method),
        ":authority" => Some(req.authority),
        ":path" => Some(req.path),
        ":scheme" => Some(req.scheme),
        _ => req.headers.get(name).and_then(|v| v.to_str().ok()),
    }
}

pub use crate::string_match::string_matches;

fn query_matches(q: &QueryMatch, query: Option<&str>) -> bool {
    let value = query.and_then(|qs| {
        qs.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == q.name).then_some(v)
        })
    });
    match (&q.matcher, value) {
        (None, v) => v.is_some(),
        (Some(m), Some(v)) => string_matches(m, v),
        (Some(_), None) => false,
    }
}

/// The weighted target for a draw `r` in `0..total` (total = sum of weights).
pub fn pick_weighted(targets: &[WeightedCluster], r: u64) -> Option<&WeightedCluster> {
    let total: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if total == 0 {
        return targets.first();
    }
    let mut point = r % total;
    for t in targets {
        let w = u64::from(t.weight);
        if point < w {
            return Some(t);
        }
        point -= w;
    }
    targets.last()
}

#[cfg(test)]
mod tests;
