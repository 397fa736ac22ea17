//! Mesh mTLS end to end from one in-process control plane: sidecars with mesh credentials (a
//! test CA's) announce `tlsMode: istio`, the control plane emits Istio's auto mTLS and the
//! PeerAuthentication's inbound chains, and jalur proxies carry HTTP/1.1, h2c→h2 and gRPC over
//! mTLS with the peer's SPIFFE id checked (the server's chain as a rustls client sees it, both
//! principals in the metrics). STRICT refuses plaintext callers, PERMISSIVE serves both and
//! labels each, DISABLE serves plaintext to a legacy caller.

#[path = "common/ca.rs"]
mod ca;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ca::{spiffe, TestCa};
use common::{jalur_sidecar, sidecar_opts, Plane};
use jalur_demo::app::SampleApp;
use jalur_identity::verify::{client_config, peer_id, Accept};
use jalur_identity::CredentialsWatch;
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::{assert_eventually, http2_get, http_get};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);
const STOREFRONT: &str = "spiffe://cluster.local/ns/shop/sa/storefront";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

fn peer_authentication(mode: &str) -> (&'static str, String) {
    (
        "pa.yaml",
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: {mode}\n"
        ),
    )
}

/// A server sidecar for `service` in front of `app_port` (its first port named `port_name`).
async fn server(
    xds: SocketAddr,
    service: &str,
    port_name: &str,
    app_port: u16,
    creds: Option<CredentialsWatch>,
) -> Proxy {
    let opts = ProxyOptions {
        app_port: Some(app_port),
        ports: vec![format!("{port_name}:{app_port}").parse().expect("port")],
        credentials: creds,
        ..sidecar_opts(xds, service, "shop")
    };
    Proxy::start(opts).await.expect("server sidecar")
}

async fn caller(
    xds: SocketAddr,
    service: &str,
    creds: Option<CredentialsWatch>,
) -> (Proxy, SocketAddr) {
    jalur_sidecar(ProxyOptions {
        credentials: creds,
        ..sidecar_opts(xds, service, "shop")
    })
    .await
}

/// Requests through `outbound` until one answers 200 (config converging), then returns it.
async fn ok_h1(outbound: SocketAddr, host: &str) -> String {
    assert_eventually(&format!("200 from {host}"), DEADLINE, || async {
        let r = http_get(outbound, host, "/", &[]).await?;
        (r.0 == 200).then(|| r.2.clone()).ok_or(format!("{r:?}"))
    })
    .await
}

async fn stats(proxy: &Proxy) -> String {
    http_get(proxy.stats_addr, "stats", "/stats/prometheus", &[])
        .await
        .expect("stats")
        .2
}

fn has(stats: &str, labels: &[(&str, &str)]) -> bool {
    stats.lines().any(|l| {
        l.starts_with("istio_requests_total")
            && labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
    })
}

/// The SPIFFE id in the chain the server at `addr` presents to a mesh client.
async fn server_id(addr: SocketAddr, creds: &CredentialsWatch) -> Result<String, String> {
    let accept = Accept::TrustDomain("cluster.local".into());
    let config = client_config(creds.clone(), accept, &[]).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("outbound_.80_._.payments.shop.svc.cluster.local")
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned());
    let id = peer_id(&leaf.ok_or("no certificate")?).map_err(|e| e.to_string())?;
    Ok(id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_between_jalur_sidecars_for_http1_h2_and_grpc() {
    let ca = TestCa::new();
    let plane = Plane::start(&[peer_authentication("STRICT")]).await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let ledger = ca.identity(&spiffe("shop", "ledger"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let http_app = SampleApp::start("payments", "p-1").expect("app");
    let grpc_app = SampleApp::start("ledger", "l-1").expect("app");
    let pay = server(
        plane.xds,
        "payments",
        "http",
        http_app.addr().port(),
        Some(payments.watch.clone()),
    )
    .await;
    let led = server(
        plane.xds,
        "ledger",
        "grpc",
        grpc_app.addr().port(),
        Some(ledger.watch.clone()),
    )
    .await;
    let (client, outbound) = caller(plane.xds, "storefront", Some(storefront.watch.clone())).await;

    let body = ok_h1(outbound, "payments.shop.svc.cluster.local").await;
    assert!(body.starts_with("payments p-1"), "{body}");
    // h2c to the caller, h2 over mTLS between the sidecars (the ledger port is gRPC).
    let (status, _, body) = assert_eventually("h2c → h2 over mTLS", DEADLINE, || async {
        let r = http2_get(outbound, "ledger.shop.svc.cluster.local", "/", &[]).await?;
        (r.0 == 200).then(|| r.clone()).ok_or(format!("{r:?}"))
    })
    .await;
    assert_eq!((status, body.trim()), (200, "ledger l-1"));

    // The destinations saw storefront's certificate, the source saw theirs.
    let s = stats(&pay).await;
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
    let s = stats(&led).await;
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
    let s = stats(&client).await;
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
    // The backend side of the hop: a rustls client sees payments' SPIFFE chain; plaintext is
    // refused.
    let inbound = pay.inbound_addr.expect("inbound");
    assert_eq!(
        server_id(inbound, &storefront.watch).await.as_deref(),
        Ok(PAYMENTS)
    );
    assert!(
        http_get(inbound, "payments", "/", &[]).await.is_err(),
        "STRICT answered plaintext"
    );

    // gRPC (grpcio client, through the caller's outbound) to the ledger over mTLS.
    let Some(py) = jalur_testkit::require_peer("python venv with grpcio", jalur_testkit::python())
    else {
        return;
    };
    let backend = jalur_testkit::GrpcBackend::start(&py, "echo-1")
        .await
        .expect("grpc backend");
    let echo_id = ca.identity(&spiffe("shop", "echo"), &[]);
    let _echo = server(
        plane.xds,
        "echo",
        "grpc",
        backend.addr().port(),
        Some(echo_id.watch.clone()),
    )
    .await;
    let authority = "echo.shop.svc.cluster.local";
    let report = assert_eventually("gRPC over mTLS", DEADLINE, || {
        let py = py.clone();
        async move {
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
        }
    })
    .await;
    assert_eq!(
        report["stream"].as_array().map(Vec::len),
        Some(50),
        "{report}"
    );
}

#[tokio::test]
async fn permissive_serves_a_legacy_caller_and_a_mesh_caller_and_labels_each() {
    let ca = TestCa::new();
    let plane = Plane::start(&[peer_authentication("PERMISSIVE")]).await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let app = SampleApp::start("payments", "p-1").expect("app");
    let pay = server(
        plane.xds,
        "payments",
        "http",
        app.addr().port(),
        Some(payments.watch.clone()),
    )
    .await;
    let (_mesh, mesh_out) = caller(plane.xds, "storefront", Some(storefront.watch.clone())).await;
    let (_legacy, legacy_out) = caller(plane.xds, "legacy", None).await;
    ok_h1(mesh_out, "payments.shop.svc.cluster.local").await;
    ok_h1(legacy_out, "payments.shop.svc.cluster.local").await;
    let s = stats(&pay).await;
    assert!(
        has(
            &s,
            &[
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT)
            ]
        ),
        "{s}"
    );
    assert!(
        has(
            &s,
            &[
                ("connection_security_policy", "none"),
                ("source_principal", "unknown")
            ]
        ),
        "{s}"
    );
}

#[tokio::test]
async fn strict_refuses_a_legacy_caller_and_disable_serves_plaintext() {
    let ca = TestCa::new();
    let plane = Plane::start(&[peer_authentication("STRICT")]).await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let app = SampleApp::start("payments", "p-1").expect("app");
    let pay = server(
        plane.xds,
        "payments",
        "http",
        app.addr().port(),
        Some(payments.watch.clone()),
    )
    .await;
    let (_mesh, mesh_out) = caller(plane.xds, "storefront", Some(storefront.watch.clone())).await;
    let (_legacy, legacy_out) = caller(plane.xds, "legacy", None).await;
    ok_h1(mesh_out, "payments.shop.svc.cluster.local").await;
    // The legacy caller's plaintext is closed by payments: an upstream failure, never a 200.
    let (status, _, _) = http_get(legacy_out, "payments.shop.svc.cluster.local", "/", &[])
        .await
        .expect("the legacy sidecar answers");
    assert_eq!(status, 503, "a plaintext caller got through STRICT");

    // DISABLE: the same workloads, plaintext inbound; the legacy caller is served. (A caller
    // with credentials still gets auto mTLS towards it from the control plane's translation, so
    // it is not asserted here: see the report of the proxy-tls track.)
    plane.write("pa.yaml", &peer_authentication("DISABLE").1);
    ok_h1(legacy_out, "payments.shop.svc.cluster.local").await;
    let inbound = pay.inbound_addr.expect("inbound");
    let (status, _, _) = http_get(inbound, "payments", "/", &[])
        .await
        .expect("plaintext inbound");
    assert_eq!(status, 200);
}
