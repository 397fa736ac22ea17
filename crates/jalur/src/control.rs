//! `jalur control`: start the control plane and serve until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use jalur_control::{ControlPlane, Options};

#[derive(clap::Args)]
pub struct Args {
    /// Config files or directories of Istio YAML (watched for changes).
    #[arg(
        long = "config",
        short = 'c',
        env = "JALUR_CONFIG",
        required = true,
        value_delimiter = ','
    )]
    config: Vec<PathBuf>,
    /// Plaintext xDS (ADS) listen address; served only with --insecure-xds.
    #[arg(long, env = "JALUR_XDS_ADDR", default_value = "0.0.0.0:15010")]
    xds_addr: SocketAddr,
    /// xDS (ADS) and the CA (istio.v1.auth.IstioCertificateService) over TLS: proxies
    /// authenticate with their workload certificate and may only register that identity.
    #[arg(long, env = "JALUR_XDS_TLS_ADDR", default_value = "0.0.0.0:15012")]
    xds_tls_addr: SocketAddr,
    /// Also serve plaintext xDS on --xds-addr, where anyone who reaches it can register as any
    /// service: for development only (`jalur demo` turns it on).
    #[arg(long, env = "JALUR_INSECURE_XDS")]
    insecure_xds: bool,
    /// Status API, metrics and debug endpoints listen address.
    #[arg(long, env = "JALUR_STATUS_ADDR", default_value = "0.0.0.0:15014")]
    status_addr: SocketAddr,
    /// Changes arriving within this window are pushed together (e.g. 100ms).
    #[arg(long, env = "JALUR_DEBOUNCE", default_value = "100ms", value_parser = parse_duration)]
    debounce: Duration,
    /// How long a disconnected proxy's workload stays registered (e.g. 5s).
    #[arg(long, env = "JALUR_REGISTRY_GRACE", default_value = "5s", value_parser = parse_duration)]
    registry_grace: Duration,
    /// Where controller state (migrations) is kept; default `.jalur/` in the first config
    /// directory.
    #[arg(long, env = "JALUR_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Read migration metrics from this Prometheus server (e.g. http://127.0.0.1:9090) instead
    /// of scraping the proxies directly.
    #[arg(long, env = "JALUR_PROMETHEUS")]
    prometheus: Option<String>,
    /// Extra /stats/prometheus endpoints (host:port) to scrape for migration metrics.
    #[arg(long, env = "JALUR_SCRAPE", value_delimiter = ',')]
    scrape: Vec<SocketAddr>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<jalur_model::duration::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let args_insecure = args.insecure_xds;
    let opts = Options {
        config: args.config,
        xds_addr: args.xds_addr,
        xds_tls_addr: args.xds_tls_addr,
        insecure_xds: args.insecure_xds,
        // The mesh CA, whose certificates 15012 presents and checks.
        ca: Some(jalur_control::ca::CaOptions::default()),
        status_addr: args.status_addr,
        debounce: args.debounce,
        registry_grace: args.registry_grace,
        state_dir: args.state_dir,
        prometheus: args.prometheus,
        scrape_targets: args.scrape,
        ..Options::default()
    };
    let plane = ControlPlane::start(opts).await?;
    let status = plane.state.store.status();
    say!("jalur control plane ready");
    say!(
        "  config:  {} ({} files, {} resources)",
        paths(&status.paths),
        status.files,
        status.resources
    );
    if let Some(tls) = plane.xds_tls_addr {
        say!("  xDS+CA:  {tls} (TLS; ADS SotW and delta, IstioCertificateService)");
    }
    if args_insecure {
        say!(
            "  xDS:     {} (plaintext ADS, --insecure-xds: development only)",
            plane.xds_addr
        );
    }
    say!(
        "  status:  http://{}/debug/syncz  (metrics: /metrics)",
        plane.status_addr
    );
    for w in &status.warnings {
        say!("  {w}");
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    plane.stop().await;
    Ok(ExitCode::SUCCESS)
}

fn paths(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
