//! A test CA (rcgen) signing workload CSRs, as `crates/jalur-identity/tests/handshake.rs` does,
//! so tests hand jalur proxies real mesh credentials without a control plane CA.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jalur_identity::{
    Credentials, CredentialsWatch, SpiffeId, TrustBundle, WorkloadCert, WorkloadKey,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
};
use tokio::sync::watch;

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub root_pem: String,
}

/// A proxy's credentials and the sender a test rotates them with.
pub struct Identity {
    pub tx: watch::Sender<Arc<Credentials>>,
    pub watch: CredentialsWatch,
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        TestCa {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A CA from an existing root's certificate and key (PEM), e.g. a control plane's own.
    pub fn from_pem(root_pem: &str, key_pem: &str) -> TestCa {
        let key = KeyPair::from_pem(key_pem).expect("root key");
        TestCa {
            issuer: Issuer::from_ca_cert_pem(root_pem, key).expect("root certificate"),
            root_pem: root_pem.to_string(),
        }
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(&self.root_pem).expect("bundle")
    }

    /// A workload certificate for `id`, valid from a minute ago for `ttl`, key generated here.
    pub fn sign(&self, id: &SpiffeId, ttl: Duration) -> WorkloadCert {
        let key = WorkloadKey::generate().expect("key");
        let mut csr = CertificateSigningRequestParams::from_pem(&key.csr_pem(id).expect("csr"))
            .expect("parse csr");
        let now = SystemTime::now();
        csr.params.not_before = (now - Duration::from_secs(60)).into();
        csr.params.not_after = (now + ttl).into();
        let leaf = csr.signed_by(&self.issuer).expect("sign");
        let chain = format!("{}{}", leaf.pem(), self.root_pem);
        WorkloadCert::new(&key, &chain).expect("workload cert")
    }

    /// Credentials for `id` trusting this CA (and `extra` roots).
    pub fn identity(&self, id: &SpiffeId, extra: &[&TestCa]) -> Identity {
        let cert = self.sign(id, Duration::from_secs(3600));
        let creds = Credentials::new(cert, self.bundle_with(extra)).expect("credentials");
        let (tx, watch) = watch::channel(Arc::new(creds));
        Identity { tx, watch }
    }

    /// Credentials for `id` from this CA (an hour long), trusting `bundle` (which need not
    /// hold this CA's root: a stranger to the mesh).
    pub fn credentials(&self, id: &SpiffeId, bundle: TrustBundle) -> CredentialsWatch {
        let cert = self.sign(id, Duration::from_secs(3600));
        let creds = Credentials::new(cert, bundle).expect("credentials");
        watch::channel(Arc::new(creds)).1
    }

    /// This CA's root plus `extra` roots (a trust bundle mid root rotation).
    pub fn bundle_with(&self, extra: &[&TestCa]) -> TrustBundle {
        let pem: String = std::iter::once(self.root_pem.as_str())
            .chain(extra.iter().map(|c| c.root_pem.as_str()))
            .collect();
        TrustBundle::from_pem(&pem).expect("bundle")
    }
}

impl Default for TestCa {
    fn default() -> TestCa {
        TestCa::new()
    }
}

pub fn spiffe(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa)
}
