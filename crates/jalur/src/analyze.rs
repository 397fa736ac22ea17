//! `jalur analyze PATH...`: offline validation for CI pipelines, in the manner of `istioctl analyze`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::ValueEnum;
use jalur_model::{analyze, Diagnostic, Severity};

#[derive(clap::Args)]
pub struct Args {
    /// Files or directories of Istio YAML.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Exit with status 1 when a finding is at or above this severity.
    #[arg(long, value_enum, default_value_t = Threshold::Error)]
    failure_threshold: Threshold,
    /// Show only findings at or above this severity.
    #[arg(long, value_enum, default_value_t = Threshold::Info)]
    output_threshold: Threshold,
    /// Also check the config against a live Consul (host:port or http://host:port): names that
    /// collide or shadow, routes to services Consul lacks, imports with no passing instance.
    #[arg(long, env = "JALUR_CONSUL")]
    consul: Option<String>,
    /// Environment variable holding the Consul ACL token (never printed).
    #[arg(long, default_value = "CONSUL_HTTP_TOKEN")]
    consul_token_env: String,
    /// The mesh's root namespace, where mesh-wide PeerAuthentication lives: the same value as
    /// the control plane's `--root-namespace`.
    #[arg(long, env = "JALUR_ROOT_NAMESPACE", default_value = "jalur-system")]
    root_namespace: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
    Yaml,
}

#[derive(Clone, Copy, ValueEnum)]
enum Threshold {
    Info,
    Warning,
    Error,
}

impl Threshold {
    fn severity(self) -> Severity {
        match self {
            Threshold::Info => Severity::Info,
            Threshold::Warning => Severity::Warning,
            Threshold::Error => Severity::Error,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = jalur_model::load_paths(&args.paths);
    let mut findings = loaded.diagnostics.clone();
    match &args.consul {
        None => findings.extend(analyze::analyze_in(
            &loaded.config,
            &analyze::KnownServices::new(),
            &args.root_namespace,
        )),
        Some(addr) => {
            let token = std::env::var(&args.consul_token_env).ok();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let view = rt
                .block_on(jalur_control::consul::fetch_view(addr, token))
                .map_err(|e| anyhow::anyhow!("cannot read Consul at {addr}: {e}"))?;
            let known: analyze::KnownServices = view
                .services
                .keys()
                .map(|n| {
                    (
                        format!("{n}.{}", analyze::hybrid::CONSUL_DOMAIN),
                        Default::default(),
                    )
                })
                .collect();
            findings.extend(analyze::analyze_in(
                &loaded.config,
                &known,
                &args.root_namespace,
            ));
            findings.extend(analyze::hybrid::check(&loaded.config, &view));
        }
    }
    findings.sort_by(|a, b| (&a.file, a.line, a.code).cmp(&(&b.file, b.line, b.code)));
    let shown: Vec<&Diagnostic> = findings
        .iter()
        .filter(|d| d.severity >= args.output_threshold.severity())
        .collect();
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&shown)? + "\n",
        Output::Yaml => yaml_serde::to_string(&shown)?,
        Output::Text if shown.is_empty() => {
            let what: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
            format!(
                "\u{2714} No validation issues found when analyzing {} ({} files, {} resources).\n",
                what.join(", "),
                loaded.files.len(),
                loaded.config.resources.len()
            )
        }
        Output::Text => shown.iter().map(|d| format!("{d}\n")).collect(),
    };
    crate::write_stdout(&text)?;
    let failed = findings
        .iter()
        .any(|d| d.severity >= args.failure_threshold.severity());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
