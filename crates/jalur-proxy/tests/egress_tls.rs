//! Egress TLS origination from a DestinationRule (`tls.mode` SIMPLE and MUTUAL) to a local
//! HTTPS server with a test CA, through jalur proxy and stock Envoy (beside an SDS socket
//! serving the files, as `jalur agent` does) from one control plane: the app speaks plaintext,
//! the sidecar originates TLS with the DR's SNI and CA file; a DR naming another CA, or
//! `subjectAltNames` the server's certificate does not carry, gets 503; MUTUAL presents the
//! client certificate from files, which the server sees.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{jalur_sidecar, sidecar_opts, wait_accepts, Plane};
use jalur_testkit::pki::FileCa;
use jalur_testkit::{assert_eventually, http_get};

const NS: &str = "shop";
/// Four external hosts on one server: a good CA, a wrong CA, a SAN the server does not have,
/// and a client certificate.
const GOOD: &str = "good.example";
const WRONG_CA: &str = "wrongca.example";
const WRONG_SAN: &str = "wrongsan.example";
const MUTUAL: &str = "mutual.example";

/// An HTTPS server that answers `sni=NAME client=yes|no` (what its handshake saw); client
/// certificates are optional and, when presented, must chain to `client_ca`.
async fn https_server(server_ca: &FileCa, client_ca: &FileCa) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let leaf = server_ca.leaf(&[GOOD, WRONG_CA, WRONG_SAN, MUTUAL]);
    let (chain, key) = leaf.client_auth();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(client_ca.root_pem.as_bytes())
                .expect("client CA"),
        )
        .expect("client CA");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server cert");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let seen = format!(
                    "sni={} client={}",
                    conn.server_name().unwrap_or("-"),
                    if conn.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "no"
                    }
                );
                let service = hyper::service::service_fn(move |_req| {
                    let body = seen.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A ServiceEntry for `host` (HTTP port 9080 for the app, the server's TLS port behind it)
/// and the DestinationRule originating TLS to it.
fn external(host: &str, server: SocketAddr, tls: &str) -> String {
    let name = host.replace('.', "-");
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {tls}\n",
        server.port()
    )
}

struct Egress {
    _dir: tempfile::TempDir,
    plane: Plane,
}

async fn egress() -> Egress {
    let dir = tempfile::TempDir::with_prefix("jalur-egress-").expect("tmp");
    let (server_ca, client_ca, other) = (
        FileCa::new("external server CA"),
        FileCa::new("partner client CA"),
        FileCa::new("some other CA"),
    );
    let server = https_server(&server_ca, &client_ca).await;
    let ca = server_ca.write_root(dir.path(), "server-ca.pem");
    let wrong = other.write_root(dir.path(), "other-ca.pem");
    let (cert, key) = client_ca
        .leaf(&["caller.shop.example"])
        .write(dir.path(), "client");
    let files = vec![
        (
            "good.yaml",
            external(
                GOOD,
                server,
                &format!("{{mode: SIMPLE, caCertificates: {}, sni: {GOOD}}}", ca.display()),
            ),
        ),
        (
            "wrong.yaml",
            external(
                WRONG_CA,
                server,
                &format!("{{mode: SIMPLE, caCertificates: {}}}", wrong.display()),
            ),
        ),
        (
            "wrong-san.yaml",
            external(
                WRONG_SAN,
                server,
                &format!(
                    "{{mode: SIMPLE, caCertificates: {}, subjectAltNames: [payments.partner.example]}}",
                    ca.display()
                ),
            ),
        ),
        (
            "mutual.yaml",
            external(
                MUTUAL,
                server,
                &format!(
                    "{{mode: MUTUAL, caCertificates: {}, clientCertificate: {}, privateKey: {}, subjectAltNames: [{MUTUAL}]}}",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
            ),
        ),
    ];
    Egress {
        plane: Plane::start(&files).await,
        _dir: dir,
    }
}

/// The four cases through a sidecar's outbound listener.
async fn originates(what: &str, outbound: SocketAddr) {
    let (status, _, body) = assert_eventually(
        &format!("{what}: SIMPLE with the server's CA"),
        Duration::from_secs(20),
        || async {
            match http_get(outbound, GOOD, "/", &[]).await {
                Ok(r) if r.0 == 200 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "sni=good.example client=no"),
        "{what}: the server saw the DR's SNI and no client certificate"
    );
    let (status, _, body) = http_get(outbound, MUTUAL, "/", &[])
        .await
        .expect("MUTUAL answered");
    assert_eq!(
        (status, body.as_str()),
        (200, "sni=mutual.example client=yes"),
        "{what}: MUTUAL presents the client certificate; SNI defaults to the host"
    );
    for (host, why) in [
        (WRONG_CA, "a server the DR's CA does not sign"),
        (
            WRONG_SAN,
            "a server whose certificate lacks the DR's subjectAltNames",
        ),
    ] {
        let (status, _, _) = http_get(outbound, host, "/", &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: {host} answered nothing: {e:?}"));
        assert_eq!(status, 503, "{what}: {why} is refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_sidecar_originates_simple_and_mutual_tls() {
    let e = egress().await;
    let (_proxy, outbound) = jalur_sidecar(sidecar_opts(e.plane.xds, "caller", NS)).await;
    originates("jalur", outbound).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sidecar_originates_simple_and_mutual_tls() {
    let e = egress().await;
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let dir = tempfile::TempDir::with_prefix("jalur-egress-sds-").expect("tmp");
    let socket = dir.path().join("sds.sock");
    let _sds = jalur_agent::SdsSocket::bind_files_only(&socket)
        .await
        .expect("file SDS");
    let id = format!("sidecar~127.0.0.1~caller.{NS}~{NS}.svc.cluster.local");
    let mut opts = jalur_testkit::EnvoyOpts::new(e.plane.xds, &id);
    opts.metadata = serde_json::json!({ "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1", "NAMESPACE": NS });
    opts.extra_clusters = vec![jalur_agent::bootstrap::sds_cluster(&socket)];
    let envoy = jalur_testkit::Envoy::start_with(&binary, opts)
        .await
        .expect("envoy starts");
    let port = envoy
        .listener_port("outbound")
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", envoy.log_tail()));
    let outbound = SocketAddr::from(([127, 0, 0, 1], port));
    wait_accepts(outbound).await;
    originates("envoy", outbound).await;
}
