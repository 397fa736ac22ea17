use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jalur_testkit::assert_eventually;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::prometheus::{url_encode, Queries};
use super::scrape::{prune, window_stats, Snapshot};
use super::text::{self, Kind, Sample};
use super::*;

const REVIEWS: &str = "reviews.service.consul";
/// Istio's default buckets for istio_request_duration_milliseconds, as prometheus-client
/// prints them.
const BOUNDS: [&str; 20] = [
    "0.5",
    "1.0",
    "5.0",
    "10.0",
    "25.0",
    "50.0",
    "100.0",
    "250.0",
    "500.0",
    "1000.0",
    "2500.0",
    "5000.0",
    "10000.0",
    "30000.0",
    "60000.0",
    "300000.0",
    "600000.0",
    "1800000.0",
    "3600000.0",
    "+Inf",
];

fn path(version: Option<&str>) -> PathSelector {
    PathSelector {
        destination_service: REVIEWS.into(),
        destination_version: version.map(str::to_string),
    }
}

/// One series as a jalur proxy reports it: `count` requests, each taking `latency_ms`.
#[derive(Clone)]
struct Series {
    reporter: &'static str,
    service: &'static str,
    version: &'static str,
    code: u16,
    grpc: &'static str,
    count: u64,
    latency_ms: f64,
}

fn series(version: &'static str, code: u16, grpc: &'static str, count: u64) -> Series {
    Series {
        reporter: "source",
        service: REVIEWS,
        version,
        code,
        grpc,
        count,
        latency_ms: 3.0,
    }
}

impl Series {
    fn labels(&self) -> String {
        format!(
            "reporter=\"{}\",source_workload=\"gw\",source_canonical_service=\"gw\",\
             destination_service=\"{}\",destination_workload=\"unknown\",\
             destination_canonical_service=\"reviews\",destination_version=\"{}\",\
             response_code=\"{}\",response_flags=\"-\",grpc_response_status=\"{}\",\
             request_protocol=\"http\",connection_security_policy=\"none\"",
            self.reporter, self.service, self.version, self.code, self.grpc
        )
    }
}

/// A `/stats/prometheus` page laid out as prometheus-client 0.26 writes it.
fn page(all: &[Series]) -> String {
    let mut out = String::from(
        "# HELP istio_requests Requests handled, by Istio's standard labels.\n\
         # TYPE istio_requests counter\n",
    );
    for s in all {
        out.push_str(&format!(
            "istio_requests_total{{{}}} {}\n",
            s.labels(),
            s.count
        ));
    }
    out.push_str(
        "# HELP istio_request_duration_milliseconds Request duration.\n\
         # TYPE istio_request_duration_milliseconds histogram\n",
    );
    for s in all {
        let labels = s.labels();
        let sum = s.count as f64 * s.latency_ms;
        out.push_str(&format!(
            "istio_request_duration_milliseconds_sum{{{labels}}} {sum:?}\n"
        ));
        out.push_str(&format!(
            "istio_request_duration_milliseconds_count{{{labels}}} {}\n",
            s.count
        ));
        for bound in BOUNDS {
            let le: f64 = bound.parse().unwrap_or(f64::INFINITY);
            let n = if s.latency_ms <= le { s.count } else { 0 };
            out.push_str(&format!(
                "istio_request_duration_milliseconds_bucket{{le=\"{bound}\",{labels}}} {n}\n"
            ));
        }
    }
    out.push_str("# EOF\n");
    out
}

fn requests(samples: &text::Samples) -> Vec<(String, f64, bool)> {
    let mut out: Vec<(String, f64, bool)> = samples
        .values()
        .filter(|s| s.kind == Kind::Requests)
        .map(|s| (s.destination_version.clone(), s.value, s.error))
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    out
}

// ---- the text format ----

#[test]
fn reads_a_proxy_page_keeping_only_caller_reported_requests_and_buckets() {
    let mut destination = series("legacy", 200, "", 1000);
    destination.reporter = "destination";
    let text = page(&[
        series("legacy", 200, "", 100),
        series("legacy", 503, "", 5),
        series("mesh", 200, "14", 3),
        destination,
    ]);
    let samples = text::parse(&text).expect("parses");
    assert_eq!(
        requests(&samples),
        vec![
            ("legacy".into(), 5.0, true),
            ("legacy".into(), 100.0, false),
            ("mesh".into(), 3.0, true)
        ]
    );
    // 3 caller-reported series × (1 counter + 20 buckets); _sum and _count are not kept.
    assert_eq!(samples.len(), 3 * 21);
    let inf_buckets: Vec<f64> = samples
        .values()
        .filter(|s| s.kind == Kind::Bucket { le: f64::INFINITY })
        .map(|s| s.value)
        .collect();
    assert_eq!(inf_buckets.len(), 3);
}

#[test]
fn unescapes_label_values_and_tells_series_apart_by_all_labels() {
    let text = concat!(
        "# TYPE istio_requests counter\n",
        r#"istio_requests_total{reporter="source",destination_service="we\"ird\\host\nx",destination_version="v1",response_code="200",grpc_response_status=""} 4"#,
        "\n",
        r#"istio_requests_total{reporter="source",destination_service="we\"ird\\host\nx",destination_version="v1",response_code="200",grpc_response_status="",source_workload="other"} 6"#,
        "\n# EOF\n",
    );
    let samples = text::parse(text).expect("parses");
    assert_eq!(samples.len(), 2);
    for sample in samples.values() {
        assert_eq!(sample.destination_service, "we\"ird\\host\nx");
        assert_eq!(sample.destination_version, "v1");
    }
    let total: f64 = samples.values().map(|s| s.value).sum();
    assert_eq!(total, 10.0);
}

#[test]
fn reads_envoys_classic_format_with_timestamps_and_any_label_order() {
    let text = "# TYPE istio_requests_total counter\n\
        istio_requests_total{response_code=\"500\",destination_service=\"reviews.service.consul\",reporter=\"source\"} 7 1700000000000\n\
        istio_request_duration_milliseconds_bucket{reporter=\"source\",destination_service=\"reviews.service.consul\",le=\"+Inf\"} 7\n\
        istio_request_duration_milliseconds_bucket{reporter=\"source\",destination_service=\"reviews.service.consul\",le=\"2.5e+01\"} 1e0\n\
        envoy_cluster_upstream_rq{weird line that is not ours\n";
    let samples = text::parse(text).expect("parses");
    let mut values: Vec<(String, f64)> = samples
        .values()
        .map(|s| (format!("{:?}/{}", s.kind, s.error), s.value))
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        values,
        vec![
            ("Bucket { le: 25.0 }/false".to_string(), 1.0),
            ("Bucket { le: inf }/false".to_string(), 7.0),
            ("Requests/true".to_string(), 7.0),
        ]
    );
}

#[test]
fn a_broken_line_of_a_kept_metric_names_its_line() {
    let text = "# TYPE istio_requests counter\nistio_requests_total{reporter=\"source\",destination_service=\"x} 1\n";
    let err = text::parse(text).expect_err("unterminated value");
    assert_eq!(err.line, 2);
    assert!(err.to_string().contains("unterminated"), "{err}");
    let err = text::parse("istio_requests_total{reporter=\"source\"} many\n").expect_err("value");
    assert!(
        err.to_string().contains("\"many\" is not a number"),
        "{err}"
    );
}

#[test]
fn errors_are_5xx_and_failing_grpc_statuses() {
    assert!(is_error("500", ""));
    assert!(is_error("503", "0"));
    assert!(!is_error("499", ""));
    assert!(!is_error("200", ""));
    assert!(!is_error("0", ""));
    for code in ["2", "4", "8", "13", "14", "15"] {
        assert!(is_error("200", code), "grpc {code}");
    }
    for code in ["0", "1", "3", "5", "7", "16", "abc"] {
        assert!(!is_error("200", code), "grpc {code}");
    }
}

// ---- quantiles and windows ----

#[test]
fn p99_interpolates_inside_the_bucket_like_prometheus() {
    // 60 requests under 5 ms, 4 between 250 and 500 ms: rank 63.36 falls 3.36/4 into
    // (250, 500].
    let mut buckets = vec![
        (1.0, 0.0),
        (5.0, 60.0),
        (250.0, 60.0),
        (500.0, 64.0),
        (f64::INFINITY, 64.0),
    ];
    let p99 = histogram_quantile(0.99, &mut buckets).expect("p99");
    assert!((p99 - 460.0).abs() < 1e-9, "{p99}");
    // Ranks in the first bucket start from 0; in +Inf, the highest finite bound is returned.
    let mut first = vec![(10.0, 100.0), (f64::INFINITY, 100.0)];
    assert_eq!(histogram_quantile(0.5, &mut first), Some(5.0));
    let mut overflow = vec![(10.0, 0.0), (f64::INFINITY, 100.0)];
    assert_eq!(histogram_quantile(0.99, &mut overflow), Some(10.0));
    let mut empty = vec![(10.0, 0.0), (f64::INFINITY, 0.0)];
    assert_eq!(histogram_quantile(0.99, &mut empty), None);
    let mut no_inf = vec![(10.0, 5.0), (20.0, 10.0)];
    assert_eq!(histogram_quantile(0.99, &mut no_inf), None);
}

#[test]
fn error_rate_needs_requests() {
    assert_eq!(PathStats::default().error_rate(), None);
    let stats = PathStats {
        requests: 200.0,
        errors: 5.0,
        p99_ms: None,
    };
    assert_eq!(stats.error_rate(), Some(0.025));
}

fn snapshot(at: Instant, counts: &[(&str, f64)]) -> Arc<Snapshot> {
    let samples = counts
        .iter()
        .map(|(version, value)| {
            let sample = Sample {
                destination_service: REVIEWS.into(),
                destination_version: version.to_string(),
                error: false,
                kind: Kind::Requests,
                value: *value,
            };
            (format!("requests {version}"), sample)
        })
        .collect();
    Arc::new(Snapshot { at, samples })
}

#[test]
fn a_window_starts_at_the_first_scrape_inside_it() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let ring = vec![
        snapshot(at(0), &[("v1", 0.0)]),
        snapshot(at(10), &[("v1", 10.0)]),
        snapshot(at(20), &[("v1", 25.0)]),
        snapshot(at(30), &[("v1", 45.0)]),
    ];
    // Windows ending "now", 2 s after the newest scrape.
    let requests = |window| {
        let start = at(32).checked_sub(window);
        window_stats(std::slice::from_ref(&ring), &path(None), start).requests
    };
    assert_eq!(requests(Duration::from_secs(12)), 20.0);
    // 17 s back from now is 15: the first scrape inside is at 20, never the one at 10.
    assert_eq!(requests(Duration::from_secs(17)), 20.0);
    assert_eq!(requests(Duration::from_secs(22)), 35.0);
    // 31 s back is 1: from the scrape at 10. Measured from the newest scrape instead (30 - 31
    // < 0) it would reach back to the one at 0.
    assert_eq!(requests(Duration::from_secs(31)), 35.0);
    // A window shorter than the time since the newest scrape has no increase.
    assert_eq!(requests(Duration::from_secs(1)), 0.0);
    // No start (no scrape that old): from the oldest.
    assert_eq!(
        window_stats(std::slice::from_ref(&ring), &path(None), None).requests,
        45.0
    );
    // A proxy scraped once has no increase yet.
    let one = vec![ring[3].clone()];
    assert_eq!(
        window_stats(&[one], &path(None), None),
        PathStats::default()
    );
}

#[test]
fn a_restart_counts_what_the_proxy_reported_since_and_new_series_count_whole() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let ring = vec![
        snapshot(at(0), &[("v1", 100.0)]),
        snapshot(at(10), &[("v1", 160.0)]),
        // restarted: the counter starts again; v2 appeared.
        snapshot(at(20), &[("v1", 7.0), ("v2", 3.0)]),
        snapshot(at(30), &[("v1", 12.0), ("v2", 4.0)]),
    ];
    let stats = |version| window_stats(std::slice::from_ref(&ring), &path(version), Some(t0));
    assert_eq!(stats(Some("v1")).requests, 60.0 + 7.0 + 5.0);
    assert_eq!(stats(Some("v2")).requests, 4.0);
    assert_eq!(stats(None).requests, 76.0);
    assert_eq!(stats(Some("v3")), PathStats::default());
    // Two proxies add up.
    let other = vec![
        snapshot(at(5), &[("v2", 1.0)]),
        snapshot(at(25), &[("v2", 11.0)]),
    ];
    let both = window_stats(&[ring, other], &path(Some("v2")), Some(t0));
    assert_eq!(both.requests, 14.0);
}

#[test]
fn retention_keeps_one_baseline_and_forgets_vanished_proxies() {
    let t0 = Instant::now();
    let at = |secs| t0 + Duration::from_secs(secs);
    let live: SocketAddr = ([127, 0, 0, 1], 1).into();
    let gone: SocketAddr = ([127, 0, 0, 1], 2).into();
    let mut rings: HashMap<SocketAddr, VecDeque<Arc<Snapshot>>> = HashMap::new();
    rings.insert(live, [0, 10, 20, 30].map(|s| snapshot(at(s), &[])).into());
    rings.insert(gone, [0, 10].map(|s| snapshot(at(s), &[])).into());
    prune(&mut rings, at(35), Duration::from_secs(20));
    let kept: Vec<Instant> = rings[&live].iter().map(|s| s.at).collect();
    assert_eq!(kept, vec![at(10), at(20), at(30)]);
    assert!(!rings.contains_key(&gone));
}

// ---- ScrapeSource against proxies on loopback ----

/// Serves `/stats/prometheus` from a page the test changes.
struct StatsServer {
    addr: SocketAddr,
    page: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl StatsServer {
    async fn start(text: String) -> StatsServer {
        let page = Arc::new(Mutex::new(text));
        let shared = page.clone();
        let (addr, task) = serve(move |path: &str| {
            let body = shared.lock().map(|p| p.clone()).unwrap_or_default();
            match path {
                "/stats/prometheus" => (200, body),
                _ => (404, "not found\n".to_string()),
            }
        })
        .await;
        StatsServer { addr, page, task }
    }

    fn set(&self, text: String) {
        if let Ok(mut page) = self.page.lock() {
            *page = text;
        }
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tiny HTTP/1 server on 127.0.0.1:0 answering `reply(path and query)`.
async fn serve<F>(reply: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(&str) -> (u16, String) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let reply = Arc::new(reply);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let target = req
                        .uri()
                        .path_and_query()
                        .map_or("/".to_string(), |pq| pq.to_string());
                    let (status, body) = reply(&target);
                    let response = hyper::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body)));
                    async move { response }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// An address nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

fn fixed(targets: Vec<SocketAddr>) -> Targets {
    Arc::new(move || targets.clone())
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn scraping_counts_increases_errors_and_p99_across_proxies() {
    let mut destination = series("legacy", 200, "", 1000);
    destination.reporter = "destination";
    let mut slow_errors = series("legacy", 503, "", 5);
    slow_errors.latency_ms = 400.0;
    let mut other_service = series("legacy", 200, "", 50);
    other_service.service = "ratings.service.consul";
    let gateway = StatsServer::start(page(&[
        series("legacy", 200, "", 100),
        slow_errors.clone(),
        destination.clone(),
        other_service.clone(),
    ]))
    .await;
    let sidecar = StatsServer::start(page(&[
        series("mesh", 200, "", 10),
        series("mesh", 200, "14", 3),
        series("mesh", 200, "0", 7),
    ]))
    .await;
    let dead = dead_addr().await;
    let source = ScrapeSource::new(
        fixed(vec![gateway.addr, sidecar.addr, dead]),
        Duration::from_secs(5),
        HOUR,
    );
    assert_eq!(source.describe(), "scraping 3 proxies");
    source.scrape_once().await;

    slow_errors.count = 9;
    destination.count = 2000;
    other_service.count = 80;
    gateway.set(page(&[
        series("legacy", 200, "", 160),
        slow_errors.clone(),
        destination.clone(),
        other_service.clone(),
    ]));
    sidecar.set(page(&[
        series("mesh", 200, "", 30),
        series("mesh", 200, "14", 5),
        series("mesh", 200, "0", 7),
    ]));
    source.scrape_once().await;

    let legacy = source
        .stats(&path(Some("legacy")), HOUR)
        .await
        .expect("stats");
    // 60 fast requests (≤ 5 ms) and 4 slow 503s (250..500 ms): p99 falls in the slow bucket.
    assert_eq!((legacy.requests, legacy.errors), (64.0, 4.0));
    let p99 = legacy.p99_ms.expect("p99");
    assert!((p99 - 460.0).abs() < 1e-9, "{p99}");
    let mesh = source
        .stats(&path(Some("mesh")), HOUR)
        .await
        .expect("stats");
    assert_eq!((mesh.requests, mesh.errors), (22.0, 2.0));
    // All 22 in (1, 5] ms: rank 21.78 of 22.
    let p99 = mesh.p99_ms.expect("p99");
    assert!((p99 - (1.0 + 4.0 * 0.99)).abs() < 1e-9, "{p99}");
    let all = source.stats(&path(None), HOUR).await.expect("stats");
    assert_eq!((all.requests, all.errors), (86.0, 6.0));
    let nothing = source.stats(&path(Some("v9")), HOUR).await.expect("stats");
    assert_eq!(nothing, PathStats::default());
    assert_eq!(nothing.error_rate(), None);

    let errors = source.last_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, dead);
    assert!(
        errors[0]
            .1
            .contains(&format!("http://{dead}/stats/prometheus")),
        "{errors:?}"
    );

    // The gateway restarts: its counters start again from zero.
    gateway.set(page(&[series("legacy", 200, "", 7)]));
    source.scrape_once().await;
    let legacy = source
        .stats(&path(Some("legacy")), HOUR)
        .await
        .expect("stats");
    assert_eq!((legacy.requests, legacy.errors), (64.0 + 7.0, 4.0));
}

#[tokio::test]
async fn a_proxy_that_answers_badly_or_not_at_all_is_reported_by_address() {
    let broken = StatsServer::start("istio_requests_total{reporter=\"source\" 1\n".into()).await;
    let hanging = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hanging_addr = hanging.local_addr().expect("addr");
    // Accepts and never answers.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = hanging.accept().await {
            held.push(stream);
        }
    });
    let source = ScrapeSource::new(
        fixed(vec![broken.addr, hanging_addr]),
        Duration::from_secs(5),
        HOUR,
    );
    let started = std::time::Instant::now();
    source.scrape_once().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "per-proxy timeout"
    );
    holder.abort();

    let errors: HashMap<SocketAddr, String> = source.last_errors().into_iter().collect();
    assert!(errors[&broken.addr].contains("line 1"), "{errors:?}");
    assert!(
        errors[&hanging_addr].contains("no answer within"),
        "{errors:?}"
    );
    let err = source
        .stats(&path(None), HOUR)
        .await
        .expect_err("nothing scraped");
    let text = err.to_string();
    assert!(text.contains(&broken.addr.to_string()), "{text}");
    assert!(text.contains("2 scrape targets"), "{text}");

    // Fixed: the error goes away and the proxy counts.
    broken.set(page(&[series("legacy", 200, "", 1)]));
    source.scrape_once().await;
    assert!(!source
        .last_errors()
        .iter()
        .any(|(addr, _)| *addr == broken.addr));
    assert_eq!(
        source.stats(&path(None), HOUR).await.expect("stats"),
        PathStats::default()
    );
}

#[tokio::test]
async fn run_scrapes_every_interval_until_shutdown() {
    let proxy = StatsServer::start(page(&[series("legacy", 200, "", 1)])).await;
    let targets = Arc::new(Mutex::new(vec![proxy.addr]));
    let shared = targets.clone();
    let source = ScrapeSource::new(
        Arc::new(move || shared.lock().map(|t| t.clone()).unwrap_or_default()),
        Duration::from_millis(20),
        HOUR,
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(source.clone().run(shutdown));

    assert_eventually("a first scrape", Duration::from_secs(10), || async {
        source
            .stats(&path(None), HOUR)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    proxy.set(page(&[series("legacy", 200, "", 41)]));
    assert_eventually("the increase is seen", Duration::from_secs(10), || async {
        let stats = source
            .stats(&path(None), HOUR)
            .await
            .map_err(|e| e.to_string())?;
        (stats.requests == 40.0)
            .then_some(())
            .ok_or(format!("{stats:?}"))
    })
    .await;

    // A target that goes away takes its error with it.
    let dead = dead_addr().await;
    targets.lock().expect("targets").push(dead);
    assert_eventually(
        "the dead proxy is reported",
        Duration::from_secs(10),
        || async {
            let errors = source.last_errors();
            (errors.len() == 1)
                .then_some(())
                .ok_or(format!("{errors:?}"))
        },
    )
    .await;
    targets
        .lock()
        .expect("targets")
        .retain(|addr| *addr != dead);
    assert_eventually(
        "its error is forgotten",
        Duration::from_secs(10),
        || async {
            let errors = source.last_errors();
            errors.is_empty().then_some(()).ok_or(format!("{errors:?}"))
        },
    )
    .await;

    stop.send(true).expect("run is listening");
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("run stops on shutdown")
        .expect("run did not panic");
}

// ---- PrometheusSource against a fake Prometheus ----

fn vector(value: &str) -> String {
    format!(
        r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1700000000.123,"{value}"]}}]}}}}"#
    )
}

const EMPTY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;

/// A fake Prometheus: records each query (decoded) and answers `reply(query)`.
async fn fake_prometheus<F>(reply: F) -> (String, Arc<Mutex<Vec<String>>>, JoinHandle<()>)
where
    F: Fn(&str) -> (u16, String) + Send + Sync + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let (addr, task) = serve(move |target: &str| {
        let Some(encoded) = target.strip_prefix("/api/v1/query?query=") else {
            return (404, format!("unexpected {target}"));
        };
        assert!(
            !encoded.contains(['"', ' ', '{', '|', '+']),
            "not URL-encoded: {encoded}"
        );
        let query = percent_encoding::percent_decode_str(encoded)
            .decode_utf8_lossy()
            .into_owned();
        if let Ok(mut seen) = record.lock() {
            seen.push(query.clone());
        }
        reply(&query)
    })
    .await;
    (format!("http://{addr}/"), seen, task)
}

#[tokio::test]
async fn prometheus_queries_carry_the_selector_and_window() {
    let (url, seen, task) = fake_prometheus(|query| {
        let value = if query.starts_with("histogram_quantile") {
            "123.4"
        } else if query.contains("response_code") {
            "7"
        } else {
            "250"
        };
        (200, vector(value))
    })
    .await;
    let source = PrometheusSource::new(&url);
    assert_eq!(
        source.describe(),
        format!("prometheus {}", url.trim_end_matches('/'))
    );
    let stats = source
        .stats(&path(Some("legacy")), Duration::from_secs(60))
        .await
        .expect("stats");
    task.abort();
    assert_eq!(
        stats,
        PathStats {
            requests: 250.0,
            errors: 7.0,
            p99_ms: Some(123.4)
        }
    );
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for query in &seen {
        assert!(
            query.contains(
                r#"reporter="source",destination_service="reviews.service.consul",destination_version="legacy""#
            ),
            "{query}"
        );
        assert!(query.contains("[60s]"), "{query}");
    }
    assert!(
        seen.iter()
            .any(|q| q.contains(r#"grpc_response_status=~"2|4|8|13|14|15""#)),
        "{seen:?}"
    );
}

#[tokio::test]
async fn prometheus_without_data_means_zero_and_no_p99() {
    let (url, _seen, task) = fake_prometheus(|query| {
        if query.starts_with("histogram_quantile") {
            (200, vector("NaN"))
        } else {
            (200, EMPTY.to_string())
        }
    })
    .await;
    let stats = PrometheusSource::new(&url)
        .stats(&path(None), Duration::from_millis(1500))
        .await
        .expect("stats");
    task.abort();
    assert_eq!(stats, PathStats::default());
}

#[tokio::test]
async fn prometheus_errors_name_the_url_and_the_cause() {
    let (url, _seen, task) = fake_prometheus(|_| {
        (
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected"}"#
                .to_string(),
        )
    })
    .await;
    let err = PrometheusSource::new(&url)
        .stats(&path(None), Duration::from_secs(60))
        .await
        .expect_err("rejected");
    task.abort();
    let text = err.to_string();
    assert!(matches!(err, MetricsError::Query { .. }), "{text}");
    assert!(text.contains("/api/v1/query?query=sum"), "{text}");
    assert!(
        text.contains("bad_data") && text.contains("parse error"),
        "{text}"
    );

    let (url, _seen, task) = fake_prometheus(|_| (503, "overloaded\n".to_string())).await;
    let err = PrometheusSource::new(&url)
        .stats(&path(None), Duration::from_secs(60))
        .await
        .expect_err("503");
    task.abort();
    assert!(err.to_string().contains("HTTP 503: overloaded"), "{err}");

    let dead = dead_addr().await;
    let err = PrometheusSource::new(&dead.to_string())
        .stats(&path(None), Duration::from_secs(60))
        .await
        .expect_err("unreachable");
    assert!(matches!(err, MetricsError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("http://{dead}/api/v1/query")),
        "{err}"
    );
}

#[test]
fn the_promql_for_a_path() {
    let queries = Queries::new(&path(Some("le\"gacy")), Duration::from_millis(90_500));
    let s = r#"reporter="source",destination_service="reviews.service.consul",destination_version="le\"gacy""#;
    assert_eq!(
        queries,
        Queries {
            requests: format!("sum(increase(istio_requests_total{{{s}}}[90500ms]))"),
            errors: format!(
                "(sum(increase(istio_requests_total{{{s},response_code=~\"[5-9][0-9][0-9]\"}}[90500ms])) or vector(0)) + \
                 (sum(increase(istio_requests_total{{{s},response_code!~\"[5-9][0-9][0-9]\",grpc_response_status=~\"2|4|8|13|14|15\"}}[90500ms])) or vector(0))"
            ),
            p99: format!(
                "histogram_quantile(0.99, sum by (le) (increase(istio_request_duration_milliseconds_bucket{{{s}}}[90500ms])))"
            ),
        }
    );
    // Exact to the millisecond: rounded up to whole seconds, a window starting at a stage's
    // hold would reach back into the stage before.
    assert!(Queries::new(&path(None), Duration::from_millis(1_300))
        .requests
        .ends_with("[1300ms]))"));
    assert!(Queries::new(&path(None), Duration::ZERO)
        .requests
        .ends_with("[1ms]))"));
    assert_eq!(url_encode("a b\"{}|+~"), "a%20b%22%7B%7D%7C%2B~");
}
