//! Request smuggling, tried the way an attacker would: a corpus of raw requests whose framing
//! two parsers could read differently, each sent (a) on a fresh connection, (b) as the second
//! request of a keep-alive connection, (c) pipelined behind a valid request — through a jalur
//! sidecar and through a stock Envoy sidecar from the same control plane, to a raw backend that
//! records every byte it receives. Nothing ambiguous may reach the backend through jalur, and
//! jalur's verdict (refused, connection closed) must be the same as Envoy's or stricter.
//!
//! Also: an upstream answering with ambiguous or short framing never desynchronises a pooled
//! connection, and headers named in `Connection` do not travel past the hop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use jalur_testkit::wire::{exchange, Exchange, Recorder};
use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{assert_eventually, Envoy};

mod common;

use common::{envoy_sidecar, jalur_sidecar, sidecar_opts, Plane};

const HOST: &str = "victim.shop.svc.cluster.local";

/// One corpus entry: `bytes` is a request whose target is `/bad/{id}` (and which may carry
/// a smuggled `GET /smuggled/{id}`); `{id}` and `{host}` are filled in per run.
struct Entry {
    name: &'static str,
    bytes: String,
    /// A control: unusual but unambiguous, so it must be forwarded intact.
    valid: bool,
}

fn smuggled() -> &'static str {
    "GET /smuggled/{id} HTTP/1.1\r\nHost: {host}\r\n\r\n"
}

fn post(headers: &str, body: &str) -> String {
    format!("POST /bad/{{id}} HTTP/1.1\r\nHost: {{host}}\r\n{headers}\r\n{body}")
}

/// A chunked body ending at the 0-chunk, then the smuggled request.
fn chunked_then_smuggled() -> String {
    format!("0\r\n\r\n{}", smuggled())
}

fn corpus() -> Vec<Entry> {
    let s = smuggled();
    let cs = chunked_then_smuggled();
    let cl = |body: &str| body.len();
    let bad = |name: &'static str, bytes: String| Entry {
        name,
        bytes,
        valid: false,
    };
    let ok = |name: &'static str, bytes: String| Entry {
        name,
        bytes,
        valid: true,
    };
    let big = "a".repeat(70 * 1024);
    vec![
        // CL.TE and TE.CL
        bad("cl_te", post(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", cl(&cs)), &cs)),
        bad("te_cl", post(&format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_cl_short", post("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", &format!("{:x}\r\n{s}\r\n0\r\n\r\n", s.len()))),
        bad("cl_te_upgrade_first", post(&format!("Upgrade: websocket\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n", cl(&cs)), &cs)),
        // TE.TE: obfuscated Transfer-Encoding, with a Content-Length beside it
        bad("te_xchunked", post(&format!("Transfer-Encoding: xchunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_space_before_colon", post(&format!("Transfer-Encoding : chunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_tab_value", post(&format!("Transfer-Encoding:\tchunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_twice", post(&format!("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_obs_fold", post(&format!("Transfer-Encoding:\r\n chunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_list_identity", post(&format!("Transfer-Encoding: chunked, identity\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_uppercase_with_cl", post(&format!("Transfer-Encoding: CHUNKED\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_vertical_tab", post(&format!("Transfer-Encoding:\x0bchunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_quoted", post(&format!("Transfer-Encoding: \"chunked\"\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("te_gzip_only", post("Transfer-Encoding: gzip\r\n", &cs)),
        bad("te_gzip_chunked", post("Transfer-Encoding: gzip, chunked\r\n", &cs)),
        bad("te_nul", post(&format!("Transfer-Encoding: chunked\x00\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        // Content-Length: duplicates, lists, signs, spaces, hex, overflow
        bad("cl_twice_same", post(&format!("Content-Length: {0}\r\nContent-Length: {0}\r\n", cl(s)), s)),
        bad("cl_twice_different", post(&format!("Content-Length: 0\r\nContent-Length: {}\r\n", cl(s)), s)),
        bad("cl_list", post(&format!("Content-Length: 0, {}\r\n", cl(s)), s)),
        bad("cl_plus", post(&format!("Content-Length: +{}\r\n", cl(s)), s)),
        bad("cl_minus", post("Content-Length: -1\r\n", s)),
        bad("cl_inner_space", post("Content-Length: 1 0\r\n", s)),
        bad("cl_hex", post("Content-Length: 0x10\r\n", s)),
        bad("cl_overflow", post("Content-Length: 18446744073709551616\r\n", s)),
        bad("cl_space_before_colon", post(&format!("Content-Length : {}\r\n", cl(s)), s)),
        bad("cl_obs_fold", post(&format!("Content-Length:\r\n {}\r\n", cl(s)), s)),
        bad("cl_leading_space_line", post(&format!(" Content-Length: {}\r\n", cl(s)), s)),
        // Line endings
        bad("bare_lf_everywhere", format!("POST /bad/{{id}} HTTP/1.1\nHost: {{host}}\nContent-Length: {}\n\n{s}", cl(s))),
        bad("bare_lf_in_header", post(&format!("X-A: b\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("bare_cr_in_header", post(&format!("X-A: b\rTransfer-Encoding: chunked\r\nContent-Length: {}\r\n", cl(&cs)), &cs)),
        bad("obs_fold_plain", post("X-A: b\r\n c\r\nContent-Length: 0\r\n", "")),
        // Chunk sizes and extensions
        bad("chunk_size_not_hex", post("Transfer-Encoding: chunked\r\n", &format!("zz\r\n{s}\r\n0\r\n\r\n"))),
        bad("chunk_size_negative", post("Transfer-Encoding: chunked\r\n", &format!("-1\r\n{cs}"))),
        bad("chunk_size_inner_space", post("Transfer-Encoding: chunked\r\n", &format!("1 0\r\n{cs}"))),
        bad("chunk_size_0x", post("Transfer-Encoding: chunked\r\n", &format!("0x5\r\nhello\r\n{cs}"))),
        bad("chunk_size_overflow", post("Transfer-Encoding: chunked\r\n", &format!("10000000000000005\r\nhello\r\n{cs}"))),
        bad("chunk_size_overflow_ff", post("Transfer-Encoding: chunked\r\n", &format!("ffffffffffffffff0\r\nhello\r\n{cs}"))),
        bad("chunk_ext_bare_semicolon", post("Transfer-Encoding: chunked\r\n", &format!("5;\r\nhello\r\n{cs}"))),
        bad("chunk_ext_open_quote", post("Transfer-Encoding: chunked\r\n", &format!("5;a=\"b\r\nhello\r\n{cs}"))),
        bad("chunk_ext_bare_lf", post("Transfer-Encoding: chunked\r\n", &format!("5;a=b\nhello\r\n{cs}"))),
        bad("chunk_data_longer_than_size", post("Transfer-Encoding: chunked\r\n", &format!("3\r\nhello\r\n{cs}"))),
        bad("chunk_lf_only", post("Transfer-Encoding: chunked\r\n", &format!("5\nhello\n0\n\n{s}"))),
        bad("trailer_with_content_length", post("Transfer-Encoding: chunked\r\n", &format!("0\r\nContent-Length: {}\r\n\r\n{s}", cl(s)))),
        // Expect and Upgrade
        bad("expect_unknown", post("Expect: 200-ok\r\nContent-Length: 0\r\n", "")),
        bad("expect_with_upgrade", format!("GET /bad/{{id}} HTTP/1.1\r\nHost: {{host}}\r\nExpect: 100-continue\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n{s}")),
        bad("upgrade_with_body", post(&format!("Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: {}\r\n", cl(s)), s)),
        bad("upgrade_h2c_with_body", post(&format!("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: {}\r\n", cl(s)), s)),
        // Host and request line
        bad("absolute_form_host_mismatch", "GET http://evil.example/bad/{id} HTTP/1.1\r\nHost: {host}\r\n\r\n".to_string()),
        bad("host_twice", "GET /bad/{id} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n".to_string()),
        bad("host_missing", "GET /bad/{id} HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_string()),
        bad("http10_te", format!("POST /bad/{{id}} HTTP/1.0\r\nHost: {{host}}\r\nTransfer-Encoding: chunked\r\n\r\n{cs}")),
        bad("request_line_double_space", "GET  /bad/{id} HTTP/1.1\r\nHost: {host}\r\n\r\n".to_string()),
        bad("http09", "GET /bad/{id}\r\n\r\n".to_string()),
        bad("header_nul", "GET /bad/{id} HTTP/1.1\r\nHost: {host}\r\nX-A: a\x00b\r\n\r\n".to_string()),
        bad("connect", "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_string()),
        bad("head_too_large", format!("GET /bad/{{id}} HTTP/1.1\r\nHost: {{host}}\r\nX-Big: {big}\r\n\r\n")),
        // Controls: unusual, unambiguous, forwarded intact by both.
        ok("valid_chunk_extension", post("Transfer-Encoding: chunked\r\n", "5;name=value\r\nhello\r\n0\r\n\r\n")),
        ok("valid_cl_leading_zeros", post("Content-Length: 005\r\n", "hello")),
        ok("valid_te_mixed_case", post("Transfer-Encoding: Chunked\r\n", "5\r\nhello\r\n0\r\n\r\n")),
        ok("valid_leading_empty_line", "\r\nGET /bad/{id} HTTP/1.1\r\nHost: {host}\r\n\r\n".to_string()),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Fresh,
    SecondOnKeepAlive,
    Pipelined,
}

/// What happened to the corpus request in one run.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    /// The backend received the request (`/bad/{id}`).
    forwarded: bool,
    /// The backend received the smuggled one (`/smuggled/{id}`).
    smuggled: bool,
    /// The client's answer to it: a status, or `None` when the connection closed without one.
    status: Option<u16>,
    /// The connection was closed after it.
    closed: bool,
}

impl Verdict {
    /// Not served: not forwarded, answered with an error or not at all.
    fn rejected(&self) -> bool {
        !self.forwarded && !self.smuggled && self.status.is_none_or(|s| s >= 400)
    }

    /// Rejected, and the connection closed behind it (jalur's verdict on every ambiguity).
    fn refused(&self) -> bool {
        self.rejected() && self.closed
    }
}

fn valid_first(id: &str) -> String {
    format!("GET /ok/{id} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

async fn run(addr: SocketAddr, entry: &Entry, mode: Mode, id: &str) -> Exchange {
    let bad = entry.bytes.replace("{id}", id).replace("{host}", HOST);
    match mode {
        Mode::Fresh => exchange(addr, bad.as_bytes(), 1).await,
        Mode::Pipelined => exchange(addr, format!("{}{bad}", valid_first(id)).as_bytes(), 2).await,
        Mode::SecondOnKeepAlive => {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let first =
                jalur_testkit::wire::send_and_read(&mut stream, valid_first(id).as_bytes(), 1)
                    .await;
            assert_eq!(
                first.statuses(),
                vec![200],
                "{}: the valid first request",
                entry.name
            );
            let mut second =
                jalur_testkit::wire::send_and_read(&mut stream, bad.as_bytes(), 1).await;
            second.responses.splice(0..0, first.responses);
            second
        }
    }
}

/// Runs the whole corpus in every mode through `addr`, concurrently; returns each run's
/// verdict, and what the backend received that belongs to no run.
async fn judge_all(
    addr: SocketAddr,
    backend: &Recorder,
    tag: &str,
) -> (BTreeMap<(&'static str, Mode), Verdict>, Vec<String>) {
    backend.clear();
    let corpus = corpus();
    let runs: Vec<(usize, Mode)> = (0..corpus.len())
        .flat_map(|i| [Mode::Fresh, Mode::SecondOnKeepAlive, Mode::Pipelined].map(|m| (i, m)))
        .collect();
    let id = |i: usize, m: Mode| format!("{tag}-{i}-{m:?}");
    let exchanges = futures::future::join_all(runs.iter().map(|&(i, m)| {
        let entry = &corpus[i];
        let id = id(i, m);
        async move { run(addr, entry, m, &id).await }
    }))
    .await;
    let received: Vec<String> = backend.requests().into_iter().map(|r| r.target).collect();
    let mut verdicts = BTreeMap::new();
    let mut claimed = vec![false; received.len()];
    for (&(i, m), ex) in runs.iter().zip(exchanges) {
        let id = id(i, m);
        let mut seen = |prefix: &str| {
            let wanted = format!("/{prefix}/{id}");
            let mut hit = false;
            for (k, t) in received.iter().enumerate() {
                if t.ends_with(&wanted) {
                    claimed[k] = true;
                    hit = true;
                }
            }
            hit
        };
        let _ = seen("ok");
        let forwarded = seen("bad");
        let smuggled = seen("smuggled");
        let answered = if m == Mode::Fresh { 0 } else { 1 };
        verdicts.insert(
            (corpus[i].name, m),
            Verdict {
                forwarded,
                smuggled,
                status: ex.responses.get(answered).map(|r| r.status),
                closed: ex.closed,
            },
        );
    }
    let mut strays: Vec<String> = received
        .iter()
        .zip(&claimed)
        .filter(|(_, c)| !**c)
        .map(|(t, _)| t.clone())
        .collect();
    // A body found malformed half-way fails the connection: what was valid of it streamed
    // upstream already, and the upstream connection ends with it, an incomplete message never
    // framed as a request (Envoy streams bodies the same way). Anything else is a stray.
    strays.extend(
        backend
            .errors()
            .into_iter()
            .filter(|e| e != "connection ended inside a chunked body"),
    );
    (verdicts, strays)
}

fn routes(backend: &Recorder) -> Vec<(&'static str, String)> {
    vec![
        ("service.yaml", service_entry("victim", "shop", HOST)),
        (
            "we.yaml",
            workload_entry("victim", "v1", "shop", backend.addr()),
        ),
    ]
}

async fn wait_routed(addr: SocketAddr) {
    assert_eventually(
        "the sidecar routes to the backend",
        Duration::from_secs(30),
        || async {
            let ex = exchange(addr, valid_first("probe").as_bytes(), 1).await;
            match ex.statuses().as_slice() {
                [200] => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_corpus_never_reaches_the_backend_and_jalur_is_as_strict_as_envoy() {
    let backend = Recorder::h1().await;
    let plane = Plane::start(&routes(&backend)).await;
    let (_proxy, jalur) = jalur_sidecar(sidecar_opts(plane.xds, "attacker", "shop")).await;
    let envoy: Option<(Envoy, SocketAddr)> =
        envoy_sidecar(plane.xds, "attacker-envoy", "shop").await;
    wait_routed(jalur).await;
    let (ours, strays) = judge_all(jalur, &backend, "jalur").await;
    assert!(
        strays.is_empty(),
        "through jalur the backend received what no run sent: {strays:?}"
    );

    let theirs = match &envoy {
        Some((_, addr)) => {
            wait_routed(*addr).await;
            Some(judge_all(*addr, &backend, "envoy").await.0)
        }
        None => None,
    };
    let corpus = corpus();
    assert!(
        corpus.iter().filter(|e| !e.valid).count() >= 40,
        "at least 40 smuggling cases"
    );
    let mut failures = Vec::new();
    let mut table = String::from("case / mode: jalur | envoy\n");
    for ((name, mode), v) in &ours {
        let entry = corpus.iter().find(|e| e.name == *name).expect("entry");
        let envoy_v = theirs.as_ref().and_then(|t| t.get(&(*name, *mode)));
        table.push_str(&format!("{name} / {mode:?}: {v:?} | {envoy_v:?}\n"));
        if entry.valid {
            if !(v.forwarded && v.status == Some(200)) {
                failures.push(format!(
                    "{name} / {mode:?}: a valid request was not served: {v:?}"
                ));
            }
            continue;
        }
        if !v.refused() {
            failures.push(format!(
                "{name} / {mode:?}: jalur did not refuse and close: {v:?}"
            ));
        }
        if let Some(e) = envoy_v {
            if e.rejected() && !v.refused() {
                failures.push(format!("{name} / {mode:?}: Envoy refused, jalur did not"));
            }
        }
    }
    assert!(failures.is_empty(), "{}\n\n{table}", failures.join("\n"));
}

/// An upstream answering with (1) both Content-Length and Transfer-Encoding, (2) a body shorter
/// than its Content-Length before closing, (3) another response's bytes after its body: the
/// client gets 502 for (1) and (2) and the intact first answer for (3), and the next request
/// through the same pool always gets the next genuine answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desynchronising_upstream_never_poisons_the_pool() {
    let backend = Recorder::h1().await;
    let plane = Plane::start(&routes(&backend)).await;
    let (_proxy, jalur) = jalur_sidecar(sidecar_opts(plane.xds, "client", "shop")).await;
    wait_routed(jalur).await;
    let poison = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\npoisoned";
    let cases: [(&str, String, u16); 3] = [
        ("cl_and_te", format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{poison}"), 502),
        ("short_body", "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nhello".to_string(), 502),
        ("bytes_after_body", format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello{poison}"), 200),
    ];
    for (name, script, status) in cases {
        backend.clear();
        backend.script([script.into_bytes()]);
        let first = exchange(jalur, valid_first(name).as_bytes(), 1).await;
        let next = exchange(jalur, valid_first(&format!("{name}-next")).as_bytes(), 1).await;
        assert_eq!(
            first.statuses(),
            vec![status],
            "{name}: first answer {first:?}"
        );
        if status == 200 {
            assert_eq!(first.responses[0].body, b"hello", "{name}");
        } else {
            assert_eq!(
                first.responses[0].header("x-jalur-flags"),
                Some("UPE"),
                "{name}"
            );
        }
        assert_eq!(next.statuses(), vec![200], "{name}: the next request");
        assert_eq!(
            next.responses[0].body, b"ok",
            "{name}: the next request got someone else's answer"
        );
        let got = backend.requests();
        let [poisoned, clean] = got.as_slice() else {
            panic!("{name}: the backend saw {got:?} (a retry of the first?)")
        };
        // (The short body's connection is closed by the backend itself; the other two stay
        // open on the backend's side, so only jalur can have dropped them.)
        if name != "short_body" {
            assert_ne!(
                poisoned.conn, clean.conn,
                "{name}: the poisoned connection went back to the pool"
            );
        }
        assert!(
            backend.errors().is_empty(),
            "{name}: {:?}",
            backend.errors()
        );
    }
}

/// A jalur and (when installed) an Envoy sidecar of a client in `shop`.
struct Sidecars {
    jalur: (jalur_proxy::run::Proxy, SocketAddr),
    envoy: Option<(Envoy, SocketAddr)>,
}

impl Sidecars {
    async fn start(plane: &Plane) -> Sidecars {
        Sidecars {
            jalur: jalur_sidecar(sidecar_opts(plane.xds, "client", "shop")).await,
            envoy: envoy_sidecar(plane.xds, "client-envoy", "shop").await,
        }
    }

    /// Each sidecar's outbound address, named.
    fn fronts(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut fronts = vec![("jalur", self.jalur.1)];
        fronts.extend(self.envoy.as_ref().map(|(_, addr)| ("envoy", *addr)));
        fronts
    }
}

/// Headers named in `Connection` are hop-by-hop (RFC 9110 §7.6.1): neither jalur nor Envoy
/// forwards them, while the framing and routing headers survive a request that names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_in_connection_stop_at_the_hop() {
    let backend = Recorder::h1().await;
    let plane = Plane::start(&routes(&backend)).await;
    let sidecars = Sidecars::start(&plane).await;
    for (kind, addr) in sidecars.fronts() {
        wait_routed(addr).await;
        backend.clear();
        let request = format!("POST /hop HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive, x-secret, content-length\r\nX-Secret: 1\r\nX-Kept: 2\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nhello");
        let ex = exchange(addr, request.as_bytes(), 1).await;
        assert_eq!(ex.statuses(), vec![200], "{kind}");
        let got = backend.requests();
        let [one] = got.as_slice() else {
            panic!("{kind}: backend saw {got:?}")
        };
        assert_eq!(
            one.header("x-secret"),
            None,
            "{kind}: a nominated header was forwarded"
        );
        assert_eq!(one.header("keep-alive"), None, "{kind}");
        assert_eq!(one.header("x-kept"), Some("2"), "{kind}");
        assert_eq!(one.body, b"hello", "{kind}");
    }
}

/// Only WebSocket upgrades are spliced, as Istio configures Envoy. An `h2c` upgrade is served
/// as a plain request without its upgrade headers (jalur and Envoy alike), and a backend that
/// switches anyway gets a 502 from jalur (Envoy hangs on it); an upgrade to any other protocol is
/// refused with 403 by both and never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_spliced() {
    let backend = Recorder::h1().await;
    let plane = Plane::start(&routes(&backend)).await;
    let sidecars = Sidecars::start(&plane).await;
    let switch = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
    for (kind, addr) in sidecars.fronts() {
        wait_routed(addr).await;
        backend.clear();
        let other = format!(
            "GET /foo HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\n\r\n"
        );
        let ex = exchange(addr, other.as_bytes(), 1).await;
        assert_eq!(ex.statuses(), vec![403], "{kind}: {ex:?}");
        assert!(
            backend.requests().is_empty(),
            "{kind}: {:?}",
            backend.requests()
        );

        if kind == "jalur" {
            // Envoy would wait on a switch it did not ask for until the client gives up.
            backend.script([switch.to_vec()]);
        }
        let h2c = format!("GET /h2c HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
        let ex = exchange(addr, h2c.as_bytes(), 1).await;
        let got = backend.requests();
        let [plain] = got.as_slice() else {
            panic!("{kind}: the backend saw {got:?}")
        };
        assert_eq!(plain.header("upgrade"), None, "{kind}: {plain:?}");
        assert_eq!(plain.header("http2-settings"), None, "{kind}: {plain:?}");
        if kind == "jalur" {
            assert_eq!(ex.statuses(), vec![502], "{kind}: {ex:?}");
            assert_eq!(ex.responses[0].header("x-jalur-flags"), Some("UPE"));
        } else {
            assert_eq!(ex.statuses(), vec![200], "{kind}: {ex:?}");
        }
    }
}
