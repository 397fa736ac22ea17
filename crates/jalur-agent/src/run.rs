//! The agent as `jalur agent` runs it: the certificate from the control plane's CA (rotated at
//! half life by `CertRotator`), SDS on the socket, and the Envoy bootstrap written once both
//! are ready, so an Envoy started as soon as the file appears finds its secrets.

use std::path::PathBuf;

use jalur_identity::rotate::{CertRotator, RotatorOptions};
use tracing::info;

use crate::bootstrap::EnvoyBootstrap;
use crate::{AgentError, CredentialsWatch, SdsSocket};

pub struct AgentOptions {
    /// Where the certificate comes from (CA address, identity, token, trust bundle file, TTL).
    pub rotator: RotatorOptions,
    pub sds_socket: PathBuf,
    /// Where to write Envoy's bootstrap, and what it says.
    pub envoy_bootstrap: Option<(PathBuf, EnvoyBootstrap)>,
}

/// A running agent. [`Agent::shutdown`] stops SDS (removing the socket) and the renewals.
pub struct Agent {
    rotator: CertRotator,
    sds: SdsSocket,
}

impl Agent {
    /// Gets the first certificate (a refusal by the CA is the error, with its message), serves
    /// it over SDS, then writes the bootstrap.
    pub async fn start(opts: AgentOptions) -> Result<Agent, AgentError> {
        let rotator = CertRotator::start(opts.rotator)
            .await
            .map_err(AgentError::Certificate)?;
        let sds = SdsSocket::bind(&opts.sds_socket, rotator.credentials()).await?;
        if let Some((path, bootstrap)) = &opts.envoy_bootstrap {
            bootstrap.write(path)?;
            info!(path = %path.display(), "wrote the Envoy bootstrap");
        }
        Ok(Agent { rotator, sds })
    }

    /// The credentials being served (renewed in place).
    pub fn credentials(&self) -> CredentialsWatch {
        self.rotator.credentials()
    }

    pub fn sds_socket(&self) -> &std::path::Path {
        self.sds.path()
    }

    pub async fn shutdown(self) {
        self.sds.shutdown().await;
        self.rotator.stop();
    }
}
