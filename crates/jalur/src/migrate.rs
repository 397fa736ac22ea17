//! `jalur migrate start|status|promote|pause|resume|rollback NAME`: drive a Migration through the
//! control plane's API, like `kubectl rollout` / `kubectl argo rollouts`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use http::Method;
use serde_json::Value;

use crate::api::{call, request, ApiError};

#[derive(clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    action: Action,
    /// The Migration's name (usually the service's).
    name: String,
    /// The Migration's namespace, when the name is in several.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Control plane status API address.
    #[arg(long, env = "JALUR_CONTROL", default_value = "127.0.0.1:15014")]
    control: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Follow the migration live until it is promoted, rolled back or paused.
    #[arg(long)]
    wait: bool,
    /// The admin token file (the control plane's --admin-token-file), needed for every action
    /// but status when the control plane has one.
    #[arg(long, env = "JALUR_ADMIN_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// Give up waiting after this long (e.g. 10m); exit 1.
    #[arg(long, default_value = "30m", value_parser = crate::control::parse_duration)]
    timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Action {
    Start,
    Status,
    Promote,
    Pause,
    Resume,
    Rollback,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
    Yaml,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let query = args
        .namespace
        .as_ref()
        .map(|ns| format!("?namespace={ns}"))
        .unwrap_or_default();
    let name = &args.name;
    let (method, path) = match args.action {
        Action::Status => (Method::GET, format!("/api/migrations/{name}{query}")),
        a => {
            let cmd = a
                .to_possible_value()
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            (Method::POST, format!("/api/migrations/{name}/{cmd}{query}"))
        }
    };
    let admin = crate::api::read_admin_token(args.token_file.as_deref())?;
    let status = match request(&args.control, method, &path, admin.as_deref(), None).await {
        Ok(s) => s,
        Err(e @ ApiError::Unreachable { .. }) => return Err(e.into()),
        Err(ApiError::Answered { message, .. }) => {
            eprintln!("Error: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if !args.wait {
        print(&status, args.output)?;
        return Ok(ExitCode::SUCCESS);
    }
    let path = format!("/api/migrations/{name}{query}");
    let deadline = Instant::now() + args.timeout;
    let mut last = String::new();
    let mut status = status;
    loop {
        if args.output == Output::Text {
            let line = progress_line(&status);
            if line != last {
                say!("{line}");
                last = line;
            }
        }
        let phase = field(&status, "phase");
        if matches!(phase.as_str(), "Promoted" | "RolledBack" | "Paused") {
            if args.output != Output::Text {
                print(&status, args.output)?;
            } else if let Some(t) = status["history"].as_array().and_then(|h| h.last()) {
                say!("{}: {}", phase, t["reason"].as_str().unwrap_or(""));
            }
            return Ok(if phase == "Promoted" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if Instant::now() > deadline {
            eprintln!("Error: still {phase} after {:?}", args.timeout);
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A control plane restarting mid-migration is expected: keep following until --timeout.
        match call(&args.control, Method::GET, &path).await {
            Ok(s) => status = s,
            Err(e @ ApiError::Unreachable { .. }) => {
                if args.output == Output::Text && !last.starts_with("waiting") {
                    last = format!("waiting for the control plane: {e}");
                    say!("{last}");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn field(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|p| format!("{p:.1} %"))
        .unwrap_or_else(|| "-".into())
}

/// One line of `--wait` progress.
fn progress_line(s: &Value) -> String {
    let stages = s["stages"].as_array().map(Vec::len).unwrap_or(0);
    let gates = &s["lastGates"];
    format!(
        "{} {}  stage {}/{}  mesh requested {} % observed {}  error rate {}  p99 mesh/legacy {}/{} ms  {}",
        field(s, "name"),
        field(s, "phase"),
        field(s, "stage"),
        stages,
        field(s, "requestedPercent"),
        pct(&s["observedPercent"]),
        gates["meshErrorRate"]
            .as_f64()
            .map(|r| format!("{:.2} %", r * 100.0))
            .unwrap_or_else(|| "-".into()),
        ms(&gates["mesh"]["p99Ms"]),
        ms(&gates["legacy"]["p99Ms"]),
        match &gates["verdict"]["reason"] {
            Value::String(r) => r.clone(),
            _ => String::new(),
        }
    )
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.1}"))
        .unwrap_or_else(|| "-".into())
}

fn print(status: &Value, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => {
            say!("{}", serde_json::to_string_pretty(status)?);
        }
        Output::Yaml => {
            say!("{}", yaml_serde::to_string(status)?.trim_end());
        }
        Output::Text => {
            let g = &status["gates"];
            let lg = &status["lastGates"];
            say!(
                "Migration:   {}/{}",
                field(status, "namespace"),
                field(status, "name")
            );
            say!("Route:       {}", field(status, "route"));
            say!("Legacy path: {}", field(status, "legacy"));
            say!("Mesh path:   {}", field(status, "mesh"));
            say!("Phase:       {}", field(status, "phase"));
            say!(
                "Stage:       {} of {} ({} % mesh)",
                field(status, "stage"),
                status["stages"].as_array().map_or(0, Vec::len),
                field(status, "stages")
            );
            say!(
                "Mesh share:  requested {} %, observed {}",
                field(status, "requestedPercent"),
                pct(&status["observedPercent"])
            );
            say!(
                "Gates:       error rate <= {:.2} %, p99 <= {} x legacy + {} ms, >= {} requests per {} s window; on failure: {}",
                g["maxErrorRate"].as_f64().unwrap_or(0.0) * 100.0,
                field(g, "maxP99Ratio"),
                field(g, "p99AllowanceMs"),
                field(g, "minRequests"),
                field(g, "windowS"),
                field(status, "onFailure"),
            );
            if lg.is_object() {
                say!(
                    "Last window: mesh {} requests, {} errors, p99 {} ms | legacy {} requests, {} errors, p99 {} ms -> {}",
                    field(&lg["mesh"], "requests"),
                    field(&lg["mesh"], "errors"),
                    ms(&lg["mesh"]["p99Ms"]),
                    field(&lg["legacy"], "requests"),
                    field(&lg["legacy"], "errors"),
                    ms(&lg["legacy"]["p99Ms"]),
                    field(&lg["verdict"], "result"),
                );
            }
            say!("Metrics:     {}", field(status, "metricsSource"));
            say!("History:");
            for t in status["history"].as_array().into_iter().flatten() {
                say!(
                    "  {}  {} -> {}  ({} %)  {}",
                    t["atMs"].as_u64().map(format_ms).unwrap_or_default(),
                    field(t, "from"),
                    field(t, "to"),
                    field(t, "weight"),
                    field(t, "reason"),
                );
            }
        }
    }
    Ok(())
}

/// `HH:MM:SS.mmm` UTC of a unix-ms timestamp.
fn format_ms(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}
