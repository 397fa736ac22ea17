//! The gRPC peers under `tests/peers`: a backend that names itself in every reply, and the
//! proxyless xDS clients of grpcio (Python) and grpc-js (Node), run to completion.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::peers::peer_script;
use crate::process::ChildGuard;

/// How long a backend may take to print its port.
pub const BACKEND_START_TIMEOUT: Duration = Duration::from_secs(20);
/// What an xDS client run may take beyond its own `--timeout-secs` (interpreter start-up).
const CLIENT_SLACK: Duration = Duration::from_secs(30);

/// `tests/peers/grpc_backend.py`: serves `/jalur.test.Echo/Say`, answering `<name>:<request>`.
/// Killed when dropped (and it exits by itself once its stdin, held here, closes).
pub struct GrpcBackend {
    name: String,
    addr: SocketAddr,
    /// Holds `backend.log`; removed on drop.
    _dir: tempfile::TempDir,
    _stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    child: ChildGuard,
}

impl GrpcBackend {
    /// Starts the backend with `python` (see [`crate::peers::python`]) on 127.0.0.1:0.
    pub async fn start(python: &Path, name: &str) -> Result<GrpcBackend, String> {
        let dir = tempfile::TempDir::with_prefix("jalur-grpc-backend-")
            .map_err(|err| format!("cannot make a temp dir: {err}"))?;
        let log_path = dir.path().join("backend.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
        let mut command = Command::new(python);
        command
            .arg(peer_script("grpc_backend.py"))
            .args(["--name", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = ChildGuard::spawn("grpc_backend.py", &mut command)?;
        let stdin = child.child_mut().stdin.take();
        let stdout = child
            .child_mut()
            .stdout
            .take()
            .ok_or("grpc_backend.py: no stdout pipe")?;

        // Blocking read on its own thread; killing the child (on drop) ends it.
        let first_line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line).map(|_| line);
            (reader, read)
        });
        let failed = |why: String| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            format!("grpc backend {name} did not start: {why}\n--- its stderr ---\n{log}")
        };
        let (stdout, line) = tokio::time::timeout(BACKEND_START_TIMEOUT, first_line)
            .await
            .map_err(|_| failed(format!("no port within {BACKEND_START_TIMEOUT:?}")))?
            .map_err(|err| failed(format!("reader thread: {err}")))?;
        let line = line.map_err(|err| failed(format!("reading stdout: {err}")))?;
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|port| port.parse::<u16>().ok())
            .ok_or_else(|| failed(format!("first line {line:?} is not `PORT <n>`")))?;
        Ok(GrpcBackend {
            name: name.to_string(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
            _stdin: stdin,
            _stdout: stdout,
            child,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.child.kill();
    }
}

/// What an xDS client run printed: calls answered, calls failed, answers by text and the first
/// few distinct errors.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct XdsClientReport {
    pub ok: u64,
    pub failed: u64,
    pub replies: BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

/// One run of a proxyless gRPC xDS client: `count` calls of `/jalur.test.Echo/Say` to `target`
/// (`xds:///NAME`, or a plain `127.0.0.1:PORT`), all within `timeout`.
#[derive(Clone, Debug)]
pub struct XdsClient {
    program: Vec<OsString>,
    pub xds: SocketAddr,
    pub target: String,
    pub count: u32,
    pub node_id: String,
    pub timeout: Duration,
    pub cluster: String,
    pub zone: String,
    /// `node.metadata`, a JSON object.
    pub metadata: Value,
    /// The request bytes (UTF-8); replies read `<backend>:<message>`.
    pub message: String,
}

impl XdsClient {
    /// grpcio's client, `tests/peers/grpc_xds_client.py`, run by `python`.
    pub fn python(python: &Path, xds: SocketAddr, target: &str) -> XdsClient {
        let program = vec![
            python.as_os_str().to_owned(),
            peer_script("grpc_xds_client.py").into_os_string(),
        ];
        Self::new(program, xds, target)
    }

    /// grpc-js's client, `xds_client.js` in `node_dir` (see [`crate::peers::node_client_dir`]).
    pub fn node(node_dir: &Path, xds: SocketAddr, target: &str) -> XdsClient {
        let program = vec![
            OsString::from("node"),
            node_dir.join("xds_client.js").into_os_string(),
        ];
        Self::new(program, xds, target)
    }

    fn new(program: Vec<OsString>, xds: SocketAddr, target: &str) -> XdsClient {
        XdsClient {
            program,
            xds,
            target: target.to_string(),
            count: 1,
            node_id: "grpc-client".to_string(),
            timeout: Duration::from_secs(10),
            cluster: "jalur-test".to_string(),
            zone: "z1".to_string(),
            metadata: Value::Object(Default::default()),
            message: "hello".to_string(),
        }
    }

    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    pub fn node_id(mut self, node_id: &str) -> Self {
        self.node_id = node_id.to_string();
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    pub fn message(mut self, message: &str) -> Self {
        self.message = message.to_string();
        self
    }

    /// Runs the client to completion and reads its report. An error means the client itself
    /// did not run (bad arguments, crash, no report), not that calls failed.
    pub async fn run(&self) -> Result<XdsClientReport, String> {
        let (program, script) = match self.program.as_slice() {
            [program, rest @ ..] => (program, rest),
            [] => return Err("xds client: no program".to_string()),
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(script)
            .arg("--xds")
            .arg(self.xds.to_string())
            .args(["--target", &self.target])
            .args(["--count", &self.count.to_string()])
            .args(["--node-id", &self.node_id])
            .args(["--timeout-secs", &self.timeout.as_secs_f64().to_string()])
            .args(["--cluster", &self.cluster, "--zone", &self.zone])
            .args(["--metadata", &self.metadata.to_string()])
            .args(["--message", &self.message])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = format!("{command:?}");
        let output = tokio::time::timeout(self.timeout + CLIENT_SLACK, command.output())
            .await
            .map_err(|_| {
                format!(
                    "{what}: still running after {:?}",
                    self.timeout + CLIENT_SLACK
                )
            })?
            .map_err(|err| format!("{what}: cannot run: {err}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let report = stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(serde_json::from_str::<XdsClientReport>);
        match (output.status.success(), report) {
            (true, Some(Ok(report))) => Ok(report),
            (_, report) => Err(format!(
                "{what}: {} with no report ({report:?})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
                output.status,
                tail(&stderr, 40)
            )),
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests;
