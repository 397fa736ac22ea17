//! The control plane's CA over real TLS, the way 15012 serves it: its own certificate from
//! `Authority::server_credentials`, client certificates optional at the TLS layer
//! (`jalur_identity::channel::incoming`), and `CertRotator` — what `jalur proxy` and
//! `jalur agent` run — as the client: the first certificate on a real bootstrap token, the
//! renewal authenticated by the certificate being renewed, refusals with the CA's words.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jalur_control::ca::{CaOptions, MeshCa};
use jalur_identity::channel;
use jalur_identity::istio_ca::IstioCertificateServiceServer;
use jalur_identity::rotate::{CertRotator, RotatorOptions};
use jalur_identity::verify::{server_config, Accept};
use jalur_identity::SpiffeId;

/// Everything this test binary logs, at debug, from every thread (tonic, h2, rustls included).
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let writer = move || Capture(logs);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(writer)
            .with_ansi(false)
            .try_init();
        logs
    })
}

struct Capture(&'static Mutex<Vec<u8>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails if a log line holds a secret: a token's signature, or a private key's PEM body.
fn assert_not_logged(tokens: &[&str], key_pems: &[String]) {
    let logs = String::from_utf8_lossy(&captured_logs().lock().expect("logs")).into_owned();
    assert!(
        logs.contains("workload certificate issued"),
        "the capture missed the CA's own lines: {logs}"
    );
    for t in tokens {
        let signature = t.rsplit('.').next().expect("signature");
        assert!(!logs.contains(signature), "a bootstrap token was logged");
    }
    for pem in key_pems {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!logs.contains(line), "a private key was logged");
        }
    }
}

struct Served {
    ca: MeshCa,
    addr: SocketAddr,
}

/// The CA on a loopback TLS port; certificates live at most `ttl`.
async fn serve(state: &Path, ttl: Duration) -> Served {
    captured_logs();
    let opts = CaOptions {
        workload_ttl: ttl,
        ..CaOptions::default()
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let ca = MeshCa::start(state, &opts, &mut registry).expect("CA");
    let creds = ca
        .authority
        .server_credentials(&[])
        .expect("control plane credentials");
    let config = server_config(
        creds,
        Accept::TrustDomain("cluster.local".into()),
        true,
        &[b"h2"],
    )
    .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let incoming = channel::incoming(listener, Arc::new(config));
    let service = IstioCertificateServiceServer::new(ca.service.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
    });
    Served { ca, addr }
}

fn options(s: &Served, state: &Path, id: SpiffeId, token: &str) -> RotatorOptions {
    let mut opts = RotatorOptions::new(
        format!("https://{}", s.addr),
        id,
        state.join("ca/trust-bundle.pem"),
    );
    opts.token = Some(token.to_string());
    opts.retry_base = Duration::from_millis(100);
    opts.retry_max = Duration::from_millis(200);
    opts
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa)
}

/// A 4 s certificate renews at ~2 s: the test waits that long for a real renewal over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_gets_its_first_certificate_by_token_and_renews_it_with_that_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = serve(dir.path(), Duration::from_secs(4)).await;
    let token =
        s.ca.tokens
            .create("shop", "storefront", Duration::from_secs(600), false)
            .expect("token");
    let rotator = CertRotator::start(options(&s, dir.path(), id("storefront"), &token.token))
        .await
        .expect("first certificate on the token");
    let mut creds = rotator.credentials();
    let first = creds.borrow_and_update().clone();
    assert_eq!(first.cert.id, id("storefront"));
    assert_eq!(first.cert.chain.len(), 2, "leaf and root");
    assert!(
        s.ca.tokens.list()[0].used,
        "the one-shot token was not spent"
    );

    // The renewal: the token is spent, so only the client certificate can authenticate it.
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            creds.changed().await.expect("rotator alive");
            if creds.borrow_and_update().cert.not_after != first.cert.not_after {
                return;
            }
        }
    })
    .await
    .expect("renewed over mTLS within 15 s");
    assert_eq!(creds.borrow().cert.id, id("storefront"));
    assert!(s.ca.metrics.issued.get() >= 2);
    let keys = vec![
        first.cert.key_pem_secret(),
        creds.borrow().cert.key_pem_secret(),
        std::fs::read_to_string(dir.path().join("ca/root-key.pem")).expect("root key"),
    ];
    rotator.stop();
    assert_not_logged(&[&token.token], &keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_reach_the_workload_in_the_cas_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = serve(dir.path(), Duration::from_secs(3600)).await;
    let token =
        s.ca.tokens
            .create("shop", "storefront", Duration::from_secs(600), false)
            .expect("token");
    let start = |who: &str, t: &str| CertRotator::start(options(&s, dir.path(), id(who), t));

    let err = start("payments", &token.token)
        .await
        .err()
        .expect("another identity is refused")
        .to_string();
    assert!(
        err.contains(
            "a credential for shop/storefront may not request spiffe://cluster.local/ns/shop/sa/payments"
        ),
        "{err}"
    );
    start("storefront", &token.token).await.expect("its own");
    let err = start("storefront", &token.token)
        .await
        .err()
        .expect("spent")
        .to_string();
    assert!(err.contains("was already used"), "{err}");

    let other = tempfile::tempdir().expect("tempdir");
    let foreign = jalur_control::ca::Tokens::load_or_create(other.path(), "cluster.local")
        .expect("tokens")
        .create("shop", "storefront", Duration::from_secs(600), true)
        .expect("token");
    let err = start("storefront", &foreign.token)
        .await
        .err()
        .expect("another control plane's token")
        .to_string();
    assert!(err.contains("not issued by this control plane"), "{err}");
}
