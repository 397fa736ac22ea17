//! Stock Envoy 1.40 started from the bootstrap the agent writes, its certificates coming only
//! over the agent's SDS socket: Envoy's admin `/certs` shows the SPIFFE id, the chain's expiry and
//! the root; Envoy's ADS runs over mTLS with that certificate (the control plane's side sees the
//! workload's id and serial); after each rotation `/certs` shows the new serial, new handshakes
//! present it, and traffic through Envoy goes on without a failed request.
//!
//! The control plane's side of `xds-grpc` is a TLS front in this test (mTLS with a control-plane
//! certificate from the same CA, then bytes piped to an in-process control plane's plaintext
//! ADS), so what is checked is Envoy's end: its key, chain and validation all come from SDS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jalur_agent::bootstrap::{control_plane_id, ControlPlane};
use jalur_control::{ControlPlane as Plane, Options};
use jalur_identity::verify::{peer_id, server_config, Accept};
use jalur_identity::{CredentialsWatch, SpiffeId};
use jalur_testkit::agent::{wait_for_certs, AgentEnvoy, AgentEnvoyOpts, ShownCerts};
use jalur_testkit::ca::{leaf_serial, serial_hex, TestCa};
use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{assert_eventually, envoy_binary, http_get, require_peer, EchoServer};
use jalur_wire::NodeMeta;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const HOUR: Duration = Duration::from_secs(3600);
const HOST: &str = "reviews.bookinfo.svc.cluster.local";
const NODE: &str = "sidecar~127.0.0.1~productpage-v1.bookinfo~bookinfo.svc.cluster.local";

fn workload() -> SpiffeId {
    SpiffeId::new("cluster.local", "bookinfo", "productpage")
}

/// Stands in for the control plane's TLS port: mTLS (client certificate required, any id of
/// the trust domain), records who connected with which serial, pipes to plaintext ADS.
struct TlsFront {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(SpiffeId, String)>>>,
    cut: watch::Sender<u64>,
}

impl TlsFront {
    async fn start(creds: CredentialsWatch, upstream: SocketAddr) -> TlsFront {
        let config = server_config(
            creds,
            Accept::TrustDomain("cluster.local".into()),
            false,
            &[b"h2"],
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (cut, _) = watch::channel(0u64);
        let (seen_in, cut_in) = (seen.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, mut cut) =
                    (acceptor.clone(), seen_in.clone(), cut_in.subscribe());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    {
                        let id = peer_id(leaf).expect("a SPIFFE id");
                        seen.lock()
                            .expect("lock")
                            .push((id, serial_hex(leaf.as_ref())));
                    }
                    let Ok(mut ads) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut tls, &mut ads) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TlsFront { addr, seen, cut }
    }

    /// Closes every open connection: Envoy reconnects with a new handshake.
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn serials_seen(&self, id: &SpiffeId) -> Vec<String> {
        let seen = self.seen.lock().expect("lock");
        seen.iter()
            .filter(|(i, _)| i == id)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

async fn plane(backend: SocketAddr) -> (Plane, tempfile::TempDir) {
    let dir = tempfile::TempDir::with_prefix("jalur-agent-envoy-").expect("tmp");
    std::fs::write(
        dir.path().join("svc.yaml"),
        service_entry("reviews", "bookinfo", HOST),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("we.yaml"),
        workload_entry("reviews", "v1", "bookinfo", backend),
    )
    .expect("write");
    let opts = Options {
        config: vec![dir.path().to_path_buf()],
        xds_addr: ([127, 0, 0, 1], 0).into(),
        status_addr: ([127, 0, 0, 1], 0).into(),
        debounce: Duration::from_millis(20),
        registry_grace: Duration::ZERO,
        ..Options::default()
    };
    (Plane::start(opts).await.expect("control plane"), dir)
}

/// Requests through Envoy until stopped; counts answers from the backend and anything else.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let (ok, failed, stop) = (Arc::default(), Arc::default(), Arc::<AtomicBool>::default());
        let (ok_in, failed_in, stop_in): (Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>, _) =
            (Arc::clone(&ok), Arc::clone(&failed), stop.clone());
        let task = tokio::spawn(async move {
            while !stop_in.load(Ordering::Relaxed) {
                match http_get(proxy, HOST, "/", &[]).await {
                    Ok((200, _, body)) if body == "v1" => {
                        ok_in.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, _, body)) => failed_in
                        .lock()
                        .expect("lock")
                        .push(format!("{status} {body}")),
                    Err(e) => failed_in.lock().expect("lock").push(e),
                }
            }
        });
        Load {
            ok,
            failed,
            stop,
            task,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load task");
        let failed = self.failed.lock().expect("lock").clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

fn assert_shows(
    certs: &ShownCerts,
    serial: &str,
    expires: SystemTime,
    root_serial: &str,
) -> Result<(), String> {
    let chain = certs
        .chains
        .iter()
        .find(|c| c.serial == serial)
        .ok_or_else(|| format!("no chain with serial {serial} in {certs:?}"))?;
    if chain.uris != [workload().to_string()] {
        return Err(format!("the chain names {:?}", chain.uris));
    }
    let skew = chain
        .expires
        .duration_since(expires)
        .or_else(|e| Ok::<_, String>(e.duration()))?;
    if skew > Duration::from_secs(1) {
        return Err(format!(
            "expiry {:?} is not the certificate's {expires:?}",
            chain.expires
        ));
    }
    if !certs.cas.iter().any(|c| c.serial == root_serial) {
        return Err(format!(
            "the root {root_serial} is not among Envoy's CAs {certs:?}"
        ));
    }
    Ok(())
}

/// Issues a new certificate and waits until Envoy holds only it and presents it in a new
/// handshake (the front cuts Envoy's ADS connection so it reconnects). Returns its serial.
async fn rotate(
    ca: &TestCa,
    renew: &watch::Sender<Arc<jalur_identity::Credentials>>,
    envoy: &AgentEnvoy,
    front: &TlsFront,
    root_serial: &str,
) -> String {
    renew.send_replace(ca.credentials(&workload(), HOUR));
    let serial = leaf_serial(&renew.borrow().cert);
    let expires = renew.borrow().cert.not_after;
    wait_for_certs(
        envoy,
        "/certs shows the rotated certificate",
        Duration::from_secs(10),
        |certs| {
            if certs.chains.iter().any(|c| c.serial != serial) {
                return Err(format!("an old chain is still loaded: {certs:?}"));
            }
            assert_shows(certs, &serial, expires, root_serial)
        },
    )
    .await;
    front.cut_all();
    assert_eventually(
        "Envoy reconnects presenting the new certificate",
        Duration::from_secs(10),
        || async {
            let seen = front.serials_seen(&workload());
            if seen.contains(&serial) {
                Ok(())
            } else {
                Err(format!("handshakes so far: {seen:?}"))
            }
        },
    )
    .await;
    serial
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_takes_its_identity_from_the_agent_and_rotates_without_a_failed_request() {
    identity_and_rotation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_takes_its_identity_from_the_agent_and_rotates_without_a_failed_request_delta() {
    identity_and_rotation(true).await;
}

async fn identity_and_rotation(delta: bool) {
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let backend = EchoServer::start("v1").await;
    let (plane, _dir) = plane(backend.addr()).await;
    let ca = TestCa::new();
    let cp_id = control_plane_id("cluster.local", "jalur-system");
    let (_cp_renew, cp_creds) = ca.watch(&cp_id, HOUR);
    let front = TlsFront::start(cp_creds, plane.xds_addr).await;
    let (renew, creds) = ca.watch(&workload(), HOUR);

    let mut opts = AgentEnvoyOpts::new(ControlPlane::from_addr(front.addr, cp_id), NODE);
    opts.delta = delta;
    opts.meta = NodeMeta {
        ephemeral_ports: true,
        listen_address: Some("127.0.0.1".into()),
        ..NodeMeta::default()
    };
    let envoy = AgentEnvoy::start(&binary, creds, opts)
        .await
        .expect("Envoy starts");
    let port = envoy
        .listener_port("outbound")
        .await
        .expect("outbound listener (ADS over mTLS works)");
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    jalur_testkit::assert_serves(
        "Envoy routes to the backend",
        proxy,
        HOST,
        "v1",
        Duration::from_secs(20),
    )
    .await;

    let root_serial = serial_hex(ca.bundle().roots[0].as_ref());
    let first = leaf_serial(&renew.borrow().cert);
    let expires = renew.borrow().cert.not_after;
    wait_for_certs(
        &envoy,
        "/certs shows the agent's certificate",
        Duration::from_secs(10),
        |certs| assert_shows(certs, &first, expires, &root_serial),
    )
    .await;
    assert_eq!(
        front.serials_seen(&workload()).first(),
        Some(&first),
        "Envoy's ADS handshake presented it"
    );

    let load = Load::start(proxy);
    let mut serials = vec![first];
    for _ in 0..2 {
        serials.push(rotate(&ca, &renew, &envoy, &front, &root_serial).await);
    }
    let (ok, failed) = load.finish().await;
    assert!(
        failed.is_empty(),
        "{} failed requests during rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        ok >= 10,
        "only {ok} requests went through during the rotations"
    );
    let distinct: std::collections::BTreeSet<_> = serials.iter().collect();
    assert_eq!(distinct.len(), 3, "three certificates: {serials:?}");
    drop(envoy);
    plane.stop().await;
}

/// The `xds-grpc` cluster accepts only the control plane's id: a server with a good chain from
/// the same CA but another SPIFFE id is refused by Envoy's SAN check, and no config arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_refuses_a_control_plane_with_another_identity() {
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let backend = EchoServer::start("v1").await;
    let (plane, _dir) = plane(backend.addr()).await;
    let ca = TestCa::new();
    let impostor = SpiffeId::new("cluster.local", "jalur-system", "not-the-control-plane");
    let (_keep, impostor_creds) = ca.watch(&impostor, HOUR);
    let front = TlsFront::start(impostor_creds, plane.xds_addr).await;
    let (_renew, creds) = ca.watch(&workload(), HOUR);
    let cp = ControlPlane::from_addr(
        front.addr,
        control_plane_id("cluster.local", "jalur-system"),
    );
    let envoy = AgentEnvoy::start(&binary, creds, AgentEnvoyOpts::new(cp, NODE))
        .await
        .expect("Envoy starts");
    assert_eventually(
        "Envoy refuses the server's SAN",
        Duration::from_secs(10),
        || async {
            let stats = envoy
                .admin_get("/stats?filter=^cluster\\.xds-grpc\\.ssl\\.fail_verify_san$")
                .await?;
            let n: u64 = stats
                .split(':')
                .nth(1)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no counter in {stats:?}"))?;
            if n >= 1 {
                Ok(())
            } else {
                Err(format!("fail_verify_san = {n}"))
            }
        },
    )
    .await;
    let listeners = envoy
        .admin_get("/listeners?format=json")
        .await
        .expect("admin");
    assert!(
        !listeners.contains("outbound"),
        "config arrived from a server with the wrong identity: {listeners}"
    );
    drop(envoy);
    plane.stop().await;
}
