//! The HTTP/1 head path as a fuzz target sees it: arbitrary bytes, delivered in arbitrary
//! pieces, go through the [`Framer`] and every head it lets through is routed. Shared by the
//! cargo-fuzz target `fuzz/fuzz_targets/http1_head.rs` and the stable smoke test that mutates
//! the smuggling corpus (`framing::parse::tests`). Panics when an invariant breaks:
//! - delivery in pieces and delivery whole pass the same bytes and reach the same verdicts;
//! - whatever is passed on re-frames, alone and whole, into the same requests with no refusal
//!   (the guard never hands hyper a byte it would refuse on a second look);
//! - every head passed parses completely with `httparse` and can be routed.

use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::route::v3::{
    route, route_action, route_match::PathSpecifier, HeaderMatcher, Route, RouteAction,
    RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;

use super::parse::{feed, Event};
use crate::routing::{CompiledTable, RequestView};

/// Runs one input. Its first byte chooses the size of the pieces the rest arrives in.
pub fn http1_head(data: &[u8]) {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first % 32) + 1;
    let chunks: Vec<&[u8]> = stream.chunks(piece).collect();
    let upgraded = first & 0x80 != 0;
    let (passed, events) = feed(&chunks, upgraded);
    let (whole, events_whole) = feed(&[stream], upgraded);
    assert_eq!(
        passed, whole,
        "delivery in pieces passes other bytes than delivery whole"
    );
    assert_eq!(
        kinds(&events),
        kinds(&events_whole),
        "delivery in pieces judges otherwise than delivery whole"
    );
    assert!(
        stream.starts_with(&passed),
        "passed bytes are not a prefix of the input"
    );
    let requests = events
        .iter()
        .filter(|e| matches!(e, Event::Request { .. }))
        .count();
    let (again, events_again) = feed(&[&passed], upgraded);
    assert_eq!(again, passed, "passed bytes do not pass again whole");
    assert!(
        events_again
            .iter()
            .all(|e| matches!(e, Event::Request { .. })),
        "passed bytes are refused on a second look: {events_again:?}"
    );
    assert_eq!(
        events_again.len(),
        requests,
        "the requests differ on a second look"
    );
    if requests > 0 {
        route_first_head(&passed);
    }
}

/// Events without their reasons (a fault may be named differently when seen early).
fn kinds(events: &[Event]) -> Vec<u8> {
    events
        .iter()
        .map(|e| match e {
            Event::Request { upgrade } => u8::from(*upgrade),
            Event::Reject(_) => 2,
            Event::Abort(_) => 3,
        })
        .collect()
}

/// Parses the first head in `passed` and routes it. (Later heads sit after bodies whose
/// framing only the framer tracks; the re-frame above already judged them.)
fn route_first_head(passed: &[u8]) {
    let start = passed
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(&passed[start..]) {
        Ok(httparse::Status::Complete(_)) => {}
        other => panic!("a passed head does not parse: {other:?}"),
    }
    let mut headers = http::HeaderMap::new();
    for f in req.headers.iter() {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(f.name.as_bytes()),
            http::HeaderValue::from_bytes(f.value),
        ) {
            headers.append(n, v);
        }
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let authority = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let view = RequestView {
        method: req.method.unwrap_or("GET"),
        path,
        query: Some(query).filter(|q| !q.is_empty()),
        authority,
        scheme: "http",
        headers: &headers,
    };
    let _ = table().route(&view);
}

/// A route table with every kind of domain and a regex and header match.
fn table() -> &'static CompiledTable {
    static TABLE: OnceLock<CompiledTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let route_to = |m: RouteMatch| Route {
            r#match: Some(m),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster("c".into())),
                ..RouteAction::default()
            })),
            ..Route::default()
        };
        let vh = |domains: &[&str], routes: Vec<Route>| VirtualHost {
            name: domains.join(","),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
            ..VirtualHost::default()
        };
        let regex = RouteMatch {
            path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
                regex: "/api/v[0-9]+/.*".into(),
                engine_type: None,
            })),
            ..RouteMatch::default()
        };
        let header = RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            headers: vec![HeaderMatcher {
                name: "end-user".into(),
                ..HeaderMatcher::default()
            }],
            ..RouteMatch::default()
        };
        let prefix = RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..RouteMatch::default()
        };
        let rc = RouteConfiguration {
            name: "fuzz".into(),
            virtual_hosts: vec![
                vh(
                    &[
                        "victim.shop.svc.cluster.local",
                        "victim.shop.svc.cluster.local:9080",
                    ],
                    vec![route_to(header), route_to(prefix.clone())],
                ),
                vh(&["*.example.com", "api.*"], vec![route_to(regex)]),
                vh(&["*"], vec![route_to(prefix)]),
            ],
            ..RouteConfiguration::default()
        };
        let table = crate::config::convert::route_table(&rc).unwrap_or_else(|e| {
            panic!("the fuzz route table converts: {e}");
        });
        CompiledTable::new(Arc::new(table))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_routes_what_it_should() {
        http1_head(b"\x05GET /api/v1/x HTTP/1.1\r\nHost: a.example.com\r\n\r\n");
        let headers = http::HeaderMap::new();
        let view = RequestView {
            method: "GET",
            path: "/api/v2/y",
            query: None,
            authority: "b.example.com",
            scheme: "http",
            headers: &headers,
        };
        assert!(table().route(&view).is_some());
    }
}
