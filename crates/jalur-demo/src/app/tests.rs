//! Tests of the sample service through bare hyper connections (HTTP/1.1 and h2c).

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::*;
use crate::eventually::assert_eventually;

const DEADLINE: Duration = Duration::from_secs(10);

/// Status, headers, body and trailers of one exchange.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name)?.to_str().ok()
    }
}

async fn connect_http1(addr: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

async fn connect_h2(addr: SocketAddr) -> http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2c handshake");
    tokio::spawn(connection);
    sender
}

async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("the whole body");
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/anything")
        .header(HOST, "payments")
        .body(Full::default())
        .expect("a request")
}

fn grpc_request(message: &[u8]) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("http://payments/jalur.demo.Echo/Call")
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc::encode(message)))
        .expect("a request")
}

#[tokio::test]
async fn answers_http_with_its_service_and_instance() {
    let app = SampleApp::start("payments", "payments-v1").expect("start");
    let mut h1 = connect_http1(app.addr()).await;
    let reply = read(h1.send_request(get()).await.expect("answer")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header(INSTANCE_HEADER), Some("payments-v1"));
    assert_eq!(&reply.body[..], b"payments payments-v1\n");

    // The same port speaks h2c.
    let mut h2 = connect_h2(app.addr()).await;
    let request = Request::get("http://payments/")
        .body(Full::default())
        .expect("a request");
    let reply = read(h2.send_request(request).await.expect("answer")).await;
    assert_eq!(
        (reply.status, &reply.body[..]),
        (200, &b"payments payments-v1\n"[..])
    );
    assert_eq!(app.requests(), 2);
    assert_eq!((app.service(), app.instance()), ("payments", "payments-v1"));
}

#[tokio::test]
async fn echoes_a_grpc_message_with_status_ok() {
    let app = SampleApp::start("payments", "payments-v2").expect("start");
    let mut h2 = connect_h2(app.addr()).await;
    let reply = read(
        h2.send_request(grpc_request(b"hello"))
            .await
            .expect("answer"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header(INSTANCE_HEADER), Some("payments-v2"));
    assert_eq!(
        grpc::decode(&reply.body),
        Ok(vec![Bytes::from_static(b"hello")])
    );
    assert_eq!(reply.trailer("grpc-status"), Some("0"));

    let mut bad = grpc::encode(b"hello").to_vec();
    bad.truncate(7);
    let mut request = grpc_request(b"");
    *request.body_mut() = Full::new(Bytes::from(bad));
    let reply = read(h2.send_request(request).await.expect("answer")).await;
    assert_eq!(reply.trailer("grpc-status"), Some("13"));
    assert!(reply
        .trailer("grpc-message")
        .is_some_and(|m| m.contains("truncated")));
}

#[tokio::test]
async fn fault_percent_fails_exactly_that_share_of_each_kind() {
    let app = SampleApp::start("payments", "payments-v2").expect("start");
    app.set_fault_percent(10);
    assert_eq!(app.fault_percent(), 10);
    let mut h1 = connect_http1(app.addr()).await;
    let mut h2 = connect_h2(app.addr()).await;
    let (mut http_failed, mut grpc_failed) = (0, 0);
    for _ in 0..100 {
        let reply = read(h1.send_request(get()).await.expect("answer")).await;
        assert_eq!(reply.header(INSTANCE_HEADER), Some("payments-v2"));
        if reply.status == 500 {
            assert_eq!(&reply.body[..], b"injected fault\n");
            http_failed += 1;
        } else {
            assert_eq!(reply.status, 200);
        }
        let reply = read(h2.send_request(grpc_request(b"x")).await.expect("answer")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header(INSTANCE_HEADER), Some("payments-v2"));
        match reply.trailer("grpc-status") {
            Some("13") => {
                assert_eq!(reply.trailer("grpc-message"), Some("injected fault"));
                grpc_failed += 1;
            }
            other => assert_eq!(other, Some("0")),
        }
    }
    assert_eq!((http_failed, grpc_failed), (10, 10));

    app.set_fault_percent(250);
    assert_eq!(app.fault_percent(), 100);
    let reply = read(h1.send_request(get()).await.expect("answer")).await;
    assert_eq!(reply.status, 500);
    app.set_fault_percent(0);
    for _ in 0..100 {
        let reply = read(h1.send_request(get()).await.expect("answer")).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(app.requests(), 301);
}

#[tokio::test]
async fn rejects_an_instance_name_that_cannot_be_a_header() {
    let err = SampleApp::start("payments", "bad\nname")
        .err()
        .expect("an error");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn stop_closes_the_port() {
    let app = SampleApp::start("payments", "payments-v1").expect("start");
    let addr = app.addr();
    app.stop();
    assert_eventually("the port is closed", DEADLINE, || async {
        match TcpStream::connect(addr).await {
            Err(_) => Ok(()),
            Ok(_) => Err(format!("{addr} still accepts")),
        }
    })
    .await;
}
