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
use jalur_agent::{Agent, AgentOptions, CredentialsWatch, SdsSocket};
use jalur_demo::envoy::Envoy;
use jalur_identity::rotate::RotatorOptions;
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
    secrets: Secrets,
    pub bootstrap: EnvoyBootstrap,
    _dir: tempfile::TempDir,
}

/// Who serves Envoy's secrets: an SDS socket over credentials the test hands in, or the whole
/// `jalur agent` (its `CertRotator` renewing from the control plane's CA).
enum Secrets {
    /// The socket is held only to keep serving.
    Sds {
        _socket: SdsSocket,
        creds: CredentialsWatch,
    },
    Agent(Agent),
}

impl Secrets {
    fn credentials(&self) -> CredentialsWatch {
        match self {
            Secrets::Sds { creds, .. } => creds.clone(),
            Secrets::Agent(agent) => agent.credentials(),
        }
    }
}

impl AgentEnvoy {
    /// Serves `creds` over SDS on a fresh socket, writes the bootstrap, starts `binary` from it
    /// and waits until its admin listens. The identity is the one `creds` certifies.
    pub async fn start(
        binary: &Path,
        creds: CredentialsWatch,
        opts: AgentEnvoyOpts,
    ) -> Result<AgentEnvoy, String> {
        let dir = agent_dir()?;
        let sds = SdsSocket::bind(&dir.path().join("sds.sock"), creds.clone())
            .await
            .map_err(|e| e.to_string())?;
        let secrets = Secrets::Sds {
            _socket: sds,
            creds,
        };
        AgentEnvoy::launch(binary, secrets, dir, opts).await
    }

    /// Runs `jalur agent` as the binary does ([`Agent::start`]: the first certificate from the
    /// CA at `rotator.ca_address`, SDS, renewals at half life, the trust bundle re-read from
    /// `rotator.root_cert`), then Envoy from the bootstrap for it.
    pub async fn start_agent(
        binary: &Path,
        rotator: RotatorOptions,
        opts: AgentEnvoyOpts,
    ) -> Result<AgentEnvoy, String> {
        let dir = agent_dir()?;
        let agent = Agent::start(AgentOptions {
            rotator,
            sds_socket: dir.path().join("sds.sock"),
            // Written below, by `Envoy::start_with_bootstrap`, once it is complete.
            envoy_bootstrap: None,
        })
        .await
        .map_err(|e| e.to_string())?;
        AgentEnvoy::launch(binary, Secrets::Agent(agent), dir, opts).await
    }

    /// The credentials served to Envoy (renewed in place when an agent runs).
    pub fn credentials(&self) -> CredentialsWatch {
        self.secrets.credentials()
    }

    async fn launch(
        binary: &Path,
        secrets: Secrets,
        dir: tempfile::TempDir,
        opts: AgentEnvoyOpts,
    ) -> Result<AgentEnvoy, String> {
        let socket = dir.path().join("sds.sock");
        let id = secrets.credentials().borrow().cert.id.clone();
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
            secrets,
            bootstrap,
            _dir: dir,
        })
    }
}

fn agent_dir() -> Result<tempfile::TempDir, String> {
    tempfile::TempDir::with_prefix("jalur-agent-")
        .map_err(|e| format!("cannot make a temp dir for the agent: {e}"))
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

/// Polls Envoy's `/certs` until `check` accepts what it shows, for at most `within`; what
/// `check` returns. Panics naming `what` and the last refusal (or the unreadable `/certs`).
pub async fn wait_for_certs<T>(
    envoy: &Envoy,
    what: &str,
    within: Duration,
    check: impl Fn(&ShownCerts) -> Result<T, String>,
) -> T {
    jalur_demo::eventually::assert_eventually(what, within, || async {
        check(&envoy_certs(envoy).await?)
    })
    .await
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
