//! Gateway `tls.mode: PASSTHROUGH` from the control plane's translation, through jalur proxy and
//! through stock Envoy: two HTTPS backends with their own certificates from a test CA, and a
//! VirtualService with one `tls` route per SNI name. A client with SNI `a…` completes its
//! handshake with backend A (it checks A's certificate against the test CA, and the handshake's
//! Finished messages cover every byte both sides sent, so a gateway touching the bytes would
//! break it) and reads A's answer; SNI `b…` reaches B. An SNI no route names, a ClientHello
//! without SNI and plaintext are closed without reaching any backend.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bound_listener, sidecar_opts, Plane};
use jalur_proxy::run::{Proxy, ProxyOptions, Role};
use jalur_testkit::{assert_eventually, envoy_binary, require_peer, Envoy, EnvoyOpts};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NAMESPACE: &str = "edge";
const LISTENER: &str = "0.0.0.0_8443";
const HOST_A: &str = "a.passthrough.test";
const HOST_B: &str = "b.passthrough.test";
/// Covered by the server's `*.passthrough.test` but named by no route.
const HOST_UNROUTED: &str = "c.passthrough.test";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// An HTTPS backend on loopback answering every request with its own name, counting the
/// connections it accepted (a refused client must not even open one: a misrouted ClientHello
/// would fail on the certificate too, so failed connections alone would prove nothing).
struct Backend {
    addr: SocketAddr,
    cert: CertificateDer<'static>,
    connections: Arc<AtomicUsize>,
    /// TLS handshakes it completed: a ClientHello that reached it.
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

fn test_ca() -> TestCa {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "passthrough test root");
    let root = params.self_signed(&key).expect("CA root");
    TestCa {
        root: root.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

async fn backend(ca: &TestCa, host: &'static str) -> Backend {
    let key = KeyPair::generate().expect("leaf key");
    let params = CertificateParams::new(vec![host.to_string()]).expect("leaf params");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("leaf")
        .der()
        .clone();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], der)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let shaken = handshakes.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, shaken) = (acceptor.clone(), shaken.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                shaken.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{host}",
                    host.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Backend {
        addr,
        cert,
        connections,
        handshakes,
        task,
    }
}

fn config(a: &Backend, b: &Backend) -> Vec<(&'static str, String)> {
    let entry = |name: &str, host: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 443, name: tls, protocol: TLS}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{tls: {port}}}\n"
        )
    };
    let gateway = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: {NAMESPACE}}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8443, name: tls-passthrough, protocol: TLS}}\n    hosts: [\"*.passthrough.test\"]\n    tls: {{mode: PASSTHROUGH}}\n"
    );
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: by-sni, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{HOST_A}, {HOST_B}]\n  gateways: [edge]\n  tls:\n  - match:\n    - sniHosts: [{HOST_A}]\n    route:\n    - destination: {{host: {HOST_A}, port: {{number: 443}}}}\n  - match:\n    - sniHosts: [{HOST_B}]\n    route:\n    - destination: {{host: {HOST_B}, port: {{number: 443}}}}\n"
    );
    vec![
        ("a.yaml", entry("backend-a", HOST_A, a.addr.port())),
        ("b.yaml", entry("backend-b", HOST_B, b.addr.port())),
        ("gateway.yaml", gateway),
        ("vs.yaml", vs),
    ]
}

/// A TLS client trusting only the test CA: `sni` None sends no SNI (an IP as server name).
async fn https_get(
    gateway: SocketAddr,
    ca: &TestCa,
    sni: Option<&'static str>,
) -> Result<(CertificateDer<'static>, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root.clone()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = match sni {
        Some(host) => ServerName::try_from(host).map_err(|e| e.to_string())?,
        None => ServerName::IpAddress(gateway.ip().into()),
    };
    let tcp = TcpStream::connect(gateway)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no server certificate")?;
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(|| format!("no HTTP answer: {answer:?}"))?;
    Ok((cert, body))
}

/// Plaintext to a PASSTHROUGH port: closed without an answer.
async fn plaintext_is_closed(gateway: SocketAddr) -> Result<(), String> {
    let mut tcp = TcpStream::connect(gateway)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.passthrough.test\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    match read {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!(
            "{n} bytes came back: {:?}",
            String::from_utf8_lossy(&buf)
        )),
        Err(_) => Err("still open after 10 s".into()),
    }
}

async fn jalur_gateway(xds: SocketAddr) -> (Proxy, SocketAddr) {
    let opts = ProxyOptions {
        role: Role::Gateway,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ephemeral_ports: true,
        ..sidecar_opts(xds, "edge-gateway", NAMESPACE)
    };
    let proxy = Proxy::start(opts).await.expect("jalur gateway");
    let addr = bound_listener(&proxy, LISTENER).await;
    (proxy, addr)
}

async fn envoy_gateway(xds: SocketAddr) -> Option<(Envoy, SocketAddr)> {
    let binary = require_peer("envoy", envoy_binary())?;
    let mut opts = EnvoyOpts::new(
        xds,
        &format!("router~127.0.0.1~edge-gw.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"),
    );
    opts.metadata = serde_json::json!({ "LABELS": { "istio": "ingressgateway" }, "NAMESPACE": NAMESPACE, "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1" });
    let envoy = Envoy::start_with(&binary, opts)
        .await
        .expect("envoy gateway");
    let port = envoy
        .listener_port(LISTENER)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    Some((envoy, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// The whole scenario against one gateway.
async fn routes_by_sni(gateway: SocketAddr, ca: &TestCa, a: &Backend, b: &Backend) {
    // The listener may be bound before the backends' clusters and endpoints are in.
    let (cert, body) = assert_eventually(
        "SNI a reaches backend A",
        Duration::from_secs(20),
        || async { https_get(gateway, ca, Some(HOST_A)).await },
    )
    .await;
    assert_eq!(body, HOST_A, "SNI a answered by A");
    assert_eq!(cert, a.cert, "the client saw A's own certificate");
    let (cert, body) = https_get(gateway, ca, Some(HOST_B)).await.expect("SNI b");
    assert_eq!(body, HOST_B, "SNI b answered by B");
    assert_eq!(cert, b.cert, "the client saw B's own certificate");

    let before = (
        a.connections.load(Ordering::SeqCst),
        b.connections.load(Ordering::SeqCst),
    );
    let unrouted = https_get(gateway, ca, Some(HOST_UNROUTED)).await;
    assert!(unrouted.is_err(), "an SNI no route names: {unrouted:?}");
    let no_sni = https_get(gateway, ca, None).await;
    assert!(no_sni.is_err(), "a ClientHello without SNI: {no_sni:?}");
    plaintext_is_closed(gateway)
        .await
        .expect("plaintext closed");
    let after = (
        a.connections.load(Ordering::SeqCst),
        b.connections.load(Ordering::SeqCst),
    );
    assert_eq!(
        before, after,
        "a refused connection never reached a backend"
    );

    // A's route still works after the refusals (nothing was left broken).
    let (_, body) = https_get(gateway, ca, Some(HOST_A))
        .await
        .expect("SNI a again");
    assert_eq!(body, HOST_A);
}

/// A DENY AuthorizationPolicy on the gateway for one SNI name (`connection.sni`, the network
/// RBAC filter's `requested_server_name`): that name is closed before its ClientHello reaches
/// the backend (Envoy may already have dialled it, so handshakes are counted, not connections);
/// the other name still passes.
const DENY_SNI_B: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-b, namespace: edge}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules:\n  - when:\n    - key: connection.sni\n      values: [b.passthrough.test]\n";

async fn denies_by_sni(gateway: SocketAddr, ca: &TestCa, b: &Backend) {
    let (_, body) = assert_eventually(
        "SNI a reaches backend A",
        Duration::from_secs(20),
        || async { https_get(gateway, ca, Some(HOST_A)).await },
    )
    .await;
    assert_eq!(body, HOST_A);
    let before = b.handshakes.load(Ordering::SeqCst);
    let denied = https_get(gateway, ca, Some(HOST_B)).await;
    assert!(denied.is_err(), "SNI b denied by the policy: {denied:?}");
    assert_eq!(
        b.handshakes.load(Ordering::SeqCst),
        before,
        "no ClientHello reached B"
    );
}

async fn with_policy(a: &Backend, b: &Backend) -> Plane {
    let mut files = config(a, b);
    files.push(("deny-b.yaml", DENY_SNI_B.to_string()));
    Plane::start(&files).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_gateway_passthrough_denies_an_sni_by_policy() {
    let ca = test_ca();
    let (a, b) = (backend(&ca, HOST_A).await, backend(&ca, HOST_B).await);
    let plane = with_policy(&a, &b).await;
    let (_proxy, gateway) = jalur_gateway(plane.xds).await;
    denies_by_sni(gateway, &ca, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_passthrough_denies_an_sni_by_policy() {
    let ca = test_ca();
    let (a, b) = (backend(&ca, HOST_A).await, backend(&ca, HOST_B).await);
    let plane = with_policy(&a, &b).await;
    let Some((_envoy, gateway)) = envoy_gateway(plane.xds).await else {
        return;
    };
    denies_by_sni(gateway, &ca, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_gateway_passthrough_routes_by_sni_untouched() {
    let ca = test_ca();
    let (a, b) = (backend(&ca, HOST_A).await, backend(&ca, HOST_B).await);
    let plane = Plane::start(&config(&a, &b)).await;
    let (_proxy, gateway) = jalur_gateway(plane.xds).await;
    routes_by_sni(gateway, &ca, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_passthrough_routes_by_sni_untouched() {
    let ca = test_ca();
    let (a, b) = (backend(&ca, HOST_A).await, backend(&ca, HOST_B).await);
    let plane = Plane::start(&config(&a, &b)).await;
    let Some((_envoy, gateway)) = envoy_gateway(plane.xds).await else {
        return;
    };
    routes_by_sni(gateway, &ca, &a, &b).await;
}
