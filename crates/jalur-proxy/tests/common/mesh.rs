//! The mesh mTLS set-up the TLS tests share: a control plane running its CA (15012 served),
//! credentials it signs (`issue`), PeerAuthentication YAML, jalur sidecars and a stock Envoy
//! beside `jalur agent` on that plane, and the probes the tests assert with: Istio's metric
//! lines, the SPIFFE id a bare rustls client sees, TCP bytes echoed back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jalur_agent::bootstrap::ControlPlane as AgentTarget;
use jalur_control::ca::{Authority, CaOptions};
use jalur_identity::verify::{client_config, peer_id, Accept};
use jalur_identity::{Credentials, CredentialsWatch, SpiffeId, WorkloadCert, WorkloadKey};
use jalur_proxy::run::{Proxy, ProxyOptions};
use jalur_testkit::agent::{AgentEnvoy, AgentEnvoyOpts};
use jalur_testkit::{assert_eventually, http_get};
use jalur_wire::{NamedPort, NodeMeta};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{sidecar_opts, Plane};

/// Every workload of these tests lives in this namespace of this trust domain.
pub const NS: &str = "shop";
pub const TRUST_DOMAIN: &str = "cluster.local";
pub const STOREFRONT: &str = "spiffe://cluster.local/ns/shop/sa/storefront";
pub const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";

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

    /// Credentials for `shop/SA` signed by this plane's CA.
    pub fn issue(&self, sa: &str) -> CredentialsWatch {
        issue(&self.ca, &id(sa))
    }

    /// A jalur sidecar of `service` in front of the app on `app_port`, whose first port is
    /// named `port_name` (its prefix says the protocol: `http`, `grpc`, `tcp-…`).
    pub async fn server(
        &self,
        service: &str,
        port_name: &str,
        app_port: u16,
        creds: Option<CredentialsWatch>,
    ) -> Proxy {
        Proxy::start(ProxyOptions {
            app_port: Some(app_port),
            ports: vec![format!("{port_name}:{app_port}").parse().expect("port")],
            credentials: creds,
            ..sidecar_opts(self.plane.xds, service, NS)
        })
        .await
        .expect("server sidecar")
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
        let port = self
            .envoy
            .listener_port(name)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.envoy.log_tail()));
        ([127, 0, 0, 1], port).into()
    }

    /// The sum of Envoy's counters named `PREFIX…SUFFIX` (admin `/stats`, text), e.g.
    /// `listener.` … `.ssl.handshake`.
    pub async fn counter(&self, prefix: &str, suffix: &str) -> u64 {
        let stats = self.envoy.admin_get("/stats").await.expect("Envoy /stats");
        stats
            .lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    }
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

/// A loopback port nothing listens on right now (for Envoy's bootstrap, which takes a port
/// number before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The proxy's Prometheus text.
pub async fn prometheus(proxy: &Proxy) -> String {
    http_get(proxy.stats_addr, "stats", "/stats/prometheus", &[])
        .await
        .expect("stats")
        .2
}

/// The lines of `metric` (e.g. `istio_tcp_connections_opened_total`) carrying every `labels`
/// pair.
pub fn lines<'a>(stats: &'a str, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    stats
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect()
}

/// An `istio_requests_total` line carries every `labels` pair.
pub fn has(stats: &str, labels: &[(&str, &str)]) -> bool {
    !lines(stats, "istio_requests_total", labels).is_empty()
}

/// Polls `proxy`'s metrics until a `metric` line carries every `labels` pair (metrics of a
/// TCP connection are written when it closes); the stats text then.
pub async fn eventually_counted(proxy: &Proxy, metric: &str, labels: &[(&str, &str)]) -> String {
    assert_eventually(
        &format!("{metric} with {labels:?}"),
        Duration::from_secs(20),
        || async {
            let s = prometheus(proxy).await;
            (!lines(&s, metric, labels).is_empty())
                .then_some(s.clone())
                .ok_or(s)
        },
    )
    .await
}

/// A TCP echo backend: writes back whatever it reads, then closes when its peer does.
pub async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` to `addr`, half-closes, and reads until the far end closes: what came back.
/// Writing and reading run together, so a message larger than the socket buffers on the way
/// cannot stall.
pub async fn tcp_roundtrip(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(msg).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(msg.len());
    let both = async { tokio::join!(send, r.read_to_end(&mut back)) };
    let (sent, read) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .map_err(|_| format!("no close after {} bytes echoed", back.len()))?;
    sent.map_err(|e| format!("send: {e}"))?;
    read.map_err(|e| format!("read: {e}"))?;
    Ok(back)
}

/// `len` bytes that are not one repeated byte (so a shifted or truncated copy differs).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// The SPIFFE id in the chain the server at `addr` presents to a bare rustls client holding
/// `creds` (any peer of the trust domain accepted, so the id is read, not assumed); `sni` as a
/// mesh caller sends it. The server may refuse the client only after the handshake (TLS 1.3),
/// which this does not look at: it reads what the server showed.
pub async fn presented_id(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    sni: &str,
) -> Result<String, String> {
    let accept = Accept::TrustDomain(TRUST_DOMAIN.into());
    let config = client_config(creds.clone(), accept, &[]).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned());
    let id = peer_id(&leaf.ok_or("no certificate")?).map_err(|e| e.to_string())?;
    Ok(id.to_string())
}
