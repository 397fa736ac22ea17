//! What a registry reports and translation consumes: one service instance ([`Workload`]) with its
//! ports and their protocols. A leaf: registries, node metadata and the mesh index all build on
//! it, and it knows none of them.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Every workload carries where it came from, so a DestinationRule can split one service between
/// its legacy instances (`consul`) and its meshed ones (`mesh`) by subset, whatever the replica
/// counts: `subsets: [{name: legacy, labels: {jalur.dev/origin: consul}}, {name: mesh, ...}]`.
pub const ORIGIN_LABEL: &str = "jalur.dev/origin";

/// Istio's mark of a workload that holds mesh credentials: callers then speak mTLS to it (auto
/// mTLS). jalur proxy with an identity and the Envoy bootstrap `jalur agent` writes carry it.
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
pub const TLS_MODE_ISTIO: &str = "istio";

/// Application protocol of a port, from Istio's `protocol` field or its name prefix (`http-web`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
}

impl Protocol {
    pub fn parse(protocol: Option<&str>, name: Option<&str>) -> Protocol {
        protocol
            .and_then(Protocol::named)
            .or_else(|| name.and_then(Protocol::from_port_name))
            .unwrap_or(Protocol::Tcp)
    }

    /// The protocol a port name declares by its prefix (`http-web`, `tcp-postgres`), if it
    /// declares one; `None` for names that say nothing (`web`, `8080`).
    pub fn from_port_name(name: &str) -> Option<Protocol> {
        Protocol::named(name.split('-').next().unwrap_or(name))
    }

    fn named(s: &str) -> Option<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Protocol::Http),
            "http2" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            "https" => Some(Protocol::Https),
            "tls" => Some(Protocol::Tls),
            "tcp" | "mongo" | "redis" | "mysql" => Some(Protocol::Tcp),
            _ => None,
        }
    }

    /// Carried by the HTTP connection manager (routes, retries, weights per request).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Upstream connections must speak HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Port {
    pub number: u32,
    pub name: String,
    pub protocol: Protocol,
}

/// One instance of a service, as a registry reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Workload {
    /// Fully qualified service host, e.g. `reviews.bookinfo.svc.cluster.local`.
    pub host: String,
    pub namespace: String,
    pub name: String,
    pub address: String,
    /// Application ports (numbers the service is called on).
    pub ports: Vec<Port>,
    /// Every service port is dialled at this port: a sidecar's inbound port, or a registry
    /// instance's own port (Consul instances of one service often differ in port).
    pub target_port: Option<u32>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub locality: String,
    pub healthy: bool,
    /// Who reported it, e.g. `proxy:sidecar~10.0.0.1~reviews-v1.bookinfo~bookinfo.svc.cluster.local`.
    pub source: String,
    /// The account its SPIFFE id names (`spiffe://TD/ns/NAMESPACE/sa/ACCOUNT`): the proxy's
    /// `SERVICE_ACCOUNT`, else its service name. `None` for registry instances (Consul): they
    /// are plaintext legacy with no identity.
    pub service_account: Option<String>,
}

impl Workload {
    /// It holds mesh credentials (label `security.istio.io/tlsMode: istio`) and an identity.
    pub fn mtls_capable(&self) -> bool {
        self.service_account.is_some() && is_mtls_labelled(&self.labels)
    }
}

pub fn is_mtls_labelled(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO)
}

pub type WorkloadSet = Arc<Vec<Workload>>;
