//! The jalur control plane: config store and watch, service registries, translation of Istio
//! config into Envoy xDS, the ADS server wiring, and the status API.

pub mod ca;
pub mod consul;
mod error;
pub mod jwks;
pub mod mesh;
pub mod migrate;
pub mod node;
pub mod plane;
pub mod registry;
pub mod render;
pub mod status;
pub mod store;
pub mod translate;
mod views;
pub mod workload;
mod xds_tls;

pub use plane::{ControlPlane, Options};
