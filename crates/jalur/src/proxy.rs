//! `jalur proxy`: the data plane (sidecar or gateway), configured over xDS by `jalur control`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use jalur_identity::rotate::{CertRotator, RotatorOptions};
use jalur_identity::SpiffeId;
use jalur_proxy::run::{Proxy, ProxyOptions, Role};

#[derive(clap::Args)]
pub struct Args {
    /// Control plane xDS address: `https://HOST:15012` (TLS; the proxy gets a workload
    /// certificate from the control plane's CA and proves its identity with it), or
    /// `HOST:15010` (plaintext, a control plane started with --insecure-xds).
    #[arg(
        long = "xds-address",
        alias = "xds",
        env = "JALUR_XDS",
        default_value = "127.0.0.1:15010"
    )]
    xds: String,
    /// The mesh's trust bundle (PEM, one or more roots; the control plane's
    /// `<state dir>/ca/trust-bundle.pem`), re-read when it changes. Needed with https://.
    #[arg(long, env = "JALUR_ROOT_CERT")]
    root_cert: Option<PathBuf>,
    /// A bootstrap token (`jalur token create`) for the first certificate. Needed with https://.
    #[arg(long, env = "JALUR_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The workload's service account (its SPIFFE id's `sa`); default: the service name.
    #[arg(long, env = "JALUR_SERVICE_ACCOUNT")]
    service_account: Option<String>,
    #[arg(long, env = "JALUR_TRUST_DOMAIN", default_value = jalur_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime to request for the workload certificate (the CA may shorten it); renewed at
    /// half of it.
    #[arg(long, env = "JALUR_CERT_TTL", default_value = "24h", value_parser = crate::control::parse_duration)]
    cert_ttl: Duration,
    /// sidecar (inbound + outbound for one workload) or gateway (listeners from Gateway resources).
    #[arg(long, env = "JALUR_ROLE", value_enum, default_value_t = RoleArg::Sidecar)]
    role: RoleArg,
    /// The workload's service name (registers it in the mesh as NAME.NAMESPACE.svc.cluster.local).
    #[arg(long, env = "JALUR_SERVICE")]
    service: Option<String>,
    #[arg(long, env = "JALUR_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Workload labels, `k=v,k=v` (e.g. `version=v2`).
    #[arg(long, env = "JALUR_LABELS", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The local app's port: inbound traffic is forwarded to 127.0.0.1:PORT.
    #[arg(long, env = "JALUR_APP_PORT")]
    app_port: Option<u16>,
    /// Ports the workload serves, `name:port` (name prefix gives the protocol: http, grpc, tcp).
    #[arg(long, env = "JALUR_PORTS", value_delimiter = ',')]
    ports: Vec<jalur_wire::NamedPort>,
    /// This workload's address as callers reach it.
    #[arg(long, env = "JALUR_INSTANCE_IP", default_value = "127.0.0.1")]
    instance_ip: String,
    /// Address the xDS listeners bind.
    #[arg(long, env = "JALUR_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    listen_address: String,
    #[arg(long, env = "JALUR_OUTBOUND_PORT", default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, env = "JALUR_INBOUND_PORT", default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, env = "JALUR_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    #[arg(long, env = "JALUR_HEALTH_ADDR", default_value = "0.0.0.0:15021")]
    health_addr: SocketAddr,
    #[arg(long, env = "JALUR_STATS_ADDR", default_value = "0.0.0.0:15090")]
    stats_addr: SocketAddr,
    /// Bind every listener on an OS-chosen port (read them from the admin /listeners endpoint).
    #[arg(long, env = "JALUR_EPHEMERAL_PORTS")]
    ephemeral_ports: bool,
    /// Use state-of-the-world xDS instead of delta.
    #[arg(long, env = "JALUR_SOTW")]
    sotw: bool,
    /// After SIGTERM, how long to keep serving while callers move away: not ready on the health
    /// port, endpoint withdrawn from the control plane at once, `Connection: close` on HTTP/1.1
    /// answers and GOAWAY on HTTP/2. Like Istio's terminationDrainDuration.
    #[arg(long, env = "JALUR_DRAIN_PERIOD", default_value = "5s", value_parser = crate::control::parse_duration)]
    drain_period: Duration,
    /// Then how long the requests in flight may take to finish (e.g. 20s).
    #[arg(long, env = "JALUR_DRAIN_TIMEOUT", default_value = "20s", value_parser = crate::control::parse_duration)]
    drain_timeout: Duration,
    /// A downstream connection must send each request head within this, or it is closed
    /// (slowloris). An idle HTTP/1.1 keep-alive connection is closed after this long too.
    #[arg(long, env = "JALUR_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = crate::control::parse_duration)]
    header_read_timeout: Duration,
    /// Log one structured line per request (target jalur::access; JSON with --log-format json).
    #[arg(long, env = "JALUR_ACCESS_LOG")]
    access_log: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Sidecar,
    Gateway,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("label {s:?} must be key=value"))
}

/// With an `https://` control plane: the workload's certificate from its CA, kept renewed.
/// A refused token is an error at start, with the CA's message.
async fn identity(args: &Args) -> anyhow::Result<Option<CertRotator>> {
    if !args.xds.starts_with("https://") {
        return Ok(None);
    }
    let (Some(root_cert), Some(token_file)) = (&args.root_cert, &args.token_file) else {
        anyhow::bail!(
            "--xds-address {} is TLS: give the mesh's trust bundle (--root-cert) and a bootstrap token (--token-file)",
            args.xds
        );
    };
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| anyhow::anyhow!("bootstrap token {}: {e}", token_file.display()))?;
    let account = args
        .service_account
        .clone()
        .or_else(|| args.service.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("--service-account (or --service) names the identity to request")
        })?;
    let id = SpiffeId::new(&args.trust_domain, &args.namespace, account);
    let mut opts = RotatorOptions::new(&args.xds, id.clone(), root_cert);
    opts.token = Some(token.trim().to_string());
    opts.cert_ttl = args.cert_ttl;
    let rotator = CertRotator::start(opts)
        .await
        .map_err(|e| anyhow::anyhow!("cannot get a workload certificate for {id}: {e}"))?;
    Ok(Some(rotator))
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let rotator = identity(&args).await?;
    let opts = ProxyOptions {
        xds: args.xds,
        role: match args.role {
            RoleArg::Sidecar => Role::Sidecar,
            RoleArg::Gateway => Role::Gateway,
        },
        service: args.service,
        namespace: args.namespace,
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
        app_port: args.app_port,
        ports: args.ports,
        instance_ip: args.instance_ip,
        listen_address: args.listen_address,
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        admin_addr: args.admin_addr,
        health_addr: args.health_addr,
        stats_addr: args.stats_addr,
        ephemeral_ports: args.ephemeral_ports,
        delta: !args.sotw,
        drain_period: args.drain_period,
        drain_timeout: args.drain_timeout,
        header_read_timeout: args.header_read_timeout,
        access_log: args.access_log,
        credentials: rotator.as_ref().map(CertRotator::credentials),
        ..ProxyOptions::default()
    };
    let proxy = Proxy::start(opts).await?;
    say!("jalur proxy {} started", proxy.node_id);
    if let Some(creds) = &proxy.state.rt.credentials {
        let creds = creds.borrow();
        say!("  identity: {} (mTLS to the control plane)", creds.cert.id);
    }
    if let (Some(outbound), Some(inbound)) = (proxy.outbound_addr, proxy.inbound_addr) {
        say!("  outbound: {outbound}  inbound: {inbound}");
    }
    say!("  admin:  http://{}/config_dump", proxy.admin_addr);
    say!("  stats:  http://{}/stats/prometheus", proxy.stats_addr);
    say!("  health: http://{}/healthz/ready", proxy.health_addr);
    crate::control::wait_for_signal().await;
    proxy.shutdown().await;
    if let Some(rotator) = rotator {
        rotator.stop();
    }
    Ok(ExitCode::SUCCESS)
}
