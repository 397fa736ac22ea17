//! jalur proxy ↔ stock Envoy over mesh mTLS the way a mesh runs it: one in-process control plane
//! with its CA (every identity below is signed by it), a STRICT PeerAuthentication, Envoys
//! beside `jalur agent` (SDS `default`/`ROOTCA` on its Unix socket, ADS over mTLS on 15012),
//! jalur sidecars with credentials from the same CA. In each direction one caller and one
//! server per protocol (a sidecar's inbound serves its first port only): HTTP/1.1, h2c→h2
//! (the app speaks h2c, the hop between the sidecars h2 over mTLS), gRPC (grpcio: unary and a
//! server stream) and TCP (a ServiceEntry port reached through the caller's local port), each
//! with the peer's SPIFFE id checked: in jalur's metrics, in the chain Envoy's inbound shows a
//! rustls client, in Envoy's TLS counters.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::mesh::{
    eventually_counted, has, lines, payload, peer_authentication, presented_id, prometheus,
    tcp_echo, tcp_roundtrip, EnvoySidecar, MeshPlane, NS, PAYMENTS, STOREFRONT,
};
use common::{bound_listener, jalur_sidecar, sidecar_opts};
use jalur_demo::app::SampleApp;
use jalur_proxy::run::ProxyOptions;
use jalur_testkit::{assert_eventually, http2_get, http_get, GrpcBackend};

const DEADLINE: Duration = Duration::from_secs(30);
const LEDGER: &str = "spiffe://cluster.local/ns/shop/sa/ledger";
const ECHO: &str = "spiffe://cluster.local/ns/shop/sa/echo";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const DB_LISTENER: &str = "tcp|9000|db.shop.svc.cluster.local";
/// Bytes sent through the TCP cell: larger than one TLS record and the socket buffers.
const TCP_BYTES: usize = 256 * 1024;

/// The mesh-internal TCP service `db` (port 9000, `tcp-db`), reached through a local port of
/// the caller's sidecar (0 = OS-chosen); its endpoints are the sidecars announcing `db`.
fn tcp_service() -> (&'static str, String) {
    (
        "db.yaml",
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\n  namespace: {NS}\n  annotations: {{jalur.dev/local-ports: \"9000=0\"}}\nspec:\n  hosts: [db.{NS}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9000, name: tcp-db, protocol: TCP}}\n"
        ),
    )
}

/// The apps behind the servers: HTTP/1.1 and h2c (the sample app speaks both), a gRPC
/// backend with server streaming, a TCP echo.
struct Apps {
    payments: SampleApp,
    ledger: SampleApp,
    echo: Option<GrpcBackend>,
    db: SocketAddr,
}

impl Apps {
    /// `None` for the gRPC backend when python with grpcio is missing (and not CI).
    async fn start() -> Apps {
        let echo =
            match jalur_testkit::require_peer("python venv with grpcio", jalur_testkit::python()) {
                Some(py) => Some(
                    GrpcBackend::start(&py, "echo-1")
                        .await
                        .expect("grpc backend"),
                ),
                None => None,
            };
        Apps {
            payments: SampleApp::start("payments", "p-1").expect("app"),
            ledger: SampleApp::start("ledger", "l-1").expect("app"),
            echo,
            db: tcp_echo().await,
        }
    }
}

/// Requests through `outbound` until one answers 200 (config converging); the body.
async fn ok(outbound: SocketAddr, host: &str, h2: bool, tail: impl Fn() -> String) -> String {
    let via = if h2 { "h2c" } else { "HTTP/1.1" };
    assert_eventually(&format!("200 from {host} ({via})"), DEADLINE, || async {
        let r = if h2 {
            http2_get(outbound, host, "/", &[]).await?
        } else {
            http_get(outbound, host, "/", &[]).await?
        };
        (r.0 == 200)
            .then(|| r.2.clone())
            .ok_or(format!("{r:?}\n{}", tail()))
    })
    .await
}

/// Sends [`TCP_BYTES`] through the caller's local port for `db` (retried while config
/// converges) and asserts every byte came back in order before the close.
async fn tcp_cell(local: SocketAddr, tail: impl Fn() -> String) {
    let sent = payload(TCP_BYTES);
    let back = assert_eventually("TCP over mTLS", DEADLINE, || async {
        let back = tcp_roundtrip(local, &sent).await?;
        (back.len() == sent.len())
            .then(|| back.clone())
            .ok_or(format!("{} bytes back\n{}", back.len(), tail()))
    })
    .await;
    assert!(back == sent, "the bytes came back altered");
}

/// 20 unary calls and a 50-message server stream with the grpcio peer through `outbound`;
/// retried until the unary calls all succeed (config converging).
async fn grpc_cell(outbound: SocketAddr, authority: &str) {
    let Some(py) = jalur_testkit::require_peer("python venv with grpcio", jalur_testkit::python())
    else {
        return;
    };
    let report = assert_eventually(&format!("gRPC to {authority}"), DEADLINE, || async {
        let out = tokio::process::Command::new(&py)
            .arg(jalur_testkit::peer_script("grpc_call.py"))
            .args(["--target", &outbound.to_string(), "--authority", authority])
            .args(["--count", "20", "--stream", "50", "--timeout-secs", "5"])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        (report["unary_ok"] == 20)
            .then_some(report.clone())
            .ok_or(report.to_string())
    })
    .await;
    assert_eq!(
        report["stream"].as_array().map(Vec::len),
        Some(50),
        "{report}"
    );
}

/// The Envoy server sidecars of the jalur → Envoy direction.
struct EnvoyServers {
    payments: EnvoySidecar,
    ledger: EnvoySidecar,
    db: EnvoySidecar,
    echo: Option<EnvoySidecar>,
}

async fn envoy_servers(plane: &MeshPlane, binary: &Path, apps: &Apps) -> EnvoyServers {
    let echo = async {
        match &apps.echo {
            Some(b) => Some(
                plane
                    .envoy(binary, "echo", Some(("grpc", b.addr().port())))
                    .await,
            ),
            None => None,
        }
    };
    // Started together: each Envoy takes a second or two to come up.
    let (payments, ledger, db, echo) = tokio::join!(
        plane.envoy(
            binary,
            "payments",
            Some(("http", apps.payments.addr().port()))
        ),
        plane.envoy(binary, "ledger", Some(("grpc", apps.ledger.addr().port()))),
        plane.envoy(binary, "db", Some(("tcp-db", apps.db.port()))),
        echo,
    );
    EnvoyServers {
        payments,
        ledger,
        db,
        echo,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_calls_agent_fronted_envoys_over_mtls_for_http1_h2_grpc_and_tcp() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let plane = MeshPlane::start(&[peer_authentication("STRICT"), tcp_service()]).await;
    let apps = Apps::start().await;
    let servers = envoy_servers(&plane, &binary, &apps).await;
    let storefront = plane.issue("storefront");
    let (client, outbound) = jalur_sidecar(ProxyOptions {
        credentials: Some(storefront.clone()),
        ..sidecar_opts(plane.plane.xds, "storefront", NS)
    })
    .await;

    let tail = |e: &EnvoySidecar| e.envoy.log_tail();
    let body = ok(outbound, "payments.shop.svc.cluster.local", false, || {
        tail(&servers.payments)
    })
    .await;
    assert!(body.starts_with("payments p-1"), "{body}");
    let body = ok(outbound, "ledger.shop.svc.cluster.local", true, || {
        tail(&servers.ledger)
    })
    .await;
    assert_eq!(body.trim(), "ledger l-1");
    let local = bound_listener(&client, DB_LISTENER).await;
    tcp_cell(local, || tail(&servers.db)).await;
    if servers.echo.is_some() {
        grpc_cell(outbound, "echo.shop.svc.cluster.local").await;
    }

    // jalur saw each Envoy's certificate (the source reporter names the server's principal)...
    let s = prometheus(&client).await;
    let mut expected = vec![(PAYMENTS, "http"), (LEDGER, "http2")];
    if servers.echo.is_some() {
        expected.push((ECHO, "grpc"));
    }
    for (principal, protocol) in expected {
        let labels = [
            ("reporter", "source"),
            ("source_principal", STOREFRONT),
            ("destination_principal", principal),
            ("request_protocol", protocol),
        ];
        assert!(has(&s, &labels), "jalur saw {principal} ({protocol}): {s}");
    }
    // ...and each Envoy's inbound shows a mesh client its own SPIFFE chain (the TCP one
    // included, whose outbound metrics do not carry principals), and took only mTLS.
    let shown = [
        (&servers.payments, "outbound_.80_._.payments", PAYMENTS),
        (&servers.ledger, "outbound_.80_._.ledger", LEDGER),
        (&servers.db, "outbound_.9000_._.db", DB),
    ];
    for (server, sni, principal) in shown {
        let sni = format!("{sni}.shop.svc.cluster.local");
        let id = presented_id(server.inbound, &storefront, &sni).await;
        assert_eq!(id.as_deref(), Ok(principal), "{sni}");
        assert_eq!(
            server.counter("listener.", ".ssl.no_certificate").await,
            0,
            "{sni}"
        );
        assert!(
            server.counter("listener.", ".ssl.handshake").await >= 2,
            "{sni}"
        );
    }
    assert!(
        http_get(servers.payments.inbound, "payments", "/", &[])
            .await
            .is_err(),
        "Envoy answered plaintext"
    );
    let plain = tcp_roundtrip(servers.db.inbound, b"plain").await;
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(Vec::is_empty),
        "Envoy echoed plaintext TCP under STRICT: {plain:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fronted_envoy_calls_jalur_over_mtls_for_http1_h2_grpc_and_tcp() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let plane = MeshPlane::start(&[peer_authentication("STRICT"), tcp_service()]).await;
    let apps = Apps::start().await;
    let server = |service: &'static str, port: &'static str, app: u16| {
        plane.server(service, port, app, Some(plane.issue(service)))
    };
    let payments = server("payments", "http", apps.payments.addr().port()).await;
    let ledger = server("ledger", "grpc", apps.ledger.addr().port()).await;
    let db = server("db", "tcp-db", apps.db.port()).await;
    let echo = match &apps.echo {
        Some(b) => Some(server("echo", "grpc", b.addr().port()).await),
        None => None,
    };
    let client = plane.envoy(&binary, "storefront", None).await;
    let tail = || client.envoy.log_tail();

    let body = ok(
        client.outbound,
        "payments.shop.svc.cluster.local",
        false,
        tail,
    )
    .await;
    assert!(body.starts_with("payments p-1"), "{body}");
    let body = ok(client.outbound, "ledger.shop.svc.cluster.local", true, tail).await;
    assert_eq!(body.trim(), "ledger l-1");
    tcp_cell(client.listener(DB_LISTENER).await, tail).await;
    if echo.is_some() {
        grpc_cell(client.outbound, "echo.shop.svc.cluster.local").await;
    }

    // Each jalur server saw Envoy's certificate, and its own identity as the destination.
    let inbound = |principal| {
        [
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", STOREFRONT),
            ("destination_principal", principal),
        ]
    };
    let mut http = vec![(&payments, PAYMENTS, "http"), (&ledger, LEDGER, "http2")];
    if let Some(echo) = &echo {
        http.push((echo, ECHO, "grpc"));
    }
    for (proxy, principal, protocol) in http {
        let s = prometheus(proxy).await;
        let l = lines(&s, "istio_requests_total", &inbound(principal));
        assert!(
            l.iter()
                .any(|l| l.contains(&format!("request_protocol=\"{protocol}\""))),
            "{principal} ({protocol}) saw storefront: {s}"
        );
    }
    let s = eventually_counted(&db, "istio_tcp_connections_closed_total", &inbound(DB)).await;
    let received = lines(&s, "istio_tcp_received_bytes_total", &inbound(DB));
    assert!(
        received
            .iter()
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok())
                >= Some(TCP_BYTES as u64)),
        "db counted the bytes from storefront: {s}"
    );
    // Envoy's side: every upstream handshake verified the server's SAN (the clusters match the
    // exact SPIFFE ids of the service accounts), none failed it.
    assert!(client.counter("cluster.outbound|", ".ssl.handshake").await >= 3);
    assert_eq!(
        client
            .counter("cluster.outbound|", ".ssl.fail_verify_san")
            .await,
        0
    );
}
