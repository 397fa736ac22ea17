//! jalur proxy and the control plane's TLS port (15012), in process with the real CA: a proxy
//! bootstraps its identity with a token and syncs over mTLS; an impostor (a certificate for one
//! service announcing another) is refused and attracts no traffic; ADS without a client
//! certificate, and client certificates of another CA or trust domain, are refused; a control
//! plane restart (same root) leaves proxies serving and their renewals resume. The same with
//! real processes (and renewals under a short TTL) is in `crates/jalur/tests/secure_xds.rs`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::ca::TestCa;
use common::jalur_sidecar;
use common::mesh::{id, MeshPlane, NS, STOREFRONT};
use common::probe::{lines, prometheus};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use jalur_control::ControlPlane;
use jalur_identity::channel::{self, control_plane_id, ClientAuth};
use jalur_identity::rotate::{CertRotator, RotatorOptions};
use jalur_identity::verify::Accept;
use jalur_identity::{CredentialsWatch, SpiffeId, TrustBundle};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::{assert_eventually, http_get, EchoServer};

const PAYMENTS: &str = "payments.shop.svc.cluster.local";

/// The mesh plane (CA, ADS on 15012) as workloads reach it: over TLS, proving who they are.
struct SecurePlane {
    mesh: MeshPlane,
}

impl SecurePlane {
    async fn start() -> SecurePlane {
        SecurePlane {
            mesh: MeshPlane::start(&[]).await,
        }
    }

    fn control(&self) -> &ControlPlane {
        self.mesh.plane.control()
    }

    fn address(&self) -> String {
        format!("https://{}", self.mesh.xds_tls)
    }

    fn bundle_file(&self) -> PathBuf {
        self.mesh.plane.dir.join(".jalur/ca/trust-bundle.pem")
    }

    fn token(&self, sa: &str) -> String {
        let ca = self.control().state.ca.as_ref().expect("CA");
        ca.tokens
            .create(NS, sa, Duration::from_secs(600), false)
            .expect("token")
            .token
    }

    /// A workload identity from the CA, as `jalur proxy` gets it.
    async fn identity(&self, sa: &str, ttl: Duration) -> CertRotator {
        let mut opts = RotatorOptions::new(self.address(), id(sa), self.bundle_file());
        opts.token = Some(self.token(sa));
        opts.cert_ttl = ttl;
        opts.retry_base = Duration::from_millis(200);
        opts.retry_max = Duration::from_secs(1);
        CertRotator::start(opts)
            .await
            .expect("workload certificate")
    }

    /// Stops and starts the control plane on the same ports and state (same root). The new
    /// one waits for the proxies the old one served to reconnect before it answers, as in
    /// production (the test template's zero grace would let it push a mesh without payments
    /// to a caller that reconnects first: 404 after the restart in 3 of 10 runs on main).
    async fn restart(&mut self) {
        let plane = &mut self.mesh.plane;
        plane.stop().await;
        let opts = jalur_control::Options {
            config: vec![plane.dir.clone()],
            xds_addr: plane.xds,
            xds_tls_addr: self.mesh.xds_tls,
            registry_grace: Duration::from_secs(10),
            ..plane.template.clone()
        };
        plane.plane = Some(ControlPlane::start(opts).await.expect("restart"));
    }
}

/// A sidecar of `service` reaching the control plane over TLS with `creds`.
fn secure_sidecar(plane: &SecurePlane, service: &str, creds: CredentialsWatch) -> ProxyOptions {
    ProxyOptions {
        xds: plane.address(),
        credentials: Some(creds),
        ..ProxyOptions::loopback(plane.mesh.xds_tls, service, NS)
    }
}

/// The server side: a sidecar of `service` in front of `backend`.
async fn server_sidecar(
    plane: &SecurePlane,
    service: &str,
    creds: CredentialsWatch,
    backend: &EchoServer,
) -> Proxy {
    Proxy::start(ProxyOptions {
        app_port: Some(backend.addr().port()),
        ..secure_sidecar(plane, service, creds)
    })
    .await
    .expect("server sidecar")
}

/// The calling side: `storefront` with an hour-long identity from the plane's CA (the
/// rotator is returned so it keeps running), and its outbound listener.
async fn caller_sidecar(plane: &SecurePlane) -> (CertRotator, Proxy, SocketAddr) {
    let id = plane
        .identity("storefront", Duration::from_secs(3600))
        .await;
    let (proxy, outbound) =
        jalur_sidecar(secure_sidecar(plane, "storefront", id.credentials())).await;
    (id, proxy, outbound)
}

async fn ready(proxy: &Proxy) {
    assert_eventually(
        &format!("{} ready", proxy.node_id),
        Duration::from_secs(20),
        || async {
            match http_get(proxy.health_addr, "h", "/healthz/ready", &[]).await {
                Ok((200, _, _)) => Ok(()),
                other => Err(format!("{other:?}; xDS {:?}", proxy.state.config.status())),
            }
        },
    )
    .await;
}

/// How many hosts the caller's clusters for `host` have.
async fn hosts_of(caller: &Proxy, host: &str) -> Result<usize, String> {
    let (_, _, body) = http_get(caller.admin_addr, "a", "/clusters", &[]).await?;
    let clusters: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(clusters
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.ends_with(host)))
        .filter_map(|c| c["hosts"].as_array())
        .map(Vec::len)
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_bootstraps_with_a_token_and_syncs_over_tls() {
    let plane = SecurePlane::start().await;
    let backend = EchoServer::start("payments-1").await;
    let payments = plane.identity("payments", Duration::from_secs(3600)).await;
    let server = server_sidecar(&plane, "payments", payments.credentials(), &backend).await;
    let (_caller_id, caller, outbound) = caller_sidecar(&plane).await;
    ready(&server).await;
    ready(&caller).await;
    for proxy in [&server, &caller] {
        let status = proxy.state.config.status();
        assert!(
            status.connected && status.addr.starts_with("https://"),
            "{status:?}"
        );
    }
    // The control plane saw both over TLS, with the identity they announce. A proxy is ready
    // locally once it applied its config; the plane marks it ready when that ACK arrives, a
    // moment later: poll.
    for proxy in [&server, &caller] {
        assert_eventually(
            &format!("{} ready at the control plane", proxy.node_id),
            Duration::from_secs(10),
            || async {
                let syncz = plane.control().state.ads.sync();
                let client = syncz.client(&proxy.node_id).ok_or("not registered")?;
                client.ready.then_some(()).ok_or(format!("{client:?}"))
            },
        )
        .await;
    }
    // Registered as mTLS-capable (Istio's label), so callers' auto mTLS picks it.
    let (_, _, registry) = http_get(plane.control().status_addr, "c", "/debug/registry", &[])
        .await
        .expect("registry");
    let registry: serde_json::Value = serde_json::from_str(&registry).expect("json");
    let payments_workloads: Vec<&serde_json::Value> = registry["registries"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["workloads"].as_array().into_iter().flatten())
        .filter(|w| w["host"] == PAYMENTS)
        .collect();
    assert_eq!(payments_workloads.len(), 1, "{registry}");
    assert_eq!(
        payments_workloads[0]["labels"]["security.istio.io/tlsMode"], "istio",
        "{registry}"
    );
    assert_eventually(
        "the caller reaches payments",
        Duration::from_secs(20),
        || async {
            match http_get(outbound, PAYMENTS, "/", &[]).await? {
                (200, _, body) if body.contains("payments-1") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    for _ in 0..20 {
        let (code, _, body) = http_get(outbound, PAYMENTS, "/", &[])
            .await
            .expect("request");
        assert_eq!((code, body.contains("payments-1")), (200, true), "{body}");
    }
    // Sidecar to sidecar ran over mTLS with the identities from the CA (the server's
    // destination-reporter metrics name the caller's SPIFFE id).
    let stats = prometheus(&server).await;
    let inbound = lines(
        &stats,
        "istio_requests_total",
        &[("reporter", "destination")],
    );
    let secured = lines(
        &stats,
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", STOREFRONT),
        ],
    );
    assert!(
        !inbound.is_empty() && secured.len() == inbound.len(),
        "{inbound:#?}"
    );
}

/// The TLS port (15012) too: both ends of a proxy's mTLS xDS connection run TCP keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_xds_connection_is_watched_by_tcp_keepalive_at_both_ends() {
    let plane = SecurePlane::start().await;
    let (_id, caller, _) = caller_sidecar(&plane).await;
    ready(&caller).await;
    common::assert_xds_kept_alive_by_tcp(plane.mesh.xds_tls.port()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_is_refused_and_attracts_no_traffic() {
    let plane = SecurePlane::start().await;
    let real = EchoServer::start("payments-real").await;
    let fake = EchoServer::start("payments-impostor").await;
    let payments = plane.identity("payments", Duration::from_secs(3600)).await;
    let server = server_sidecar(&plane, "payments", payments.credentials(), &real).await;
    let (_caller_id, caller, outbound) = caller_sidecar(&plane).await;
    ready(&server).await;
    assert_eventually(
        "the caller knows the real payments",
        Duration::from_secs(20),
        || async {
            match hosts_of(&caller, PAYMENTS).await? {
                1 => Ok(()),
                n => Err(format!("{n} hosts")),
            }
        },
    )
    .await;
    // A workload holding storefront's certificate announces itself as payments.
    let thief = plane
        .identity("storefront", Duration::from_secs(3600))
        .await;
    let impostor = Proxy::start(ProxyOptions {
        app_port: Some(fake.addr().port()),
        // Its own node id (workload payments-fake), as a second instance would have.
        labels: [("version".to_string(), "fake".to_string())].into(),
        ..secure_sidecar(&plane, "payments", thief.credentials())
    })
    .await
    .expect("impostor sidecar");
    assert_ne!(impostor.node_id, server.node_id);
    let refusal = assert_eventually(
        "the impostor is refused",
        Duration::from_secs(20),
        || async {
            match impostor.state.config.status().last_error {
                Some(e) if e.contains("PermissionDenied") => Ok(e),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(
        refusal.contains("\"payments\"")
            && refusal.contains("spiffe://cluster.local/ns/shop/sa/storefront"),
        "the refusal names both the service and the certificate: {refusal}"
    );
    assert!(
        plane
            .control()
            .state
            .ads
            .sync()
            .client(&impostor.node_id)
            .is_none(),
        "the impostor was registered"
    );
    // Callers keep going to the real payments only (a rebuild has had time to happen: the
    // impostor retried several times meanwhile).
    for _ in 0..30 {
        let (code, _, body) = http_get(outbound, PAYMENTS, "/", &[])
            .await
            .expect("request");
        assert_eq!(
            (code, body.as_str().contains("payments-real")),
            (200, true),
            "{body}"
        );
    }
    assert_eq!(hosts_of(&caller, PAYMENTS).await.expect("clusters"), 1);
    assert_eq!(fake.hits(), 0, "traffic reached the impostor");
}

/// An ADS stream on 15012 from a client with `auth`: the first response or the error.
async fn ads_on_tls(plane: &SecurePlane, auth: ClientAuth) -> Result<(), String> {
    let accept = Accept::AnyOf(vec![control_plane_id("cluster.local", "jalur-system")]);
    let channel = channel::connect(&plane.address(), auth, accept)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let node = jalur_proxy::run::node(&ProxyOptions::loopback(
        plane.mesh.xds_tls,
        "storefront",
        NS,
    ));
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await.map_err(|e| e.to_string())?;
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let reply = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    drop(tx);
    match reply {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("stream ended".into()),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ads_without_a_mesh_certificate_is_refused_on_15012() {
    let plane = SecurePlane::start().await;
    let bundle =
        TrustBundle::from_pem(&std::fs::read_to_string(plane.bundle_file()).expect("bundle"))
            .expect("bundle");
    // Sanity: the right certificate is served.
    let storefront = plane
        .identity("storefront", Duration::from_secs(3600))
        .await;
    ads_on_tls(&plane, ClientAuth::Certificate(storefront.credentials()))
        .await
        .expect("served");
    // No client certificate (a token is only good for asking the CA).
    let anonymous = ads_on_tls(&plane, ClientAuth::Anonymous(bundle.clone()))
        .await
        .expect_err("anonymous ADS served");
    assert!(
        anonymous.starts_with("Unauthenticated") && anonymous.contains("client certificate"),
        "{anonymous}"
    );
    // A certificate from another CA for a mesh identity: the TLS handshake fails.
    let stranger = foreign_credentials("cluster.local", &bundle);
    let other_ca = ads_on_tls(&plane, ClientAuth::Certificate(stranger))
        .await
        .expect_err("another CA accepted");
    assert!(
        !other_ca.starts_with("Unauthenticated") && !other_ca.contains("PermissionDenied"),
        "refused at the TLS layer: {other_ca}"
    );
    // Signed by the mesh's own root (the CA refuses to, so the test signs with its key),
    // but for another trust domain: refused at the TLS layer too.
    let evil = mesh_root_signs(
        &plane,
        &SpiffeId::new("evil.example", NS, "storefront"),
        &bundle,
    );
    let foreign = ads_on_tls(&plane, ClientAuth::Certificate(evil))
        .await
        .expect_err("another trust domain accepted");
    assert!(
        !foreign.starts_with("Unauthenticated") && !foreign.contains("PermissionDenied"),
        "refused at the TLS layer: {foreign}"
    );
    // The same root for this trust domain is fine (the refusal above is the trust domain's).
    let good = mesh_root_signs(&plane, &id("storefront"), &bundle);
    ads_on_tls(&plane, ClientAuth::Certificate(good))
        .await
        .expect("the mesh root's own id");
    let metrics = prometheus_text(plane.control()).await;
    assert!(
        metrics.contains("jalur_xds_streams_refused_total{code=\"Unauthenticated\"} 1"),
        "{metrics}"
    );
}

/// A certificate for `spiffe://TD/ns/shop/sa/storefront` from a CA the mesh does not trust,
/// trusting the mesh's bundle (so only the server side can refuse).
fn foreign_credentials(td: &str, bundle: &TrustBundle) -> CredentialsWatch {
    TestCa::new().credentials(&SpiffeId::new(td, NS, "storefront"), bundle.clone())
}

/// A certificate for `id` signed with the mesh root's key from the state directory.
fn mesh_root_signs(plane: &SecurePlane, id: &SpiffeId, bundle: &TrustBundle) -> CredentialsWatch {
    let dir = plane.mesh.plane.dir.join(".jalur/ca");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("CA file");
    let root = TestCa::from_pem(&read("root-cert.pem"), &read("root-key.pem"));
    root.credentials(id, bundle.clone())
}

async fn prometheus_text(plane: &ControlPlane) -> String {
    http_get(plane.status_addr, "control", "/metrics", &[])
        .await
        .expect("metrics")
        .2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_keeps_proxies_serving_and_renewals_resume() {
    let mut plane = SecurePlane::start().await;
    let backend = EchoServer::start("payments-1").await;
    // Renewed every few seconds (4 s certificates), so a renewal falls in the outage or
    // right after it.
    let payments = plane.identity("payments", Duration::from_secs(4)).await;
    let server = server_sidecar(&plane, "payments", payments.credentials(), &backend).await;
    let (_caller_id, caller, outbound) = caller_sidecar(&plane).await;
    ready(&server).await;
    assert_eventually(
        "the caller reaches payments",
        Duration::from_secs(20),
        || async {
            match http_get(outbound, PAYMENTS, "/", &[]).await? {
                (200, _, _) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    plane.mesh.plane.stop().await;
    // While it is down: traffic still flows on the last config and certificates.
    for _ in 0..10 {
        let (code, _, _) = http_get(outbound, PAYMENTS, "/", &[])
            .await
            .expect("request while down");
        assert_eq!(code, 200);
    }
    // The leaf held now came from the old plane (stopped); a different one can only come from
    // the restarted CA.
    let mut creds = payments.credentials();
    let before = creds.borrow_and_update().cert.chain[0].clone();
    plane.restart().await;
    // Renewals resume against the restarted CA (same root: the chain verifies, and the
    // proxies reconnect over TLS with the certificate they hold).
    let renewed = assert_eventually(
        "a renewal after the restart",
        Duration::from_secs(20),
        || {
            let current = creds.borrow_and_update().clone();
            let fresh = current.cert.chain[0] != before;
            async move {
                fresh
                    .then_some(current)
                    .ok_or_else(|| "still the certificate from before the restart".to_string())
            }
        },
    )
    .await;
    assert_eq!(renewed.cert.id, id("payments"));
    for proxy in [&server, &caller] {
        let node = proxy.node_id.clone();
        assert_eventually("reconnected over TLS", Duration::from_secs(20), || async {
            match plane.control().state.ads.sync().client(&node) {
                Some(c) if c.ready => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    for _ in 0..10 {
        let (code, _, _) = http_get(outbound, PAYMENTS, "/", &[])
            .await
            .expect("request after restart");
        assert_eq!(code, 200);
    }
}
