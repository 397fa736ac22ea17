//! jwt_authn and HTTP RBAC on the request path: the listener's token check, then its RBAC
//! filters, decide before the request is forwarded; a refusal is answered here exactly as Envoy
//! answers it.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};

use crate::jwt::{Denial, JwtPayload};
use crate::metrics::Outcome;
use crate::rbac::{Downstream, HttpView, Subject, Verdict};
use crate::runtime::ListenerCtx;
use crate::tls::ConnSecurity;
use crate::upstream::{empty, full, Body};

/// Envoy's local reply body for an RBAC denial.
const DENIED: &str = "RBAC: access denied";

/// The listener's jwt_authn, then its RBAC filters: the request to go on with (token headers
/// rewritten as the filter says, the verified payload in its extensions for RBAC), or the
/// answer that refuses it. Without either filter this costs two branches.
pub(super) fn gate<B>(
    ln: &ListenerCtx,
    req: Request<B>,
    authority: &str,
    peer: SocketAddr,
) -> Result<Request<B>, Box<(Response<Body>, Outcome)>> {
    let req = match &ln.jwt {
        None => req,
        Some(jwt) => {
            let grpc = is_grpc(&req);
            let (mut parts, body) = req.into_parts();
            match jwt.authenticate(&mut parts, crate::jwt::unix_now()) {
                Ok(Some(payload)) => {
                    parts.extensions.insert(payload);
                }
                Ok(None) => {}
                Err(denial) => return Err(Box::new(jwt_denied(grpc, &denial))),
            }
            Request::from_parts(parts, body)
        }
    };
    match check(ln, &req, authority, peer) {
        Some(denied) => Err(Box::new(denied)),
        None => Ok(req),
    }
}

/// Envoy's local reply for a refused token (401, or 403 for an audience); a gRPC caller gets
/// it as Envoy maps local replies: trailers-only, grpc-status 16 (401) or 7 (403).
fn jwt_denied(grpc: bool, denial: &Denial) -> (Response<Body>, Outcome) {
    let (resp, status, grpc_status) = if grpc {
        let code = if denial.code == StatusCode::UNAUTHORIZED {
            "16"
        } else {
            "7"
        };
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static(code));
        h.insert("grpc-message", HeaderValue::from_static(denial.body()));
        (resp, StatusCode::OK, Some(code.to_string()))
    } else {
        (denial.response().map(full), denial.code, None)
    };
    let outcome = Outcome {
        status,
        flag: None,
        cluster: None,
        grpc_status,
        security: None,
        details: Some(denial.details()),
    };
    (resp, outcome)
}

/// The listener's HTTP RBAC decision on `req`: `Some` answer when denied.
fn check<B>(
    ln: &ListenerCtx,
    req: &Request<B>,
    authority: &str,
    peer: SocketAddr,
) -> Option<(Response<Body>, Outcome)> {
    let chain = ln.rbac.as_ref()?;
    let downstream = req.extensions().get::<Arc<Downstream>>();
    let tls = req.extensions().get::<Arc<ConnSecurity>>();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let subject = Subject {
        direct_remote: peer,
        remote: ln.remote_address.derive(peer, req.headers()),
        // The connection's local address; without it (never on a real listener), the peer's
        // family's unspecified address, which no destination matcher in a mesh names.
        local: downstream.map_or(SocketAddr::new(unspecified(peer), 0), |d| d.local),
        sni: downstream.and_then(|d| d.sni.as_deref()),
        tls: tls.map(|t| t.peer_names.as_slice()),
        http: Some(HttpView {
            method: req.method().as_str(),
            authority,
            path,
            scheme: req
                .uri()
                .scheme_str()
                .unwrap_or(if tls.is_some() { "https" } else { "http" }),
            headers: req.headers(),
        }),
        // What jwt_authn verified on this request, if anything.
        jwt: req.extensions().get::<JwtPayload>().map(|p| &p.0),
    };
    match chain.evaluate(&subject) {
        Verdict::Allowed { .. } => None,
        Verdict::Denied { details, .. } => Some(denied(is_grpc(req), details)),
    }
}

fn unspecified(peer: SocketAddr) -> std::net::IpAddr {
    match peer {
        SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Envoy's local reply: 403 `RBAC: access denied` as text/plain; for a gRPC request a
/// trailers-only 200 with grpc-status 7 (PERMISSION_DENIED) and the text as grpc-message.
fn denied(grpc: bool, details: String) -> (Response<Body>, Outcome) {
    let (resp, status, grpc_status) = if grpc {
        let mut resp = Response::new(empty());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert("grpc-message", HeaderValue::from_static(DENIED));
        (resp, StatusCode::OK, Some("7".to_string()))
    } else {
        let mut resp = Response::new(full(DENIED));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        (resp, StatusCode::FORBIDDEN, None)
    };
    let outcome = Outcome {
        status,
        flag: None,
        cluster: None,
        grpc_status,
        security: None,
        details: Some(details),
    };
    (resp, outcome)
}
