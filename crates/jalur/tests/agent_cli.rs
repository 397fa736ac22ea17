//! `jalur agent` as a process: the README's walk (`jalur control`, `jalur token create`,
//! `jalur agent --envoy-bootstrap`, Envoy started from that file, in sync over 15012), and what
//! an operator sees when its inputs are wrong.

use std::fs::Permissions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{
    assert_eventually, envoy_binary, http_get, require_peer, ChildGuard, EchoServer, Envoy,
};

fn agent(dir: &std::path::Path, xds: &str, token_file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jalur"))
        .env("RUST_LOG", "warn")
        .args(["agent", "--xds-address", xds, "--root-cert"])
        .arg(dir.join("root-cert.pem"))
        .arg("--token-file")
        .arg(token_file)
        .args([
            "--namespace",
            "shop",
            "--service-account",
            "payments",
            "--sds-socket",
        ])
        .arg(dir.join("sds.sock"))
        .arg("--envoy-bootstrap")
        .arg(dir.join("envoy.json"))
        .output()
        .expect("run jalur agent")
}

#[test]
fn agent_without_its_token_file_exits_one_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("no-such-token");
    let out = agent(dir.path(), "https://127.0.0.1:15012", &missing);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(!dir.path().join("sds.sock").exists());
}

#[test]
fn agent_refuses_a_plaintext_control_plane_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "jalur.v1.x.y\n").expect("write");
    let out = agent(dir.path(), "http://127.0.0.1:15010", &token);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must be https://HOST:PORT"), "{stderr}");
    assert!(
        !dir.path().join("envoy.json").exists(),
        "no bootstrap written"
    );
}

#[test]
fn agent_with_an_unreadable_trust_bundle_exits_one_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "jalur.v1.x.y\n").expect("write");
    let out = agent(dir.path(), "https://127.0.0.1:15012", &token);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("root-cert.pem"), "{stderr}");
    assert!(
        !dir.path().join("sds.sock").exists(),
        "nothing served without a certificate"
    );
}

const ADMIN: &str = "agent-walk-admin-token";
const HOST: &str = "reviews.bookinfo.svc.cluster.local";

/// Reads `child`'s stdout until every prefix has started a line; the word after each prefix.
/// The rest of stdout is drained in a thread so the child never blocks on a full pipe.
fn banner(child: &mut ChildGuard, prefixes: &[&str]) -> Vec<String> {
    let stdout = child.child_mut().stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        for (i, prefix) in prefixes.iter().enumerate() {
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                found[i] = rest.split_whitespace().next().map(str::to_string);
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
        .map(|(f, p)| f.unwrap_or_else(|| panic!("no {p:?} line on stdout")))
        .collect()
}

fn start_control(dir: &Path, backend: SocketAddr) -> (ChildGuard, SocketAddr, SocketAddr, PathBuf) {
    let config = dir.join("config");
    std::fs::create_dir(&config).expect("mkdir");
    std::fs::write(
        config.join("svc.yaml"),
        service_entry("reviews", "bookinfo", HOST),
    )
    .expect("write");
    std::fs::write(
        config.join("we.yaml"),
        workload_entry("reviews", "v1", "bookinfo", backend),
    )
    .expect("write");
    std::fs::write(dir.join("admin-token"), ADMIN).expect("write");
    // The control plane refuses a secret file others can read (as ssh does with keys).
    std::fs::set_permissions(dir.join("admin-token"), Permissions::from_mode(0o600))
        .expect("chmod");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jalur"));
    cmd.env("RUST_LOG", "warn")
        .arg("control")
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--admin-token-file")
        .arg(dir.join("admin-token"))
        .args([
            "--xds-tls-addr",
            "127.0.0.1:0",
            "--status-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped());
    let mut control = ChildGuard::spawn("jalur control", &mut cmd).expect("spawn");
    let words = banner(&mut control, &["xDS+CA:", "status:", "CA:"]);
    let status = words[1]
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("addr");
    (
        control,
        words[0].parse().expect("xDS+CA address"),
        status.parse().expect("status address"),
        PathBuf::from(&words[2]),
    )
}

async fn in_sync(status: SocketAddr, node: &str) -> Result<(), String> {
    let (_, _, body) = http_get(status, "status", "/debug/syncz", &[]).await?;
    let all: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let me = all
        .as_array()
        .and_then(|a| a.iter().find(|c| c["node_id"] == node))
        .ok_or_else(|| format!("{node} not in syncz: {body}"))?;
    if me["in_sync"] == true {
        Ok(())
    } else {
        Err(format!("not in sync: {me}"))
    }
}

/// The README's walk for a stock Envoy sidecar, every step the real binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walk_envoy_beside_jalur_agent_syncs_over_15012_and_the_agent_exits_on_sigterm() {
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let backend = EchoServer::start("v1").await;
    let tmp = tempfile::TempDir::with_prefix("jalur-agent-walk-").expect("tmp");
    let dir = tmp.path();
    let (_control, tls, status, bundle) = start_control(dir, backend.addr());

    let out = Command::new(env!("CARGO_BIN_EXE_jalur"))
        .args([
            "token",
            "create",
            "-n",
            "bookinfo",
            "--service-account",
            "productpage",
        ])
        .args(["--control", &status.to_string(), "--token-file"])
        .arg(dir.join("admin-token"))
        .output()
        .expect("jalur token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("token"), &out.stdout).expect("write token");

    let node = "sidecar~127.0.0.1~productpage-envoy.bookinfo~bookinfo.svc.cluster.local";
    let (socket, bootstrap) = (dir.join("sds.sock"), dir.join("envoy.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jalur"));
    cmd.env("RUST_LOG", "warn")
        .args([
            "agent",
            "--xds-address",
            &format!("https://{tls}"),
            "--root-cert",
        ])
        .arg(&bundle)
        .arg("--token-file")
        .arg(dir.join("token"))
        .args([
            "--namespace",
            "bookinfo",
            "--service-account",
            "productpage",
            "--sds-socket",
        ])
        .arg(&socket)
        .arg("--envoy-bootstrap")
        .arg(&bootstrap)
        .args([
            "--envoy-admin",
            "127.0.0.1:0",
            "--ephemeral-ports",
            "--listen-address",
            "127.0.0.1",
        ])
        .stdout(Stdio::piped());
    let mut agent = ChildGuard::spawn("jalur agent", &mut cmd).expect("spawn");
    let ready = banner(&mut agent, &["jalur agent"]);
    assert_eq!(
        ready[0],
        "spiffe://cluster.local/ns/bookinfo/sa/productpage"
    );
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the SDS socket is private");

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bootstrap).expect("bootstrap"))
            .expect("JSON");
    assert_eq!(written["node"]["id"], node);
    let envoy = Envoy::start_with_bootstrap(&binary, &written)
        .await
        .expect("Envoy starts");
    let port = envoy
        .listener_port("outbound")
        .await
        .expect("listeners over 15012");
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    jalur_testkit::assert_serves(
        "Envoy routes to the backend",
        proxy,
        HOST,
        "v1",
        Duration::from_secs(20),
    )
    .await;
    assert_eventually("syncz shows Envoy in sync", Duration::from_secs(10), || {
        in_sync(status, node)
    })
    .await;

    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .expect("kill");
    let code = assert_eventually(
        "jalur agent exits on SIGTERM",
        Duration::from_secs(10),
        || {
            let exited = agent.exited();
            async move { exited.ok_or_else(|| "still running".to_string()) }
        },
    )
    .await;
    assert!(code.success(), "{code}");
    assert!(!socket.exists(), "the agent removed its socket");
}
