//! `CertRotator` against a CA served over real TLS on a loopback port (`channel::incoming` +
//! tonic), the way `jalur proxy` meets the control plane's 15012: the first certificate with a
//! bootstrap token, renewals at half life over mTLS with the certificate being renewed, a
//! refused token failing the start with the CA's message, failed renewals keeping the valid
//! credentials, and the trust bundle re-read from its file.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use jalur_identity::channel::{self, control_plane_id};
use jalur_identity::istio_ca::{
    CertificateAuthority, IstioCertificateRequest, IstioCertificateResponse,
    IstioCertificateServiceServer, TlsConnectInfo,
};
use jalur_identity::rotate::{CertRotator, RotatorOptions};
use jalur_identity::verify::{server_config, Accept};
use jalur_identity::{
    Credentials, CredentialsWatch, SpiffeId, TrustBundle, WorkloadCert, WorkloadKey,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
};
use tonic::{Request, Response, Status};

const TOKEN: &str = "jalur.v1.test-claims.test-signature";

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        Self {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A chain (leaf, root) for the CSR, valid from a second ago for `ttl`.
    fn sign(&self, csr_pem: &str, ttl: Duration) -> Result<Vec<String>, String> {
        let mut csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        csr.params.not_before = (now - Duration::from_secs(1)).into();
        csr.params.not_after = (now + ttl).into();
        let leaf = csr.signed_by(&self.issuer).map_err(|e| e.to_string())?;
        Ok(vec![leaf.pem(), self.root_pem.clone()])
    }

    fn credentials(&self, id: &SpiffeId) -> CredentialsWatch {
        let key = WorkloadKey::generate().expect("key");
        let chain = self
            .sign(&key.csr_pem(id).expect("csr"), Duration::from_secs(3600))
            .expect("sign")
            .concat();
        let cert = WorkloadCert::new(&key, &chain).expect("cert");
        let bundle = TrustBundle::from_pem(&self.root_pem).expect("bundle");
        tokio::sync::watch::channel(Arc::new(Credentials::new(cert, bundle).expect("creds"))).1
    }
}

/// How each request authenticated: "token" or "cert".
struct Ca {
    ca: TestCa,
    id: SpiffeId,
    ttl: Duration,
    seen: Mutex<Vec<&'static str>>,
    refuse_renewals: AtomicBool,
    /// When each refused renewal arrived (a test waits on it instead of sleeping).
    refused: tokio::sync::watch::Sender<Vec<Instant>>,
}

#[tonic::async_trait]
impl CertificateAuthority for Ca {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .extensions()
            .get::<TlsConnectInfo>()
            .and_then(|i| i.peer.clone());
        let bearer = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let how = match (peer, bearer) {
            (Some(peer), _) if peer == self.id => {
                if self.refuse_renewals.load(Ordering::SeqCst) {
                    self.refused.send_modify(|at| at.push(Instant::now()));
                    return Err(Status::unavailable("CA is refusing renewals (test)"));
                }
                "cert"
            }
            (None, Some(b)) if b == format!("Bearer {TOKEN}") => "token",
            (None, Some(_)) => return Err(Status::unauthenticated("bootstrap token t-1 revoked")),
            _ => {
                return Err(Status::unauthenticated(
                    "no client certificate and no bearer token",
                ))
            }
        };
        self.seen.lock().expect("lock").push(how);
        let chain = self
            .ca
            .sign(&request.get_ref().csr, self.ttl)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

struct Fixture {
    ca: Arc<Ca>,
    addr: SocketAddr,
    root_file: tempfile::NamedTempFile,
}

async fn serve(id: SpiffeId, ttl: Duration) -> Fixture {
    let test_ca = TestCa::new();
    let server_creds = test_ca.credentials(&control_plane_id("cluster.local", "jalur-system"));
    let root_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(root_file.path(), &test_ca.root_pem).expect("write root");
    let ca = Arc::new(Ca {
        ca: test_ca,
        id,
        ttl,
        seen: Mutex::new(Vec::new()),
        refuse_renewals: AtomicBool::new(false),
        refused: tokio::sync::watch::channel(Vec::new()).0,
    });
    let config = server_config(
        server_creds,
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
    let service = IstioCertificateServiceServer::new(ca.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
    });
    Fixture {
        ca,
        addr,
        root_file,
    }
}

fn storefront() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "storefront")
}

fn options(f: &Fixture, ttl: Duration) -> RotatorOptions {
    let mut opts = RotatorOptions::new(
        format!("https://{}", f.addr),
        storefront(),
        f.root_file.path(),
    );
    opts.token = Some(TOKEN.into());
    opts.cert_ttl = ttl;
    opts.bundle_poll = Duration::from_millis(100);
    opts.retry_base = Duration::from_millis(200);
    opts.retry_max = Duration::from_millis(400);
    opts
}

/// Waits (bounded) until the watch publishes credentials whose notAfter differs from `than`.
async fn next_cert(
    creds: &mut CredentialsWatch,
    than: SystemTime,
    within: Duration,
) -> Arc<Credentials> {
    tokio::time::timeout(within, async {
        loop {
            let current = creds.borrow_and_update().clone();
            if current.cert.not_after != than {
                return current;
            }
            creds.changed().await.expect("rotator alive");
        }
    })
    .await
    .expect("no new certificate in time")
}

/// A renewal of `previous` just arrived: at its half life, not early (the test CA's notBefore
/// is a second back and x509 times are whole seconds: 1.1 s of slack), not much late.
fn on_time(previous: &Credentials) {
    let now = SystemTime::now();
    let due = previous.cert.renew_at();
    assert!(
        now + Duration::from_millis(1100) >= due,
        "renewed early: due {due:?}, at {now:?}"
    );
    assert!(
        now <= due + Duration::from_secs(3),
        "renewed late: due {due:?}, at {now:?}"
    );
}

#[tokio::test]
async fn first_certificate_by_token_then_renewals_at_half_life_over_mtls() {
    // Certificates of 4 s: renewed after ~2 s each (x509 validity has whole seconds).
    let ttl = Duration::from_secs(4);
    let f = serve(storefront(), ttl).await;
    let rotator = CertRotator::start(options(&f, ttl))
        .await
        .expect("first certificate");
    let mut creds = rotator.credentials();
    let first = creds.borrow().clone();
    assert_eq!(first.cert.id, storefront());
    let second = next_cert(&mut creds, first.cert.not_after, Duration::from_secs(10)).await;
    on_time(&first);
    let third = next_cert(&mut creds, second.cert.not_after, Duration::from_secs(10)).await;
    on_time(&second);
    assert!(third.cert.not_after > second.cert.not_after);
    let seen = f.ca.seen.lock().expect("lock").clone();
    assert_eq!(seen[0], "token", "{seen:?}");
    assert!(
        seen.len() >= 3 && seen[1..].iter().all(|s| *s == "cert"),
        "renewals must authenticate with the certificate: {seen:?}"
    );
    rotator.stop();
}

#[tokio::test]
async fn a_refused_token_fails_the_start_with_the_cas_message() {
    let f = serve(storefront(), Duration::from_secs(60)).await;
    let mut opts = options(&f, Duration::from_secs(60));
    opts.token = Some("jalur.v1.other.sig".into());
    let error = CertRotator::start(opts).await.err().expect("refused");
    let text = error.to_string();
    assert!(
        text.contains("bootstrap token t-1 revoked") && text.contains("Unauthenticated"),
        "{text}"
    );
}

#[tokio::test]
async fn a_ca_that_is_not_the_control_plane_is_refused() {
    let f = serve(storefront(), Duration::from_secs(60)).await;
    let mut opts = options(&f, Duration::from_secs(60));
    opts.control_plane = SpiffeId::new("cluster.local", "jalur-system", "impostor");
    let error = CertRotator::start(opts).await.err().expect("refused");
    assert!(
        f.ca.seen.lock().expect("lock").is_empty(),
        "a request reached the wrong server"
    );
    assert!(error.to_string().contains(&f.addr.to_string()), "{error}");
}

#[tokio::test]
async fn failed_renewals_keep_the_valid_certificate_and_are_retried() {
    let ttl = Duration::from_secs(4);
    let f = serve(storefront(), ttl).await;
    let rotator = CertRotator::start(options(&f, ttl))
        .await
        .expect("first certificate");
    let mut creds = rotator.credentials();
    let first = creds.borrow().clone();
    f.ca.refuse_renewals.store(true, Ordering::SeqCst);
    // At the renewal time (~2 s) the CA refuses; the rotator retries every 200–400 ms. Wait
    // for the refusal and its first retry.
    let mut refusals = f.ca.refused.subscribe();
    let refused =
        tokio::time::timeout(Duration::from_secs(10), refusals.wait_for(|r| r.len() >= 2))
            .await
            .expect("the renewal was not retried within 10 s")
            .expect("CA alive")
            .clone();
    let gap = refused[1] - refused[0];
    assert!(
        gap <= Duration::from_secs(2),
        "retried {gap:?} after the refusal, with 200–400 ms retries"
    );
    assert_eq!(
        creds.borrow().cert.not_after,
        first.cert.not_after,
        "credentials changed while the CA refused"
    );
    assert!(
        !creds.has_changed().expect("alive"),
        "something was published while the CA refused"
    );
    f.ca.refuse_renewals.store(false, Ordering::SeqCst);
    let renewed = next_cert(&mut creds, first.cert.not_after, Duration::from_secs(5)).await;
    assert_eq!(renewed.cert.id, storefront());
    rotator.stop();
}

#[tokio::test]
async fn a_changed_bundle_file_is_published_with_every_root() {
    let ttl = Duration::from_secs(3600);
    let f = serve(storefront(), ttl).await;
    let rotator = CertRotator::start(options(&f, ttl))
        .await
        .expect("first certificate");
    let mut creds = rotator.credentials();
    assert_eq!(creds.borrow_and_update().bundle.roots.len(), 1);
    // A broken file keeps the last bundle.
    std::fs::write(f.root_file.path(), "not a certificate").expect("write");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(creds.borrow().bundle.roots.len(), 1);
    // A new root distributed beside the current one: both trusted, same certificate.
    let next_root = TestCa::new().root_pem;
    std::fs::write(
        f.root_file.path(),
        format!("{}{}", f.ca.ca.root_pem, next_root),
    )
    .expect("write");
    let two = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            creds.changed().await.expect("alive");
            let c = creds.borrow_and_update().clone();
            if c.bundle.roots.len() == 2 {
                return c;
            }
        }
    })
    .await
    .expect("bundle not reloaded");
    assert_eq!(two.cert.id, storefront());
    rotator.stop();
}
