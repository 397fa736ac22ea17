//! jalur proxy's mTLS data path on Istio-shaped xDS (hand-built here, served per node by a
//! static xDS server), with credentials from a test CA: sidecar → sidecar over mTLS for
//! HTTP/1.1, h2 and TCP, the peers' SPIFFE ids in Istio's metric labels and in the chain a
//! plain rustls client sees; STRICT refuses plaintext, PERMISSIVE takes both, DISABLE is
//! plaintext; a wrong peer identity or another CA is refused; a rotated certificate is
//! presented on the next handshake with nothing rebuilt.

mod common;
#[path = "common/istio_tls.rs"]
mod istio_tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::bound_listener;
use common::ca::{spiffe, Identity, TestCa};
use common::mesh::{ephemeral_sidecar, PAYMENTS, STOREFRONT};
use common::probe::{grpc_cell, lines, mesh_tls, prometheus, server_leaf, tcp_echo, tcp_roundtrip};
use istio_tls::{cluster, listener, upstream_tls, Mode, StaticPlane};
use jalur_identity::verify::{peer_id, Accept};
use jalur_identity::{Credentials, CredentialsWatch};
use jalur_proxy::run::Proxy;
use jalur_testkit::{assert_eventually, http2_get, http_get, EchoServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(20);
const SNI: &str = "outbound_.8080_._.payments.shop.svc.cluster.local";

/// The server side: `payments` with inbound HTTP and TCP listeners under `mode`, in front of
/// an HTTP echo and a TCP echo.
struct Server {
    proxy: Proxy,
    http: SocketAddr,
    tcp: SocketAddr,
    tcp_backend: SocketAddr,
    _echo: EchoServer,
}

async fn start_server(plane: &StaticPlane, mode: Mode, creds: CredentialsWatch) -> Server {
    let echo = EchoServer::start("payments").await;
    let tcp_backend = tcp_echo().await;
    plane.serve(
        "payments.shop",
        vec![
            listener("inbound", "inbound|8080||", false, mode),
            listener("inbound-tcp", "inbound|9000||", true, mode),
        ],
        vec![
            cluster("inbound|8080||", &[echo.addr()], false, None, false),
            cluster("inbound|9000||", &[tcp_backend], false, None, false),
        ],
    );
    let proxy = ephemeral_sidecar(plane.addr, "payments", Some(creds)).await;
    let http = bound_listener(&proxy, "inbound").await;
    let tcp = bound_listener(&proxy, "inbound-tcp").await;
    Server {
        proxy,
        http,
        tcp,
        tcp_backend,
        _echo: echo,
    }
}

/// The client side: `storefront` with outbound HTTP/1.1, h2 and TCP listeners to `server`,
/// expecting the server to run as `sans`.
async fn client(
    plane: &StaticPlane,
    server: &Server,
    creds: CredentialsWatch,
    sans: &[&str],
) -> Proxy {
    let tls = |h2| Some(upstream_tls(SNI, sans, h2));
    plane.serve(
        "storefront.shop",
        vec![
            listener("outbound", "outbound|8080||payments", false, Mode::Disable),
            listener(
                "outbound-h2",
                "outbound|8080|h2|payments",
                false,
                Mode::Disable,
            ),
            listener(
                "outbound-tcp",
                "outbound|9000||payments",
                true,
                Mode::Disable,
            ),
        ],
        vec![
            cluster(
                "outbound|8080||payments",
                &[server.http],
                true,
                tls(false),
                false,
            ),
            cluster(
                "outbound|8080|h2|payments",
                &[server.http],
                true,
                tls(true),
                true,
            ),
            cluster(
                "outbound|9000||payments",
                &[server.tcp],
                true,
                tls(false),
                false,
            ),
        ],
    );
    ephemeral_sidecar(plane.addr, "storefront", Some(creds)).await
}

#[tokio::test]
async fn sidecars_speak_mtls_for_http1_h2_and_tcp_and_label_both_principals() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let server = start_server(&plane, Mode::Strict, payments.watch.clone()).await;
    let client = client(&plane, &server, storefront.watch.clone(), &[PAYMENTS]).await;
    let outbound = bound_listener(&client, "outbound").await;
    let outbound_h2 = bound_listener(&client, "outbound-h2").await;
    let outbound_tcp = bound_listener(&client, "outbound-tcp").await;

    let (status, _, body) = assert_eventually("HTTP/1.1 over mTLS", DEADLINE, || async {
        http_get(outbound, "payments", "/", &[]).await
    })
    .await;
    assert_eq!((status, body.trim()), (200, "payments"));
    let (status, _, body) = http2_get(outbound_h2, "payments", "/", &[])
        .await
        .expect("h2c → h2 over mTLS");
    assert_eq!((status, body.trim()), (200, "payments"));
    let echoed = tcp_roundtrip(outbound_tcp, b"ping over mtls")
        .await
        .expect("TCP over mTLS");
    assert_eq!(echoed, b"ping over mtls");

    // The destination saw the caller's certificate; the source saw the server's.
    let server_stats = prometheus(&server.proxy).await;
    let inbound = lines(
        &server_stats,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", STOREFRONT),
            ("destination_principal", PAYMENTS),
        ],
    );
    assert!(
        inbound
            .iter()
            .any(|l| l.contains("request_protocol=\"http\""))
            && inbound
                .iter()
                .any(|l| l.contains("request_protocol=\"http2\"")),
        "destination metrics: {server_stats}"
    );
    let client_stats = prometheus(&client).await;
    let outbound_lines = lines(
        &client_stats,
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "unknown"),
            ("source_principal", STOREFRONT),
            ("destination_principal", PAYMENTS),
        ],
    );
    assert_eq!(outbound_lines.len(), 2, "source metrics: {client_stats}");
    assert_eventually("TCP metrics with principals", DEADLINE, || async {
        let s = prometheus(&server.proxy).await;
        let tcp = lines(
            &s,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT),
            ],
        );
        (!tcp.is_empty()).then_some(()).ok_or(s)
    })
    .await;
}

/// A handshake to `addr` as a bare rustls client with `creds` expecting `accept`; the server's
/// SPIFFE id on success.
async fn handshake(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    accept: Accept,
) -> Result<String, String> {
    let mut tls = mesh_tls(addr, creds, accept, SNI, &[b"http/1.1"]).await?;
    // TLS 1.3: the server judges the client certificate after its own flight; a refusal shows
    // on the first read.
    tls.write_all(b"GET / HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answered {:?}", String::from_utf8_lossy(&answer)));
    }
    let id = peer_id(&server_leaf(&tls)?).map_err(|e| e.to_string())?;
    Ok(id.to_string())
}

#[tokio::test]
async fn strict_shows_its_spiffe_chain_and_refuses_plaintext_strangers_and_wrong_ids() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let server = start_server(&plane, Mode::Strict, payments.watch.clone()).await;
    let td = || Accept::TrustDomain("cluster.local".into());

    let seen = assert_eventually("a rustls client sees the chain", DEADLINE, || async {
        handshake(server.http, &storefront.watch, td()).await
    })
    .await;
    assert_eq!(seen, PAYMENTS);

    // Plaintext: no chain matches, the connection is closed without an answer (as Envoy).
    let plain = http_get(server.http, "payments", "/", &[]).await;
    assert!(plain.is_err(), "STRICT answered plaintext: {plain:?}");
    // A client certificate from another CA, and one from another trust domain: refused.
    let stranger = TestCa::new().identity(&spiffe("shop", "storefront"), &[&ca]);
    assert!(handshake(server.http, &stranger.watch, td()).await.is_err());
    let foreign = ca.identity(
        &jalur_identity::SpiffeId::new("evil.example", "shop", "x"),
        &[],
    );
    assert!(handshake(server.http, &foreign.watch, td()).await.is_err());

    // A caller expecting another service account refuses the server: 503, flag UF.
    let client = client(&plane, &server, storefront.watch.clone(), &[STOREFRONT]).await;
    let outbound = bound_listener(&client, "outbound").await;
    let (status, headers, _) =
        assert_eventually("the wrong-id request is answered", DEADLINE, || async {
            http_get(outbound, "payments", "/", &[]).await
        })
        .await;
    assert_eq!(status, 503);
    assert_eq!(
        headers.get("x-jalur-flags").and_then(|v| v.to_str().ok()),
        Some("UF")
    );
}

#[tokio::test]
async fn permissive_takes_mtls_and_plaintext_and_labels_each_disable_is_plaintext() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let server = start_server(&plane, Mode::Permissive, payments.watch.clone()).await;
    let client = client(&plane, &server, storefront.watch.clone(), &[PAYMENTS]).await;
    let outbound = bound_listener(&client, "outbound").await;

    let (status, _, _) = assert_eventually("mTLS under PERMISSIVE", DEADLINE, || async {
        http_get(outbound, "payments", "/", &[]).await
    })
    .await;
    assert_eq!(status, 200);
    let (status, _, body) = http_get(server.http, "payments", "/", &[])
        .await
        .expect("plaintext under PERMISSIVE");
    assert_eq!((status, body.trim()), (200, "payments"));
    let echoed = tcp_roundtrip(server.tcp, b"plain tcp")
        .await
        .expect("plaintext TCP");
    assert_eq!(echoed, b"plain tcp");
    let s = prometheus(&server.proxy).await;
    let mtls = lines(
        &s,
        "istio_requests_total",
        &[
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", STOREFRONT),
        ],
    );
    let plain = lines(
        &s,
        "istio_requests_total",
        &[
            ("connection_security_policy", "none"),
            ("source_principal", "unknown"),
            ("destination_principal", "unknown"),
        ],
    );
    assert!(!mtls.is_empty() && !plain.is_empty(), "{s}");

    // PERMISSIVE → STRICT on the same listener: its port stays open, plaintext is closed from
    // the next connection on, mTLS goes on.
    plane.serve(
        "payments.shop",
        vec![
            listener("inbound", "inbound|8080||", false, Mode::Strict),
            listener("inbound-tcp", "inbound|9000||", true, Mode::Strict),
        ],
        vec![
            cluster("inbound|8080||", &[server._echo.addr()], false, None, false),
            cluster("inbound|9000||", &[server.tcp_backend], false, None, false),
        ],
    );
    assert_eventually("plaintext refused once STRICT", DEADLINE, || async {
        match http_get(server.http, "payments", "/", &[]).await {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("still answered {r:?}")),
        }
    })
    .await;
    assert_eq!(
        bound_listener(&server.proxy, "inbound").await,
        server.http,
        "same socket"
    );
    let (status, _, _) = http_get(outbound, "payments", "/", &[])
        .await
        .expect("mTLS after the change");
    assert_eq!(status, 200);

    // DISABLE: plaintext only, and nothing is labelled mTLS.
    let plane2 = StaticPlane::start().await;
    let disabled = start_server(&plane2, Mode::Disable, payments.watch.clone()).await;
    let (status, _, _) = assert_eventually("plaintext under DISABLE", DEADLINE, || async {
        http_get(disabled.http, "payments", "/", &[]).await
    })
    .await;
    assert_eq!(status, 200);
    let s = prometheus(&disabled.proxy).await;
    assert!(
        lines(
            &s,
            "istio_requests_total",
            &[("connection_security_policy", "mutual_tls")]
        )
        .is_empty(),
        "{s}"
    );
}

#[tokio::test]
async fn a_rotated_certificate_and_trust_bundle_apply_to_the_next_handshake() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments: Identity = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let server = start_server(&plane, Mode::Strict, payments.watch.clone()).await;
    let td = || Accept::TrustDomain("cluster.local".into());
    let serial = |creds: &CredentialsWatch| creds.borrow().cert.chain[0].clone();

    assert_eventually("first handshake", DEADLINE, || async {
        handshake(server.http, &storefront.watch, td()).await
    })
    .await;
    let before = serial(&payments.watch);
    // Renewal: same key type, new certificate, published on the watch; nothing else happens.
    let renewed = ca.sign(&spiffe("shop", "payments"), Duration::from_secs(3600));
    let creds = Credentials::new(renewed, ca.bundle()).expect("creds");
    payments.tx.send(Arc::new(creds)).expect("send");
    let after = serial(&payments.watch);
    assert_ne!(before, after);
    let presented = presented_leaf(server.http, &storefront.watch).await;
    assert_eq!(
        presented, after,
        "the next handshake presents the renewed certificate"
    );

    // Root rotation: the new root is distributed first (both trusted), then the server's
    // certificate comes from it; a caller trusting both roots keeps connecting.
    let new_ca = TestCa::new();
    for id in [&payments, &storefront] {
        let cert = id.watch.borrow().cert.id.clone();
        let cert = ca.sign(&cert, Duration::from_secs(3600));
        let creds = Credentials::new(cert, ca.bundle_with(&[&new_ca])).expect("creds");
        id.tx.send(Arc::new(creds)).expect("send");
    }
    let from_new = new_ca.sign(&spiffe("shop", "payments"), Duration::from_secs(3600));
    let creds = Credentials::new(from_new, ca.bundle_with(&[&new_ca])).expect("creds");
    payments.tx.send(Arc::new(creds)).expect("send");
    let seen = handshake(server.http, &storefront.watch, td())
        .await
        .expect("new root accepted");
    assert_eq!(seen, PAYMENTS);
}

async fn presented_leaf(
    addr: SocketAddr,
    creds: &CredentialsWatch,
) -> rustls::pki_types::CertificateDer<'static> {
    let accept = Accept::AnyOf(vec![PAYMENTS.parse().expect("id")]);
    let tls = mesh_tls(addr, creds, accept, SNI, &[])
        .await
        .expect("handshake");
    server_leaf(&tls).expect("a leaf")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_over_mtls_between_sidecars() {
    let Some(py) = jalur_testkit::require_peer("python venv with grpcio", jalur_testkit::python())
    else {
        return;
    };
    let backend = jalur_testkit::GrpcBackend::start(&py, "echo-1")
        .await
        .expect("grpc backend");
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    plane.serve(
        "payments.shop",
        vec![listener("inbound", "inbound|50051||", false, Mode::Strict)],
        vec![cluster(
            "inbound|50051||",
            &[backend.addr()],
            false,
            None,
            true,
        )],
    );
    let server = ephemeral_sidecar(plane.addr, "payments", Some(payments.watch.clone())).await;
    let inbound = bound_listener(&server, "inbound").await;
    plane.serve(
        "storefront.shop",
        vec![listener("outbound", "grpc", false, Mode::Disable)],
        vec![cluster(
            "grpc",
            &[inbound],
            true,
            Some(upstream_tls(SNI, &[PAYMENTS], true)),
            true,
        )],
    );
    let client = ephemeral_sidecar(plane.addr, "storefront", Some(storefront.watch.clone())).await;
    let outbound = bound_listener(&client, "outbound").await;
    grpc_cell(&py, outbound, "payments").await;
    let s = prometheus(&server).await;
    let calls = lines(
        &s,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("request_protocol", "grpc"),
            ("grpc_response_status", "0"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", STOREFRONT),
        ],
    );
    assert!(!calls.is_empty(), "{s}");
}
