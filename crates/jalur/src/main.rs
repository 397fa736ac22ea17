//! `jalur`: one binary, one subcommand per component. This file only parses flags, sets up
//! logging and hands over to the subcommand.

/// Prints a line on stdout. A closed stdout (whoever read the banner went away) is no reason for a
/// server to stop, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {
        let _ = $crate::write_stdout(&format!("{}\n", format_args!($($arg)*)));
    };
}

mod agent;
mod analyze;
mod api;
mod control;
#[cfg(feature = "demo")]
mod demo;
mod migrate;
mod proxy;
mod proxy_status;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "jalur",
    version,
    about = "A service mesh for moving a live fleet off Consul-style discovery, one service at a time"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "JALUR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: Istio config in, Envoy xDS out (ADS on 15010, status on 15014).
    Control(control::Args),
    /// Validate config files offline, like `istioctl analyze`; exit status 1 on any error.
    Analyze(analyze::Args),
    /// Run the data plane: a sidecar or gateway proxy configured over xDS by `jalur control`.
    Proxy(Box<proxy::Args>),
    /// Show every connected xDS client and whether it is in sync, like `istioctl proxy-status`.
    ProxyStatus(proxy_status::Args),
    /// Start a whole local fleet (legacy registry, services, sidecars, load) and migrate it.
    #[cfg(feature = "demo")]
    Demo(demo::Args),
    /// Move a service's traffic from its legacy path to the mesh stage by stage, or roll it back.
    Migrate(migrate::Args),
    /// Create, list or revoke bootstrap tokens: a workload's way to its first certificate.
    Token(token::Args),
    /// Beside a stock Envoy: get the workload certificate from the CA, serve it over SDS on a
    /// Unix socket, write Envoy's bootstrap (like Istio's pilot-agent).
    Agent(agent::Args),
}

impl Command {
    fn is_demo(&self) -> bool {
        #[cfg(feature = "demo")]
        if let Command::Demo(_) = self {
            return true;
        }
        false
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its own story on stdout; its components' info logs would drown it.
    let default_level = if cli.command.is_demo() {
        "warn"
    } else {
        "info"
    };
    init_tracing(cli.log_format, default_level);
    let result = match cli.command {
        Command::Control(args) => runtime().and_then(|rt| rt.block_on(control::run(args))),
        Command::Analyze(args) => analyze::run(args),
        Command::Proxy(args) => runtime().and_then(|rt| rt.block_on(proxy::run(*args))),
        Command::ProxyStatus(args) => runtime().and_then(|rt| rt.block_on(proxy_status::run(args))),
        #[cfg(feature = "demo")]
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Migrate(args) => runtime().and_then(|rt| rt.block_on(migrate::run(args))),
        Command::Token(args) => runtime().and_then(|rt| rt.block_on(token::run(args))),
        Command::Agent(args) => runtime().and_then(|rt| rt.block_on(agent::run(args))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`jalur analyze . | head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
