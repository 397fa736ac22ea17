//! Gateway TLS from the control plane's translation (Istio YAML → `file-cert:`/`file-root:`/
//! `default`/`ROOTCA` SDS names) through jalur proxy as the gateway: SIMPLE serves HTTPS with
//! the files' certificate; MUTUAL requires a client certificate from the `caCertificates` CA
//! carrying one of `subjectAltNames` (none, another CA's, or a wrong SAN: refused in the
//! handshake); ISTIO_MUTUAL requires a mesh certificate and presents the gateway's own.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::mesh::MeshPlane;
use common::{bound_listener, sidecar_opts};
use jalur_agent::bootstrap::ControlPlane;
use jalur_identity::verify::{self, Accept};
use jalur_proxy::run::{Proxy, ProxyOptions, Role};
use jalur_testkit::agent::{AgentEnvoy, AgentEnvoyOpts};
use jalur_testkit::pki::{FileCa, Leaf};
use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{assert_eventually, EchoServer};
use jalur_wire::NodeMeta;
use rustls::pki_types::ServerName;

const NS: &str = "istio-system";
const HOST: &str = "bookinfo.example.com";
const CLIENT_SAN: &str = "client.example.com";
const SIMPLE_PORT: u32 = 8443;
const MUTUAL_PORT: u32 = 9443;
const ISTIO_MUTUAL_PORT: u32 = 10443;

/// The PKI of one test: the server's CA, the CA the MUTUAL port trusts, and a stranger.
struct EdgePki {
    _dir: tempfile::TempDir,
    server_ca: FileCa,
    client_ca: FileCa,
    stranger: FileCa,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl EdgePki {
    fn new() -> EdgePki {
        let dir = tempfile::TempDir::with_prefix("jalur-edge-tls-").expect("tmp");
        let server_ca = FileCa::new("edge server CA");
        let client_ca = FileCa::new("edge client CA");
        let (cert, key) = server_ca.leaf(&[HOST]).write(dir.path(), "server");
        let ca = client_ca.write_root(dir.path(), "clients-ca.pem");
        EdgePki {
            stranger: FileCa::new("stranger CA"),
            _dir: dir,
            server_ca,
            client_ca,
            cert,
            key,
            ca,
        }
    }
}

/// The mesh's config: a backend behind `reviews`, and the edge Gateway with one server per TLS
/// mode, each routing `bookinfo.example.com` to it.
fn files(pki: &EdgePki, backend: &EchoServer) -> Vec<(&'static str, String)> {
    let (cert, key, ca) = (pki.cert.display(), pki.key.display(), pki.ca.display());
    let gateway = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: {NS}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {SIMPLE_PORT}, name: https-simple, protocol: HTTPS}}\n    hosts: [\"bookinfo/*\"]\n    tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n  - port: {{number: {MUTUAL_PORT}, name: https-mutual, protocol: HTTPS}}\n    hosts: [\"bookinfo/*\"]\n    tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}, subjectAltNames: [{CLIENT_SAN}]}}\n  - port: {{number: {ISTIO_MUTUAL_PORT}, name: https-east-west, protocol: HTTPS}}\n    hosts: [\"bookinfo/*\"]\n    tls: {{mode: ISTIO_MUTUAL}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge, namespace: bookinfo}}\nspec:\n  hosts: [{HOST}]\n  gateways: [{NS}/edge]\n  http:\n  - route:\n    - destination: {{host: reviews}}\n"
    );
    vec![
        (
            "service.yaml",
            service_entry("reviews", "bookinfo", "reviews.bookinfo.svc.cluster.local"),
        ),
        (
            "we.yaml",
            workload_entry("reviews", "v1", "bookinfo", backend.addr()),
        ),
        ("gateway.yaml", gateway),
    ]
}

/// A jalur gateway with a mesh identity (`istio-system/edge-gateway`), and its three ports.
async fn jalur_gateway(mesh: &MeshPlane) -> (Proxy, [SocketAddr; 3]) {
    let opts = ProxyOptions {
        role: Role::Gateway,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ephemeral_ports: true,
        credentials: Some(common::mesh::issue(
            &mesh.ca,
            &jalur_identity::SpiffeId::new("cluster.local", NS, "edge-gateway"),
        )),
        ..sidecar_opts(mesh.plane.xds, "edge-gateway", NS)
    };
    let proxy = Proxy::start(opts).await.expect("jalur gateway");
    let mut ports = Vec::new();
    for port in [SIMPLE_PORT, MUTUAL_PORT, ISTIO_MUTUAL_PORT] {
        ports.push(bound_listener(&proxy, &format!("0.0.0.0_{port}")).await);
    }
    (proxy, [ports[0], ports[1], ports[2]])
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A client trusting `server_ca`, presenting `leaf` when given.
fn client(server_ca: &FileCa, leaf: Option<&Leaf>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(server_ca.root_pem.as_bytes())
                .expect("root"),
        )
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match leaf {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let (certs, key) = leaf.client_auth();
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert")
        }
    }
}

/// One HTTP/1.1 request over TLS to `addr` (SNI `sni`): the status and the server's leaf
/// certificate, or the first error (handshake, alert, I/O) as text.
async fn https_get(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    sni: &str,
) -> Result<(u16, Vec<u8>), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("https://{HOST}/reviews"))
        .header("host", HOST)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = match send.send_request(req).await {
        Ok(resp) => resp,
        // In TLS 1.3 the server judges the client's certificate after the client's handshake
        // is done: its alert ends the connection task, which says why.
        Err(e) => {
            let why = tokio::time::timeout(Duration::from_secs(5), conn).await;
            return Err(format!("request: {e:?}; connection: {why:?}"));
        }
    };
    Ok((resp.status().as_u16(), leaf))
}

/// Waits until `addr` answers 200 with `config`; returns the server's leaf.
async fn serves(what: &str, addr: SocketAddr, config: &rustls::ClientConfig, sni: &str) -> Vec<u8> {
    assert_eventually(what, Duration::from_secs(20), || {
        let config = config.clone();
        async move {
            match https_get(addr, config, sni).await {
                Ok((200, leaf)) => Ok(leaf),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

/// The server refuses the handshake with a TLS alert; no request is answered.
async fn refused(what: &str, addr: SocketAddr, config: rustls::ClientConfig, sni: &str) {
    match https_get(addr, config, sni).await {
        Ok(r) => panic!("{what}: expected the handshake to be refused, got {r:?}"),
        Err(e) => assert!(e.contains("AlertReceived"), "{what}: {e}"),
    }
}

/// The checks shared by jalur and Envoy gateways on the three ports.
async fn gateway_tls_modes(mesh: &MeshPlane, pki: &EdgePki, ports: [SocketAddr; 3]) {
    let [simple, mutual, istio_mutual] = ports;
    // SIMPLE: the files' certificate, no client certificate asked.
    let leaf = serves(
        "SIMPLE serves HTTPS",
        simple,
        &client(&pki.server_ca, None),
        HOST,
    )
    .await;
    assert!(!leaf.is_empty(), "the server presented a certificate");

    // MUTUAL: a client certificate from the trusted CA with the wanted SAN.
    let good = pki.client_ca.leaf(&[CLIENT_SAN]);
    serves(
        "MUTUAL serves a good client certificate",
        mutual,
        &client(&pki.server_ca, Some(&good)),
        HOST,
    )
    .await;
    refused(
        "MUTUAL without a client certificate",
        mutual,
        client(&pki.server_ca, None),
        HOST,
    )
    .await;
    let stranger = pki.stranger.leaf(&[CLIENT_SAN]);
    refused(
        "MUTUAL with another CA's certificate",
        mutual,
        client(&pki.server_ca, Some(&stranger)),
        HOST,
    )
    .await;
    let wrong_san = pki.client_ca.leaf(&["someone-else.example.com"]);
    refused(
        "MUTUAL with a SAN not in subjectAltNames",
        mutual,
        client(&pki.server_ca, Some(&wrong_san)),
        HOST,
    )
    .await;

    // ISTIO_MUTUAL: mesh certificates both ways.
    let caller = mesh.issue("caller");
    let gateway_id = jalur_identity::SpiffeId::new("cluster.local", NS, "edge-gateway");
    let mesh_client =
        verify::client_config(caller, Accept::AnyOf(vec![gateway_id]), &[]).expect("mesh client");
    serves(
        "ISTIO_MUTUAL serves a mesh client",
        istio_mutual,
        &mesh_client,
        HOST,
    )
    .await;
    let mesh_anonymous = verify::client_config(
        mesh.issue("caller"),
        Accept::TrustDomain("cluster.local".into()),
        &[],
    )
    .map(|mut c| {
        c.client_auth_cert_resolver = Arc::new(NoClientCert);
        c
    })
    .expect("client");
    refused(
        "ISTIO_MUTUAL without a mesh certificate",
        istio_mutual,
        mesh_anonymous,
        HOST,
    )
    .await;

    // AuthorizationPolicy on a MUTUAL client's certificate, which has a DNS SAN and no SPIFFE
    // URI. Envoy's `authenticated` principal matches the URI SANs, then the DNS SANs, then the
    // subject; Istio writes every principal with `spiffe://` in front except `*`, which becomes
    // `.+`: so `principals: ["*"]` ("any authenticated peer") covers this client in Envoy, and
    // must in jalur too — a matcher reading only URI SANs would let it through this DENY.
    let deny = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: partner, namespace: {NS}}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules:\n  - from:\n    - source: {{principals: [\"*\"]}}\n");
    mesh.plane.write("edge-authz.yaml", &deny);
    let good_client = client(&pki.server_ca, Some(&good));
    assert_eventually(
        "a DENY on any authenticated principal refuses the DNS-SAN-only client",
        Duration::from_secs(20),
        || {
            let config = good_client.clone();
            async move {
                match https_get(mutual, config, HOST).await {
                    Ok((403, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    mesh.plane.write("edge-authz.yaml", "");
    serves(
        "the DENY withdrawn, the good client is served again",
        mutual,
        &good_client,
        HOST,
    )
    .await;
}

/// Presents no client certificate.
#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

/// A stock Envoy gateway beside `jalur agent`'s SDS (the same mesh identity
/// `istio-system/edge-gateway`, ADS over 15012): `default`/`ROOTCA` and the file secrets.
async fn envoy_gateway(mesh: &MeshPlane) -> Option<(AgentEnvoy, [SocketAddr; 3])> {
    let binary = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary())?;
    let node = format!("router~127.0.0.1~edge-gateway.{NS}~{NS}.svc.cluster.local");
    let target = ControlPlane::from_addr(mesh.xds_tls, mesh.ca.control_id());
    let mut opts = AgentEnvoyOpts::new(target, &node);
    opts.meta = NodeMeta {
        service: Some("edge-gateway".into()),
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        listen_address: Some("127.0.0.1".into()),
        ephemeral_ports: true,
        ..NodeMeta::default()
    };
    let id = jalur_identity::SpiffeId::new("cluster.local", NS, "edge-gateway");
    let envoy = AgentEnvoy::start(&binary, common::mesh::issue(&mesh.ca, &id), opts)
        .await
        .expect("Envoy gateway beside the agent");
    let mut ports = Vec::new();
    for port in [SIMPLE_PORT, MUTUAL_PORT, ISTIO_MUTUAL_PORT] {
        let p = envoy
            .listener_port(&format!("0.0.0.0_{port}"))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
        ports.push(SocketAddr::from(([127, 0, 0, 1], p)));
    }
    Some((envoy, [ports[0], ports[1], ports[2]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_serves_simple_mutual_and_istio_mutual() {
    let backend = EchoServer::start("v1").await;
    let pki = EdgePki::new();
    let mesh = MeshPlane::start(&files(&pki, &backend)).await;
    let Some((envoy, ports)) = envoy_gateway(&mesh).await else {
        return;
    };
    gateway_tls_modes(&mesh, &pki, ports).await;
    // Envoy got names, never bytes: its config dump shows the SDS names, not the key.
    let dump = envoy.admin_get("/config_dump").await.expect("config_dump");
    assert!(dump.contains("file-cert:"), "the SDS name is in the dump");
    assert!(
        !dump.contains("PRIVATE KEY"),
        "no key in Envoy's config dump"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_gateway_serves_simple_mutual_and_istio_mutual() {
    let backend = EchoServer::start("v1").await;
    let pki = EdgePki::new();
    let mesh = MeshPlane::start(&files(&pki, &backend)).await;
    let (_gw, ports) = jalur_gateway(&mesh).await;
    gateway_tls_modes(&mesh, &pki, ports).await;
}

/// What the load saw while the gateway's certificate was replaced.
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: Vec<String>,
}

/// Rotation under load: clients open a new TLS connection per request (a full handshake each,
/// so every request sees the certificate the gateway holds at that moment) to the MUTUAL port
/// while the operator replaces the server's certificate and key the way operators do (write
/// beside, rename over: the certificate first, then the key, so the pair is mismatched for a
/// moment). No request may fail, and new handshakes must present the new certificate within a
/// deadline — without a restart. Then the client CA file is replaced too.
async fn rotation_under_load(pki: &EdgePki, mutual: SocketAddr) {
    let good = pki.client_ca.leaf(&[CLIENT_SAN]);
    let mut config = client(&pki.server_ca, Some(&good));
    // No session resumption: a resumed session skips the certificate (and rustls reports the
    // first session's), so only full handshakes show which certificate the gateway holds.
    config.resumption = rustls::client::Resumption::disabled();
    let old = serves("MUTUAL serves before the rotation", mutual, &config, HOST).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (config, stop) = (config.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match https_get(mutual, config.clone(), HOST).await {
                    Ok((200, _)) => tally.ok += 1,
                    other => tally.failures.push(format!("{other:?}")),
                }
                // Pacing of the load (about 4 × 50 handshakes/s), not a wait for readiness.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tally
        }));
    }
    let fresh = pki.server_ca.leaf(&[HOST]);
    jalur_testkit::pki::replace(&pki.cert, &fresh.chain_pem);
    jalur_testkit::pki::replace(&pki.key, &fresh.key_pem);
    let seen = assert_eventually(
        "new handshakes present the replaced certificate",
        Duration::from_secs(15),
        || {
            let config = config.clone();
            let fresh = fresh.der.clone();
            async move {
                match https_get(mutual, config, HOST).await {
                    Ok((200, leaf)) if leaf == fresh => Ok(leaf),
                    other => Err(format!("{:?}", other.map(|(s, l)| (s, l.len())))),
                }
            }
        },
    )
    .await;
    assert_ne!(seen, old, "the certificate changed");
    // Some load after the switch too, so requests on the new certificate count as well.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = Tally::default();
    for task in load {
        let t = task.await.expect("load task");
        total.ok += t.ok;
        total.failures.extend(t.failures);
    }
    assert!(
        total.failures.is_empty(),
        "{} of {} requests failed during the rotation: {:?}",
        total.failures.len(),
        total.ok + total.failures.len() as u64,
        &total.failures[..total.failures.len().min(5)]
    );
    assert!(total.ok >= 20, "the load ran: {} requests", total.ok);

    // The client CA is a file too: replaced by another CA's root, clients of the new CA are
    // admitted and those of the old one refused, without a restart.
    let next_ca = FileCa::new("edge client CA, next");
    jalur_testkit::pki::replace(&pki.ca, &next_ca.root_pem);
    let newcomer = next_ca.leaf(&[CLIENT_SAN]);
    let mut admitted = client(&pki.server_ca, Some(&newcomer));
    admitted.resumption = rustls::client::Resumption::disabled();
    serves(
        "a client of the replaced CA file's CA is admitted",
        mutual,
        &admitted,
        HOST,
    )
    .await;
    assert_eventually(
        "a client of the CA no longer in the file is refused",
        Duration::from_secs(15),
        || {
            let config = config.clone();
            async move {
                match https_get(mutual, config, HOST).await {
                    Err(e) if e.contains("AlertReceived") => Ok(()),
                    other => Err(format!("{:?}", other.map(|(s, l)| (s, l.len())))),
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_gateway_rotates_its_files_under_load_without_a_failed_request() {
    let backend = EchoServer::start("v1").await;
    let pki = EdgePki::new();
    let mesh = MeshPlane::start(&files(&pki, &backend)).await;
    let (_gw, [_, mutual, _]) = jalur_gateway(&mesh).await;
    rotation_under_load(&pki, mutual).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_rotates_its_files_under_load_without_a_failed_request() {
    let backend = EchoServer::start("v1").await;
    let pki = EdgePki::new();
    let mesh = MeshPlane::start(&files(&pki, &backend)).await;
    let Some((_envoy, [_, mutual, _])) = envoy_gateway(&mesh).await else {
        return;
    };
    rotation_under_load(&pki, mutual).await;
}
