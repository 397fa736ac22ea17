//! `jalur agent`: beside a stock Envoy, as Istio's pilot-agent — the workload certificate from
//! the control plane's CA (key generated here, renewed at half life), served to Envoy over SDS
//! on a Unix socket, and Envoy's bootstrap written for it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use jalur_agent::bootstrap::{control_plane_id, ControlPlane, EnvoyBootstrap};
use jalur_agent::{Agent, AgentOptions};
use jalur_identity::rotate::RotatorOptions;
use jalur_identity::SpiffeId;
use jalur_wire::{NamedPort, NodeMeta};

#[derive(clap::Args)]
pub struct Args {
    /// The control plane's TLS port, where the CA and ADS are: https://HOST:15012.
    #[arg(long, env = "JALUR_XDS")]
    xds_address: String,
    /// The mesh's trust bundle (PEM, one or more roots; the control plane's
    /// `<state dir>/ca/trust-bundle.pem`), re-read when it changes.
    #[arg(long, env = "JALUR_ROOT_CERT")]
    root_cert: PathBuf,
    /// A bootstrap token (`jalur token create`) for the first certificate.
    #[arg(long, env = "JALUR_TOKEN_FILE")]
    token_file: PathBuf,
    #[arg(long, env = "JALUR_NAMESPACE")]
    namespace: String,
    #[arg(long, env = "JALUR_SERVICE_ACCOUNT")]
    service_account: String,
    #[arg(long, env = "JALUR_TRUST_DOMAIN", default_value = jalur_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The control plane's namespace: its certificate must be spiffe://TD/ns/THIS/sa/jalur-control.
    #[arg(long, env = "JALUR_ROOT_NAMESPACE", default_value = "jalur-system")]
    root_namespace: String,
    /// Requested certificate lifetime (the CA may shorten it); renewed at half of it.
    #[arg(long, env = "JALUR_CERT_TTL", default_value = "24h", value_parser = crate::control::parse_duration)]
    cert_ttl: Duration,
    /// The SDS socket Envoy connects to (created 0600: only this user, Envoy's, may connect).
    #[arg(long, env = "JALUR_SDS_SOCKET")]
    sds_socket: PathBuf,
    /// Write Envoy's bootstrap (JSON) here once the certificate is served.
    #[arg(long, env = "JALUR_ENVOY_BOOTSTRAP")]
    envoy_bootstrap: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// What the bootstrap tells the control plane about the workload (as `jalur proxy` announces it).
#[derive(clap::Args)]
struct NodeArgs {
    /// Envoy's node id; default `sidecar~IP~WORKLOAD.NS~NS.svc.cluster.local` (Istio's form).
    #[arg(long, env = "JALUR_NODE_ID")]
    node_id: Option<String>,
    /// The workload's service (default: the service account).
    #[arg(long, env = "JALUR_SERVICE")]
    service: Option<String>,
    /// The workload (pod) name; default `SERVICE-envoy`.
    #[arg(long, env = "JALUR_WORKLOAD_NAME")]
    workload_name: Option<String>,
    /// Workload labels, `k=v,k=v`; `security.istio.io/tlsMode=istio` is always added.
    #[arg(long, env = "JALUR_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Ports the workload serves, `name:port`.
    #[arg(long, env = "JALUR_PORTS", value_delimiter = ',')]
    ports: Vec<NamedPort>,
    #[arg(long, env = "JALUR_APP_PORT")]
    app_port: Option<u16>,
    #[arg(long, env = "JALUR_INSTANCE_IP", default_value = "127.0.0.1")]
    instance_ip: String,
    #[arg(long, env = "JALUR_LISTEN_ADDRESS")]
    listen_address: Option<String>,
    #[arg(long, env = "JALUR_INBOUND_PORT")]
    inbound_port: Option<u16>,
    #[arg(long, env = "JALUR_OUTBOUND_PORT")]
    outbound_port: Option<u16>,
    /// Ask the control plane for OS-chosen listener ports (read them from Envoy's admin
    /// `/listeners`): side-by-side runs and tests.
    #[arg(long, env = "JALUR_EPHEMERAL_PORTS")]
    ephemeral_ports: bool,
    /// Envoy's admin listener (keep it on loopback).
    #[arg(long, env = "JALUR_ENVOY_ADMIN", default_value = "127.0.0.1:15000")]
    envoy_admin: SocketAddr,
    /// Delta xDS (DELTA_GRPC) for Envoy's ADS instead of state of the world.
    #[arg(long, env = "JALUR_DELTA")]
    delta: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let id = SpiffeId::new(&args.trust_domain, &args.namespace, &args.service_account);
    // Validate the id's parts the way the CA will (a bad namespace is caught here, not there).
    let id: SpiffeId = id
        .to_string()
        .parse()
        .context("--trust-domain / --namespace / --service-account")?;
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("--token-file {}", args.token_file.display()))?
        .trim()
        .to_string();
    let cp_id = control_plane_id(&args.trust_domain, &args.root_namespace);
    let mut rotator = RotatorOptions::new(&args.xds_address, id.clone(), &args.root_cert);
    rotator.token = Some(token);
    rotator.cert_ttl = args.cert_ttl;
    rotator.control_plane = cp_id.clone();
    let envoy_bootstrap = match &args.envoy_bootstrap {
        Some(path) => {
            let cp =
                ControlPlane::from_url(&args.xds_address, cp_id).map_err(anyhow::Error::msg)?;
            Some((path.clone(), bootstrap(&id, &args, cp)))
        }
        None => None,
    };
    let agent = Agent::start(AgentOptions {
        rotator,
        sds_socket: args.sds_socket.clone(),
        envoy_bootstrap,
    })
    .await?;
    say!("jalur agent {id} ready");
    say!("  SDS (default, ROOTCA): {}", agent.sds_socket().display());
    if let Some(path) = &args.envoy_bootstrap {
        say!("  Envoy bootstrap: {}", path.display());
    }
    crate::control::wait_for_signal().await;
    agent.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn bootstrap(id: &SpiffeId, args: &Args, cp: ControlPlane) -> EnvoyBootstrap {
    let n = &args.node;
    let service = n
        .service
        .clone()
        .unwrap_or_else(|| id.service_account.clone());
    let workload = n
        .workload_name
        .clone()
        .unwrap_or_else(|| format!("{service}-envoy"));
    let ns = &id.namespace;
    let node_id = n.node_id.clone().unwrap_or_else(|| {
        format!(
            "sidecar~{}~{workload}.{ns}~{ns}.svc.cluster.local",
            n.instance_ip
        )
    });
    let mut b = EnvoyBootstrap::new(id, node_id, &args.sds_socket, cp);
    b.cluster = format!("{service}.{ns}");
    b.delta = n.delta;
    b.admin = n.envoy_admin;
    let meta = NodeMeta {
        instance_ips: vec![n.instance_ip.clone()],
        workload_name: Some(workload),
        service: Some(service),
        ports: n.ports.clone(),
        app_port: n.app_port.map(u32::from),
        listen_address: n.listen_address.clone(),
        inbound_port: n.inbound_port.map(u32::from),
        outbound_port: n.outbound_port.map(u32::from),
        ephemeral_ports: n.ephemeral_ports,
        ..std::mem::take(&mut b.meta)
    };
    b.meta = meta;
    b.meta.labels.extend(n.labels.iter().cloned());
    // The identity's label wins over a --labels entry of the same key.
    b.meta.labels.insert(
        jalur_agent::bootstrap::TLS_MODE_LABEL.into(),
        jalur_agent::bootstrap::TLS_MODE_ISTIO.into(),
    );
    b
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("label {s:?} must be key=value"))
}
