//! jalur proxy ↔ stock Envoy over mesh mTLS the way a mesh runs it: one in-process control plane
//! with its CA (every identity below is signed by it), a STRICT PeerAuthentication, the Envoy
//! beside `jalur agent` (SDS `default`/`ROOTCA` on its Unix socket, ADS over mTLS on 15012),
//! the jalur sidecars with credentials from the same CA. jalur → Envoy and Envoy → jalur, each
//! side checking the other's SPIFFE id.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{jalur_sidecar, sidecar_opts, Plane};
use jalur_agent::bootstrap::ControlPlane as AgentTarget;
use jalur_control::ca::{Authority, CaOptions};
use jalur_demo::app::SampleApp;
use jalur_identity::{Credentials, CredentialsWatch, SpiffeId, WorkloadCert, WorkloadKey};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::agent::{AgentEnvoy, AgentEnvoyOpts};
use jalur_testkit::{assert_eventually, http_get};
use jalur_wire::{NamedPort, NodeMeta};

const DEADLINE: Duration = Duration::from_secs(30);
const STOREFRONT: &str = "spiffe://cluster.local/ns/shop/sa/storefront";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: STRICT\n";

/// Credentials for `sa` in `shop`, the key generated here and the CSR signed by the plane's CA.
fn issue(ca: &Authority, sa: &str) -> CredentialsWatch {
    let id = SpiffeId::new("cluster.local", "shop", sa);
    let key = WorkloadKey::generate().expect("key");
    let chain = ca
        .sign_csr(
            &key.csr_pem(&id).expect("csr"),
            &id,
            Some(Duration::from_secs(3600)),
        )
        .expect("signed");
    let cert = WorkloadCert::new(&key, &chain.concat()).expect("cert");
    let creds = Credentials::new(cert, ca.trust_bundle()).expect("creds");
    tokio::sync::watch::channel(Arc::new(creds)).1
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn plane() -> (Plane, Arc<Authority>, SocketAddr) {
    let mut options = Plane::options();
    options.ca = Some(CaOptions::default());
    options.xds_tls_addr = ([127, 0, 0, 1], 0).into();
    let plane = Plane::start_with(&[("pa.yaml", STRICT.to_string())], options).await;
    let ca = plane
        .control()
        .state
        .ca
        .as_ref()
        .expect("the plane runs a CA")
        .authority
        .clone();
    let tls = plane.control().xds_tls_addr.expect("15012 served");
    (plane, ca, tls)
}

/// Envoy next to `jalur agent` as the sidecar of `service`, its inbound and outbound on fixed
/// loopback ports (the endpoint it registers is its inbound port, as a real sidecar's).
async fn envoy(
    binary: &std::path::Path,
    ca: &Authority,
    xds_tls: SocketAddr,
    service: &str,
    app_port: Option<u16>,
) -> (AgentEnvoy, SocketAddr, SocketAddr) {
    let (inbound, outbound) = (free_port(), free_port());
    let node = format!("sidecar~127.0.0.1~{service}.shop~shop.svc.cluster.local");
    let mut opts = AgentEnvoyOpts::new(AgentTarget::from_addr(xds_tls, ca.control_id()), &node);
    opts.meta = NodeMeta {
        service: Some(service.into()),
        listen_address: Some("127.0.0.1".into()),
        inbound_port: Some(u32::from(inbound)),
        outbound_port: Some(u32::from(outbound)),
        app_port: app_port.map(u32::from),
        ports: app_port
            .map(|p| NamedPort {
                name: "http".into(),
                number: u32::from(p),
            })
            .into_iter()
            .collect(),
        ..NodeMeta::default()
    };
    let envoy = AgentEnvoy::start(binary, issue(ca, service), opts)
        .await
        .expect("Envoy starts beside the agent");
    (
        envoy,
        ([127, 0, 0, 1], inbound).into(),
        ([127, 0, 0, 1], outbound).into(),
    )
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

async fn ok(outbound: SocketAddr, host: &str, tail: impl Fn() -> String) -> String {
    assert_eventually(
        &format!("200 from {host} via {outbound}"),
        DEADLINE,
        || async {
            let r = http_get(outbound, host, "/", &[]).await?;
            (r.0 == 200)
                .then(|| r.2.clone())
                .ok_or(format!("{r:?}\n{}", tail()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_calls_an_agent_fronted_envoy_over_mtls() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let (plane, ca, xds_tls) = plane().await;
    let app = SampleApp::start("payments", "p-1").expect("app");
    let (server, inbound, _) =
        envoy(&binary, &ca, xds_tls, "payments", Some(app.addr().port())).await;
    let (client, outbound) = jalur_sidecar(ProxyOptions {
        credentials: Some(issue(&ca, "storefront")),
        ..sidecar_opts(plane.xds, "storefront", "shop")
    })
    .await;
    let body = ok(outbound, "payments.shop.svc.cluster.local", || {
        server.log_tail()
    })
    .await;
    assert!(body.starts_with("payments p-1"), "{body}");
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
        "jalur saw Envoy's certificate: {s}"
    );
    // Envoy's inbound takes only mTLS.
    assert!(
        http_get(inbound, "payments", "/", &[]).await.is_err(),
        "Envoy answered plaintext"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fronted_envoy_calls_jalur_over_mtls() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let (plane, ca, xds_tls) = plane().await;
    let app = SampleApp::start("payments", "p-1").expect("app");
    let server = Proxy::start(ProxyOptions {
        app_port: Some(app.addr().port()),
        ports: vec![format!("http:{}", app.addr().port()).parse().expect("port")],
        credentials: Some(issue(&ca, "payments")),
        ..sidecar_opts(plane.xds, "payments", "shop")
    })
    .await
    .expect("jalur server");
    let (client, _, outbound) = envoy(&binary, &ca, xds_tls, "storefront", None).await;
    let body = ok(outbound, "payments.shop.svc.cluster.local", || {
        client.log_tail()
    })
    .await;
    assert!(body.starts_with("payments p-1"), "{body}");
    let s = stats(&server).await;
    assert!(
        has(
            &s,
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
                ("source_principal", STOREFRONT),
                ("destination_principal", PAYMENTS),
            ]
        ),
        "jalur saw Envoy's certificate: {s}"
    );
}
