//! What the TLS tests assert with: Istio's metric lines of a jalur proxy, requests retried
//! while config converges, TCP bytes echoed back, gRPC calls with the grpcio peer, and the
//! SPIFFE id a bare rustls client sees in a server's chain.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jalur_identity::verify::{client_config, peer_id, Accept};
use jalur_identity::CredentialsWatch;
use jalur_proxy::run::Proxy;
use jalur_testkit::{assert_eventually, http2_get, http_get};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How long config may take to converge before a request must succeed.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The proxy's Prometheus text.
pub async fn prometheus(proxy: &Proxy) -> String {
    http_get(proxy.stats_addr, "stats", "/stats/prometheus", &[])
        .await
        .expect("stats")
        .2
}

/// The lines of `metric` (e.g. `istio_tcp_connections_opened_total`) carrying every `labels`
/// pair.
pub fn lines<'a>(stats: &'a str, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a str> {
    stats
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .collect()
}

/// An `istio_requests_total` line carries every `labels` pair.
pub fn has(stats: &str, labels: &[(&str, &str)]) -> bool {
    !lines(stats, "istio_requests_total", labels).is_empty()
}

/// The largest value of the `metric` lines carrying every `labels` pair.
pub fn max_value(stats: &str, metric: &str, labels: &[(&str, &str)]) -> Option<u64> {
    lines(stats, metric, labels)
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .max()
}

/// Polls `proxy`'s metrics until a `metric` line carries every `labels` pair (a TCP
/// connection's metrics are written when it closes); the stats text then.
pub async fn eventually_counted(proxy: &Proxy, metric: &str, labels: &[(&str, &str)]) -> String {
    assert_eventually(&format!("{metric} with {labels:?}"), CONVERGE, || async {
        let s = prometheus(proxy).await;
        (!lines(&s, metric, labels).is_empty())
            .then_some(s.clone())
            .ok_or(s)
    })
    .await
}

/// GETs `/` from `host` through `outbound` (HTTP/1.1, or h2c with `h2`) until one answers 200
/// (config converging); the body. `tail` adds context to the failure (a peer's log).
pub async fn eventually_ok(
    outbound: SocketAddr,
    host: &str,
    h2: bool,
    tail: impl Fn() -> String,
) -> String {
    let via = if h2 { "h2c" } else { "HTTP/1.1" };
    assert_eventually(&format!("200 from {host} ({via})"), CONVERGE, || async {
        let r = if h2 {
            http2_get(outbound, host, "/", &[]).await?
        } else {
            http_get(outbound, host, "/", &[]).await?
        };
        (r.0 == 200)
            .then(|| r.2.clone())
            .ok_or(format!("{r:?}\n{}", tail()))
    })
    .await
}

/// A TCP echo backend: writes back whatever it reads, then closes when its peer does.
pub async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` to `addr`, half-closes, and reads until the far end closes: what came back.
/// Writing and reading run together, so a message larger than the socket buffers on the way
/// cannot stall.
pub async fn tcp_roundtrip(addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(msg).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(msg.len());
    let both = async { tokio::join!(send, r.read_to_end(&mut back)) };
    let (sent, read) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .map_err(|_| format!("no close after {} bytes echoed", back.len()))?;
    sent.map_err(|e| format!("send: {e}"))?;
    read.map_err(|e| format!("read: {e}"))?;
    Ok(back)
}

/// A plaintext TCP client at `addr` is closed (or reset) without an echo.
pub async fn refuses_plaintext_tcp(addr: SocketAddr) -> bool {
    match tcp_roundtrip(addr, b"plain").await {
        Ok(back) => back.is_empty(),
        Err(_) => true,
    }
}

/// `len` bytes that are not one repeated byte (so a shifted or truncated copy differs).
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Sends `len` bytes through `local` (retried while config converges) and asserts every byte
/// came back, in order, before the close.
pub async fn tcp_cell(local: SocketAddr, len: usize, tail: impl Fn() -> String) {
    let sent = payload(len);
    let back = assert_eventually(&format!("TCP through {local}"), CONVERGE, || async {
        let back = tcp_roundtrip(local, &sent).await?;
        (back.len() == sent.len())
            .then(|| back.clone())
            .ok_or(format!("{} bytes back of {len}\n{}", back.len(), tail()))
    })
    .await;
    assert!(back == sent, "the bytes came back altered");
}

/// 20 unary calls and a 50-message server stream with the grpcio peer (`py`) through
/// `outbound` to `authority`, retried until the unary calls all succeed (config converging);
/// asserts the stream came whole.
pub async fn grpc_cell(py: &Path, outbound: SocketAddr, authority: &str) {
    let report = assert_eventually(&format!("gRPC to {authority}"), CONVERGE, || async {
        let out = tokio::process::Command::new(py)
            .arg(jalur_testkit::peer_script("grpc_call.py"))
            .args(["--target", &outbound.to_string(), "--authority", authority])
            .args(["--count", "20", "--stream", "50", "--timeout-secs", "5"])
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        (report["unary_ok"] == 20)
            .then_some(report.clone())
            .ok_or(report.to_string())
    })
    .await;
    assert_eq!(
        report["stream"].as_array().map(Vec::len),
        Some(50),
        "{report}"
    );
}

/// A TLS connection to `addr` as a bare rustls mesh client holding `creds`, expecting a
/// server `accept` allows, sending `sni` as a mesh caller does and offering `alpn`.
pub async fn mesh_tls(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    accept: Accept,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>, String> {
    let config = client_config(creds.clone(), accept, alpn).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The leaf certificate the server presented on `tls`.
pub fn server_leaf(tls: &TlsStream<TcpStream>) -> Result<CertificateDer<'static>, String> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| "no peer certificate".to_string())
}

/// The SPIFFE id in the chain the server at `addr` presents to a mesh client holding `creds`
/// (any peer of the trust domain accepted, so the id is read, not assumed). Under TLS 1.3 the
/// server judges the client only after its own flight; this reads what the server showed.
pub async fn presented_id(
    addr: SocketAddr,
    creds: &CredentialsWatch,
    sni: &str,
) -> Result<String, String> {
    let accept = Accept::TrustDomain(super::mesh::TRUST_DOMAIN.into());
    let tls = mesh_tls(addr, creds, accept, sni, &[]).await?;
    let id = peer_id(&server_leaf(&tls)?).map_err(|e| e.to_string())?;
    Ok(id.to_string())
}
