//! Tests of the load generator against sample services, a recording server and a dead port.

use std::sync::Arc;

use http::header::HOST;
use http::Response;
use hyper::service::service_fn;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use super::*;
use crate::app::SampleApp;
use crate::eventually::assert_eventually;

const DEADLINE: Duration = Duration::from_secs(10);

fn target(name: &str, addr: SocketAddr, protocol: LoadProtocol) -> LoadTarget {
    LoadTarget {
        name: name.to_string(),
        addr,
        authority: "payments".to_string(),
        protocol,
        weight: 1,
    }
}

fn spec(rate: u32, targets: Vec<LoadTarget>) -> LoadSpec {
    LoadSpec {
        rate,
        targets,
        timeout: Duration::from_secs(2),
    }
}

fn sample(at_ms: u64, ok: bool, instance: &str) -> Sample {
    Sample {
        at: Duration::from_millis(at_ms),
        done: Duration::from_millis(at_ms + 1),
        target: 0,
        instance: Some(instance.to_string()),
        ok,
        status: if ok { 200 } else { 500 },
        grpc_status: None,
        latency: Duration::from_millis(1),
        error: None,
    }
}

/// Waits until at least `ok` requests to every target succeeded.
async fn until_ok_per_target(load: &LoadGen, ok: u64) {
    assert_eventually("every target answered", DEADLINE, || async {
        let summary = load.summary();
        if summary.by_target.iter().all(|(_, done, _)| *done >= ok) {
            Ok(())
        } else {
            Err(format!("{summary:?}"))
        }
    })
    .await;
}

#[test]
fn smooth_weighted_round_robin_interleaves_by_weight() {
    let mut pick = SmoothWeighted::new([3, 1, 0].into_iter());
    let picks: Vec<usize> = (0..8).filter_map(|_| pick.next()).collect();
    assert_eq!(picks, [0, 0, 1, 0, 0, 0, 1, 0]);
    let mut none = SmoothWeighted::new([0, 0].into_iter());
    assert!(!none.any());
    assert_eq!(none.next(), None);
}

#[test]
fn share_counts_ok_samples_sent_in_the_window() {
    let samples = [
        sample(5, true, "v1"),
        sample(10, true, "v2"),
        sample(15, false, "v2"),
        sample(19, true, "v2"),
        sample(20, true, "v2"),
    ];
    let is_v2 = |s: &Sample| s.instance.as_deref() == Some("v2");
    let window = |from, to| {
        share(
            &samples,
            Duration::from_millis(from),
            Duration::from_millis(to),
            is_v2,
        )
    };
    assert_eq!(window(0, 20), (3, 2));
    assert_eq!(window(10, 21), (3, 3));
    assert_eq!(window(30, 40), (0, 0));
}

#[tokio::test]
async fn sample_app_answers_http_h2_and_grpc_through_the_load() {
    let app = SampleApp::start("payments", "payments-1").expect("start");
    let load = LoadGen::start(spec(
        100,
        vec![
            target("http", app.addr(), LoadProtocol::Http),
            target("grpc", app.addr(), LoadProtocol::Grpc),
            target("h2", app.addr(), LoadProtocol::Http2),
        ],
    ));
    until_ok_per_target(&load, 10).await;
    let samples = load.stop().await;
    assert!(!samples.is_empty());
    for sample in &samples {
        assert!(sample.ok, "{sample:?}");
        assert_eq!(sample.status, 200);
        assert_eq!(sample.instance.as_deref(), Some("payments-1"));
        assert_eq!(sample.error, None);
        assert!(sample.done >= sample.at && sample.latency == sample.done - sample.at);
        let want = if sample.target == 1 { Some(0) } else { None };
        assert_eq!(sample.grpc_status, want, "{sample:?}");
    }
    assert_eq!(app.requests(), samples.len() as u64);
}

#[tokio::test]
async fn faults_of_the_sample_app_show_in_the_samples() {
    let app = SampleApp::start("payments", "payments-1").expect("start");
    app.set_fault_percent(100);
    let load = LoadGen::start(spec(
        100,
        vec![
            target("http", app.addr(), LoadProtocol::Http),
            target("grpc", app.addr(), LoadProtocol::Grpc),
        ],
    ));
    assert_eventually("failures of both kinds", DEADLINE, || async {
        let summary = load.summary();
        if summary.by_target.iter().all(|(_, _, failed)| *failed >= 3) {
            Ok(())
        } else {
            Err(format!("{summary:?}"))
        }
    })
    .await;
    let samples = load.stop().await;
    for sample in &samples {
        assert!(!sample.ok, "{sample:?}");
        assert_eq!(sample.instance.as_deref(), Some("payments-1"));
        if sample.target == 0 {
            assert_eq!((sample.status, sample.grpc_status), (500, None));
        } else {
            assert_eq!((sample.status, sample.grpc_status), (200, Some(13)));
            assert_eq!(sample.error.as_deref(), Some("injected fault"));
        }
    }
}

#[tokio::test]
async fn keeps_the_rate_over_two_seconds() {
    let app = SampleApp::start("payments", "payments-1").expect("start");
    let load = LoadGen::start(spec(
        200,
        vec![
            target("http", app.addr(), LoadProtocol::Http),
            target("grpc", app.addr(), LoadProtocol::Grpc),
        ],
    ));
    // The measurement window, not a readiness wait.
    tokio::time::sleep_until(load.started_at() + Duration::from_secs(2)).await;
    let summary = load.summary();
    let samples = load.stop().await;
    let in_window = samples
        .iter()
        .filter(|s| s.at < Duration::from_secs(2))
        .count();
    assert!(
        (360..=440).contains(&in_window),
        "{in_window} requests in 2 s: {summary:?}"
    );
    assert!((360..=440).contains(&summary.sent), "{summary:?}");
    let failed: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    for protocol in [0, 1] {
        let count = samples.iter().filter(|s| s.target == protocol).count();
        assert!(
            count >= 180,
            "target {protocol}: {count} of {}",
            samples.len()
        );
    }
}

#[tokio::test]
async fn a_dead_target_yields_failed_samples_with_an_error() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let load = LoadGen::start(spec(
        50,
        vec![
            target("http", dead, LoadProtocol::Http),
            target("grpc", dead, LoadProtocol::Grpc),
        ],
    ));
    assert_eventually("failed samples", DEADLINE, || async {
        match load.summary() {
            summary if summary.failed >= 6 => Ok(()),
            summary => Err(format!("{summary:?}")),
        }
    })
    .await;
    let samples = load.stop().await;
    for sample in &samples {
        assert!(
            !sample.ok && sample.status == 0 && sample.instance.is_none(),
            "{sample:?}"
        );
        let error = sample.error.as_deref().unwrap_or_default();
        assert!(error.contains(&format!("connecting to {dead}")), "{error}");
    }
}

#[tokio::test]
async fn sends_the_authority_of_the_target() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let authority = match request.uri().authority() {
                    Some(authority) => authority.to_string(),
                    None => request
                        .headers()
                        .get(HOST)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                };
                let version = format!("{:?}", request.version());
                record
                    .lock()
                    .expect("not poisoned")
                    .push((version, authority));
                std::future::ready(Response::builder().body(Full::new(Bytes::new())))
            });
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let mut http = target("http", addr, LoadProtocol::Http);
    http.authority = "payments.demo.svc:8080".to_string();
    let mut grpc = target("grpc", addr, LoadProtocol::Grpc);
    grpc.authority = "ledger.demo".to_string();
    let load = LoadGen::start(spec(100, vec![http, grpc]));
    until_ok_per_target(&load, 0).await;
    assert_eventually("both targets were called", DEADLINE, || async {
        let seen = seen.lock().expect("not poisoned").clone();
        let h1 = seen
            .iter()
            .any(|s| s == &("HTTP/1.1".to_string(), "payments.demo.svc:8080".to_string()));
        let h2 = seen
            .iter()
            .any(|s| s == &("HTTP/2.0".to_string(), "ledger.demo".to_string()));
        if h1 && h2 && seen.len() >= 4 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    drop(load);
    let seen = seen.lock().expect("not poisoned").clone();
    let unexpected: Vec<_> = seen
        .iter()
        .filter(|(_, authority)| {
            authority != "payments.demo.svc:8080" && authority != "ledger.demo"
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
}
