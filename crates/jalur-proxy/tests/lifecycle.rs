//! jalur proxy under stress of its surroundings, in process: gRPC through a sidecar pair, the
//! control plane stopped and restarted under steady load, the drain of requests in flight, a
//! request that arrives before its routes, and malformed requests. The same lifecycle with real
//! processes and signals (SIGKILL, SIGTERM) is in `crates/jalur/tests/lifecycle_process.rs`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{jalur_sidecar, sidecar_opts, Plane};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{
    assert_eventually, http_get, peer_script, python, require_peer, EchoServer, GrpcBackend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "reviews.bookinfo.svc.cluster.local";

fn routed_config(backend: &EchoServer) -> Vec<(&'static str, String)> {
    vec![
        ("service.yaml", service_entry("reviews", "bookinfo", HOST)),
        ("we.yaml", workload_entry("reviews", "v1", "bookinfo", backend.addr())),
        (
            "vs.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http:\n  - retries: {attempts: 0}\n    route:\n    - destination: {host: reviews}\n".into(),
        ),
    ]
}

/// Steady load: `workers` loops sending requests until `stop`, counting successes and failures.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(target: std::net::SocketAddr, workers: usize) -> Load {
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let tasks = (0..workers)
            .map(|_| {
                let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        match http_get(target, HOST, "/", &[]).await {
                            Ok((200, _, _)) => ok.fetch_add(1, Ordering::SeqCst),
                            other => {
                                if errors.len() < 5 {
                                    errors.push(format!("{other:?}"));
                                }
                                failed.fetch_add(1, Ordering::SeqCst)
                            }
                        };
                    }
                    errors
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap_or_default());
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }

    async fn wait_ok(&self, more_than: u64) {
        let ok = self.ok.clone();
        assert_eventually("load flows", Duration::from_secs(20), || {
            let n = ok.load(Ordering::SeqCst);
            async move {
                if n > more_than {
                    Ok(())
                } else {
                    Err(format!("{n} ok so far"))
                }
            }
        })
        .await;
    }
}

/// Issue 12: a vanished peer is found by TCP keepalive at both ends (answered by the peer's
/// kernel), not by HTTP/2 pings, which a control plane busy with a fleet-wide push answers late
/// and which then ended healthy streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_xds_connection_is_watched_by_tcp_keepalive_at_both_ends() {
    let backend = EchoServer::start("v1").await;
    let plane = Plane::start(&routed_config(&backend)).await;
    let (_proxy, _) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    common::assert_xds_kept_alive_by_tcp(plane.xds.port()).await;
}

/// The in-process control plane is stopped (its streams end cleanly), not killed: the SIGKILL
/// version, with a process and a stock Envoy beside, is
/// `control_plane_killed_9_under_load_costs_nothing_and_both_sidecars_resync`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_stopped_under_load_costs_nothing_and_the_proxy_resyncs() {
    let backend = EchoServer::start("v1").await;
    let mut plane = Plane::start(&routed_config(&backend)).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    let load = Load::start(outbound, 4);
    load.wait_ok(50).await;

    // Stop the control plane: the proxy keeps serving its last good config.
    plane.stop().await;
    assert_eventually(
        "the proxy notices the control plane is gone",
        Duration::from_secs(10),
        || async {
            if proxy.state.config.status().connected {
                Err("still connected".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
    let during = load.ok.load(Ordering::SeqCst);
    load.wait_ok(during + 100).await;

    // It comes back on the same address; the proxy reconnects and takes new config.
    plane.restart().await;
    assert_eventually("the proxy reconnects", Duration::from_secs(15), || async {
        let s = proxy.state.config.status();
        if s.connected {
            Ok(())
        } else {
            Err(format!("{:?}", s.last_error))
        }
    })
    .await;
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(
        failed, 0,
        "{ok} ok, {failed} failed through the outage: {errors:?}"
    );

    let v2 = EchoServer::start("v2").await;
    plane.write(
        "we.yaml",
        &workload_entry("reviews", "v1", "bookinfo", v2.addr()),
    );
    assert_eventually(
        "config changed after the restart reaches the proxy",
        Duration::from_secs(10),
        || async {
            match http_get(outbound, HOST, "/", &[]).await {
                Ok((200, h, _)) if h.get("x-backend").is_some_and(|v| v == "v2") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    proxy.shutdown().await;
}

/// `Proxy::shutdown` (what SIGTERM calls) with a drain period of zero; SIGTERM itself, with the
/// drain period, is `rolling_restart_with_sigterm_fails_no_request_through_jalur_and_envoy_callers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_every_request_in_flight() {
    let backend = EchoServer::start("v1").await;
    let plane = Plane::start(&routed_config(&backend)).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    backend.delay(Duration::from_millis(300));
    let in_flight: Vec<_> = (0..12)
        .map(|_| tokio::spawn(http_get(outbound, HOST, "/slow", &[])))
        .collect();
    // Let every request reach the backend, then drain.
    assert_eventually("requests in flight", Duration::from_secs(5), || {
        let hits = backend.hits();
        async move {
            if hits >= 12 {
                Ok(())
            } else {
                Err(format!("{hits} at the backend"))
            }
        }
    })
    .await;
    let drained = tokio::spawn(proxy.shutdown());
    for r in in_flight {
        let (status, _, _) = r.await.expect("join").expect("in-flight request completes");
        assert_eq!(status, 200, "an in-flight request was cut by the drain");
    }
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drain ends")
        .expect("join");
    let after = http_get(outbound, HOST, "/", &[]).await;
    assert!(
        after.is_err(),
        "no new connections after the drain: {after:?}"
    );
}

async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_are_counted_and_never_forwarded() {
    let backend = EchoServer::start("v1").await;
    let plane = Plane::start(&routed_config(&backend)).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    let before = backend.hits();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let cases: [(&str, Vec<u8>); 3] = [
        ("invalid header bytes", format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nBad\x01Name: y\r\n\r\n").into_bytes()),
        ("oversized headers", huge.into_bytes()),
        (
            "conflicting Content-Length and Transfer-Encoding",
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello").into_bytes(),
        ),
    ];
    for (what, req) in &cases {
        let reply = raw(outbound, req).await;
        let status_line = reply.lines().next().unwrap_or("");
        assert!(
            status_line.starts_with("HTTP/1.1 400") || status_line.starts_with("HTTP/1.1 431"),
            "{what}: {status_line:?}"
        );
    }
    let smuggle = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    let reply = raw(outbound, smuggle.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "CL + TE: {reply:?}");
    assert_eq!(
        backend.hits(),
        before,
        "nothing malformed reached the backend"
    );
    let stats = http_get(proxy.stats_addr, "stats", "/stats/prometheus", &[])
        .await
        .expect("stats")
        .2;
    let rejected: u64 = stats
        .lines()
        .filter(|l| l.starts_with("jalur_proxy_downstream_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(rejected >= 4, "every rejection counted: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_through_a_sidecar_pair() {
    let Some(py) = require_peer("python venv with grpcio", python()) else {
        return;
    };
    let backend = GrpcBackend::start(&py, "echo-1")
        .await
        .expect("grpc backend");
    let plane = Plane::start(&[]).await;
    let xds = plane.xds;
    // The server side: a sidecar announcing the gRPC workload; callers reach it on its inbound port.
    let port = backend.addr().port();
    let server = Proxy::start(ProxyOptions {
        app_port: Some(port),
        ports: vec![format!("grpc:{port}").parse().expect("port")],
        ..sidecar_opts(xds, "echo", "grpc")
    })
    .await
    .expect("server sidecar");
    let (client, outbound) = jalur_sidecar(sidecar_opts(xds, "caller", "grpc")).await;
    let authority = "echo.grpc.svc.cluster.local";
    // Ready without sending a call: both sidecars report ready and the caller's cluster for
    // the service has the server sidecar as its host. Then the calls run once, and must all
    // succeed (a re-run until clean would hide a flaky request path).
    assert_eventually(
        "both sidecars ready, the caller knows the server",
        Duration::from_secs(20),
        || async {
            for proxy in [&server, &client] {
                match http_get(proxy.health_addr, "h", "/healthz/ready", &[]).await {
                    Ok((200, _, _)) => {}
                    other => return Err(format!("{} not ready: {other:?}", proxy.node_id)),
                }
            }
            let (_, _, body) = http_get(client.admin_addr, "a", "/clusters", &[]).await?;
            let clusters: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let hosts = clusters
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["name"].as_str().is_some_and(|n| n.ends_with(authority)))
                .filter_map(|c| c["hosts"].as_array())
                .map(Vec::len)
                .sum::<usize>();
            if hosts > 0 {
                Ok(())
            } else {
                Err(format!("no host for {authority} yet: {body}"))
            }
        },
    )
    .await;
    let out = tokio::process::Command::new(&py)
        .arg(peer_script("grpc_call.py"))
        .args([
            "--target",
            &outbound.to_string(),
            "--authority",
            authority,
            "--count",
            "20",
            "--stream",
            "50",
            "--timeout-secs",
            "5",
        ])
        .output()
        .await
        .expect("grpc_call.py runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_call.py printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        report["unary_ok"], 20,
        "every unary call succeeds: {report}"
    );
    assert_eq!(
        report["stream"].as_array().map(Vec::len),
        Some(50),
        "every streamed message arrives: {report}"
    );
    assert_eq!(report["stream"][49], "echo-1:49", "{report}");
    let stats = http_get(server.stats_addr, "s", "/stats/prometheus", &[])
        .await
        .expect("stats")
        .2;
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("request_protocol=\"grpc\"")
            && l.contains("grpc_response_status=\"0\"")),
        "the server sidecar reports the gRPC calls as destination: {stats}"
    );
    client.shutdown().await;
    server.shutdown().await;
}

/// A backend that answers any request with 101 and then echoes bytes (what a WebSocket server
/// does after its handshake, minus the framing).
async fn upgrade_echo_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let backend = upgrade_echo_backend().await;
    let files = vec![
        ("service.yaml", service_entry("reviews", "bookinfo", HOST)),
        (
            "we.yaml",
            workload_entry("reviews", "v1", "bookinfo", backend),
        ),
    ];
    let plane = Plane::start(&files).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    let mut s = tokio::net::TcpStream::connect(outbound)
        .await
        .expect("connect");
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
    s.write_all(handshake.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    for msg in ["ping", "a longer message after the first"] {
        s.write_all(msg.as_bytes()).await.expect("send");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg.as_bytes());
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_sends_a_shadow_copy_and_the_caller_sees_only_the_primary() {
    let (primary, shadow) = (
        EchoServer::start("primary").await,
        EchoServer::start("shadow").await,
    );
    let files = vec![
        ("service.yaml", service_entry("reviews", "bookinfo", HOST)),
        ("we.yaml", workload_entry("reviews", "v1", "bookinfo", primary.addr())),
        ("shadow.yaml", service_entry("shadow", "bookinfo", "shadow.bookinfo.svc.cluster.local")),
        ("we-shadow.yaml", workload_entry("shadow", "v1", "bookinfo", shadow.addr())),
        (
            "vs.yaml",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http:\n  - mirror: {host: shadow}\n    mirrorPercentage: {value: 100}\n    route:\n    - destination: {host: reviews}\n".into(),
        ),
    ];
    let plane = Plane::start(&files).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    assert_eventually(
        "mirrored route is live",
        Duration::from_secs(10),
        || async {
            let (status, h, _) = http_get(outbound, HOST, "/", &[]).await?;
            if status == 200
                && h.get("x-backend").is_some_and(|v| v == "primary")
                && shadow.hits() > 0
            {
                Ok(())
            } else {
                Err(format!("{status} {h:?}"))
            }
        },
    )
    .await;
    let before = shadow.hits();
    for _ in 0..20 {
        let (status, h, _) = http_get(outbound, HOST, "/", &[]).await.expect("request");
        assert_eq!(
            (status, h.get("x-backend").and_then(|v| v.to_str().ok())),
            (200, Some("primary"))
        );
    }
    assert_eventually("every request mirrored", Duration::from_secs(5), || {
        let n = shadow.hits() - before;
        async move {
            if n == 20 {
                Ok(())
            } else {
                Err(format!("{n} mirrored"))
            }
        }
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_service_through_a_local_port_is_proxied_and_counted() {
    // A TCP echo: what a database looks like to a proxy that does not parse it.
    let db = common::probe::tcp_echo().await;
    // The sidecar's local port for the TCP service comes from the annotation; 0 = OS-chosen,
    // read back from the proxy's listeners.
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ledger\n  namespace: bookinfo\n  annotations: {{jalur.dev/local-ports: \"5432=0\"}}\nspec:\n  hosts: [ledger.db.internal]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 5432, name: tcp-postgres, protocol: TCP}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{tcp-postgres: {}}}\n",
        db.port()
    );
    let plane = Plane::start(&[("ledger.yaml", se)]).await;
    let (proxy, _) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    let local = common::bound_listener(&proxy, "tcp|5432|ledger.db.internal").await;
    for round in 0..3 {
        let mut s = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect");
        let msg = format!("SELECT {round};");
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(back, msg.as_bytes());
    }
    let stats = assert_eventually("TCP metrics", Duration::from_secs(5), || async {
        let stats = http_get(proxy.stats_addr, "s", "/stats/prometheus", &[])
            .await?
            .2;
        let closed = stats.lines().any(|l| {
            l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains("ledger.db.internal")
                && l.ends_with(" 3")
        });
        if closed {
            Ok(stats)
        } else {
            Err(stats)
        }
    })
    .await;
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{") && l.ends_with(" 3")),
        "{stats}"
    );
    assert!(
        stats
            .lines()
            .any(|l| l.starts_with("istio_tcp_sent_bytes_total{")
                && l.contains("ledger.db.internal")),
        "{stats}"
    );
    proxy.shutdown().await;
}

/// A ServiceEntry with resolution DNS: jalur resolves the endpoint hostnames itself (and keeps
/// refreshing them), as Envoy's STRICT_DNS clusters do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_service_entry_is_resolved_by_the_proxy() {
    let backend = EchoServer::start("dns-backend").await;
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: legacy-api, namespace: bookinfo}}\nspec:\n  hosts: [api.legacy.example]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\n  endpoints:\n  - address: localhost\n    ports: {{http: {}}}\n",
        backend.addr().port()
    );
    let plane = Plane::start(&[("se.yaml", se)]).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    let (_, headers, _) = assert_eventually(
        "the DNS cluster resolves and routes",
        Duration::from_secs(15),
        || async {
            match http_get(outbound, "api.legacy.example", "/", &[]).await {
                Ok(r) if r.0 == 200 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        headers.get("x-backend").and_then(|v| v.to_str().ok()),
        Some("dns-backend")
    );
    proxy.shutdown().await;
}

/// The outbound listener works as an HTTP proxy (`http_proxy=localhost:15001`): requests in
/// absolute form route by their authority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_listener_serves_as_an_http_proxy() {
    let backend = EchoServer::start("v1").await;
    let plane = Plane::start(&routed_config(&backend)).await;
    let (proxy, outbound) = jalur_sidecar(sidecar_opts(plane.xds, "productpage", "bookinfo")).await;
    let reply = raw(
        outbound,
        format!(
            "GET http://{HOST}/via-proxy HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("x-path: /via-proxy"),
        "the upstream sees origin form: {reply}"
    );
    proxy.shutdown().await;
}

/// Serves what the control plane would translate from a config, but withholds the route
/// configurations while `hold_routes` is set: the proxy's listeners are up before its routes,
/// the gap a starting sidecar has between LDS and RDS.
struct RoutesLater {
    mesh: jalur_control::mesh::Mesh,
    hold_routes: AtomicBool,
}

impl jalur_xds::Generator for RoutesLater {
    fn client_kind(&self, _node: &jalur_xds::Node) -> String {
        "sidecar".into()
    }

    fn generate(&self, node: &jalur_xds::Node) -> Arc<jalur_xds::ClientSnapshot> {
        use jalur_xds::TypeUrl;
        let client = jalur_control::node::ClientInfo::from_node(node);
        let full = jalur_control::translate::translate(&self.mesh, &client);
        if !self.hold_routes.load(Ordering::SeqCst) {
            return Arc::new(full);
        }
        let mut held = jalur_xds::ClientSnapshot::default();
        for t in TypeUrl::ALL
            .into_iter()
            .filter(|t| *t != TypeUrl::RouteConfiguration)
        {
            for r in full.of_type(t).into_iter().flat_map(|m| m.values()) {
                held.insert(t, r.clone());
            }
        }
        Arc::new(held)
    }
}

/// "Not ready, not routed", the proxy's half: a request that reaches a listener before the
/// listener's route table is held until the routes land, then served — not answered 503
/// `route table ... not received yet`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_arrives_before_its_routes_is_held_and_served() {
    let backend = EchoServer::start("v1").await;
    let resources = routed_config(&backend)
        .iter()
        .flat_map(|(name, text)| jalur_model::load::parse_str(std::path::Path::new(name), text).0)
        .collect();
    let mesh = jalur_control::mesh::Mesh::build(Arc::new(jalur_model::Config::new(resources)), &[]);
    let generator = Arc::new(RoutesLater {
        mesh,
        hold_routes: AtomicBool::new(true),
    });
    let (changes, generation) = tokio::sync::watch::channel(1u64);
    let server = jalur_xds::AdsServer::new(generator.clone(), generation);
    let listener = jalur_xds::server::bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind xDS");
    let xds = listener.local_addr().expect("xDS address");
    tokio::spawn(server.serve(listener, std::future::pending()));

    let proxy = Proxy::start(sidecar_opts(xds, "productpage", "bookinfo"))
        .await
        .expect("proxy");
    let outbound = common::bound_listener(&proxy, "outbound").await;
    assert!(
        proxy.state.config.snapshot().routes.is_empty(),
        "the routes were held back"
    );
    let mut request = tokio::spawn(http_get(outbound, HOST, "/held", &[]));
    // Held, not answered: nothing within half a second, and nothing reached the backend.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut request).await;
    assert!(
        early.is_err(),
        "answered before its routes arrived: {early:?}"
    );
    assert_eq!(backend.hits(), 0);

    generator.hold_routes.store(false, Ordering::SeqCst);
    changes.send_modify(|g| *g += 1);
    let (status, headers, _) = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered once the routes arrived")
        .expect("join")
        .expect("request");
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("x-backend").map(|v| v.as_bytes()),
        Some(&b"v1"[..])
    );
    proxy.shutdown().await;
}
