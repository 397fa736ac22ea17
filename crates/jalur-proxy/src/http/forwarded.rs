//! A connection manager with `use_remote_address` (the control plane sets it on gateways) is the
//! edge: the TCP peer is the client. As Envoy, jalur proxy then appends the peer to
//! `x-forwarded-for`, says in `x-forwarded-proto` how the client connected (a value the client
//! sent is not believed without trusted hops), and drops the `x-envoy-*` headers a client
//! could use to steer retries and timeouts or to pose as internal.
//!
//! Stricter than Envoy, on purpose: jalur drops every `x-envoy-*` request header at the edge
//! (Envoy drops a fixed list and keeps them for callers its `internal_address_config` calls
//! internal), and appends the peer itself where Envoy, for a loopback peer, appends the node's
//! own address.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Removed from every request (forward_client_cert_details SANITIZE, see `http.rs`).
pub(super) const XFCC: &str = "x-forwarded-client-cert";
const XFF: &str = "x-forwarded-for";
const XFP: &str = "x-forwarded-proto";

/// Rewrites `headers` as the edge connection manager does, for a request from `peer` on a TLS
/// (`tls`) or plaintext connection with `trusted_hops` proxies in front of it.
pub(super) fn at_edge(headers: &mut HeaderMap, peer: IpAddr, tls: bool, trusted_hops: u32) {
    let envoy: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-envoy-"))
        .cloned()
        .collect();
    for name in envoy {
        headers.remove(name);
    }
    // Several x-forwarded-for lines become one list, read right to left as the path.
    let mut list: Vec<u8> = Vec::new();
    for line in headers.get_all(XFF).iter().map(HeaderValue::as_bytes) {
        if !line.is_empty() {
            list.extend_from_slice(line);
            list.push(b',');
        }
    }
    list.extend_from_slice(peer.to_string().as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&list) {
        headers.insert(XFF, v);
    }
    if trusted_hops == 0 || !headers.contains_key(XFP) {
        headers.insert(
            XFP,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)], tls: bool, hops: u32) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        at_edge(&mut h, "192.0.2.7".parse().expect("ip"), tls, hops);
        h
    }

    #[test]
    fn the_peer_is_appended_and_the_clients_word_is_not_taken() {
        let h = run(
            &[
                ("x-forwarded-for", "10.9.9.9"),
                ("x-forwarded-proto", "https"),
                ("x-envoy-retry-on", "5xx"),
                ("x-envoy-internal", "true"),
                ("x-other", "kept"),
            ],
            false,
            0,
        );
        assert_eq!(h["x-forwarded-for"], "10.9.9.9,192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-envoy-retry-on"));
        assert!(!h.contains_key("x-envoy-internal"));
        assert_eq!(h["x-other"], "kept");
    }

    #[test]
    fn without_a_header_the_peer_starts_the_list_and_tls_says_https() {
        let h = run(&[], true, 0);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn several_lines_become_one_list() {
        let h = run(
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
            false,
            0,
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1,10.0.0.2,192.0.2.7");
    }

    #[test]
    fn a_trusted_hop_keeps_its_proto() {
        let h = run(&[("x-forwarded-proto", "https")], false, 1);
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
