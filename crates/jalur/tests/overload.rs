//! A `jalur proxy` process against clients that hold connections without finishing a request:
//! heads trickled byte by byte (slowloris) and 10,000 connections that send nothing. The proxy
//! closes them at its header read timeout, its memory per held connection stays small, and a
//! normal client keeps being served as quickly as before.
//!
//! The test holds ~10,300 sockets and so does the proxy: it raises its own soft RLIMIT_NOFILE
//! to the hard limit with util-linux's `prlimit` (no unsafe code here; the proxy inherits it)
//! and fails, saying so, if the hard limit is too low.

mod process;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{assert_eventually, http_get, EchoServer};
use process::{ControlProcess, ProxyProcess, ProxySpec, Workdir, NS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 10_000;
const SLOW: usize = 200;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const HOST: &str = "reviews.bookinfo.svc.cluster.local";

/// Raises this process's soft open-files limit to its hard limit; returns the hard limit.
fn raise_nofile() -> u64 {
    let pid = std::process::id().to_string();
    let hard = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid,
            "--nofile",
            "--output",
            "HARD",
            "--noheadings",
        ])
        .output()
        .expect("run prlimit (util-linux)");
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit --nofile={hard}:{hard} failed");
    hard.parse().unwrap_or(0)
}

/// The proxy's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Latencies of `n` requests through `proxy`, each on a fresh connection, sorted.
async fn latencies(proxy: SocketAddr, n: usize) -> Vec<Duration> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let (status, _, _) = http_get(proxy, HOST, "/", &[]).await.expect("served");
        assert_eq!(status, 200);
        v.push(started.elapsed());
    }
    v.sort();
    v
}

/// How long each held connection lived, once the proxy closed it.
type Lives = Arc<Mutex<Vec<Duration>>>;

/// A connection held open (idle, or trickling a head) until the proxy closes it.
fn hold(mut stream: TcpStream, trickle: bool, lives: Lives) {
    let opened = Instant::now();
    tokio::spawn(async move {
        let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ");
        let mut bytes = head.bytes().cycle();
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                r = stream.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                () = tokio::time::sleep(Duration::from_millis(300)), if trickle => {
                    let byte = [bytes.next().unwrap_or(b'x')];
                    if stream.write_all(&byte).await.is_err() {
                        break;
                    }
                }
            }
        }
        lives
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(opened.elapsed());
    });
}

/// Slowloris and 10,000 idle connections against a jalur sidecar with a 3 s header read
/// timeout: all are closed by the timeout, each held connection costs the proxy a few KiB
/// (measured from its RSS), and a normal client's latency stays low meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_10000_idle_connections_are_cut_memory_stays_bounded_and_others_are_served() {
    let hard = raise_nofile();
    assert!(
        hard >= (IDLE + SLOW + 500) as u64,
        "RLIMIT_NOFILE hard limit {hard} is too low for {IDLE} connections; raise it (ulimit -Hn)"
    );
    let backend = EchoServer::start("v1").await;
    let work = Workdir::new(
        "jalur-overload",
        &[
            ("service.yaml", service_entry("reviews", NS, HOST)),
            (
                "we.yaml",
                workload_entry("reviews", "v1", NS, backend.addr()),
            ),
        ],
    );
    let control = ControlProcess::start(&work.config(), &[]);
    let mut spec = ProxySpec::caller(control.xds, "productpage");
    spec.extra = vec![
        "--header-read-timeout".into(),
        format!("{}s", HEADER_READ_TIMEOUT.as_secs()),
    ];
    let proxy = ProxyProcess::start(&spec, &work.root);
    proxy.wait_ready().await;
    let before = latencies(proxy.outbound, 50).await;
    let (rss_before, fds_before) = (rss_kib(proxy.pid()), open_fds(proxy.pid()));

    let lives: Lives = Arc::default();
    for i in 0..IDLE + SLOW {
        let stream = TcpStream::connect(proxy.outbound).await.expect("connect");
        hold(stream, i >= IDLE, lives.clone());
    }
    let pid = proxy.pid();
    assert_eventually(
        "the proxy holds every connection",
        HEADER_READ_TIMEOUT,
        || {
            let fds = open_fds(pid);
            async move {
                if fds >= fds_before + IDLE + SLOW {
                    Ok(())
                } else {
                    Err(format!("{fds} open files"))
                }
            }
        },
    )
    .await;
    let rss_held = rss_kib(pid);
    let during = latencies(proxy.outbound, 50).await;
    let per_connection = (rss_held.saturating_sub(rss_before)) * 1024 / (IDLE + SLOW) as u64;
    eprintln!(
        "RSS {rss_before} KiB before, {rss_held} KiB holding {} connections: {per_connection} bytes each; \
         latency median/max before {:?}/{:?}, while held {:?}/{:?}",
        IDLE + SLOW,
        before[25],
        before[49],
        during[25],
        during[49]
    );
    assert!(
        per_connection <= 16 * 1024,
        "{per_connection} bytes of proxy memory per held connection"
    );
    assert!(
        during[25] <= before[25] * 3 + Duration::from_millis(20)
            && during[49] < Duration::from_secs(1),
        "a normal client slowed down: median {:?} -> {:?}, max {:?}",
        before[25],
        during[25],
        during[49]
    );

    // Every held connection is closed by the proxy's timeout: not before it (less the time this
    // busy test process may take to notice its connect finished), and soon after.
    let all = IDLE + SLOW;
    assert_eventually(
        "every held connection is closed",
        HEADER_READ_TIMEOUT * 3,
        || {
            let n = lives.lock().unwrap_or_else(|e| e.into_inner()).len();
            async move {
                if n == all {
                    Ok(())
                } else {
                    Err(format!("{n} of {all} closed"))
                }
            }
        },
    )
    .await;
    let mut lived = lives.lock().unwrap_or_else(|e| e.into_inner()).clone();
    lived.sort();
    eprintln!(
        "held connections lived {:?} to {:?}",
        lived[0],
        lived[all - 1]
    );
    assert!(
        lived[0] >= HEADER_READ_TIMEOUT - Duration::from_millis(250),
        "closed before the header read timeout: {:?}",
        lived[0]
    );
    assert!(
        lived[all - 1] <= HEADER_READ_TIMEOUT * 2,
        "closed late: {:?}",
        lived[all - 1]
    );
    let stats = http_get(proxy.stats, "stats", "/stats/prometheus", &[])
        .await
        .expect("stats")
        .2;
    let timed_out: u64 = stats
        .lines()
        .filter(|l| l.contains("reason=\"header_timeout\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        timed_out >= all as u64,
        "counted {timed_out} header timeouts: {stats}"
    );
    let after = latencies(proxy.outbound, 20).await;
    eprintln!(
        "all closed; RSS {} KiB, {} open files; latency median after {:?}",
        rss_kib(pid),
        open_fds(pid),
        after[10]
    );
}
