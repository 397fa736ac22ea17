//! `jalur demo`: a whole local fleet migrated under load, in one command.
//!
//! A legacy registry (a simulated Consul — the protocol double of Consul's HTTP API — or a real
//! Consul with `--consul ADDR`) holds the legacy instances of five services; four services also
//! have meshed instances behind `jalur proxy` sidecars (one behind a stock Envoy when installed);
//! a fronting proxy takes the traffic of legacy callers; a built-in load generator sends steady
//! mixed HTTP and gRPC traffic, partly straight to instances found in Consul as legacy code does.
//! Then the migration controller moves `reviews` and `ratings` to the mesh stage by stage, and
//! `payments` — whose meshed instances start failing mid-way — rolls back by itself.

mod fleet;
mod report;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use jalur_control::migrate::{Command, MigrationStatus, Phase};

use fleet::Fleet;

#[derive(clap::Args)]
pub struct Args {
    /// Stop after the report instead of leaving the fleet and its status page up until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// A real Consul agent (host:port or URL) to register the legacy instances in, instead of
    /// the simulated one.
    #[arg(long, env = "JALUR_DEMO_CONSUL")]
    consul: Option<String>,
    /// Requests per second of the built-in load (HTTP and gRPC mixed).
    #[arg(long, default_value_t = 300)]
    rate: u32,
    /// How long each migration stage holds.
    #[arg(long, default_value = "4s", value_parser = crate::control::parse_duration)]
    hold: Duration,
    /// Control plane plaintext xDS address (the Envoy sidecar's; jalur proxies use TLS).
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds_addr: SocketAddr,
    /// Control plane xDS + CA over TLS: every jalur proxy's identity and config.
    #[arg(long, default_value = "127.0.0.1:15012")]
    xds_tls_addr: SocketAddr,
    /// Control plane status API (and migration API) address.
    #[arg(long, default_value = "127.0.0.1:15014")]
    status_addr: SocketAddr,
}

/// The services that move: two all the way, one into a failure.
const MIGRATED: [&str; 2] = ["reviews", "ratings"];
const FAULTY: &str = "payments";

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    say!("jalur demo: a legacy fleet on Consul, moved to the mesh under load");
    let fleet = Fleet::start(&args).await?;
    say!("");
    say!("fleet up:");
    for line in fleet.describe() {
        say!("  {line}");
    }
    say!(
        "  status API:   http://{}/api/migrations",
        fleet.status_addr()
    );
    say!("");
    let load = fleet.start_load(args.rate);
    say!(
        "load: {} rps, HTTP and gRPC mixed, {} targets",
        args.rate,
        fleet.targets().len()
    );
    // Let the load settle on the legacy paths, then move.
    fleet.wait_load(&load, 2 * args.rate as usize).await?;
    let load_start_ms =
        report::unix_ms() - load.samples().last().map_or(0, |s| s.at.as_millis() as u64);
    for name in MIGRATED.iter().chain([&FAULTY]) {
        fleet.command(name, Command::Start)?;
    }
    say!(
        "migrations started: reviews, ratings, payments (stages 5 → 25 → 50 → 100 %, {:?} holds)",
        args.hold
    );
    let mut printed: Vec<(String, usize)> = Vec::new();
    let mut fault_at_ms = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let statuses = fleet.statuses();
        for s in &statuses {
            print_new_transitions(s, &mut printed);
        }
        if fault_at_ms.is_none() && holding_second_stage(&statuses, FAULTY) {
            fleet.inject_fault(FAULTY, 10);
            fault_at_ms = Some(report::unix_ms());
            say!("  !! payments: its meshed instances now answer 10 % errors");
        }
        if statuses.iter().all(|s| s.phase.is_terminal()) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the migrations did not finish within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A little more load, all of it on the final paths.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The load keeps running while the fleet stays up (the status page shows live numbers).
    let (samples, load) = if args.exit {
        (load.stop().await, None)
    } else {
        (load.samples(), Some(load))
    };
    let statuses = fleet.statuses();
    let r = report::Report::build(&fleet, &statuses, &samples, load_start_ms, fault_at_ms);
    say!("");
    for line in r.lines() {
        say!("{line}");
    }
    let ok = r.success();
    if args.exit {
        fleet.stop().await;
    } else {
        say!("");
        say!("the fleet stays up under load: http://{}/api/migrations, `jalur migrate status reviews --control {}`; Ctrl-C to stop", fleet.status_addr(), fleet.status_addr());
        crate::control::wait_for_signal().await;
        if let Some(load) = load {
            load.stop().await;
        }
        fleet.stop().await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Stage 2 (25 %) holding: enough of `name`'s traffic is on the mesh path for the gate to see
/// a 10 % fault within its window.
fn holding_second_stage(statuses: &[MigrationStatus], name: &str) -> bool {
    statuses.iter().any(|s| {
        s.name == name
            && s.phase == Phase::Holding
            && s.stage == Some(2)
            && s.held_s >= 1.5
            && s.last_gates.as_ref().is_some_and(|g| g.mesh.requests > 0)
    })
}

fn print_new_transitions(s: &MigrationStatus, printed: &mut Vec<(String, usize)>) {
    let seen = printed
        .iter()
        .find(|(n, _)| *n == s.name)
        .map_or(0, |(_, k)| *k);
    for t in s.history.iter().skip(seen) {
        let observed = t
            .gates
            .as_ref()
            .and_then(|g| g.observed_mesh_percent)
            .map(|o| format!(" (last window: {o:.1} % mesh)"))
            .unwrap_or_default();
        let stage = t
            .stage
            .map(|i| format!("stage {i}/{} ", s.stages.len()))
            .unwrap_or_default();
        say!(
            "  {:<9} {:?} -> {:?}  {}{} % mesh{}  {}",
            s.name,
            t.from,
            t.to,
            stage,
            t.weight,
            observed,
            t.reason
        );
    }
    printed.retain(|(n, _)| *n != s.name);
    printed.push((s.name.clone(), s.history.len()));
}
