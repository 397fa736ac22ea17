//! Resources as the server stores them: named, versioned by content, already packed into `Any`.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// Envoy v3 type URLs the server hands out, in the order a push must send them
/// (make-before-break: clusters and their endpoints before the listeners and routes that use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    Secret,
}

impl TypeUrl {
    pub const ALL: [TypeUrl; 5] = [
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
        TypeUrl::Secret,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            TypeUrl::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    /// Short name used in metrics labels and the CLI (`cds`, `eds`, `lds`, `rds`, `sds`).
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Cluster => "cds",
            TypeUrl::ClusterLoadAssignment => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::RouteConfiguration => "rds",
            TypeUrl::Secret => "sds",
        }
    }

    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// LDS and CDS are "wildcard-capable" in the xDS protocol: a SotW response must carry the
    /// whole set, and an empty subscription means "everything".
    pub fn is_wildcard_capable(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }
}

/// One named resource with a content version (a hash of its encoded bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub name: String,
    pub version: String,
    pub body: Any,
}

impl Resource {
    /// Packs a message; the version is derived from its encoding so identical content always
    /// has the same version (across restarts and control-plane replicas).
    pub fn new<M: prost::Message + prost::Name>(name: impl Into<String>, msg: M) -> Resource {
        let body = envoy_types::util::pack_any(msg);
        let version = content_version(&body.value);
        Resource {
            name: name.into(),
            version,
            body,
        }
    }
}

/// First 16 hex digits of the SHA-256 of `bytes`.
pub fn content_version(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything one client should see, by type then by name. Immutable once built.
#[derive(Debug, Clone, Default)]
pub struct ClientSnapshot {
    pub resources: BTreeMap<TypeUrl, BTreeMap<String, Resource>>,
}

impl ClientSnapshot {
    pub fn insert(&mut self, type_url: TypeUrl, resource: Resource) {
        self.resources
            .entry(type_url)
            .or_default()
            .insert(resource.name.clone(), resource);
    }

    pub fn of_type(&self, type_url: TypeUrl) -> Option<&BTreeMap<String, Resource>> {
        self.resources.get(&type_url)
    }
}

pub type SharedSnapshot = Arc<ClientSnapshot>;
