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
use std::path::{Path, PathBuf};

use common::bound_listener;
use common::mesh::{
    peer_authentication, tcp_service, EnvoySidecar, MeshPlane, DB, DB_LISTENER, PAYMENTS,
    STOREFRONT,
};
use common::probe::{
    eventually_counted, eventually_ok, grpc_cell, has, max_value, presented_id, prometheus,
    refuses_plaintext_tcp, tcp_cell, tcp_echo,
};
use jalur_demo::app::SampleApp;
use jalur_testkit::{http_get, GrpcBackend};

const LEDGER: &str = "spiffe://cluster.local/ns/shop/sa/ledger";
const ECHO: &str = "spiffe://cluster.local/ns/shop/sa/echo";
/// Bytes through the TCP cell: more than a TLS record and the socket buffers on the way.
const TCP_BYTES: usize = 256 * 1024;

/// The apps behind the servers: HTTP/1.1 and h2c (the sample app speaks both), a TCP echo,
/// and when python with grpcio is there (always under CI) a gRPC backend with server
/// streaming and the interpreter for the grpcio client.
struct Apps {
    payments: SampleApp,
    ledger: SampleApp,
    db: SocketAddr,
    grpc: Option<(PathBuf, GrpcBackend)>,
}

impl Apps {
    async fn start() -> Apps {
        let grpc = match jalur_testkit::require_peer("python with grpcio", jalur_testkit::python())
        {
            Some(py) => {
                let backend = GrpcBackend::start(&py, "echo-1").await;
                Some((py, backend.expect("grpc backend")))
            }
            None => None,
        };
        Apps {
            payments: SampleApp::start("payments", "p-1").expect("app"),
            ledger: SampleApp::start("ledger", "l-1").expect("app"),
            db: tcp_echo().await,
            grpc,
        }
    }

    /// The port of the gRPC backend, if there is one.
    fn grpc_port(&self) -> Option<u16> {
        self.grpc.as_ref().map(|(_, b)| b.addr().port())
    }
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
        match apps.grpc_port() {
            Some(port) => Some(plane.envoy(binary, "echo", Some(("grpc", port))).await),
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
    let (client, outbound) = plane.caller("storefront", Some(storefront.clone())).await;

    let tail = |e: &EnvoySidecar| format!("{}\n{}", e.envoy.log_tail(), plane.diagnose());
    let host = "payments.shop.svc.cluster.local";
    let body = eventually_ok(outbound, host, false, || tail(&servers.payments)).await;
    assert!(body.starts_with("payments p-1"), "{body}");
    let host = "ledger.shop.svc.cluster.local";
    let body = eventually_ok(outbound, host, true, || tail(&servers.ledger)).await;
    assert_eq!(body.trim(), "ledger l-1");
    let local = bound_listener(&client, DB_LISTENER).await;
    tcp_cell(local, TCP_BYTES, || tail(&servers.db)).await;
    if let Some((py, _)) = &apps.grpc {
        grpc_cell(py, outbound, "echo.shop.svc.cluster.local").await;
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
        // jalur's connection(s) and the probe's, each with a client certificate.
        server
            .counter_reaches("listener.", ".ssl.handshake", 2)
            .await;
        let without_cert = server.counter("listener.", ".ssl.no_certificate").await;
        assert_eq!(without_cert, 0, "{sni}");
    }
    // The hops spoke what the ports say: HTTP/1.1 into payments' Envoy, h2 into ledger's
    // (whose caller spoke h2c to jalur). The inbound HCM's stat prefix is the listener's name.
    let h1 = servers
        .payments
        .counter("http.inbound.", ".downstream_cx_http1_total");
    let h2 = servers
        .ledger
        .counter("http.inbound.", ".downstream_cx_http2_total");
    assert!(h1.await >= 1 && h2.await >= 1, "the hops' protocols");
    let plain = http_get(servers.payments.inbound, "payments", "/", &[]).await;
    assert!(plain.is_err(), "Envoy answered plaintext: {plain:?}");
    assert!(
        refuses_plaintext_tcp(servers.db.inbound).await,
        "Envoy echoed plaintext TCP under STRICT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fronted_envoy_calls_jalur_over_mtls_for_http1_h2_grpc_and_tcp() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let plane = MeshPlane::start(&[peer_authentication("STRICT"), tcp_service()]).await;
    let apps = Apps::start().await;
    let payments = plane
        .server("payments", "http", apps.payments.addr().port())
        .await;
    let ledger = plane
        .server("ledger", "grpc", apps.ledger.addr().port())
        .await;
    let db = plane.server("db", "tcp-db", apps.db.port()).await;
    let echo = match apps.grpc_port() {
        Some(port) => Some(plane.server("echo", "grpc", port).await),
        None => None,
    };
    let client = plane.envoy(&binary, "storefront", None).await;
    let tail = || format!("{}\n{}", client.envoy.log_tail(), plane.diagnose());

    let host = "payments.shop.svc.cluster.local";
    let body = eventually_ok(client.outbound, host, false, tail).await;
    assert!(body.starts_with("payments p-1"), "{body}");
    let host = "ledger.shop.svc.cluster.local";
    let body = eventually_ok(client.outbound, host, true, tail).await;
    assert_eq!(body.trim(), "ledger l-1");
    tcp_cell(client.listener(DB_LISTENER).await, TCP_BYTES, tail).await;
    if let Some((py, _)) = &apps.grpc {
        grpc_cell(py, client.outbound, "echo.shop.svc.cluster.local").await;
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
        let labels = [&inbound(principal)[..], &[("request_protocol", protocol)]].concat();
        assert!(
            has(&s, &labels),
            "{principal} ({protocol}) saw storefront: {s}"
        );
    }
    let s = eventually_counted(&db, "istio_tcp_connections_closed_total", &inbound(DB)).await;
    let received = max_value(&s, "istio_tcp_received_bytes_total", &inbound(DB));
    assert!(
        received >= Some(TCP_BYTES as u64),
        "db counted the bytes from storefront: {s}"
    );
    // Envoy's side: its upstream handshakes verified each server's SAN (the clusters match the
    // exact SPIFFE ids of the service accounts), none failed it.
    let handshakes = client.counter("cluster.outbound|", ".ssl.handshake").await;
    let bad_san = client
        .counter("cluster.outbound|", ".ssl.fail_verify_san")
        .await;
    assert!(handshakes >= 3 && bad_san == 0, "{handshakes}, {bad_san}");
}
