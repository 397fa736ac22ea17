//! The mesh mTLS set-up the TLS tests share: a control plane running its CA (15012 served),
//! credentials it signs (`issue`), the config a test mesh needs (PeerAuthentication, a TCP
//! service), jalur sidecars and stock Envoys beside `jalur agent` on that plane. What the
//! tests assert with is in `probe.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jalur_agent::bootstrap::ControlPlane as AgentTarget;
use jalur_control::ca::{Authority, CaOptions};
use jalur_identity::{Credentials, CredentialsWatch, SpiffeId, WorkloadCert, WorkloadKey};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::agent::{AgentEnvoy, AgentEnvoyOpts};
use jalur_testkit::{assert_eventually, Envoy};
use jalur_wire::{NamedPort, NodeMeta};

use super::{free_port, sidecar_opts, Plane};

/// Every workload of these tests lives in this namespace of this trust domain.
pub const NS: &str = "shop";
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const STOREFRONT: &str = "spiffe://cluster.local/ns/shop/sa/storefront";
pub const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

pub const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
/// The outbound listener a caller's sidecar opens for the TCP service of [`tcp_service`].
pub const DB_LISTENER: &str = "tcp|9000|db.shop.svc.cluster.local";

/// `spiffe://cluster.local/ns/shop/sa/SA`.
pub fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, NS, sa)
}

/// A namespace-wide PeerAuthentication for `shop` in `mode`, as a config file.
pub fn peer_authentication(mode: &str) -> (&'static str, String) {
    (
        "pa.yaml",
        format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: {NS}\nspec:\n  mtls:\n    mode: {mode}\n"
        ),
    )
}

/// The mesh-internal TCP service `db` (port 9000, `tcp-db`), reached through a local port of
/// the caller's sidecar (0 = OS-chosen, read back as [`DB_LISTENER`]); its endpoints are the
/// sidecars announcing `db`.
pub fn tcp_service() -> (&'static str, String) {
    (
        "db.yaml",
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\n  namespace: {NS}\n  annotations: {{jalur.dev/local-ports: \"9000=0\"}}\nspec:\n  hosts: [db.{NS}.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9000, name: tcp-db, protocol: TCP}}\n"
        ),
    )
}

/// A control plane with its CA: plaintext ADS on `plane.xds` (jalur sidecars handed their
/// credentials by the test), ADS + CA over TLS on `xds_tls` (Envoys beside `jalur agent`).
pub struct MeshPlane {
    pub plane: Plane,
    pub ca: Arc<Authority>,
    pub xds_tls: SocketAddr,
}

impl MeshPlane {
    pub async fn start(files: &[(&str, String)]) -> MeshPlane {
        let mut options = Plane::options();
        options.ca = Some(CaOptions::default());
        options.xds_tls_addr = ([127, 0, 0, 1], 0).into();
        // Remote JWKS (tests/authz_jwt.rs) fetched again within a test's patience.
        options.jwks_refresh = std::time::Duration::from_millis(300);
        let plane = Plane::start_with(files, options).await;
        let ca = plane
            .control()
            .state
            .ca
            .as_ref()
            .expect("the plane runs a CA")
            .authority
            .clone();
        let xds_tls = plane.control().xds_tls_addr.expect("15012 served");
        MeshPlane { plane, ca, xds_tls }
    }

    /// What the plane serves, for failure messages: its generation, the mesh's services and
    /// each connected client's sync state.
    pub fn diagnose(&self) -> String {
        let state = &self.plane.control().state;
        let generation = state.generation.load(std::sync::atomic::Ordering::SeqCst);
        let mesh = state.mesh.load();
        let services: Vec<&String> = mesh.services.keys().collect();
        let clients: Vec<String> = state
            .ads
            .sync()
            .clients()
            .iter()
            .map(|c| {
                format!(
                    "{} ({}): generation {}, in sync {}, ready {}",
                    c.node_id, c.kind, c.generation, c.in_sync, c.ready
                )
            })
            .collect();
        format!(
            "--- plane: generation {generation}, services {services:?}\n{}",
            clients.join("\n")
        )
    }

    /// Credentials for `shop/SA` signed by this plane's CA.
    pub fn issue(&self, sa: &str) -> CredentialsWatch {
        issue(&self.ca, &id(sa))
    }

    /// A jalur sidecar of `service` (its identity `shop/service` from this CA) in front of the
    /// app on `app_port`, whose first port is named `port_name` (the prefix says the protocol:
    /// `http`, `grpc`, `tcp-…`).
    pub async fn server(&self, service: &str, port_name: &str, app_port: u16) -> Proxy {
        Proxy::start(ProxyOptions {
            app_port: Some(app_port),
            ports: vec![format!("{port_name}:{app_port}").parse().expect("port")],
            credentials: Some(self.issue(service)),
            ..sidecar_opts(self.plane.xds, service, NS)
        })
        .await
        .expect("server sidecar")
    }

    /// A jalur sidecar calling from `service` (with mesh `creds`, or a legacy caller without),
    /// once its outbound listener answers; with its outbound address.
    pub async fn caller(
        &self,
        service: &str,
        creds: Option<CredentialsWatch>,
    ) -> (Proxy, SocketAddr) {
        super::jalur_sidecar(ProxyOptions {
            credentials: creds,
            ..sidecar_opts(self.plane.xds, service, NS)
        })
        .await
    }

    /// A stock Envoy sidecar of `service` beside `jalur agent` (its identity `shop/service`
    /// from this CA, ADS over mTLS on 15012); with `port = Some((name, app_port))` it announces
    /// that app port. Inbound and outbound on free loopback ports: the endpoint it registers is
    /// its inbound port, as a real sidecar's.
    pub async fn envoy(
        &self,
        binary: &Path,
        service: &str,
        port: Option<(&str, u16)>,
    ) -> EnvoySidecar {
        let (inbound, outbound) = (free_port(), free_port());
        let node = format!("sidecar~127.0.0.1~{service}.{NS}~{NS}.svc.cluster.local");
        let target = AgentTarget::from_addr(self.xds_tls, self.ca.control_id());
        let mut opts = AgentEnvoyOpts::new(target, &node);
        opts.meta = NodeMeta {
            service: Some(service.into()),
            listen_address: Some("127.0.0.1".into()),
            inbound_port: Some(u32::from(inbound)),
            outbound_port: Some(u32::from(outbound)),
            app_port: port.map(|(_, p)| u32::from(p)),
            ports: port
                .map(|(name, p)| NamedPort {
                    name: name.into(),
                    number: u32::from(p),
                })
                .into_iter()
                .collect(),
            ..NodeMeta::default()
        };
        let envoy = AgentEnvoy::start(binary, self.issue(service), opts)
            .await
            .expect("Envoy starts beside the agent");
        EnvoySidecar {
            envoy,
            inbound: ([127, 0, 0, 1], inbound).into(),
            outbound: ([127, 0, 0, 1], outbound).into(),
        }
    }
}

/// A stock Envoy beside its agent, and where its sidecar listeners are.
pub struct EnvoySidecar {
    pub envoy: AgentEnvoy,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
}

impl EnvoySidecar {
    /// The address of Envoy's listener `name` once it is bound (port 0 resolved).
    pub async fn listener(&self, name: &str) -> SocketAddr {
        envoy_listener(&self.envoy, name).await
    }

    /// The sum of Envoy's counters named `PREFIX…SUFFIX` (see [`envoy_counter`]).
    pub async fn counter(&self, prefix: &str, suffix: &str) -> u64 {
        envoy_counter(&self.envoy, prefix, suffix).await
    }

    /// Waits until that sum reaches `at_least` (Envoy counts a handshake when it has processed
    /// the client's last flight, which may be after the client has moved on); the sum.
    pub async fn counter_reaches(&self, prefix: &str, suffix: &str, at_least: u64) -> u64 {
        let what = format!("Envoy's {prefix}…{suffix} reaches {at_least}");
        assert_eventually(&what, super::probe::CONVERGE, || async {
            let n = self.counter(prefix, suffix).await;
            (n >= at_least).then_some(n).ok_or(format!("{n}"))
        })
        .await
    }
}

/// The sum of `envoy`'s counters named `PREFIX…SUFFIX` in its admin `/stats` (text), e.g.
/// `listener.` … `.ssl.handshake` over every listener.
pub async fn envoy_counter(envoy: &Envoy, prefix: &str, suffix: &str) -> u64 {
    let stats = envoy.admin_get("/stats").await.expect("Envoy /stats");
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// Credentials for `id`, the key generated here and the CSR signed by `ca`.
pub fn issue(ca: &Authority, id: &SpiffeId) -> CredentialsWatch {
    let key = WorkloadKey::generate().expect("key");
    let chain = ca
        .sign_csr(
            &key.csr_pem(id).expect("csr"),
            id,
            Some(Duration::from_secs(3600)),
        )
        .expect("signed");
    let cert = WorkloadCert::new(&key, &chain.concat()).expect("cert");
    let creds = Credentials::new(cert, ca.trust_bundle()).expect("creds");
    tokio::sync::watch::channel(Arc::new(creds)).1
}

/// The address of `envoy`'s listener `name` once it is bound (port 0 resolved).
pub async fn envoy_listener(envoy: &Envoy, name: &str) -> SocketAddr {
    let port = envoy
        .listener_port(name)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    ([127, 0, 0, 1], port).into()
}

/// A jalur sidecar of `shop/service` on `xds` that binds every listener its config names on an
/// OS-chosen port (for hand-built xDS, whose listeners carry fixed ports), with `creds`.
pub async fn ephemeral_sidecar(
    xds: SocketAddr,
    service: &str,
    creds: Option<CredentialsWatch>,
) -> Proxy {
    let mut opts = ProxyOptions::loopback(xds, service, NS);
    opts.ephemeral_ports = true;
    opts.credentials = creds;
    Proxy::start(opts).await.expect("jalur proxy starts")
}
