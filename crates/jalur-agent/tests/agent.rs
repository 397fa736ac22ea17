//! The whole agent against the control plane's real CA (`jalur_control::ca::MeshCa`) served over
//! TLS as 15012 serves it: a bootstrap token gets the first certificate (key generated in the
//! agent), SDS serves it, the bootstrap file is written, and a stock Envoy started from that
//! file shows the CA's certificate, verifies the control plane's own certificate (SAN match
//! against ROOTCA) and picks up a trust-bundle change. A token for another identity is refused
//! with the CA's message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jalur_agent::bootstrap::{control_plane_id, ControlPlane, EnvoyBootstrap};
use jalur_agent::{Agent, AgentError, AgentOptions};
use jalur_control::ca::{CaOptions, MeshCa};
use jalur_identity::istio_ca::IstioCertificateServiceServer;
use jalur_identity::rotate::RotatorOptions;
use jalur_identity::verify::{server_config, Accept};
use jalur_identity::{channel, SpiffeId};
use jalur_testkit::agent::wait_for_certs;
use jalur_testkit::ca::{leaf_serial, serial_hex, TestCa};
use jalur_testkit::{assert_eventually, envoy_binary, require_peer, Envoy};

const HOUR: Duration = Duration::from_secs(3600);

fn workload() -> SpiffeId {
    SpiffeId::new("cluster.local", "bookinfo", "ratings")
}

/// The mesh CA on a TLS port, client certificates optional (the first request has a token).
struct CaPort {
    ca: MeshCa,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl CaPort {
    async fn start() -> CaPort {
        let dir = tempfile::TempDir::with_prefix("jalur-agent-ca-").expect("tmp");
        let mut registry = prometheus_client::registry::Registry::default();
        let ca = MeshCa::start(dir.path(), &CaOptions::default(), &mut registry).expect("CA");
        let creds = ca
            .authority
            .server_credentials(&[])
            .expect("control plane credentials");
        let config = server_config(
            creds,
            Accept::TrustDomain("cluster.local".into()),
            true,
            &[b"h2"],
        )
        .expect("server config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = channel::incoming(listener, Arc::new(config));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let service = IstioCertificateServiceServer::new(ca.service.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        CaPort {
            ca,
            addr,
            dir,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn token(&self, id: &SpiffeId) -> String {
        self.ca
            .tokens
            .create(&id.namespace, &id.service_account, HOUR, false)
            .expect("token")
            .token
    }

    /// The trust bundle file the agent is given as `--root-cert`.
    fn bundle_file(&self) -> std::path::PathBuf {
        let path = self.dir.path().join("agent-root-cert.pem");
        std::fs::write(&path, self.ca.authority.bundle_pem()).expect("write bundle");
        path
    }
}

fn options(port: &CaPort, id: &SpiffeId, token: String, dir: &tempfile::TempDir) -> AgentOptions {
    let mut rotator = RotatorOptions::new(port.url(), id.clone(), port.bundle_file());
    rotator.token = Some(token);
    rotator.bundle_poll = Duration::from_millis(100);
    let socket = dir.path().join("sds.sock");
    let cp = ControlPlane::from_url(
        &port.url(),
        control_plane_id("cluster.local", "jalur-system"),
    )
    .expect("url");
    let mut bootstrap = EnvoyBootstrap::new(
        id,
        "sidecar~127.0.0.1~ratings-1.bookinfo~bookinfo.svc.cluster.local",
        &socket,
        cp,
    );
    bootstrap.admin = ([127, 0, 0, 1], 0).into();
    AgentOptions {
        rotator,
        sds_socket: socket,
        envoy_bootstrap: Some((dir.path().join("envoy.json"), bootstrap)),
    }
}

/// `cluster.xds-grpc.ssl.NAME` from Envoy's admin.
async fn xds_ssl_counter(envoy: &Envoy, name: &str) -> Result<u64, String> {
    let stats = envoy
        .admin_get(&format!(
            "/stats?filter=^cluster\\.xds-grpc\\.ssl\\.{name}$"
        ))
        .await?;
    stats
        .split(':')
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no counter in {stats:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_runs_on_the_certificate_the_agent_got_from_the_mesh_ca() {
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let port = CaPort::start().await;
    let dir = tempfile::TempDir::with_prefix("jalur-agent-").expect("tmp");
    let opts = options(&port, &workload(), port.token(&workload()), &dir);
    let (bundle_path, bootstrap_path) = (
        opts.rotator.root_cert.clone(),
        opts.envoy_bootstrap.as_ref().expect("bootstrap").0.clone(),
    );
    let agent = Agent::start(opts)
        .await
        .expect("the agent gets its certificate");
    let creds = agent.credentials();
    assert_eq!(creds.borrow().cert.id, workload());

    // Envoy from the file the agent wrote, as an operator would start it.
    let text = std::fs::read_to_string(&bootstrap_path).expect("bootstrap written");
    let bootstrap: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let envoy = Envoy::start_with_bootstrap(&binary, &bootstrap)
        .await
        .expect("Envoy starts");
    let serial = leaf_serial(&creds.borrow().cert);
    let root_serial = serial_hex(port.ca.authority.trust_bundle().roots[0].as_ref());
    wait_for_certs(
        &envoy,
        "/certs shows the CA's certificate",
        Duration::from_secs(10),
        |certs| {
            let ok = certs
                .chains
                .iter()
                .any(|c| c.serial == serial && c.uris == [workload().to_string()])
                && certs.cas.iter().any(|c| c.serial == root_serial);
            ok.then_some(()).ok_or_else(|| format!("{certs:?}"))
        },
    )
    .await;
    // Envoy's ADS handshake with the control plane's certificate succeeds: chain to ROOTCA and
    // the SAN is the control plane's id.
    assert_eventually(
        "Envoy completes mTLS with the control plane",
        Duration::from_secs(10),
        || async {
            match xds_ssl_counter(&envoy, "handshake").await? {
                0 => Err("no handshake yet".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await;
    assert_eq!(xds_ssl_counter(&envoy, "fail_verify_san").await, Ok(0));

    // A second root distributed ahead of a root rotation reaches Envoy's ROOTCA.
    let next = TestCa::new();
    let both = format!("{}{}", port.ca.authority.bundle_pem(), next.root_pem());
    let tmp = bundle_path.with_extension("tmp");
    std::fs::write(&tmp, both).expect("write");
    std::fs::rename(&tmp, &bundle_path).expect("rename");
    let next_serial = serial_hex(next.bundle().roots[0].as_ref());
    wait_for_certs(
        &envoy,
        "Envoy trusts the new root too",
        Duration::from_secs(10),
        |certs| {
            let serials: Vec<_> = certs.cas.iter().map(|c| c.serial.clone()).collect();
            let both = serials.contains(&next_serial) && serials.contains(&root_serial);
            both.then_some(()).ok_or_else(|| format!("CAs {serials:?}"))
        },
    )
    .await;
    drop(envoy);
    agent.shutdown().await;
    assert!(
        !dir.path().join("sds.sock").exists(),
        "shutdown removes the socket"
    );
    let _ = port.stop.send(());
}

#[tokio::test]
async fn a_token_for_another_identity_is_refused_with_the_cas_message() {
    let port = CaPort::start().await;
    let dir = tempfile::TempDir::with_prefix("jalur-agent-").expect("tmp");
    let other = SpiffeId::new("cluster.local", "bookinfo", "reviews");
    let opts = options(&port, &workload(), port.token(&other), &dir);
    let error = match Agent::start(opts).await {
        Ok(_) => panic!("a token for bookinfo/reviews got a certificate for ratings"),
        Err(e) => e,
    };
    assert!(matches!(error, AgentError::Certificate(_)), "{error}");
    let text = error.to_string();
    assert!(
        text.contains("bookinfo/reviews") && text.contains(&workload().to_string()),
        "the CA's refusal names both: {text}"
    );
    assert!(
        !dir.path().join("sds.sock").exists(),
        "nothing served without a certificate"
    );
    assert!(
        !dir.path().join("envoy.json").exists(),
        "no bootstrap without a certificate"
    );
    let _ = port.stop.send(());
}
