//! Envoy's `StringMatcher`, compiled: the one leaf that the routing table and the RBAC
//! matchers both read, so neither imports the other or the config types.

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// Anchored (`^...$`, Envoy matches safe_regex against the whole value), so `is_match` is a
    /// whole-value match. `ignore_case` exact/prefix/suffix/contains matchers arrive as
    /// case-insensitive regexes of this form too.
    Regex(regex::Regex),
    Present,
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &StringMatch) -> bool {
        use StringMatch::*;
        match (self, other) {
            (Exact(a), Exact(b))
            | (Prefix(a), Prefix(b))
            | (Suffix(a), Suffix(b))
            | (Contains(a), Contains(b)) => a == b,
            (Regex(a), Regex(b)) => a.as_str() == b.as_str(),
            (Present, Present) => true,
            _ => false,
        }
    }
}

pub fn string_matches(m: &StringMatch, v: &str) -> bool {
    match m {
        StringMatch::Exact(s) => v == s,
        StringMatch::Prefix(s) => v.starts_with(s.as_str()),
        StringMatch::Suffix(s) => v.ends_with(s.as_str()),
        StringMatch::Contains(s) => v.contains(s.as_str()),
        StringMatch::Regex(r) => r
            .find(v)
            .is_some_and(|f| f.start() == 0 && f.end() == v.len()),
        StringMatch::Present => true,
    }
}
