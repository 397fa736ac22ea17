//! The AuthorizationPolicy matrix's set-up, shared by `tests/authz.rs` and `tests/authz_jwt.rs`:
//! one control plane (PERMISSIVE mTLS, the policy file rewritten per group), per column (stock
//! Envoy beside `jalur agent`, jalur proxy) an HTTP server sidecar of a recording backend and a
//! TCP one of an echo, a `storefront` caller sidecar holding mesh credentials, and the probes:
//! a case is allowed (the backend's answer, and the backend saw it) or denied (403 `RBAC:
//! access denied`, `text/plain`, and the backend never saw it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use jalur_proxy::run::Proxy;
use jalur_testkit::assert_eventually;
use jalur_testkit::wire::{exchange, Recorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bound_listener;
use super::mesh::{peer_authentication, EnvoySidecar, MeshPlane, NS};
use super::probe::{tcp_echo, CONVERGE};

pub const STOREFRONT: &str = "cluster.local/ns/shop/sa/storefront";
pub const POLICY_FILE: &str = "authz.yaml";

/// Who sends a case's request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Caller {
    /// Plaintext, straight to the server's inbound listener: no principal, source 127.0.0.1.
    Plain,
    /// Through the `storefront` jalur sidecar: mTLS with `shop/storefront`'s certificate.
    Storefront,
}

/// One HTTP request of the matrix and the outcome both proxies must give.
pub struct Case {
    pub name: &'static str,
    pub from: Caller,
    pub method: &'static str,
    pub path: &'static str,
    /// `Host`; `None`: the server's service host (what the storefront sidecar routes by).
    pub host: Option<&'static str>,
    pub headers: &'static [(&'static str, &'static str)],
    pub allowed: bool,
}

pub const fn case(name: &'static str, from: Caller, path: &'static str, allowed: bool) -> Case {
    Case {
        name,
        from,
        method: "GET",
        path,
        host: None,
        headers: &[],
        allowed,
    }
}

/// One column of the matrix: an HTTP server sidecar and a TCP one, by proxy kind.
pub struct Column {
    pub label: &'static str,
    /// The service the HTTP server is (`payments` / `payments-j`), for the storefront's Host.
    pub service: &'static str,
    pub http_inbound: SocketAddr,
    pub backend: Recorder,
    pub tcp_inbound: SocketAddr,
    /// The port of the TCP app behind the `db` sidecar (its workload port).
    pub db_port: u16,
    pub envoy: Option<(EnvoySidecar, EnvoySidecar)>,
    pub jalur: Vec<Proxy>,
}

impl Column {
    pub fn host(&self) -> String {
        format!("{}.{NS}.svc.cluster.local", self.service)
    }

    /// `/stats/prometheus` of the HTTP (or TCP) server's admin: Envoy's, or jalur proxy's on
    /// its admin port (jalur keeps Envoy's RBAC names there).
    pub async fn prometheus(&self, tcp: bool) -> String {
        if let Some((http, db)) = &self.envoy {
            let e = if tcp { db } else { http };
            return e
                .envoy
                .admin_get("/stats/prometheus")
                .await
                .expect("Envoy stats");
        }
        let proxy = &self.jalur[usize::from(tcp)];
        let r = jalur_testkit::http_get(proxy.admin_addr, "localhost", "/stats/prometheus", &[])
            .await
            .expect("jalur admin stats");
        r.2
    }

    /// The RBAC counters (HTTP allowed, HTTP denied, TCP allowed, TCP denied) in Envoy 1.40's
    /// Prometheus names: `envoy_http_rbac_*{envoy_http_conn_manager_prefix="inbound"}` (the
    /// inbound HCM's prefix) and, for the network filter's `tcp.rbac.*`, what Envoy's tag
    /// extractors make of it: `envoy_*{envoy_rbac_prefix="tcp",envoy_tcp_prefix="rbac"}`.
    /// Every RBAC line (`# TYPE` and samples, names, labels and values) of the HTTP and the
    /// TCP proxy's `/stats/prometheus`, sorted: what a dashboard reading Envoy's RBAC
    /// metrics would see.
    pub async fn rbac_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for tcp in [false, true] {
            let page = self.prometheus(tcp).await;
            lines.extend(
                page.lines()
                    .filter(|l| {
                        (l.starts_with("envoy_") || l.starts_with("# TYPE envoy_"))
                            && l.contains("rbac")
                    })
                    .map(|l| format!("{}: {l}", if tcp { "tcp" } else { "http" })),
            );
        }
        lines.sort();
        lines
    }

    pub async fn rbac_counters(&self) -> [u64; 4] {
        let (http, tcp) = (self.prometheus(false).await, self.prometheus(true).await);
        let sum = |text: &str, metric: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    l.strip_prefix(metric)
                        .is_some_and(|rest| rest.starts_with(['{', ',', ' ']))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        [
            sum(&http, "envoy_http_rbac_allowed"),
            sum(&http, "envoy_http_rbac_denied"),
            sum(&tcp, "envoy_allowed{envoy_rbac_prefix=\"tcp\""),
            sum(&tcp, "envoy_denied{envoy_rbac_prefix=\"tcp\""),
        ]
    }
}

/// The whole set-up: plane, the storefront caller, the columns.
pub struct Matrix {
    pub plane: MeshPlane,
    pub storefront: SocketAddr,
    /// Replaced at every policy change: Envoy applies a changed filter chain to new
    /// connections, while one opened before keeps the old chain until it drains (600 s by
    /// default), so a pooled caller connection would still be served without the new policy.
    pub caller: Proxy,
    pub columns: Vec<Column>,
    pub seq: AtomicU64,
}

pub async fn envoy_column(plane: &MeshPlane, binary: &std::path::Path) -> Column {
    let backend = Recorder::h1().await;
    let echo = tcp_echo().await;
    let (http, db) = tokio::join!(
        plane.envoy(binary, "payments", Some(("http", backend.addr().port()))),
        plane.envoy(binary, "db", Some(("tcp-db", echo.port()))),
    );
    let http_inbound = http.listener("inbound").await;
    let tcp_inbound = db.listener("inbound").await;
    Column {
        label: "envoy",
        service: "payments",
        http_inbound,
        backend,
        tcp_inbound,
        db_port: echo.port(),
        envoy: Some((http, db)),
        jalur: Vec::new(),
    }
}

pub async fn jalur_column(plane: &MeshPlane) -> Column {
    let backend = Recorder::h1().await;
    let echo = tcp_echo().await;
    let http = plane
        .server("payments-j", "http", backend.addr().port())
        .await;
    let db = plane.server("db-j", "tcp-db", echo.port()).await;
    let http_inbound = bound_listener(&http, "inbound").await;
    let tcp_inbound = bound_listener(&db, "inbound").await;
    Column {
        label: "jalur",
        service: "payments-j",
        http_inbound,
        backend,
        tcp_inbound,
        db_port: echo.port(),
        envoy: None,
        jalur: vec![http, db],
    }
}

impl Matrix {
    pub async fn start(with_jalur: bool) -> Option<Matrix> {
        let binary = jalur_testkit::require_peer("envoy", jalur_testkit::envoy_binary())?;
        let plane = MeshPlane::start(&[peer_authentication("PERMISSIVE")]).await;
        let mut columns = vec![envoy_column(&plane, &binary).await];
        if with_jalur {
            columns.push(jalur_column(&plane).await);
        }
        let creds = plane.issue("storefront");
        let (caller, storefront) = plane.caller("storefront", Some(creds)).await;
        let m = Matrix {
            plane,
            storefront,
            caller,
            columns,
            seq: AtomicU64::new(0),
        };
        // Every server answers before any policy exists.
        for col in &m.columns {
            let what = format!("{}: the storefront reaches {}", col.label, col.host());
            assert_eventually(&what, CONVERGE, || async {
                let r = m
                    .send(col, &case("warm-up", Caller::Storefront, "/", true))
                    .await;
                (r.0 == 200)
                    .then_some(())
                    .ok_or(format!("{r:?}\n{}", m.plane.diagnose()))
            })
            .await;
        }
        Some(m)
    }

    /// Writes the policy file and waits until every proxy has acknowledged the configuration
    /// built from it: a new generation, every client past it and in sync.
    pub async fn apply(&mut self, group: &str, yaml: &str) {
        self.push(group, yaml).await;
        // A fresh storefront sidecar, so its requests come on new connections.
        let creds = self.plane.issue("storefront");
        let (caller, storefront) = self.plane.caller("storefront", Some(creds)).await;
        let old = std::mem::replace(&mut self.caller, caller);
        old.shutdown().await;
        self.storefront = storefront;
    }

    /// [`Matrix::apply`] without replacing the storefront sidecar: its pooled connections to
    /// the servers stay open across the change.
    pub async fn push(&self, group: &str, yaml: &str) {
        let state = &self.plane.plane.control().state;
        let before = state.generation.load(Ordering::SeqCst);
        self.plane.plane.write(POLICY_FILE, yaml);
        let what = format!("group `{group}`: every proxy holds the new policies");
        assert_eventually(&what, CONVERGE, || async {
            let now = state.generation.load(Ordering::SeqCst);
            let clients = state.ads.sync().clients();
            let behind: Vec<String> = clients
                .iter()
                .filter(|c| c.generation < now || !c.in_sync)
                .map(|c| format!("{} at {} (in sync {})", c.node_id, c.generation, c.in_sync))
                .collect();
            (now > before && behind.is_empty())
                .then_some(())
                .ok_or(format!("generation {before} → {now}; behind: {behind:?}"))
        })
        .await;
    }

    /// Sends `c` to `col`; (status, content-type, body, whether the backend saw it).
    pub async fn send(&self, col: &Column, c: &Case) -> (u16, String, String, bool) {
        let id = format!("{}-{}", col.label, self.seq.fetch_add(1, Ordering::SeqCst));
        let host = c.host.map_or_else(|| col.host(), str::to_string);
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {host}\r\nx-case: {id}\r\ncontent-length: 0\r\nconnection: close\r\n",
            c.method, c.path
        );
        for (k, v) in c.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let addr = match c.from {
            Caller::Plain => col.http_inbound,
            Caller::Storefront => self.storefront,
        };
        let ex = exchange(addr, head.as_bytes(), 1).await;
        let Some(r) = ex.responses.first() else {
            return (0, String::new(), format!("no response: {ex:?}"), false);
        };
        let seen = col
            .backend
            .requests()
            .iter()
            .any(|req| req.header("x-case") == Some(id.as_str()));
        let ct = r.header("content-type").unwrap_or_default().to_string();
        (
            r.status,
            ct,
            String::from_utf8_lossy(&r.body).into_owned(),
            seen,
        )
    }

    /// Runs `cases` against every column; every mismatch is collected, then reported at once.
    pub async fn check(&self, group: &str, cases: &[Case], failures: &mut Vec<String>) {
        for col in &self.columns {
            for c in cases {
                let (status, ct, body, seen) = self.send(col, c).await;
                let ok = if c.allowed {
                    status == 200 && seen
                } else {
                    status == 403 && body == "RBAC: access denied" && ct == "text/plain" && !seen
                };
                if !ok {
                    failures.push(format!(
                        "[{}] {group} / {}: expected {}, got {status} {ct:?} {body:?} (backend saw it: {seen})",
                        col.label,
                        c.name,
                        if c.allowed { "allowed" } else { "denied" },
                    ));
                }
            }
        }
    }

    /// A TCP connection through every column's `db` sidecar is echoed (`allowed`) or closed
    /// with nothing echoed.
    pub async fn check_tcp(&self, group: &str, allowed: bool, failures: &mut Vec<String>) {
        for col in &self.columns {
            let back = tcp_echo_of(col.tcp_inbound, b"tcp-bytes").await;
            let echoed = back.as_deref() == Ok(b"tcp-bytes".as_slice());
            let closed_empty = back.as_ref().map_or(true, |b| b.is_empty());
            if (allowed && !echoed) || (!allowed && !closed_empty) {
                failures.push(format!(
                    "[{}] {group} / tcp: expected {}, got {back:?}",
                    col.label,
                    if allowed { "echoed" } else { "closed" }
                ));
            }
        }
    }
}

/// Writes `msg` on a fresh connection and reads until as many bytes came back, the peer closed,
/// or 5 s passed: what came back. No half-close: a FIN arriving with the first bytes makes
/// Envoy's tls_inspector (PERMISSIVE) drop the connection before any filter sees it.
pub async fn tcp_echo_of(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(msg).await.map_err(|e| format!("write: {e}"))?;
    let mut back = Vec::new();
    let read = async {
        let mut buf = [0u8; 64];
        while back.len() < msg.len() {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => back.extend_from_slice(&buf[..n]),
                Err(e) if back.is_empty() => return Err(format!("read: {e}")),
                Err(_) => break,
            }
        }
        Ok(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .map_err(|_| {
            format!(
                "neither echoed nor closed within 5 s ({} bytes)",
                back.len()
            )
        })??;
    Ok(back)
}

pub fn policy(name: &str, action: &str, rules: &str) -> String {
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!("  rules:\n{rules}")
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  action: {action}\n{rules}---\n"
    )
}

/// Runs the matrix as a task of a runtime whose threads have 16 MiB stacks: the matrix is one
/// long async fn whose debug-build frames overflow a test thread's default 2 MiB.
pub fn run<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if let Err(e) = tokio::spawn(test).await {
            std::panic::resume_unwind(e.into_panic());
        }
    });
}
