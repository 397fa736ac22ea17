//! The world changing under load: route weights and endpoint sets rewritten hundreds of times
//! while 500 rps flow through a jalur sidecar and a stock Envoy sidecar; a backend process
//! SIGKILLed with requests in flight on it, with and without retries, through both.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{envoy_sidecar, jalur_sidecar, sidecar_opts, Plane};
use jalur_demo::app::SampleApp;
use jalur_demo::load::{LoadGen, LoadProtocol, LoadSpec, LoadTarget, Sample};
use jalur_testkit::yaml::{service_entry, subsets_rule};
use jalur_testkit::{assert_eventually, http_get, peer_script, python, require_peer, ChildGuard};

const NS: &str = "bookinfo";
const HOST: &str = "reviews.bookinfo.svc.cluster.local";

/// WorkloadEntries for `backends` (version, index, address), each under its own name.
fn workload_entries(backends: &[(&str, usize, SocketAddr)]) -> String {
    backends
        .iter()
        .map(|(version, i, addr)| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: reviews-{version}-{i}, namespace: {NS}}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: reviews, version: {version}}}\n",
                addr.ip(),
                addr.port()
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn weights(v1: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: {NS}}}\nspec:\n  hosts: [reviews]\n  http:\n  - retries: {{attempts: 0}}\n    route:\n    - destination: {{host: reviews, subset: v1}}\n      weight: {v1}\n    - destination: {{host: reviews, subset: v2}}\n      weight: {}\n",
        100 - v1
    )
}

fn targets(caller: &str, addr: SocketAddr) -> Vec<LoadTarget> {
    [
        ("http/1.1", LoadProtocol::Http),
        ("h2", LoadProtocol::Http2),
    ]
    .into_iter()
    .map(|(what, protocol)| LoadTarget {
        name: format!("{caller} {what}"),
        addr,
        authority: HOST.into(),
        protocol,
        weight: 1,
    })
    .collect()
}

fn failed(samples: &[Sample], names: &[String]) -> Vec<String> {
    samples
        .iter()
        .filter(|s| !s.ok)
        .take(10)
        .map(|s| {
            format!(
                "{} at {:?}: {} {:?}",
                names[s.target], s.at, s.status, s.error
            )
        })
        .collect()
}

/// Waits until the control plane has built a generation past `after`; returns it.
async fn next_generation(plane: &Plane, after: u64) -> u64 {
    let generation = plane.control().state.generation.clone();
    assert_eventually("the change is built", Duration::from_secs(10), || {
        let now = generation.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if now > after {
                Ok(now)
            } else {
                Err(format!("generation {now}"))
            }
        }
    })
    .await
}

/// 200 route weight flips and 50 endpoint set changes, each built and pushed before the next,
/// while 500 rps (HTTP/1.1 keep-alive and h2, half through each) flow through a jalur sidecar
/// and a stock Envoy sidecar with retries off: no request fails and Envoy destroys no upstream
/// connection with a request on it. The last change is then all either proxy serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_config_under_load_200_weight_flips_and_50_endpoint_changes_fail_nothing() {
    let apps: Vec<(&str, usize, SampleApp)> = ["v1", "v2"]
        .into_iter()
        .flat_map(|v| (0..3).map(move |i| (v, i)))
        .map(|(v, i)| {
            (
                v,
                i,
                SampleApp::start("reviews", &format!("{v}-{i}")).expect("app"),
            )
        })
        .collect();
    let chosen = |pick: &dyn Fn(usize) -> bool| -> String {
        let set: Vec<(&str, usize, SocketAddr)> = apps
            .iter()
            .filter(|(_, i, _)| pick(*i))
            .map(|(v, i, app)| (*v, *i, app.addr()))
            .collect();
        workload_entries(&set)
    };
    let files = vec![
        ("service.yaml", service_entry("reviews", NS, HOST)),
        ("dr.yaml", subsets_rule("reviews", NS, &["v1", "v2"])),
        ("we.yaml", chosen(&|_| true)),
        ("vs.yaml", weights(50)),
    ];
    let plane = Plane::start_with(
        &files,
        jalur_control::Options {
            watch_interval: Duration::from_millis(10),
            debounce: Duration::from_millis(5),
            ..Plane::options()
        },
    )
    .await;
    let Some((envoy, envoy_out)) = envoy_sidecar(plane.xds, "productpage-envoy", NS).await else {
        return;
    };
    let (proxy, jalur_out) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", NS)).await;
    let mut all = targets("jalur", jalur_out);
    all.extend(targets("envoy", envoy_out));
    let names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
    for out in [jalur_out, envoy_out] {
        assert_eventually("the caller routes", Duration::from_secs(20), || async {
            match http_get(out, HOST, "/", &[]).await? {
                (200, _, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let load = LoadGen::start(LoadSpec {
        rate: 500,
        targets: all,
        timeout: Duration::from_secs(10),
    });

    let mut generation = plane
        .control()
        .state
        .generation
        .load(std::sync::atomic::Ordering::SeqCst);
    for change in 0..250u32 {
        if change % 5 == 4 {
            // An endpoint set change: two of each version's three, a different pair each time
            // (so every change adds one endpoint and removes another).
            let out = (change / 5) as usize % 3;
            plane.write("we.yaml", &chosen(&|i| i != out));
        } else {
            // A weight flip, 0..=100 in a scrambled order (both extremes included).
            plane.write("vs.yaml", &weights((change * 37) % 101));
        }
        generation = next_generation(&plane, generation).await;
    }
    // The last word: everything to v2-1 (v2's subset, with only v2-1 left in it).
    plane.write("vs.yaml", &weights(0));
    plane.write("we.yaml", &chosen(&|i| i == 1));
    let converged_from = assert_eventually(
        "both proxies serve only the last config",
        Duration::from_secs(20),
        || {
            let recent = load.samples_since(
                load.started_at()
                    .elapsed()
                    .saturating_sub(Duration::from_millis(300)),
            );
            async move {
                let stray: Vec<_> = recent
                    .iter()
                    .filter(|s| s.instance.as_deref() != Some("v2-1"))
                    .collect();
                if recent.len() > 50 && stray.is_empty() {
                    Ok(recent.first().map(|s| s.at).unwrap_or_default())
                } else {
                    Err(format!(
                        "{} of {} recent answers elsewhere",
                        stray.len(),
                        recent.len()
                    ))
                }
            }
        },
    )
    .await;
    let samples = load.stop().await;
    let failures = failed(&samples, &names);
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:#?}",
        samples.iter().filter(|s| !s.ok).count(),
        samples.len()
    );
    let destroyed: u64 = envoy
        .admin_get("/stats?filter=upstream_cx_destroy_with_active_rq")
        .await
        .expect("envoy stats")
        .lines()
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(
        destroyed, 0,
        "Envoy destroyed upstream connections with requests on them"
    );
    // The flips reached both proxies: one route push each per flip (a slow client may merge
    // two generations into one push, hence the margin).
    let metrics = http_get(plane.control().status_addr, "control", "/metrics", &[])
        .await
        .expect("metrics")
        .2;
    let route_pushes: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("jalur_xds_pushes_total{") && l.contains("type=\"rds\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        route_pushes >= 2 * 200 * 9 / 10,
        "{route_pushes} route pushes for 200 flips to 2 proxies"
    );
    eprintln!(
        "hot config: 250 changes, {route_pushes} route pushes, {} requests, 0 failed; converged by {converged_from:?}",
        samples.len()
    );
    proxy.shutdown().await;
}

/// A backend process (tests/peers/slow_http.py) that can be SIGKILLed mid-request.
struct SlowBackend {
    child: ChildGuard,
    addr: SocketAddr,
}

impl SlowBackend {
    fn start(py: &std::path::Path, name: &str) -> SlowBackend {
        let mut cmd = Command::new(py);
        cmd.arg(peer_script("slow_http.py"))
            .args(["--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ChildGuard::spawn("slow_http.py", &mut cmd).expect("python backend");
        let stdout = child.child_mut().stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
            .expect("PORT line");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        SlowBackend {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// Requests tagged `tag` it is serving now.
    async fn inflight(&self, tag: &str) -> u64 {
        match http_get(self.addr, "backend", &format!("/inflight?tag={tag}"), &[]).await {
            Ok((200, _, body)) => body.trim().parse().unwrap_or(0),
            _ => 0,
        }
    }

    fn kill9(&mut self) {
        let status = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let _ = self.child.child_mut().wait();
    }
}

/// How many requests per caller: enough that round robin and least-request both put some on
/// each backend.
const IN_FLIGHT: usize = 8;

/// Two slow backends behind a jalur sidecar and an Envoy sidecar, `retries` as the
/// VirtualService's; `IN_FLIGHT` slow requests sent through each caller, then the first backend
/// SIGKILLed with its share of them in flight. Returns, per caller (jalur, Envoy): how many were
/// in flight on the killed backend, and each request's (status, flags or body); and the jalur
/// sidecar's Prometheus page.
async fn kill_backend_mid_request(
    retries: &str,
    extra: Option<(&'static str, String)>,
) -> Option<([(u64, Vec<(u16, String)>); 2], String)> {
    let py = require_peer("python venv", python())?;
    let mut backends = [SlowBackend::start(&py, "b1"), SlowBackend::start(&py, "b2")];
    let entries: Vec<(&str, usize, SocketAddr)> =
        vec![("v1", 1, backends[0].addr), ("v1", 2, backends[1].addr)];
    let vs = format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: {NS}}}\nspec:\n  hosts: [reviews]\n  http:\n  - retries: {retries}\n    route:\n    - destination: {{host: reviews}}\n");
    let mut files = vec![
        ("service.yaml", service_entry("reviews", NS, HOST)),
        ("we.yaml", workload_entries(&entries)),
        ("vs.yaml", vs),
    ];
    files.extend(extra);
    let plane = Plane::start(&files).await;
    let (envoy, envoy_out) = envoy_sidecar(plane.xds, "productpage-envoy", NS).await?;
    let (proxy, jalur_out) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", NS)).await;
    let callers = [("jalur", jalur_out), ("envoy", envoy_out)];
    for (_, out) in callers {
        assert_eventually("the caller routes", Duration::from_secs(20), || async {
            match http_get(out, HOST, "/", &[]).await? {
                (200, _, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    let requests: Vec<Vec<_>> = callers
        .iter()
        .map(|(tag, out)| {
            (0..IN_FLIGHT)
                .map(|_| {
                    let (out, path) = (*out, format!("/slow?ms=3000&tag={tag}"));
                    tokio::spawn(async move { http_get(out, HOST, &path, &[]).await })
                })
                .collect()
        })
        .collect();
    let mut on_first = [0u64; 2];
    for (i, (tag, _)) in callers.iter().enumerate() {
        let b = &backends;
        on_first[i] = assert_eventually(
            "every request in flight",
            Duration::from_secs(10),
            || async move {
                let (one, two) = (b[0].inflight(tag).await, b[1].inflight(tag).await);
                if (one + two) as usize == IN_FLIGHT {
                    Ok(one)
                } else {
                    Err(format!("{tag}: {one} + {two} in flight"))
                }
            },
        )
        .await;
    }
    backends[0].kill9();
    let mut outcomes = [(on_first[0], Vec::new()), (on_first[1], Vec::new())];
    for (i, requests) in requests.into_iter().enumerate() {
        for r in requests {
            let (status, headers, body) = r.await.expect("join").expect("an answer");
            let why = headers
                .get("x-jalur-flags")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .unwrap_or(body);
            outcomes[i].1.push((status, why));
        }
    }
    let stats = http_get(proxy.stats_addr, "stats", "/stats/prometheus", &[])
        .await
        .expect("jalur stats")
        .2;
    drop(envoy);
    proxy.shutdown().await;
    Some((outcomes, stats))
}

/// A backend SIGKILLed with requests in flight, retries on (`reset,connect-failure`): every
/// idempotent request is answered, by the surviving backend, through jalur and through Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_9_mid_request_with_retries_fails_nothing() {
    // Half of 8 requests retried at once is more than the default retry budget allows (20 %
    // of active requests, at least 3 concurrent retries: the 4th gets 503 UO, in Envoy as in
    // jalur), so the DestinationRule sets maxRetries as an operator who wants them would.
    let dr = format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews, namespace: {NS}}}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      http: {{maxRetries: 100}}\n");
    let retries = "{attempts: 2, retryOn: \"reset,connect-failure\"}";
    let Some((outcomes, _)) = kill_backend_mid_request(retries, Some(("dr.yaml", dr))).await else {
        return;
    };
    for (caller, (on_killed, answers)) in ["jalur", "envoy"].iter().zip(&outcomes) {
        eprintln!("{caller}: {on_killed} in flight on the killed backend: {answers:?}");
        assert!(
            *on_killed > 0,
            "{caller}: none in flight on the killed backend"
        );
        assert!(
            answers.iter().all(|(status, _)| *status == 200),
            "{caller}: {answers:?}"
        );
        let by_b2 = answers.iter().filter(|(_, b)| b.starts_with("b2")).count();
        assert_eq!(
            by_b2, IN_FLIGHT,
            "{caller}: all answered by the survivor: {answers:?}"
        );
    }
}

/// The same without retries: exactly the requests in flight on the killed backend fail, with
/// 503 and Envoy's `UC` (upstream connection termination) — `x-jalur-flags: UC` from jalur,
/// "reset reason: connection termination" from Envoy — and the rest are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_9_mid_request_without_retries_fails_exactly_the_requests_on_it() {
    let Some((outcomes, stats)) = kill_backend_mid_request("{attempts: 0}", None).await else {
        return;
    };
    let uc: u64 = stats
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("response_flags=\"UC\"")
                && l.contains("response_code=\"503\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(uc, outcomes[0].0, "jalur counts each as 503 UC: {stats}");
    for ((caller, uc), (on_killed, answers)) in
        [("jalur", "UC"), ("envoy", "connection termination")]
            .iter()
            .zip(&outcomes)
    {
        assert!(
            *on_killed > 0,
            "{caller}: none in flight on the killed backend"
        );
        let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
        assert_eq!(failed.len() as u64, *on_killed, "{caller}: {answers:?}");
        assert!(
            failed.iter().all(|(s, why)| *s == 503 && why.contains(uc)),
            "{caller}: {failed:?}"
        );
    }
}
