//! `jalur agent`: what runs beside a stock Envoy sidecar, as Istio's pilot-agent does.
//!
//! - [`sds`]: an SDS server (`envoy.service.secret.v3.SecretDiscoveryService`, state of the
//!   world and delta) on a Unix socket only Envoy's user can open, serving Istio's two secret
//!   names: `default` (the workload's chain and private key) and `ROOTCA` (the trust bundle).
//!   Every rotation and bundle change published on the [`CredentialsWatch`] is pushed at once.
//! - [`bootstrap`]: the Envoy bootstrap that points Envoy at that socket (`sds-grpc`) and at the
//!   control plane's TLS port (`xds-grpc`, mTLS with those very secrets).
//!
//! The certificate itself comes from whoever sends on the watch: in `jalur agent`,
//! `jalur_identity::rotate::CertRotator` (key generated in this process, CSR to the control
//! plane's CA); in tests, a test CA. The private key leaves the process only over the socket.
//!
//! A crate of its own rather than a module of `jalur-proxy`: it shares nothing with the proxy's
//! data path (the rotator it uses lives in `jalur-identity`), and a binary or test that runs an
//! agent should not compile a whole proxy for it.

pub mod bootstrap;
mod run;
pub mod sds;
mod socket;

pub use jalur_identity::{Credentials, CredentialsWatch};
pub use run::{Agent, AgentOptions};
pub use sds::SdsSocket;

/// Everything the agent can fail at, naming the file or socket involved.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("SDS socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("Envoy bootstrap {path}: {reason}")]
    Bootstrap { path: String, reason: String },
    /// No certificate: the CA refused (its message), the trust bundle or token is unreadable.
    #[error("workload certificate: {0}")]
    Certificate(jalur_identity::IdentityError),
}
