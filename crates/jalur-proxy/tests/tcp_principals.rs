//! Istio's `istio_tcp_*` metrics of a TCP flow over mesh mTLS name both principals on both
//! reporters: the source reporter its own certificate's id and the upstream's (with
//! `connection_security_policy="unknown"`, as Istio's client side cannot know the server's
//! policy), the destination reporter the caller's and its own (`mutual_tls`).

mod common;
#[path = "common/istio_tls.rs"]
mod istio_tls;

use std::time::Duration;

use common::bound_listener as bound;
use common::ca::{spiffe, TestCa};
use common::mesh::{ephemeral_sidecar, PAYMENTS, STOREFRONT};
use common::probe::{tcp_echo, tcp_roundtrip};
use istio_tls::{cluster, listener, upstream_tls, Mode, StaticPlane};
use jalur_proxy::run::Proxy;
use jalur_testkit::{assert_eventually, http_get};

const DEADLINE: Duration = Duration::from_secs(20);
const SNI: &str = "outbound_.9000_._.payments.shop.svc.cluster.local";
const METRICS: [&str; 4] = [
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
];

/// `metric`'s lines reported by `reporter`.
fn lines<'a>(stats: &'a str, metric: &str, reporter: &str) -> Vec<&'a str> {
    stats
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| l.contains(&format!("reporter=\"{reporter}\"")))
        .collect()
}

/// Every `METRICS` line of `reporter` carries `labels`, and each metric has one (after the
/// flow closed, so `closed` and the byte counters are there too).
fn labelled(stats: &str, reporter: &str, labels: &[(&str, &str)]) -> Result<(), String> {
    for metric in METRICS {
        let found = lines(stats, metric, reporter);
        if found.is_empty() {
            return Err(format!(
                "no {metric} from the {reporter} reporter:\n{stats}"
            ));
        }
        for line in found {
            for (k, v) in labels {
                if !line.contains(&format!("{k}=\"{v}\"")) {
                    return Err(format!("{line} lacks {k}=\"{v}\""));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn tcp_over_mtls_names_both_principals_on_both_reporters() {
    let ca = TestCa::new();
    let plane = StaticPlane::start().await;
    let payments = ca.identity(&spiffe("shop", "payments"), &[]);
    let storefront = ca.identity(&spiffe("shop", "storefront"), &[]);
    let backend = tcp_echo().await;
    plane.serve(
        "payments.shop",
        vec![listener(
            "inbound-tcp",
            "inbound|9000||",
            true,
            Mode::Strict,
        )],
        vec![cluster("inbound|9000||", &[backend], false, None, false)],
    );
    let server = ephemeral_sidecar(plane.addr, "payments", Some(payments.watch.clone())).await;
    let inbound = bound(&server, "inbound-tcp").await;
    let upstream = "outbound|9000||payments";
    plane.serve(
        "storefront.shop",
        vec![listener("outbound-tcp", upstream, true, Mode::Disable)],
        vec![cluster(
            upstream,
            &[inbound],
            true,
            Some(upstream_tls(SNI, &[PAYMENTS], false)),
            false,
        )],
    );
    let client = ephemeral_sidecar(plane.addr, "storefront", Some(storefront.watch.clone())).await;
    let outbound = bound(&client, "outbound-tcp").await;

    let echoed = tcp_roundtrip(outbound, b"ping over mtls")
        .await
        .expect("TCP over mTLS");
    assert_eq!(echoed, b"ping over mtls");

    let stats = |proxy: &Proxy| {
        let addr = proxy.stats_addr;
        async move {
            http_get(addr, "stats", "/stats/prometheus", &[])
                .await
                .map(|r| r.2)
        }
    };
    assert_eventually(
        "source-side TCP metrics name both principals",
        DEADLINE,
        || async {
            labelled(
                &stats(&client).await?,
                "source",
                &[
                    ("connection_security_policy", "unknown"),
                    ("source_principal", STOREFRONT),
                    ("destination_principal", PAYMENTS),
                ],
            )
        },
    )
    .await;
    assert_eventually("destination-side TCP metrics too", DEADLINE, || async {
        labelled(
            &stats(&server).await?,
            "destination",
            &[
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT),
                ("destination_principal", PAYMENTS),
            ],
        )
    })
    .await;
}
