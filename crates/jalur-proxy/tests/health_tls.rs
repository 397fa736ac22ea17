//! Active health checks go over each endpoint's matched transport socket, as Envoy sends them:
//! a client sidecar checking a STRICT mTLS server sidecar keeps it healthy, while the same
//! check over plaintext (an endpoint matched to the raw socket) fails against that server.
//!
//! Hand-built Istio-shaped xDS (`common/istio_tls.rs`): the control plane emits
//! `health_checks` only for ConsulRegistry imports, whose endpoints carry no identity (no auto
//! mTLS); they get a TLS socket with a DestinationRule `tls.mode: ISTIO_MUTUAL`, and a stock
//! Envoy or an operator's own xDS can put both on any cluster. The proxy must honour both.

mod common;
#[path = "common/istio_tls.rs"]
mod istio_tls;

use std::time::Duration;

use common::bound_listener as bound;
use common::ca::{spiffe, TestCa};
use common::mesh::{ephemeral_sidecar, PAYMENTS, STOREFRONT};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{health_check, HealthCheck};
use envoy_types::pb::google::protobuf::UInt32Value;
use istio_tls::{cluster, listener, upstream_tls, Mode, StaticPlane};
use jalur_proxy::run::Proxy;
use jalur_testkit::{assert_eventually, http_get, EchoServer};

const DEADLINE: Duration = Duration::from_secs(20);
const SNI: &str = "outbound_.8080_._.payments.shop.svc.cluster.local";
/// The endpoint carries `tlsMode: istio`: the cluster's mTLS socket.
const MESHED: &str = "outbound|8080||payments";
/// The same server, its endpoint without that metadata: the raw socket, plaintext.
const PLAIN: &str = "outbound|8080|plain|payments";

/// `c` with an HTTP check of `/` every 100 ms; one failure takes the host out.
fn checked(mut c: Cluster) -> Cluster {
    let ms = |n| envoy_types::pb::google::protobuf::Duration {
        seconds: 0,
        nanos: n * 1_000_000,
    };
    c.health_checks = vec![HealthCheck {
        interval: Some(ms(100)),
        timeout: Some(ms(900)),
        unhealthy_threshold: Some(UInt32Value { value: 1 }),
        healthy_threshold: Some(UInt32Value { value: 1 }),
        health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
            health_check::HttpHealthCheck {
                path: "/".into(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }];
    c
}

/// Whether the active check has taken the only host of `cluster` out (`None`: not there yet).
fn check_failed(proxy: &Proxy, cluster: &str) -> Option<bool> {
    let c = proxy.state.rt.compiled().cluster(cluster)?;
    let hosts = c.hosts();
    hosts.hosts().first().map(|h| h.check_failed())
}

/// The destination-side request count from `STOREFRONT` over mTLS, in `stats`.
fn mtls_requests_from_storefront(stats: &str) -> u64 {
    stats
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            [
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT),
            ]
            .iter()
            .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn http_health_checks_reach_a_strict_sidecar_over_mtls_and_keep_it_healthy() {
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
    let inbound = bound(&server, "inbound").await;

    let tls = || Some(upstream_tls(SNI, &[PAYMENTS], false));
    plane.serve(
        "storefront.shop",
        vec![listener("outbound", MESHED, false, Mode::Disable)],
        vec![
            checked(cluster(MESHED, &[inbound], true, tls(), false)),
            checked(cluster(PLAIN, &[inbound], false, tls(), false)),
        ],
    );
    let client = ephemeral_sidecar(plane.addr, "storefront", Some(storefront.watch.clone())).await;

    // The control: a plaintext check against this STRICT server fails, so checks do run and
    // a plaintext check of the meshed endpoint would have taken it out.
    assert_eventually(
        "the plaintext check fails against STRICT",
        DEADLINE,
        || async {
            match check_failed(&client, PLAIN) {
                Some(true) => Ok(()),
                other => Err(format!("check_failed = {other:?}")),
            }
        },
    )
    .await;
    // The meshed endpoint's checks arrive over mTLS with the client's identity (no request
    // has been sent yet: every one of these is a health check)...
    assert_eventually("three health checks over mTLS", DEADLINE, || async {
        let stats = http_get(server.stats_addr, "stats", "/stats/prometheus", &[])
            .await?
            .2;
        (mtls_requests_from_storefront(&stats) >= 3)
            .then_some(())
            .ok_or(stats)
    })
    .await;
    // ... and pass: the host stays in rotation, and traffic reaches it.
    assert_eq!(check_failed(&client, MESHED), Some(false));
    let outbound = bound(&client, "outbound").await;
    let (status, _, body) = http_get(outbound, "payments", "/", &[])
        .await
        .expect("a request through the checked cluster");
    assert_eq!((status, body.trim()), (200, "payments"));
    assert_eq!(check_failed(&client, MESHED), Some(false));
}
