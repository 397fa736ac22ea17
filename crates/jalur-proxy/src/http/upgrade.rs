//! HTTP/1.1 protocol upgrades. Only WebSocket is spliced, as Istio configures Envoy
//! (`upgrade_configs: websocket`). An `h2c` upgrade is served as the plain HTTP/1.1 request it
//! also is (its upgrade headers dropped, as Envoy does), so `curl --http2` falls back; splicing
//! it would hand the client a raw HTTP/2 connection to the backend past every route, header
//! rule and metric. Any other protocol is refused with 403, as Envoy refuses upgrades it was
//! not configured for. A 101 is accepted only as the answer to a WebSocket upgrade that names
//! WebSocket; any other 101 is the upstream's protocol error (502), where Envoy would hang.

use http::HeaderMap;

use crate::error::{Flag, ProxyError};

/// Whether the request asks for a WebSocket upgrade (`Connection: upgrade`, `Upgrade:
/// websocket`); an error for an upgrade to anything else. An `Upgrade` without
/// `Connection: upgrade` is no upgrade: the header is hop-by-hop and is dropped.
pub fn requested(h: &HeaderMap) -> Result<bool, ProxyError> {
    let connection_upgrade = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let Some(protocol) = h.get(http::header::UPGRADE) else {
        return Ok(false);
    };
    if !connection_upgrade {
        return Ok(false);
    }
    if is_websocket(protocol) && h.get_all(http::header::UPGRADE).iter().count() == 1 {
        return Ok(true);
    }
    if protocol
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"h2c")
    {
        return Ok(false);
    }
    Err(ProxyError::new(
        Flag::DownstreamProtocolError,
        format!(
            "upgrade to {:?} is not allowed (only websocket)",
            String::from_utf8_lossy(protocol.as_bytes())
        ),
    )
    .with_status(http::StatusCode::FORBIDDEN))
}

/// A 101 from the upstream must answer a WebSocket upgrade, naming WebSocket.
pub fn check_switch(asked: bool, response: &HeaderMap) -> Result<(), ProxyError> {
    let names_websocket = response
        .get(http::header::UPGRADE)
        .is_some_and(is_websocket);
    if asked && names_websocket {
        return Ok(());
    }
    Err(ProxyError::new(
        Flag::UpstreamProtocolError,
        if asked {
            "the upstream switched to another protocol than websocket"
        } else {
            "the upstream answered 101 to a request that asked for no upgrade"
        },
    ))
}

fn is_websocket(v: &http::HeaderValue) -> bool {
    v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
}

/// After a 101, copies bytes both ways between the two upgraded connections until either ends.
pub fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded stream ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                http::HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn only_websocket_is_an_upgrade_and_other_protocols_are_refused() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(requested(&ws).expect("websocket"));
        let h2c = headers(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(!requested(&h2c).expect("h2c is served as a plain request"));
        let other = headers(&[("connection", "upgrade"), ("upgrade", "foo/1")]);
        assert_eq!(
            requested(&other).expect_err("foo").status,
            http::StatusCode::FORBIDDEN
        );
        let two = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c"),
        ]);
        assert!(requested(&two).is_err());
        let bare = headers(&[("upgrade", "h2c")]);
        assert!(!requested(&bare).expect("no Connection: upgrade, no upgrade"));
    }

    #[test]
    fn a_101_must_answer_a_websocket_upgrade() {
        let ws = headers(&[("upgrade", "websocket")]);
        assert!(check_switch(true, &ws).is_ok());
        assert!(check_switch(false, &ws).is_err());
        assert!(check_switch(true, &headers(&[("upgrade", "h2c")])).is_err());
    }
}
