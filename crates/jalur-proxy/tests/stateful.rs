//! mesh → stateful VM (issue 4, case 4): a real Redis and a real PostgreSQL (Debian packages,
//! started here on loopback) behind a ServiceEntry with a TCP port, reached through a jalur
//! sidecar's local TCP listener (annotation `jalur.dev/local-ports`), with every connection
//! counted in the `istio_tcp_*` metrics.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{jalur_sidecar, sidecar_opts, Plane};
use jalur_proxy::run::Proxy;
use jalur_testkit::peers::{postgres_bin_dir, redis_server};
use jalur_testkit::{assert_eventually, http_get, require_peer, ChildGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NAMESPACE: &str = "shop";
const CALLER: &str = "checkout";

/// How long a server may take to answer after it was started.
const SERVER_READY: Duration = Duration::from_secs(15);
/// A failed start (the port was taken between `free_port` and the server's bind) is retried
/// this many times with a new port.
const START_ATTEMPTS: usize = 3;

// ---------------------------------------------------------------------------------------------
// Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_through_a_sidecar_local_port_round_trips_and_is_counted() {
    let Some(bin) = require_peer("redis-server", redis_server()) else {
        return;
    };
    let started = Instant::now();
    let redis = Redis::start(&bin).await;
    let server_up = started.elapsed();

    let host = "redis.cache.internal";
    let se = service_entry("redis", host, 6379, "tcp-redis", redis.port);
    let plane = Plane::start(&[("redis.yaml", se)]).await;
    let (proxy, _) = jalur_sidecar(sidecar_opts(plane.xds, CALLER, NAMESPACE)).await;
    let local = tcp_listener(&proxy, 6379, host).await;
    assert_ne!(
        local.port(),
        redis.port,
        "the sidecar's own port, not Redis's"
    );

    // A binary value bigger than one read, with CR LF inside, so only a byte-exact opaque copy
    // brings it back intact.
    let value: Vec<u8> = (0..16 * 1024u32).map(|i| (i % 251) as u8).collect();
    let key: &[u8] = b"jalur:stateful:k";

    // Connection 1 writes, connection 2 reads: the value lives in the real server.
    let set = resp_command(&[b"SET", key, &value]);
    let mut conn = TcpStream::connect(local).await.expect("connect (SET)");
    conn.write_all(&set).await.expect("write SET");
    let set_reply = read_reply(&mut conn).await;
    assert_eq!(String::from_utf8_lossy(&set_reply), "+OK\r\n");
    drop(conn);

    let get = resp_command(&[b"GET", key]);
    let mut conn = TcpStream::connect(local).await.expect("connect (GET)");
    conn.write_all(&get).await.expect("write GET");
    let get_reply = read_reply(&mut conn).await;
    let mut expected = format!("${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    assert!(
        get_reply == expected,
        "GET through the sidecar returned {} bytes, expected {}",
        get_reply.len(),
        expected.len()
    );
    drop(conn);

    // Both connections counted once closed, with the exact bytes each way: received = what the
    // caller sent (requests), sent = what went back to it (replies), as Istio defines them.
    let tcp = tcp_metrics(&proxy, host, 2).await;
    assert_eq!(tcp.opened, 2, "{}", tcp.text);
    assert_eq!(tcp.received, (set.len() + get.len()) as u64, "{}", tcp.text);
    assert_eq!(
        tcp.sent,
        (set_reply.len() + get_reply.len()) as u64,
        "{}",
        tcp.text
    );
    proxy.shutdown().await;
    eprintln!(
        "redis: server up in {server_up:?}, whole test {:?}",
        started.elapsed()
    );
}

/// `redis-server` on 127.0.0.1 with nothing persisted, killed (and its directory removed) on
/// drop.
struct Redis {
    child: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    async fn start(bin: &Path) -> Redis {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::TempDir::with_prefix("jalur-redis-").expect("temp dir");
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("redis.log")).expect("log file");
            let mut command = Command::new(bin);
            command
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--logfile", ""])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log);
            let mut redis = Redis {
                child: ChildGuard::spawn("redis-server", &mut command).expect("spawn redis-server"),
                port,
                dir,
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + SERVER_READY;
            while Instant::now() < deadline && redis.child.exited().is_none() {
                if ping(addr).await {
                    return redis;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures.push(format!(
                "port {port}: {}",
                std::fs::read_to_string(redis.dir.path().join("redis.log")).unwrap_or_default()
            ));
        }
        panic!("redis-server did not start: {failures:#?}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.child.kill();
    }
}

async fn ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        conn.write_all(&resp_command(&[b"PING"])).await.ok()?;
        let mut buf = [0u8; 7];
        conn.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A RESP array of bulk strings, as redis-cli sends commands.
fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads exactly one RESP reply (simple string, error, integer or bulk string), raw.
async fn read_reply(conn: &mut TcpStream) -> Vec<u8> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(len) = reply_len(&buf) {
                assert_eq!(len, buf.len(), "more than one reply");
                return buf;
            }
            let n = conn.read(&mut chunk).await.expect("read reply");
            assert!(
                n > 0,
                "connection closed mid-reply after {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a Redis reply within 5 s")
}

/// The length of the complete reply at the start of `buf`, once all of it is there.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    match buf[0] {
        b'+' | b'-' | b':' => Some(line_end),
        b'$' => {
            let n: i64 = std::str::from_utf8(&buf[1..line_end - 2])
                .ok()?
                .parse()
                .ok()?;
            if n < 0 {
                return Some(line_end);
            }
            let total = line_end + n as usize + 2;
            (buf.len() >= total).then_some(total)
        }
        other => panic!("unexpected RESP type byte {:?}", other as char),
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_a_sidecar_local_port_answers_sql_and_is_counted() {
    let Some(bin) = require_peer("postgresql", postgres_bin_dir()) else {
        return;
    };
    let started = Instant::now();
    let pg = Postgres::start(&bin).await;
    let server_up = started.elapsed();

    let host = "ledger.db.internal";
    let se = service_entry("ledger", host, 5432, "tcp-postgres", pg.port);
    let plane = Plane::start(&[("ledger.yaml", se)]).await;
    let (proxy, _) = jalur_sidecar(sidecar_opts(plane.xds, CALLER, NAMESPACE)).await;
    let local = tcp_listener(&proxy, 5432, host).await;
    assert_ne!(
        local.port(),
        pg.port,
        "the sidecar's own port, not PostgreSQL's"
    );

    // Three psql sessions, one connection each, all through the sidecar.
    assert_eq!(psql(&bin, local.port(), "SELECT 40+2").await, "42");
    psql(
        &bin,
        local.port(),
        "CREATE TABLE ledger (id int PRIMARY KEY, amount int); \
         INSERT INTO ledger VALUES (1, 40), (2, 2)",
    )
    .await;
    // The rows written by the previous session, read back from the real server, which saw the
    // connection arrive on its own port.
    assert_eq!(
        psql(
            &bin,
            local.port(),
            "SELECT sum(amount), inet_server_port() FROM ledger"
        )
        .await,
        format!("42|{}", pg.port)
    );

    let tcp = tcp_metrics(&proxy, host, 3).await;
    assert_eq!(tcp.opened, 3, "{}", tcp.text);
    assert!(tcp.sent > 0 && tcp.received > 0, "{}", tcp.text);
    proxy.shutdown().await;
    eprintln!(
        "postgres: initdb + server up in {server_up:?}, whole test {:?}",
        started.elapsed()
    );
}

/// A throwaway PostgreSQL cluster (initdb, trust auth) on 127.0.0.1, its socket and data in a
/// temp dir. Dropping it shuts the server down (SIGINT, then SIGKILL after 5 s) and removes
/// the directory, also when the test failed.
struct Postgres {
    child: Option<ChildGuard>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    async fn start(bin: &Path) -> Postgres {
        let owner = server_user();
        let dir = tempfile::TempDir::with_prefix("jalur-postgres-").expect("temp dir");
        let mut pg = Postgres {
            child: None,
            port: 0,
            dir,
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(pg.dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = pg.dir.path().join("data");

        let mut initdb = tokio::process::Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "--no-locale"])
            .args(["-E", "UTF8"])
            .current_dir(pg.dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), initdb.output())
            .await
            .expect("initdb within 60 s")
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let log_path = pg.dir.path().join(format!("postgres-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("log file");
            let mut command = Command::new(bin.join("postgres"));
            command
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(pg.dir.path())
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "fsync=off", "-c", "shared_buffers=16MB"])
                .args(["-c", "max_connections=20"])
                .current_dir(pg.dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log fd"))
                .stderr(log);
            if let Some((uid, gid)) = owner {
                use std::os::unix::process::CommandExt;
                command.uid(uid).gid(gid);
            }
            pg.child = Some(ChildGuard::spawn("postgres", &mut command).expect("spawn postgres"));
            pg.port = port;
            if pg.wait_ready(bin).await {
                return pg;
            }
            pg.stop();
            failures.push(format!(
                "port {port}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            ));
        }
        panic!("postgres did not start: {failures:#?}");
    }

    /// Polls `pg_isready` until the server accepts connections; false if it exited or did not
    /// get there within `SERVER_READY`.
    async fn wait_ready(&mut self, bin: &Path) -> bool {
        let deadline = Instant::now() + SERVER_READY;
        while Instant::now() < deadline {
            if self.child.as_mut().is_none_or(|c| c.exited().is_some()) {
                return false;
            }
            let ready = tokio::process::Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-t", "1", "-p"])
                .arg(self.port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Fast shutdown (SIGINT: abort sessions, checkpoint, exit with its helpers), bounded by
    /// 5 s, then SIGKILL.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.exited().is_none() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        child.kill();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// PostgreSQL refuses to run as root: as root, its server runs as the `postgres` user (made by
/// Debian's package); as anyone else, as that user.
fn server_user() -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let euid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if euid != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root needs the `postgres` user to start PostgreSQL (Debian's postgresql \
             package creates it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

/// Runs one SQL string through `psql` (one connection) to 127.0.0.1:`port` and returns its
/// unaligned, tuples-only output, trimmed. SSL and GSS negotiation are off so each session is
/// exactly one plain connection.
async fn psql(bin: &Path, port: u16, sql: &str) -> String {
    let run = tokio::process::Command::new(bin.join("psql"))
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-w"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        .env("PGSSLMODE", "disable")
        .env("PGGSSENCMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(15), run)
        .await
        .unwrap_or_else(|_| panic!("psql {sql:?} within 15 s"))
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Shared

/// Redis and PostgreSQL take their port on the command line and cannot report one the OS chose,
/// so: bind 127.0.0.1:0, read the port, release it, and start the server on it. Another process
/// may take the port in between; the server then fails to bind and exits, and the `start`
/// functions try again with a new port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A MESH_EXTERNAL ServiceEntry for a VM on 127.0.0.1:`target` with one TCP port, which the
/// sidecar serves on a local port of the OS's choosing (`jalur.dev/local-ports: "PORT=0"`).
fn service_entry(name: &str, host: &str, port: u16, port_name: &str, target: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  annotations: {{jalur.dev/local-ports: \"{port}=0\"}}\nspec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: {port}, name: {port_name}, protocol: TCP}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{{port_name}: {target}}}\n"
    )
}

/// The address of the sidecar's listener `tcp|PORT|HOST`, once bound.
async fn tcp_listener(proxy: &Proxy, port: u16, host: &str) -> SocketAddr {
    let name = format!("tcp|{port}|{host}");
    assert_eventually(
        &format!("the sidecar binds {name}"),
        Duration::from_secs(10),
        || async {
            proxy
                .listeners()
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| a)
                .ok_or_else(|| format!("listeners: {:?}", proxy.listeners()))
        },
    )
    .await
}

/// The `istio_tcp_*` counters for one destination service, summed over their label sets.
struct TcpMetrics {
    opened: u64,
    closed: u64,
    sent: u64,
    received: u64,
    text: String,
}

/// Waits until `closed` connections to `host` are counted as closed (the proxy counts a
/// connection and its bytes when both directions have ended), then returns the counters.
async fn tcp_metrics(proxy: &Proxy, host: &str, closed: u64) -> TcpMetrics {
    let stats = proxy.stats_addr;
    assert_eventually(
        &format!("{closed} closed TCP connections to {host} counted"),
        Duration::from_secs(10),
        || async move {
            let text = http_get(stats, "stats", "/stats/prometheus", &[]).await?.2;
            let sum = |name: &str| metric_sum(&text, name, host);
            let m = TcpMetrics {
                opened: sum("istio_tcp_connections_opened_total"),
                closed: sum("istio_tcp_connections_closed_total"),
                sent: sum("istio_tcp_sent_bytes_total"),
                received: sum("istio_tcp_received_bytes_total"),
                text: text.clone(),
            };
            if m.closed == closed {
                Ok(m)
            } else {
                Err(text)
            }
        },
    )
    .await
}

/// Sums the samples of `name` whose labels name `host` as the destination service, checking
/// they were reported by the calling workload's sidecar.
fn metric_sum(text: &str, name: &str, host: &str) -> u64 {
    let service = format!("destination_service=\"{host}\"");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&service))
        .map(|l| {
            assert!(
                l.contains("reporter=\"source\"")
                    && l.contains(&format!("source_workload=\"{CALLER}\"")),
                "{l}"
            );
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("not a counter sample: {l}"))
        })
        .sum()
}
