//! The double's HTTP side: accepting connections, ACLs, routing, blocking queries, and the
//! agent API's request bodies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::checks::{self, field, parse_go_duration, string_field};
use super::shared::Shared;
use super::state::{Registration, ServiceDef, State, TtlError, SERVER_ADDR};
use super::{ConsulOpts, RecordedRequest, Status, Weights};

/// Consul's default blocking wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Consul's longest blocking wait.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// The largest request body the double reads.
const MAX_BODY: usize = 1 << 20;

type Reply = Response<Full<Bytes>>;
type Params = Vec<(String, String)>;

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                Err(err) => {
                    tracing::warn!(%err, "Consul double: accept failed");
                    // Back off: errors such as EMFILE persist, and retrying at once would spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let service = service_fn(move |request| handle(request, shared.clone()));
    if let Err(err) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "Consul double: connection ended with an error");
    }
}

async fn handle(request: Request<Incoming>, shared: Arc<Shared>) -> Result<Reply, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let params = parse_query(&query);
    let token = token_of(&parts.headers, &params);
    let seq = shared.record_request(RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        query,
        token: token.clone(),
        status: None,
    });
    let reply = route(
        &shared,
        &parts.method,
        &path,
        &params,
        token.as_deref(),
        body,
    )
    .await;
    shared.record_status(seq, reply.status().as_u16());
    Ok(reply)
}

/// The request's ACL token: `X-Consul-Token`, else `Authorization: Bearer`, else `?token=`.
fn token_of(headers: &HeaderMap, params: &Params) -> Option<String> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    header(http::HeaderName::from_static("x-consul-token"))
        .filter(|token| !token.is_empty())
        .or_else(|| {
            header(AUTHORIZATION)
                .and_then(|value| value.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
        })
        .or_else(|| param(params, "token").map(str::to_string))
        .filter(|token| !token.is_empty())
}

fn authorize(opts: &ConsulOpts, token: Option<&str>, method: &Method) -> Result<(), Fail> {
    let Some(required) = &opts.acl_token else {
        return Ok(());
    };
    let access = if method == Method::GET {
        "read"
    } else {
        "write"
    };
    match token {
        Some(token) if token == required => Ok(()),
        Some(_) => Err(fail(StatusCode::FORBIDDEN, "ACL not found")),
        None => Err(fail(
            StatusCode::FORBIDDEN,
            &format!(
                "Permission denied: anonymous token lacks permission 'service:{access}'. \
                 The anonymous token is used implicitly when a request does not specify a \
                 token."
            ),
        )),
    }
}

/// An error answer: a status and a plain-text body, as Consul writes its errors.
type Fail = (StatusCode, String);

fn fail(status: StatusCode, message: &str) -> Fail {
    (status, message.to_string())
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &Params,
    token: Option<&str>,
    body: Incoming,
) -> Reply {
    match dispatch(shared, method, path, params, token, body).await {
        Ok(reply) => reply,
        Err((status, message)) => text(status, &message),
    }
}

fn only(method: &Method, allowed: Method) -> Result<(), Fail> {
    if *method == allowed {
        Ok(())
    } else {
        Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("method {method} not allowed"),
        ))
    }
}

async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &Params,
    token: Option<&str>,
    body: Incoming,
) -> Result<Reply, Fail> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|segment| percent_decode(segment, false))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if !path.starts_with("/v1/status/") {
        authorize(&shared.opts, token, method)?;
    }
    let opts = &shared.opts;
    let agent_node = &opts.node_name;
    match segments.as_slice() {
        ["v1", "status", "leader"] => {
            only(method, Method::GET)?;
            check_dc(opts, params)?;
            Ok(json_reply(&json!(SERVER_ADDR)))
        }
        ["v1", "status", "peers"] => {
            only(method, Method::GET)?;
            check_dc(opts, params)?;
            Ok(json_reply(&json!([SERVER_ADDR])))
        }
        ["v1", "catalog", "services"] => {
            only(method, Method::GET)?;
            check_dc(opts, params)?;
            check_unsupported(params)?;
            blocking(shared, params, |state| {
                (state.catalog_query_index(), state.catalog_services())
            })
            .await
        }
        ["v1", "catalog", "service", name] if !name.is_empty() => {
            only(method, Method::GET)?;
            check_dc(opts, params)?;
            check_unsupported(params)?;
            let tags = all_params(params, "tag");
            blocking(shared, params, |state| {
                (
                    state.service_query_index(name),
                    state.catalog_entries(name, &tags),
                )
            })
            .await
        }
        ["v1", "health", "service", name] if !name.is_empty() => {
            only(method, Method::GET)?;
            check_dc(opts, params)?;
            check_unsupported(params)?;
            let passing = bool_param(params, "passing")
                .map_err(|()| fail(StatusCode::BAD_REQUEST, "Invalid value for ?passing"))?;
            let tags = all_params(params, "tag");
            blocking(shared, params, |state| {
                (
                    state.service_query_index(name),
                    state.health_entries(name, &tags, passing),
                )
            })
            .await
        }
        ["v1", "agent", "services"] => {
            only(method, Method::GET)?;
            Ok(json_reply(&shared.state().agent_services(agent_node)))
        }
        ["v1", "agent", "checks"] => {
            only(method, Method::GET)?;
            Ok(json_reply(&shared.state().agent_checks(agent_node)))
        }
        ["v1", "agent", "service", "register"] => {
            only(method, Method::PUT)?;
            register(shared, params, body).await
        }
        ["v1", "agent", "service", "deregister", id] => {
            only(method, Method::PUT)?;
            deregister(shared, id)
        }
        ["v1", "agent", "check", op @ ("pass" | "warn" | "fail"), id] => {
            only(method, Method::PUT)?;
            let status = match *op {
                "pass" => Status::Passing,
                "warn" => Status::Warning,
                _ => Status::Critical,
            };
            let note = param(params, "note").unwrap_or("").to_string();
            update_ttl(shared, id, status, note)
        }
        ["v1", "agent", "check", "update", id] => {
            only(method, Method::PUT)?;
            update_check(shared, id, body).await
        }
        _ => Err(fail(StatusCode::NOT_FOUND, "404 page not found")),
    }
}

fn check_dc(opts: &ConsulOpts, params: &Params) -> Result<(), Fail> {
    match param(params, "dc") {
        Some(dc) if !dc.is_empty() && dc != opts.datacenter => Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No path to datacenter",
        )),
        _ => Ok(()),
    }
}

/// Parameters that would change an answer and that the double does not implement: refused
/// loudly rather than ignored.
fn check_unsupported(params: &Params) -> Result<(), Fail> {
    for name in ["filter", "node-meta"] {
        if param(params, name).is_some() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                &format!("the Consul double does not implement ?{name}"),
            ));
        }
    }
    Ok(())
}

/// Answers a blocking query: at once without `index` (or with 0), else when the query's index
/// moves past `index`, when the index is reset, or when the wait elapses.
async fn blocking<F>(shared: &Shared, params: &Params, render: F) -> Result<Reply, Fail>
where
    F: Fn(&State) -> (u64, Value),
{
    let wait = match param(params, "wait") {
        None | Some("") => None,
        Some(wait) => Some(
            parse_go_duration(wait)
                .ok_or_else(|| fail(StatusCode::BAD_REQUEST, "Invalid wait time"))?,
        ),
    };
    let min_index = match param(params, "index") {
        None | Some("") => 0,
        Some(index) => index
            .parse::<u64>()
            .map_err(|_| fail(StatusCode::BAD_REQUEST, "Invalid index"))?,
    };
    let deadline = Instant::now() + blocking_wait(&shared.opts, wait);
    let mut changes = shared.subscribe();
    let mut first_epoch = None;
    loop {
        changes.borrow_and_update();
        let (index, epoch, body) = {
            let state = shared.state();
            let (index, body) = render(&state);
            (index.max(1), state.epoch(), body)
        };
        let first_epoch = *first_epoch.get_or_insert(epoch);
        if min_index == 0 || index > min_index || epoch != first_epoch || Instant::now() >= deadline
        {
            return Ok(indexed_json(index, &body));
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => return Ok(indexed_json(index, &body)),
        }
    }
}

/// `wait` as Consul takes it: 5 minutes when absent or 0, at most 10 minutes (and at most
/// the configured cap), plus up to wait/16 of jitter.
fn blocking_wait(opts: &ConsulOpts, wait: Option<Duration>) -> Duration {
    let wait = match wait {
        Some(wait) if !wait.is_zero() => wait,
        _ => DEFAULT_WAIT,
    };
    let wait = wait.min(MAX_WAIT).min(opts.max_wait);
    if opts.wait_jitter {
        wait + checks::random_below(wait / 16)
    } else {
        wait
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Fail> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(|body| body.to_bytes())
        .map_err(|err| {
            fail(
                StatusCode::BAD_REQUEST,
                &format!("Request decode failed: {err}"),
            )
        })
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Fail> {
    serde_json::from_slice(body).map_err(|err| {
        fail(
            StatusCode::BAD_REQUEST,
            &format!("Request decode failed: {err}"),
        )
    })
}

async fn register(shared: &Arc<Shared>, params: &Params, body: Incoming) -> Result<Reply, Fail> {
    let value: Value = decode(&read_body(body).await?)?;
    let replace = bool_param(params, "replace-existing-checks").map_err(|()| {
        fail(
            StatusCode::BAD_REQUEST,
            "Invalid value for ?replace-existing-checks",
        )
    })?;
    let registration = parse_registration(&value, &shared.opts, replace)
        .map_err(|message| fail(StatusCode::BAD_REQUEST, &message))?;
    shared.register(registration);
    Ok(empty(StatusCode::OK))
}

/// A `PUT /v1/agent/service/register` body, as Consul decodes it (field names matched
/// case-insensitively).
fn parse_registration(
    value: &Value,
    opts: &ConsulOpts,
    replace_existing_checks: bool,
) -> Result<Registration, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "Request decode failed: expected a JSON object, got {value}"
        ));
    };
    let name = string_field(object, "Name")?
        .filter(|name| !name.is_empty())
        .ok_or_else(|| "Missing service name".to_string())?;
    let id = string_field(object, "ID")?
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| name.clone());
    let tags = match field(object, "Tags") {
        None => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .map(|tag| match tag {
                Value::String(tag) => Ok(tag.clone()),
                other => Err(format!(
                    "Request decode failed: Tags: expected strings, got {other}"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "Request decode failed: Tags: expected a list, got {other}"
            ))
        }
    };
    let port = match field(object, "Port") {
        None => 0,
        Some(port) => port
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
            .ok_or_else(|| format!("Request decode failed: Port: invalid port {port}"))?,
    };
    let meta = match field(object, "Meta") {
        None => BTreeMap::new(),
        Some(Value::Object(meta)) => meta
            .iter()
            .map(|(key, value)| match value {
                Value::String(value) => Ok((key.clone(), value.clone())),
                other => Err(format!(
                    "Invalid Service Meta: value for key {key:?} must be a string, got {other}"
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "Request decode failed: Meta: expected an object, got {other}"
            ))
        }
    };
    let weights = match field(object, "Weights") {
        None => Weights::default(),
        Some(Value::Object(weights)) => {
            let number = |name: &str| -> Result<u32, String> {
                match field(weights, name) {
                    None => Ok(0),
                    Some(value) => value
                        .as_u64()
                        .and_then(|value| u32::try_from(value).ok())
                        .ok_or_else(|| {
                            format!("Request decode failed: Weights.{name}: invalid {value}")
                        }),
                }
            };
            let weights = Weights {
                passing: number("Passing")?,
                warning: number("Warning")?,
            };
            if weights.passing < 1 {
                return Err("Invalid Weights: Passing must be greater than 0".to_string());
            }
            weights
        }
        Some(other) => {
            return Err(format!(
                "Request decode failed: Weights: expected an object, got {other}"
            ))
        }
    };
    let enable_tag_override = match field(object, "EnableTagOverride") {
        None => false,
        Some(Value::Bool(value)) => *value,
        Some(other) => {
            return Err(format!(
                "Request decode failed: EnableTagOverride: expected a boolean, got {other}"
            ))
        }
    };

    // `Check` comes first, then `Checks`, as in Consul's ServiceDefinition.CheckTypes.
    let mut definitions: Vec<&Value> = Vec::new();
    if let Some(check) = field(object, "Check") {
        let empty = matches!(check, Value::Object(check) if check.values().all(Value::is_null));
        if !empty {
            definitions.push(check);
        }
    }
    match field(object, "Checks") {
        None => {}
        Some(Value::Array(checks)) => definitions.extend(checks.iter()),
        Some(other) => {
            return Err(format!(
                "Request decode failed: Checks: expected a list, got {other}"
            ))
        }
    }
    let count = definitions.len();
    let mut checks = Vec::new();
    for (position, definition) in definitions.into_iter().enumerate() {
        if let Some(check) = checks::parse_check(definition, &id, &name, position, count, opts)? {
            checks.push(check);
        }
    }
    Ok(Registration {
        service: ServiceDef {
            id,
            name,
            tags,
            address: string_field(object, "Address")?.unwrap_or_default(),
            port,
            meta,
            weights,
            enable_tag_override,
            node: opts.node_name.clone(),
        },
        node_address: None,
        checks,
        replace_existing_checks,
    })
}

fn deregister(shared: &Arc<Shared>, id: &str) -> Result<Reply, Fail> {
    let local = shared.state().is_agent_service(id, &shared.opts.node_name);
    if local && shared.deregister(id) {
        Ok(empty(StatusCode::OK))
    } else {
        Err(fail(
            StatusCode::NOT_FOUND,
            &format!(
                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the \
                 service name."
            ),
        ))
    }
}

fn update_ttl(
    shared: &Arc<Shared>,
    id: &str,
    status: Status,
    output: String,
) -> Result<Reply, Fail> {
    match shared.update_ttl(id, status, output) {
        Ok(()) => Ok(empty(StatusCode::OK)),
        Err(TtlError::Unknown) => Err(fail(
            StatusCode::NOT_FOUND,
            &format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check \
                 name."
            ),
        )),
        Err(TtlError::NotTtl) => Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("CheckID {id:?} does not have associated TTL"),
        )),
    }
}

/// `PUT /v1/agent/check/update/:id` with `{"Status": ..., "Output": ...}`.
async fn update_check(shared: &Arc<Shared>, id: &str, body: Incoming) -> Result<Reply, Fail> {
    let object: Map<String, Value> = decode(&read_body(body).await?)?;
    let bad = |message: String| fail(StatusCode::BAD_REQUEST, &message);
    let status = string_field(&object, "Status")
        .map_err(bad)?
        .unwrap_or_default();
    let output = string_field(&object, "Output")
        .map_err(bad)?
        .unwrap_or_default();
    let status = Status::parse(&status).ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            &format!("Invalid check status: {status:?}"),
        )
    })?;
    update_ttl(shared, id, status, output)
}

fn json_reply(body: &Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    reply.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    reply
}

/// A blocking endpoint's answer: JSON with `X-Consul-Index` and the leader headers.
fn indexed_json(index: u64, body: &Value) -> Reply {
    let mut reply = json_reply(body);
    let headers = reply.headers_mut();
    headers.insert("x-consul-index", http::HeaderValue::from(index));
    headers.insert(
        "x-consul-knownleader",
        http::HeaderValue::from_static("true"),
    );
    headers.insert("x-consul-lastcontact", http::HeaderValue::from_static("0"));
    reply
}

fn text(status: StatusCode, body: &str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

fn empty(status: StatusCode) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = status;
    reply
}

/// Query parameters in order, percent-decoded (`+` as a space, as Go's url.ParseQuery does).
pub(super) fn parse_query(query: &str) -> Params {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn all_params(params: &Params, name: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
        .collect()
}

/// A boolean parameter as Consul reads one: absent false, bare (`?passing`) true, else
/// Go's strconv.ParseBool.
fn bool_param(params: &Params, name: &str) -> Result<bool, ()> {
    match param(params, name) {
        None => Ok(false),
        Some("") => Ok(true),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(()),
    }
}

/// Go's `url.PathUnescape` (`plus_is_space` false) or `url.QueryUnescape` (true): `+` is a space
/// only in a query, and `%2B` is always a plus.
fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let text = if plus_is_space {
        std::borrow::Cow::Owned(text.replace('+', " "))
    } else {
        std::borrow::Cow::Borrowed(text)
    };
    percent_encoding::percent_decode_str(&text)
        .decode_utf8_lossy()
        .into_owned()
}
