//! Certificates and the root rotate under load with no failed request, the way the mesh runs it
//! in production: an in-process control plane with its CA (20 s workload certificates, xDS and
//! the CA over TLS on its 15012, a STRICT PeerAuthentication), a jalur pair (storefront →
//! payments) whose proxies took their first certificate with a bootstrap token and renew it
//! with `CertRotator`, and a stock Envoy pair (cart → ledger) each beside `jalur agent`, whose
//! rotator renews and pushes SDS `default`/`ROOTCA`. Every rotator reads its trust bundle from
//! its own file, as `--root-cert`.
//!
//! Through each pair run a steady flow (a request every 10 ms, upstream connections kept alive)
//! and a sparse one (every 700 ms to a subset whose connections idle out after 500 ms, so each
//! request handshakes afresh). While they run:
//! 1. every workload is renewed at least twice (the leaf serials it presents, seen by a mesh
//!    client's handshake, Envoy's `/certs`, or the watch jalur's TLS configs read);
//! 2. the root moves as an operator moves it: the new root joins every bundle file; the control
//!    plane restarts on the same ports signing from an intermediate under the new root
//!    (`--ca-cert/--ca-key/--ca-chain`), `--extra-roots` holding the old root so renewals
//!    authenticated by old-root certificates still pass; once every workload presents a
//!    new-root leaf, the old root leaves the bundle files; one more renewal follows.
//!
//! Then a workload still holding an old-root certificate is refused by both servers (and the
//! current one served). Each step is taken when the last one is seen everywhere, never after a
//! fixed wait; a step not reached within 150 s fails the test naming it.
//!
//! About 60 s, as the issue asks: a 20 s certificate is renewed every 10 s, so two renewals
//! take 20-30 s, the new root reaches every workload only with its next renewal (up to 10 s
//! more), and one renewal under the new-root-only bundle another 10 s (the steps take about
//! 40 s); the load runs for at least 60 s.

mod common;
#[path = "common/rotation.rs"]
mod rotation;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::free_port;
use common::mesh::{id, NS};
use jalur_agent::bootstrap::ControlPlane as AgentTarget;
use jalur_control::ca::PluginCa;
use jalur_identity::rotate::CertRotator;
use jalur_identity::{Credentials, CredentialsWatch, SpiffeId};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::agent::{AgentEnvoy, AgentEnvoyOpts};
use jalur_testkit::ca::serial_hex;
use jalur_testkit::{assert_eventually, http_get, EchoServer};
use jalur_wire::{NamedPort, NodeMeta};
use rotation::{der_of, host, new_root, old_root_credentials, presented_leaf, tls_get, Mesh};
use rustls::pki_types::CertificateDer;

const LOAD_FOR: Duration = Duration::from_secs(60);
/// The whole rotation must be over by then (it takes about 45 s); past it the test stops and
/// says which step it was waiting for.
const GIVE_UP: Duration = Duration::from_secs(150);
const DEADLINE: Duration = Duration::from_secs(30);

/// Where a workload's presented leaf is seen, and where its trusted roots are.
enum View {
    /// A mesh client's handshake with its inbound port (leaf); its credentials watch (roots):
    /// a jalur server.
    Inbound(SocketAddr),
    /// The watch its TLS configs read at every handshake: a jalur client.
    Watch,
    /// Envoy's admin `/certs` for both, or for the roots only when a handshake shows the leaf.
    Envoy {
        admin: SocketAddr,
        inbound: Option<SocketAddr>,
    },
}

/// One workload under watch.
struct Workload {
    name: &'static str,
    id: SpiffeId,
    creds: CredentialsWatch,
    view: View,
    /// Every certificate its rotator published, by leaf serial.
    issued: BTreeMap<String, Arc<Credentials>>,
    /// Leaf serials it was seen presenting, in order.
    presented: Vec<String>,
    /// What was seen last: the leaves presented and the roots trusted (serials).
    leaves: BTreeSet<String>,
    roots: BTreeSet<String>,
}

impl Workload {
    fn new(name: &'static str, creds: CredentialsWatch, view: View) -> Workload {
        let id = creds.borrow().cert.id.clone();
        Workload {
            name,
            id,
            creds,
            view,
            issued: BTreeMap::new(),
            presented: Vec::new(),
            leaves: BTreeSet::new(),
            roots: BTreeSet::new(),
        }
    }

    fn record_issued(&mut self) {
        let current = self.creds.borrow().clone();
        let serial = serial_hex(current.cert.chain[0].as_ref());
        self.issued.entry(serial).or_insert(current);
    }

    /// Looks again; `probe` is the client credentials of the handshake. A failed handshake of
    /// a mesh client is an error of the mesh, a failed admin read only a missed look. True
    /// when a handshake with its inbound port was made.
    async fn observe(&mut self, probe: &CredentialsWatch) -> Result<bool, String> {
        self.record_issued();
        let (leaves, roots) = match self.view {
            View::Inbound(addr) => (
                BTreeSet::from([presented_leaf(addr, probe, &self.id).await?]),
                watch_roots(&self.creds),
            ),
            View::Watch => (
                BTreeSet::from([serial_hex(self.creds.borrow().cert.chain[0].as_ref())]),
                watch_roots(&self.creds),
            ),
            View::Envoy { admin, inbound } => {
                let Ok(certs) = envoy_certs_at(admin).await else {
                    return Ok(false);
                };
                let mut leaves: BTreeSet<String> = certs
                    .chains
                    .iter()
                    .filter(|c| c.uris == [self.id.to_string()])
                    .map(|c| c.serial.clone())
                    .collect();
                if let Some(addr) = inbound {
                    leaves = BTreeSet::from([presented_leaf(addr, probe, &self.id).await?]);
                }
                (leaves, certs.cas.iter().map(|c| c.serial.clone()).collect())
            }
        };
        self.record_issued();
        for leaf in &leaves {
            if !self.issued.contains_key(leaf) {
                return Err(format!(
                    "{} presents {leaf}, a certificate its rotator never published",
                    self.name
                ));
            }
            if !self.presented.contains(leaf) {
                self.presented.push(leaf.clone());
            }
        }
        (self.leaves, self.roots) = (leaves, roots);
        Ok(matches!(
            self.view,
            View::Inbound(_)
                | View::Envoy {
                    inbound: Some(_),
                    ..
                }
        ))
    }

    /// Every leaf it presents now chains to `root`.
    fn presents_under(&self, root: &CertificateDer<'_>) -> bool {
        !self.leaves.is_empty()
            && self.leaves.iter().all(|leaf| {
                self.issued
                    .get(leaf)
                    .is_some_and(|c| c.cert.chain.iter().any(|der| der == root))
            })
    }

    fn trusts_exactly(&self, roots: &[&str]) -> bool {
        self.roots.len() == roots.len() && roots.iter().all(|r| self.roots.contains(*r))
    }
}

fn watch_roots(creds: &CredentialsWatch) -> BTreeSet<String> {
    let bundle = creds.borrow().bundle.clone();
    bundle
        .roots
        .iter()
        .map(|r| serial_hex(r.as_ref()))
        .collect()
}

async fn envoy_certs_at(admin: SocketAddr) -> Result<jalur_testkit::agent::ShownCerts, String> {
    let (_, _, body) = http_get(admin, "admin", "/certs", &[]).await?;
    jalur_testkit::agent::parse_certs(&body)
}

/// Requests of one flow: how many answered 200, and the first few that did not.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// The four flows: steady and sparse through each pair.
struct Load {
    stop: Arc<AtomicBool>,
    flows: Vec<(&'static str, Arc<Tally>, tokio::task::JoinHandle<()>)>,
}

impl Load {
    fn start(jalur_out: SocketAddr, envoy_out: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flows = [
            ("jalur steady", jalur_out, "payments", false),
            ("jalur sparse", jalur_out, "payments", true),
            ("Envoy steady", envoy_out, "ledger", false),
            ("Envoy sparse", envoy_out, "ledger", true),
        ]
        .into_iter()
        .map(|(name, addr, service, sparse)| {
            let tally = Arc::new(Tally::default());
            let task = tokio::spawn(flow(
                addr,
                host(service),
                sparse,
                tally.clone(),
                stop.clone(),
            ));
            (name, tally, task)
        })
        .collect();
        Load { stop, flows }
    }

    /// Stops every flow: (name, ok, failed, the first errors) each.
    async fn finish(self) -> Vec<(&'static str, u64, u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut done = Vec::new();
        for (name, tally, task) in self.flows {
            task.await.expect("flow");
            let errors = tally.errors.lock().expect("errors").clone();
            let (ok, failed) = (
                tally.ok.load(Ordering::Relaxed),
                tally.failed.load(Ordering::Relaxed),
            );
            done.push((name, ok, failed, errors));
        }
        done
    }
}

/// Requests to `addr` for `host` until `stop`, a fresh downstream connection each: every 10 ms,
/// or every 700 ms marked for the subset whose upstream connections idle out first.
async fn flow(addr: SocketAddr, host: String, sparse: bool, t: Arc<Tally>, stop: Arc<AtomicBool>) {
    let (every, headers) = if sparse {
        (Duration::from_millis(700), vec![("x-flow", "sparse")])
    } else {
        (Duration::from_millis(10), vec![])
    };
    while !stop.load(Ordering::Relaxed) {
        match http_get(addr, &host, "/", &headers).await {
            Ok((200, _, _)) => t.ok.fetch_add(1, Ordering::Relaxed),
            other => {
                let mut errors = t.errors.lock().expect("errors");
                if errors.len() < 10 {
                    errors.push(format!("{other:?}"));
                }
                t.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(every).await;
    }
}

/// A jalur sidecar reaching the control plane over TLS with its rotator's credentials; a
/// server when `app` is given (label `version: v1`, the `sparse` subset's).
async fn jalur(mesh: &Mesh, service: &str, app: Option<u16>) -> (Proxy, CertRotator) {
    let rotator = CertRotator::start(mesh.rotator(service))
        .await
        .expect("first certificate by token");
    let opts = ProxyOptions {
        xds: mesh.address(),
        credentials: Some(rotator.credentials()),
        app_port: app,
        ports: app
            .map(|p| format!("http:{p}").parse().expect("port"))
            .into_iter()
            .collect(),
        labels: [("version".to_string(), "v1".to_string())].into(),
        ..ProxyOptions::loopback(mesh.tls, service, NS)
    };
    (Proxy::start(opts).await.expect("jalur sidecar"), rotator)
}

/// Envoy beside `jalur agent` as the sidecar of `service`, inbound and outbound on loopback
/// ports of its own; a server when `app` is given.
async fn envoy(
    binary: &Path,
    mesh: &Mesh,
    service: &str,
    app: Option<u16>,
) -> (AgentEnvoy, SocketAddr, SocketAddr) {
    let (inbound, outbound) = (free_port(), free_port());
    let target = AgentTarget::from_addr(mesh.tls, mesh.ca().authority.control_id());
    let node = format!("sidecar~127.0.0.1~{service}-1.{NS}~{NS}.svc.cluster.local");
    let mut opts = AgentEnvoyOpts::new(target, &node);
    opts.meta = NodeMeta {
        service: Some(service.into()),
        listen_address: Some("127.0.0.1".into()),
        inbound_port: Some(u32::from(inbound)),
        outbound_port: Some(u32::from(outbound)),
        app_port: app.map(u32::from),
        ports: app
            .map(|p| NamedPort {
                name: "http".into(),
                number: u32::from(p),
            })
            .into_iter()
            .collect(),
        labels: [("version".to_string(), "v1".to_string())].into(),
        ..NodeMeta::default()
    };
    let envoy = AgentEnvoy::start_agent(binary, mesh.rotator(service), opts)
        .await
        .expect("Envoy beside jalur agent");
    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
    (envoy, addr(inbound), addr(outbound))
}

/// Waits until `addr` serves `service` for both flows.
async fn serves(addr: SocketAddr, service: &str, tail: impl Fn() -> String) {
    for headers in [vec![], vec![("x-flow", "sparse")]] {
        assert_eventually(&format!("{service} via {addr}"), DEADLINE, || async {
            match http_get(addr, &host(service), "/", &headers).await {
                Ok((200, _, _)) => Ok(()),
                other => Err(format!("{other:?}\n{}", tail())),
            }
        })
        .await;
    }
}

/// The operator's steps, each taken once the previous one reached every workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for two renewals of everyone.
    Renewals,
    /// The new root was added to every bundle file; waiting for everyone to trust it.
    NewRootOut,
    /// The control plane signs from the new root; waiting for every workload's next leaf.
    Reissue,
    /// The old root left the bundle files; waiting for it to leave every verifier.
    OldRootOut,
    /// One more renewal of everyone, with the new root alone.
    Settle,
    Done,
}

/// The operator moving the mesh to a new root.
struct Operator {
    step: Step,
    started: Instant,
    /// The new root's plug-in CA files, and the old root for `--extra-roots`.
    dir: tempfile::TempDir,
    plugin: PluginCa,
    old_pem: String,
    new_pem: String,
    new_root: CertificateDer<'static>,
    old_serial: String,
    new_serial: String,
    /// How many leaves each workload had presented once the old root was gone.
    settled_from: Vec<usize>,
    log: Vec<String>,
}

impl Operator {
    fn new(mesh: &Mesh) -> Operator {
        let dir = tempfile::TempDir::with_prefix("jalur-new-root-").expect("temp dir");
        let (plugin, new_pem) = new_root(dir.path());
        let old_pem = mesh.ca().authority.bundle_pem().to_string();
        let new_root = der_of(&new_pem);
        Operator {
            step: Step::Renewals,
            started: Instant::now(),
            old_serial: serial_hex(der_of(&old_pem).as_ref()),
            new_serial: serial_hex(new_root.as_ref()),
            dir,
            plugin,
            old_pem,
            new_pem,
            new_root,
            settled_from: Vec::new(),
            log: Vec::new(),
        }
    }

    /// Takes the next step if the current one is done.
    async fn advance(&mut self, mesh: &mut Mesh, workloads: &[Workload]) {
        let all = |f: &dyn Fn(&Workload) -> bool| workloads.iter().all(f);
        let (old, new) = (self.old_serial.as_str(), self.new_serial.as_str());
        let next = match self.step {
            Step::Renewals if all(&|w| w.presented.len() >= 3) => {
                // The new root first: Envoy's `/certs` lists a context's roots in file order.
                mesh.distribute(&format!("{}{}", self.new_pem, self.old_pem));
                Step::NewRootOut
            }
            Step::NewRootOut if all(&|w| w.trusts_exactly(&[old, new])) => {
                let old_roots = self.dir.path().join("old-root.pem");
                std::fs::write(&old_roots, &self.old_pem).expect("extra roots");
                mesh.restart_on(self.plugin.clone(), old_roots).await;
                Step::Reissue
            }
            Step::Reissue if all(&|w| w.presents_under(&self.new_root)) => {
                mesh.distribute(&self.new_pem);
                Step::OldRootOut
            }
            Step::OldRootOut if all(&|w| w.trusts_exactly(&[new])) => {
                self.settled_from = workloads.iter().map(|w| w.presented.len()).collect();
                Step::Settle
            }
            Step::Settle
                if workloads
                    .iter()
                    .zip(&self.settled_from)
                    .all(|(w, n)| w.presented.len() > *n) =>
            {
                Step::Done
            }
            _ => return,
        };
        let at = self.started.elapsed().as_secs_f64();
        self.log.push(format!("{at:.1}s {:?} done", self.step));
        self.step = next;
    }

    /// Where it stands, for a failure message.
    fn stuck(&self, workloads: &[Workload]) -> String {
        let state: Vec<String> = workloads
            .iter()
            .map(|w| {
                format!(
                    "{}: presented {:?}, now {:?}, trusts {:?}",
                    w.name, w.presented, w.leaves, w.roots
                )
            })
            .collect();
        format!(
            "stuck at {:?} after {GIVE_UP:?} ({:?}); old root {}, new {}\n{state:#?}",
            self.step, self.log, self.old_serial, self.new_serial
        )
    }
}

/// The old root is gone from every verifier: a workload still holding an old-root
/// certificate is refused by `servers` (inbound address, id), while `current` is served.
async fn old_root_is_refused(
    mesh: &Mesh,
    current: &CredentialsWatch,
    new_pem: &str,
    servers: &[(SocketAddr, SpiffeId)],
) {
    let state = mesh.plane.dir.join(".jalur/ca");
    let stale = old_root_credentials(&state, "storefront", new_pem);
    for (addr, server) in servers {
        let served = tls_get(*addr, current, server).await;
        assert!(
            served.as_deref().is_ok_and(|l| l.contains(" 200")),
            "{server} serves the current certificate: {served:?}"
        );
        let refused = tls_get(*addr, &stale, server).await;
        assert!(
            refused.is_err(),
            "{server} served an old-root certificate: {refused:?}"
        );
    }
}

/// A counter from Envoy's `/stats?filter=` (0 when absent).
fn counter(stats: &str) -> u64 {
    stats
        .split(':')
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_root_rotate_under_load_with_no_failed_request() {
    let Some(binary) = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary()) else {
        return;
    };
    let mut mesh = Mesh::start().await;
    let (payments_app, ledger_app) = (
        EchoServer::start("payments").await,
        EchoServer::start("ledger").await,
    );
    let (payments, payments_rotator) =
        jalur(&mesh, "payments", Some(payments_app.addr().port())).await;
    let (storefront, storefront_rotator) = jalur(&mesh, "storefront", None).await;
    let (ledger, ledger_in, _) =
        envoy(&binary, &mesh, "ledger", Some(ledger_app.addr().port())).await;
    let (cart, _, cart_out) = envoy(&binary, &mesh, "cart", None).await;
    let storefront_out = common::bound_listener(&storefront, "outbound").await;
    let payments_in = payments.inbound_addr.expect("inbound");
    serves(storefront_out, "payments", String::new).await;
    serves(cart_out, "ledger", || {
        format!("{}\n{}", cart.log_tail(), ledger.log_tail())
    })
    .await;

    let load = Load::start(storefront_out, cart_out);
    let probe = storefront_rotator.credentials();
    let envoy_view = |e: &AgentEnvoy, inbound| View::Envoy {
        admin: e.admin_addr(),
        inbound,
    };
    let mut workloads = [
        Workload::new(
            "jalur payments",
            payments_rotator.credentials(),
            View::Inbound(payments_in),
        ),
        Workload::new("jalur storefront", probe.clone(), View::Watch),
        Workload::new(
            "Envoy ledger",
            ledger.credentials(),
            envoy_view(&ledger, Some(ledger_in)),
        ),
        Workload::new("Envoy cart", cart.credentials(), envoy_view(&cart, None)),
    ];
    let mut operator = Operator::new(&mesh);
    let (mut probe_errors, mut ledger_probes) = (Vec::new(), 0);
    while operator.step != Step::Done || operator.started.elapsed() < LOAD_FOR {
        for w in workloads.iter_mut() {
            match w.observe(&probe).await {
                Ok(true) if w.name == "Envoy ledger" => ledger_probes += 1,
                Ok(_) => {}
                Err(e) => probe_errors.push(format!(
                    "{:.1}s {e}",
                    operator.started.elapsed().as_secs_f64()
                )),
            }
        }
        operator.advance(&mut mesh, &workloads).await;
        assert!(
            operator.started.elapsed() < GIVE_UP,
            "{}",
            operator.stuck(&workloads)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let flows = load.finish().await;
    let handshakes = ledger
        .admin_get("/stats?filter=^listener\\..*\\.ssl\\.handshake$")
        .await
        .unwrap_or_default();
    let renewals: Vec<_> = workloads
        .iter()
        .map(|w| (w.name, w.presented.len() - 1))
        .collect();
    eprintln!(
        "rotation under load in {:.1}s: {:?}; steps {:?}; renewals seen {renewals:?}; Envoy ledger: {} handshakes, {ledger_probes} of them probes",
        operator.started.elapsed().as_secs_f64(),
        flows.iter().map(|(n, ok, failed, _)| format!("{n}: {ok} ok, {failed} failed")).collect::<Vec<_>>(),
        operator.log,
        counter(&handshakes),
    );
    for (name, ok, failed, errors) in &flows {
        assert!(
            *failed == 0 && *ok >= 40,
            "{name}: {ok} ok, {failed} failed: {errors:#?}"
        );
    }
    // The sparse flow handshakes afresh: Envoy's inbound completed one per sparse request
    // besides the probes (half of them, for an idle timer firing late on a loaded machine).
    let sparse = flows
        .iter()
        .find(|f| f.0 == "Envoy sparse")
        .map_or(0, |f| f.1);
    assert!(
        counter(&handshakes) >= ledger_probes + sparse / 2,
        "{handshakes}: {ledger_probes} probes and {sparse} sparse requests"
    );
    assert!(
        probe_errors.is_empty(),
        "a mesh client's handshake failed: {probe_errors:#?}"
    );
    let servers = [(payments_in, id("payments")), (ledger_in, id("ledger"))];
    old_root_is_refused(&mesh, &probe, &operator.new_pem, &servers).await;
    drop((storefront, payments, cart, ledger));
}
