//! `jalur token` and the admin token, as an operator uses them: the real binary, a real
//! `jalur control` with `--admin-token-file`, and a grep of everything it logged for secrets.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jalur_testkit::{http_get, repo_root, ChildGuard};
use serde_json::Value;

const ADMIN: &str = "admin-0123456789abcdef-not-for-logs";

fn jalur() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jalur"));
    c.current_dir(repo_root()).env("NO_COLOR", "1");
    c
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    admin_file: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::TempDir::with_prefix("jalur-tokens-").expect("temp dir");
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir(dir.join("config")).expect("mkdir");
    std::fs::write(
        dir.join("config/migration.yaml"),
        "apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: reviews, namespace: shop}\nspec:\n  legacy: {host: reviews.service.consul}\n  mesh: {host: reviews}\n  stages: [{weight: 10, hold: 1m}, {weight: 100, hold: 1m}]\n",
    )
    .expect("write config");
    let admin_file = dir.join("admin-token");
    std::fs::write(&admin_file, format!("{ADMIN}\n")).expect("write admin token");
    chmod(&admin_file, 0o600);
    Setup {
        _tmp: tmp,
        dir,
        admin_file,
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn control_cmd(s: &Setup) -> Command {
    let mut cmd = jalur();
    cmd.arg("control")
        .arg("--config")
        .arg(s.dir.join("config"))
        .arg("--state-dir")
        .arg(s.dir.join("state"))
        .arg("--admin-token-file")
        .arg(&s.admin_file)
        .args(["--xds-addr", "127.0.0.1:0", "--status-addr", "127.0.0.1:0"])
        .args(["--xds-tls-addr", "127.0.0.1:0"]);
    cmd
}

/// Starts `jalur control` logging at debug into `control.log`; returns its status address.
fn start_control(s: &Setup) -> (ChildGuard, SocketAddr) {
    let (child, status, _) = start_control_tls(s);
    (child, status)
}

/// The same, with the TLS xDS + CA address (15012).
fn start_control_tls(s: &Setup) -> (ChildGuard, SocketAddr, SocketAddr) {
    let mut cmd = control_cmd(s);
    cmd.env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(s.dir.join("control.log")).expect("log"));
    let mut child = ChildGuard::spawn("jalur control", &mut cmd).expect("spawn");
    let stdout = child.child_mut().stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut status, mut bundle, mut tls) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.expect("read stdout");
        let word = |prefix: &str| {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        };
        if let Some(a) = word("status:") {
            let a = a
                .trim_start_matches("http://")
                .split('/')
                .next()
                .map(str::to_string);
            status = a.and_then(|a| a.parse().ok());
        }
        if let Some(b) = word("CA:") {
            bundle = Some(PathBuf::from(b));
        }
        if let Some(a) = word("xDS+CA:") {
            tls = a.parse().ok();
        }
        if status.is_some() && bundle.is_some() && tls.is_some() {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let bundle = bundle.expect("the banner names the trust bundle");
    assert_eq!(bundle, s.dir.join("state/ca/trust-bundle.pem"));
    assert!(bundle.exists());
    (
        child,
        status.expect("status address printed"),
        tls.expect("TLS xDS address printed"),
    )
}

/// Runs `jalur ARGS --control ADDR`; (exit code, stdout, stderr).
fn run(status: SocketAddr, args: &[&str]) -> (Option<i32>, String, String) {
    let out = jalur()
        .args(args)
        .args(["--control", &status.to_string()])
        .env("RUST_LOG", "warn")
        .env_remove("JALUR_ADMIN_TOKEN_FILE")
        .output()
        .expect("run jalur");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_admin<'a>(s: &'a Setup, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.push("--token-file");
    v.push(s.admin_file.to_str().expect("utf-8 path"));
    v
}

/// Every way in needs the admin token; create prints the token alone, list never shows one,
/// revoke marks it; migrations' commands are guarded, their status is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_creates_lists_and_revokes_only_with_the_admin_token() {
    let s = setup();
    let (mut control, status) = start_control(&s);
    let create = [
        "token",
        "create",
        "-n",
        "shop",
        "--service-account",
        "storefront",
    ];

    let (code, _, err) = run(status, &create);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("needs the admin token"), "{err}");
    let wrong = s.dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-admin-token-at-all").expect("write");
    let mut args = create.to_vec();
    args.extend(["--token-file", wrong.to_str().expect("utf-8")]);
    let (code, _, err) = run(status, &args);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not match"), "{err}");

    let (code, out, err) = run(status, &with_admin(&s, &create));
    assert_eq!(code, Some(0), "{err}");
    let one_shot = out.trim().to_string();
    assert!(
        one_shot.starts_with("jalur.v1.") && out.lines().count() == 1,
        "{out}"
    );

    let mut json_args = with_admin(&s, &create);
    json_args.extend(["--ttl", "10m", "-o", "json"]);
    let (code, out, err) = run(status, &json_args);
    assert_eq!(code, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let second = created["token"].as_str().expect("token").to_string();
    assert!(
        created["expires"]
            .as_str()
            .is_some_and(|e| e.ends_with('Z')),
        "{out}"
    );

    let mut yaml_args = with_admin(&s, &create);
    yaml_args.extend(["--reusable", "-o", "yaml"]);
    let (code, out, _) = run(status, &yaml_args);
    assert_eq!(code, Some(0));
    assert!(out.contains("token: jalur.v1."), "{out}");
    let third = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .expect("token line")
        .to_string();

    let bad = with_admin(
        &s,
        &["token", "create", "-n", "Bad NS", "--service-account", "x"],
    );
    let (code, _, err) = run(status, &bad);
    assert_eq!(code, Some(1));
    assert!(err.contains("namespace"), "{err}");

    let (code, out, _) = run(status, &with_admin(&s, &["token", "list", "-o", "json"]));
    assert_eq!(code, Some(0));
    let list: Vec<Value> = serde_json::from_str(&out).expect("json list");
    assert_eq!(list.len(), 3, "{out}");
    assert!(list.iter().all(|r| r.get("token").is_none()), "{out}");
    for t in [&one_shot, &second, &third] {
        assert!(!out.contains(signature(t)), "list shows a token: {out}");
    }

    let (code, out, _) = run(status, &with_admin(&s, &["token", "revoke", &id]));
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("revoked bootstrap token {id}"));
    let (_, out, _) = run(status, &with_admin(&s, &["token", "list"]));
    let row = out.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(row.ends_with("revoked"), "{out}");
    assert!(
        out.lines().filter(|l| l.ends_with("usable")).count() == 2,
        "{out}"
    );
    let (code, _, err) = run(status, &with_admin(&s, &["token", "revoke", "nope"]));
    assert_eq!(code, Some(1));
    assert!(err.contains("no bootstrap token with id \"nope\""), "{err}");

    // Migrations: commands need the token, status does not.
    let (code, _, err) = run(status, &["migrate", "start", "reviews"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("needs the admin token"), "{err}");
    let (code, _, err) = run(status, &with_admin(&s, &["migrate", "start", "reviews"]));
    assert_eq!(code, Some(0), "{err}");
    let (code, out, _) = run(status, &["migrate", "status", "reviews", "-o", "json"]);
    assert_eq!(code, Some(0), "{out}");

    // The config dump reveals what proxies are served: guarded; the sync view is open.
    let (code, headers, body) = http_get(status, "control", "/debug/config_dump?proxy=x", &[])
        .await
        .expect("GET");
    assert_eq!(code, 401, "{body}");
    assert!(headers.contains_key("www-authenticate"));
    let bearer = format!("Bearer {ADMIN}");
    let (code, _, _) = http_get(
        status,
        "control",
        "/debug/config_dump?proxy=x",
        &[("authorization", &bearer)],
    )
    .await
    .expect("GET");
    assert_eq!(code, 404, "authorized, and no such proxy");
    let (code, _, metrics) = http_get(status, "control", "/metrics", &[])
        .await
        .expect("GET");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("jalur_ca_certificates_issued_total"),
        "{metrics}"
    );
    let (code, _, _) = http_get(status, "control", "/debug/syncz", &[])
        .await
        .expect("GET");
    assert_eq!(code, 200);

    control.kill();
    assert_no_secrets(&s, &[&one_shot, &second, &third], &[&metrics]);
}

fn signature(token: &str) -> &str {
    token.rsplit('.').next().expect("signature part")
}

/// Neither the log (at debug) nor `extra` texts contain a token, the admin token or the root
/// key.
fn assert_no_secrets(s: &Setup, tokens: &[&str], extra: &[&str]) {
    let log = std::fs::read_to_string(s.dir.join("control.log")).expect("log");
    assert!(
        log.contains("bootstrap token created"),
        "the log is not the one we think: {log}"
    );
    let key = std::fs::read_to_string(s.dir.join("state/ca/root-key.pem")).expect("key");
    let key_body: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----")).collect();
    let json = std::fs::read_to_string(s.dir.join("state/tokens.json")).expect("tokens.json");
    for text in std::iter::once(log.as_str())
        .chain(extra.iter().copied())
        .chain(std::iter::once(json.as_str()))
    {
        assert!(!text.contains(ADMIN), "the admin token leaked");
        for t in tokens {
            assert!(!text.contains(signature(t)), "a bootstrap token leaked");
        }
        for line in &key_body {
            assert!(!text.contains(line), "the root key leaked");
        }
    }
}

#[test]
fn control_refuses_an_admin_token_file_others_can_read() {
    let s = setup();
    chmod(&s.admin_file, 0o644);
    let mut child = ChildGuard::spawn(
        "jalur control",
        control_cmd(&s)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "jalur control did not refuse to start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.child_mut().stderr.as_mut().expect("stderr"), &mut err)
        .expect("read");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("admin-token") && err.contains("chmod 600"),
        "{err}"
    );
}

/// SIGKILL is a crash: nothing is flushed on the way out. The restarted control plane has the
/// same root (every issued certificate stays valid) and remembers its tokens and revocations.
#[test]
fn a_control_plane_killed_9_restarts_with_the_same_root_and_tokens() {
    let s = setup();
    let (mut control, status) = start_control(&s);
    let bundle_file = s.dir.join("state/ca/trust-bundle.pem");
    let root = std::fs::read_to_string(&bundle_file).expect("bundle");
    let create = with_admin(
        &s,
        &[
            "token",
            "create",
            "-n",
            "shop",
            "--service-account",
            "storefront",
            "-o",
            "json",
        ],
    );
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let (code, out, err) = run(status, &create);
            assert_eq!(code, Some(0), "{err}");
            let v: Value = serde_json::from_str(&out).expect("json");
            v["id"].as_str().expect("id").to_string()
        })
        .collect();
    let (code, _, err) = run(status, &with_admin(&s, &["token", "revoke", &ids[0]]));
    assert_eq!(code, Some(0), "{err}");
    let pid = control.id();
    control.kill();
    assert!(
        control.exited().is_some_and(|st| !st.success()),
        "jalur control {pid} was not killed"
    );

    let (_control, status) = start_control(&s);
    assert_eq!(
        std::fs::read_to_string(&bundle_file).expect("bundle"),
        root,
        "a new root after the restart"
    );
    let (code, out, err) = run(status, &with_admin(&s, &["token", "list", "-o", "json"]));
    assert_eq!(code, Some(0), "{err}");
    let list: Vec<Value> = serde_json::from_str(&out).expect("json");
    let state = |id: &str| {
        list.iter()
            .find(|r| r["id"] == id)
            .map(|r| r["revoked"].clone())
            .unwrap_or_else(|| panic!("token {id} forgotten: {out}"))
    };
    assert_eq!(state(&ids[0]), Value::Bool(true));
    assert_eq!(state(&ids[1]), Value::Bool(false));
}

/// The operator's recipe end to end: `jalur token create > token`, then a `jalur proxy` on
/// https:// with that token gets its certificate from the CA (the one-shot token is then spent)
/// and neither process logs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_its_certificate_with_a_token_from_the_cli() {
    let s = setup();
    let (_control, status, tls) = start_control_tls(&s);
    let create = with_admin(
        &s,
        &[
            "token",
            "create",
            "-n",
            "shop",
            "--service-account",
            "storefront",
        ],
    );
    let (code, token, err) = run(status, &create);
    assert_eq!(code, Some(0), "{err}");
    let token_file = s.dir.join("token");
    std::fs::write(&token_file, &token).expect("write token");

    let proxy_log = s.dir.join("proxy.log");
    let mut cmd = jalur();
    cmd.env("RUST_LOG", "debug")
        .arg("proxy")
        .args(["--xds-address", &format!("https://{tls}")])
        .arg("--root-cert")
        .arg(s.dir.join("state/ca/trust-bundle.pem"))
        .arg("--token-file")
        .arg(&token_file)
        .args(["--service", "storefront", "--namespace", "shop"])
        .args(["--listen-address", "127.0.0.1", "--outbound-port", "0"])
        .args(["--inbound-port", "0", "--admin-addr", "127.0.0.1:0"])
        .args([
            "--health-addr",
            "127.0.0.1:0",
            "--stats-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&proxy_log).expect("proxy log"));
    let _proxy = ChildGuard::spawn("jalur proxy", &mut cmd).expect("spawn jalur proxy");

    let bearer = format!("Bearer {ADMIN}");
    jalur_testkit::assert_eventually(
        "the proxy's token is spent",
        Duration::from_secs(20),
        || {
            let bearer = bearer.clone();
            async move {
                let (code, _, body) = http_get(
                    status,
                    "control",
                    "/api/tokens",
                    &[("authorization", &bearer)],
                )
                .await?;
                let list: Value =
                    serde_json::from_str(&body).map_err(|e| format!("{code}: {e}"))?;
                if list[0]["used"] == Value::Bool(true) {
                    Ok(())
                } else {
                    Err(format!("not yet: {body}"))
                }
            }
        },
    )
    .await;
    jalur_testkit::assert_eventually(
        "the proxy is connected over TLS",
        Duration::from_secs(20),
        || async move {
            let (_, _, body) = http_get(status, "control", "/debug/syncz", &[]).await?;
            if body.contains("storefront") {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    let (_, _, metrics) = http_get(status, "control", "/metrics", &[])
        .await
        .expect("GET");
    assert!(
        metrics.contains("jalur_ca_certificates_issued_total 1"),
        "{metrics}"
    );
    let proxy_text = std::fs::read_to_string(&proxy_log).expect("proxy log");
    assert!(
        !proxy_text.contains(signature(token.trim())),
        "the proxy logged its token"
    );
    assert_no_secrets(&s, &[token.trim()], &[&metrics]);
}
