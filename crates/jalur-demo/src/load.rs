//! An open-loop, fixed-rate load generator: the built-in load of `jalur demo` and the load of
//! the migration drills. It records every response so a caller can ask afterwards which
//! instance answered, what failed and when.
//!
//! Open loop: a scheduler wakes every couple of milliseconds and sends
//! `floor(elapsed × rate) − sent` requests, each in its own task, whether or not earlier ones
//! have answered, so a slow or failing target shows up as errors and latency rather than as a
//! lower rate. Targets are chosen by weight with smooth weighted round-robin (as nginx does):
//! deterministic, and evenly interleaved.
//!
//! Each target has its own pooled hyper-util client whose connector always dials the target's
//! address, so the request can carry any authority (`Host` for HTTP/1.1, `:authority` for
//! HTTP/2): HTTP targets get `GET /` over HTTP/1.1 with keep-alive, HTTP/2 targets `GET /` over
//! h2c, gRPC targets a unary `POST /jalur.demo.Echo/Call` over h2c with one small framed
//! message. A response is ok when it is 200 and, for gRPC, ends with `grpc-status: 0`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::app::INSTANCE_HEADER;
use crate::grpc;

/// How often the scheduler catches up with the rate.
const TICK: Duration = Duration::from_millis(2);
/// How long [`LoadGen::stop`] waits past the request timeout for the last answers.
const STOP_GRACE: Duration = Duration::from_millis(250);
/// The path of the gRPC method called on gRPC targets (any path works on a `SampleApp`).
pub const GRPC_PATH: &str = "/jalur.demo.Echo/Call";
const GRPC_MESSAGE: &[u8] = b"jalur-demo";

/// How a target is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadProtocol {
    /// `GET /` over HTTP/1.1.
    Http,
    /// `GET /` over HTTP/2 cleartext (prior knowledge).
    Http2,
    /// A unary gRPC call over HTTP/2 cleartext.
    Grpc,
}

/// One destination of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadTarget {
    /// A name for reports (e.g. `legacy` or `mesh`).
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `Host` / `:authority` to send; empty means `addr`.
    pub authority: String,
    pub protocol: LoadProtocol,
    /// The share of the requests this target gets, relative to the others; 0 gets none.
    pub weight: u32,
}

/// What load to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadSpec {
    /// Requests per second, over all targets together.
    pub rate: u32,
    pub targets: Vec<LoadTarget>,
    /// How long one request may take, response body included, before it counts as failed.
    pub timeout: Duration,
}

/// One request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the request was sent, since the load generator started.
    pub at: Duration,
    /// When it finished (answered, failed or timed out), since the load generator started.
    pub done: Duration,
    /// The index of its target in [`LoadSpec::targets`].
    pub target: usize,
    /// The `x-jalur-instance` header of the response.
    pub instance: Option<String>,
    /// HTTP 200 and, for gRPC, `grpc-status: 0`.
    pub ok: bool,
    /// The HTTP status; 0 when no response arrived.
    pub status: u16,
    /// The `grpc-status` of the trailers (or of the headers of a trailers-only response).
    pub grpc_status: Option<u32>,
    pub latency: Duration,
    /// Why no complete response arrived (connect, protocol, time-out), the `grpc-message`
    /// of a failed gRPC call, or the first line of a non-200 answer's body (with the proxy's
    /// `x-jalur-flags`).
    pub error: Option<String>,
}

/// Counts over the samples so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadSummary {
    /// Requests sent.
    pub sent: u64,
    /// Requests finished (ok or failed); `sent - done` are in flight.
    pub done: u64,
    pub ok: u64,
    pub failed: u64,
    /// Per target, in [`LoadSpec::targets`] order: name, ok, failed.
    pub by_target: Vec<(String, u64, u64)>,
}

/// Counts the ok samples sent in `[from, to)` since the start, and how many of them `is_b`
/// (e.g. answered by the new version): `(total, b)`.
pub fn share(
    samples: &[Sample],
    from: Duration,
    to: Duration,
    is_b: impl Fn(&Sample) -> bool,
) -> (u64, u64) {
    samples
        .iter()
        .filter(|sample| sample.ok && sample.at >= from && sample.at < to)
        .fold((0, 0), |(total, b), sample| {
            (total + 1, b + u64::from(is_b(sample)))
        })
}

struct Shared {
    names: Vec<String>,
    sent: AtomicU64,
    samples: Mutex<Vec<Sample>>,
}

impl Shared {
    fn samples(&self) -> MutexGuard<'_, Vec<Sample>> {
        // A panic while pushing cannot leave a sample half-written.
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running load generator; dropping it stops the load at once, [`LoadGen::stop`] lets the
/// requests in flight finish.
pub struct LoadGen {
    started_at: Instant,
    timeout: Duration,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    scheduler: JoinHandle<JoinSet<()>>,
}

impl LoadGen {
    /// Starts sending `spec.rate` requests per second over `spec.targets`. With a rate of 0 or
    /// no target of positive weight it sends nothing.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub fn start(spec: LoadSpec) -> LoadGen {
        let started_at = Instant::now();
        let capacity = usize::try_from(spec.rate)
            .unwrap_or(usize::MAX)
            .saturating_mul(60)
            .min(1 << 20);
        let shared = Arc::new(Shared {
            names: spec.targets.iter().map(|t| t.name.clone()).collect(),
            sent: AtomicU64::new(0),
            samples: Mutex::new(Vec::with_capacity(capacity)),
        });
        let (stop, stopped) = oneshot::channel();
        let scheduler = tokio::spawn(schedule(spec.clone(), shared.clone(), started_at, stopped));
        LoadGen {
            started_at,
            timeout: spec.timeout,
            shared,
            stop,
            scheduler,
        }
    }

    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// A copy of the samples so far, in the order the requests finished.
    pub fn samples(&self) -> Vec<Sample> {
        self.shared.samples().clone()
    }

    /// The samples of the requests sent at or after `since` (measured from the start).
    pub fn samples_since(&self, since: Duration) -> Vec<Sample> {
        let samples = self.shared.samples();
        samples.iter().filter(|s| s.at >= since).cloned().collect()
    }

    pub fn summary(&self) -> LoadSummary {
        let mut summary = LoadSummary {
            sent: self.shared.sent.load(Ordering::Relaxed),
            by_target: self
                .shared
                .names
                .iter()
                .map(|n| (n.clone(), 0, 0))
                .collect(),
            ..LoadSummary::default()
        };
        for sample in self.shared.samples().iter() {
            summary.done += 1;
            let target = summary.by_target.get_mut(sample.target);
            if sample.ok {
                summary.ok += 1;
                if let Some(target) = target {
                    target.1 += 1;
                }
            } else {
                summary.failed += 1;
                if let Some(target) = target {
                    target.2 += 1;
                }
            }
        }
        summary
    }

    /// Stops sending, waits for the requests in flight (each ends by its timeout at the
    /// latest), and returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        if let Ok(mut in_flight) = self.scheduler.await {
            let drain = async { while in_flight.join_next().await.is_some() {} };
            // Past the timeout a request has recorded its failure; what is left is stuck.
            let _ = tokio::time::timeout(self.timeout + STOP_GRACE, drain).await;
        }
        std::mem::take(&mut *self.shared.samples())
    }
}

async fn schedule(
    spec: LoadSpec,
    shared: Arc<Shared>,
    started_at: Instant,
    mut stopped: oneshot::Receiver<()>,
) -> JoinSet<()> {
    let mut in_flight = JoinSet::new();
    let callers: Vec<Arc<Caller>> = spec
        .targets
        .iter()
        .map(|t| Arc::new(Caller::new(t)))
        .collect();
    let mut pick = SmoothWeighted::new(spec.targets.iter().map(|t| t.weight));
    if spec.rate == 0 || !pick.any() {
        let _ = stopped.await;
        return in_flight;
    }
    let rate = u128::from(spec.rate);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = tick.tick() => {}
        }
        let due = started_at.elapsed().as_nanos() * rate / 1_000_000_000;
        let due = u64::try_from(due).unwrap_or(u64::MAX);
        while sent < due {
            let Some(target) = pick.next() else { break };
            let caller = callers[target].clone();
            let record = shared.clone();
            let timeout = spec.timeout;
            in_flight.spawn(async move {
                let sample = caller.call(target, started_at, timeout).await;
                record.samples().push(sample);
            });
            sent += 1;
            shared.sent.store(sent, Ordering::Relaxed);
        }
        // Reap the finished tasks so the set holds only what is in flight.
        while in_flight.try_join_next().is_some() {}
    }
    in_flight
}

/// Smooth weighted round-robin: every pick adds each weight to its target's credit, takes the
/// target with the most credit, and charges it the total weight.
struct SmoothWeighted {
    weights: Vec<i64>,
    credit: Vec<i64>,
    total: i64,
}

impl SmoothWeighted {
    fn new(weights: impl Iterator<Item = u32>) -> SmoothWeighted {
        let weights: Vec<i64> = weights.map(i64::from).collect();
        SmoothWeighted {
            total: weights.iter().sum(),
            credit: vec![0; weights.len()],
            weights,
        }
    }

    fn any(&self) -> bool {
        self.total > 0
    }

    fn next(&mut self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, weight) in self.weights.iter().enumerate() {
            if *weight == 0 {
                continue;
            }
            self.credit[i] += weight;
            if best.is_none_or(|b| self.credit[i] > self.credit[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        self.credit[best] -= self.total;
        Some(best)
    }
}

/// What one target is called with: its client, and its request made once.
struct Caller {
    protocol: LoadProtocol,
    client: Client<TargetConnector, Full<Bytes>>,
    /// `http://AUTHORITY/PATH`, or why the authority cannot be one.
    uri: Result<Uri, String>,
}

impl Caller {
    fn new(target: &LoadTarget) -> Caller {
        let connector = TargetConnector { addr: target.addr };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30));
        if matches!(target.protocol, LoadProtocol::Grpc | LoadProtocol::Http2) {
            builder.http2_only(true);
        }
        let authority = match target.authority.as_str() {
            "" => target.addr.to_string(),
            authority => authority.to_string(),
        };
        let path = match target.protocol {
            LoadProtocol::Http | LoadProtocol::Http2 => "/",
            LoadProtocol::Grpc => GRPC_PATH,
        };
        let uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|err| format!("authority {authority:?} cannot be sent: {err}"));
        Caller {
            protocol: target.protocol,
            client: builder.build(connector),
            uri,
        }
    }

    async fn call(&self, target: usize, started_at: Instant, timeout: Duration) -> Sample {
        let sent_at = Instant::now();
        let outcome = match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::failed(format!("no complete response within {timeout:?}")),
        };
        let done_at = Instant::now();
        let ok = outcome.error.is_none()
            && outcome.status == 200
            && (self.protocol != LoadProtocol::Grpc || outcome.grpc_status == Some(0));
        Sample {
            at: sent_at.duration_since(started_at),
            done: done_at.duration_since(started_at),
            target,
            instance: outcome.instance,
            ok,
            status: outcome.status,
            grpc_status: outcome.grpc_status,
            latency: done_at.duration_since(sent_at),
            error: outcome.error,
        }
    }

    async fn exchange(&self) -> Outcome {
        let uri = match &self.uri {
            Ok(uri) => uri.clone(),
            Err(err) => return Outcome::failed(err.clone()),
        };
        let request = match self.protocol {
            LoadProtocol::Http | LoadProtocol::Http2 => Request::get(uri).body(Full::default()),
            LoadProtocol::Grpc => Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header(CONTENT_TYPE, grpc::CONTENT_TYPE)
                .header(TE, "trailers")
                .body(Full::new(grpc::encode(GRPC_MESSAGE))),
        };
        let request = match request {
            Ok(request) => request,
            Err(err) => return Outcome::failed(format!("building the request: {err}")),
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(err) => return Outcome::failed(describe(&err)),
        };
        let (parts, body) = response.into_parts();
        let mut outcome = Outcome {
            status: parts.status.as_u16(),
            instance: parts
                .headers
                .get(INSTANCE_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string),
            grpc_status: None,
            error: None,
        };
        // Read to the end: the connection goes back to the pool, and gRPC's status is in the
        // trailers.
        let (trailers, bytes) = match body.collect().await {
            Ok(collected) => (collected.trailers().cloned(), collected.to_bytes()),
            Err(err) => {
                outcome.error = Some(format!("reading the body: {}", describe(&err)));
                return outcome;
            }
        };
        if outcome.status != 200 {
            outcome.error = Some(answered(&parts.headers, &bytes));
        }
        if self.protocol == LoadProtocol::Grpc {
            let end = trailers.as_ref().unwrap_or(&parts.headers);
            outcome.grpc_status = grpc::status_of(end).or_else(|| grpc::status_of(&parts.headers));
            outcome.error = match outcome.grpc_status {
                Some(grpc::STATUS_OK) => None,
                None if outcome.status == 200 => Some("gRPC response without grpc-status".into()),
                None => outcome.error.take(),
                Some(_) => end
                    .get("grpc-message")
                    .or_else(|| parts.headers.get("grpc-message"))
                    .map(|message| String::from_utf8_lossy(message.as_bytes()).into_owned()),
            };
        }
        outcome
    }
}

struct Outcome {
    status: u16,
    instance: Option<String>,
    grpc_status: Option<u32>,
    error: Option<String>,
}

impl Outcome {
    fn failed(error: String) -> Outcome {
        Outcome {
            status: 0,
            instance: None,
            grpc_status: None,
            error: Some(error),
        }
    }
}

/// What a non-200 answer said: the first line of its body and, from a proxy, its response
/// flags (`x-jalur-flags`), so a failure in a report says who answered and why.
fn answered(headers: &http::HeaderMap, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let first = text
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    match headers.get("x-jalur-flags").and_then(|v| v.to_str().ok()) {
        Some(flags) => format!("{first} (flags {flags})"),
        None => first,
    }
}

/// An error and its sources, outermost first: hyper-util's own message ("client error
/// (Connect)") says little without them.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Dials one target's address whatever the request's URI says, so the URI can carry the
/// authority to send.
#[derive(Clone, Debug)]
struct TargetConnector {
    addr: SocketAddr,
}

impl tower_service::Service<Uri> for TargetConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await.map_err(|err| {
                std::io::Error::new(err.kind(), format!("connecting to {addr}: {err}"))
            })?;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests;
