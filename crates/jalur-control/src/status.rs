//! The status API on 15014: `/ready`, `/metrics` (Prometheus text), `/debug/syncz` (per-client
//! xDS sync state), `/debug/config_dump?proxy=ID` (the resources that client is served), `/debug/config`
//! (the config being served and the last rejected change), `/debug/registry` (workloads),
//! `/api/migrations`, `/api/tokens` (bootstrap tokens); admin auth in [`admin`].

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jalur_xds::AdsServer;
use percent_encoding::percent_decode_str;
use prometheus_client::registry::Registry as MetricsRegistry;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::consul::ConsulRegistries;
use crate::mesh::Mesh;
use crate::migrate::Migrations;
use crate::registry::{ProxyRegistry, Registry};
use crate::store::ConfigStore;

pub mod admin;

/// The largest request body the API reads (a token request is a few dozen bytes).
const MAX_BODY: usize = 64 * 1024;

type Reply = Response<Full<Bytes>>;

/// Shared state the status API reads.
#[derive(Clone)]
pub struct State {
    pub store: ConfigStore,
    pub mesh: Arc<ArcSwap<Mesh>>,
    pub proxies: ProxyRegistry,
    /// Every workload source: the proxy registry first, then Consul, then any others.
    pub registries: Vec<Arc<dyn Registry>>,
    pub consul: Arc<ConsulRegistries>,
    pub ads: AdsServer,
    pub metrics: Arc<MetricsRegistry>,
    pub generation: Arc<AtomicU64>,
    pub migrations: Migrations,
    /// The mesh CA, when the plane has one.
    pub ca: Option<Arc<crate::ca::MeshCa>>,
    /// `--admin-token-file`: when set, [`admin::protected`] endpoints need it.
    pub admin: Option<admin::AdminToken>,
}

pub async fn serve(listener: TcpListener, state: State, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "status API accept failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, peer, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(state: &State, peer: std::net::SocketAddr, req: Request<Incoming>) -> Reply {
    if admin::protected(req.method(), req.uri().path()) {
        if let Some(refused) = admin::check(state, peer, req.headers()) {
            return refused;
        }
    }
    if let Some(rest) = req.uri().path().strip_prefix("/api/tokens") {
        let (method, rest) = (req.method().clone(), rest.to_string());
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(reply) => return reply,
        };
        return admin::tokens(state, &method, &rest, &body);
    }
    if let Some(rest) = req.uri().path().strip_prefix("/api/migrations") {
        return migrations(state, req.method(), rest, req.uri().query().unwrap_or(""));
    }
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".into(),
        );
    }
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/ready" => text(StatusCode::OK, "ready\n".into()),
        "/metrics" => metrics(state),
        "/debug/syncz" => json_reply(StatusCode::OK, &json!(state.ads.sync().clients())),
        "/debug/config_dump" => config_dump(state, query),
        "/debug/config" => {
            let mesh = state.mesh.load();
            json_reply(StatusCode::OK, &json!({
                "store": state.store.status(),
                "services": mesh.services,
                "generation": state.generation.load(std::sync::atomic::Ordering::SeqCst),
            }))
        }
        "/debug/registry" => json_reply(StatusCode::OK, &json!({
            "registries": state.registries.iter().map(|r| json!({ "name": r.name(), "workloads": *r.watch().borrow().clone() })).collect::<Vec<_>>(),
            "consul": state.consul.status(),
                    "endpoints": state.mesh.load().endpoints,
        })),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /metrics, /debug/syncz, /debug/config_dump?proxy=ID, /debug/config, /debug/registry, /api/migrations, /api/tokens\n".into(),
        ),
    }
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(json_reply(
            StatusCode::BAD_REQUEST,
            &json!({ "error": format!("reading the request body (at most {MAX_BODY} bytes): {e}") }),
        )),
    }
}

/// `GET /api/migrations`, `GET /api/migrations/NAME`, `POST /api/migrations/NAME/COMMAND`
/// (start, promote, pause, resume, rollback); `?namespace=NS` narrows the name.
fn migrations(state: &State, method: &Method, rest: &str, query: &str) -> Reply {
    use crate::migrate::{Command, CommandError};
    let ns = query_param(query, "namespace");
    let parts: Vec<&str> = rest
        .trim_matches('/')
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let error = |e: CommandError| {
        let status = match e {
            CommandError::NotFound(_) => StatusCode::NOT_FOUND,
            CommandError::Invalid { .. } | CommandError::Ambiguous(..) => StatusCode::CONFLICT,
        };
        json_reply(status, &json!({ "error": e.to_string() }))
    };
    let ok = |v: serde_json::Value| json_reply(StatusCode::OK, &v);
    match (method, parts.as_slice()) {
        (&Method::GET, []) => ok(json!(state.migrations.statuses())),
        (&Method::GET, [name]) => match state.migrations.status(name, ns.as_deref()) {
            Ok(s) => ok(json!(s)),
            Err(e) => error(e),
        },
        (&Method::POST, [name, cmd]) => match Command::parse(cmd) {
            Some(c) => match state.migrations.command(name, ns.as_deref(), c) {
                Ok(s) => ok(json!(s)),
                Err(e) => error(e),
            },
            None => json_reply(
                StatusCode::BAD_REQUEST,
                &json!({ "error": format!("unknown command {cmd:?}: use start, promote, pause, resume or rollback") }),
            ),
        },
        _ => json_reply(
            StatusCode::NOT_FOUND,
            &json!({ "error": "use GET /api/migrations[/NAME] or POST /api/migrations/NAME/COMMAND" }),
        ),
    }
}

fn metrics(state: &State) -> Reply {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.metrics) {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        );
    }
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

fn config_dump(state: &State, query: &str) -> Reply {
    let Some(proxy) = query_param(query, "proxy") else {
        return text(
            StatusCode::BAD_REQUEST,
            "missing ?proxy=NODE_ID (see /debug/syncz for ids)\n".into(),
        );
    };
    match state.ads.sync().client(&proxy) {
        Some(c) => json_reply(
            StatusCode::OK,
            &json!({
                "node_id": c.node_id,
                "kind": c.kind,
                "generation": c.generation,
                "resources": crate::render::snapshot(&c.last_snapshot),
            }),
        ),
        None => text(
            StatusCode::NOT_FOUND,
            format!("no connected client with node id {proxy:?}\n"),
        ),
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

fn text(status: StatusCode, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_reply(status: StatusCode, v: &serde_json::Value) -> Reply {
    let body =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let mut r = Response::new(Full::new(Bytes::from(body + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
