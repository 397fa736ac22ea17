//! The `jalur` binary as an operator uses it: analyze in a CI pipeline, control started from the
//! README's command, proxy-status against it with a real Envoy connected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use jalur_testkit::{
    assert_eventually, envoy_binary, repo_root, require_peer, ChildGuard, Envoy, EnvoyOpts,
};
use serde_json::{json, Value};

fn jalur() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jalur"));
    c.current_dir(repo_root()).env("RUST_LOG", "warn");
    c
}

#[test]
fn analyze_clean_config_exits_zero() {
    for path in [
        "testdata/analyze/good",
        "examples/bookinfo",
        "examples/migration",
    ] {
        let out = jalur().args(["analyze", path]).output().expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{path}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("No validation issues found"), "{stdout}");
    }
}

#[test]
fn analyze_broken_config_exits_one_with_codes_file_and_line() {
    let out = jalur()
        .args(["analyze", "testdata/analyze/broken/01-yaml-syntax.yaml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("Error [JAL0001] (testdata/analyze/broken/01-yaml-syntax.yaml:"),
        "{stdout}"
    );

    let out = jalur()
        .args(["analyze", "testdata/analyze/broken", "-o", "json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let findings: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json output");
    assert!(findings.len() >= 35, "{} findings", findings.len());
    assert!(
        findings
            .iter()
            .all(|f| f["code"].as_str().is_some_and(|c| c.starts_with("JAL"))
                && f["file"].is_string())
    );

    let out = jalur()
        .args(["analyze", "testdata/analyze/broken", "-o", "yaml"])
        .output()
        .expect("run");
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("code: JAL0101"), "{yaml}");
}

#[test]
fn analyze_failure_threshold_warning_fails_on_warnings() {
    let tmp = tempfile::TempDir::with_prefix("jalur-cli-").expect("tmp");
    let dir = tmp.path();
    let file = dir.join("dr.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: x.example.com\n",
    )
    .expect("write");
    let path = file.to_string_lossy().to_string();
    let ok = jalur().args(["analyze", &path]).output().expect("run");
    assert!(ok.status.success(), "a warning alone passes by default");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Warning [JAL0105]"));
    let strict = jalur()
        .args(["analyze", &path, "--failure-threshold", "warning"])
        .output()
        .expect("run");
    assert_eq!(strict.status.code(), Some(1));
}

/// A mesh-wide STRICT PeerAuthentication lives in the root namespace: `--root-namespace` (as
/// the control plane's) decides which namespace that is, and with it whether the policy makes
/// a Migration's Consul-resolved mesh path unreachable for plaintext legacy callers.
#[test]
fn analyze_reads_mesh_wide_peer_authentication_in_its_root_namespace() {
    let tmp = tempfile::TempDir::with_prefix("jalur-cli-").expect("tmp");
    let file = tmp.path().join("mesh.yaml");
    std::fs::write(
        &file,
        "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {name: legacy, namespace: shop}\nspec:\n  addresses: [127.0.0.1:8500]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: payments, namespace: shop}\nspec:\n  host: payments.service.consul\n  subsets:\n  - {name: legacy, labels: {jalur.dev/origin: consul}}\n  - {name: mesh, labels: {jalur.dev/origin: mesh}}\n---\n\
         apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: payments, namespace: shop}\nspec:\n  legacy: {host: payments.service.consul, subset: legacy}\n  mesh: {host: payments.service.consul, subset: mesh}\n  stages: [{weight: 100}]\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n",
    )
    .expect("write");
    let path = file.to_string_lossy().to_string();
    // Default root (jalur-system): istio-system's policy covers only istio-system.
    let default_root = jalur()
        .args(["analyze", &path])
        .env_remove("JALUR_ROOT_NAMESPACE")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&default_root.stdout);
    assert!(
        default_root.status.success() && !stdout.contains("JAL0143"),
        "{stdout}"
    );
    for how in [
        vec!["--root-namespace", "istio-system"],
        vec!["--root-namespace=istio-system"],
    ] {
        let out = jalur()
            .arg("analyze")
            .args(&how)
            .arg(&path)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{how:?}: {stdout}");
        assert!(
            stdout.contains("Error [JAL0143]")
                && stdout.contains("PeerAuthentication istio-system/default"),
            "{how:?}: {stdout}"
        );
    }
    // The control plane's environment variable works here too.
    let env = jalur()
        .args(["analyze", &path])
        .env("JALUR_ROOT_NAMESPACE", "istio-system")
        .output()
        .expect("run");
    assert_eq!(env.status.code(), Some(1));
}

#[test]
fn control_refuses_a_jwks_refresh_under_a_second() {
    let out = jalur()
        .args(["control", "--jwks-refresh", "0s", "--insecure-xds"])
        .output()
        .expect("run");
    // clap's usage error: exit 2, naming the flag.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--jwks-refresh") && stderr.contains("under a second"),
        "{stderr}"
    );
}

#[test]
fn control_refuses_an_invalid_initial_config_naming_file_and_line() {
    let out = jalur()
        .args([
            "control",
            "--config",
            "testdata/analyze/broken/01-yaml-syntax.yaml",
            "--insecure-xds",
            "--xds-tls-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--status-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("01-yaml-syntax.yaml:") && stderr.contains("JAL0001"),
        "{stderr}"
    );
}

/// Starts `jalur control` like the README does (ports 0), and returns its xDS and status addresses.
fn start_control() -> (ChildGuard, SocketAddr, SocketAddr) {
    start_control_with("examples/bookinfo")
}

fn start_control_with(config: &str) -> (ChildGuard, SocketAddr, SocketAddr) {
    let mut cmd = jalur();
    cmd.args([
        "control",
        "--config",
        config,
        // These tests drive proxies over plaintext xDS; 15012 is exercised in tests/secure_xds.rs.
        "--insecure-xds",
        "--xds-tls-addr",
        "127.0.0.1:0",
        "--xds-addr",
        "127.0.0.1:0",
        "--status-addr",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    let mut child = ChildGuard::spawn("jalur control", &mut cmd).expect("spawn jalur control");
    let stdout = child.child_mut().stdout.take().expect("stdout");
    let mut xds = None;
    let mut status = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read stdout");
        let addr = |prefix: &str| {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|a| {
                    a.trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
        };
        if let Some(a) = addr("xDS:") {
            xds = a.parse().ok();
        }
        if let Some(a) = addr("status:") {
            status = a.parse().ok();
        }
        if xds.is_some() && status.is_some() {
            break;
        }
    }
    (
        child,
        xds.expect("xDS address printed"),
        status.expect("status address printed"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_serves_envoy_and_proxy_status_shows_it_synced() {
    let (mut control, xds, status) = start_control();
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let id = "sidecar~127.0.0.1~productpage-v1.bookinfo~bookinfo.svc.cluster.local";
    let mut opts = EnvoyOpts::new(xds, id);
    opts.metadata = json!({ "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1" });
    let envoy = Envoy::start_with(&binary, opts).await.expect("envoy");
    envoy
        .listener_port("outbound")
        .await
        .expect("outbound listener from jalur");

    let control_addr = status.to_string();
    let table = assert_eventually(
        "proxy-status shows the sidecar synced",
        Duration::from_secs(15),
        || {
            let control_addr = control_addr.clone();
            async move {
                let out = jalur()
                    .args(["proxy-status", "--control", &control_addr])
                    .output()
                    .map_err(|e| e.to_string())?;
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let row = text.lines().find(|l| l.starts_with(id)).unwrap_or("");
                if row.matches("SYNCED").count() == 4 {
                    Ok(text)
                } else {
                    Err(text)
                }
            }
        },
    )
    .await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("envoy 1.40"), "version column: {table}");

    let out = jalur()
        .args(["proxy-status", "--control", &control_addr, "-o", "json"])
        .output()
        .expect("run");
    let clients: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(clients[0]["node_id"], id);

    // SIGTERM: a clean exit.
    let pid = control.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let code = assert_eventually(
        "jalur control exits on SIGTERM",
        Duration::from_secs(10),
        || {
            let exited = control.exited();
            async move { exited.ok_or_else(|| "still running".to_string()) }
        },
    )
    .await;
    assert!(code.success(), "exit status {code:?}");
    drop(envoy);
}

#[test]
fn proxy_status_without_control_plane_says_so() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let out = jalur()
        .args(["proxy-status", "--control", &format!("127.0.0.1:{port}")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the control plane"), "{err}");
    assert!(
        err.contains("Connection refused"),
        "the cause is named: {err}"
    );
}

/// `jalur proxy` pointed at nothing says where and why, keeps retrying, and still exits 0 on
/// SIGTERM (with nobody to tell it is leaving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_without_control_plane_logs_the_cause_and_keeps_retrying() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let tmp = tempfile::TempDir::with_prefix("jalur-cli-no-control-").expect("tmp");
    let dir = tmp.path();
    let log = dir.join("proxy.log");
    let mut cmd = jalur();
    cmd.args(["proxy", "--xds", &format!("127.0.0.1:{port}")])
        .args(["--listen-address", "127.0.0.1", "--outbound-port", "0"])
        .args(["--inbound-port", "0", "--admin-addr", "127.0.0.1:0"])
        .args([
            "--health-addr",
            "127.0.0.1:0",
            "--stats-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut proxy = ChildGuard::spawn("jalur proxy", &mut cmd).expect("spawn jalur proxy");
    let expected = format!(
        "cannot reach the control plane at 127.0.0.1:{port}: connection refused (retrying in "
    );
    assert_eventually(
        "the cause, logged twice (it retries)",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let seen = text.matches(&expected).count();
            async move {
                if seen >= 2 {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        },
    )
    .await;
    assert!(proxy.exited().is_none(), "still running");
    Command::new("kill")
        .args(["-TERM", &proxy.id().to_string()])
        .status()
        .expect("kill");
    let code = assert_eventually("exit on SIGTERM", Duration::from_secs(15), || {
        let exited = proxy.exited();
        async move { exited.ok_or_else(|| "still running".to_string()) }
    })
    .await;
    assert!(code.success(), "exit status {code:?}");
}

/// `jalur proxy` as a process: serves through its outbound port, logs one JSON access line per
/// request, shows up in `jalur proxy-status`, and exits 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cli_serves_logs_access_and_exits_cleanly_on_sigterm() {
    let backend = jalur_testkit::EchoServer::start("v1").await;
    let tmp = tempfile::TempDir::with_prefix("jalur-cli-proxy-").expect("tmp");
    let dir = tmp.path();
    let host = "reviews.bookinfo.svc.cluster.local";
    std::fs::write(
        dir.join("svc.yaml"),
        jalur_testkit::yaml::service_entry("reviews", "bookinfo", host),
    )
    .expect("write");
    std::fs::write(
        dir.join("we.yaml"),
        jalur_testkit::yaml::workload_entry("reviews", "v1", "bookinfo", backend.addr()),
    )
    .expect("write");
    let (_control, xds, status) = start_control_with(&dir.to_string_lossy());

    let log = dir.join("proxy.log");
    let mut cmd = jalur();
    cmd.args([
        "--log-format",
        "json",
        "proxy",
        "--xds",
        &xds.to_string(),
        "--service",
        "productpage",
        "--namespace",
        "bookinfo",
    ])
    .args([
        "--listen-address",
        "127.0.0.1",
        "--outbound-port",
        "0",
        "--inbound-port",
        "0",
        "--access-log",
    ])
    .args([
        "--admin-addr",
        "127.0.0.1:0",
        "--health-addr",
        "127.0.0.1:0",
        "--stats-addr",
        "127.0.0.1:0",
    ])
    .env("RUST_LOG", "info")
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).expect("log file"));
    let mut proxy = ChildGuard::spawn("jalur proxy", &mut cmd).expect("spawn jalur proxy");
    let stdout = proxy.child_mut().stdout.take().expect("stdout");
    // Keep reading stdout for the life of the proxy, as a terminal would.
    let mut lines = BufReader::new(stdout).lines();
    let outbound: SocketAddr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("outbound:")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        })
        .expect("outbound address printed");

    let reply = assert_eventually(
        "jalur proxy routes to the backend",
        Duration::from_secs(20),
        || async {
            match jalur_testkit::http_get(outbound, host, "/hello", &[]).await {
                Ok(r) if r.0 == 200 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(reply.2, "v1");
    let access = assert_eventually("an access log line", Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| {
                    v["target"] == "jalur::access"
                        && v["fields"]["path"] == "/hello"
                        && v["fields"]["status"] == 200
                })
                .ok_or(text)
        }
    })
    .await;
    assert_eq!(
        access["fields"]["upstream_cluster"],
        format!("outbound|9080||{host}"),
        "{access}"
    );

    let out = jalur()
        .args([
            "proxy-status",
            "--control",
            &status.to_string(),
            "-o",
            "json",
        ])
        .output()
        .expect("run");
    let clients: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let me = clients
        .iter()
        .find(|c| {
            c["node_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("sidecar~127.0.0.1~productpage"))
        })
        .expect("proxy listed");
    assert_eq!(me["mode"], "delta");
    assert!(
        me["client_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("jalur-proxy")),
        "{me}"
    );

    let pid = proxy.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let code = assert_eventually(
        "jalur proxy exits on SIGTERM",
        Duration::from_secs(10),
        || {
            let exited = proxy.exited();
            async move { exited.ok_or_else(|| "still running".to_string()) }
        },
    )
    .await;
    assert!(code.success(), "exit status {code:?}");
}

/// `jalur analyze --consul ADDR` against a Consul protocol DOUBLE (no Consul server is
/// obtainable here): a route to a service Consul lacks is an error, one with no passing instance
/// a warning, and `*.service.consul` hosts Consul has are known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_against_consul_reports_hybrid_findings() {
    use jalur_testkit::consul::{ConsulDouble, Instance, Status};
    let consul = ConsulDouble::start().await;
    consul.register(Instance::new("payments", "p-1", "127.0.0.1", 9001).status(Status::Passing));
    consul.register(Instance::new("fraud", "f-1", "127.0.0.1", 9002).status(Status::Critical));
    let tmp = tempfile::TempDir::with_prefix("jalur-cli-hybrid-").expect("tmp");
    let dir = tmp.path();
    let vs = |host: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v}}\nspec:\n  hosts: [x.example.com]\n  http:\n  - route:\n    - destination: {{host: {host}}}\n")
    };
    let file = dir.join("vs.yaml");
    let run = |path: &std::path::Path| {
        jalur()
            .args([
                "analyze",
                &path.to_string_lossy(),
                "--consul",
                &consul.url(),
                "-o",
                "json",
            ])
            .output()
            .expect("run")
    };
    std::fs::write(&file, vs("payments.service.consul")).expect("write");
    let ok = run(&file);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(&file, vs("refunds.service.consul")).expect("write");
    let missing = run(&file);
    assert_eq!(missing.status.code(), Some(1));
    let findings: Vec<Value> = serde_json::from_slice(&missing.stdout).expect("json");
    assert!(
        findings
            .iter()
            .any(|f| f["code"] == "JAL0132" && f["line"] == 8),
        "{findings:?}"
    );
    std::fs::write(&file, vs("fraud.service.consul")).expect("write");
    let unhealthy = run(&file);
    let findings: Vec<Value> = serde_json::from_slice(&unhealthy.stdout).expect("json");
    assert!(
        findings.iter().any(|f| f["code"] == "JAL0133"),
        "{findings:?}"
    );
    assert!(unhealthy.status.success(), "a warning alone passes");
}

fn migrate(status: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let out = jalur()
        .arg("migrate")
        .args(args)
        .args(["--control", &status.to_string()])
        .output()
        .expect("run jalur migrate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `jalur migrate` drives a Migration through the control plane's API: status (text and
/// `-o json`), start, pause, resume, promote to the end, rollback; errors exit 1 and say why.
#[test]
fn migrate_cli_drives_a_migration_and_reports_errors() {
    let tmp = tempfile::TempDir::with_prefix("jalur-cli-migrate-").expect("temp dir");
    let dir = tmp.path();
    std::fs::write(
        dir.join("migration.yaml"),
        "apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: reviews, namespace: shop}\nspec:\n  legacy: {host: reviews.service.consul}\n  mesh: {host: reviews}\n  stages: [{weight: 10, hold: 1m}, {weight: 50, hold: 1m}, {weight: 100, hold: 1m}]\n",
    )
    .expect("write");
    let (_control, _xds, status) = start_control_with(dir.to_str().expect("utf-8 path"));

    let (code, out, _) = migrate(status, &["status", "reviews", "-o", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let s: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (s["phase"].as_str(), s["stages"].clone()),
        (Some("Pending"), json!([10, 50, 100]))
    );

    let (code, out, _) = migrate(status, &["start", "reviews"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Phase:       Shifting"), "{out}");
    assert!(out.contains("requested 10 %"), "{out}");

    let (code, _, err) = migrate(status, &["start", "reviews"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("already running"), "{err}");

    for (cmd, phase) in [("pause", "Paused"), ("resume", "Holding")] {
        let (code, out, err) = migrate(status, &[cmd, "reviews", "-n", "shop", "-o", "yaml"]);
        assert_eq!(code, Some(0), "{cmd}: {err}");
        assert!(out.contains(&format!("phase: {phase}")), "{cmd}: {out}");
    }
    for _ in 0..3 {
        let (code, _, err) = migrate(status, &["promote", "reviews"]);
        assert_eq!(code, Some(0), "{err}");
    }
    // Promoted: --wait returns at once with success and says why.
    let (code, out, _) = migrate(status, &["status", "reviews", "--wait"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Promoted: promoted by the operator"), "{out}");
    // Starting a promoted migration again would put 90 % back on the legacy path: refused.
    let (code, _, err) = migrate(status, &["start", "reviews"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("promoted"), "{err}");

    let (code, out, _) = migrate(status, &["rollback", "reviews", "-o", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let s: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (s["phase"].as_str(), s["requestedPercent"].as_u64()),
        (Some("RolledBack"), Some(0))
    );
    let history: Vec<&str> = s["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|t| t["to"].as_str())
        .collect();
    assert_eq!(history.first(), Some(&"Shifting"));
    assert_eq!(history.last(), Some(&"RolledBack"));
    // A rolled-back migration's --wait exits 1: the move did not happen.
    let (code, _, _) = migrate(status, &["status", "reviews", "--wait"]);
    assert_eq!(code, Some(1));

    let (code, _, err) = migrate(status, &["status", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no Migration nope"), "{err}");
    let (code, _, err) = migrate("127.0.0.1:9".parse().expect("addr"), &["status", "reviews"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot reach the control plane"), "{err}");
    assert!(
        err.contains("Connection refused"),
        "the cause is named: {err}"
    );
}

/// The README's main command: the whole demo on this machine, ending with its report — the
/// migrated services without a failed request, the faulty one rolled back by itself.
#[cfg(feature = "demo")]
#[test]
fn demo_exit_migrates_two_services_and_rolls_one_back() {
    let out = jalur()
        .args([
            "demo",
            "--exit",
            "--hold",
            "3s",
            "--xds-addr",
            "127.0.0.1:0",
            "--xds-tls-addr",
            "127.0.0.1:0",
            "--status-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run jalur demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "reviews: Promoted",
        "ratings: Promoted",
        "payments: RolledBack",
        // Every proxy of the fleet got its identity from the CA and syncs over TLS; STRICT
        // refuses plaintext into the sidecars, so the 0 failures above ran over mTLS.
        "mTLS: on, STRICT in namespace demo — 8 proxies",
        "hold SPIFFE certificates from the control plane's CA",
        "spiffe://cluster.local/ns/demo/sa/{",
        "result: OK",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}
