//! `jalur control`: start the control plane and serve until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use jalur_control::ca::{CaOptions, PluginCa};
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
    /// How often RequestAuthentication `jwksUri`s (http/https) are fetched again; the control
    /// plane fetches them and inlines the keys into every proxy's config, as istiod does.
    #[arg(long, env = "JALUR_JWKS_REFRESH", default_value = "20m", value_parser = parse_refresh)]
    jwks_refresh: Duration,
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
    /// The mesh's trust domain: workload identities are spiffe://TRUST_DOMAIN/ns/NS/sa/SA.
    #[arg(long, env = "JALUR_TRUST_DOMAIN", default_value = jalur_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The namespace of the control plane's own identity (…/ns/ROOT_NS/sa/jalur-control).
    #[arg(long, env = "JALUR_ROOT_NAMESPACE", default_value = "jalur-system")]
    root_namespace: String,
    /// The longest a workload certificate lives (and the default when a CSR asks for none).
    #[arg(long, env = "JALUR_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    workload_cert_ttl: Duration,
    /// Sign with this intermediate CA certificate (Istio's cacerts ca-cert.pem) instead of a
    /// self-signed root kept in the state directory. Needs --ca-key and --ca-chain.
    #[arg(long, env = "JALUR_CA_CERT", requires_all = ["ca_key", "ca_chain"])]
    ca_cert: Option<PathBuf>,
    /// The intermediate's private key (ca-key.pem; mode 0600 or stricter).
    #[arg(long, env = "JALUR_CA_KEY", requires_all = ["ca_cert", "ca_chain"])]
    ca_key: Option<PathBuf>,
    /// The chain from the intermediate to the root, root last (cert-chain.pem).
    #[arg(long, env = "JALUR_CA_CHAIN", requires_all = ["ca_cert", "ca_key"])]
    ca_chain: Option<PathBuf>,
    /// More roots to trust besides the CA's own (PEM), e.g. a root being rotated in.
    #[arg(long, env = "JALUR_EXTRA_ROOTS")]
    extra_roots: Option<PathBuf>,
    /// A file holding the admin token (mode 0600) the status API's write endpoints, the token
    /// API and /debug/config_dump then require as `authorization: Bearer`.
    #[arg(long, env = "JALUR_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
}

impl Args {
    fn ca(&self) -> CaOptions {
        let plugin = match (&self.ca_cert, &self.ca_key, &self.ca_chain) {
            (Some(cert), Some(key), Some(chain)) => Some(PluginCa {
                cert: cert.clone(),
                key: key.clone(),
                chain: chain.clone(),
            }),
            _ => None,
        };
        CaOptions {
            trust_domain: self.trust_domain.clone(),
            root_namespace: self.root_namespace.clone(),
            workload_ttl: self.workload_cert_ttl,
            plugin,
            extra_roots: self.extra_roots.clone(),
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<jalur_model::duration::Duration>()
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

/// A refresh interval: a duration of at least a second (0 would fetch without pause).
fn parse_refresh(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!(
            "{s:?} is under a second; JWKS are fetched again every such interval"
        ));
    }
    Ok(d)
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ca = args.ca();
    let args_insecure = args.insecure_xds;
    let opts = Options {
        ca: Some(ca),
        admin_token_file: args.admin_token_file,
        config: args.config,
        xds_addr: args.xds_addr,
        xds_tls_addr: args.xds_tls_addr,
        insecure_xds: args.insecure_xds,
        status_addr: args.status_addr,
        debounce: args.debounce,
        registry_grace: args.registry_grace,
        jwks_refresh: args.jwks_refresh,
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
    if let Some(ca) = &plane.state.ca {
        say!(
            "  CA:      {} (trust domain {}; give it to proxies as --root-cert)",
            ca.authority.bundle_path().display(),
            ca.authority.trust_domain()
        );
    }
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
