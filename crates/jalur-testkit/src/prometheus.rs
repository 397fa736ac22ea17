//! A real Prometheus (Debian's `prometheus`, installed by scripts/install-peers) scraping the
//! proxies' `/stats/prometheus` for a test: its own temp config, targets file and TSDB, bound to
//! loopback, killed and cleaned up when dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use jalur_testkit::prometheus::{prometheus_binary, Prometheus};
//! use jalur_testkit::require_peer;
//! # async fn example(proxy_stats: std::net::SocketAddr) -> Result<(), String> {
//! let Some(binary) = require_peer("prometheus", prometheus_binary()) else { return Ok(()) };
//! let prom = Prometheus::start(&binary, &[proxy_stats], Duration::from_secs(1)).await?;
//! let result = prom.query("sum(istio_requests_total)").await?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::http_get;
use crate::eventually::eventually;
use crate::peers::on_path;
use crate::process::ChildGuard;

/// How long Prometheus may take to answer `/-/ready` with 200.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The scrape job's name (the `job` label of every series it scrapes).
pub const JOB: &str = "jalur-proxies";
const LOG_TAIL_LINES: usize = 30;
/// Starts retried when the port picked for Prometheus was taken before it bound it.
const PORT_ATTEMPTS: usize = 3;

/// Prometheus: `$JALUR_PROMETHEUS`, else `/usr/bin/prometheus` (Debian), else the one on PATH.
pub fn prometheus_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("JALUR_PROMETHEUS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    Some(PathBuf::from("/usr/bin/prometheus"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("prometheus"))
}

/// A running Prometheus; killed when dropped. Its files (config, targets, TSDB, log) live in a
/// temp dir that is removed on drop, or kept (and named) when it failed to start or the test
/// is panicking.
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`, what `PrometheusSource::new` takes.
    pub url: String,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: ChildGuard,
    keep_files: bool,
}

impl Prometheus {
    /// Starts `binary` scraping `/stats/prometheus` on `targets` every `scrape_interval` (job
    /// [`JOB`], targets from a file [`Prometheus::set_targets`] rewrites), and waits until it is
    /// ready.
    pub async fn start(
        binary: &Path,
        targets: &[SocketAddr],
        scrape_interval: Duration,
    ) -> Result<Prometheus, String> {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once(binary, targets, scrape_interval).await {
                Ok(prometheus) => return Ok(prometheus),
                Err(Start::PortTaken(err)) => last_error = err,
                Err(Start::Failed(err)) => return Err(err),
            }
        }
        Err(last_error)
    }

    async fn start_once(
        binary: &Path,
        targets: &[SocketAddr],
        scrape_interval: Duration,
    ) -> Result<Prometheus, Start> {
        let failed = Start::Failed;
        let dir = tempfile::TempDir::with_prefix("jalur-prometheus-")
            .map_err(|err| failed(format!("cannot make a temp dir for Prometheus: {err}")))?;
        let config_path = dir.path().join("prometheus.yml");
        let targets_path = dir.path().join("targets.json");
        let log_path = dir.path().join("prometheus.log");
        write_targets(&targets_path, targets).map_err(failed)?;
        let yaml = yaml_serde::to_string(&config(&targets_path, scrape_interval))
            .map_err(|err| failed(format!("cannot render the Prometheus config: {err}")))?;
        std::fs::write(&config_path, yaml)
            .map_err(|err| failed(format!("cannot write {}: {err}", config_path.display())))?;
        let log = std::fs::File::create(&log_path)
            .map_err(|err| failed(format!("cannot create {}: {err}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|err| failed(format!("cannot share {}: {err}", log_path.display())))?;

        let addr = free_port().map_err(failed)?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = ChildGuard::spawn("prometheus", &mut command).map_err(failed)?;
        let mut prometheus = Prometheus {
            url: format!("http://{addr}"),
            addr,
            dir,
            child,
            keep_files: false,
        };
        prometheus.wait_until_ready().await?;
        Ok(prometheus)
    }

    async fn wait_until_ready(&mut self) -> Result<(), Start> {
        let addr = self.addr;
        let child = &mut self.child;
        // Ok(Err(..)) ends the wait at once: Prometheus exited and will not come up.
        let ready = eventually(START_TIMEOUT, || {
            let exited = child.exited();
            async move {
                if let Some(status) = exited {
                    return Ok(Err(format!("Prometheus exited ({status})")));
                }
                let (status, _, body) = http_get(addr, "127.0.0.1", "/-/ready", &[]).await?;
                if status == 200 {
                    Ok(Ok(()))
                } else {
                    Err(format!("/-/ready answered {status}: {}", body.trim()))
                }
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) if self.log().contains("address already in use") => {
                Err(Start::PortTaken(format!("{err}\n{}", self.log_tail())))
            }
            Ok(Err(err)) | Err(err) => {
                // Keep the config and log for whoever reads this error.
                self.keep_files = true;
                Err(Start::Failed(format!(
                    "Prometheus did not start: {err}\n{}",
                    self.log_tail()
                )))
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The temp dir holding `prometheus.yml`, `targets.json`, `prometheus.log` and the TSDB.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the scraped targets; Prometheus picks the file up within about a second.
    pub fn set_targets(&self, targets: &[SocketAddr]) -> Result<(), String> {
        write_targets(&self.dir.path().join("targets.json"), targets)
    }

    /// An instant query: `data.result` of Prometheus's answer.
    pub async fn query(&self, promql: &str) -> Result<Value, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (status, _, body) = http_get(self.addr, "127.0.0.1", &path, &[]).await?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|err| format!("query {promql}: HTTP {status}, not JSON ({err}): {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("query {promql}: HTTP {status}: {answer}"));
        }
        Ok(answer["data"]["result"].clone())
    }

    /// The last lines of Prometheus's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let path = self.dir.path().join("prometheus.log");
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        format!(
            "--- last lines of {} ---\n{}",
            path.display(),
            lines[start..].join("\n")
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill();
        if self.keep_files {
            self.dir.disable_cleanup(true);
            return;
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "Prometheus files kept in {}\n{}",
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}

/// Why one start failed: a taken port is worth another try, the rest is not.
enum Start {
    PortTaken(String),
    Failed(String),
}

fn config(targets_path: &Path, scrape_interval: Duration) -> Value {
    let interval = format!("{}ms", scrape_interval.as_millis().max(1));
    json!({
        "global": {
            "scrape_interval": interval,
            // Prometheus refuses a scrape timeout above the interval (its default is 10 s).
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": [{
            "job_name": JOB,
            "metrics_path": "/stats/prometheus",
            "file_sd_configs": [{
                "files": [targets_path.display().to_string()],
                "refresh_interval": "1s",
            }],
        }],
    })
}

/// Writes a file_sd targets file atomically (Prometheus may read it at any moment).
fn write_targets(path: &Path, targets: &[SocketAddr]) -> Result<(), String> {
    let targets: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
    let text = json!([{ "targets": targets, "labels": {} }]).to_string();
    let partial = path.with_extension("json.partial");
    std::fs::write(&partial, text)
        .map_err(|err| format!("cannot write {}: {err}", partial.display()))?;
    std::fs::rename(&partial, path)
        .map_err(|err| format!("cannot move {} into place: {err}", partial.display()))
}

/// A loopback port the kernel just handed out, released again. Prometheus cannot bind port 0
/// and tell us what it got (it logs no bound address and has no address file), so it gets a
/// port that was free a moment ago; a start that loses the race is retried.
fn free_port() -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|err| format!("cannot pick a port for Prometheus: {err}"))?;
    listener
        .local_addr()
        .map_err(|err| format!("cannot pick a port for Prometheus: {err}"))
}

fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::{assert_eventually, require_peer};

    /// Serves `/stats/prometheus` as jalur proxy does: prometheus-client's OpenMetrics-flavoured
    /// text (with `# EOF`) under `text/plain; version=0.0.4`.
    async fn stats_server(count: Arc<Mutex<u64>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: hyper::Request<Incoming>| {
                        let n = count.lock().map(|n| *n).unwrap_or(0);
                        let body = format!(
                            "# HELP istio_requests Requests handled, by Istio's standard labels.\n\
                             # TYPE istio_requests counter\n\
                             istio_requests_total{{reporter=\"source\",destination_service=\"we\\\"ird.svc\",response_code=\"200\"}} {n}\n\
                             # EOF\n"
                        );
                        let response = hyper::Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)));
                        async move { response }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, task)
    }

    /// The value of the single series `result` holds, once it holds one.
    fn single_value(result: &Value) -> Result<f64, String> {
        match result.as_array().map(Vec::as_slice) {
            Some([one]) => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("odd sample {one}")),
            _ => Err(format!("not one series yet: {result}")),
        }
    }

    #[tokio::test]
    async fn prometheus_scrapes_a_proxy_page_and_follows_new_targets() {
        let Some(binary) = require_peer("prometheus", prometheus_binary()) else {
            return;
        };
        let count = Arc::new(Mutex::new(5));
        let (first, first_task) = stats_server(count.clone()).await;
        let prom = Prometheus::start(&binary, &[first], Duration::from_secs(1))
            .await
            .expect("Prometheus starts");
        assert!(prom.url.starts_with("http://127.0.0.1:"), "{}", prom.url);

        let query =
            r#"sum(istio_requests_total{reporter="source",destination_service="we\"ird.svc"})"#;
        let seen = assert_eventually(
            "the counter is scraped",
            Duration::from_secs(30),
            || async { single_value(&prom.query(query).await?) },
        )
        .await;
        assert_eq!(seen, 5.0);
        if let Ok(mut n) = count.lock() {
            *n = 12;
        }
        assert_eventually(
            "the new value is scraped",
            Duration::from_secs(30),
            || async {
                let value = single_value(&prom.query(query).await?)?;
                (value == 12.0)
                    .then_some(())
                    .ok_or(format!("still {value}"))
            },
        )
        .await;

        let (second, second_task) = stats_server(count).await;
        prom.set_targets(&[second]).expect("targets written");
        let up = format!(r#"up{{job="{JOB}",instance="{second}"}}"#);
        assert_eventually(
            "the new target is scraped",
            Duration::from_secs(30),
            || async {
                let value = single_value(&prom.query(&up).await?)?;
                (value == 1.0).then_some(()).ok_or(format!("up is {value}"))
            },
        )
        .await;
        first_task.abort();
        second_task.abort();
    }
}
