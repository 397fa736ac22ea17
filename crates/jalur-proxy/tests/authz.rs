//! The AuthorizationPolicy matrix: real Istio YAML through `jalur control`'s translation into
//! RBAC filters, enforced by stock Envoy (beside `jalur agent`) and by jalur proxy as sidecars
//! of recording backends, on the same traffic. One control plane and one set of servers for the
//! whole file; the policy file is rewritten between groups of cases, and every group waits for
//! the push to reach every proxy (so "a policy edit takes effect within a push" is tested on
//! the way).
//!
//! A case sends one request (directly to a server's inbound listener in plaintext — no
//! principal, source 127.0.0.1 — or through a jalur sidecar holding `shop/storefront`'s
//! certificate, over mTLS) and checks: allowed → the backend's answer, and the backend saw it;
//! denied → 403 `RBAC: access denied` (`text/plain`), and the backend never saw it. TCP cases
//! go to a TCP echo behind each column's `db` sidecar: allowed → echoed, denied → closed with
//! nothing echoed. Envoy's own RBAC counters are checked to move.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use common::bound_listener;
use common::mesh::{peer_authentication, EnvoySidecar, MeshPlane, NS};
use common::probe::{tcp_echo, CONVERGE};
use jalur_demo::load::{LoadGen, LoadProtocol, LoadSpec, LoadTarget};
use jalur_proxy::run::Proxy;
use jalur_testkit::assert_eventually;
use jalur_testkit::wire::{exchange, Recorder};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STOREFRONT: &str = "cluster.local/ns/shop/sa/storefront";
const POLICY_FILE: &str = "authz.yaml";

/// Who sends a case's request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Caller {
    /// Plaintext, straight to the server's inbound listener: no principal, source 127.0.0.1.
    Plain,
    /// Through the `storefront` jalur sidecar: mTLS with `shop/storefront`'s certificate.
    Storefront,
}

/// One HTTP request of the matrix and the outcome both proxies must give.
struct Case {
    name: &'static str,
    from: Caller,
    method: &'static str,
    path: &'static str,
    /// `Host`; `None`: the server's service host (what the storefront sidecar routes by).
    host: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    allowed: bool,
}

const fn case(name: &'static str, from: Caller, path: &'static str, allowed: bool) -> Case {
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
struct Column {
    label: &'static str,
    /// The service the HTTP server is (`payments` / `payments-j`), for the storefront's Host.
    service: &'static str,
    http_inbound: SocketAddr,
    backend: Recorder,
    tcp_inbound: SocketAddr,
    /// The port of the TCP app behind the `db` sidecar (its workload port).
    db_port: u16,
    envoy: Option<(EnvoySidecar, EnvoySidecar)>,
    jalur: Vec<Proxy>,
}

impl Column {
    fn host(&self) -> String {
        format!("{}.{NS}.svc.cluster.local", self.service)
    }

    /// `/stats/prometheus` of the HTTP (or TCP) server's admin: Envoy's, or jalur proxy's on
    /// its admin port (jalur keeps Envoy's RBAC names there).
    async fn prometheus(&self, tcp: bool) -> String {
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
    async fn rbac_counters(&self) -> [u64; 4] {
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
struct Matrix {
    plane: MeshPlane,
    storefront: SocketAddr,
    /// Replaced at every policy change: Envoy applies a changed filter chain to new
    /// connections, while one opened before keeps the old chain until it drains (600 s by
    /// default), so a pooled caller connection would still be served without the new policy.
    caller: Proxy,
    columns: Vec<Column>,
    seq: AtomicU64,
}

async fn envoy_column(plane: &MeshPlane, binary: &std::path::Path) -> Column {
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

async fn jalur_column(plane: &MeshPlane) -> Column {
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
    async fn start(with_jalur: bool) -> Option<Matrix> {
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
    async fn apply(&mut self, group: &str, yaml: &str) {
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
        // A fresh storefront sidecar, so its requests come on new connections.
        let creds = self.plane.issue("storefront");
        let (caller, storefront) = self.plane.caller("storefront", Some(creds)).await;
        let old = std::mem::replace(&mut self.caller, caller);
        old.shutdown().await;
        self.storefront = storefront;
    }

    /// Sends `c` to `col`; (status, content-type, body, whether the backend saw it).
    async fn send(&self, col: &Column, c: &Case) -> (u16, String, String, bool) {
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
    async fn check(&self, group: &str, cases: &[Case], failures: &mut Vec<String>) {
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
    async fn check_tcp(&self, group: &str, allowed: bool, failures: &mut Vec<String>) {
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
async fn tcp_echo_of(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
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

fn policy(name: &str, action: &str, rules: &str) -> String {
    let rules = if rules.is_empty() {
        String::new()
    } else {
        format!("  rules:\n{rules}")
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  action: {action}\n{rules}---\n"
    )
}

/// ALLOW rules, each scoped to its own path so one policy carries many cases.
fn allow_rules(http_ports: &str, db_ports: &str) -> String {
    let rule = |from: &str, to: &str, when: &str| {
        let mut r = String::from("  - ");
        let mut parts = Vec::new();
        if !from.is_empty() {
            parts.push(format!("from:\n    - source: {{{from}}}\n"));
        }
        if !to.is_empty() {
            parts.push(format!("to:\n    - operation: {{{to}}}\n"));
        }
        if !when.is_empty() {
            parts.push(format!("when:\n    - {{{when}}}\n"));
        }
        r.push_str(&parts.join("    "));
        r
    };
    [
        rule(
            &format!("principals: [\"{STOREFRONT}\"]"),
            "paths: [/principal]",
            "",
        ),
        rule(
            "principals: [\"cluster.local/ns/shop/*\"]",
            "paths: [/principal-prefix]",
            "",
        ),
        rule(
            "principals: [\"*/sa/storefront\"]",
            "paths: [/principal-suffix]",
            "",
        ),
        rule(
            &format!("notPrincipals: [\"{STOREFRONT}\"]"),
            "paths: [/not-principal]",
            "",
        ),
        rule("namespaces: [shop]", "paths: [/namespace]", ""),
        rule("notNamespaces: [shop]", "paths: [/not-namespace]", ""),
        rule("ipBlocks: [127.0.0.0/8]", "paths: [/ip]", ""),
        rule("ipBlocks: [10.0.0.0/8]", "paths: [/ip-other]", ""),
        rule("", "paths: [/exact]", ""),
        rule("", "paths: [\"/prefix/*\"]", ""),
        rule("", "paths: [\"*.json\"]", ""),
        rule("", "methods: [POST], paths: [/method]", ""),
        rule("", "hosts: [payments.example.com], paths: [/host]", ""),
        rule("", &format!("ports: [{http_ports}], paths: [/port]"), ""),
        rule("", "ports: [\"1\"], paths: [/port-other]", ""),
        rule(
            "",
            "paths: [/header]",
            "key: \"request.headers[x-user]\", values: [alice]",
        ),
        rule(
            "",
            "paths: [/source-principal]",
            &format!("key: source.principal, values: [\"{STOREFRONT}\"]"),
        ),
        // TCP only: the rules above carry HTTP fields, so a TCP port drops them all.
        rule("ipBlocks: [127.0.0.1]", &format!("ports: [{db_ports}]"), ""),
    ]
    .concat()
}

fn allow_cases() -> Vec<Case> {
    use Caller::{Plain, Storefront};
    let mut cases = vec![
        case(
            "principal exact, that principal",
            Storefront,
            "/principal",
            true,
        ),
        case("principal exact, no principal", Plain, "/principal", false),
        case("principal prefix", Storefront, "/principal-prefix", true),
        case("principal suffix", Storefront, "/principal-suffix", true),
        case(
            "principal suffix, no principal",
            Plain,
            "/principal-suffix",
            false,
        ),
        case(
            "notPrincipals, that principal",
            Storefront,
            "/not-principal",
            false,
        ),
        case("notPrincipals, no principal", Plain, "/not-principal", true),
        case("namespaces, from shop", Storefront, "/namespace", true),
        case("namespaces, plaintext", Plain, "/namespace", false),
        case(
            "notNamespaces, from shop",
            Storefront,
            "/not-namespace",
            false,
        ),
        case("ipBlocks, loopback", Plain, "/ip", true),
        case("ipBlocks, another block", Plain, "/ip-other", false),
        case("path exact", Plain, "/exact", true),
        case("path exact, longer path", Plain, "/exact/more", false),
        case("path prefix", Plain, "/prefix/a/b", true),
        case("path suffix", Plain, "/data/items.json", true),
        case(
            "path with a query matches without it",
            Plain,
            "/exact?q=1",
            true,
        ),
        case("method GET where POST is allowed", Plain, "/method", false),
        case("no rule for the path", Plain, "/nothing", false),
        case("ports, the workload port", Plain, "/port", true),
        case("ports, another port", Plain, "/port-other", false),
        case("header condition, missing", Plain, "/header", false),
        case(
            "source.principal condition",
            Storefront,
            "/source-principal",
            true,
        ),
        case(
            "source.principal condition, no principal",
            Plain,
            "/source-principal",
            false,
        ),
    ];
    cases.push(Case {
        method: "POST",
        ..case("method POST", Plain, "/method", true)
    });
    cases.push(Case {
        host: Some("payments.example.com"),
        ..case("host exact", Plain, "/host", true)
    });
    cases.push(Case {
        host: Some("PAYMENTS.example.COM"),
        ..case("host in another case", Plain, "/host", true)
    });
    cases.push(Case {
        host: Some("other.example.com"),
        ..case("host, another host", Plain, "/host", false)
    });
    cases.push(Case {
        headers: &[("x-user", "alice")],
        ..case("header condition, alice", Plain, "/header", true)
    });
    cases.push(Case {
        headers: &[("x-user", "bob")],
        ..case("header condition, bob", Plain, "/header", false)
    });
    cases
}

/// One policy configuration and what it must do. `counted`: how far each column's RBAC
/// counters (HTTP allowed, HTTP denied, TCP allowed, TCP denied) move over the group's traffic,
/// as read off a stock Envoy 1.40.
struct Group {
    name: &'static str,
    yaml: String,
    cases: Vec<Case>,
    tcp_allowed: bool,
    counted: [u64; 4],
}

/// The groups, in the order they are applied (each replaces the previous policies).
fn groups(http_ports: &str, db_ports: &str) -> Vec<Group> {
    use Caller::{Plain, Storefront};
    let allow = allow_cases();
    let (allowed, denied) =
        allow.iter().fold(
            (0, 0),
            |(a, d), c| {
                if c.allowed {
                    (a + 1, d)
                } else {
                    (a, d + 1)
                }
            },
        );
    vec![
        Group {
            name: "allow",
            yaml: policy("allow", "ALLOW", &allow_rules(http_ports, db_ports)),
            cases: allow,
            // On TCP the rules with HTTP fields are dropped; the TCP-only rule lets loopback in.
            tcp_allowed: true,
            counted: [allowed, denied, 1, 0],
        },
        Group {
            name: "deny before allow",
            yaml: policy("allow-all", "ALLOW", "  - {}\n")
                + &policy(
                    "no-admin",
                    "DENY",
                    "  - to:\n    - operation: {paths: [\"/admin*\"]}\n",
                ),
            cases: vec![
                case("DENY matches", Plain, "/admin/users", false),
                case("DENY matches, mTLS caller", Storefront, "/admin", false),
                case("DENY does not match, ALLOW does", Plain, "/shop", true),
            ],
            // The DENY loses its HTTP-only path on TCP, and denies every connection.
            tcp_allowed: false,
            // The allowed request passes both filters and is counted by each.
            counted: [2, 2, 0, 1],
        },
        Group {
            name: "audit",
            yaml: policy(
                "audit",
                "AUDIT",
                "  - to:\n    - operation: {methods: [GET]}\n",
            ),
            cases: vec![
                case("AUDIT matches, allowed", Plain, "/audited", true),
                case("AUDIT, mTLS caller", Storefront, "/audited", true),
            ],
            tcp_allowed: true,
            // Envoy counts a LOG filter's every decision as `allowed` (it has no `logged`).
            counted: [2, 0, 1, 0],
        },
        Group {
            name: "empty allow",
            yaml: policy("deny-all", "ALLOW", ""),
            cases: vec![
                case("empty ALLOW, plaintext", Plain, "/", false),
                case("empty ALLOW, mTLS caller", Storefront, "/", false),
            ],
            tcp_allowed: false,
            counted: [0, 2, 0, 1],
        },
        Group {
            name: "removed",
            yaml: String::new(),
            cases: vec![
                case("GET / again, plaintext", Plain, "/", true),
                case("GET / again, mTLS caller", Storefront, "/", true),
            ],
            tcp_allowed: true,
            counted: [0; 4],
        },
    ]
}

async fn run_matrix(with_jalur: bool) {
    let Some(mut m) = Matrix::start(with_jalur).await else {
        return;
    };
    let mut failures = Vec::new();
    let quoted = |ports: Vec<u16>| {
        ports
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let http_ports = quoted(m.columns.iter().map(|c| c.backend.addr().port()).collect());
    let db_ports = quoted(m.columns.iter().map(|c| c.db_port).collect());

    // No policy at all, no filter: everything reaches the backends.
    let cases = [case("GET / with no policy", Caller::Plain, "/", true)];
    m.check("no policy", &cases, &mut failures).await;
    m.check_tcp("no policy", true, &mut failures).await;
    for g in groups(&http_ports, &db_ports) {
        m.apply(g.name, &g.yaml).await;
        let mut before = Vec::new();
        for col in &m.columns {
            before.push(col.rbac_counters().await);
        }
        m.check(g.name, &g.cases, &mut failures).await;
        m.check_tcp(g.name, g.tcp_allowed, &mut failures).await;
        for (col, before) in m.columns.iter().zip(before) {
            let after = col.rbac_counters().await;
            let moved: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
            if moved != g.counted {
                failures.push(format!(
                    "[{}] {}: counters (http allowed, denied, tcp allowed, denied) moved {moved:?}, expected {:?}",
                    col.label, g.name, g.counted
                ));
            }
        }
    }
    if !failures.is_empty() {
        for col in &m.columns {
            for tcp in [false, true] {
                let text = col.prometheus(tcp).await;
                let rbac: Vec<&str> = text.lines().filter(|l| l.contains("rbac")).collect();
                failures.push(format!("[{}] rbac stats: {rbac:?}", col.label));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        m.plane.diagnose()
    );
}

/// Load is 240 rps of `GET /` to both servers, plaintext and through a storefront sidecar of its
/// own, while a DENY of `/admin*` is added and removed three times beside an ALLOW of
/// everything: every `/admin` probe on a fresh connection is denied by both proxies once the
/// push is acknowledged, allowed again once it is withdrawn, and not one request of the load
/// fails. Prints how long each proxy took from the file write to enforcing.
async fn edit_under_load() {
    let Some(mut m) = Matrix::start(true).await else {
        return;
    };
    let allow_all = policy("allow-all", "ALLOW", "  - {}\n");
    m.apply("allow all", &allow_all).await;
    let creds = m.plane.issue("storefront");
    let (_load_caller, via) = m.plane.caller("storefront", Some(creds)).await;
    let target = |name: String, addr, authority: String| LoadTarget {
        name,
        addr,
        authority,
        protocol: LoadProtocol::Http,
        weight: 1,
    };
    let mut targets = Vec::new();
    for col in &m.columns {
        targets.push(target(
            format!("{} plain", col.label),
            col.http_inbound,
            col.host(),
        ));
        targets.push(target(format!("{} mtls", col.label), via, col.host()));
    }
    let load = LoadGen::start(LoadSpec {
        rate: 240,
        targets,
        timeout: Duration::from_secs(10),
    });
    let deny = allow_all.clone()
        + &policy(
            "no-admin",
            "DENY",
            "  - to:\n    - operation: {paths: [\"/admin*\"]}\n",
        );
    for round in 0..3 {
        for (yaml, allowed) in [(&deny, false), (&allow_all, true)] {
            let written = std::time::Instant::now();
            m.apply(&format!("round {round}, /admin allowed: {allowed}"), yaml)
                .await;
            for col in &m.columns {
                let c = case("/admin probe", Caller::Plain, "/admin", allowed);
                let what = format!(
                    "{} enforces round {round} (/admin allowed: {allowed})",
                    col.label
                );
                assert_eventually(&what, CONVERGE, || async {
                    let r = m.send(col, &c).await;
                    (r.0 == if allowed { 200 } else { 403 })
                        .then_some(())
                        .ok_or(format!("{r:?}"))
                })
                .await;
                eprintln!("{what}: {:?} after the write", written.elapsed());
            }
        }
    }
    let samples = load.stop().await;
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok).collect();
    assert!(
        samples.len() > 100,
        "the load ran: {} samples",
        samples.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} allowed requests failed while the policy changed: {:?}",
        failed.len(),
        samples.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    eprintln!("{} requests under load, 0 failed", samples.len());
}

/// Runs the matrix as a task of a runtime whose threads have 16 MiB stacks: the matrix is one
/// long async fn whose debug-build frames overflow a test thread's default 2 MiB.
fn run<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
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

/// Both columns: jalur proxy gives the same outcomes as Envoy on the same traffic.
#[test]
fn jalur_and_envoy_give_the_same_authorization_outcomes() {
    run(run_matrix(true));
}

/// A policy edit under load takes effect on every proxy within a push, with 0 failed allowed
/// requests while it changes.
#[test]
fn a_policy_edit_under_load_takes_effect_on_every_proxy_with_no_failed_request() {
    run(edit_under_load());
}
