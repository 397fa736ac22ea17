//! The control plane's HTTP API as the CLI calls it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A failed call: the control plane is unreachable, or it answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the control plane at {control}: {cause} (is `jalur control` running? set --control)")]
    Unreachable { control: String, cause: String },
    #[error("{message}")]
    Answered { status: u16, message: String },
}

/// `GET`/`POST` `path` on the control plane at `control`; the JSON answer, or its error.
pub async fn call(control: &str, method: http::Method, path: &str) -> Result<Value, ApiError> {
    request(control, method, path, None, None).await
}

/// The admin token the control plane's write endpoints need, from `--token-file` (the file the
/// control plane was given as `--admin-token-file`).
pub fn read_admin_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("reading the admin token from {}: {e}", file.display()))?;
    Ok(Some(text.trim().to_string()))
}

/// [`call`] with an admin token and a JSON body.
pub async fn request(
    control: &str,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Result<Value, ApiError> {
    // Accept what `jalur control` prints (`http://host:port`) as well as `host:port`.
    let control = control.trim_start_matches("http://").trim_end_matches('/');
    let unreachable = |cause: String| ApiError::Unreachable {
        control: control.to_string(),
        cause,
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{control}{path}"));
    if let Some(token) = bearer {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(v) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(body))
        .map_err(|e| unreachable(cause(&e)))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| unreachable("no answer within 10s".into()))?
        .map_err(|e| unreachable(cause(&e)))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(cause(&e)))?
        .to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).trim().to_string()));
    if status.is_success() {
        return Ok(value);
    }
    let message = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{path} answered {status}: {value}"));
    Err(ApiError::Answered {
        status: status.as_u16(),
        message,
    })
}

/// An error with its sources: hyper's own message is only "client error (Connect)"; the cause
/// (connection refused, no route to host, a DNS failure) is further down the chain.
pub fn cause(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = inner.source();
    }
    text
}
