//! An HTTP echo backend: answers with its own name so a test can tell which backend a request
//! reached, echoes what it saw (path, host, `x-echo-*` headers), and can be switched at run time
//! to fail or to answer late.
//!
//! It speaks HTTP/1.1 and HTTP/2 over cleartext (prior knowledge) on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the echo server answers the requests that come next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200, body = the server's name, with the echo headers.
    Answer,
    /// Answer `status` to the next `remaining` requests (`None`: to every request), then go
    /// back to [`Behaviour::Answer`].
    Fail { status: u16, remaining: Option<u32> },
    /// Answer normally, but only after waiting this long.
    Delay(Duration),
}

enum Action {
    Answer,
    Fail(StatusCode),
    DelayThenAnswer(Duration),
}

struct State {
    name: String,
    hits: AtomicU64,
    behaviour: Mutex<Behaviour>,
}

impl State {
    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        // A panic while holding the lock cannot leave a Behaviour half-written.
        self.behaviour
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_action(&self) -> Action {
        let mut behaviour = self.behaviour();
        match &mut *behaviour {
            Behaviour::Answer => Action::Answer,
            Behaviour::Delay(delay) => Action::DelayThenAnswer(*delay),
            Behaviour::Fail { status, remaining } => {
                let status =
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                match remaining {
                    None => {}
                    Some(0) => {
                        *behaviour = Behaviour::Answer;
                        return Action::Answer;
                    }
                    Some(1) => *behaviour = Behaviour::Answer,
                    Some(n) => *n -= 1,
                }
                Action::Fail(status)
            }
        }
    }
}

/// A running echo backend on loopback; stops when dropped.
pub struct EchoServer {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl EchoServer {
    /// Starts an echo server named `name` on 127.0.0.1, on a port the OS picks.
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken test machine).
    pub async fn start(name: &str) -> EchoServer {
        Self::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts an echo server on `addr` (e.g. `127.0.0.2:0` for a second loopback host).
    ///
    /// # Panics
    /// When `addr` cannot be bound.
    pub async fn start_at(name: &str, addr: SocketAddr) -> EchoServer {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("echo server {name}: cannot bind {addr}: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("echo server {name}: no local address: {err}"));
        let state = Arc::new(State {
            name: name.to_string(),
            hits: AtomicU64::new(0),
            behaviour: Mutex::new(Behaviour::Answer),
        });
        let what = format!("echo server {}", state.name);
        let served = state.clone();
        let accept = tokio::spawn(jalur_demo::app::accept_loop(
            listener,
            what,
            move |stream| serve_connection(stream, served.clone()),
        ));
        EchoServer {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far, whatever they were answered.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn behaviour(&self) -> Behaviour {
        self.state.behaviour().clone()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.state.behaviour() = behaviour;
    }

    /// Back to answering 200 at once.
    pub fn answer(&self) {
        self.set_behaviour(Behaviour::Answer);
    }

    /// Answers `status` to the next `count` requests, then 200 again.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.set_behaviour(Behaviour::Fail {
            status,
            remaining: Some(count),
        });
    }

    /// Answers `status` to every request until told otherwise.
    pub fn fail_always(&self, status: u16) {
        self.set_behaviour(Behaviour::Fail {
            status,
            remaining: None,
        });
    }

    /// Answers every request normally, but `delay` late.
    pub fn delay(&self, delay: Duration) {
        self.set_behaviour(Behaviour::Delay(delay));
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet, so they end with it.
        self.accept.abort();
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let service = service_fn(move |request| answer(request, state.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(err) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%err, "echo server: connection ended with an error");
    }
}

async fn answer(
    request: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let action = state.next_action();
    let (parts, body) = request.into_parts();
    // Read the whole request so a proxy streaming a body sees it consumed.
    let _ = body.collect().await;

    let host = parts
        .headers
        .get(HOST)
        .cloned()
        .or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        })
        .unwrap_or_else(|| HeaderValue::from_static(""));
    let mut headers: Vec<(HeaderName, HeaderValue)> = vec![
        (HeaderName::from_static("x-host"), host),
        (
            HeaderName::from_static("x-method"),
            HeaderValue::from_str(parts.method.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        ),
    ];
    if let Ok(name) = HeaderValue::from_str(&state.name) {
        headers.push((HeaderName::from_static("x-backend"), name));
    }
    if let Ok(path) = HeaderValue::from_str(parts.uri.path()) {
        headers.push((HeaderName::from_static("x-path"), path));
    }
    headers.extend(
        parts
            .headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-echo-"))
            .map(|(name, value)| (name.clone(), value.clone())),
    );

    let (status, body) = match action {
        Action::Answer => (StatusCode::OK, state.name.clone()),
        Action::DelayThenAnswer(delay) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, state.name.clone())
        }
        Action::Fail(status) => (status, format!("{}: failing with {status}", state.name)),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    Ok(response)
}

#[cfg(test)]
mod tests;
