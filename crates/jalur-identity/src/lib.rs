//! Workload identity, shared by every jalur component that speaks TLS inside the mesh:
//! the control plane (its CA and the TLS xDS port 15012), `jalur proxy` and `jalur agent`.
//!
//! - [`SpiffeId`]: `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`, the only name a workload certificate has.
//! - [`cert`]: a workload's key and chain ([`WorkloadCert`]), the roots it trusts
//!   ([`TrustBundle`]), both published together as [`Credentials`] on a watch channel so a
//!   rotation reaches every TLS config without a restart.
//! - [`verify`]: rustls verifiers that check the chain against the bundle and then the SPIFFE id
//!   (rustls's own server-name check cannot match a URI SAN).
//! - [`channel`]: gRPC over that TLS, both ends of the control plane's port 15012.
//! - [`rotate`]: [`rotate::CertRotator`], a workload's certificate from the CA and renewed at
//!   half life, with the trust bundle re-read from its file.
//! - [`files`]: certificates, keys and CA bundles from files a user names (Istio's SDS names
//!   `file-cert:` / `file-root:`), re-read when they change.
//! - [`istio_ca`]: Istio's CA protocol (`istio.v1.auth.IstioCertificateService/CreateCertificate`),
//!   its messages, a tonic server around a [`istio_ca::CertificateAuthority`] and a client.

use std::fmt;
use std::str::FromStr;

pub mod cert;
pub mod channel;
pub mod files;
pub mod istio_ca;
pub mod rotate;
pub mod verify;

pub use cert::{Credentials, CredentialsWatch, TrustBundle, WorkloadCert, WorkloadKey};

/// The trust domain when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Everything that can go wrong with an identity, a certificate or a trust bundle.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid SPIFFE id {0:?}: {1}")]
    SpiffeId(String, &'static str),
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("certificate {what}: {reason}")]
    Certificate { what: String, reason: String },
    #[error("key generation or signing failed: {0}")]
    Key(String),
    #[error("control plane at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the CA at {addr} refused the certificate request: {code:?}: {message}")]
    Refused {
        addr: String,
        code: tonic::Code,
        message: String,
    },
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
}

/// `spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT`, as Istio names workloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The principal as Istio's RBAC and metrics write it: the URI without `spiffe://`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| IdentityError::SpiffeId(s.to_string(), why);
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("does not start with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                let ok = |p: &str| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
                };
                if !ok(td) {
                    return Err(bad("bad trust domain"));
                }
                if !ok(ns) || !ok(sa) {
                    return Err(bad("bad namespace or service account"));
                }
                Ok(SpiffeId::new(*td, *ns, *sa))
            }
            _ => Err(bad("expected spiffe://TRUST_DOMAIN/ns/NS/sa/SA")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_round_trip_and_refuse_other_shapes() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/storefront"
            .parse()
            .expect("valid");
        assert_eq!(id, SpiffeId::new("cluster.local", "shop", "storefront"));
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/shop/sa/storefront"
        );
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/storefront");
        for bad in [
            "cluster.local/ns/shop/sa/storefront",
            "spiffe://cluster.local/ns/shop",
            "spiffe://cluster.local/ns/shop/sa/",
            "spiffe://cluster.local/ns/shop/sa/a/b",
            "spiffe:///ns/shop/sa/a",
            "spiffe://x/ns/sh op/sa/a",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} accepted");
        }
    }
}
