//! Mesh mTLS end to end from one in-process control plane and its CA: sidecars with mesh
//! credentials announce `tlsMode: istio`, the control plane emits Istio's auto mTLS and the
//! PeerAuthentication's inbound chains, and jalur proxies carry HTTP/1.1, h2c→h2, gRPC and TCP
//! over mTLS with the peer's SPIFFE id checked (the server's chain as a rustls client sees it,
//! both principals in the metrics). STRICT refuses plaintext callers, PERMISSIVE serves both
//! and labels each, DISABLE serves plaintext to a legacy caller.

mod common;

use std::net::SocketAddr;

use common::bound_listener;
use common::mesh::{
    peer_authentication, tcp_service, MeshPlane, DB, DB_LISTENER, PAYMENTS, STOREFRONT,
};
use common::probe::{
    eventually_counted, eventually_ok, grpc_cell, has, max_value, presented_id, prometheus,
    refuses_plaintext_tcp, tcp_cell, tcp_echo,
};
use jalur_demo::app::SampleApp;
use jalur_proxy::run::Proxy;
use jalur_testkit::http_get;

/// Bytes through the TCP cell: more than a TLS record and the socket buffers on the way.
const TCP_BYTES: usize = 256 * 1024;

fn no_tail() -> String {
    String::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_between_jalur_sidecars_for_http1_h2_grpc_and_tcp() {
    let plane = MeshPlane::start(&[peer_authentication("STRICT"), tcp_service()]).await;
    let storefront = plane.issue("storefront");
    let http_app = SampleApp::start("payments", "p-1").expect("app");
    let grpc_app = SampleApp::start("ledger", "l-1").expect("app");
    let db_app = tcp_echo().await;
    let pay = plane
        .server("payments", "http", http_app.addr().port())
        .await;
    let led = plane.server("ledger", "grpc", grpc_app.addr().port()).await;
    let db = plane.server("db", "tcp-db", db_app.port()).await;
    let (client, outbound) = plane.caller("storefront", Some(storefront.clone())).await;

    let body = eventually_ok(outbound, PAYMENTS_HOST, false, no_tail).await;
    assert!(body.starts_with("payments p-1"), "{body}");
    // h2c to the caller, h2 over mTLS between the sidecars (the ledger port is gRPC).
    let body = eventually_ok(outbound, "ledger.shop.svc.cluster.local", true, no_tail).await;
    assert_eq!(body.trim(), "ledger l-1");
    // TCP through the caller's local port for `db`: every byte back, in order, then the close.
    tcp_cell(
        bound_listener(&client, DB_LISTENER).await,
        TCP_BYTES,
        no_tail,
    )
    .await;

    // The destinations saw storefront's certificate, the source saw theirs.
    let s = prometheus(&pay).await;
    assert!(
        has(
            &s,
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT),
                ("destination_principal", PAYMENTS),
                ("request_protocol", "http")
            ]
        ),
        "{s}"
    );
    let s = prometheus(&led).await;
    assert!(
        has(
            &s,
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT),
                ("request_protocol", "http2")
            ]
        ),
        "{s}"
    );
    let s = prometheus(&client).await;
    assert!(
        has(
            &s,
            &[
                ("reporter", "source"),
                ("source_principal", STOREFRONT),
                ("destination_principal", PAYMENTS)
            ]
        ),
        "{s}"
    );
    let tcp_labels = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", STOREFRONT),
        ("destination_principal", DB),
    ];
    let s = eventually_counted(&db, "istio_tcp_connections_closed_total", &tcp_labels).await;
    // The db sidecar counted in from storefront at least the bytes sent (an attempt refused
    // while config converged adds nothing).
    let received = max_value(&s, "istio_tcp_received_bytes_total", &tcp_labels);
    assert!(received >= Some(TCP_BYTES as u64), "{s}");

    // The backend side of each hop: a rustls client sees payments' and db's SPIFFE chains;
    // plaintext is refused.
    let inbound = pay.inbound_addr.expect("inbound");
    let sni = "outbound_.80_._.payments.shop.svc.cluster.local";
    assert_eq!(
        presented_id(inbound, &storefront, sni).await.as_deref(),
        Ok(PAYMENTS)
    );
    let db_inbound = db.inbound_addr.expect("inbound");
    let sni = "outbound_.9000_._.db.shop.svc.cluster.local";
    assert_eq!(
        presented_id(db_inbound, &storefront, sni).await.as_deref(),
        Ok(DB)
    );
    assert!(
        http_get(inbound, "payments", "/", &[]).await.is_err(),
        "STRICT answered plaintext"
    );
    assert!(
        refuses_plaintext_tcp(db_inbound).await,
        "STRICT echoed plaintext TCP"
    );

    // gRPC (grpcio client, through the caller's outbound) to a gRPC backend over mTLS.
    let Some(py) = jalur_testkit::require_peer("python venv with grpcio", jalur_testkit::python())
    else {
        return;
    };
    let backend = jalur_testkit::GrpcBackend::start(&py, "echo-1")
        .await
        .expect("grpc backend");
    let _echo = plane.server("echo", "grpc", backend.addr().port()).await;
    grpc_cell(&py, outbound, "echo.shop.svc.cluster.local").await;
}

/// payments (HTTP/1.1) under a `mode` PeerAuthentication, with a mesh caller (storefront)
/// and a legacy one (no credentials) that have both reached it once.
struct TwoCallers {
    plane: MeshPlane,
    payments: Proxy,
    mesh_out: SocketAddr,
    legacy_out: SocketAddr,
    _held: (SampleApp, Proxy, Proxy),
}

const PAYMENTS_HOST: &str = "payments.shop.svc.cluster.local";

async fn two_callers(mode: &str) -> TwoCallers {
    let plane = MeshPlane::start(&[peer_authentication(mode)]).await;
    let app = SampleApp::start("payments", "p-1").expect("app");
    let payments = plane.server("payments", "http", app.addr().port()).await;
    let storefront = Some(plane.issue("storefront"));
    let (mesh, mesh_out) = plane.caller("storefront", storefront).await;
    let (legacy, legacy_out) = plane.caller("legacy", None).await;
    eventually_ok(mesh_out, PAYMENTS_HOST, false, no_tail).await;
    TwoCallers {
        plane,
        payments,
        mesh_out,
        legacy_out,
        _held: (app, mesh, legacy),
    }
}

#[tokio::test]
async fn permissive_serves_a_legacy_caller_and_a_mesh_caller_and_labels_each() {
    let mesh = two_callers("PERMISSIVE").await;
    eventually_ok(mesh.legacy_out, PAYMENTS_HOST, false, no_tail).await;
    let s = prometheus(&mesh.payments).await;
    let mtls = [
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", STOREFRONT),
    ];
    assert!(has(&s, &mtls), "{s}");
    let plain = [
        ("connection_security_policy", "none"),
        ("source_principal", "unknown"),
    ];
    assert!(has(&s, &plain), "{s}");
}

#[tokio::test]
async fn strict_refuses_a_legacy_caller_and_disable_serves_plaintext() {
    let mesh = two_callers("STRICT").await;
    // The legacy caller's plaintext is closed by payments: an upstream failure, never a 200.
    let (status, _, _) = http_get(mesh.legacy_out, PAYMENTS_HOST, "/", &[])
        .await
        .expect("the legacy sidecar answers");
    assert_eq!(status, 503, "a plaintext caller got through STRICT");

    // DISABLE: the same workloads, plaintext inbound; the legacy caller is served, and so is
    // the mesh caller (auto mTLS follows the destination's policy: plaintext to it now).
    let disable = peer_authentication("DISABLE");
    mesh.plane.plane.write(disable.0, &disable.1);
    eventually_ok(mesh.legacy_out, PAYMENTS_HOST, false, no_tail).await;
    eventually_ok(mesh.mesh_out, PAYMENTS_HOST, false, no_tail).await;
    let inbound = mesh.payments.inbound_addr.expect("inbound");
    let (status, _, _) = http_get(inbound, "payments", "/", &[])
        .await
        .expect("plaintext inbound");
    assert_eq!(status, 200);
}

/// A DestinationRule `tls.mode: DISABLE` turns auto mTLS off for its host: the mesh caller's
/// sidecar then sends plaintext, which the STRICT destination closes (503 at the caller); the
/// rule removed, the caller is back on mTLS and served.
#[tokio::test]
async fn a_destination_rule_disable_sends_plaintext_which_strict_refuses() {
    let mesh = two_callers("STRICT").await;
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: payments, namespace: shop}\nspec:\n  host: payments.shop.svc.cluster.local\n  trafficPolicy:\n    tls: {mode: DISABLE}\n";
    mesh.plane.plane.write("payments-dr.yaml", dr);
    jalur_testkit::assert_eventually(
        "the mesh caller sends plaintext under DISABLE and STRICT closes it",
        std::time::Duration::from_secs(20),
        || async {
            match http_get(mesh.mesh_out, PAYMENTS_HOST, "/", &[]).await {
                Ok((503, _, _)) => Ok(()),
                other => Err(format!("{:?}", other.map(|r| r.0))),
            }
        },
    )
    .await;
    mesh.plane.plane.write("payments-dr.yaml", "");
    eventually_ok(mesh.mesh_out, PAYMENTS_HOST, false, no_tail).await;
}
