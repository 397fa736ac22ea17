use std::time::{Duration, Instant};

use super::*;
use crate::client::{http2_get, http_get};

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("<missing>")
}

#[tokio::test]
async fn answers_with_its_name_and_echoes_the_request() {
    let server = EchoServer::start("v1").await;
    let (status, headers, body) = http_get(
        server.addr(),
        "reviews.default.svc.cluster.local",
        "/api/items?page=2",
        &[("x-echo-trace", "t-1"), ("x-other", "not echoed")],
    )
    .await
    .expect("echo answers");

    assert_eq!(status, 200);
    assert_eq!(body, "v1");
    assert_eq!(header(&headers, "x-backend"), "v1");
    assert_eq!(header(&headers, "x-path"), "/api/items");
    assert_eq!(
        header(&headers, "x-host"),
        "reviews.default.svc.cluster.local"
    );
    assert_eq!(header(&headers, "x-method"), "GET");
    assert_eq!(header(&headers, "x-echo-trace"), "t-1");
    assert!(headers.get("x-other").is_none());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn speaks_h2c_on_the_same_port() {
    let server = EchoServer::start("h2").await;
    let (status, headers, body) = http2_get(server.addr(), "echo.test", "/h2", &[])
        .await
        .expect("echo answers over HTTP/2");
    assert_eq!((status, body.as_str()), (200, "h2"));
    assert_eq!(header(&headers, "x-host"), "echo.test");
    assert_eq!(header(&headers, "x-path"), "/h2");
}

#[tokio::test]
async fn fails_the_next_requests_then_recovers() {
    let server = EchoServer::start("flaky").await;
    server.fail_next(2, 503);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, headers, _) = http_get(server.addr(), "flaky", "/", &[])
            .await
            .expect("echo answers");
        assert_eq!(header(&headers, "x-backend"), "flaky");
        statuses.push(status);
    }
    assert_eq!(statuses, [503, 503, 200]);
    assert_eq!(server.behaviour(), Behaviour::Answer);
    assert_eq!(server.hits(), 3);

    server.fail_always(500);
    for _ in 0..3 {
        let (status, _, body) = http_get(server.addr(), "flaky", "/", &[])
            .await
            .expect("echo answers");
        assert_eq!(status, 500, "{body}");
    }
    server.answer();
    let (status, _, _) = http_get(server.addr(), "flaky", "/", &[])
        .await
        .expect("echo answers");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn answers_late_when_delayed() {
    let server = EchoServer::start("slow").await;
    let delay = Duration::from_millis(150);
    server.delay(delay);
    let started = Instant::now();
    let (status, _, body) = http_get(server.addr(), "slow", "/", &[])
        .await
        .expect("echo answers");
    assert_eq!((status, body.as_str()), (200, "slow"));
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn stops_when_dropped() {
    let server = EchoServer::start("gone").await;
    let addr = server.addr();
    drop(server);
    crate::assert_eventually("the port is closed", Duration::from_secs(5), || async {
        match http_get(addr, "gone", "/", &[]).await {
            Err(err) => Ok(err),
            Ok(reply) => Err(format!("still answering: {reply:?}")),
        }
    })
    .await;
}
