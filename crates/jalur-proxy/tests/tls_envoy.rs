//! jalur proxy ↔ stock Envoy over Istio's mesh mTLS, on the same hand-built Istio-shaped xDS as
//! `tls.rs`. The Envoys get `default` and `ROOTCA` over their ADS stream here (the SDS config
//! source is the only difference from the contract's `sds-grpc`, which needs `jalur agent`): what
//! is under test is that the two TLS stacks agree — SNI, Istio's ALPN, SAN matching on SPIFFE
//! ids, client certificates both ways, HTTP/1.1 and h2 over TLS.

mod common;
#[path = "common/istio_tls.rs"]
mod istio_tls;

use std::net::SocketAddr;
use std::time::Duration;

use common::bound_listener;
use common::ca::{spiffe, TestCa};
use common::mesh::{envoy_counter, envoy_listener, ephemeral_sidecar, PAYMENTS, STOREFRONT};
use common::probe::{has, prometheus};
use istio_tls::StaticPlane;
use istio_tls::{cluster, listener, listener_from, upstream_tls, upstream_tls_from, Mode, Sds};
use jalur_testkit::{assert_eventually, http2_get, http_get, EchoServer, Envoy, EnvoyOpts};

const DEADLINE: Duration = Duration::from_secs(30);
const SNI: &str = "outbound_.8080_._.payments.shop.svc.cluster.local";

/// A stock Envoy for `shop/service` taking its secrets over ADS (no agent), as `tls.rs`'s
/// static plane serves them.
async fn envoy(xds: SocketAddr, service: &str) -> Option<Envoy> {
    let binary = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary())?;
    let id = format!("sidecar~127.0.0.1~{service}.shop~shop.svc.cluster.local");
    let mut opts = EnvoyOpts::new(xds, &id);
    opts.cluster = format!("{service}.shop");
    Some(
        Envoy::start_with(&binary, opts)
            .await
            .expect("envoy starts"),
    )
}

#[tokio::test]
async fn jalur_calls_envoy_over_mtls_and_envoy_refuses_plaintext() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let echo = EchoServer::start("payments").await;
    plane.serve_with_secrets(
        "payments.shop",
        vec![listener_from(
            "inbound",
            "inbound|8080||",
            false,
            Mode::Strict,
            Sds::Ads,
        )],
        vec![cluster(
            "inbound|8080||",
            &[echo.addr()],
            false,
            None,
            false,
        )],
        Some(&payments.watch.borrow()),
    );
    let Some(server) = envoy(plane.addr, "payments").await else {
        return;
    };
    let inbound = envoy_listener(&server, "inbound").await;
    plane.serve(
        "storefront.shop",
        vec![
            listener("outbound", "out-h1", false, Mode::Disable),
            listener("outbound-h2", "out-h2", false, Mode::Disable),
        ],
        vec![
            cluster(
                "out-h1",
                &[inbound],
                true,
                Some(upstream_tls(SNI, &[PAYMENTS], false)),
                false,
            ),
            cluster(
                "out-h2",
                &[inbound],
                true,
                Some(upstream_tls(SNI, &[PAYMENTS], true)),
                true,
            ),
        ],
    );
    let client = ephemeral_sidecar(plane.addr, "storefront", Some(storefront.watch.clone())).await;
    let (h1, h2) = (
        bound_listener(&client, "outbound").await,
        bound_listener(&client, "outbound-h2").await,
    );

    let (status, _, body) =
        assert_eventually("jalur → Envoy, HTTP/1.1 over mTLS", DEADLINE, || async {
            http_get(h1, "payments", "/", &[]).await.and_then(|r| {
                (r.0 == 200)
                    .then_some(r.clone())
                    .ok_or(format!("{r:?}\n{}", server.log_tail()))
            })
        })
        .await;
    assert_eq!((status, body.trim()), (200, "payments"));
    let (status, _, body) = http2_get(h2, "payments", "/", &[])
        .await
        .expect("h2 over mTLS");
    assert_eq!((status, body.trim()), (200, "payments"));
    // jalur saw Envoy's certificate.
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
    // Envoy under STRICT closes a plaintext connection.
    let plain = http_get(inbound, "payments", "/", &[]).await;
    assert!(
        plain.is_err(),
        "Envoy answered plaintext under STRICT: {plain:?}"
    );
    // And Envoy's listener counted TLS handshakes, none of them without a client certificate.
    let handshakes = envoy_counter(&server, "listener.", ".ssl.handshake").await;
    let without_cert = envoy_counter(&server, "listener.", ".ssl.no_certificate").await;
    assert!(handshakes >= 2, "{handshakes} handshakes");
    assert_eq!(without_cert, 0);
}

#[tokio::test]
async fn envoy_calls_jalur_over_mtls_with_its_identity_checked() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let echo = EchoServer::start("payments").await;
    plane.serve(
        "payments.shop",
        vec![listener("inbound", "inbound|8080||", false, Mode::Strict)],
        vec![cluster(
            "inbound|8080||",
            &[echo.addr()],
            false,
            None,
            false,
        )],
    );
    let server = ephemeral_sidecar(plane.addr, "payments", Some(payments.watch.clone())).await;
    let inbound = bound_listener(&server, "inbound").await;
    let tls = |h2| Some(upstream_tls_from(SNI, &[PAYMENTS], h2, Sds::Ads));
    plane.serve_with_secrets(
        "storefront.shop",
        vec![
            listener_from("outbound", "out-h1", false, Mode::Disable, Sds::Ads),
            listener_from("outbound-h2", "out-h2", false, Mode::Disable, Sds::Ads),
        ],
        vec![
            cluster("out-h1", &[inbound], true, tls(false), false),
            cluster("out-h2", &[inbound], true, tls(true), true),
        ],
        Some(&storefront.watch.borrow()),
    );
    let Some(client) = envoy(plane.addr, "storefront").await else {
        return;
    };
    let h1 = envoy_listener(&client, "outbound").await;
    let h2 = envoy_listener(&client, "outbound-h2").await;
    let (status, _, body) =
        assert_eventually("Envoy → jalur, HTTP/1.1 over mTLS", DEADLINE, || async {
            http_get(h1, "payments", "/", &[]).await.and_then(|r| {
                (r.0 == 200)
                    .then_some(r.clone())
                    .ok_or(format!("{r:?}\n{}", client.log_tail()))
            })
        })
        .await;
    assert_eq!((status, body.trim()), (200, "payments"));
    let (status, _, _) = http_get(h2, "payments", "/", &[])
        .await
        .expect("h2 cluster");
    assert_eq!(status, 200);
    let s = prometheus(&server).await;
    for protocol in ["http", "http2"] {
        assert!(
            has(
                &s,
                &[
                    ("reporter", "destination"),
                    ("connection_security_policy", "mutual_tls"),
                    ("source_principal", STOREFRONT),
                    ("destination_principal", PAYMENTS),
                    ("request_protocol", protocol),
                ]
            ),
            "{protocol}: {s}"
        );
    }
}
