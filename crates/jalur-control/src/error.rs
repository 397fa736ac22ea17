//! Why a control plane cannot start. Its own file so that `plane.rs` (which starts everything)
//! and the parts it starts (`xds_tls.rs`) both name it without importing each other.

use std::net::SocketAddr;

use crate::store::InvalidConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] InvalidConfig),
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Xds(#[from] jalur_xds::server::Error),
    #[error("certificate authority: {0}")]
    Ca(#[from] crate::ca::CaError),
    #[error("the certificate authority needs a state directory: pass --state-dir")]
    CaWithoutStateDir,
    #[error("the xDS TLS port: {0}")]
    Tls(String),
    #[error("no xDS port to serve: plaintext xDS is off (no --insecure-xds) and there is no CA for the TLS port")]
    NoXdsPort,
}
