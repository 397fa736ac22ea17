//! The mesh side of `tls_rotation.rs`: the control plane with its CA, the operator's files
//! (each workload's trust bundle, the plug-in CA the root moves to), and mTLS clients that look
//! at what a workload presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jalur_control::ca::{CaOptions, MeshCa, PluginCa};
use jalur_control::{ControlPlane, Options};
use jalur_identity::rotate::RotatorOptions;
use jalur_identity::verify::Accept;
use jalur_identity::{Credentials, CredentialsWatch, SpiffeId};
use jalur_testkit::ca::serial_hex;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::common::mesh::{id, NS};
use crate::common::probe::{mesh_tls, server_leaf};
use crate::common::Plane;

pub const TTL: Duration = Duration::from_secs(20);
/// How often the rotators read their bundle file (`jalur agent`'s default is 1 s).
const BUNDLE_POLL: Duration = Duration::from_millis(250);

pub fn host(service: &str) -> String {
    format!("{service}.{NS}.svc.cluster.local")
}

/// STRICT for the namespace; for each server a subset `sparse` whose upstream connections
/// idle out after 500 ms, taken by requests with `x-flow: sparse`.
fn mesh_config() -> Vec<(&'static str, String)> {
    let strict = format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {NS}\nspec:\n  mtls:\n    mode: STRICT\n");
    let routes = |service: &str| {
        let h = host(service);
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: {service}\n  namespace: {NS}\nspec:\n  host: {h}\n  subsets:\n  - name: sparse\n    labels:\n      version: v1\n    trafficPolicy:\n      connectionPool:\n        http:\n          idleTimeout: 500ms\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {service}\n  namespace: {NS}\nspec:\n  hosts:\n  - {h}\n  http:\n  - match:\n    - headers:\n        x-flow:\n          exact: sparse\n    route:\n    - destination:\n        host: {h}\n        subset: sparse\n  - route:\n    - destination:\n        host: {h}\n"
        )
    };
    vec![
        ("pa.yaml", strict),
        ("payments.yaml", routes("payments")),
        ("ledger.yaml", routes("ledger")),
    ]
}

/// The control plane with its CA, and the operator's side: each workload's bundle file and the
/// plug-in CA the root moves to.
pub struct Mesh {
    pub plane: Plane,
    pub tls: SocketAddr,
    files: tempfile::TempDir,
}

impl Mesh {
    pub async fn start() -> Mesh {
        let opts = Options {
            ca: Some(CaOptions {
                workload_ttl: TTL,
                ..CaOptions::default()
            }),
            xds_tls_addr: ([127, 0, 0, 1], 0).into(),
            // After the restart, answer nobody until every proxy is back (a caller served
            // before its server re-registered would be told there are no endpoints).
            registry_grace: Duration::from_secs(10),
            ..Plane::options()
        };
        let plane = Plane::start_with(&mesh_config(), opts).await;
        let tls = plane.control().xds_tls_addr.expect("15012 served");
        let files = tempfile::TempDir::with_prefix("jalur-rotation-").expect("temp dir");
        std::fs::create_dir(files.path().join("bundles")).expect("bundles dir");
        Mesh { plane, tls, files }
    }

    pub fn ca(&self) -> &MeshCa {
        self.plane
            .control()
            .state
            .ca
            .as_deref()
            .expect("the plane runs a CA")
    }

    pub fn address(&self) -> String {
        format!("https://{}", self.tls)
    }

    /// What a workload's rotator needs: a one-shot token, its own copy of the trust bundle.
    pub fn rotator(&self, sa: &str) -> RotatorOptions {
        let bundle = self.files.path().join("bundles").join(format!("{sa}.pem"));
        std::fs::write(&bundle, self.ca().authority.bundle_pem()).expect("bundle file");
        let mut opts = RotatorOptions::new(self.address(), id(sa), bundle);
        let token = self
            .ca()
            .tokens
            .create(NS, sa, Duration::from_secs(600), false);
        opts.token = Some(token.expect("token").token);
        opts.cert_ttl = TTL;
        opts.bundle_poll = BUNDLE_POLL;
        // A renewal due while the control plane restarts is retried within a second.
        opts.retry_base = Duration::from_millis(200);
        opts.retry_max = Duration::from_secs(1);
        opts
    }

    /// Writes `pem` to every workload's bundle file (atomically, as a config tool would).
    pub fn distribute(&self, pem: &str) {
        let dir = self.files.path().join("bundles");
        for entry in std::fs::read_dir(&dir).expect("bundles") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "pem") {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, pem).expect("write bundle");
                std::fs::rename(&tmp, &path).expect("rename bundle");
            }
        }
    }

    /// Stops the control plane and starts it on the same ports and state, signing with
    /// `plugin` and trusting `extra_roots` besides its root.
    pub async fn restart_on(&mut self, plugin: PluginCa, extra_roots: PathBuf) {
        self.plane.stop().await;
        let template = &self.plane.template;
        let opts = Options {
            config: vec![self.plane.dir.clone()],
            xds_addr: self.plane.xds,
            xds_tls_addr: self.tls,
            ca: template.ca.clone().map(|ca| CaOptions {
                plugin: Some(plugin),
                extra_roots: Some(extra_roots),
                ..ca
            }),
            ..template.clone()
        };
        let restarted = ControlPlane::start(opts)
            .await
            .expect("restart on the new root");
        self.plane.plane = Some(restarted);
    }
}

/// The new root and an intermediate under it, as Istio's `cacerts` (key 0600) in `dir`.
pub fn new_root(dir: &Path) -> (PluginCa, String) {
    use rcgen::KeyUsagePurpose::{CrlSign, KeyCertSign};
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_params = |name: &str, constraint| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(constraint);
        p.key_usages = vec![KeyCertSign, CrlSign];
        p.use_authority_key_identifier_extension = true;
        p
    };
    let root_key = KeyPair::generate().expect("root key");
    let root_params = ca_params("new mesh root", BasicConstraints::Unconstrained);
    let root = root_params.self_signed(&root_key).expect("root");
    let inter_key = KeyPair::generate().expect("intermediate key");
    let inter = ca_params("new mesh intermediate", BasicConstraints::Constrained(0))
        .signed_by(&inter_key, &Issuer::new(root_params, root_key))
        .expect("intermediate");
    let write = |name: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write CA file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    };
    let plugin = PluginCa {
        key: write("ca-key.pem", &inter_key.serialize_pem(), 0o600),
        cert: write("ca-cert.pem", &inter.pem(), 0o644),
        chain: write("cert-chain.pem", &(inter.pem() + &root.pem()), 0o644),
    };
    (plugin, root.pem())
}

pub fn der_of(pem: &str) -> CertificateDer<'static> {
    jalur_identity::TrustBundle::from_pem(pem)
        .expect("PEM")
        .roots[0]
        .clone()
}

/// An mTLS connection to the inbound port at `addr` as a mesh client with `creds`, the server
/// checked against that client's trust bundle and `server`'s SPIFFE id; 5 s at most.
async fn connect(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    server: &SpiffeId,
) -> Result<TlsStream<TcpStream>, String> {
    let accept = Accept::AnyOf(vec![server.clone()]);
    let sni = host(&server.service_account);
    tokio::time::timeout(
        Duration::from_secs(5),
        mesh_tls(addr, creds, accept, &sni, &[]),
    )
    .await
    .map_err(|_| format!("handshake with {server} at {addr}: no answer in 5 s"))?
    .map_err(|e| format!("handshake with {server} at {addr}: {e}"))
}

/// The serial of the leaf the server at `addr` presents to a new mesh client with `creds`.
pub async fn presented_leaf(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    server: &SpiffeId,
) -> Result<String, String> {
    let tls = connect(addr, creds, server).await?;
    Ok(serial_hex(server_leaf(&tls)?.as_ref()))
}

/// A GET over mTLS to the inbound port at `addr` with `creds`: the status line, or why there
/// was none (a server refusing the client's certificate fails the handshake or the first read).
pub async fn tls_get(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    server: &SpiffeId,
) -> Result<String, String> {
    let mut tls = connect(addr, creds, server).await?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.service_account
    );
    let exchange = async {
        tls.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| "no answer in 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply);
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(line.to_string()),
        _ => Err("closed without an answer".into()),
    }
}

/// Credentials for `sa` from the old root (its key is still in the state directory), trusting
/// `bundle_pem`: what a workload that missed the rotation would hold.
pub fn old_root_credentials(state: &Path, sa: &str, bundle_pem: &str) -> CredentialsWatch {
    let read = |f: &str| std::fs::read_to_string(state.join(f)).expect("old root file");
    let key = rcgen::KeyPair::from_pem(&read("root-key.pem")).expect("old root key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("root-cert.pem"), key).expect("old root");
    let workload_key = jalur_identity::WorkloadKey::generate().expect("key");
    let csr = workload_key.csr_pem(&id(sa)).expect("csr");
    let leaf = rcgen::CertificateSigningRequestParams::from_pem(&csr)
        .expect("csr")
        .signed_by(&issuer)
        .expect("sign");
    let chain = format!("{}{}", leaf.pem(), read("root-cert.pem"));
    let cert = jalur_identity::WorkloadCert::new(&workload_key, &chain).expect("cert");
    let bundle = jalur_identity::TrustBundle::from_pem(bundle_pem).expect("bundle");
    let creds = Credentials::new(cert, bundle).expect("credentials");
    tokio::sync::watch::channel(Arc::new(creds)).1
}
