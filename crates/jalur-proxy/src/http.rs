//! The HTTP request path: route, apply faults and header rules, pick a cluster and a host, send
//! with timeouts and retries, report to outlier detection, count in Istio's metrics. One function
//! per step, read top to bottom from [`handle`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST, LOCATION};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::{Action, Forward, HeaderOps, Redirect, RetryPolicy, Route};
use crate::error::{Flag, ProxyError};
use crate::metrics::Outcome;
use crate::routing::{pick_weighted, RequestView};
use crate::runtime::{ClusterRuntime, Compiled, ListenerCtx, Runtime};
use crate::upstream::{empty, full, Body};

mod authz;
mod body;
mod forwarded;
mod path;
mod record;
mod upgrade;
use body::ReqBody;
use record::{AccessEntry, Record, Recorded};

pub async fn handle(
    rt: Arc<Runtime>,
    ln: Arc<ListenerCtx>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    let compiled = rt.compiled_with_routes(&ln.routes).await;
    let protocol = protocol_label(&req);
    let (method, path, authority_of) = if rt.access_log {
        (
            req.method().clone(),
            req.uri().path().to_string(),
            authority(&req).to_string(),
        )
    } else {
        (http::Method::GET, String::new(), String::new())
    };
    let request_size = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    // The downstream connection's TLS (`listener.rs` puts it on every request).
    let downstream = req
        .extensions()
        .get::<Arc<crate::tls::ConnSecurity>>()
        .cloned();
    let (resp, mut outcome) = match route_and_forward(&compiled, &ln, req, peer).await {
        Ok((resp, outcome)) => (resp, outcome),
        Err((e, cluster)) => {
            tracing::debug!(listener = %ln.name, source = ?e.source, error = %e, "request failed");
            let outcome = Outcome {
                status: e.status,
                flag: Some(e.flag),
                cluster: cluster.map(|c| c.labels.clone()),
                grpc_status: None,
                security: None,
                details: None,
            };
            (local_reply(&e), outcome)
        }
    };
    if ln.inbound {
        // The destination reports the connection it was called on; the source, its upstream's.
        outcome.security = downstream;
    }
    let access = rt.access_log.then(|| AccessEntry {
        method: method.clone(),
        path: path.clone(),
        authority: authority_of.clone(),
        peer,
    });
    let (parts, body) = resp.into_parts();
    let recorded = Recorded {
        inner: body,
        record: Some(Record {
            rt,
            ln,
            outcome,
            protocol,
            started,
            request_size,
            response_size: 0,
            finished: false,
            access,
        }),
    };
    Response::from_parts(parts, recorded.boxed_unsync())
}

/// A request the framing guard refused (`crate::framing`): answered with the refusal's status,
/// counted by reason, and its connection closed; it was never forwarded.
pub fn reject_framing(rt: &Runtime, r: crate::framing::Rejection) -> Response<Body> {
    count_rejection(rt, r.reason);
    let e = ProxyError::new(
        Flag::DownstreamProtocolError,
        format!("rejected: {}", r.reason),
    )
    .with_status(r.status);
    let mut resp = local_reply(&e);
    resp.headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Counts a downstream request refused before routing, by reason.
pub fn count_rejection(rt: &Runtime, reason: &'static str) {
    rt.metrics
        .downstream_rejected
        .get_or_create(&crate::metrics::ReasonLabels { reason })
        .inc();
}

fn protocol_label<B>(req: &Request<B>) -> &'static str {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    match (grpc, req.version()) {
        (true, _) => "grpc",
        (false, Version::HTTP_2) => "http2",
        _ => "http",
    }
}

fn local_reply(e: &ProxyError) -> Response<Body> {
    let mut resp = Response::new(full(format!("{}\n", e.detail)));
    *resp.status_mut() = e.status;
    resp.headers_mut()
        .insert("x-jalur-flags", HeaderValue::from_static(e.flag.as_str()));
    resp
}

type Failed = (ProxyError, Option<Arc<ClusterRuntime>>);

async fn route_and_forward(
    compiled: &Compiled,
    ln: &ListenerCtx,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<(Response<Body>, Outcome), Failed> {
    if ln.normalize_path {
        path::normalize_request(&mut req);
    }
    // forward_client_cert_details SANITIZE, the only mode jalur accepts (Envoy's default): a
    // client must not hand the backend a client certificate it never presented.
    req.headers_mut().remove(forwarded::XFCC);
    if ln.remote_address.use_remote_address {
        let tls = req
            .extensions()
            .get::<Arc<crate::tls::ConnSecurity>>()
            .is_some();
        forwarded::at_edge(
            req.headers_mut(),
            peer.ip(),
            tls,
            ln.remote_address.xff_num_trusted_hops,
        );
    }
    let table = compiled.table(&ln.routes).ok_or_else(|| {
        (
            ProxyError::new(
                Flag::NoRoute,
                format!("route table {:?} not received yet", ln.routes),
            ),
            None,
        )
    })?;
    let authority = authority(&req).to_string();
    let view = RequestView {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        authority: &authority,
        scheme: req.uri().scheme_str().unwrap_or("http"),
        headers: req.headers(),
    };
    let found = table.route(&view).map(|(_, route)| route.clone());
    // jwt_authn and RBAC run where the RBAC filters sit in the chain: before or after the fault filter, always
    // before the router (so a request with no route is still denied, as in Envoy).
    if !ln.rbac_after_fault {
        req = match authz::gate(ln, req, &authority, peer) {
            Ok(req) => req,
            Err(denied) => return Ok(*denied),
        };
    }
    if let (true, Some(route)) = (ln.faults, &found) {
        if let Some(e) = apply_fault(route).await {
            return Err((e, None));
        }
    }
    if ln.rbac_after_fault {
        req = match authz::gate(ln, req, &authority, peer) {
            Ok(req) => req,
            Err(denied) => return Ok(*denied),
        };
    }
    let Some(route) = found else {
        return Err((
            ProxyError::new(
                Flag::NoRoute,
                format!("no route for {authority}{}", req.uri().path()),
            ),
            None,
        ));
    };
    match &route.action {
        Action::Direct { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            let mut resp = Response::new(body.clone().map(full).unwrap_or_else(empty));
            *resp.status_mut() = status;
            apply_ops(resp.headers_mut(), &route.response_headers);
            Ok((
                resp,
                Outcome {
                    status,
                    flag: None,
                    cluster: None,
                    grpc_status: None,
                    security: None,
                    details: None,
                },
            ))
        }
        Action::Redirect(r) => {
            let resp = redirect(r, &req, &authority);
            Ok((
                resp,
                Outcome {
                    status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                    flag: None,
                    cluster: None,
                    grpc_status: None,
                    security: None,
                    details: None,
                },
            ))
        }
        Action::Forward(fwd) => forward(compiled, &route, fwd, req, peer).await,
    }
}

fn authority<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

async fn apply_fault(route: &Route) -> Option<ProxyError> {
    let fault = route.fault.as_ref()?;
    if let Some((delay, ppm)) = fault.delay {
        if chance(ppm) {
            tokio::time::sleep(delay).await;
        }
    }
    match fault.abort {
        Some((status, ppm)) if chance(ppm) => Some(
            ProxyError::new(Flag::FaultAbort, "fault filter abort").with_status(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            ),
        ),
        _ => None,
    }
}

/// True with probability `ppm` parts per million.
fn chance(ppm: u32) -> bool {
    ppm >= 1_000_000 || fastrand::u32(..1_000_000) < ppm
}

fn redirect<B>(r: &Redirect, req: &Request<B>, authority: &str) -> Response<Body> {
    let scheme = r.scheme.clone().unwrap_or_else(|| "http".into());
    let mut host = r
        .host
        .clone()
        .unwrap_or_else(|| authority.split(':').next().unwrap_or("").to_string());
    if let Some(port) = r.port {
        host = format!("{host}:{port}");
    } else if r.host.is_none() {
        host = authority.to_string();
    }
    let path = r
        .path
        .clone()
        .unwrap_or_else(|| req.uri().path().to_string());
    let query = if r.strip_query {
        None
    } else {
        req.uri().query()
    };
    let location = match query {
        Some(q) => format!("{scheme}://{host}{path}?{q}"),
        None => format!("{scheme}://{host}{path}"),
    };
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(LOCATION, v);
    }
    resp
}

pub fn apply_ops(headers: &mut http::HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    for (name, value, append) in &ops.add {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        if *append {
            headers.append(n, v);
        } else {
            headers.insert(n, v);
        }
    }
}

async fn forward(
    compiled: &Compiled,
    route: &Route,
    fwd: &Forward,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<(Response<Body>, Outcome), Failed> {
    // A single cluster (most routes) needs no draw and no weight sum.
    let draw = if fwd.targets.len() > 1 {
        let total: u64 = fwd.targets.iter().map(|t| u64::from(t.weight)).sum();
        fwd.draws.next(total.max(1))
    } else {
        0
    };
    let target = pick_weighted(&fwd.targets, draw).ok_or_else(|| {
        (
            ProxyError::new(Flag::NoCluster, "route has no clusters"),
            None,
        )
    })?;
    let cluster = compiled.cluster(&target.cluster).ok_or_else(|| {
        (
            ProxyError::new(
                Flag::NoCluster,
                format!("cluster {} not configured", target.cluster),
            ),
            None,
        )
    })?;
    let fail = |e: ProxyError| (e, Some(cluster.clone()));
    let _permit = cluster.breakers_try_request().map_err(fail)?;

    let mut req = req;
    // WebSocket upgrades: forwarded as a request, then spliced byte for byte after the 101.
    let upgrade = upgrade::requested(req.headers())
        .map_err(fail)?
        .then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let hash = cluster.request_hash(
        &fwd.hash,
        &parts.headers,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
        peer,
    );
    rewrite(&mut parts, route, fwd);
    apply_ops(&mut parts.headers, &route.request_headers);
    apply_ops(&mut parts.headers, &target.request_headers);
    strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    // This hop answered `Expect: 100-continue` (hyper sends the 100 when the body is read).
    parts.headers.remove(http::header::EXPECT);
    let mut body = ReqBody::take(body, fwd.retry.is_some() && upgrade.is_none())
        .await
        .map_err(fail)?;
    mirror(compiled, fwd, &parts, &body);

    let attempts = async {
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let host = cluster.pick(hash, &tried).ok_or_else(|| {
                ProxyError::new(
                    Flag::NoHealthyUpstream,
                    format!("no healthy upstream in {}", cluster.config.name),
                )
            })?;
            tried.push(host.addr);
            let result = send_once(&cluster, &host, &parts, &mut body, fwd.retry.as_ref()).await;
            cluster.report(&host, &result);
            let retry_allowed =
                body.can_replay() && fwd.retry.as_ref().is_some_and(|p| attempt < p.num_retries);
            match result {
                Ok(resp) if !(retry_allowed && retriable_response(fwd.retry.as_ref(), &resp)) => {
                    return Ok(resp)
                }
                Err(e) if !(retry_allowed && retriable_error(fwd.retry.as_ref(), &e)) => {
                    let flag = if attempt > 0 {
                        Flag::UpstreamRetryLimit
                    } else {
                        e.flag
                    };
                    return Err(ProxyError { flag, ..e });
                }
                _ => {}
            }
            let policy = fwd
                .retry
                .as_ref()
                .ok_or_else(|| ProxyError::new(Flag::UpstreamReset, "retry without a policy"))?;
            let _retry = cluster.breakers_try_retry()?;
            attempt += 1;
            tokio::time::sleep(crate::backoff::retry_delay(
                attempt,
                policy.backoff_base,
                policy.backoff_max,
            ))
            .await;
        }
    };
    let result = match fwd.timeout {
        Some(t) => tokio::time::timeout(t, attempts).await.unwrap_or_else(|_| {
            Err(ProxyError::new(
                Flag::UpstreamTimeout,
                format!("upstream request timeout after {t:?}"),
            ))
        }),
        None => attempts.await,
    };
    let mut resp = result.map_err(fail)?;
    apply_ops(resp.headers_mut(), &target.response_headers);
    apply_ops(resp.headers_mut(), &route.response_headers);
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        upgrade::check_switch(upgrade.is_some(), resp.headers()).map_err(fail)?;
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    if let (Some(downstream), true) = (upgrade, switching) {
        upgrade::splice(downstream, hyper::upgrade::on(&mut resp));
    }
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let security = resp
        .extensions()
        .get::<crate::upstream::UpstreamSecurity>()
        .map(|s| s.0.clone());
    let outcome = Outcome {
        status: resp.status(),
        flag: None,
        cluster: Some(cluster.labels.clone()),
        grpc_status,
        security,
        details: None,
    };
    Ok((resp, outcome))
}

/// Shadow traffic: a copy of the request to each mirror cluster (sampled), fire and forget, with
/// `-shadow` appended to the authority as Envoy does. Only requests whose body is held.
fn mirror(compiled: &Compiled, fwd: &Forward, parts: &http::request::Parts, body: &ReqBody) {
    if body.held().is_none() {
        return;
    }
    for m in &fwd.mirrors {
        if !chance(m.ppm) {
            continue;
        }
        let Some(cluster) = compiled.cluster(&m.cluster) else {
            continue;
        };
        let Some(host) = cluster.pick(None, &[]) else {
            continue;
        };
        let mut shadow = http::request::Parts::clone(parts);
        if let Some(h) = shadow.headers.get(HOST).and_then(|v| v.to_str().ok()) {
            let shadowed = match h.split_once(':') {
                Some((name, port)) => format!("{name}-shadow:{port}"),
                None => format!("{h}-shadow"),
            };
            if let Ok(v) = HeaderValue::from_str(&shadowed) {
                shadow.headers.insert(HOST, v);
            }
        }
        let Some(mut held) = body.held() else { return };
        tokio::spawn(async move {
            let _ = send_once(&cluster, &host, &shadow, &mut held, None).await;
        });
    }
}

async fn send_once(
    cluster: &ClusterRuntime,
    host: &crate::lb::Host,
    parts: &http::request::Parts,
    body: &mut ReqBody,
    retry: Option<&RetryPolicy>,
) -> Result<Response<Body>, ProxyError> {
    let downstream_h2 =
        parts.version == Version::HTTP_2 && !parts.headers.contains_key(http::header::UPGRADE);
    let client = cluster.upstream.client(downstream_h2);
    let per_try = retry.and_then(|p| p.per_try_timeout);
    let _active = host.start_request();
    let request = upstream_request(cluster, host, parts, body, downstream_h2)?;
    let mut response = send_timed(client, request, per_try, host).await?;
    // RFC 9113 §6.8: a stream refused by a GOAWAY (or REFUSED_STREAM) was not processed, so a
    // held body goes once more, on a fresh connection, whatever the retry policy. hyper's pool
    // can hand out an HTTP/2 connection whose GOAWAY (a draining upstream) is in flight.
    if matches!(&response, Err(e) if refused_unprocessed(e)) && body.can_replay() {
        tracing::debug!(host = %host.addr, "upstream refused the request unprocessed (GOAWAY); sending it again");
        let request = upstream_request(cluster, host, parts, body, downstream_h2)?;
        response = send_timed(client, request, per_try, host).await?;
    }
    match response {
        Ok(resp) => body::settle_response(resp, host.addr).await,
        Err(e) if e.is_connect() => Err(ProxyError::new(
            Flag::UpstreamConnectFailure,
            format!("upstream connect error to {}: {e}", host.addr),
        )),
        Err(e) if is_parse_error(&e) => Err(ProxyError::new(
            Flag::UpstreamProtocolError,
            format!("malformed response from {}: {e}", host.addr),
        )),
        Err(e) if connection_terminated(&e) => Err(ProxyError::new(
            Flag::UpstreamConnectionTermination,
            format!(
                "upstream connection to {} closed before the response: {e}",
                host.addr
            ),
        )),
        Err(e) => Err(ProxyError::new(
            Flag::UpstreamReset,
            format!("upstream reset by {}: {e}", host.addr),
        )),
    }
}

/// The request to send to `host`: the downstream's method, path and headers, framed for the
/// upstream's protocol, with this attempt's body.
fn upstream_request(
    cluster: &ClusterRuntime,
    host: &crate::lb::Host,
    parts: &http::request::Parts,
    body: &mut ReqBody,
    downstream_h2: bool,
) -> Result<Request<Body>, ProxyError> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let scheme = cluster.upstream.scheme(host);
    let uri: Uri = format!("{scheme}://{}{path}", host.addr)
        .parse()
        .map_err(|e| {
            ProxyError::new(
                Flag::UpstreamConnectFailure,
                format!("bad upstream uri: {e}"),
            )
        })?;
    let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
    if let Some(h) = builder.headers_mut() {
        *h = parts.headers.clone();
        if !cluster.upstream.is_h2(downstream_h2) {
            body.upstream_framing(h);
        }
    }
    let req_body = body.attempt()?;
    builder.body(req_body).map_err(|e| {
        ProxyError::new(
            Flag::UpstreamReset,
            format!("building the upstream request: {e}"),
        )
    })
}

type Upstreamed = Result<Response<Incoming>, hyper_util::client::legacy::Error>;

/// Sends one request, within the per-try timeout if there is one.
async fn send_timed(
    client: &hyper_util::client::legacy::Client<crate::upstream::Connector, Body>,
    request: Request<Body>,
    per_try: Option<std::time::Duration>,
    host: &crate::lb::Host,
) -> Result<Upstreamed, ProxyError> {
    let send = client.request(request);
    match per_try {
        Some(t) => tokio::time::timeout(t, send).await.map_err(|_| {
            ProxyError::new(
                Flag::UpstreamTimeout,
                format!("per-try timeout after {t:?} to {}", host.addr),
            )
        }),
        None => Ok(send.await),
    }
}

/// The upstream refused the stream before processing it: a GOAWAY (graceful, NO_ERROR) or a
/// REFUSED_STREAM reset, as HTTP/2 says such a stream "can be safely retried".
fn refused_unprocessed(e: &hyper_util::client::legacy::Error) -> bool {
    sources(e).any(|s| {
        s.downcast_ref::<h2::Error>().is_some_and(|h| {
            h.is_remote()
                && matches!(
                    h.reason(),
                    Some(h2::Reason::NO_ERROR | h2::Reason::REFUSED_STREAM)
                )
        })
    })
}

/// The upstream connection closed before a complete response (Envoy's `UC`): it ended
/// mid-message or was reset, as when the upstream process dies.
fn connection_terminated(e: &hyper_util::client::legacy::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    sources(e).any(|s| {
        s.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
            || s.downcast_ref::<std::io::Error>()
                .is_some_and(|io| matches!(io.kind(), ConnectionReset | BrokenPipe | UnexpectedEof))
    })
}

fn sources<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// hyper could not parse the upstream's response head (e.g. two different Content-Lengths).
fn is_parse_error(e: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<hyper::Error>())
        .is_some_and(hyper::Error::is_parse)
}

fn retriable_response(policy: Option<&RetryPolicy>, resp: &Response<Body>) -> bool {
    let Some(p) = policy else { return false };
    let code = resp.status().as_u16();
    (p.on.server_error && code >= 500)
        || (p.on.gateway_error && matches!(code, 502..=504))
        || (p.on.retriable_status_codes && p.retriable_status_codes.contains(&code))
        || grpc_retriable(p, resp)
}

fn grpc_retriable(p: &RetryPolicy, resp: &Response<Body>) -> bool {
    let status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    status.is_some_and(|s| p.on.grpc_statuses.get(s).copied().unwrap_or(false))
}

/// Whether the route's policy retries this failure. Only an error that says a retry may help
/// (`ProxyError::retryable`: connect failures, resets, per-try timeouts) is ever retried; the
/// policy then decides which of those it covers, as Envoy's `retry_on` does.
fn retriable_error(policy: Option<&RetryPolicy>, e: &ProxyError) -> bool {
    let Some(p) = policy.filter(|_| e.retryable) else {
        return false;
    };
    match e.flag {
        Flag::UpstreamConnectFailure => {
            p.on.connect_failure || p.on.server_error || p.on.gateway_error
        }
        Flag::UpstreamReset | Flag::UpstreamProtocolError | Flag::UpstreamConnectionTermination => {
            p.on.reset || p.on.server_error || p.on.gateway_error
        }
        Flag::UpstreamTimeout => p.on.server_error || p.on.gateway_error,
        _ => false,
    }
}

/// Path and authority rewrites, as Envoy applies them: a prefix rewrite replaces the part of the
/// path the route's prefix matched; a regex rewrite substitutes over the whole path.
fn rewrite(parts: &mut http::request::Parts, route: &Route, fwd: &Forward) {
    if let (Some(with), crate::config::PathMatch::Prefix(prefix)) =
        (&fwd.prefix_rewrite, &route.matcher.path)
    {
        prefix_rewrite(parts, prefix, with);
    }
    if let Some(rr) = &fwd.regex_rewrite {
        let path = rr
            .pattern
            .replace_all(parts.uri.path(), rr.substitution.as_str())
            .into_owned();
        set_path(parts, &path);
    }
    if let Some(host) = &fwd.host_rewrite {
        if let Ok(v) = HeaderValue::from_str(host) {
            parts.headers.insert(HOST, v);
        }
    }
}

/// Applies a matched prefix rewrite (the route's prefix replaced by `with`).
pub fn prefix_rewrite(parts: &mut http::request::Parts, prefix: &str, with: &str) {
    let path = parts.uri.path();
    if let Some(rest) = path.strip_prefix(prefix) {
        let joined = format!("{with}{rest}");
        let joined = if joined.starts_with('/') {
            joined
        } else {
            format!("/{joined}")
        };
        set_path(parts, &joined.replacen("//", "/", 1));
    }
}

fn set_path(parts: &mut http::request::Parts, path: &str) {
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
        parts.uri = uri;
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), and `proxy-connection`. `Trailer` is end to end: it
/// names the trailers that follow a chunked body.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

/// Headers a `Connection` option may not remove: they frame or route the message, which this
/// hop decides itself (a request naming them is not trusted to unframe itself).
const NOT_NOMINATED: [&str; 3] = ["host", "content-length", "te"];

fn strip_hop_by_hop(h: &mut http::HeaderMap, upgrading: bool) {
    // `te: trailers` must survive for gRPC; `connection: upgrade` + `upgrade` for an upgrade.
    let te_trailers = h
        .get("te")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let kept: Vec<(HeaderName, HeaderValue)> = if upgrading {
        [http::header::CONNECTION, http::header::UPGRADE]
            .into_iter()
            .filter_map(|n| h.get(&n).cloned().map(|v| (n, v)))
            .collect()
    } else {
        Vec::new()
    };
    let nominated: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !NOT_NOMINATED.contains(&n.as_str()))
        .collect();
    for name in nominated {
        h.remove(name);
    }
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    if te_trailers {
        h.insert("te", HeaderValue::from_static("trailers"));
    }
    for (n, v) in kept {
        h.insert(n, v);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::RetryOn;

    #[test]
    fn only_errors_that_say_a_retry_may_help_are_retried() {
        let policy = RetryPolicy {
            num_retries: 2,
            per_try_timeout: None,
            on: RetryOn {
                server_error: true,
                gateway_error: true,
                connect_failure: true,
                reset: true,
                ..RetryOn::default()
            },
            retriable_status_codes: Vec::new(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            other_hosts: true,
        };
        let refused = ProxyError::new(Flag::UpstreamConnectFailure, "refused");
        assert!(refused.retryable);
        assert!(retriable_error(Some(&policy), &refused));
        assert!(!retriable_error(None, &refused));
        // The same flag, marked as not worth retrying (say, a request that cannot be replayed).
        let spent = ProxyError {
            retryable: false,
            ..refused
        };
        assert!(!retriable_error(Some(&policy), &spent));
        let overflow = ProxyError::new(Flag::UpstreamOverflow, "breaker open");
        assert!(!retriable_error(Some(&policy), &overflow));
    }
}
