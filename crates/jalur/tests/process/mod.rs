//! Real processes for the lifecycle tests: `jalur control` and `jalur proxy` as the binary cargo
//! built, on OS-chosen loopback ports, signalled the way an orchestrator does (SIGTERM for a
//! rolling restart, SIGKILL for a crash). Their logs go to files in a temp dir, shown when a
//! test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use jalur_testkit::{assert_eventually, http_get, repo_root, ChildGuard};
use serde_json::Value;

pub const NS: &str = "bookinfo";

/// The binary, logging at info (`JALUR_TEST_LOG` overrides, e.g.
/// `info,jalur_proxy::http=debug` to see why a request failed).
pub fn jalur() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jalur"));
    let log = std::env::var("JALUR_TEST_LOG").unwrap_or_else(|_| "info".into());
    c.current_dir(repo_root())
        .env("RUST_LOG", log)
        .env("NO_COLOR", "1");
    c
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid` with kill(1).
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Reads the child's stdout until `want` addresses were printed after their prefixes, then
/// keeps draining it on a thread (as a terminal would).
fn read_addresses(child: &mut ChildGuard, prefixes: &[&str]) -> Vec<SocketAddr> {
    let stdout = child.child_mut().stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut found: Vec<Option<SocketAddr>> = vec![None; prefixes.len()];
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        for (i, prefix) in prefixes.iter().enumerate() {
            if let Some(at) = line.find(prefix) {
                let rest = &line[at + prefix.len()..];
                let word = rest.split_whitespace().next().unwrap_or("");
                let addr = word.trim_start_matches("http://").split('/').next();
                found[i] = addr.and_then(|a| a.parse().ok());
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    found
        .into_iter()
        .zip(prefixes)
        .map(|(a, p)| a.unwrap_or_else(|| panic!("no {p:?} address printed")))
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!("--- {} ---\n{}", path.display(), all[from..].join("\n"))
}

/// `jalur control` on a config directory.
pub struct ControlProcess {
    child: ChildGuard,
    pub xds: SocketAddr,
    /// 15012: ADS and the CA over TLS.
    pub xds_tls: SocketAddr,
    pub status: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
    starts: u32,
}

impl ControlProcess {
    /// Starts it with the xDS port the OS picks; `extra` flags are kept for restarts.
    pub fn start(config: &Path, extra: &[&str]) -> ControlProcess {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, [xds, status, xds_tls], log) =
            Self::spawn(config, ["127.0.0.1:0", "127.0.0.1:0"], &extra, 1);
        ControlProcess {
            child,
            xds,
            xds_tls,
            status,
            config: config.to_path_buf(),
            log,
            extra,
            starts: 1,
        }
    }

    fn spawn(
        config: &Path,
        [xds, xds_tls]: [&str; 2],
        extra: &[String],
        start: u32,
    ) -> (ChildGuard, [SocketAddr; 3], PathBuf) {
        let log = config
            .parent()
            .unwrap_or(config)
            .join(format!("control-{start}.log"));
        let mut cmd = jalur();
        cmd.arg("control")
            .arg("--config")
            .arg(config)
            .args(["--xds-addr", xds, "--status-addr", "127.0.0.1:0"])
            // Plaintext xDS for these drills; 15012 has its own tests (secure_xds.rs).
            .args(["--insecure-xds", "--xds-tls-addr", xds_tls])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("control log"));
        let mut child = ChildGuard::spawn("jalur control", &mut cmd).expect("spawn jalur control");
        let addrs = read_addresses(&mut child, &["xDS:", "status:", "xDS+CA:"]);
        (child, [addrs[0], addrs[1], addrs[2]], log)
    }

    /// SIGKILL: no deregistration, no goodbye; streams break.
    pub fn kill9(&mut self) {
        signal(self.child.id(), "KILL");
        let status = self.child.child_mut().wait().expect("reap jalur control");
        assert!(!status.success(), "killed: {status}");
    }

    /// Starts it again on the same xDS address and config directory.
    pub fn restart(&mut self) {
        self.starts += 1;
        let (xds, tls) = (self.xds.to_string(), self.xds_tls.to_string());
        let (child, [xds, status, xds_tls], log) =
            Self::spawn(&self.config, [&xds, &tls], &self.extra, self.starts);
        assert_eq!(xds, self.xds, "restarted on its old xDS address");
        assert_eq!(xds_tls, self.xds_tls, "restarted on its old TLS address");
        (self.child, self.status, self.log) = (child, status, log);
    }

    pub async fn get_json(&self, path: &str) -> Result<Value, String> {
        let (status, _, body) = http_get(self.status, "control", path, &[]).await?;
        if status != 200 {
            return Err(format!("GET {path}: {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
    }

    /// `(host, address:target_port)` of every workload the proxies registered.
    pub async fn proxy_workloads(&self) -> Result<Vec<(String, String)>, String> {
        let registry = self.get_json("/debug/registry").await?;
        let proxies = registry["registries"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "proxies"))
            .ok_or_else(|| format!("no proxies registry: {registry}"))?;
        let mut out: Vec<(String, String)> = proxies["workloads"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .map(|w| {
                        let host = w["host"].as_str().unwrap_or("").to_string();
                        let port = w["target_port"].as_u64().unwrap_or(0);
                        let address = w["address"].as_str().unwrap_or("");
                        (host, format!("{address}:{port}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        Ok(out)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 60)
    }
}

/// What one `jalur proxy` is.
#[derive(Clone, Debug)]
pub struct ProxySpec {
    pub xds: SocketAddr,
    pub service: String,
    pub app_port: Option<u16>,
    /// `name:port` service ports.
    pub ports: Vec<String>,
    pub version: String,
    /// 0: the OS picks.
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub extra: Vec<String>,
    /// `--xds-address` instead of the plaintext `xds` (e.g. `https://…:15012`).
    pub xds_address: Option<String>,
}

impl ProxySpec {
    /// A caller's sidecar: announces no workload.
    pub fn caller(xds: SocketAddr, service: &str) -> ProxySpec {
        ProxySpec {
            xds,
            service: service.into(),
            app_port: None,
            ports: Vec::new(),
            version: "v1".into(),
            outbound_port: 0,
            inbound_port: 0,
            extra: Vec::new(),
            xds_address: None,
        }
    }

    /// A service instance's sidecar in front of the app on `app_port`.
    pub fn instance(xds: SocketAddr, service: &str, app_port: u16, ports: &[&str]) -> ProxySpec {
        ProxySpec {
            app_port: Some(app_port),
            ports: ports.iter().map(|p| p.to_string()).collect(),
            ..ProxySpec::caller(xds, service)
        }
    }
}

/// A running `jalur proxy`.
pub struct ProxyProcess {
    child: ChildGuard,
    pub spec: ProxySpec,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub health: SocketAddr,
    pub stats: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    /// Starts it; its log goes to `log_dir/<service>-<pid>.log`.
    pub fn start(spec: &ProxySpec, log_dir: &Path) -> ProxyProcess {
        let mut cmd = jalur();
        let xds = spec
            .xds_address
            .clone()
            .unwrap_or_else(|| spec.xds.to_string());
        cmd.args(["proxy", "--xds-address", &xds])
            .args(["--service", &spec.service, "--namespace", NS])
            .args(["--labels", &format!("version={}", spec.version)])
            .args(["--listen-address", "127.0.0.1"])
            .args(["--outbound-port", &spec.outbound_port.to_string()])
            .args(["--inbound-port", &spec.inbound_port.to_string()])
            .args([
                "--admin-addr",
                "127.0.0.1:0",
                "--health-addr",
                "127.0.0.1:0",
            ])
            .args(["--stats-addr", "127.0.0.1:0"]);
        if let Some(port) = spec.app_port {
            cmd.args(["--app-port", &port.to_string()]);
        }
        if !spec.ports.is_empty() {
            cmd.args(["--ports", &spec.ports.join(",")]);
        }
        let log = log_dir.join(format!(
            "{}-{}-{}.log",
            spec.service,
            spec.inbound_port,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        cmd.args(&spec.extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("proxy log"));
        let mut child = ChildGuard::spawn("jalur proxy", &mut cmd).expect("spawn jalur proxy");
        let a = read_addresses(
            &mut child,
            &["outbound:", "inbound:", "admin:", "stats:", "health:"],
        );
        ProxyProcess {
            child,
            spec: spec.clone(),
            outbound: a[0],
            inbound: a[1],
            admin: a[2],
            stats: a[3],
            health: a[4],
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits (polling) for the process to end, up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let log = self.log_tail();
        let child = &mut self.child;
        assert_eventually(&format!("jalur proxy exits\n{log}"), within, || {
            let exited = child.exited();
            async move { exited.ok_or_else(|| "still running".to_string()) }
        })
        .await
    }

    /// Status of `/healthz/ready` on the health port.
    pub async fn ready_status(&self) -> Result<u16, String> {
        http_get(self.health, "health", "/healthz/ready", &[])
            .await
            .map(|r| r.0)
    }

    /// Waits until `/healthz/ready` answers 200.
    pub async fn wait_ready(&self) {
        assert_eventually(
            &format!("jalur proxy {} ready", self.spec.service),
            Duration::from_secs(30),
            || async {
                match self.ready_status().await? {
                    200 => Ok(()),
                    other => Err(format!("{other}")),
                }
            },
        )
        .await;
    }

    /// The admin `/config_dump`'s xDS status.
    pub async fn xds_status(&self) -> Result<Value, String> {
        let (_, _, body) = http_get(self.admin, "admin", "/config_dump", &[]).await?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok(v["xds"].clone())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A temp dir holding a config directory `config/` with `files`, and the processes' logs.
pub struct Workdir {
    pub root: PathBuf,
    /// Owns `root`: removed on drop, kept (and named) when the test is panicking.
    dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new(prefix: &str, files: &[(&str, String)]) -> Workdir {
        let dir = tempfile::TempDir::with_prefix(prefix).expect("temp dir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("config")).expect("config dir");
        for (name, text) in files {
            std::fs::write(root.join("config").join(name), text).expect("write config");
        }
        Workdir { root, dir }
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("logs kept in {}", self.root.display());
        }
    }
}

/// A service with `ports` (`name:number:PROTOCOL`) whose instances come from the sidecars that
/// announce it; retries off, so a failure shows as one.
pub fn service_config(name: &str, ports: &[(&str, u16, &str)]) -> Vec<(&'static str, String)> {
    let host = format!("{name}.{NS}.svc.cluster.local");
    let ports: String = ports
        .iter()
        .map(|(n, p, proto)| format!("  - {{number: {p}, name: {n}, protocol: {proto}}}\n"))
        .collect();
    vec![
        (
            "service.yaml",
            format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n{ports}"),
        ),
        (
            "vs.yaml",
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  hosts: [{name}]\n  http:\n  - retries: {{attempts: 0}}\n    route:\n    - destination: {{host: {name}}}\n"),
        ),
    ]
}
