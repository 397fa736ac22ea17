//! jalur proxy: the data plane for sidecars and gateways, configured over xDS exactly like Envoy.
//!
//! Wire resources arrive in [`xds`], become domain types at the edge ([`config::convert`]), are
//! compiled for the request path in [`runtime`], and serve through [`listener`] → [`http`] (or
//! [`tcp`]) using [`routing`], [`lb`] and [`resilience`]. [`metrics`] and [`admin`] report.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod dns;
pub mod drain;
pub mod error;
pub mod framing;
pub mod health;
pub mod host;
pub mod http;
pub mod jwt;
pub mod lb;
pub mod listener;
pub mod metrics;
pub mod rbac;
pub mod resilience;
pub mod routing;
pub mod run;
pub mod runtime;
pub mod sni;
pub mod string_match;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod xds;
