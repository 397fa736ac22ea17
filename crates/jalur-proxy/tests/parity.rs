//! The routing scenarios of the control-plane tests, run through jalur proxy AND through stock
//! Envoy from one control plane, asserting the same observed behaviour: weighted split, header
//! routing, a retry recovering from a 503, a route timeout, outlier ejection, a circuit
//! breaker overflowing, and fault injection (aborts and delays, always and by percentage).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jalur_proxy::run::Proxy;
use jalur_testkit::yaml::{four_sigma, service_entry, share, spread, subsets_rule, workload_entry};
use jalur_testkit::{assert_eventually, http_get, EchoServer, Envoy};

mod common;

use common::{envoy_sidecar, jalur_sidecar, sidecar_opts, Plane};

const HOST: &str = "reviews.bookinfo.svc.cluster.local";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Jalur,
    Envoy,
}

/// A sidecar of either kind, with its outbound listener address.
struct Sidecar {
    kind: Kind,
    outbound: SocketAddr,
    _envoy: Option<Envoy>,
    proxy: Option<Proxy>,
}

async fn sidecar(kind: Kind, plane: &Plane) -> Option<Sidecar> {
    let xds = plane.xds;
    let (outbound, envoy, proxy) = match kind {
        Kind::Jalur => {
            let (proxy, outbound) =
                jalur_sidecar(sidecar_opts(xds, "productpage", "bookinfo")).await;
            (outbound, None, Some(proxy))
        }
        Kind::Envoy => {
            let (envoy, outbound) = envoy_sidecar(xds, "productpage-v1", "bookinfo").await?;
            (outbound, Some(envoy), None)
        }
    };
    Some(Sidecar {
        kind,
        outbound,
        _envoy: envoy,
        proxy,
    })
}

fn vs(http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: bookinfo}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
}

fn base(backends: &[(&str, &EchoServer)]) -> Vec<(&'static str, String)> {
    let mut files = vec![("service.yaml", service_entry("reviews", "bookinfo", HOST))];
    for (i, (version, b)) in backends.iter().enumerate() {
        let name: &'static str = ["we0.yaml", "we1.yaml", "we2.yaml", "we3.yaml"][i];
        let we = workload_entry("reviews", version, "bookinfo", b.addr()).replace(
            &format!("reviews-{version}"),
            &format!("reviews-{version}-{i}"),
        );
        files.push((name, we));
    }
    files
}

async fn wait_routed(s: &Sidecar, ok: impl Fn(&str) -> bool) {
    assert_eventually(
        &format!("{:?} routes reviews", s.kind),
        Duration::from_secs(20),
        || async {
            let seen = spread(s.outbound, HOST, 5, &[]).await;
            if seen.keys().all(|k| ok(k)) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

async fn split_and_header_routing(kind: Kind) {
    let (v1, v2, v3) = (
        EchoServer::start("v1").await,
        EchoServer::start("v2").await,
        EchoServer::start("v3").await,
    );
    let mut files = base(&[("v1", &v1), ("v2", &v2), ("v3", &v3)]);
    files.push((
        "dr.yaml",
        subsets_rule("reviews", "bookinfo", &["v1", "v2", "v3"]),
    ));
    files.push(("vs.yaml", vs("  - match:\n    - headers:\n        end-user: {exact: jason}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v3}\n      weight: 10\n")));
    let plane = Plane::start(&files).await;
    let Some(s) = sidecar(kind, &plane).await else {
        return;
    };
    wait_routed(&s, |k| k == "v1" || k == "v3").await;
    let seen = spread(s.outbound, HOST, 2000, &[]).await;
    // Envoy picks at random: 4σ of a binomial share. jalur splits by a low-discrepancy
    // sequence (exact within one request per hundred), so it gets one point.
    let tolerance = match kind {
        Kind::Envoy => four_sigma(90.0, 2000),
        Kind::Jalur => 1.0,
    };
    assert!(
        (share(&seen, "v1") - 90.0).abs() <= tolerance,
        "{kind:?}: 90/10 observed as {seen:?} (±{tolerance:.2} points)"
    );
    let jason = spread(s.outbound, "reviews:9080", 100, &[("end-user", "jason")]).await;
    assert_eq!(jason.get("v2"), Some(&100), "{kind:?}: {jason:?}");
}

async fn retry_recovers_from_one_503(kind: Kind) {
    let v1 = EchoServer::start("v1").await;
    let mut files = base(&[("v1", &v1)]);
    files.push(("vs.yaml", vs("  - retries: {attempts: 2, retryOn: \"5xx\"}\n    route:\n    - destination: {host: reviews}\n")));
    let plane = Plane::start(&files).await;
    let Some(s) = sidecar(kind, &plane).await else {
        return;
    };
    wait_routed(&s, |k| k == "v1").await;
    v1.fail_next(1, 503);
    let before = v1.hits();
    let (status, _, _) = http_get(s.outbound, HOST, "/", &[]).await.expect("request");
    assert_eq!(status, 200, "{kind:?}: the retry recovers");
    assert_eq!(
        v1.hits() - before,
        2,
        "{kind:?}: one failed try and one retry"
    );
}

async fn route_timeout_fires(kind: Kind) {
    let v1 = EchoServer::start("v1").await;
    let mut files = base(&[("v1", &v1)]);
    files.push(("vs.yaml", vs("  - timeout: 300ms\n    retries: {attempts: 0}\n    route:\n    - destination: {host: reviews}\n")));
    let plane = Plane::start(&files).await;
    let Some(s) = sidecar(kind, &plane).await else {
        return;
    };
    wait_routed(&s, |k| k == "v1").await;
    v1.delay(Duration::from_secs(3));
    let started = Instant::now();
    let (status, _, _) = http_get(s.outbound, HOST, "/", &[]).await.expect("request");
    let took = started.elapsed();
    assert_eq!(status, 504, "{kind:?}: timeout answers 504");
    assert!(
        took < Duration::from_millis(2000),
        "{kind:?}: answered after {took:?}"
    );
}

async fn outlier_detection_ejects_a_failing_endpoint(kind: Kind) {
    let (good, bad) = (
        EchoServer::start("good").await,
        EchoServer::start("bad").await,
    );
    let mut files = base(&[("v1", &good), ("v1", &bad)]);
    files.push(("dr.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n".to_string()));
    files.push((
        "vs.yaml",
        vs("  - retries: {attempts: 0}\n    route:\n    - destination: {host: reviews}\n"),
    ));
    let plane = Plane::start(&files).await;
    let Some(s) = sidecar(kind, &plane).await else {
        return;
    };
    wait_routed(&s, |k| k == "good" || k == "bad").await;
    bad.fail_always(500);
    let seen = spread(s.outbound, HOST, 60, &[]).await;
    let failures = seen.get("500").copied().unwrap_or(0);
    assert!(
        (3..=4).contains(&failures),
        "{kind:?}: ejected after 3 consecutive 5xx, saw {seen:?}"
    );
    let after = spread(s.outbound, HOST, 40, &[]).await;
    assert_eq!(
        after.get("good"),
        Some(&40),
        "{kind:?}: the bad endpoint stays ejected: {after:?}"
    );
}

async fn circuit_breaker_overflows_with_503(kind: Kind) {
    let v1 = EchoServer::start("v1").await;
    let mut files = base(&[("v1", &v1)]);
    files.push(("dr.yaml", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1, http2MaxRequests: 1, maxRetries: 0}\n".to_string()));
    files.push((
        "vs.yaml",
        vs("  - retries: {attempts: 0}\n    route:\n    - destination: {host: reviews}\n"),
    ));
    let plane = Plane::start(&files).await;
    let Some(s) = sidecar(kind, &plane).await else {
        return;
    };
    wait_routed(&s, |k| k == "v1").await;
    v1.delay(Duration::from_millis(500));
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(http_get(s.outbound, HOST, "/", &[])))
        .collect();
    let mut overflowed = 0;
    let mut ok = 0;
    for c in calls {
        match c.await.expect("join") {
            Ok((503, h, _)) => {
                let flagged = h.get("x-envoy-overloaded").is_some()
                    || h.get("x-jalur-flags").is_some_and(|v| v == "UO");
                assert!(flagged, "{kind:?}: a 503 from the breaker says so: {h:?}");
                overflowed += 1;
            }
            Ok((200, _, _)) => ok += 1,
            other => panic!("{kind:?}: unexpected {other:?}"),
        }
    }
    assert!(
        overflowed >= 5 && ok >= 1,
        "{kind:?}: {ok} passed, {overflowed} overflowed"
    );
    if let Some(p) = &s.proxy {
        let metrics = http_get(p.stats_addr, "stats", "/stats/prometheus", &[])
            .await
            .expect("stats")
            .2;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total{")
                    && l.contains("response_flags=\"UO\"")),
            "{metrics}"
        );
    }
}

/// One request's status, body and time taken.
async fn timed_get(to: SocketAddr, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, _, body) = http_get(to, HOST, path, &[]).await.expect("request");
    (status, body, started.elapsed())
}

/// Istio's HTTP fault injection (a VirtualService's `fault:`, Envoy's fault filter): aborts and
/// fixed delays, always and for a percentage of requests. Both proxies draw at random, so a
/// percentage is judged within 4σ of its sample size.
async fn faults_abort_and_delay_by_percentage(kind: Kind) {
    let v1 = EchoServer::start("v1").await;
    let mut files = base(&[("v1", &v1)]);
    let faulty = |prefix: &str, fault: &str| {
        format!("  - match: [{{uri: {{prefix: {prefix}}}}}]\n    fault: {fault}\n    route:\n    - destination: {{host: reviews}}\n")
    };
    files.push((
        "vs.yaml",
        vs(&[
            faulty(
                "/abort-all",
                "{abort: {httpStatus: 418, percentage: {value: 100}}}",
            ),
            faulty(
                "/abort-some",
                "{abort: {httpStatus: 503, percentage: {value: 25}}}",
            ),
            faulty(
                "/delay-all",
                "{delay: {fixedDelay: 300ms, percentage: {value: 100}}}",
            ),
            faulty(
                "/delay-some",
                "{delay: {fixedDelay: 250ms, percentage: {value: 50}}}",
            ),
            "  - route:\n    - destination: {host: reviews}\n".to_string(),
        ]
        .concat()),
    ));
    let plane = Plane::start(&files).await;
    let Some(s) = sidecar(kind, &plane).await else {
        return;
    };
    wait_routed(&s, |k| k == "v1").await;

    // Aborted before the router: the backend sees nothing, and a 503 abort is not retried
    // (the default retry policy retries 503s from upstream).
    let before = v1.hits();
    for _ in 0..20 {
        let (status, body, _) = timed_get(s.outbound, "/abort-all").await;
        // Envoy's local reply is the bare text; jalur's local replies end with a newline.
        assert_eq!(
            (status, body.trim_end()),
            (418, "fault filter abort"),
            "{kind:?}"
        );
    }
    let n = 400;
    let mut aborted = 0;
    for _ in 0..n {
        match timed_get(s.outbound, "/abort-some").await.0 {
            503 => aborted += 1,
            200 => {}
            other => panic!("{kind:?}: /abort-some answered {other}"),
        }
    }
    assert_eq!(
        v1.hits() - before,
        (n - aborted) as u64,
        "{kind:?}: aborted requests never reach the backend"
    );
    let share = 100.0 * aborted as f64 / n as f64;
    let tolerance = four_sigma(25.0, n);
    assert!(
        (share - 25.0).abs() <= tolerance,
        "{kind:?}: {share:.1} % of {n} aborted, 25 ± {tolerance:.1} expected"
    );

    // Delayed, then forwarded. Envoy's timers run on its event loop's cached clock and were
    // seen firing up to 3 ms early; a tokio sleep never does.
    let early = match kind {
        Kind::Envoy => Duration::from_millis(10),
        Kind::Jalur => Duration::ZERO,
    };
    for _ in 0..3 {
        let (status, body, took) = timed_get(s.outbound, "/delay-all").await;
        assert_eq!((status, body.as_str()), (200, "v1"), "{kind:?}");
        assert!(
            took + early >= Duration::from_millis(300),
            "{kind:?}: answered after {took:?}"
        );
    }
    // 200 requests, 25 at a time: those that took the 250 ms delay (counted from 200 ms, well
    // above an undelayed request), against 50 %.
    let n = 200;
    let mut delayed = 0;
    for _ in 0..n / 25 {
        let batch: Vec<_> = (0..25)
            .map(|_| tokio::spawn(timed_get(s.outbound, "/delay-some")))
            .collect();
        for call in batch {
            let (status, _, took) = call.await.expect("join");
            assert_eq!(status, 200, "{kind:?}");
            delayed += usize::from(took >= Duration::from_millis(200));
        }
    }
    let share = 100.0 * delayed as f64 / n as f64;
    let tolerance = four_sigma(50.0, n);
    assert!(
        (share - 50.0).abs() <= tolerance,
        "{kind:?}: {share:.1} % of {n} delayed, 50 ± {tolerance:.1} expected"
    );
}

macro_rules! both {
    ($name:ident, $scenario:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jalur() {
                $scenario(Kind::Jalur).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn envoy() {
                $scenario(Kind::Envoy).await;
            }
        }
    };
}

both!(split_and_headers, split_and_header_routing);
both!(retry_503, retry_recovers_from_one_503);
both!(timeout, route_timeout_fires);
both!(outlier, outlier_detection_ejects_a_failing_endpoint);
both!(circuit_breaker, circuit_breaker_overflows_with_503);
both!(faults, faults_abort_and_delay_by_percentage);

/// A gateway of either kind selected by `istio: ingressgateway`; returns the address of its
/// listener for Gateway port 8080 (bound on an OS-chosen port).
async fn gateway(
    kind: Kind,
    plane: &Plane,
) -> Option<(SocketAddr, Option<common::EnvoyGateway>, Option<Proxy>)> {
    match kind {
        Kind::Jalur => {
            let (proxy, addr) = common::jalur_gateway(plane.xds, "istio-system").await;
            Some((addr, None, Some(proxy)))
        }
        Kind::Envoy => {
            let (envoy, addr) = common::envoy_gateway(plane.xds, "istio-system").await?;
            Some((addr, Some(envoy), None))
        }
    }
}

async fn gateway_serves_bound_virtual_services(kind: Kind) {
    let v2 = EchoServer::start("v2").await;
    let mut files = base(&[("v2", &v2)]);
    files.push(("dr.yaml", subsets_rule("reviews", "bookinfo", &["v2"])));
    files.push((
        "gateway.yaml",
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"bookinfo/*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge, namespace: bookinfo}\nspec:\n  hosts: [bookinfo.example.com]\n  gateways: [istio-system/edge]\n  http:\n  - match: [{uri: {prefix: /api/v0}}]\n    redirect: {uri: /api/v1, redirectCode: 308}\n  - match: [{uri: {prefix: /reviews/}}]\n    rewrite: {uri: /}\n    route:\n    - destination: {host: reviews, subset: v2}\n  - directResponse: {status: 418, body: {string: \"short and stout\"}}\n".to_string(),
    ));
    let plane = Plane::start(&files).await;
    let Some((gw, _envoy, _proxy)) = gateway(kind, &plane).await else {
        return;
    };
    let host = "bookinfo.example.com";
    let (_, headers, _) = assert_eventually(
        &format!("{kind:?} gateway routes /reviews/"),
        Duration::from_secs(20),
        || async {
            match http_get(gw, host, "/reviews/123", &[]).await {
                Ok(r) if r.0 == 200 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        headers.get("x-backend").and_then(|v| v.to_str().ok()),
        Some("v2"),
        "{kind:?}"
    );
    assert_eq!(
        headers.get("x-path").and_then(|v| v.to_str().ok()),
        Some("/123"),
        "{kind:?}: prefix rewrite"
    );
    let (status, headers, _) = http_get(gw, host, "/api/v0/x", &[])
        .await
        .expect("redirect");
    assert_eq!(status, 308, "{kind:?}");
    let location = headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(location.ends_with("/api/v1"), "{kind:?}: {location}");
    let (status, _, body) = http_get(gw, host, "/anything", &[]).await.expect("direct");
    assert_eq!(
        (status, body.as_str()),
        (418, "short and stout"),
        "{kind:?}"
    );
    let (status, _, _) = http_get(gw, "other.example.com", "/reviews/1", &[])
        .await
        .expect("other");
    assert_eq!(status, 404, "{kind:?}: hosts the Gateway does not expose");
}

both!(gateway_routes, gateway_serves_bound_virtual_services);

/// An HTTPS Gateway server (mode SIMPLE, certificate and key from files): the gateway
/// terminates TLS, negotiates HTTP/2 by ALPN, and routes the bound VirtualService.
async fn gateway_terminates_tls_with_alpn_h2(kind: Kind) {
    let v2 = EchoServer::start("v2").await;
    let cert =
        rcgen::generate_simple_self_signed(vec!["bookinfo.example.com".to_string()]).expect("cert");
    let tmp = tempfile::TempDir::with_prefix("jalur-tls-").expect("tmp");
    let dir = tmp.path();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.cert.pem()).expect("cert file");
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).expect("key file");
    let mut files = base(&[("v2", &v2)]);
    files.push((
        "gateway.yaml",
        format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: https, protocol: HTTPS}}\n    hosts: [\"bookinfo/*\"]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge, namespace: bookinfo}}\nspec:\n  hosts: [bookinfo.example.com]\n  gateways: [istio-system/edge]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n", cert_file.display(), key_file.display()),
    ));
    let plane = Plane::start(&files).await;
    let Some((gw, _envoy, _proxy)) = gateway(kind, &plane).await else {
        return;
    };

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("root");
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let (status, version, body) = assert_eventually(
        &format!("{kind:?} serves HTTPS"),
        Duration::from_secs(20),
        || {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(gw)
                    .await
                    .map_err(|e| e.to_string())?;
                let name = rustls::pki_types::ServerName::try_from("bookinfo.example.com")
                    .map_err(|e| e.to_string())?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
                if alpn.as_deref() != Some(b"h2".as_slice()) {
                    return Err(format!("ALPN negotiated {alpn:?}"));
                }
                let (mut send, conn) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tls),
                )
                .await
                .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = http::Request::get("https://bookinfo.example.com/reviews/1")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .map_err(|e| e.to_string())?;
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                let (status, version) = (resp.status(), resp.version());
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                if status != 200 {
                    return Err(format!("{status}"));
                }
                Ok((status, version, String::from_utf8_lossy(&body).to_string()))
            }
        },
    )
    .await;
    assert_eq!(
        (status.as_u16(), version, body.as_str()),
        (200, http::Version::HTTP_2, "v2"),
        "{kind:?}"
    );
}

both!(gateway_tls, gateway_terminates_tls_with_alpn_h2);
