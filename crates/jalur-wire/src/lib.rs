//! What both ends of the xDS wire agree on beyond Envoy's protos: how a cluster is named
//! ([`ClusterName`], Istio's `outbound|PORT|SUBSET|HOST`) and what a node says about itself in
//! its metadata ([`NodeMeta`], Istio's keys and jalur's `JALUR_*`). The control plane writes
//! cluster names and reads node metadata; `jalur proxy` writes node metadata and reads cluster
//! names. Both use these types, so neither formats or splits strings the other has to match.
//! Both ends also find a vanished peer the same way ([`keepalive`]).
//!
//! A leaf crate: it depends on envoy-types (for `Struct`), socket2 and nothing of jalur.

mod cluster_name;
pub mod keepalive;
mod node_meta;

pub use cluster_name::{ClusterName, ClusterNameError};
pub use node_meta::{key, MetaError, NamedPort, NodeMeta, Role};
