//! A stock Envoy beside an in-process `jalur agent`: the agent serves the workload's secrets
//! over SDS on a private socket and writes the bootstrap; Envoy starts from that bootstrap, so
//! its ADS to the control plane runs over mTLS (`xds-grpc`) with the agent's certificate and
//! every TLS context the control plane sends (`default`/`ROOTCA`) resolves through the agent.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use jalur_testkit::{agent::{AgentEnvoy, AgentEnvoyOpts}, ca::TestCa, envoy_binary, require_peer};
//! # use jalur_agent::bootstrap::{control_plane_id, ControlPlane};
//! # use jalur_identity::SpiffeId;
//! # async fn example(xds_tls: std::net::SocketAddr) -> Result<(), String> {
//! let Some(binary) = require_peer("envoy", envoy_binary()) else { return Ok(()) };
//! let ca = TestCa::new();
//! let id = SpiffeId::new("cluster.local", "shop", "payments");
//! let (_renew, creds) = ca.watch(&id, Duration::from_secs(3600));
//! let cp = ControlPlane::from_addr(xds_tls, control_plane_id("cluster.local", "jalur-system"));
//! let envoy = AgentEnvoy::start(&binary, creds, AgentEnvoyOpts::new(cp, "sidecar~127.0.0.1~payments-1.shop~shop.svc.cluster.local")).await?;
//! let _certs = envoy.admin_get("/certs").await?;
//! # Ok(())
//! # }
//! ```

use std::ops::Deref;
use std::path::Path;
use std::time::{Duration, SystemTime};

use jalur_agent::bootstrap::{ControlPlane, EnvoyBootstrap, TLS_MODE_ISTIO, TLS_MODE_LABEL};
use jalur_agent::{CredentialsWatch, SdsSocket};
use jalur_demo::envoy::Envoy;
use jalur_wire::NodeMeta;

/// What the test decides about the Envoy and its agent.
#[derive(Debug, Clone)]
pub struct AgentEnvoyOpts {
    /// The control plane's TLS port (15012) and the id its certificate must name.
    pub control_plane: ControlPlane,
    pub node_id: String,
    /// `node.cluster`; default `SA.NS` of the identity.
    pub cluster: Option<String>,
    /// Node metadata (ports, service, labels...). NAMESPACE, SERVICE_ACCOUNT and the
    /// `security.istio.io/tlsMode: istio` label are set from the identity on top.
    pub meta: NodeMeta,
    /// Delta ADS (`DELTA_GRPC`) instead of state of the world.
    pub delta: bool,
}

impl AgentEnvoyOpts {
    pub fn new(control_plane: ControlPlane, node_id: &str) -> AgentEnvoyOpts {
        AgentEnvoyOpts {
            control_plane,
            node_id: node_id.to_string(),
            cluster: None,
            meta: NodeMeta::default(),
            delta: false,
        }
    }
}

/// The running pair. Derefs to the [`Envoy`] (admin, listeners, log). Dropping it kills Envoy
/// and stops the agent's SDS server.
pub struct AgentEnvoy {
    // Envoy first: it goes before the socket it reads from.
    pub envoy: Envoy,
    pub sds: SdsSocket,
    pub bootstrap: EnvoyBootstrap,
    _dir: tempfile::TempDir,
}

impl AgentEnvoy {
    /// Serves `creds` over SDS on a fresh socket, writes the bootstrap, starts `binary` from it
    /// and waits until its admin listens. The identity is the one `creds` certifies.
    pub async fn start(
        binary: &Path,
        creds: CredentialsWatch,
        opts: AgentEnvoyOpts,
    ) -> Result<AgentEnvoy, String> {
        let dir = tempfile::TempDir::with_prefix("jalur-agent-")
            .map_err(|e| format!("cannot make a temp dir for the agent: {e}"))?;
        let socket = dir.path().join("sds.sock");
        let id = creds.borrow().cert.id.clone();
        let sds = SdsSocket::bind(&socket, creds)
            .await
            .map_err(|e| e.to_string())?;
        let mut bootstrap = EnvoyBootstrap::new(&id, opts.node_id, &socket, opts.control_plane);
        bootstrap.meta = NodeMeta {
            namespace: Some(id.namespace.clone()),
            service_account: Some(id.service_account.clone()),
            ..opts.meta
        };
        bootstrap
            .meta
            .labels
            .insert(TLS_MODE_LABEL.to_string(), TLS_MODE_ISTIO.to_string());
        if let Some(cluster) = opts.cluster {
            bootstrap.cluster = cluster;
        }
        bootstrap.delta = opts.delta;
        bootstrap.admin = ([127, 0, 0, 1], 0).into();
        let envoy = Envoy::start_with_bootstrap(binary, &bootstrap.to_json()).await?;
        Ok(AgentEnvoy {
            envoy,
            sds,
            bootstrap,
            _dir: dir,
        })
    }
}

impl Deref for AgentEnvoy {
    type Target = Envoy;

    fn deref(&self) -> &Envoy {
        &self.envoy
    }
}

/// One certificate as Envoy's admin `/certs` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownCert {
    pub serial: String,
    pub uris: Vec<String>,
    pub expires: SystemTime,
}

/// Every certificate Envoy holds: the chains it presents and the CAs it verifies with.
#[derive(Debug, Clone, Default)]
pub struct ShownCerts {
    pub chains: Vec<ShownCert>,
    pub cas: Vec<ShownCert>,
}

/// Envoy's `/certs` (JSON), read.
pub async fn envoy_certs(envoy: &Envoy) -> Result<ShownCerts, String> {
    parse_certs(&envoy.admin_get("/certs").await?)
}

/// Parses the admin `/certs` JSON: `certificates[].cert_chain[]` and `.ca_cert[]`, each with
/// `serial_number`, `subject_alt_names[].uri` and `expiration_time` (RFC 3339).
pub fn parse_certs(json: &str) -> Result<ShownCerts, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("/certs is not JSON: {e}"))?;
    let mut shown = ShownCerts::default();
    let empty = Vec::new();
    for context in v["certificates"].as_array().unwrap_or(&empty) {
        for (key, out) in [
            ("cert_chain", &mut shown.chains),
            ("ca_cert", &mut shown.cas),
        ] {
            for c in context[key].as_array().unwrap_or(&empty) {
                out.push(shown_cert(c)?);
            }
        }
    }
    Ok(shown)
}

fn shown_cert(c: &serde_json::Value) -> Result<ShownCert, String> {
    let expiry = c["expiration_time"].as_str().unwrap_or_default();
    let at = time::OffsetDateTime::parse(expiry, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("/certs expiration_time {expiry:?}: {e}"))?;
    let secs = u64::try_from(at.unix_timestamp()).map_err(|_| format!("{expiry} before 1970"))?;
    Ok(ShownCert {
        serial: c["serial_number"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase(),
        uris: c["subject_alt_names"]
            .as_array()
            .map(|sans| {
                sans.iter()
                    .filter_map(|s| s["uri"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        expires: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    })
}
