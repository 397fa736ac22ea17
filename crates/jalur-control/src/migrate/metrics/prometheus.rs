//! [`PrometheusSource`]: asks a Prometheus server that scrapes the proxies, with three instant
//! queries per path (requests, errors, p99) over `increase(..[Ws])`.
//!
//! `increase` needs at least two samples of a series inside the range, so the scrape interval
//! of the proxies' job must be well under the window: a window of at least four scrape
//! intervals (e.g. 15 s scrapes → 60 s windows) gives stable numbers; with less, a path's
//! counts come out as 0 or jump between evaluations.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{MetricsError, MetricsSource, PathSelector, PathStats, GRPC_ERROR_CODES};

/// One query, connect to last byte.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 4 << 20;

pub struct PrometheusSource {
    /// Without a trailing slash, e.g. `http://127.0.0.1:9090`.
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl PrometheusSource {
    /// `base_url` is Prometheus's address, `http://host:9090` (a bare `host:port` gets
    /// `http://`); a path prefix (`http://host/prometheus`) is kept.
    pub fn new(base_url: &str) -> PrometheusSource {
        let base = base_url.trim().trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        PrometheusSource {
            base,
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    async fn path_stats(
        &self,
        path: &PathSelector,
        window: Duration,
    ) -> Result<PathStats, MetricsError> {
        let queries = Queries::new(path, window);
        let (requests, errors, p99) = futures::future::join3(
            self.query(&queries.requests),
            self.query(&queries.errors),
            self.query(&queries.p99),
        )
        .await;
        Ok(PathStats {
            requests: requests?.unwrap_or(0.0),
            errors: errors?.unwrap_or(0.0),
            p99_ms: p99?,
        })
    }

    /// The single value of an instant query; `None` for an empty result or NaN.
    async fn query(&self, promql: &str) -> Result<Option<f64>, MetricsError> {
        let url = format!("{}/api/v1/query?query={}", self.base, url_encode(promql));
        let (status, body) = match tokio::time::timeout(QUERY_TIMEOUT, self.get(&url)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(cause)) => return Err(MetricsError::Unreachable { url, cause }),
            Err(_) => {
                let cause = format!("no answer within {QUERY_TIMEOUT:?}");
                return Err(MetricsError::Unreachable { url, cause });
            }
        };
        let json: Result<Value, _> = serde_json::from_slice(&body);
        let json = match (status, json) {
            (200, Ok(json)) => json,
            // Prometheus explains a failed query in JSON, with a 4xx or 5xx status.
            (_, Ok(json)) if json["status"] == "error" => json,
            (200, Err(err)) => {
                let cause = format!("not JSON: {err}");
                return Err(MetricsError::BadAnswer { url, cause });
            }
            (status, _) => {
                let message = String::from_utf8_lossy(&body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect();
                return Err(MetricsError::Status {
                    url,
                    status,
                    message,
                });
            }
        };
        read_answer(&json).map_err(|err| match err {
            Answer::Failed {
                error_type,
                message,
            } => MetricsError::Query {
                url: url.clone(),
                error_type,
                message,
            },
            Answer::Unreadable(cause) => MetricsError::BadAnswer {
                url: url.clone(),
                cause,
            },
        })
    }

    async fn get(&self, url: &str) -> Result<(u16, Bytes), String> {
        let request = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|err| format!("bad URL: {err}"))?;
        let response = self.client.request(request).await.map_err(|err| {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        })?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|err| format!("reading the answer: {err}"))?
            .to_bytes();
        Ok((status, body))
    }
}

impl MetricsSource for PrometheusSource {
    fn describe(&self) -> String {
        format!("prometheus {}", self.base)
    }

    fn stats<'a>(
        &'a self,
        path: &'a PathSelector,
        window: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PathStats, MetricsError>> + Send + 'a>> {
        Box::pin(self.path_stats(path, window))
    }
}

/// The PromQL for one path and window.
#[derive(Debug, PartialEq)]
pub(super) struct Queries {
    pub requests: String,
    pub errors: String,
    pub p99: String,
}

impl Queries {
    pub(super) fn new(path: &PathSelector, window: Duration) -> Queries {
        // Whole milliseconds, rounded down (never reaching back past the window's start, e.g.
        // a migration stage's hold), at least one; whole seconds read as such.
        let ms = window.as_millis().max(1);
        let range = if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        };
        let mut selector = format!(
            "reporter=\"source\",destination_service=\"{}\"",
            promql_escape(&path.destination_service)
        );
        if let Some(version) = &path.destination_version {
            selector.push_str(&format!(
                ",destination_version=\"{}\"",
                promql_escape(version)
            ));
        }
        let grpc: Vec<String> = GRPC_ERROR_CODES.iter().map(u32::to_string).collect();
        let grpc = grpc.join("|");
        // The same split as the scraper's: an HTTP status of 500 and up, or else a failing gRPC
        // status, so a request with both counts once. `or vector(0)` keeps one empty side from
        // emptying the sum.
        let http_5xx = r#"response_code=~"[5-9][0-9][0-9]""#;
        let not_5xx = r#"response_code!~"[5-9][0-9][0-9]""#;
        Queries {
            requests: format!("sum(increase(istio_requests_total{{{selector}}}[{range}]))"),
            errors: format!(
                "(sum(increase(istio_requests_total{{{selector},{http_5xx}}}[{range}])) or vector(0)) + \
                 (sum(increase(istio_requests_total{{{selector},{not_5xx},grpc_response_status=~\"{grpc}\"}}[{range}])) or vector(0))"
            ),
            p99: format!(
                "histogram_quantile(0.99, sum by (le) (increase(istio_request_duration_milliseconds_bucket{{{selector}}}[{range}])))"
            ),
        }
    }
}

/// Why an answer holds no value.
enum Answer {
    Failed { error_type: String, message: String },
    Unreadable(String),
}

/// `{"status":"success","data":{"resultType":"vector","result":[{"value":[ts,"12"]}]}}` → 12.
fn read_answer(json: &Value) -> Result<Option<f64>, Answer> {
    if json["status"] != "success" {
        return Err(Answer::Failed {
            error_type: json["errorType"].as_str().unwrap_or("unknown").to_string(),
            message: json["error"].as_str().unwrap_or("(no message)").to_string(),
        });
    }
    let data = &json["data"];
    let value = match data["resultType"].as_str() {
        Some("vector") => {
            let result = data["result"]
                .as_array()
                .ok_or_else(|| Answer::Unreadable("data.result is not a list".into()))?;
            match result.as_slice() {
                [] => return Ok(None),
                [one] => &one["value"],
                more => {
                    return Err(Answer::Unreadable(format!(
                        "expected one series, got {}",
                        more.len()
                    )))
                }
            }
        }
        Some("scalar") => &data["result"],
        other => {
            return Err(Answer::Unreadable(format!(
                "result type {other:?}, expected a vector"
            )))
        }
    };
    let text = value[1]
        .as_str()
        .ok_or_else(|| Answer::Unreadable(format!("value {value} is not [time, \"number\"]")))?;
    let number = match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => text
            .parse::<f64>()
            .map_err(|_| Answer::Unreadable(format!("value {text:?} is not a number")))?,
    };
    Ok((!number.is_nan()).then_some(number))
}

/// A PromQL double-quoted string's content.
fn promql_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(super) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
