//! A minimal HTTP client for tests: one fresh connection per request, a bounded wait, the whole
//! body read as text.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long one request may take, connect to last body byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A status, the response headers and the body (lossy UTF-8).
pub type Reply = (u16, HeaderMap, String);

/// `GET path` with `Host: host` over HTTP/1.1 to `addr`, on a fresh connection.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let what = format!("GET http://{host}{path} via {addr} (HTTP/1.1)");
    bounded(&what, get(addr, host, path, headers, false)).await
}

/// `GET path` with `:authority host` over cleartext HTTP/2 (prior knowledge) to `addr`.
pub async fn http2_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let what = format!("GET http://{host}{path} via {addr} (h2c)");
    bounded(&what, get(addr, host, path, headers, true)).await
}

async fn bounded(
    what: &str,
    request: impl std::future::Future<Output = Result<Reply, String>>,
) -> Result<Reply, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(err)) => Err(format!("{what}: {err}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Ends the connection task however the request ends (answered, failed or timed out).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    http2: bool,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let io = TokioIo::new(stream);
    let mut request = if http2 {
        Request::get(format!("http://{host}{path}"))
    } else {
        Request::get(path).header(HOST, host)
    };
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("bad request: {err}"))?;

    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|err| format!("handshake: {err}"))?;
        let _connection = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender.send_request(request).await;
        collect(response).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|err| format!("handshake: {err}"))?;
        let _connection = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender.send_request(request).await;
        collect(response).await
    };
    response
}

async fn collect(
    response: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<Reply, String> {
    let response = response.map_err(|err| format!("request: {err}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|err| format!("reading the body: {err}"))?
        .to_bytes();
    Ok((
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}
