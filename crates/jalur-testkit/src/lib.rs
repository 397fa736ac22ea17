//! Test helpers for jalur: an HTTP echo backend, a stock Envoy driven over ADS, the gRPC peers
//! (a backend and proxyless xDS clients in Python and Node), `assert_eventually`, and the
//! lookup of real peers that fails loudly in CI when one is missing.
//!
//! ```no_run
//! use std::time::Duration;
//! use jalur_testkit::{assert_eventually, envoy_binary, http_get, require_peer};
//! use jalur_testkit::{EchoServer, Envoy, EnvoyOpts};
//! # async fn example(ads: std::net::SocketAddr) -> Result<(), String> {
//! let _backend = EchoServer::start("v1").await;
//! let Some(binary) = require_peer("envoy", envoy_binary()) else { return Ok(()) };
//! let envoy = Envoy::start_with(&binary, EnvoyOpts::new(ads, "sidecar-1")).await?;
//! let port = envoy.listener_port("outbound").await?;
//! let (status, _headers, body) =
//!     assert_eventually("Envoy routes to v1", Duration::from_secs(10), || {
//!         http_get(([127, 0, 0, 1], port).into(), "echo", "/", &[])
//!     })
//!     .await;
//! assert_eq!((status, body.as_str()), (200, "v1"));
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;

pub mod agent;
pub mod ca;
pub use jalur_demo::client;
/// The Consul protocol double, which lives in `jalur-demo` (the demo runs it as its legacy
/// registry); re-exported so tests keep using `jalur_testkit::consul`.
pub use jalur_demo::consul;
pub mod doc_server;
pub mod echo;
pub use jalur_demo::envoy;
#[cfg(test)]
mod envoy_tests;
pub use jalur_demo::eventually;
pub mod grpc;
pub mod peers;
pub mod pki;
pub use jalur_demo::process;
pub mod prometheus;
pub mod sockets;
pub mod wire;
pub mod yaml;

pub use client::{http2_get, http_get};
pub use consul::{ConsulDouble, ConsulOpts};
pub use doc_server::DocServer;
pub use echo::{Behaviour, EchoServer};
pub use envoy::{Envoy, EnvoyOpts};
pub use eventually::{assert_eventually, eventually};
pub use grpc::{GrpcBackend, XdsClient, XdsClientReport};
pub use peers::{envoy_binary, node_client_dir, peer_script, python, require_peer, skip_log};
pub use process::ChildGuard;

/// The repository root: `JALUR_REPO_ROOT` when set (scripts/test sets it), else two levels
/// above this crate's manifest.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("JALUR_REPO_ROOT") {
        Some(root) if !root.is_empty() => PathBuf::from(root),
        _ => {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
            root.canonicalize().unwrap_or(root)
        }
    }
}

/// Waits (up to `within`) until `GET /` with `Host: host` through `addr` answers 200 with
/// exactly `body`; panics naming `what` and the last answer otherwise.
pub async fn assert_serves(
    what: &str,
    addr: std::net::SocketAddr,
    host: &str,
    body: &str,
    within: std::time::Duration,
) {
    assert_eventually(what, within, || async {
        match http_get(addr, host, "/", &[]).await? {
            (200, _, got) if got == body => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
