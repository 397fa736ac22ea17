//! `jalur proxy-status`: the sync table of every xDS client, like `istioctl proxy-status`.

use std::process::ExitCode;

use bytes::Bytes;
use clap::ValueEnum;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// Control plane status API address.
    #[arg(long, env = "JALUR_CONTROL", default_value = "127.0.0.1:15014")]
    control: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let url = format!("http://{}/debug/syncz", args.control);
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let resp = client.get(url.parse()?).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the control plane at {}: {} (is `jalur control` running? set --control)",
            args.control,
            crate::api::cause(&e)
        )
    })?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status.is_success(),
        "{url} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let clients: Vec<Value> = serde_json::from_slice(&body)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&clients)?),
        Output::Yaml => print!("{}", yaml_serde::to_string(&clients)?),
        Output::Table => print_table(&clients),
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(clients: &[Value]) {
    let mut rows = vec![[
        "NAME", "KIND", "CDS", "LDS", "EDS", "RDS", "MODE", "VERSION", "IDENTITY",
    ]
    .map(String::from)
    .to_vec()];
    for c in clients {
        let s = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let mut row = vec![s("node_id"), s("kind")];
        for t in ["cds", "lds", "eds", "rds"] {
            row.push(type_state(c.get("types").and_then(|ts| ts.get(t))));
        }
        row.push(s("mode"));
        row.push(s("client_version"));
        // The SPIFFE id the client certificate proved on 15012; "-" on the plaintext port.
        row.push(
            Some(s("identity"))
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| "-".into()),
        );
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

/// SYNCED (last push ACKed), NACKED (last push rejected), STALE (push not yet ACKed), NOT SENT.
fn type_state(t: Option<&Value>) -> String {
    let Some(t) = t else { return "NOT SENT".into() };
    let field = |k: &str| t.get(k).and_then(Value::as_str).unwrap_or("");
    if t.get("last_nack").is_some_and(|n| !n.is_null())
        && field("acked_nonce") != field("sent_nonce")
    {
        "NACKED".into()
    } else if field("sent_nonce").is_empty() {
        "NOT SENT".into()
    } else if field("acked_nonce") == field("sent_nonce") {
        "SYNCED".into()
    } else {
        "STALE".into()
    }
}
