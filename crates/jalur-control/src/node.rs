//! Who is asking: an xDS client's node (id and metadata, in Istio's shapes so Envoy bootstraps
//! written for Istio work) turned into a [`ClientInfo`] that translation and the registry use.
//!
//! Node id: `sidecar~10.1.2.3~reviews-v1-abc.bookinfo~bookinfo.svc.cluster.local` (gateways use
//! `router~...`). Metadata keys read: `NAMESPACE`, `LABELS`, `INSTANCE_IPS`, `WORKLOAD_NAME`,
//! `POD_PORTS` (Istio's JSON list of container ports); and jalur's own:
//! `JALUR_SERVICE`, `JALUR_ROLE` (sidecar|gateway|fronting|grpc), `JALUR_INBOUND_PORT`,
//! `JALUR_OUTBOUND_PORT`, `JALUR_APP_PORT`, `JALUR_HEALTH_PORT`, `JALUR_STATS_PORT`, `JALUR_LISTEN_ADDRESS`,
//! `JALUR_EPHEMERAL_PORTS` (bind listeners on port
//! 0; for tests and side-by-side runs), `JALUR_PORTS` (`http:8080,grpc:9090`).

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind as ValueKind, Struct, Value};
use jalur_model::host::CLUSTER_DOMAIN;

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
}

impl ClientInfo {
    pub fn from_node(node: &Node) -> ClientInfo {
        let md = node.metadata.clone().unwrap_or_default();
        let parts: Vec<&str> = node.id.split('~').collect();
        let istio_shape = parts.len() == 4;
        let role = md_str(&md, "JALUR_ROLE");
        let is_grpc = node.user_agent_name.to_ascii_lowercase().contains("grpc");
        let kind = match (role.as_deref(), parts.first().copied()) {
            (Some("gateway"), _) => ClientKind::Gateway,
            (Some("sidecar"), _) => ClientKind::Sidecar,
            (Some("fronting"), _) => ClientKind::Fronting,
            (Some("grpc"), _) => ClientKind::ProxylessGrpc,
            _ if is_grpc => ClientKind::ProxylessGrpc,
            (_, Some("router")) if istio_shape => ClientKind::Gateway,
            (_, Some("sidecar")) if istio_shape => ClientKind::Sidecar,
            _ => ClientKind::Fronting,
        };
        let ip = md_str(&md, "INSTANCE_IPS")
            .and_then(|ips| ips.split(',').next().map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .or_else(|| {
                istio_shape
                    .then(|| parts[1].to_string())
                    .filter(|s| !s.is_empty())
            });
        let pod_ns = istio_shape.then(|| parts[2].rsplit_once('.')).flatten();
        let namespace = md_str(&md, "NAMESPACE")
            .or_else(|| pod_ns.map(|(_, ns)| ns.to_string()))
            .unwrap_or_else(jalur_model::default_namespace);
        let workload_name = md_str(&md, "WORKLOAD_NAME")
            .or_else(|| pod_ns.map(|(pod, _)| pod.to_string()))
            .unwrap_or_else(|| node.id.clone());
        let labels = md_struct(&md, "LABELS");
        let service = md_str(&md, "JALUR_SERVICE")
            .or_else(|| labels.get("service.istio.io/canonical-name").cloned())
            .or_else(|| labels.get("app").cloned());
        let ports = md_str(&md, "JALUR_PORTS")
            .map(|s| parse_port_list(&s))
            .or_else(|| md_str(&md, "POD_PORTS").map(|s| parse_pod_ports(&s)))
            .unwrap_or_default();
        let port = |key: &str, default: u32| {
            md_str(&md, key)
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        ClientInfo {
            id: node.id.clone(),
            kind,
            ip,
            namespace,
            workload_name,
            service,
            labels,
            ports,
            inbound_port: port("JALUR_INBOUND_PORT", DEFAULT_INBOUND_PORT),
            outbound_port: port("JALUR_OUTBOUND_PORT", DEFAULT_OUTBOUND_PORT),
            health_port: port("JALUR_HEALTH_PORT", 15021),
            stats_port: md_str(&md, "JALUR_STATS_PORT").and_then(|s| s.parse().ok()),
            app_port: md_str(&md, "JALUR_APP_PORT").and_then(|s| s.parse().ok()),
            listen_address: md_str(&md, "JALUR_LISTEN_ADDRESS")
                .unwrap_or_else(|| "0.0.0.0".to_string()),
            ephemeral_ports: md_str(&md, "JALUR_EPHEMERAL_PORTS").as_deref() == Some("true"),
            locality: node
                .locality
                .as_ref()
                .map(|l| [l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()].join("/"))
                .unwrap_or_default(),
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
        })
    }
}

fn md_str(md: &Struct, key: &str) -> Option<String> {
    match md.fields.get(key)?.kind.as_ref()? {
        ValueKind::StringValue(s) => Some(s.clone()),
        ValueKind::NumberValue(n) => Some(format!("{n}")),
        ValueKind::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

fn md_struct(md: &Struct, key: &str) -> BTreeMap<String, String> {
    let Some(Value {
        kind: Some(ValueKind::StructValue(s)),
    }) = md.fields.get(key)
    else {
        return BTreeMap::new();
    };
    s.fields
        .keys()
        .filter_map(|k| md_str(s, k).map(|v| (k.clone(), v)))
        .collect()
}

/// `http:8080,grpc-api:9090` (name prefix gives the protocol, Istio-style) or bare numbers (HTTP).
fn parse_port_list(s: &str) -> Vec<Port> {
    s.split(',')
        .filter_map(|item| {
            let item = item.trim();
            let (name, number) = match item.rsplit_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (format!("http-{item}"), item.parse().ok()?),
            };
            Some(Port {
                number,
                protocol: Protocol::parse(None, Some(&name)),
                name,
            })
        })
        .collect()
}

/// Istio's `POD_PORTS`: `[{"name":"http","containerPort":8080,"protocol":"TCP"}]`.
fn parse_pod_ports(s: &str) -> Vec<Port> {
    let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(s) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|p| {
            let number = u32::try_from(p.get("containerPort")?.as_u64()?).ok()?;
            let name = p
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            let protocol = Protocol::parse(None, Some(&name));
            Some(Port {
                number,
                name,
                protocol,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
        assert_eq!(
            parse_port_list("http:8080,grpc-api:9090")[1].protocol,
            Protocol::Grpc
        );
    }
}
