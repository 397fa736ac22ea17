//! `ads_load`: thousands of simulated Envoy-like sidecars on one control plane, for
//! `bench/control.sh` (issue 12). Not a test and not shipped: a load tool.
//!
//! Each client opens one ADS stream (SotW or delta) with a sidecar's node id and metadata,
//! subscribes to clusters and listeners, then to the endpoint assignments of its EDS clusters
//! and the route configurations its listeners name, and ACKs every response, as Envoy does.
//! The tool then changes the config itself (it owns the files under `--config-dir`): an
//! endpoint's address, then a route's match prefix, each carrying a unique marker, and times
//! how long every client takes to receive and ACK a response whose resources contain the
//! marker's bytes. It reports the initial sync, the per-change convergence (p50/p99/max over
//! clients), the control plane's RSS and CPU (from `/proc/PID`, `--control-pid`), and the
//! streams that ended while they should not have.
//!
//! ```sh
//! ads_load --config-dir DIR --init-config            # write the services, then start `jalur control`
//! ads_load --config-dir DIR --xds 127.0.0.1:15010 --clients 1000 --mode delta --control-pid PID
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use envoy_types::pb::envoy::config::cluster::v3::{cluster::ClusterDiscoveryType, Cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Any, Struct, Value};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const NAMESPACE: &str = "bench";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Sotw,
    Delta,
}

#[derive(Debug, Parser)]
#[command(about = "Simulated Envoy-like ADS clients against a jalur control plane")]
struct Args {
    /// Directory the control plane reads (`jalur control --config DIR`); this tool writes it.
    #[arg(long)]
    config_dir: PathBuf,
    /// Write the services (and nothing else) into --config-dir, then exit.
    #[arg(long)]
    init_config: bool,
    /// Services in the config, each a ServiceEntry with --endpoints addresses and a VirtualService.
    #[arg(long, default_value_t = 20)]
    services: usize,
    #[arg(long, default_value_t = 3)]
    endpoints: usize,
    /// With --init-config: scope each deployment with an Istio `Sidecar` to this many services
    /// (its own share, plus svc-0 and svc-1 where the changes happen); 0: no Sidecar.
    #[arg(long, default_value_t = 0)]
    scoped: usize,
    /// The control plane's plaintext ADS address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    xds: String,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, value_enum, default_value = "sotw")]
    mode: Mode,
    /// Deployments the clients belong to (their app label), round robin: clients of one
    /// deployment see the same config.
    #[arg(long, default_value_t = 20)]
    deployments: usize,
    /// New streams per second while connecting (0: all at once).
    #[arg(long, default_value_t = 2000)]
    connect_rate: u32,
    #[arg(long, default_value_t = 5)]
    endpoint_changes: usize,
    #[arg(long, default_value_t = 3)]
    route_changes: usize,
    /// Seconds between changes, so each is measured on a quiet plane.
    #[arg(long = "pause-secs", default_value = "1", value_parser = seconds)]
    pause: Duration,
    /// Seconds after which a phase gives up (what did not converge is reported).
    #[arg(long = "timeout-secs", default_value = "120", value_parser = seconds)]
    timeout: Duration,
    /// The control plane's PID, for its RSS and CPU time.
    #[arg(long)]
    control_pid: Option<u32>,
    /// Worker threads of this tool's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// A label for the result line.
    #[arg(long, default_value = "")]
    label: String,
}

fn seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.init_config {
        std::fs::create_dir_all(&args.config_dir)?;
        for i in 0..args.services {
            write_service(&args.config_dir, &args, i, None, None)?;
        }
        if args.scoped > 0 {
            write_sidecars(&args.config_dir, &args)?;
        }
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// A marker the clients look for in the resources they receive.
#[derive(Debug, Clone, Default)]
struct Marker {
    id: u64,
    bytes: Vec<u8>,
}

/// What every client reports to the coordinator.
enum Report {
    Synced(usize, Instant),
    Saw(u64, Instant),
    Dropped(usize, String),
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(args);
    let (marker_tx, marker_rx) = watch::channel(Marker::default());
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let dropped = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu_before = cpu_seconds(args.control_pid);
    let spawner = {
        let args = args.clone();
        let marker_rx = marker_rx.clone();
        let dropped = dropped.clone();
        tokio::spawn(async move {
            let gap = (args.connect_rate > 0)
                .then(|| Duration::from_secs_f64(1.0 / f64::from(args.connect_rate)));
            let mut next = tokio::time::Instant::now();
            for i in 0..args.clients {
                if let Some(gap) = gap {
                    next += gap;
                    tokio::time::sleep_until(next).await;
                }
                let client = Client {
                    index: i,
                    node: node(i, args.deployments),
                    addr: format!("http://{}", args.xds),
                    mode: args.mode,
                    marker: marker_rx.clone(),
                    reports: report_tx.clone(),
                    dropped: dropped.clone(),
                };
                tokio::spawn(client.run());
            }
        })
    };

    // Initial sync: every client holds CDS, EDS, LDS and RDS.
    let mut synced = vec![None; args.clients];
    let mut count = 0;
    let deadline = Instant::now() + args.timeout;
    while count < args.clients {
        let Some(report) = recv_until(&mut reports, deadline).await else {
            break;
        };
        match report {
            Report::Synced(i, at) => {
                if synced[i].is_none() {
                    synced[i] = Some(at - started);
                    count += 1;
                }
            }
            Report::Dropped(i, why) => eprintln!("client {i}: stream ended during sync: {why}"),
            Report::Saw(..) => {}
        }
    }
    spawner.abort();
    let mut sync_times: Vec<f64> = synced.iter().flatten().map(Duration::as_secs_f64).collect();
    sync_times.sort_by(f64::total_cmp);
    let initial = sync_times.last().copied().unwrap_or(f64::NAN);
    let cpu_sync = cpu_seconds(args.control_pid) - cpu_before;
    let rss_synced = rss_mib(args.control_pid);
    eprintln!(
        "{} of {} clients synced in {initial:.2} s (control plane: {rss_synced:.0} MiB RSS, {cpu_sync:.1} CPU-s)",
        count, args.clients
    );

    // Changes: endpoint changes first, then route changes, one at a time.
    let mut marker_id = 0u64;
    let mut results = Vec::new();
    for (kind, n) in [
        ("endpoint", args.endpoint_changes),
        ("route", args.route_changes),
    ] {
        let mut lat = Vec::new();
        let mut worst_missing = 0;
        let mut cpu = 0.0;
        for k in 0..n {
            tokio::time::sleep(args.pause).await;
            marker_id += 1;
            let text = match kind {
                "endpoint" => format!("10.200.{}.{}", marker_id / 250, marker_id % 250 + 1),
                _ => format!("/bench-route-{marker_id}"),
            };
            marker_tx.send_replace(Marker {
                id: marker_id,
                bytes: text.clone().into_bytes(),
            });
            let cpu0 = cpu_seconds(args.control_pid);
            let t0 = Instant::now();
            match kind {
                "endpoint" => write_service(&args.config_dir, &args, 0, Some(&text), None)?,
                _ => write_service(&args.config_dir, &args, 1, None, Some(&text))?,
            }
            let (times, missing) =
                collect(&mut reports, marker_id, t0, count, args.timeout, &dropped).await;
            cpu += cpu_seconds(args.control_pid) - cpu0;
            worst_missing = worst_missing.max(missing);
            eprintln!(
                "{kind} change {}: {} clients in {:.3} s (p99 {:.3} s){}",
                k + 1,
                times.len(),
                times.last().copied().unwrap_or(f64::NAN),
                percentile(&times, 0.99),
                if missing > 0 {
                    format!(", {missing} never saw it")
                } else {
                    String::new()
                }
            );
            lat.extend(times);
        }
        lat.sort_by(f64::total_cmp);
        results.push((kind, n, lat, worst_missing, cpu));
    }

    let rss_end = rss_mib(args.control_pid);
    let dropped = dropped.load(Ordering::SeqCst);
    let mode = match args.mode {
        Mode::Sotw => "SotW",
        Mode::Delta => "delta",
    };
    // One machine-readable line for bench/control.sh, then a readable summary.
    let mut line = serde_json::json!({
        "label": args.label,
        "clients": args.clients,
        "synced": count,
        "mode": mode,
        "initial_sync_s": initial,
        "initial_sync_p50_s": percentile(&sync_times, 0.5),
        "rss_mib_synced": rss_synced,
        "rss_mib_end": rss_end,
        "cpu_s_sync": cpu_sync,
        "dropped_streams": dropped,
    });
    for (kind, n, lat, missing, cpu) in &results {
        line[format!("{kind}_p50_s")] = percentile(lat, 0.5).into();
        line[format!("{kind}_p99_s")] = percentile(lat, 0.99).into();
        line[format!("{kind}_max_s")] = lat.last().copied().unwrap_or(f64::NAN).into();
        line[format!("{kind}_missing")] = (*missing).into();
        line[format!("{kind}_cpu_s_per_change")] = (cpu / (*n).max(1) as f64).into();
    }
    println!("{line}");
    Ok(())
}

async fn recv_until(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    deadline: Instant,
) -> Option<Report> {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, reports.recv())
        .await
        .ok()
        .flatten()
}

/// Waits until `want` clients saw marker `id`; their latencies (sorted) and how many never did.
async fn collect(
    reports: &mut mpsc::UnboundedReceiver<Report>,
    id: u64,
    t0: Instant,
    want: usize,
    timeout: Duration,
    dropped: &AtomicUsize,
) -> (Vec<f64>, usize) {
    let mut times = Vec::with_capacity(want);
    let deadline = t0 + timeout;
    while times.len() < want {
        match recv_until(reports, deadline).await {
            Some(Report::Saw(seen, at)) if seen == id => times.push((at - t0).as_secs_f64()),
            Some(Report::Dropped(i, why)) => {
                eprintln!(
                    "client {i}: stream ended: {why} ({} so far)",
                    dropped.load(Ordering::SeqCst)
                );
            }
            Some(_) => {}
            None => break,
        }
    }
    times.sort_by(f64::total_cmp);
    let missing = want - times.len();
    (times, missing)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A sidecar's node: Istio's id shape, its namespace, app label and mTLS label.
fn node(i: usize, deployments: usize) -> Node {
    let app = format!("app-{}", i % deployments.max(1));
    let ip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
    let string = |v: &str| Value {
        kind: Some(Kind::StringValue(v.to_string())),
    };
    let mut labels = Struct::default();
    labels.fields.insert("app".into(), string(&app));
    let mut md = Struct::default();
    md.fields.insert("NAMESPACE".into(), string(NAMESPACE));
    md.fields.insert("SERVICE_ACCOUNT".into(), string(&app));
    md.fields.insert("INSTANCE_IPS".into(), string(&ip));
    md.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(labels)),
        },
    );
    Node {
        id: format!("sidecar~{ip}~{app}-{i}.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"),
        cluster: format!("{app}.{NAMESPACE}"),
        user_agent_name: "envoy".into(),
        metadata: Some(md),
        ..Node::default()
    }
}

/// Service `i`: a ServiceEntry with its endpoints (the first replaced by `endpoint`) and a
/// VirtualService (with an extra match prefix `route`).
fn write_service(
    dir: &Path,
    args: &Args,
    i: usize,
    endpoint: Option<&str>,
    route: Option<&str>,
) -> std::io::Result<()> {
    let host = format!("svc-{i}.{NAMESPACE}.svc.cluster.local");
    let mut endpoints = String::new();
    for e in 0..args.endpoints {
        let address = match (e, endpoint) {
            (0, Some(a)) => a.to_string(),
            _ => format!("10.1.{i}.{}", e + 1),
        };
        endpoints.push_str(&format!("  - {{address: {address}}}\n"));
    }
    let extra = route
        .map(|prefix| {
            format!("  - match: [{{uri: {{prefix: \"{prefix}\"}}}}]\n    route: [{{destination: {{host: {host}}}}}]\n")
        })
        .unwrap_or_default();
    let text = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 8080, name: http, protocol: HTTP}}]\n  endpoints:\n{endpoints}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-{i}, namespace: {NAMESPACE}}}\nspec:\n  hosts: [{host}]\n  http:\n{extra}  - route: [{{destination: {{host: {host}}}}}]\n"
    );
    // Atomically, as config-sync tools do: the plane never reads half a file.
    let path = dir.join(format!("svc-{i}.yaml"));
    let tmp = dir.join(format!(".svc-{i}.yaml.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// One `Sidecar` per deployment `app-K`: it sees svc-0, svc-1 and `scoped` services from K on.
fn write_sidecars(dir: &Path, args: &Args) -> std::io::Result<()> {
    let mut text = String::new();
    for k in 0..args.deployments.max(1) {
        let mut hosts: BTreeSet<usize> = [0, 1].into();
        hosts.extend((0..args.scoped).map(|j| (k + j) % args.services.max(1)));
        let hosts: Vec<String> = hosts
            .iter()
            .map(|i| format!("\"./svc-{i}.{NAMESPACE}.svc.cluster.local\""))
            .collect();
        text.push_str(&format!(
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: app-{k}, namespace: {NAMESPACE}}}\nspec:\n  workloadSelector: {{labels: {{app: app-{k}}}}}\n  egress:\n  - hosts: [{}]\n---\n",
            hosts.join(", ")
        ));
    }
    std::fs::write(dir.join("sidecars.yaml"), text)
}

/// utime + stime of `pid` in seconds (0 without a pid).
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; here 11 and 12 (state is index 0).
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Client {
    index: usize,
    node: Node,
    addr: String,
    mode: Mode,
    marker: watch::Receiver<Marker>,
    reports: mpsc::UnboundedSender<Report>,
    dropped: Arc<AtomicUsize>,
}

/// What a client has asked for and received.
#[derive(Default)]
struct Held {
    eds_names: BTreeSet<String>,
    rds_names: BTreeSet<String>,
    got: [bool; 4],
    synced: bool,
    seen_marker: u64,
}

impl Held {
    fn note(&mut self, type_url: &str) {
        let i = match type_url {
            CDS => 0,
            EDS => 1,
            LDS => 2,
            RDS => 3,
            _ => return,
        };
        self.got[i] = true;
    }

    fn complete(&self) -> bool {
        self.got[0]
            && self.got[2]
            && (self.eds_names.is_empty() || self.got[1])
            && (self.rds_names.is_empty() || self.got[3])
    }
}

impl Client {
    async fn run(self) {
        // Reconnect after a drop, as Envoy does; each drop is counted.
        loop {
            let why = match self.mode {
                Mode::Sotw => self.sotw().await,
                Mode::Delta => self.delta().await,
            };
            self.dropped.fetch_add(1, Ordering::SeqCst);
            let _ = self.reports.send(Report::Dropped(self.index, why));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn channel(
        &self,
    ) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.addr.clone())
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20))
    }

    /// Checks a response's resources for the current marker; reports it once per marker.
    fn check_marker(&self, held: &mut Held, resources: impl Iterator<Item = Vec<u8>>) {
        let marker = self.marker.borrow().clone();
        if marker.id == 0 || held.seen_marker >= marker.id {
            return;
        }
        if resources.into_iter().any(|r| contains(&r, &marker.bytes)) {
            held.seen_marker = marker.id;
            let _ = self.reports.send(Report::Saw(marker.id, Instant::now()));
        }
    }

    fn check_synced(&self, held: &mut Held) {
        if !held.synced && held.complete() {
            held.synced = true;
            let _ = self
                .reports
                .send(Report::Synced(self.index, Instant::now()));
        }
    }

    async fn sotw(&self) -> String {
        let mut client = match self.channel().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
        let request = |type_url: &str, names: &BTreeSet<String>, version: &str, nonce: &str| {
            DiscoveryRequest {
                type_url: type_url.to_string(),
                resource_names: names.iter().cloned().collect(),
                version_info: version.to_string(),
                response_nonce: nonce.to_string(),
                ..Default::default()
            }
        };
        let mut first = request(CDS, &BTreeSet::new(), "", "");
        first.node = Some(self.node.clone());
        let _ = tx.send(first).await;
        let _ = tx.send(request(LDS, &BTreeSet::new(), "", "")).await;
        let mut inbound = match client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => return format!("open: {e}"),
        };
        let mut held = Held::default();
        loop {
            let response: DiscoveryResponse = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return "the server ended the stream".into(),
                Err(e) => return format!("stream error: {e}"),
            };
            let mut follow = Vec::new();
            let names = match response.type_url.as_str() {
                CDS => {
                    let eds = eds_names(&response.resources);
                    if eds != held.eds_names {
                        held.eds_names = eds;
                        follow.push(request(EDS, &held.eds_names, "", ""));
                    }
                    BTreeSet::new()
                }
                LDS => {
                    let rds = rds_names(&response.resources);
                    if rds != held.rds_names {
                        held.rds_names = rds;
                        follow.push(request(RDS, &held.rds_names, "", ""));
                    }
                    BTreeSet::new()
                }
                EDS => held.eds_names.clone(),
                RDS => held.rds_names.clone(),
                _ => BTreeSet::new(),
            };
            let ack = request(
                &response.type_url,
                &names,
                &response.version_info,
                &response.nonce,
            );
            if tx.send(ack).await.is_err() {
                return "request channel closed".into();
            }
            for f in follow {
                let _ = tx.send(f).await;
            }
            held.note(&response.type_url);
            self.check_marker(&mut held, response.resources.into_iter().map(|a| a.value));
            self.check_synced(&mut held);
        }
    }

    async fn delta(&self) -> String {
        let mut client = match self.channel().await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let subscribe = |type_url: &str, names: Vec<String>| DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names_subscribe: names,
            ..Default::default()
        };
        let mut first = subscribe(CDS, vec!["*".into()]);
        first.node = Some(self.node.clone());
        let _ = tx.send(first).await;
        let _ = tx.send(subscribe(LDS, vec!["*".into()])).await;
        let mut inbound = match client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => return format!("open: {e}"),
        };
        let mut held = Held::default();
        loop {
            let response: DeltaDiscoveryResponse = match inbound.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return "the server ended the stream".into(),
                Err(e) => return format!("stream error: {e}"),
            };
            let bodies: Vec<Any> = response
                .resources
                .iter()
                .filter_map(|r| r.resource.clone())
                .collect();
            let mut follow = Vec::new();
            match response.type_url.as_str() {
                CDS => {
                    let new: Vec<String> = eds_names(&bodies)
                        .into_iter()
                        .filter(|n| held.eds_names.insert(n.clone()))
                        .collect();
                    if !new.is_empty() {
                        follow.push(subscribe(EDS, new));
                    }
                }
                LDS => {
                    let new: Vec<String> = rds_names(&bodies)
                        .into_iter()
                        .filter(|n| held.rds_names.insert(n.clone()))
                        .collect();
                    if !new.is_empty() {
                        follow.push(subscribe(RDS, new));
                    }
                }
                _ => {}
            }
            let ack = DeltaDiscoveryRequest {
                type_url: response.type_url.clone(),
                response_nonce: response.nonce.clone(),
                ..Default::default()
            };
            if tx.send(ack).await.is_err() {
                return "request channel closed".into();
            }
            for f in follow {
                let _ = tx.send(f).await;
            }
            held.note(&response.type_url);
            self.check_marker(&mut held, bodies.into_iter().map(|a| a.value));
            self.check_synced(&mut held);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The EDS service names of the clusters in a CDS response.
fn eds_names(resources: &[Any]) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
        .filter(
            |c| matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == 3),
        )
        .map(|c| {
            c.eds_cluster_config
                .map(|e| e.service_name)
                .filter(|s| !s.is_empty())
                .unwrap_or(c.name)
        })
        .collect()
}

/// The route configurations the listeners of an LDS response ask for over RDS.
fn rds_names(resources: &[Any]) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
        .flat_map(|l| l.filter_chains)
        .flat_map(|fc| fc.filters)
        .filter_map(|f| match f.config_type? {
            filter::ConfigType::TypedConfig(any) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier? {
            RouteSpecifier::Rds(rds) => Some(rds.route_config_name),
            _ => None,
        })
        .collect()
}
