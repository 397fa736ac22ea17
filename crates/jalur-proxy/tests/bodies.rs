//! Request bodies of every HTTP/1.1 framing — Content-Length, chunked, chunked with trailers,
//! `Expect: 100-continue`, empty, a 0-byte chunked body, 10 MB streamed — sent as raw bytes
//! through a caller's sidecar to a callee's sidecar, and through a gateway to a callee's sidecar,
//! to an HTTP/1.1 backend and to an h2c backend. The backend records what it received; each
//! case compares it with what the client sent. Run for jalur proxy and for stock Envoy on the
//! same paths, from one control plane.

use std::net::SocketAddr;
use std::time::Duration;

use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::wire::{exchange, exchange_expect, Exchange, Framing, Recorded, Recorder};
use jalur_testkit::{assert_eventually, envoy_binary, require_peer, Envoy, EnvoyOpts};
use serde_json::json;

mod common;

use common::{envoy_sidecar, jalur_sidecar, sidecar_opts, Plane};

const NS: &str = "files";
const PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Jalur,
    Envoy,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Entry {
    /// A caller's sidecar (outbound listener), addressed by the service's host.
    Sidecar,
    /// An ingress gateway, routing `/h1/...` and `/h2/...` by prefix.
    Gateway,
}

/// The callee services: `upload-h1` (port `http`, an HTTP/1.1 app) and `upload-h2` (port
/// `http2`, an h2c app).
struct Callee {
    service: &'static str,
    recorder: Recorder,
    _proxy: Option<Proxy>,
    _envoy: Option<Envoy>,
}

fn config() -> Vec<(&'static str, String)> {
    let gateway = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: {NS}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge, namespace: {NS}}}\nspec:\n  hosts: [\"*\"]\n  gateways: [edge]\n  http:\n  - match: [{{uri: {{prefix: /h1/}}}}]\n    route:\n    - destination: {{host: upload-h1.{NS}.svc.cluster.local, port: {{number: {PORT}}}}}\n  - match: [{{uri: {{prefix: /h2/}}}}]\n    route:\n    - destination: {{host: upload-h2.{NS}.svc.cluster.local, port: {{number: {PORT}}}}}\n"
    );
    vec![("gateway.yaml", gateway)]
}

async fn callee(kind: Kind, plane: &Plane, service: &'static str, h2: bool) -> Option<Callee> {
    let recorder = if h2 {
        Recorder::h2c().await
    } else {
        Recorder::h1().await
    };
    let port_name = if h2 { "http2" } else { "http" };
    let (proxy, envoy) = match kind {
        Kind::Jalur => {
            let opts = ProxyOptions {
                app_port: Some(recorder.addr().port()),
                ports: vec![format!("{port_name}:{PORT}").parse().expect("port")],
                ..sidecar_opts(plane.xds, service, NS)
            };
            (
                Some(Proxy::start(opts).await.expect("callee sidecar")),
                None,
            )
        }
        Kind::Envoy => {
            let binary = require_peer("envoy", envoy_binary())?;
            let workload = format!("{service}-1");
            let mut opts = EnvoyOpts::new(
                plane.xds,
                &format!("sidecar~127.0.0.1~{workload}.{NS}~{NS}.svc.cluster.local"),
            );
            opts.metadata = json!({
                "NAMESPACE": NS,
                "INSTANCE_IPS": "127.0.0.1",
                "WORKLOAD_NAME": workload,
                "LABELS": { "app": service },
                "JALUR_SERVICE": service,
                "JALUR_PORTS": format!("{port_name}:{PORT}"),
                "JALUR_APP_PORT": recorder.addr().port().to_string(),
                "JALUR_LISTEN_ADDRESS": "127.0.0.1",
                "JALUR_INBOUND_PORT": free_port().to_string(),
                "JALUR_OUTBOUND_PORT": free_port().to_string(),
            });
            let envoy = Envoy::start_with(&binary, opts)
                .await
                .expect("envoy callee sidecar");
            (None, Some(envoy))
        }
    };
    Some(Callee {
        service,
        recorder,
        _proxy: proxy,
        _envoy: envoy,
    })
}

/// A port the kernel just handed out and took back: Envoy binds only what xDS tells it, so
/// the control plane must hear the inbound port first (jalur proxies bind and announce).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The entry of the path under test and what keeps it alive.
struct Front {
    addr: SocketAddr,
    _proxy: Option<Proxy>,
    _envoy: Option<Envoy>,
    _gateway: Option<common::EnvoyGateway>,
}

async fn front(kind: Kind, entry: Entry, plane: &Plane) -> Option<Front> {
    match (kind, entry) {
        (Kind::Jalur, Entry::Sidecar) => {
            let (proxy, addr) = jalur_sidecar(sidecar_opts(plane.xds, "client", NS)).await;
            Some(Front {
                addr,
                _proxy: Some(proxy),
                _envoy: None,
                _gateway: None,
            })
        }
        (Kind::Envoy, Entry::Sidecar) => {
            let (envoy, addr) = envoy_sidecar(plane.xds, "client-1", NS).await?;
            Some(Front {
                addr,
                _proxy: None,
                _envoy: Some(envoy),
                _gateway: None,
            })
        }
        (Kind::Jalur, Entry::Gateway) => {
            let (proxy, addr) = common::jalur_gateway(plane.xds, NS).await;
            Some(Front {
                addr,
                _proxy: Some(proxy),
                _envoy: None,
                _gateway: None,
            })
        }
        (Kind::Envoy, Entry::Gateway) => {
            let (gateway, addr) = common::envoy_gateway(plane.xds, NS).await?;
            Some(Front {
                addr,
                _proxy: None,
                _envoy: None,
                _gateway: Some(gateway),
            })
        }
    }
}

/// One framing case: the bytes the client writes, and the body and trailers they carry.
struct Case {
    name: &'static str,
    method: &'static str,
    /// Framing headers (and any others) of the head, each ending in CRLF.
    headers: String,
    /// The body as framed on the wire.
    wire_body: Vec<u8>,
    /// The body's content.
    body: Vec<u8>,
    trailers: Vec<(&'static str, &'static str)>,
    /// Sent after an interim 100 (Expect: 100-continue).
    expect_continue: bool,
    chunked: bool,
}

fn chunked(parts: &[&[u8]], trailers: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

fn cases() -> Vec<Case> {
    let big: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let big_parts: Vec<&[u8]> = big.chunks(64 * 1024).collect();
    vec![
        Case {
            name: "content-length",
            method: "POST",
            headers: "content-length: 11\r\n".into(),
            wire_body: b"hello world".to_vec(),
            body: b"hello world".to_vec(),
            trailers: vec![],
            expect_continue: false,
            chunked: false,
        },
        Case {
            name: "chunked",
            method: "POST",
            headers: "transfer-encoding: chunked\r\n".into(),
            wire_body: chunked(&[b"hello", b" ", b"chunked world"], ""),
            body: b"hello chunked world".to_vec(),
            trailers: vec![],
            expect_continue: false,
            chunked: true,
        },
        Case {
            name: "chunked-100k",
            method: "PUT",
            headers: "transfer-encoding: chunked\r\n".into(),
            wire_body: chunked(&[&[b'a'; 60_000], &[b'b'; 40_000]], ""),
            body: [vec![b'a'; 60_000], vec![b'b'; 40_000]].concat(),
            trailers: vec![],
            expect_continue: false,
            chunked: true,
        },
        Case {
            name: "chunked-trailers",
            method: "POST",
            headers: "transfer-encoding: chunked\r\ntrailer: x-checksum\r\n".into(),
            wire_body: chunked(&[b"with ", b"trailers"], "x-checksum: 12345\r\n"),
            body: b"with trailers".to_vec(),
            trailers: vec![("x-checksum", "12345")],
            expect_continue: false,
            chunked: true,
        },
        Case {
            name: "expect-100-continue",
            method: "POST",
            headers: "content-length: 9\r\nexpect: 100-continue\r\n".into(),
            wire_body: b"continued".to_vec(),
            body: b"continued".to_vec(),
            trailers: vec![],
            expect_continue: true,
            chunked: false,
        },
        Case {
            name: "empty",
            method: "GET",
            headers: String::new(),
            wire_body: Vec::new(),
            body: Vec::new(),
            trailers: vec![],
            expect_continue: false,
            chunked: false,
        },
        Case {
            name: "content-length-0",
            method: "POST",
            headers: "content-length: 0\r\n".into(),
            wire_body: Vec::new(),
            body: Vec::new(),
            trailers: vec![],
            expect_continue: false,
            chunked: false,
        },
        Case {
            name: "chunked-0-bytes",
            method: "POST",
            headers: "transfer-encoding: chunked\r\n".into(),
            wire_body: chunked(&[], ""),
            body: Vec::new(),
            trailers: vec![],
            expect_continue: false,
            chunked: true,
        },
        Case {
            name: "chunked-10mb-streamed",
            method: "POST",
            headers: "transfer-encoding: chunked\r\n".into(),
            wire_body: chunked(&big_parts, ""),
            body: big.clone(),
            trailers: vec![],
            expect_continue: false,
            chunked: true,
        },
    ]
}

async fn send(front: SocketAddr, entry: Entry, callee: &Callee, case: &Case) -> Exchange {
    let (host, path) = match entry {
        Entry::Sidecar => (
            format!("{}.{NS}.svc.cluster.local:{PORT}", callee.service),
            format!("/upload/{}", case.name),
        ),
        Entry::Gateway => (
            "files.example.com".to_string(),
            format!(
                "/{}/upload/{}",
                callee.service.trim_start_matches("upload-"),
                case.name
            ),
        ),
    };
    let head = format!(
        "{} {path} HTTP/1.1\r\nhost: {host}\r\nx-case: {}\r\n{}\r\n",
        case.method, case.name, case.headers
    );
    if case.expect_continue {
        exchange_expect(front, head.as_bytes(), &case.wire_body).await
    } else {
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&case.wire_body);
        exchange(front, &bytes, 1).await
    }
}

/// What the backend must have seen for `case`; `None` when it did.
fn mismatch(kind: Kind, h2: bool, case: &Case, got: &Recorded) -> Option<String> {
    let mut problems = Vec::new();
    if got.method != case.method {
        problems.push(format!("method {}", got.method));
    }
    if !got.target.ends_with(&format!("/upload/{}", case.name)) {
        problems.push(format!("target {}", got.target));
    }
    if got.header("x-case") != Some(case.name) {
        problems.push(format!("x-case header {:?}", got.header("x-case")));
    }
    if got.body != case.body {
        problems.push(format!(
            "body of {} bytes, sent {} (first difference at {:?})",
            got.body.len(),
            case.body.len(),
            got.body.iter().zip(&case.body).position(|(a, b)| a != b)
        ));
    }
    if got.header("expect").is_some() {
        problems.push("the expect header was forwarded (the proxy answers it)".into());
    }
    // jalur keeps the sender's framing and its declared trailers on every hop; Envoy's choices
    // are what they are (it drops HTTP/1 trailers unless enabled) and only the bytes are compared.
    if kind == Kind::Jalur {
        let framing = if h2 && case.chunked {
            Some(Framing::H2Data)
        } else if case.chunked {
            Some(Framing::Chunked)
        } else if case.headers.contains("content-length") {
            Some(Framing::Length(case.body.len() as u64))
        } else {
            Some(Framing::None)
        };
        if let Some(framing) = framing {
            if got.framing != framing {
                problems.push(format!("framing {:?}, expected {framing:?}", got.framing));
            }
        }
        let trailers: Vec<(String, String)> = case
            .trailers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        if got.trailers != trailers {
            problems.push(format!("trailers {:?}", got.trailers));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Routed end to end once (config pushed, endpoints registered) before a test's cases run.
async fn wait_reaches(kind: Kind, entry: Entry, front: &Front, callee: &Callee) {
    let probe = &cases()[5];
    assert_eventually(
        &format!("{kind:?} {entry:?} reaches {}", callee.service),
        Duration::from_secs(30),
        || async {
            let ex = send(front.addr, entry, callee, probe).await;
            match ex.statuses().as_slice() {
                [200] => Ok(()),
                other => Err(format!("{other:?} {:?}", ex.responses.first())),
            }
        },
    )
    .await;
}

async fn every_framing_arrives_intact(kind: Kind, entry: Entry) {
    let plane = Plane::start(&config()).await;
    let Some(h1) = callee(kind, &plane, "upload-h1", false).await else {
        return;
    };
    let Some(h2) = callee(kind, &plane, "upload-h2", true).await else {
        return;
    };
    let Some(front) = front(kind, entry, &plane).await else {
        return;
    };
    let cases = cases();
    let mut failures = Vec::new();
    for (callee, h2) in [(&h1, false), (&h2, true)] {
        wait_reaches(kind, entry, &front, callee).await;
        for case in &cases {
            callee.recorder.clear();
            let ex = send(front.addr, entry, callee, case).await;
            let what = format!("{kind:?} {entry:?} -> {} [{}]", callee.service, case.name);
            if ex.statuses() != [200] {
                failures.push(format!(
                    "{what}: client got {:?} {:?}",
                    ex.statuses(),
                    ex.responses
                        .first()
                        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                ));
                continue;
            }
            let got = callee.recorder.requests();
            let errors = callee.recorder.errors();
            match (got.as_slice(), errors.is_empty()) {
                ([one], true) => {
                    if let Some(problem) = mismatch(kind, h2, case, one) {
                        failures.push(format!("{what}: {problem}"));
                    }
                }
                _ => failures.push(format!(
                    "{what}: backend saw {} requests, errors {errors:?}",
                    got.len()
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "bodies that did not arrive as sent:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_sidecar_to_sidecar_every_framing_arrives_intact() {
    every_framing_arrives_intact(Kind::Jalur, Entry::Sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_gateway_to_sidecar_every_framing_arrives_intact() {
    every_framing_arrives_intact(Kind::Jalur, Entry::Gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_to_sidecar_every_framing_arrives_intact() {
    every_framing_arrives_intact(Kind::Envoy, Entry::Sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_to_sidecar_every_framing_arrives_intact() {
    every_framing_arrives_intact(Kind::Envoy, Entry::Gateway).await;
}

/// A body streams: its first chunk reaches the backend (HTTP/1.1 and h2c) while the client has
/// not sent the rest — a gRPC stream or a slow upload never waits for its own end, retries on
/// or not.
async fn a_chunked_upload_streams_before_it_ends(kind: Kind) {
    let plane = Plane::start(&config()).await;
    let Some(h1) = callee(kind, &plane, "upload-h1", false).await else {
        return;
    };
    let Some(h2) = callee(kind, &plane, "upload-h2", true).await else {
        return;
    };
    let Some(front) = front(kind, Entry::Sidecar, &plane).await else {
        return;
    };
    for callee in [&h1, &h2] {
        wait_reaches(kind, Entry::Sidecar, &front, callee).await;
        callee.recorder.clear();
        let mut stream = tokio::net::TcpStream::connect(front.addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /upload/stream HTTP/1.1\r\nhost: {}.{NS}.svc.cluster.local:{PORT}\r\nx-case: stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
            callee.service
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
            .await
            .expect("write");
        assert_eventually(
            &format!(
                "{kind:?}: the first chunk reaches {} before the body ends",
                callee.service
            ),
            Duration::from_secs(10),
            || async {
                let raw = callee.recorder.raw();
                if raw.values().any(|r| r.windows(5).any(|w| w == b"first")) {
                    Ok(())
                } else {
                    Err(format!("{raw:?}"))
                }
            },
        )
        .await;
        let ex =
            jalur_testkit::wire::send_and_read(&mut stream, b"4\r\nlast\r\n0\r\n\r\n", 1).await;
        assert_eq!(ex.statuses(), vec![200], "{kind:?} {}", callee.service);
        let got = callee.recorder.requests();
        assert_eq!(got.len(), 1, "{kind:?} {}", callee.service);
        assert_eq!(got[0].body, b"firstlast", "{kind:?} {}", callee.service);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_streams_a_chunked_upload_before_it_ends() {
    a_chunked_upload_streams_before_it_ends(Kind::Jalur).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_streams_a_chunked_upload_before_it_ends() {
    a_chunked_upload_streams_before_it_ends(Kind::Envoy).await;
}

/// A streamed body is still retried whole after a 503 (the default policy retries 503) while it
/// fits the 64 KiB retry buffer; a larger one is sent once and its 503 comes back.
async fn a_streamed_body_is_retried_whole_while_it_fits(kind: Kind) {
    let plane = Plane::start(&config()).await;
    let Some(h1) = callee(kind, &plane, "upload-h1", false).await else {
        return;
    };
    let Some(front) = front(kind, Entry::Sidecar, &plane).await else {
        return;
    };
    wait_reaches(kind, Entry::Sidecar, &front, &h1).await;
    let small: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 4000]).collect();
    let large: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 20_000]).collect();
    for (parts, retried) in [(small, true), (large, false)] {
        h1.recorder.clear();
        h1.recorder
            .script([b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n".to_vec()]);
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let sent = parts.concat();
        let request = [
            format!("POST /upload/retry HTTP/1.1\r\nhost: upload-h1.{NS}.svc.cluster.local:{PORT}\r\nx-case: retry\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes(),
            chunked(&slices, ""),
        ]
        .concat();
        let ex = exchange(front.addr, &request, 1).await;
        let got = h1.recorder.requests();
        if kind == Kind::Envoy && !retried {
            // Envoy's buffer limit differs (its default per-connection buffer is 1 MiB): only
            // the small body is compared.
            continue;
        }
        if retried {
            assert_eq!(
                ex.statuses(),
                vec![200],
                "{kind:?}: {} bytes retried",
                sent.len()
            );
            assert_eq!(got.len(), 2, "{kind:?}: the first try and the retry");
            assert!(
                got.iter().all(|r| r.body == sent),
                "{kind:?}: the retry resent the whole body"
            );
        } else {
            assert_eq!(
                ex.statuses(),
                vec![503],
                "{kind:?}: {} bytes cannot be retried",
                sent.len()
            );
            assert_eq!(got.len(), 1, "{kind:?}");
            assert_eq!(got[0].body, sent, "{kind:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_retries_a_streamed_body_whole_while_it_fits() {
    a_streamed_body_is_retried_whole_while_it_fits(Kind::Jalur).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_retries_a_streamed_body_whole_while_it_fits() {
    a_streamed_body_is_retried_whole_while_it_fits(Kind::Envoy).await;
}
