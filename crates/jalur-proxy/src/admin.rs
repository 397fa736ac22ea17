//! Admin (15000, loopback), health (15021) and Prometheus (15090) endpoints, Envoy/Istio-shaped:
//! `/config_dump`, `/clusters`, `/listeners`, `/ready`, `/stats/prometheus`, `/healthz/ready`.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::config::{Discovery, ListenerKind, RouteSource, Snapshot};
use crate::runtime::Runtime;
use crate::xds::ConfigState;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub rt: Arc<Runtime>,
    pub config: Arc<ConfigState>,
    /// Bound listener addresses (port 0 resolved), refreshed after every reconcile.
    pub listeners: Arc<ArcSwap<Vec<(String, std::net::SocketAddr)>>>,
}

impl AdminState {
    /// A complete config, listeners bound, and not draining (a draining proxy must not be
    /// sent new callers).
    pub fn ready(&self) -> bool {
        *self.config.ready().borrow() && !self.listeners.load().is_empty() && !self.rt.draining()
    }
}

#[derive(Clone, Copy)]
pub enum Endpoints {
    /// Everything (the loopback admin port).
    Admin,
    /// `/healthz/ready` only.
    Health,
    /// `/stats/prometheus` only.
    Stats,
}

pub async fn serve(listener: TcpListener, state: AdminState, which: Endpoints) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, which, req.uri().path())) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn handle(state: &AdminState, which: Endpoints, path: &str) -> Response<Full<Bytes>> {
    match (which, path) {
        (Endpoints::Admin | Endpoints::Stats, "/stats/prometheus")
        | (Endpoints::Admin, "/stats") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.rt.metrics.encode(),
        ),
        (Endpoints::Admin, "/ready") | (Endpoints::Health, "/healthz/ready") => {
            if state.ready() {
                reply(StatusCode::OK, "text/plain", "LIVE\n".into())
            } else if state.rt.draining() {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: draining\n".into(),
                )
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: waiting for config from the control plane\n".into(),
                )
            }
        }
        (Endpoints::Admin, "/listeners") => {
            let v: Vec<Value> = state
                .listeners
                .load()
                .iter()
                .map(|(n, a)| json!({ "name": n, "address": a.to_string() }))
                .collect();
            json_reply(&json!(v))
        }
        (Endpoints::Admin, "/clusters") => json_reply(&clusters(state)),
        (Endpoints::Admin, "/config_dump") => {
            let snap = state.config.snapshot();
            json_reply(&json!({ "xds": state.config.status(), "config": config_dump(&snap) }))
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn clusters(state: &AdminState) -> Value {
    let compiled = state.rt.compiled();
    let now = tokio::time::Instant::now();
    let mut out: Vec<Value> = compiled
        .clusters()
        .map(|c| {
            let hosts = c.hosts();
            let outlier: Vec<Value> = c
                .outlier()
                .map(|o| o.snapshot(&hosts, now))
                .unwrap_or_default()
                .into_iter()
                .map(|s| json!({ "address": s.addr.to_string(), "ejected_for_ms": s.ejected_for.map(|d| d.as_millis() as u64), "times_ejected": s.times_ejected, "consecutive_5xx": s.consecutive_5xx }))
                .collect();
            let hosts: Vec<Value> = hosts
                .hosts()
                .iter()
                .map(|h| json!({ "address": h.addr.to_string(), "weight": h.weight, "healthy": h.healthy, "ejected": h.is_ejected(), "active_requests": h.active_requests(), "locality": h.locality }))
                .collect();
            json!({ "name": c.config.name, "hosts": hosts, "outlier": outlier })
        })
        .collect();
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!(out)
}

fn tcp_targets(t: &crate::config::TcpListener) -> Vec<Value> {
    t.targets
        .iter()
        .map(|w| json!({ "cluster": w.cluster, "weight": w.weight }))
        .collect()
}

fn config_dump(snap: &Snapshot) -> Value {
    let listeners: Vec<Value> = snap
        .listeners
        .values()
        .map(|l| {
            let kind = match &l.kind {
                ListenerKind::Http(h) => match &h.routes {
                    RouteSource::Rds(name) => json!({ "http": { "rds": name, "faults": h.faults } }),
                    RouteSource::Inline(t) => json!({ "http": { "inline": t.name, "faults": h.faults } }),
                },
                ListenerKind::Tcp(t) => json!({ "tcp": tcp_targets(t) }),
                ListenerKind::Sni(s) => json!({ "sni": s.chains.iter().map(|c| json!({ "server_names": c.server_names, "tcp": tcp_targets(&c.tcp) })).collect::<Vec<_>>() }),
            };
            json!({ "name": l.name, "address": l.addr.to_string(), "kind": kind })
        })
        .collect();
    let routes: Vec<Value> = snap
        .routes
        .values()
        .map(|t| {
            json!({ "name": t.name, "virtual_hosts": t.virtual_hosts.iter().map(|vh| json!({ "name": vh.name, "domains": vh.domains.len(), "routes": vh.routes.iter().map(|r| r.name.clone()).collect::<Vec<_>>() })).collect::<Vec<_>>() })
        })
        .collect();
    let clusters: Vec<Value> = snap
        .clusters
        .values()
        .map(|c| {
            let discovery = match &c.discovery {
                Discovery::Eds { service_name } => json!({ "eds": service_name }),
                Discovery::Static => json!("static"),
                Discovery::Dns { hosts, refresh, respect_ttl } => json!({
                    "dns": hosts.iter().map(|(h, p)| format!("{h}:{p}")).collect::<Vec<_>>(),
                    "refresh_ms": refresh.as_millis() as u64,
                    "respect_dns_ttl": respect_ttl,
                }),
            };
            json!({ "name": c.name, "discovery": discovery, "lb": format!("{:?}", c.lb), "protocol": format!("{:?}", c.protocol), "connect_timeout_ms": c.connect_timeout.as_millis() as u64, "outlier_detection": c.outlier.is_some() })
        })
        .collect();
    let endpoints: Vec<Value> = snap
        .endpoints
        .values()
        .map(|e| json!({ "cluster": e.cluster, "endpoints": e.endpoints.iter().map(|ep| json!({ "address": ep.addr.to_string(), "healthy": ep.healthy, "weight": ep.weight })).collect::<Vec<_>>() }))
        .collect();
    json!({ "listeners": listeners, "routes": routes, "clusters": clusters, "endpoints": endpoints })
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json_reply(v: &Value) -> Response<Full<Bytes>> {
    reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n",
    )
}
