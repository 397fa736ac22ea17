//! Request hashing for the consistent-hash balancers, bit-for-bit Envoy's: xxHash64 (seed 0, from
//! `xxhash-rust`, checked against Envoy's vectors in `lb/tests.rs`) of
//! the header/cookie/query value or the source IP, several policies folded with Envoy's
//! rotate-and-xor. Envoy and jalur sidecars side by side during a migration then send the same
//! key to the same endpoint (the ring and the Maglev table are built the same way too).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::HeaderMap;

use xxhash_rust::xxh64::xxh64;

use crate::config::HashPolicy;

/// The request's hash under the route's hash policies, as Envoy computes it; `None` when no
/// policy found its input (the balancer then picks as if at random).
///
/// `path_and_query` is the request's `:path`. A header policy naming `:path` hashes it and one
/// naming `:authority` hashes the `host` header; other pseudo-headers never match. A
/// generated-cookie policy whose cookie is missing adds nothing here: see [`request_hash_with`].
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    path_and_query: &str,
    source_ip: Option<IpAddr>,
) -> Option<u64> {
    request_hash_with(policies, headers, path_and_query, source_ip, &mut |_| None)
}

/// [`request_hash`], asking `generate` for the value of each generated-cookie policy whose cookie
/// the request lacks (Envoy's `add_cookie` callback). The caller answers with the value it will
/// set on the response, e.g. [`generated_cookie_value`] and [`set_cookie`].
pub fn request_hash_with(
    policies: &[HashPolicy],
    headers: &HeaderMap,
    path_and_query: &str,
    source_ip: Option<IpAddr>,
    generate: &mut dyn FnMut(&HashPolicy) -> Option<String>,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for policy in policies {
        let new = match policy {
            HashPolicy::Header(name) => header_hash(headers, name, path_and_query),
            HashPolicy::Cookie(name) => cookie_value(headers, name).map(|v| xxh64(v, 0)),
            HashPolicy::GeneratedCookie { name, .. } => match cookie_value(headers, name) {
                Some(v) => Some(xxh64(v, 0)),
                None => generate(policy).map(|v| xxh64(v.as_bytes(), 0)),
            },
            HashPolicy::QueryParameter(name) => {
                query_value(path_and_query, name).map(|v| xxh64(v, 0))
            }
            HashPolicy::SourceIp => source_ip.map(ip_hash),
        };
        if let Some(new) = new {
            // Rotating keeps two identical policies from cancelling each other out.
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ new);
        }
    }
    hash
}

fn header_hash(headers: &HeaderMap, name: &str, path_and_query: &str) -> Option<u64> {
    let name = match name {
        ":path" => return Some(xxh64(path_and_query.as_bytes(), 0)),
        ":authority" => "host",
        other => other,
    };
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(xxh64(first.as_bytes(), 0));
    };
    // Envoy sorts repeated values so their order does not matter, then chains the seed.
    let mut all: Vec<&[u8]> = vec![first.as_bytes(), second.as_bytes()];
    all.extend(values.map(|v| v.as_bytes()));
    all.sort_unstable();
    Some(all.iter().fold(0, |seed, v| xxh64(v, seed)))
}

/// The first `name=value` among the request's cookies, quotes stripped; an empty value is absent.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    for header in headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            let mut value = &pair[eq + 1..];
            if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
                value = &value[1..value.len() - 1];
            }
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

/// The raw (undecoded) value of the first query parameter called `name`; `?a` gives `a` = "".
fn query_value<'a>(path_and_query: &'a str, name: &str) -> Option<&'a [u8]> {
    let query = path_and_query.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|param| {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        (key == name).then_some(value.as_bytes())
    })
}

fn ip_hash(ip: IpAddr) -> u64 {
    // Formatted on the stack: Envoy hashes the address's text ("10.0.0.1", "2001:db8::1").
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let written = write!(cursor, "{ip}")
        .map(|()| cursor.position() as usize)
        .unwrap_or(0);
    xxh64(&buf[..written], 0)
}

/// The cookie value Envoy generates for a connection: 16 hex digits of the xxHash64 of the
/// downstream's remote address then local address, so racing streams of one connection agree.
pub fn generated_cookie_value(remote: SocketAddr, local: SocketAddr) -> String {
    format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0))
}

/// The `Set-Cookie` value for a generated cookie, as Envoy writes it: `Max-Age` unless the ttl is
/// zero, `Path` unless empty, always `HttpOnly`.
pub fn set_cookie(name: &str, value: &str, path: &str, ttl: Duration) -> String {
    let mut cookie = format!("{name}=\"{value}\"");
    if !ttl.is_zero() {
        cookie.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !path.is_empty() {
        cookie.push_str(&format!("; Path={path}"));
    }
    cookie.push_str("; HttpOnly");
    cookie
}
