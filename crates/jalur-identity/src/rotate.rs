//! A workload's certificate, kept current: [`CertRotator`] generates the key in this process,
//! asks the control plane's CA for a chain (the first time with a bootstrap token, afterwards
//! over mTLS with the certificate it is renewing), renews at half life, and re-reads the trust
//! bundle file when it changes. Everything it holds is published on one
//! [`CredentialsWatch`]; TLS configs read it at each handshake, so nothing is rebuilt.
//!
//! A failed renewal never withdraws anything: the credentials stay published (they are valid
//! until their notAfter) and the renewal is retried with a growing, jittered delay.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::channel::{self, ClientAuth, DEFAULT_ROOT_NAMESPACE};
use crate::istio_ca;
use crate::verify::Accept;
use crate::{
    Credentials, CredentialsWatch, IdentityError, SpiffeId, TrustBundle, WorkloadCert, WorkloadKey,
};

/// What a workload's certificate is, where it comes from and how often things are checked.
#[derive(Clone)]
pub struct RotatorOptions {
    /// The control plane's TLS port, `https://HOST:15012`.
    pub ca_address: String,
    /// The identity to request; the CA refuses any other than the caller's.
    pub id: SpiffeId,
    /// The trust bundle (PEM, one or more roots), re-read when it changes.
    pub root_cert: PathBuf,
    /// A bootstrap token for the first certificate (and for a renewal after the certificate
    /// expired, when it is reusable).
    pub token: Option<String>,
    /// Requested lifetime; the CA may shorten it.
    pub cert_ttl: Duration,
    /// Who the CA must be (`spiffe://TD/ns/jalur-system/sa/jalur-control`).
    pub control_plane: SpiffeId,
    /// How often the bundle file is read for changes.
    pub bundle_poll: Duration,
    /// First retry delay after a failed renewal, and the ceiling of the growing delay.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl std::fmt::Debug for RotatorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatorOptions")
            .field("ca_address", &self.ca_address)
            .field("id", &self.id.to_string())
            .field("root_cert", &self.root_cert)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cert_ttl", &self.cert_ttl)
            .finish_non_exhaustive()
    }
}

impl RotatorOptions {
    /// 24 h certificates (the CA's default), the control plane in `jalur-system` of the
    /// workload's trust domain, the bundle checked every second, retries from 1 s to 30 s.
    pub fn new(ca_address: impl Into<String>, id: SpiffeId, root_cert: impl Into<PathBuf>) -> Self {
        let control_plane = channel::control_plane_id(&id.trust_domain, DEFAULT_ROOT_NAMESPACE);
        RotatorOptions {
            ca_address: ca_address.into(),
            id,
            root_cert: root_cert.into(),
            token: None,
            cert_ttl: Duration::from_secs(24 * 3600),
            control_plane,
            bundle_poll: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// A running rotation. The renewals run in a task for as long as anyone holds the
/// [`CredentialsWatch`] (or until [`CertRotator::stop`]).
pub struct CertRotator {
    creds: CredentialsWatch,
    task: tokio::task::JoinHandle<()>,
}

impl CertRotator {
    /// Gets the first certificate (an error names the CA's refusal: a bad token, a wrong
    /// identity) and starts renewing it.
    pub async fn start(opts: RotatorOptions) -> Result<CertRotator, IdentityError> {
        let bundle_text = read_bundle(&opts.root_cert)?;
        let bundle = TrustBundle::from_pem(&bundle_text).map_err(|e| IdentityError::File {
            what: "trust bundle (--root-cert)",
            path: opts.root_cert.clone(),
            reason: e.to_string(),
        })?;
        let Some(token) = opts.token.clone() else {
            return Err(IdentityError::Connect {
                addr: opts.ca_address.clone(),
                reason: "no bootstrap token to ask for the first certificate (--token-file)".into(),
            });
        };
        let auth = ClientAuth::Anonymous(bundle.clone());
        let (key, chain_pem) = issue(&opts, auth, Some(&token)).await?;
        let cert = WorkloadCert::new(&key, &chain_pem)?;
        tracing::info!(id = %cert.id, not_after = ?cert.not_after, ca = %opts.ca_address, "workload certificate issued");
        let (tx, creds) = watch::channel(Arc::new(Credentials::new(cert, bundle.clone())?));
        let rotation = Rotation {
            opts,
            key,
            chain_pem,
            bundle,
            bundle_text,
            tx,
        };
        Ok(CertRotator {
            creds,
            task: tokio::spawn(rotation.run()),
        })
    }

    /// The current credentials, renewed in place.
    pub fn credentials(&self) -> CredentialsWatch {
        self.creds.clone()
    }

    /// Stops renewing; the credentials stay as they are.
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The rotation task's state: what it last published, so a new bundle or a new chain can be
/// combined with the other.
struct Rotation {
    opts: RotatorOptions,
    key: WorkloadKey,
    chain_pem: String,
    bundle: TrustBundle,
    bundle_text: String,
    tx: watch::Sender<Arc<Credentials>>,
}

impl Rotation {
    async fn run(mut self) {
        let mut retry = Retry::new(self.opts.retry_base, self.opts.retry_max);
        let mut renew_at = instant_at(renewal_time(&self.tx.borrow().cert, SystemTime::now()));
        let mut poll = tokio::time::interval(self.opts.bundle_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(renew_at) => match self.renew().await {
                    Ok(()) => {
                        retry.reset();
                        let due = renewal_time(&self.tx.borrow().cert, SystemTime::now());
                        renew_at = instant_at(due);
                    }
                    Err(error) => {
                        let delay = retry.next_delay();
                        let not_after = self.tx.borrow().cert.not_after;
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, ?not_after, "certificate renewal failed; the current certificate stays in use");
                        renew_at = Instant::now() + delay;
                    }
                },
                _ = poll.tick() => self.reload_bundle(),
                // Nobody reads the credentials any more: nothing to renew for.
                () = self.tx.closed() => return,
            }
        }
    }

    /// One renewal: a new key, a CSR, the chain, published with the current bundle.
    async fn renew(&mut self) -> Result<(), IdentityError> {
        let current = self.tx.borrow().clone();
        let expired = current.cert.not_after <= SystemTime::now();
        // An expired certificate cannot authenticate; a reusable bootstrap token still may.
        let (auth, token) = match (&self.opts.token, expired) {
            (Some(token), true) => (
                ClientAuth::Anonymous(self.bundle.clone()),
                Some(token.as_str()),
            ),
            _ => (ClientAuth::Certificate(self.tx.subscribe()), None),
        };
        let (key, chain_pem) = issue(&self.opts, auth, token).await?;
        let cert = WorkloadCert::new(&key, &chain_pem)?;
        tracing::info!(id = %cert.id, not_after = ?cert.not_after, "workload certificate renewed");
        self.tx
            .send_replace(Arc::new(Credentials::new(cert, self.bundle.clone())?));
        (self.key, self.chain_pem) = (key, chain_pem);
        Ok(())
    }

    /// Publishes the bundle file's roots when its content changed; an unreadable or invalid
    /// file keeps the last good bundle (and says so once per content).
    fn reload_bundle(&mut self) {
        let text = match read_bundle(&self.opts.root_cert) {
            Ok(text) => text,
            Err(error) => {
                if !self.bundle_text.is_empty() {
                    tracing::warn!(%error, "trust bundle unreadable; keeping the last one");
                    self.bundle_text.clear();
                }
                return;
            }
        };
        if text == self.bundle_text {
            return;
        }
        self.bundle_text = text;
        let published = TrustBundle::from_pem(&self.bundle_text).and_then(|bundle| {
            let cert = WorkloadCert::new(&self.key, &self.chain_pem)?;
            let creds = Credentials::new(cert, bundle.clone())?;
            Ok((bundle, creds))
        });
        match published {
            Ok((bundle, creds)) => {
                tracing::info!(file = %self.opts.root_cert.display(), roots = bundle.roots.len(), "trust bundle changed");
                self.bundle = bundle;
                self.tx.send_replace(Arc::new(creds));
            }
            Err(error) => {
                tracing::warn!(file = %self.opts.root_cert.display(), %error, "trust bundle invalid; keeping the last one");
            }
        }
    }
}

/// Asks the CA for a chain for a fresh key: the key and the chain (PEM, leaf first).
async fn issue(
    opts: &RotatorOptions,
    auth: ClientAuth,
    token: Option<&str>,
) -> Result<(WorkloadKey, String), IdentityError> {
    let key = WorkloadKey::generate()?;
    let csr = key.csr_pem(&opts.id)?;
    let accept = Accept::AnyOf(vec![opts.control_plane.clone()]);
    let channel = channel::connect(&opts.ca_address, auth, accept).await?;
    let chain = istio_ca::create_certificate(channel, csr, opts.cert_ttl, token)
        .await
        .map_err(|status| IdentityError::Refused {
            addr: opts.ca_address.clone(),
            code: status.code(),
            message: status.message().to_string(),
        })?;
    let chain_pem: String = chain
        .iter()
        .map(|pem| format!("{}\n", pem.trim_end()))
        .collect();
    let cert = WorkloadCert::new(&key, &chain_pem)?;
    if cert.id != opts.id {
        return Err(IdentityError::Certificate {
            what: format!("issued by {}", opts.ca_address),
            reason: format!("names {} instead of the requested {}", cert.id, opts.id),
        });
    }
    Ok((key, chain_pem))
}

fn read_bundle(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|e| IdentityError::File {
        what: "trust bundle (--root-cert)",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// When to renew a certificate received at `received`: half-way through its life
/// ([`WorkloadCert::renew_at`]), but counted from when it arrived if that is later. A CA that
/// backdates notBefore (for clock skew; jalur's does by a minute) would otherwise put the
/// half-life of a short certificate in the past and renew it in a loop. Never sooner than a
/// second after it arrived.
fn renewal_time(cert: &WorkloadCert, received: SystemTime) -> SystemTime {
    let from = received.max(cert.not_before);
    let left = cert
        .not_after
        .duration_since(from)
        .unwrap_or(Duration::ZERO);
    (from + left / 2)
        .max(cert.renew_at())
        .max(received + Duration::from_secs(1))
}

/// The monotonic instant of a wall-clock time (now, if it has passed).
fn instant_at(at: SystemTime) -> Instant {
    let wait = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + wait
}

/// Retry delays: doubling from `base` up to `max`, each drawn uniformly from its upper half
/// (so a fleet that failed together does not retry together, and no retry comes at once).
/// Hand-written like jalur-proxy's `backoff.rs` (this crate cannot depend on the proxy; ten
/// lines do not warrant a dependency).
struct Retry {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Retry {
    fn new(base: Duration, max: Duration) -> Retry {
        Retry {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_within_their_upper_half_up_to_the_ceiling() {
        let mut retry = Retry::new(Duration::from_secs(1), Duration::from_secs(8));
        for ceiling in [1, 2, 4, 8, 8, 8] {
            let d = retry.next_delay();
            let c = Duration::from_secs(ceiling);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
        }
        retry.reset();
        assert!(retry.next_delay() <= Duration::from_secs(1));
    }

    /// A leaf for `spiffe://cluster.local/ns/shop/sa/storefront` valid from `before` to
    /// `after` seconds around now.
    fn cert(before: u64, after: u64) -> (WorkloadCert, SystemTime) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        let uri = "spiffe://cluster.local/ns/shop/sa/storefront"
            .try_into()
            .expect("uri");
        params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(before)).into();
        params.not_after = (now + Duration::from_secs(after)).into();
        let leaf = params.self_signed(&key).expect("sign");
        let cert = WorkloadCert::from_pem(&key.serialize_pem(), &leaf.pem()).expect("cert");
        (cert, now)
    }

    #[test]
    fn renewal_is_half_way_through_the_life_left_when_the_ca_backdated() {
        let secs = |t: SystemTime, now: SystemTime| {
            t.duration_since(now).map_or(-1.0, |d| d.as_secs_f64())
        };
        // 24 h, not backdated: half life (x509 times are whole seconds).
        let (day, now) = cert(0, 86_400);
        let at = secs(renewal_time(&day, now), now);
        assert!((43_198.0..=43_201.0).contains(&at), "{at}");
        // 20 s backdated by a minute (half life would be 20 s ago): 10 s from now.
        let (short, now) = cert(60, 20);
        let at = secs(renewal_time(&short, now), now);
        assert!((9.0..=10.5).contains(&at), "{at}");
        // Expiring at once: not sooner than a second (no renewal loop).
        let (gone, now) = cert(60, 0);
        let at = secs(renewal_time(&gone, now), now);
        assert!((0.99..=1.01).contains(&at), "{at}");
    }

    #[test]
    fn options_do_not_show_the_token() {
        let mut opts = RotatorOptions::new(
            "https://127.0.0.1:15012",
            SpiffeId::new("cluster.local", "shop", "storefront"),
            "/tmp/root.pem",
        );
        opts.token = Some("jalur.v1.secret.sig".into());
        let shown = format!("{opts:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(
            opts.control_plane.to_string(),
            "spiffe://cluster.local/ns/jalur-system/sa/jalur-control"
        );
    }
}
