//! `jalur control` and `jalur proxy` as real processes on the control plane's TLS port
//! (15012): proxies bootstrap their identity with a token, sync over mTLS and renew short
//! certificates several times under traffic without their ADS stream or a request noticing; a
//! refused token stops `jalur proxy` at start with the CA's message; without
//! `--insecure-xds` no plaintext xDS is served. (The in-process versions, with the impostor,
//! wrong-CA and restart cases, are in `crates/jalur-proxy/tests/secure_xds.rs`.)

mod process;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jalur_control::ca::Tokens;
use jalur_testkit::{assert_eventually, http_get, EchoServer};
use process::{jalur, ControlProcess, ProxyProcess, ProxySpec, Workdir, NS};

const REVIEWS: &str = "reviews.bookinfo.svc.cluster.local";

/// A one-shot bootstrap token for `bookinfo/<sa>`, minted with the control plane's key before
/// it starts (it loads them from its state dir), written to a file.
fn token_file(wd: &Workdir, sa: &str, for_sa: &str) -> PathBuf {
    let tokens =
        Tokens::load_or_create(&wd.config().join(".jalur"), "cluster.local").expect("tokens");
    let issued = tokens
        .create(NS, for_sa, Duration::from_secs(600), false)
        .expect("token");
    let path = wd.root.join(format!("{sa}.token"));
    std::fs::write(&path, format!("{}\n", issued.token)).expect("write token");
    path
}

fn bundle(wd: &Workdir) -> PathBuf {
    wd.config().join(".jalur/ca/trust-bundle.pem")
}

/// A proxy spec reaching the control plane on 15012 with `token`.
fn secure(
    mut spec: ProxySpec,
    control: &ControlProcess,
    wd: &Workdir,
    token: &Path,
    ttl: &str,
) -> ProxySpec {
    spec.xds_address = Some(format!("https://{}", control.xds_tls));
    spec.extra.extend(
        [
            "--root-cert",
            &bundle(wd).display().to_string(),
            "--token-file",
            &token.display().to_string(),
            "--cert-ttl",
            ttl,
        ]
        .map(String::from),
    );
    spec
}

/// `(conn_id, ready)` of `node` at the control plane.
async fn connection(control: &ControlProcess, service: &str) -> Result<(u64, bool), String> {
    let clients = control.get_json("/debug/syncz").await?;
    clients
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["node_id"]
                .as_str()
                .is_some_and(|n| n.contains(&format!("~{service}-")))
        })
        .map(|c| {
            (
                c["conn_id"].as_u64().unwrap_or(0),
                c["ready"].as_bool().unwrap_or(false),
            )
        })
        .ok_or_else(|| format!("{service} not connected: {clients}"))
}

/// Runs a proxy whose 4 s certificates renew every ~2 s while requests flow through it for
/// ~7 s (long enough for two renewals with margin on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_bootstrap_with_tokens_sync_over_15012_and_renew_under_traffic() {
    let wd = Workdir::new("jalur-secure-xds-", &[]);
    let reviews_token = token_file(&wd, "reviews", "reviews");
    let caller_token = token_file(&wd, "productpage", "productpage");
    let control = ControlProcess::start(&wd.config(), &[]);
    let backend = EchoServer::start("reviews-1").await;
    let reviews = ProxyProcess::start(
        &secure(
            ProxySpec::instance(control.xds, "reviews", backend.addr().port(), &[]),
            &control,
            &wd,
            &reviews_token,
            "4s",
        ),
        &wd.root,
    );
    let caller = ProxyProcess::start(
        &secure(
            ProxySpec::caller(control.xds, "productpage"),
            &control,
            &wd,
            &caller_token,
            "1h",
        ),
        &wd.root,
    );
    reviews.wait_ready().await;
    caller.wait_ready().await;
    for proxy in [&reviews, &caller] {
        let xds = proxy.xds_status().await.expect("xds status");
        assert!(
            xds["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("https://")),
            "{xds}"
        );
    }
    let (conn, _) = assert_eventually(
        "reviews ready at the control plane",
        Duration::from_secs(20),
        || async {
            match connection(&control, "reviews").await? {
                (id, true) => Ok((id, true)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // `jalur proxy-status` names the identity each proxy proved on 15012.
    let out = jalur()
        .args(["proxy-status", "--control", &control.status.to_string()])
        .output()
        .expect("proxy-status");
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("~reviews-"))
        .unwrap_or("");
    assert!(
        table.starts_with("NAME")
            && row.ends_with(&format!("spiffe://cluster.local/ns/{NS}/sa/reviews")),
        "{table}"
    );
    assert_eventually(
        "productpage reaches reviews",
        Duration::from_secs(20),
        || async {
            match http_get(caller.outbound, REVIEWS, "/", &[]).await? {
                (200, _, body) if body.contains("reviews-1") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let renewals = |p: &ProxyProcess| p.log_text().matches("workload certificate renewed").count();
    let before = renewals(&reviews);
    let (mut ok, mut failed) = (0u32, Vec::new());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) || renewals(&reviews) < before + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no two renewals in 30 s\n{}",
            reviews.log_tail()
        );
        match http_get(caller.outbound, REVIEWS, "/", &[]).await {
            Ok((200, _, _)) => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let renewed = renewals(&reviews) - before;
    assert!(renewed >= 2, "{renewed} renewals\n{}", reviews.log_tail());
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across {renewed} renewals: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The ADS stream never noticed: the same connection, the only one it opened.
    let (after, ready) = connection(&control, "reviews")
        .await
        .expect("still connected");
    assert_eq!(
        (after, ready),
        (conn, true),
        "the ADS stream was re-established"
    );
    let xds = reviews.xds_status().await.expect("xds status");
    assert_eq!(xds["streams"], 1, "{xds}");
    println!("{ok} requests, 0 failed, across {renewed} renewals of 4 s certificates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_proxy_at_start_with_the_cas_message() {
    let wd = Workdir::new("jalur-secure-xds-", &[]);
    // A token for productpage, presented by a proxy asking for reviews' identity.
    let wrong = token_file(&wd, "reviews", "productpage");
    let control = ControlProcess::start(&wd.config(), &[]);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::from(jalur())
            .args([
                "proxy",
                "--xds-address",
                &format!("https://{}", control.xds_tls),
            ])
            .args(["--root-cert", &bundle(&wd).display().to_string()])
            .args(["--token-file", &wrong.display().to_string()])
            .args([
                "--service",
                "reviews",
                "--namespace",
                NS,
                "--ephemeral-ports",
            ])
            .args([
                "--admin-addr",
                "127.0.0.1:0",
                "--health-addr",
                "127.0.0.1:0",
                "--stats-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("jalur proxy exits by itself")
    .expect("run jalur proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("spiffe://cluster.local/ns/bookinfo/sa/reviews")
            && stderr.contains("PermissionDenied")
            && stderr.contains("may not request"),
        "the CA's refusal, naming the identity: {stderr}"
    );
    let text = std::fs::read_to_string(&wrong).expect("token");
    assert!(
        !stderr.contains(text.trim()),
        "the token was printed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_insecure_xds_only_the_tls_port_is_served() {
    let wd = Workdir::new("jalur-secure-xds-", &[]);
    let mut cmd = jalur();
    cmd.args(["control", "--config", &wd.config().display().to_string()])
        .args([
            "--xds-tls-addr",
            "127.0.0.1:0",
            "--xds-addr",
            "127.0.0.1:0",
            "--status-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = jalur_testkit::ChildGuard::spawn("jalur control", &mut cmd).expect("spawn");
    let stdout = child.child_mut().stdout.take().expect("stdout");
    let lines: Vec<String> = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("status:"))
            .collect()
    })
    .await
    .expect("read stdout");
    assert!(lines.iter().any(|l| l.contains("xDS+CA:")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("plaintext")),
        "plaintext xDS served: {lines:?}"
    );
}
