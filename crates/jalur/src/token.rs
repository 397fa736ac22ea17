//! `jalur token create|list|revoke`: bootstrap tokens through the control plane's API. A token
//! lets one workload (`--namespace`/`--service-account`) get its first certificate; `create`
//! prints the token alone so `jalur token create … > token` is the whole recipe.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use http::Method;
use serde_json::{json, Value};

use crate::api::{read_admin_token, request, ApiError};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
    /// Control plane status API address.
    #[arg(
        long,
        global = true,
        env = "JALUR_CONTROL",
        default_value = "127.0.0.1:15014"
    )]
    control: String,
    /// The admin token file (the control plane's --admin-token-file).
    #[arg(long, global = true, env = "JALUR_ADMIN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Output: `text` (create: the token alone), `json` or `yaml`.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Subcommand)]
enum Action {
    /// Mint a token for one workload identity; prints the token.
    Create {
        #[arg(short = 'n', long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token can be used (e.g. 1h, 10m).
        #[arg(long, default_value = "1h", value_parser = crate::control::parse_duration)]
        ttl: Duration,
        /// Usable until it expires or is revoked (default: spent by its first certificate).
        #[arg(long)]
        reusable: bool,
    },
    /// Every token the control plane issued (never the tokens themselves).
    List,
    /// Revoke a token by id: no certificate is signed on it any more.
    Revoke { id: String },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
    Yaml,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let admin = read_admin_token(args.token_file.as_deref())?;
    let (method, path, body) = match &args.action {
        Action::Create {
            namespace,
            service_account,
            ttl,
            reusable,
        } => (
            Method::POST,
            "/api/tokens".to_string(),
            Some(json!({
                "namespace": namespace,
                "serviceAccount": service_account,
                "ttlSeconds": ttl.as_secs().max(1),
                "reusable": reusable,
            })),
        ),
        Action::List => (Method::GET, "/api/tokens".to_string(), None),
        Action::Revoke { id } => (Method::DELETE, format!("/api/tokens/{id}"), None),
    };
    let answer = match request(
        &args.control,
        method,
        &path,
        admin.as_deref(),
        body.as_ref(),
    )
    .await
    {
        Ok(v) => v,
        Err(e @ ApiError::Unreachable { .. }) => return Err(e.into()),
        Err(ApiError::Answered { message, .. }) => {
            eprintln!("Error: {message}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match args.output {
        Output::Json => {
            say!("{}", serde_json::to_string_pretty(&answer)?);
        }
        Output::Yaml => {
            say!("{}", yaml_serde::to_string(&answer)?.trim_end());
        }
        Output::Text => print_text(&args.action, &answer),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_text(action: &Action, answer: &Value) {
    let field = |v: &Value, k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    match action {
        Action::Create { .. } => {
            say!("{}", field(answer, "token"));
        }
        Action::Revoke { .. } => {
            say!("revoked bootstrap token {}", field(answer, "id"));
        }
        Action::List => {
            let rows = answer.as_array().cloned().unwrap_or_default();
            say!(
                "{:<26} {:<20} {:<24} {:<22} {:<9} STATE",
                "ID",
                "NAMESPACE",
                "SERVICE ACCOUNT",
                "EXPIRES",
                "REUSABLE"
            );
            for r in &rows {
                let state = if r["revoked"] == json!(true) {
                    "revoked"
                } else if r["used"] == json!(true) {
                    "used"
                } else if r["expired"] == json!(true) {
                    "expired"
                } else {
                    "usable"
                };
                say!(
                    "{:<26} {:<20} {:<24} {:<22} {:<9} {}",
                    field(r, "id"),
                    field(r, "namespace"),
                    field(r, "serviceAccount"),
                    field(r, "expires"),
                    field(r, "reusable"),
                    state
                );
            }
        }
    }
}
