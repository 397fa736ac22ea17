//! The mesh's life with real processes: `jalur control` and `jalur proxy` started from the
//! binary cargo built, SIGTERM and SIGKILL sent with kill(1), mixed load (HTTP/1.1 keep-alive,
//! h2, gRPC) running the whole time through a jalur caller sidecar and a stock Envoy caller
//! sidecar, retries off so every failure shows.

mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jalur_demo::app::SampleApp;
use jalur_demo::load::{LoadGen, LoadProtocol, LoadSpec, LoadTarget, Sample};
use jalur_testkit::{assert_eventually, envoy_binary, http_get, require_peer, Envoy, EnvoyOpts};
use process::{service_config, ControlProcess, ProxyProcess, ProxySpec, Workdir, NS};
use serde_json::json;

const SERVICE: &str = "reviews";
/// HTTP/1.1 between the sidecars on 9080; HTTP/2 (h2 and gRPC) on 9081.
const PORTS: [(&str, u16, &str); 2] = [("http2", 9081, "HTTP2"), ("http", 9080, "HTTP")];
/// `jalur proxy`'s default `--drain-period`, which these tests keep.
const DRAIN_PERIOD: Duration = Duration::from_secs(5);

fn authority(port: u16) -> String {
    format!("{SERVICE}.{NS}.svc.cluster.local:{port}")
}

/// One instance of the service: the app (in this test process) and its sidecar (a process).
struct Instance {
    app: SampleApp,
    sidecar: ProxyProcess,
}

impl Instance {
    fn start(xds: SocketAddr, name: &str, work: &Workdir) -> Instance {
        let app = SampleApp::start(SERVICE, name).expect("sample app");
        let mut spec = ProxySpec::instance(
            xds,
            SERVICE,
            app.addr().port(),
            &["http2:9081", "http:9080"],
        );
        // Each instance its own workload name, as each pod has its own.
        spec.version = name.into();
        let sidecar = ProxyProcess::start(&spec, &work.root);
        Instance { app, sidecar }
    }

    /// Where callers reach it: its sidecar's inbound port.
    fn endpoint(&self) -> (String, String) {
        (
            format!("{SERVICE}.{NS}.svc.cluster.local"),
            self.sidecar.inbound.to_string(),
        )
    }
}

/// A stock Envoy sidecar of `productpage` (a caller only), and its outbound address.
async fn envoy_caller(xds: SocketAddr) -> Option<(Envoy, SocketAddr)> {
    let binary = require_peer("envoy", envoy_binary())?;
    let id = format!("sidecar~127.0.0.1~productpage-envoy.{NS}~{NS}.svc.cluster.local");
    let mut opts = EnvoyOpts::new(xds, &id);
    opts.metadata = json!({ "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1", "NAMESPACE": NS });
    let envoy = Envoy::start_with(&binary, opts).await.expect("envoy");
    let port = envoy
        .listener_port("outbound")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Some((envoy, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// HTTP/1.1 keep-alive, h2 and gRPC through one caller sidecar.
fn targets(caller: &str, addr: SocketAddr) -> Vec<LoadTarget> {
    [
        ("http/1.1", 9080, LoadProtocol::Http),
        ("h2", 9081, LoadProtocol::Http2),
        ("grpc", 9081, LoadProtocol::Grpc),
    ]
    .into_iter()
    .map(|(what, port, protocol)| LoadTarget {
        name: format!("{caller} {what}"),
        addr,
        authority: authority(port),
        protocol,
        weight: 1,
    })
    .collect()
}

/// Waits until every target of `load` has had `n` good answers.
async fn until_flowing(load: &LoadGen, n: u64) {
    assert_eventually(
        "load flows through every target",
        Duration::from_secs(30),
        || {
            let summary = load.summary();
            async move {
                if summary.by_target.iter().all(|(_, ok, _)| *ok >= n) {
                    Ok(())
                } else {
                    Err(format!("{summary:?}"))
                }
            }
        },
    )
    .await;
}

/// Waits until every caller routes to the service: a request before then would be a cold
/// start, not what these tests are about.
async fn until_routed(callers: &[SocketAddr]) {
    assert_eventually("the callers route", Duration::from_secs(30), || async {
        for out in callers {
            let (status, _, body) = http_get(*out, &authority(9080), "/", &[]).await?;
            if status != 200 {
                return Err(format!("{out}: {status} {body}"));
            }
        }
        Ok(())
    })
    .await;
}

/// Failed samples, described, at most `max`.
fn failures(samples: &[Sample], names: &[String], max: usize) -> Vec<String> {
    samples
        .iter()
        .filter(|s| !s.ok)
        .take(max)
        .map(|s| {
            format!(
                "{} at {:?}: status {} grpc {:?} {:?}",
                names[s.target], s.at, s.status, s.grpc_status, s.error
            )
        })
        .collect()
}

/// Waits until the requests each app answered grow by `by` (traffic reaches every instance).
async fn until_served(instances: &[&Instance], by: u64) {
    let before: Vec<u64> = instances.iter().map(|i| i.app.requests()).collect();
    assert_eventually("every instance serves", Duration::from_secs(30), || {
        let now: Vec<u64> = instances.iter().map(|i| i.app.requests()).collect();
        let grown = now.iter().zip(&before).all(|(n, b)| *n >= b + by);
        let result = if grown {
            Ok(())
        } else {
            Err(format!("answered {now:?}, before {before:?}"))
        };
        async move { result }
    })
    .await;
}

/// SIGTERM on an instance's sidecar, as a rolling restart sends it, then a new sidecar on the
/// same ports (the pod's container restarting). Asserts each step of the drain sequence.
async fn restart(inst: &mut Instance, control: &ControlProcess, work: &Workdir) {
    let endpoint = inst.endpoint();
    let signalled = Instant::now();
    inst.sidecar.sigterm();
    assert_eventually("not ready at once", Duration::from_secs(2), || async {
        match inst.sidecar.ready_status().await? {
            503 => Ok(()),
            other => Err(format!("{other}")),
        }
    })
    .await;
    // Withdrawn without the registry's grace period (30 s in these tests).
    assert_eventually("endpoint withdrawn", Duration::from_secs(5), || async {
        let workloads = control.proxy_workloads().await?;
        if workloads.contains(&endpoint) {
            Err(format!("{workloads:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    let withdrawn = signalled.elapsed();
    // Still serving while callers move away, ever more answers telling HTTP/1.1 callers to
    // close (Envoy's gradual drain).
    let told = assert_eventually("an answer says Connection: close", DRAIN_PERIOD, || async {
        let (status, headers, _) = http_get(inst.sidecar.inbound, &authority(9080), "/", &[])
            .await
            .map_err(|e| format!("a draining sidecar must still answer: {e}"))?;
        let close = headers.get("connection").is_some_and(|v| v == "close");
        match (status, close) {
            (200, true) => Ok(Ok(signalled.elapsed())),
            (200, false) => Err("keep-alive".to_string()),
            (other, _) => Ok(Err(format!("a draining sidecar answered {other}"))),
        }
    })
    .await;
    let told = told.unwrap_or_else(|e| panic!("{e}"));
    let exit = inst
        .sidecar
        .wait_exit(DRAIN_PERIOD + Duration::from_secs(20))
        .await;
    let drained = signalled.elapsed();
    assert!(exit.success(), "exit status {exit}");
    assert!(
        drained >= DRAIN_PERIOD,
        "exited {drained:?} after SIGTERM, before the drain period"
    );
    eprintln!("restart: withdrawn after {withdrawn:?}, Connection: close seen after {told:?}, exited 0 after {drained:?}");

    let mut spec = inst.sidecar.spec.clone();
    spec.inbound_port = inst.sidecar.inbound.port();
    spec.outbound_port = inst.sidecar.outbound.port();
    inst.sidecar = ProxyProcess::start(&spec, &work.root);
    until_served(&[inst], 50).await;
}

/// A rolling restart of both instances of a service behind jalur sidecars, SIGTERM one after
/// the other, while a jalur caller sidecar and a stock Envoy caller sidecar each send 300 rps
/// of HTTP/1.1 keep-alive, h2 and gRPC with retries off: no request fails. Covers the drain
/// sequence (not ready, withdrawn at once, Connection: close / GOAWAY for the drain period,
/// exit 0) and "not ready, not routed" (the restarted sidecar gets traffic only once it holds
/// its config). Takes ~30 s: two drain periods of 5 s plus restarts, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigterm_fails_no_request_through_jalur_and_envoy_callers() {
    let work = Workdir::new("jalur-rolling", &service_config(SERVICE, &PORTS));
    let control = ControlProcess::start(&work.config(), &["--registry-grace", "30s"]);
    let Some((envoy, envoy_out)) = envoy_caller(control.xds).await else {
        return;
    };
    let mut a = Instance::start(control.xds, "reviews-a", &work);
    let mut b = Instance::start(control.xds, "reviews-b", &work);
    let caller = ProxyProcess::start(&ProxySpec::caller(control.xds, "productpage"), &work.root);
    for p in [&a.sidecar, &b.sidecar, &caller] {
        p.wait_ready().await;
    }
    let mut all = targets("jalur", caller.outbound);
    all.extend(targets("envoy", envoy_out));
    let names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
    until_routed(&[caller.outbound, envoy_out]).await;
    let load = LoadGen::start(LoadSpec {
        rate: 600,
        targets: all,
        timeout: Duration::from_secs(10),
    });
    until_flowing(&load, 30).await;
    until_served(&[&a, &b], 50).await;

    restart(&mut a, &control, &work).await;
    restart(&mut b, &control, &work).await;
    until_flowing(&load, 200).await;

    let summary = load.summary();
    let samples = load.stop().await;
    let failed = failures(&samples, &names, 10);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rolling restart: {failed:#?}\n{summary:?}\n{}\n{}\n{}",
        samples.iter().filter(|s| !s.ok).count(),
        samples.len(),
        a.sidecar.log_tail(),
        b.sidecar.log_tail(),
        envoy.log_tail()
    );
    eprintln!(
        "rolling restart: {} requests, 0 failed: {summary:?}",
        samples.len()
    );
    let workloads = control.proxy_workloads().await.expect("registry");
    assert_eq!(workloads, sorted(vec![a.endpoint(), b.endpoint()]));
}

fn sorted(mut v: Vec<(String, String)>) -> Vec<(String, String)> {
    v.sort();
    v
}

/// Envoy's view of its ADS connection (1 connected, 0 not).
async fn envoy_connected(envoy: &Envoy) -> Result<bool, String> {
    let text = envoy
        .admin_get("/stats?filter=control_plane.connected_state")
        .await?;
    Ok(text.contains("control_plane.connected_state: 1"))
}

async fn jalur_connected(p: &ProxyProcess) -> Result<bool, String> {
    Ok(p.xds_status().await?["connected"] == true)
}

/// `jalur control` as a process, SIGKILLed under keep-alive load through a jalur caller sidecar
/// and a stock Envoy caller sidecar: no request fails while it is down, both reconnect to the
/// restarted one, a change after the restart (a third instance) reaches both, and the registry
/// holds every instance once. The outage lasts 30 s (issue 9): longer than the proxies' xDS
/// keepalive interval (30 s) and many reconnect attempts at the backoff ceiling (5 s), so a
/// proxy that stopped serving once it noticed the loss, or only after retrying for a while,
/// would fail here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_9_under_load_costs_nothing_and_both_sidecars_resync() {
    const OUTAGE: Duration = Duration::from_secs(30);
    const RATE: u64 = 300;
    let work = Workdir::new("jalur-killed", &service_config(SERVICE, &PORTS));
    let mut control = ControlProcess::start(&work.config(), &[]);
    let Some((envoy, envoy_out)) = envoy_caller(control.xds).await else {
        return;
    };
    let a = Instance::start(control.xds, "reviews-a", &work);
    let b = Instance::start(control.xds, "reviews-b", &work);
    let caller = ProxyProcess::start(&ProxySpec::caller(control.xds, "productpage"), &work.root);
    for p in [&a.sidecar, &b.sidecar, &caller] {
        p.wait_ready().await;
    }
    let mut all = targets("jalur", caller.outbound);
    all.extend(targets("envoy", envoy_out));
    let names: Vec<String> = all.iter().map(|t| t.name.clone()).collect();
    until_routed(&[caller.outbound, envoy_out]).await;
    let load = LoadGen::start(LoadSpec {
        rate: RATE as u32,
        targets: all,
        timeout: Duration::from_secs(10),
    });
    until_flowing(&load, 30).await;
    until_served(&[&a, &b], 50).await;

    control.kill9();
    let killed_at = load.started_at().elapsed();
    assert_eventually(
        "both callers lost the control plane",
        Duration::from_secs(20),
        || async {
            match (
                jalur_connected(&caller).await?,
                envoy_connected(&envoy).await?,
            ) {
                (false, false) => Ok(()),
                other => Err(format!("connected (jalur, envoy): {other:?}")),
            }
        },
    )
    .await;
    // The outage itself: a fixed span of time under load, not a wait for a condition.
    tokio::time::sleep(OUTAGE.saturating_sub(load.started_at().elapsed() - killed_at)).await;
    let during = load.samples_since(killed_at);
    assert!(
        during.iter().all(|s| s.ok) && during.len() as u64 >= RATE * OUTAGE.as_secs() * 8 / 10,
        "while the control plane was down: {} requests, failed: {:#?}",
        during.len(),
        failures(&during, &names, 10)
    );

    control.restart();
    assert_eventually(
        "both callers reconnect",
        Duration::from_secs(30),
        || async {
            match (
                jalur_connected(&caller).await?,
                envoy_connected(&envoy).await?,
            ) {
                (true, true) => Ok(()),
                other => Err(format!("connected (jalur, envoy): {other:?}")),
            }
        },
    )
    .await;
    // Resynced: an instance that appears after the restart reaches both callers.
    let restarted_at = load.started_at().elapsed();
    let c = Instance::start(control.xds, "reviews-c", &work);
    assert_eventually(
        "the new instance is routed by both callers",
        Duration::from_secs(30),
        || {
            let seen = load.samples_since(restarted_at);
            let names = &names;
            async move {
                let via = |caller: &str| {
                    seen.iter().any(|s| {
                        s.instance.as_deref() == Some("reviews-c")
                            && names[s.target].starts_with(caller)
                    })
                };
                if via("jalur") && via("envoy") {
                    Ok(())
                } else {
                    Err(format!(
                        "reviews-c via jalur: {}, via envoy: {}",
                        via("jalur"),
                        via("envoy")
                    ))
                }
            }
        },
    )
    .await;
    // Every instance once: none lost across the restart, none doubled by the reconnects.
    let expected = sorted(vec![a.endpoint(), b.endpoint(), c.endpoint()]);
    assert_eventually(
        "the registry holds each instance once",
        Duration::from_secs(10),
        || async {
            let workloads = control.proxy_workloads().await?;
            if workloads == expected {
                Ok(())
            } else {
                Err(format!("{workloads:?}"))
            }
        },
    )
    .await;

    let samples = load.stop().await;
    let failed = failures(&samples, &names, 10);
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}\n{}",
        samples.iter().filter(|s| !s.ok).count(),
        samples.len(),
        control.log_tail()
    );
    eprintln!(
        "control plane killed: {} requests, {} while it was down, 0 failed",
        samples.len(),
        during.len()
    );
}
