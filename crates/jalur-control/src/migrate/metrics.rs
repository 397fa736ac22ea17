//! What a migration gate reads about one traffic path: requests, errors and p99 latency over a
//! recent window, from Istio's standard metrics as the callers report them
//! (`reporter="source"`: fronting gateways and sidecars on their outbound requests).
//!
//! Two sources behind one trait: [`ScrapeSource`] scrapes the proxies' `/stats/prometheus`
//! itself and keeps a short history per proxy; [`PrometheusSource`] asks a Prometheus server
//! that already scrapes them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

mod prometheus;
mod scrape;
mod text;

pub use prometheus::PrometheusSource;
pub use scrape::ScrapeSource;

/// The traffic path a gate looks at: requests to `destination_service` (Istio's
/// `destination_service` label, the host the caller asked for), optionally only those that
/// reached `destination_version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathSelector {
    pub destination_service: String,
    pub destination_version: Option<String>,
}

impl PathSelector {
    fn matches(&self, service: &str, version: &str) -> bool {
        self.destination_service == service
            && self
                .destination_version
                .as_deref()
                .is_none_or(|want| want == version)
    }
}

impl std::fmt::Display for PathSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.destination_service)?;
        match &self.destination_version {
            Some(version) => write!(f, " (version {version})"),
            None => Ok(()),
        }
    }
}

/// Requests and errors counted over a window, and the p99 latency of those requests.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PathStats {
    pub requests: f64,
    pub errors: f64,
    /// `None` when there were no requests (or no latency histogram for them).
    pub p99_ms: Option<f64>,
}

impl PathStats {
    /// errors / requests; `None` when there were no requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.errors / self.requests)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("no proxy metrics yet ({targets} scrape targets): {detail}")]
    NoScrapeData { targets: usize, detail: String },
    #[error("Prometheus at {url} cannot be reached: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("Prometheus at {url} answered HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("Prometheus at {url} rejected the query ({error_type}): {message}")]
    Query {
        url: String,
        error_type: String,
        message: String,
    },
    #[error("Prometheus at {url} gave an answer jalur cannot read: {cause}")]
    BadAnswer { url: String, cause: String },
}

/// Where a migration gate gets its numbers from.
pub trait MetricsSource: Send + Sync {
    /// For logs and status: "scraping 3 proxies", "prometheus http://127.0.0.1:9090".
    fn describe(&self) -> String;

    /// Requests, errors and p99 latency of `path` over the last `window`.
    fn stats<'a>(
        &'a self,
        path: &'a PathSelector,
        window: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<PathStats, MetricsError>> + Send + 'a>>;
}

/// The proxies' stats endpoints (15090 or the admin port), asked again on every scrape.
pub type Targets = Arc<dyn Fn() -> Vec<SocketAddr> + Send + Sync>;

/// gRPC statuses that count as errors: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_ERROR_CODES: [u32; 6] = [2, 4, 8, 13, 14, 15];

/// Whether a request with these `response_code` / `grpc_response_status` label values failed.
fn is_error(response_code: &str, grpc_response_status: &str) -> bool {
    let http_error = response_code.parse::<u32>().is_ok_and(|code| code >= 500);
    let grpc_error = grpc_response_status
        .parse::<u32>()
        .is_ok_and(|code| GRPC_ERROR_CODES.contains(&code));
    http_error || grpc_error
}

/// The `q` quantile of a cumulative histogram given as (upper bound, count) pairs, the way
/// Prometheus's `histogram_quantile` computes it: linear interpolation inside the bucket the
/// rank falls in, the lower bound of the `+Inf` bucket when it falls there. `None` without
/// observations or without a `+Inf` bucket.
fn histogram_quantile(q: f64, buckets: &mut [(f64, f64)]) -> Option<f64> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (last_bound, observations) = *buckets.last()?;
    if buckets.len() < 2 || last_bound != f64::INFINITY || observations <= 0.0 {
        return None;
    }
    // Sums of deltas of separately scraped buckets can be slightly non-monotonic.
    let mut highest = 0.0f64;
    for bucket in buckets.iter_mut() {
        highest = highest.max(bucket.1);
        bucket.1 = highest;
    }
    let observations = buckets[buckets.len() - 1].1;
    let mut rank = q * observations;
    let b = buckets
        .iter()
        .position(|&(_, count)| count >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    let (end, mut count) = buckets[b];
    if b == 0 && end <= 0.0 {
        return Some(end);
    }
    let mut start = 0.0;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    if count <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank / count))
}

/// Counts summed over series (and proxies) while a window is evaluated.
#[derive(Debug, Default)]
struct Tally {
    requests: f64,
    errors: f64,
    /// Cumulative latency buckets by upper bound (its bits: the bounds are exact copies).
    buckets: std::collections::HashMap<u64, f64>,
}

impl Tally {
    fn finish(self) -> PathStats {
        let mut buckets: Vec<(f64, f64)> = self
            .buckets
            .into_iter()
            .map(|(bound, count)| (f64::from_bits(bound), count))
            .collect();
        let p99_ms = if self.requests > 0.0 {
            histogram_quantile(0.99, &mut buckets)
        } else {
            None
        };
        PathStats {
            requests: self.requests,
            errors: self.errors,
            p99_ms,
        }
    }
}

#[cfg(test)]
mod tests;
