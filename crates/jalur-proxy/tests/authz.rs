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

use std::time::Duration;

use common::authz::{case, policy, run, Caller, Case, Matrix, STOREFRONT};
use common::probe::CONVERGE;
use jalur_demo::load::{LoadGen, LoadProtocol, LoadSpec, LoadTarget};
use jalur_testkit::assert_eventually;

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
        rule("notIpBlocks: [10.0.0.0/8]", "paths: [/not-ip]", ""),
        // At a sidecar the remote address is the right-most x-forwarded-for entry (no
        // use_remote_address, no trusted hops), else the peer.
        rule("remoteIpBlocks: [192.0.2.0/24]", "paths: [/remote-ip]", ""),
        rule(
            "",
            "paths: [/source-namespace]",
            "key: source.namespace, values: [shop]",
        ),
        rule(
            "",
            "paths: [/source-ip]",
            "key: source.ip, values: [127.0.0.1]",
        ),
        rule(
            "",
            "paths: [/destination-port]",
            &format!("key: destination.port, values: [{http_ports}]"),
        ),
        rule("", "paths: [\"/np/*\"], notPaths: [/np/secret]", ""),
        rule("", "paths: [/not-method], notMethods: [DELETE]", ""),
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
    cases.extend([
        case("notIpBlocks, loopback", Plain, "/not-ip", true),
        case(
            "remoteIpBlocks, no forwarded address",
            Plain,
            "/remote-ip",
            false,
        ),
        case(
            "source.namespace condition, from shop",
            Storefront,
            "/source-namespace",
            true,
        ),
        case(
            "source.namespace condition, plaintext",
            Plain,
            "/source-namespace",
            false,
        ),
        case("source.ip condition, loopback", Plain, "/source-ip", true),
        case(
            "destination.port condition",
            Plain,
            "/destination-port",
            true,
        ),
        case("notPaths, another path", Plain, "/np/ok", true),
        case("notPaths, that path", Plain, "/np/secret", false),
        case("notMethods, GET", Plain, "/not-method", true),
    ]);
    cases.push(Case {
        headers: &[("x-forwarded-for", "198.51.100.1, 192.0.2.7")],
        ..case(
            "remoteIpBlocks, forwarded from that block",
            Plain,
            "/remote-ip",
            true,
        )
    });
    cases.push(Case {
        headers: &[("x-forwarded-for", "192.0.2.7, 198.51.100.1")],
        ..case(
            "remoteIpBlocks, that block not right-most",
            Plain,
            "/remote-ip",
            false,
        )
    });
    cases.push(Case {
        method: "DELETE",
        ..case("notMethods, DELETE", Plain, "/not-method", false)
    });
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
    // The same host with a port is the same host (a DENY naming it must not be side-stepped).
    cases.push(Case {
        host: Some("payments.example.com:8080"),
        ..case("host with a port", Plain, "/host", true)
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
                // normalize_path: dot segments are resolved before RBAC judges the path.
                case(
                    "DENY matches through dot segments",
                    Plain,
                    "/shop/../admin",
                    false,
                ),
                case(
                    "DENY matches through %2e dot segments",
                    Plain,
                    "/shop/%2e%2e/admin",
                    false,
                ),
            ],
            // The DENY loses its HTTP-only path on TCP, and denies every connection.
            tcp_allowed: false,
            // The allowed request passes both filters and is counted by each.
            counted: [2, 4, 0, 1],
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
    // The same metric lines, labels and values included, from both proxies after the same
    // traffic (the per-group checks above only compare the sums).
    if let [a, b] = m.columns.as_slice() {
        let (la, lb) = (a.rbac_lines().await, b.rbac_lines().await);
        let samples = la.iter().filter(|l| !l.contains("# TYPE")).count();
        if samples < 4 {
            failures.push(format!(
                "[{}] too few RBAC samples to compare: {la:?}",
                a.label
            ));
        }
        if la != lb {
            let only = |x: &[String], y: &[String]| -> Vec<String> {
                x.iter().filter(|l| !y.contains(l)).cloned().collect()
            };
            failures.push(format!(
                "RBAC metric lines differ: only in [{}]: {:?}; only in [{}]: {:?}",
                a.label,
                only(&la, &lb),
                b.label,
                only(&lb, &la)
            ));
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

/// Both columns: jalur proxy gives the same outcomes as Envoy on the same traffic.
#[test]
fn jalur_and_envoy_give_the_same_authorization_outcomes() {
    run(run_matrix(true));
}

/// Where jalur is stricter than Envoy: a policy pushed while a caller holds a connection open.
/// jalur proxy evaluates every request against the config current when it arrives; Envoy keeps
/// a connection accepted before the change on its old filter chain until it drains (600 s by
/// default), so the storefront's pooled connection is still served without the new policy
/// there — and is refused at once by jalur.
async fn open_connection_across_a_change() {
    let Some(m) = Matrix::start(true).await else {
        return;
    };
    m.push("deny all", &policy("deny-all", "ALLOW", "")).await;
    let pooled = case("pooled connection", Caller::Storefront, "/", false);
    let fresh = case("new connection", Caller::Plain, "/", false);
    for col in &m.columns {
        let (status, _, body, _) = m.send(col, &pooled).await;
        let expected = if col.label == "jalur" { 403 } else { 200 };
        assert_eq!(
            status, expected,
            "[{}] pooled connection: {body}",
            col.label
        );
        let (status, _, _, _) = m.send(col, &fresh).await;
        assert_eq!(
            status, 403,
            "[{}] a new connection sees the policy",
            col.label
        );
    }
}

#[test]
fn a_pushed_policy_applies_to_open_connections_in_jalur_and_to_new_ones_in_envoy() {
    run(open_connection_across_a_change());
}

/// A policy edit under load takes effect on every proxy within a push, with 0 failed allowed
/// requests while it changes.
#[test]
fn a_policy_edit_under_load_takes_effect_on_every_proxy_with_no_failed_request() {
    run(edit_under_load());
}
