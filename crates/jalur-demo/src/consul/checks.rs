//! Checks: their definitions as Consul's agent API takes them, and the runners with which
//! the double plays the agent (polling HTTP and TCP checks, expiring TTL checks, reaping
//! services critical for too long).

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{ConsulOpts, Status};

/// Consul's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Consul keeps at most this much of a response body as a check's output.
const MAX_OUTPUT: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CheckDef {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub kind: CheckKind,
    /// The registration's `Status`; `None` starts a new check critical.
    pub initial: Option<Status>,
    /// DeregisterCriticalServiceAfter, already raised to the configured floor.
    pub deregister_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CheckKind {
    /// Set only by the test (`ConsulDouble::set_status`).
    Static,
    Ttl {
        ttl: Duration,
    },
    Http {
        url: String,
        method: String,
        headers: Vec<(String, String)>,
        body: String,
        interval: Duration,
        timeout: Duration,
    },
    Tcp {
        addr: String,
        interval: Duration,
        timeout: Duration,
    },
}

impl CheckKind {
    /// The `Type` Consul reports.
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Static => "",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
        }
    }
}

/// Looks `name` up in a JSON object the way Consul decodes request bodies: case-insensitively,
/// snake_case spellings accepted; `null` counts as absent.
pub(super) fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let wanted = normalize(name);
    object
        .iter()
        .find(|(key, _)| normalize(key) == wanted)
        .map(|(_, value)| value)
        .filter(|value| !value.is_null())
}

fn normalize(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

pub(super) fn string_field(
    object: &Map<String, Value>,
    name: &str,
) -> Result<Option<String>, String> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!(
            "Request decode failed: {name}: expected a string, got {other}"
        )),
    }
}

/// A duration field: a Go duration string ("10s", "1m30s") or a number of nanoseconds.
pub(super) fn duration_field(
    object: &Map<String, Value>,
    name: &str,
) -> Result<Option<Duration>, String> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(text)) if text.is_empty() => Ok(None),
        Some(Value::String(text)) => parse_go_duration(text)
            .map(Some)
            .ok_or_else(|| format!("Request decode failed: {name}: invalid duration {text:?}")),
        Some(Value::Number(number)) => number
            .as_u64()
            .map(|nanos| Some(Duration::from_nanos(nanos)))
            .ok_or_else(|| format!("Request decode failed: {name}: invalid duration {number}")),
        Some(other) => Err(format!(
            "Request decode failed: {name}: expected a duration, got {other}"
        )),
    }
}

/// Parses one `Check` (or an element of `Checks`) of a service registration. `position` and
/// `count` give Consul's default check IDs: `service:<id>`, or `service:<id>:<n>` (from 1)
/// when the registration has several checks. `Ok(None)` for an empty check object.
pub(super) fn parse_check(
    value: &Value,
    service_id: &str,
    service_name: &str,
    position: usize,
    count: usize,
    opts: &ConsulOpts,
) -> Result<Option<CheckDef>, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "Request decode failed: a check must be an object, got {value}"
        ));
    };
    const UNSUPPORTED: [&str; 10] = [
        "Args",
        "ScriptArgs",
        "Script",
        "GRPC",
        "H2PING",
        "UDP",
        "AliasService",
        "AliasNode",
        "DockerContainerID",
        "OSService",
    ];
    if let Some(kind) = UNSUPPORTED
        .iter()
        .find(|kind| field(object, kind).is_some())
    {
        return Err(format!(
            "Invalid check: the Consul double runs only HTTP, TCP and TTL checks, not {kind}"
        ));
    }
    let http = string_field(object, "HTTP")?.filter(|url| !url.is_empty());
    let tcp = string_field(object, "TCP")?.filter(|addr| !addr.is_empty());
    let ttl = duration_field(object, "TTL")?.filter(|ttl| !ttl.is_zero());
    let interval = duration_field(object, "Interval")?;
    let timeout = duration_field(object, "Timeout")?
        .filter(|timeout| !timeout.is_zero())
        .unwrap_or(DEFAULT_TIMEOUT);

    let kinds = [http.is_some(), tcp.is_some(), ttl.is_some()]
        .iter()
        .filter(|given| **given)
        .count();
    if kinds == 0 {
        if object.values().all(Value::is_null) {
            return Ok(None);
        }
        return Err("Invalid check: must include one of TTL, HTTP or TCP \
                    (the Consul double's subset of check types)"
            .to_string());
    }
    if kinds > 1 {
        return Err("Invalid check: must include exactly one of TTL, HTTP or TCP".to_string());
    }
    let polled_interval = || match interval {
        Some(interval) if !interval.is_zero() => Ok(interval.max(opts.min_check_interval)),
        _ => Err(
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or \
                  GRPC checks"
                .to_string(),
        ),
    };
    let kind = if let Some(url) = http {
        let method = string_field(object, "Method")?
            .filter(|method| !method.is_empty())
            .unwrap_or_else(|| "GET".to_string());
        CheckKind::Http {
            url,
            method,
            headers: parse_headers(field(object, "Header"))?,
            body: string_field(object, "Body")?.unwrap_or_default(),
            interval: polled_interval()?,
            timeout,
        }
    } else if let Some(addr) = tcp {
        CheckKind::Tcp {
            addr,
            interval: polled_interval()?,
            timeout,
        }
    } else {
        CheckKind::Ttl {
            ttl: ttl.unwrap_or(DEFAULT_TIMEOUT),
        }
    };

    let initial = match string_field(object, "Status")?.filter(|status| !status.is_empty()) {
        None => None,
        Some(status) => Some(
            Status::parse(&status).ok_or_else(|| format!("Invalid check status: {status:?}"))?,
        ),
    };
    let id = string_field(object, "CheckID")?
        .or(string_field(object, "ID")?)
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| {
            if count > 1 {
                format!("service:{service_id}:{}", position + 1)
            } else {
                format!("service:{service_id}")
            }
        });
    let name = string_field(object, "Name")?
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("Service '{service_name}' check"));
    let deregister_after = duration_field(object, "DeregisterCriticalServiceAfter")?
        .filter(|after| !after.is_zero())
        .map(|after| after.max(opts.min_deregister_critical_after));
    Ok(Some(CheckDef {
        id,
        name,
        notes: string_field(object, "Notes")?.unwrap_or_default(),
        kind,
        initial,
        deregister_after,
    }))
}

/// `Header`: `{"Name": ["value", ...]}` as Consul takes it (a single string accepted too).
fn parse_headers(value: Option<&Value>) -> Result<Vec<(String, String)>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let Value::Object(object) = value else {
        return Err(format!(
            "Request decode failed: Header: expected an object, got {value}"
        ));
    };
    let mut headers = Vec::new();
    for (name, values) in object {
        match values {
            Value::String(single) => headers.push((name.clone(), single.clone())),
            Value::Array(values) => {
                for value in values {
                    let Value::String(value) = value else {
                        return Err(format!(
                            "Request decode failed: Header {name}: expected strings"
                        ));
                    };
                    headers.push((name.clone(), value.clone()));
                }
            }
            other => {
                return Err(format!(
                    "Request decode failed: Header {name}: expected a list, got {other}"
                ))
            }
        }
    }
    Ok(headers)
}

pub(super) async fn probe_tcp(addr: &str, timeout: Duration) -> (Status, String) {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => (Status::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(err)) => (Status::Critical, format!("dial tcp {addr}: {err}")),
        Err(_) => (Status::Critical, format!("dial tcp {addr}: i/o timeout")),
    }
}

/// An HTTP check as Consul runs it: 2xx passing, 429 warning, anything else (or no answer
/// within the timeout) critical; the output names the request, the status and the body.
pub(super) async fn probe_http(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> (Status, String) {
    match tokio::time::timeout(timeout, http_request(url, method, headers, body)).await {
        Ok(Ok((code, reason, text))) => {
            let status = match code {
                200..=299 => Status::Passing,
                429 => Status::Warning,
                _ => Status::Critical,
            };
            (
                status,
                format!("HTTP {method} {url}: {code} {reason} Output: {text}"),
            )
        }
        Ok(Err(err)) => (Status::Critical, format!("{method} {url:?}: {err}")),
        Err(_) => (
            Status::Critical,
            format!(
                "{method} {url:?}: context deadline exceeded \
                 (Client.Timeout exceeded while awaiting headers)"
            ),
        ),
    }
}

/// Ends the connection task however the request ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_request(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String, String), String> {
    let uri: http::Uri = url.parse().map_err(|err| format!("invalid URL: {err}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("the Consul double probes only http:// URLs".to_string());
    }
    let authority = uri
        .authority()
        .ok_or_else(|| "the URL has no host".to_string())?
        .clone();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|err| format!("dial tcp {authority}: {err}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    let _connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let path = uri
        .path_and_query()
        .map(|path| path.as_str())
        .unwrap_or("/");
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, "Consul Health Check")
        .header(ACCEPT, "text/plain, text/*, */*")
        .header(CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|err| format!("bad request: {err}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| format!("request: {err}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| format!("reading the body: {err}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_OUTPUT)]).into_owned();
    Ok((
        status.as_u16(),
        status.canonical_reason().unwrap_or("").to_string(),
        text,
    ))
}

/// Parses a Go duration ("300ms", "1.5s", "1m30s", "2h"); `None` when it is not one or is
/// negative.
pub(super) fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    let mut nanos = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += number * factor;
        rest = &rest[unit_len..];
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(nanos as u64))
}

/// A random duration in `[0, max)`.
pub(super) fn random_below(max: Duration) -> Duration {
    let max_nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(..max_nanos))
}
