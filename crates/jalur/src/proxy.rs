//! `jalur proxy`: the data plane (sidecar or gateway), configured over xDS by `jalur control`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::ValueEnum;
use jalur_proxy::run::{Proxy, ProxyOptions, Role};

#[derive(clap::Args)]
pub struct Args {
    /// Control plane xDS address (host:port).
    #[arg(long, env = "JALUR_XDS", default_value = "127.0.0.1:15010")]
    xds: String,
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

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
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
        credentials: None,
    };
    let proxy = Proxy::start(opts).await?;
    say!("jalur proxy {} started", proxy.node_id);
    if let (Some(outbound), Some(inbound)) = (proxy.outbound_addr, proxy.inbound_addr) {
        say!("  outbound: {outbound}  inbound: {inbound}");
    }
    say!("  admin:  http://{}/config_dump", proxy.admin_addr);
    say!("  stats:  http://{}/stats/prometheus", proxy.stats_addr);
    say!("  health: http://{}/healthz/ready", proxy.health_addr);
    crate::control::wait_for_signal().await;
    proxy.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
