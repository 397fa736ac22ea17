//! A sample service instance: the legacy and meshed services of `jalur demo` and of the
//! migration tests. It says which instance answered, so a caller can tell where the mesh sent
//! a request, and it fails a set share of requests on demand.
//!
//! One port serves HTTP/1.1 and HTTP/2 over cleartext (prior knowledge), both with
//! hyper-util's `auto` server:
//! - a plain HTTP request (any method and path) gets 200, `x-jalur-instance: INSTANCE` and the
//!   body `SERVICE INSTANCE\n`;
//! - a gRPC request (content type `application/grpc…`, any path) gets 200,
//!   `content-type: application/grpc`, `x-jalur-instance`, one message echoing the request's
//!   first message, and the trailer `grpc-status: 0`.
//!
//! Faults are deterministic, not random, so a test can count them exactly: with a fault share
//! of `p` percent, request number `n` of its kind (HTTP and gRPC are counted apart, from 0)
//! fails when `floor((n + 1) p / 100) > floor(n p / 100)`: failures are spread evenly (every
//! 10th request at 10 %), start within `100 / p` requests of the fault being set, and any 100
//! consecutive requests of one kind hold exactly `p` of them. A failing HTTP request gets 500 and `injected fault\n`; a failing gRPC request
//! gets 200 with the trailers `grpc-status: 13` and `grpc-message: injected fault`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::grpc;

/// The response header naming the instance that answered.
pub const INSTANCE_HEADER: &str = "x-jalur-instance";

const FAULT_MESSAGE: &str = "injected fault";

struct AppState {
    service: String,
    instance: String,
    instance_header: HeaderValue,
    http_requests: AtomicU64,
    grpc_requests: AtomicU64,
    fault_percent: AtomicU32,
}

impl AppState {
    /// Whether request number `n` of its kind fails under the current fault share.
    fn faulty(&self, n: u64) -> bool {
        let p = u64::from(self.fault_percent.load(Ordering::Relaxed));
        (n + 1) * p / 100 > n * p / 100
    }
}

/// A running sample service instance on loopback; stops when dropped or [`SampleApp::stop`]ped.
pub struct SampleApp {
    addr: SocketAddr,
    state: Arc<AppState>,
    accept: JoinHandle<()>,
}

impl SampleApp {
    /// Starts instance `instance` of `service` on 127.0.0.1, on a port the OS picks.
    ///
    /// Fails when no loopback port can be bound, or when `instance` cannot be an HTTP header
    /// value. Must be called within a Tokio runtime (it spawns the accept loop).
    pub fn start(service: &str, instance: &str) -> std::io::Result<SampleApp> {
        let instance_header = HeaderValue::from_str(instance).map_err(|err| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("instance name {instance:?} is not a valid header value: {err}"),
            )
        })?;
        let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            service: service.to_string(),
            instance: instance.to_string(),
            instance_header,
            http_requests: AtomicU64::new(0),
            grpc_requests: AtomicU64::new(0),
            fault_percent: AtomicU32::new(0),
        });
        let what = format!("sample app {}", state.instance);
        let served = state.clone();
        let accept = tokio::spawn(accept_loop(listener, what, move |stream| {
            serve_connection(stream, served.clone())
        }));
        Ok(SampleApp {
            addr,
            state,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn service(&self) -> &str {
        &self.state.service
    }

    pub fn instance(&self) -> &str {
        &self.state.instance
    }

    /// Requests received so far (HTTP and gRPC), whatever they were answered.
    pub fn requests(&self) -> u64 {
        self.state.http_requests.load(Ordering::Relaxed)
            + self.state.grpc_requests.load(Ordering::Relaxed)
    }

    /// Fails `percent` (capped at 100) of the requests that come next, of each kind; 0 stops
    /// failing.
    pub fn set_fault_percent(&self, percent: u32) {
        self.state
            .fault_percent
            .store(percent.min(100), Ordering::Relaxed);
    }

    pub fn fault_percent(&self) -> u32 {
        self.state.fault_percent.load(Ordering::Relaxed)
    }

    /// Stops accepting and drops every open connection.
    pub fn stop(self) {
        // Drop aborts the accept task, whose JoinSet holds the connections.
    }
}

impl Drop for SampleApp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Accepts until aborted; each connection is served in a task of a `JoinSet` this task owns,
/// so aborting it drops every connection too. Shared with the testkit's echo server.
pub async fn accept_loop<F, Fut>(listener: TcpListener, what: String, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve(stream));
                }
                Err(err) => {
                    tracing::warn!(server = %what, %err, "accept failed");
                    // Errors such as EMFILE persist; retrying at once would spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<AppState>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| answer(request, state.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(err) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "sample app: connection ended with an error");
    }
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Reply>, Infallible> {
    if grpc::is_grpc(request.headers()) {
        Ok(answer_grpc(request, &state).await)
    } else {
        Ok(answer_http(request, &state).await)
    }
}

async fn answer_http(request: Request<Incoming>, state: &AppState) -> Response<Reply> {
    let n = state.http_requests.fetch_add(1, Ordering::Relaxed);
    // Read the whole request so a proxy streaming a body sees it consumed.
    let _ = request.into_body().collect().await;
    let (status, body) = if state.faulty(n) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from(format!("{FAULT_MESSAGE}\n")),
        )
    } else {
        (
            StatusCode::OK,
            Bytes::from(format!("{} {}\n", state.service, state.instance)),
        )
    };
    let mut response = Response::new(Reply::data(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    headers.insert(INSTANCE_HEADER, state.instance_header.clone());
    response
}

async fn answer_grpc(request: Request<Incoming>, state: &AppState) -> Response<Reply> {
    let n = state.grpc_requests.fetch_add(1, Ordering::Relaxed);
    let body = request.into_body().collect().await;
    let reply = if state.faulty(n) {
        Reply::grpc(None, grpc::STATUS_INTERNAL, Some(FAULT_MESSAGE))
    } else {
        match body.map(|body| body.to_bytes()) {
            Err(err) => {
                let message = format!("reading the request: {err}");
                Reply::grpc(None, grpc::STATUS_INTERNAL, Some(&message))
            }
            Ok(body) => match grpc::decode(&body) {
                Ok(messages) => {
                    let echo = messages.into_iter().next().unwrap_or_default();
                    Reply::grpc(Some(grpc::encode(&echo)), grpc::STATUS_OK, None)
                }
                Err(err) => Reply::grpc(None, grpc::STATUS_INTERNAL, Some(&err.to_string())),
            },
        }
    };
    let mut response = Response::new(reply);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(grpc::CONTENT_TYPE));
    headers.insert(INSTANCE_HEADER, state.instance_header.clone());
    response
}

/// A response body: at most one data frame, then trailers when there are some.
pub(crate) struct Reply {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn data(data: Bytes) -> Reply {
        Reply {
            data: Some(data),
            trailers: None,
        }
    }

    fn grpc(message: Option<Bytes>, status: u32, error: Option<&str>) -> Reply {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from(status));
        // grpc-message is percent-encoded; the messages here are printable ASCII without '%',
        // and one that cannot be a header value is left out rather than sent mangled.
        if let Some(value) = error.and_then(|error| HeaderValue::from_str(error).ok()) {
            trailers.insert("grpc-message", value);
        }
        Reply {
            data: message,
            trailers: Some(trailers),
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take().filter(|data| !data.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(
            this.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.data.as_ref().is_none_or(Bytes::is_empty) && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |data| data.len() as u64);
        if self.trailers.is_some() {
            // No exact length: HTTP/1.1 then sends chunked, the only way to carry trailers.
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        } else {
            SizeHint::with_exact(len)
        }
    }
}

#[cfg(test)]
mod tests;
