//! Envoy xDS v3 Aggregated Discovery Service (ADS): state-of-the-world and delta on one gRPC service.
//!
//! The server knows nothing about Istio. The control plane hands it a [`Generator`] that turns a
//! client's [`Node`] into the full set of resources that client should see ([`ClientSnapshot`]);
//! the server filters by the client's subscriptions, diffs against what it last sent, pushes only
//! what changed, and keeps per-client, per-type bookkeeping (versions, nonces, ACK/NACK) that the
//! status API reads through [`SyncRegistry`].

mod metrics;
pub mod resource;
pub mod server;
pub mod status;

pub use envoy_types::pb::envoy::config::core::v3::Node;
pub use resource::{ClientSnapshot, Resource, TypeUrl};
pub use server::{AdsServer, Error, Generator};
pub use status::{ClientStatus, Mode, Nack, PeerIdentity, SyncRegistry, TypeStatus};
