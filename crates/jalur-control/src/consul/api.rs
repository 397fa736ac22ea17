//! Consul's HTTP API as the registry and the exporter call it: one client over every configured
//! address (failing over to the next when one cannot be reached), the ACL token sent as
//! `X-Consul-Token` and never logged, and each answer's JSON with its `X-Consul-Index`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use jalur_model::jalur::ConsulRegistry;
use serde_json::Value;

/// Consul's HTTP API at one address, with the ACL token (sent as `X-Consul-Token`, never logged).
pub(crate) struct Api {
    /// Every configured address; calls go to `current` and move to the next one when it
    /// cannot be reached (an agent restarting, a server gone).
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    pub(super) token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub(crate) fn new(spec: &ConsulRegistry) -> Api {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let mut bases: Vec<String> = spec
            .addresses
            .iter()
            .map(|a| {
                if a.starts_with("http://") || a.starts_with("https://") {
                    a.trim_end_matches('/').to_string()
                } else {
                    format!("http://{a}")
                }
            })
            .collect();
        if bases.is_empty() {
            bases.push("http://127.0.0.1:8500".into());
        }
        Api {
            bases,
            current: std::sync::atomic::AtomicUsize::new(0),
            token: read_token(spec),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// The address calls go to now.
    pub(crate) fn base(&self) -> String {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        self.bases[i % self.bases.len()].clone()
    }

    /// The address could not be reached: the next call tries the next one.
    fn fail_over(&self) {
        if self.bases.len() > 1 {
            let next = self
                .current
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            tracing::warn!(next = %self.bases[next % self.bases.len()], "Consul address unreachable; trying the next one");
        }
    }

    /// One call: the JSON answer (Null when empty) and `X-Consul-Index`.
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<(Value, u64), String> {
        self.call_within(method, path_and_query, body, Duration::from_secs(10))
            .await
    }

    pub(super) async fn call_within(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(Value, u64), String> {
        let url = format!("{}{path_and_query}", self.base());
        let mut req = http::Request::builder().method(method.clone()).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| format!("bad request {url}: {e}"))?;
        let what = format!("{method} {}", redact(path_and_query));
        let resp = match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                self.fail_over();
                return Err(format!("{what} failed: {e}"));
            }
            Err(_) => {
                self.fail_over();
                return Err(format!("{what} timed out"));
            }
        };
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading Consul's answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body).trim().to_string();
            let hint = if status == 403 {
                " (check the ACL token: ConsulRegistry spec.token)"
            } else {
                ""
            };
            return Err(format!("Consul answered {status} to {what}: {text}{hint}"));
        }
        if body.is_empty() {
            return Ok((Value::Null, index));
        }
        let json = serde_json::from_slice(&body)
            .map_err(|e| format!("Consul's answer to {what} is not JSON: {e}"))?;
        Ok((json, index))
    }
}

/// Query strings never carry a token here (it goes in a header), but strip one if a user put it
/// in an address.
fn redact(s: &str) -> String {
    match s.find("token=") {
        Some(i) => format!("{}token=REDACTED", &s[..i]),
        None => s.to_string(),
    }
}

fn read_token(spec: &ConsulRegistry) -> Option<String> {
    let t = spec.token.as_ref()?;
    if let Some(file) = &t.file {
        match std::fs::read_to_string(file) {
            Ok(s) => return Some(s.trim().to_string()),
            Err(e) => {
                tracing::error!(file = %file, error = %e, "cannot read the Consul ACL token file")
            }
        }
    }
    t.env
        .as_ref()
        .and_then(|name| std::env::var(name).ok())
        .map(|s| s.trim().to_string())
}
