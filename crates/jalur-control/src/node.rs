//! Who is asking: an xDS client's node (id and metadata, in Istio's shapes so Envoy bootstraps
//! written for Istio work) turned into a [`ClientInfo`] that translation and the registry use.
//!
//! Node id: `sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local` (gateways use
//! `router~...`). The metadata keys (Istio's and `JALUR_*`) are read by `jalur_wire::NodeMeta`,
//! the same type `jalur proxy` writes them with; this file decides what they mean here
//! (defaults, which wins over the node id).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use jalur_model::host::CLUSTER_DOMAIN;
use jalur_wire::{NodeMeta, Role};

use crate::workload::{Port, Protocol, Workload, ORIGIN_LABEL};

pub const DEFAULT_OUTBOUND_PORT: u32 = 15001;
pub const DEFAULT_INBOUND_PORT: u32 = 15006;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    /// A workload's own proxy: outbound routing for everything, inbound to its app.
    Sidecar,
    /// An ingress/edge proxy: listeners from the Gateway resources that select it.
    Gateway,
    /// A gRPC library with built-in xDS: one API listener per service it resolves.
    ProxylessGrpc,
    /// A plain Envoy with a non-Istio node id (e.g. an existing fronting proxy): outbound only.
    Fronting,
}

impl ClientKind {
    pub fn label(self) -> &'static str {
        match self {
            ClientKind::Sidecar => "sidecar",
            ClientKind::Gateway => "gateway",
            ClientKind::ProxylessGrpc => "proxyless-grpc",
            ClientKind::Fronting => "fronting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClientInfo {
    pub id: String,
    pub kind: ClientKind,
    pub ip: Option<String>,
    pub namespace: String,
    pub workload_name: String,
    pub service: Option<String>,
    /// Istio's `SERVICE_ACCOUNT`, else the service's short name, else the workload name: the
    /// account of the SPIFFE id this client's workload has.
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    /// The local app's port (`JALUR_APP_PORT`) when it differs from the service port.
    pub app_port: Option<u32>,
    pub inbound_port: u32,
    pub outbound_port: u32,
    pub listen_address: String,
    /// Where the proxy answers `/healthz/ready` (`JALUR_HEALTH_PORT`, default 15021).
    pub health_port: u32,
    /// Where the proxy serves `/stats/prometheus` (`JALUR_STATS_PORT`; jalur proxies announce
    /// it), scraped by the migration controller.
    pub stats_port: Option<u32>,
    pub ephemeral_ports: bool,
    pub locality: String,
    /// Metadata keys that could not be read (each left at its default), for the log and
    /// `/debug/syncz` readers: a typo in a bootstrap should be seen, not guessed around.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metadata_errors: Vec<String>,
}

impl ClientInfo {
    pub fn from_node(node: &Node) -> ClientInfo {
        let (md, metadata_errors) = node
            .metadata
            .as_ref()
            .map(NodeMeta::from_struct)
            .unwrap_or_default();
        let parts: Vec<&str> = node.id.split('~').collect();
        let istio_shape = parts.len() == 4;
        let is_grpc = node.user_agent_name.to_ascii_lowercase().contains("grpc");
        let kind = match (md.role, parts.first().copied()) {
            (Some(Role::Gateway), _) => ClientKind::Gateway,
            (Some(Role::Sidecar), _) => ClientKind::Sidecar,
            (Some(Role::Fronting), _) => ClientKind::Fronting,
            (Some(Role::Grpc), _) => ClientKind::ProxylessGrpc,
            _ if is_grpc => ClientKind::ProxylessGrpc,
            (_, Some("router")) if istio_shape => ClientKind::Gateway,
            (_, Some("sidecar")) if istio_shape => ClientKind::Sidecar,
            _ => ClientKind::Fronting,
        };
        let ip = md.instance_ips.first().cloned().or_else(|| {
            istio_shape
                .then(|| parts[1].to_string())
                .filter(|s| !s.is_empty())
        });
        let pod_ns = istio_shape.then(|| parts[2].rsplit_once('.')).flatten();
        let namespace = md
            .namespace
            .or_else(|| pod_ns.map(|(_, ns)| ns.to_string()))
            .unwrap_or_else(jalur_model::default_namespace);
        let workload_name = md
            .workload_name
            .or_else(|| pod_ns.map(|(pod, _)| pod.to_string()))
            .unwrap_or_else(|| node.id.clone());
        let labels = md.labels;
        let service = md
            .service
            .or_else(|| labels.get("service.istio.io/canonical-name").cloned())
            .or_else(|| labels.get("app").cloned());
        let service_account = md
            .service_account
            .or_else(|| {
                service
                    .as_deref()
                    .and_then(|s| s.split('.').next())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| workload_name.clone());
        let ports = md
            .ports
            .into_iter()
            .map(|p| Port {
                number: p.number,
                protocol: Protocol::parse(None, Some(&p.name)),
                name: p.name,
            })
            .collect();
        ClientInfo {
            id: node.id.clone(),
            kind,
            ip,
            namespace,
            workload_name,
            service,
            service_account,
            labels,
            ports,
            inbound_port: md.inbound_port.unwrap_or(DEFAULT_INBOUND_PORT),
            outbound_port: md.outbound_port.unwrap_or(DEFAULT_OUTBOUND_PORT),
            health_port: md.health_port.unwrap_or(15021),
            stats_port: md.stats_port,
            app_port: md.app_port,
            listen_address: md.listen_address.unwrap_or_else(|| "0.0.0.0".to_string()),
            ephemeral_ports: md.ephemeral_ports,
            locality: node
                .locality
                .as_ref()
                .map(|l| [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()].join("/"))
                .unwrap_or_default(),
            metadata_errors: metadata_errors.iter().map(ToString::to_string).collect(),
        }
    }

    /// The port a listener should bind: the wanted one, or 0 when the client asked for ephemeral
    /// ports (it then reads the real one from its own admin API).
    pub fn bind_port(&self, wanted: u32) -> u32 {
        if self.ephemeral_ports {
            0
        } else {
            wanted
        }
    }

    /// The workload this client announces, if it announces one (a sidecar or gateway with a
    /// service name, an address and at least one port).
    pub fn workload(&self) -> Option<Workload> {
        if !matches!(self.kind, ClientKind::Sidecar | ClientKind::Gateway) || self.ports.is_empty()
        {
            return None;
        }
        let service = self.service.as_ref()?;
        let address = self.ip.clone()?;
        let host = if service.contains('.') {
            service.clone()
        } else {
            format!("{service}.{}.{CLUSTER_DOMAIN}", self.namespace)
        };
        let inbound = (self.kind == ClientKind::Sidecar && !self.ephemeral_ports)
            .then_some(self.inbound_port);
        Some(Workload {
            host,
            namespace: self.namespace.clone(),
            name: self.workload_name.clone(),
            address,
            ports: self.ports.clone(),
            target_port: inbound,
            labels: {
                let mut l = self.labels.clone();
                l.entry(ORIGIN_LABEL.to_string())
                    .or_insert_with(|| "mesh".to_string());
                l
            },
            weight: 1,
            locality: self.locality.clone(),
            healthy: true,
            source: format!("proxy:{}", self.id),
            service_account: Some(self.service_account.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Struct, Value};

    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(ValueKind::StringValue(v.into())),
        }
    }

    #[test]
    fn istio_sidecar_node() {
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), s("reviews"));
        labels.fields.insert("version".into(), s("v2"));
        let mut md = Struct::default();
        md.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(ValueKind::StructValue(labels)),
            },
        );
        md.fields.insert(
            "POD_PORTS".into(),
            s(r#"[{"name":"http","containerPort":9080,"protocol":"TCP"}]"#),
        );
        let node = Node {
            id: "sidecar~10.1.2.3~reviews-v2-x.bookinfo~bookinfo.svc.cluster.local".into(),
            metadata: Some(md),
            user_agent_name: "envoy".into(),
            ..Node::default()
        };
        let c = ClientInfo::from_node(&node);
        assert_eq!(c.kind, ClientKind::Sidecar);
        assert_eq!(c.namespace, "bookinfo");
        let w = c.workload().expect("workload");
        assert_eq!(w.host, "reviews.bookinfo.svc.cluster.local");
        assert_eq!(w.address, "10.1.2.3");
        assert_eq!(w.labels.get("version").map(String::as_str), Some("v2"));
        assert_eq!(w.ports[0].number, 9080);
        assert_eq!(w.target_port, Some(DEFAULT_INBOUND_PORT));
    }

    #[test]
    fn grpc_and_fronting_kinds() {
        let grpc = Node {
            id: "anything".into(),
            user_agent_name: "gRPC Python".into(),
            ..Node::default()
        };
        assert_eq!(ClientInfo::from_node(&grpc).kind, ClientKind::ProxylessGrpc);
        let plain = Node {
            id: "front-1".into(),
            user_agent_name: "envoy".into(),
            ..Node::default()
        };
        assert_eq!(ClientInfo::from_node(&plain).kind, ClientKind::Fronting);
    }

    #[test]
    fn port_names_give_protocols_and_bad_keys_are_reported_not_guessed() {
        let mut md = Struct::default();
        md.fields
            .insert("JALUR_PORTS".into(), s("http:8080,grpc-api:9090"));
        md.fields.insert("JALUR_INBOUND_PORT".into(), s("15o06"));
        let node = Node {
            id: "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local".into(),
            metadata: Some(md),
            ..Node::default()
        };
        let c = ClientInfo::from_node(&node);
        assert_eq!(c.ports[1].protocol, Protocol::Grpc);
        assert_eq!(c.inbound_port, DEFAULT_INBOUND_PORT);
        assert_eq!(c.metadata_errors.len(), 1, "{:?}", c.metadata_errors);
        assert!(c.metadata_errors[0].contains("JALUR_INBOUND_PORT"));
    }
}
