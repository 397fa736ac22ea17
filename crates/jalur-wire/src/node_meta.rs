//! An xDS node's metadata as jalur reads and writes it: Istio's keys (so Envoy bootstraps
//! written for Istio work unchanged) and jalur's own `JALUR_*`. `jalur proxy` writes it with
//! [`NodeMeta::to_struct`]; the control plane reads every client's with [`NodeMeta::from_struct`].

use std::collections::BTreeMap;
use std::fmt;

use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

/// The metadata keys, as they appear on the wire.
pub mod key {
    /// Istio: the workload's namespace.
    pub const NAMESPACE: &str = "NAMESPACE";
    /// Istio: the workload's labels, a struct of strings.
    pub const LABELS: &str = "LABELS";
    /// Istio: the workload's addresses, comma-separated; the first is its endpoint.
    pub const INSTANCE_IPS: &str = "INSTANCE_IPS";
    /// Istio: the workload (pod) name.
    pub const WORKLOAD_NAME: &str = "WORKLOAD_NAME";
    /// Istio: the workload's service account (its SPIFFE id's `sa`); defaults to the service.
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    /// Istio: the container ports, `[{"name":"http","containerPort":8080,"protocol":"TCP"}]`.
    pub const POD_PORTS: &str = "POD_PORTS";
    /// The service the workload serves (else the `app` label).
    pub const SERVICE: &str = "JALUR_SERVICE";
    /// `sidecar`, `gateway`, `fronting` or `grpc`: overrides what the node id says.
    pub const ROLE: &str = "JALUR_ROLE";
    /// Service ports, `http:8080,grpc-api:9090` (bare numbers are HTTP); wins over POD_PORTS.
    pub const PORTS: &str = "JALUR_PORTS";
    /// The local app's port when it differs from the service port.
    pub const APP_PORT: &str = "JALUR_APP_PORT";
    pub const INBOUND_PORT: &str = "JALUR_INBOUND_PORT";
    pub const OUTBOUND_PORT: &str = "JALUR_OUTBOUND_PORT";
    /// Where the proxy answers `/healthz/ready`.
    pub const HEALTH_PORT: &str = "JALUR_HEALTH_PORT";
    /// Where the proxy serves `/stats/prometheus` (scraped by the migration controller).
    pub const STATS_PORT: &str = "JALUR_STATS_PORT";
    /// The address listeners bind.
    pub const LISTEN_ADDRESS: &str = "JALUR_LISTEN_ADDRESS";
    /// `true`: bind listeners on port 0 (tests and side-by-side runs).
    pub const EPHEMERAL_PORTS: &str = "JALUR_EPHEMERAL_PORTS";
}

/// What a node says about itself. Every field is what the metadata holds, no defaults applied:
/// the control plane decides what an absent key means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMeta {
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub instance_ips: Vec<String>,
    pub workload_name: Option<String>,
    pub service_account: Option<String>,
    pub service: Option<String>,
    pub role: Option<Role>,
    /// From `JALUR_PORTS`, else from `POD_PORTS`.
    pub ports: Vec<NamedPort>,
    pub app_port: Option<u32>,
    pub inbound_port: Option<u32>,
    pub outbound_port: Option<u32>,
    pub health_port: Option<u32>,
    pub stats_port: Option<u32>,
    pub listen_address: Option<String>,
    pub ephemeral_ports: bool,
}

/// `JALUR_ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Sidecar,
    Gateway,
    Fronting,
    Grpc,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => "sidecar",
            Role::Gateway => "gateway",
            Role::Fronting => "fronting",
            Role::Grpc => "grpc",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [Role::Sidecar, Role::Gateway, Role::Fronting, Role::Grpc]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A service port as a node announces it; the name's prefix gives the protocol, Istio-style.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub number: u32,
}

/// A key whose value could not be read; the key is left out of the [`NodeMeta`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node metadata {key} = {value}: {reason}")]
pub struct MetaError {
    pub key: &'static str,
    /// The value as received (strings quoted), for the log line.
    pub value: String,
    pub reason: String,
}

impl NodeMeta {
    /// Reads the keys jalur knows; others are ignored (Istio bootstraps carry many). A value of
    /// the wrong shape is reported and left out, so one bad key never hides the rest.
    pub fn from_struct(md: &Struct) -> (NodeMeta, Vec<MetaError>) {
        let mut r = Reader {
            md,
            errors: Vec::new(),
        };
        let ports = match r.string(key::PORTS) {
            Some(list) => r.port_list(&list),
            None => r.pod_ports(),
        };
        let meta = NodeMeta {
            namespace: r.string(key::NAMESPACE),
            labels: r.labels(),
            instance_ips: r
                .string(key::INSTANCE_IPS)
                .map(|ips| {
                    ips.split(',')
                        .map(str::trim)
                        .filter(|ip| !ip.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            workload_name: r.string(key::WORKLOAD_NAME),
            service_account: r.string(key::SERVICE_ACCOUNT),
            service: r.string(key::SERVICE),
            role: r.role(),
            ports,
            app_port: r.port(key::APP_PORT),
            inbound_port: r.port(key::INBOUND_PORT),
            outbound_port: r.port(key::OUTBOUND_PORT),
            health_port: r.port(key::HEALTH_PORT),
            stats_port: r.port(key::STATS_PORT),
            listen_address: r.string(key::LISTEN_ADDRESS),
            ephemeral_ports: r.flag(key::EPHEMERAL_PORTS),
        };
        (meta, r.errors)
    }

    /// The metadata a node sends: every field that is set, ports as `JALUR_PORTS`.
    pub fn to_struct(&self) -> Struct {
        let mut md = Struct::default();
        let mut put = |k: &str, v: Kind| {
            md.fields.insert(k.to_string(), Value { kind: Some(v) });
        };
        let text = |s: &str| Kind::StringValue(s.to_string());
        if let Some(ns) = &self.namespace {
            put(key::NAMESPACE, text(ns));
        }
        if !self.labels.is_empty() {
            let labels = self
                .labels
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value {
                            kind: Some(text(v)),
                        },
                    )
                })
                .collect();
            put(key::LABELS, Kind::StructValue(Struct { fields: labels }));
        }
        if !self.instance_ips.is_empty() {
            put(key::INSTANCE_IPS, text(&self.instance_ips.join(",")));
        }
        let strings = [
            (key::WORKLOAD_NAME, &self.workload_name),
            (key::SERVICE_ACCOUNT, &self.service_account),
            (key::SERVICE, &self.service),
            (key::LISTEN_ADDRESS, &self.listen_address),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                put(k, text(v));
            }
        }
        if let Some(role) = self.role {
            put(key::ROLE, text(role.as_str()));
        }
        if !self.ports.is_empty() {
            let list: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            put(key::PORTS, text(&list.join(",")));
        }
        let ports = [
            (key::APP_PORT, self.app_port),
            (key::INBOUND_PORT, self.inbound_port),
            (key::OUTBOUND_PORT, self.outbound_port),
            (key::HEALTH_PORT, self.health_port),
            (key::STATS_PORT, self.stats_port),
        ];
        for (k, v) in ports {
            if let Some(port) = v {
                put(k, text(&port.to_string()));
            }
        }
        if self.ephemeral_ports {
            put(key::EPHEMERAL_PORTS, text("true"));
        }
        md
    }
}

impl fmt::Display for NamedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.number)
    }
}

/// `NAME:PORT`, or a bare `PORT` (HTTP, named `http-PORT`): one item of `JALUR_PORTS`.
impl std::str::FromStr for NamedPort {
    type Err = String;

    fn from_str(item: &str) -> Result<NamedPort, String> {
        let item = item.trim();
        let (name, number) = match item.rsplit_once(':') {
            Some((name, n)) => (name.to_string(), n),
            None => (format!("http-{item}"), item),
        };
        match parse_port(number) {
            Some(number) if !name.is_empty() => Ok(NamedPort { name, number }),
            _ => Err(format!(
                "{item:?} is not NAME:PORT or PORT (a port number from 1 to 65535)"
            )),
        }
    }
}

/// Reads one struct, collecting what it cannot.
struct Reader<'a> {
    md: &'a Struct,
    errors: Vec<MetaError>,
}

impl Reader<'_> {
    fn fail(&mut self, key: &'static str, value: String, reason: impl Into<String>) {
        self.errors.push(MetaError {
            key,
            value,
            reason: reason.into(),
        });
    }

    /// A string, or a number or bool written without quotes in a YAML bootstrap.
    fn string(&mut self, key: &'static str) -> Option<String> {
        let md = self.md;
        let kind = md.fields.get(key)?.kind.as_ref()?;
        match scalar(kind) {
            Some(s) => Some(s),
            None => {
                self.fail(key, shown(kind), "expected a string");
                None
            }
        }
    }

    fn port(&mut self, key: &'static str) -> Option<u32> {
        let s = self.string(key)?;
        match parse_port(&s) {
            Some(p) => Some(p),
            None => {
                self.fail(key, format!("{s:?}"), "not a port number (1-65535)");
                None
            }
        }
    }

    fn flag(&mut self, key: &'static str) -> bool {
        match self.string(key).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                self.fail(key, format!("{other:?}"), "expected true or false");
                false
            }
        }
    }

    fn role(&mut self) -> Option<Role> {
        let s = self.string(key::ROLE)?;
        let role = Role::parse(&s);
        if role.is_none() {
            self.fail(
                key::ROLE,
                format!("{s:?}"),
                "expected sidecar, gateway, fronting or grpc",
            );
        }
        role
    }

    fn labels(&mut self) -> BTreeMap<String, String> {
        let md = self.md;
        let Some(kind) = md.fields.get(key::LABELS).and_then(|v| v.kind.as_ref()) else {
            return BTreeMap::new();
        };
        let Kind::StructValue(labels) = kind else {
            self.fail(key::LABELS, shown(kind), "expected a struct of strings");
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (name, value) in &labels.fields {
            match value.kind.as_ref().and_then(scalar) {
                Some(v) => {
                    out.insert(name.clone(), v);
                }
                None => self.fail(
                    key::LABELS,
                    format!("{{{name}: ...}}"),
                    format!("label {name} is not a string"),
                ),
            }
        }
        out
    }

    /// `http:8080,grpc-api:9090`, or bare numbers (`8080` is `http-8080:8080`).
    fn port_list(&mut self, list: &str) -> Vec<NamedPort> {
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item.parse() {
                Ok(port) => out.push(port),
                Err(reason) => self.fail(key::PORTS, format!("{list:?}"), reason),
            }
        }
        out
    }

    fn pod_ports(&mut self) -> Vec<NamedPort> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct PodPort {
            #[serde(default)]
            name: String,
            container_port: u32,
        }
        let Some(text) = self.string(key::POD_PORTS) else {
            return Vec::new();
        };
        match serde_json::from_str::<Vec<PodPort>>(&text) {
            Ok(ports) => ports
                .into_iter()
                .map(|p| NamedPort {
                    name: p.name,
                    number: p.container_port,
                })
                .collect(),
            Err(e) => {
                self.fail(key::POD_PORTS, format!("{text:?}"), e.to_string());
                Vec::new()
            }
        }
    }
}

fn scalar(kind: &Kind) -> Option<String> {
    match kind {
        Kind::StringValue(s) => Some(s.clone()),
        Kind::NumberValue(n) => Some(format!("{n}")),
        Kind::BoolValue(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value's shape for an error message (never a whole struct: it may be large).
fn shown(kind: &Kind) -> String {
    match kind {
        Kind::StringValue(s) => format!("{s:?}"),
        Kind::NumberValue(n) => n.to_string(),
        Kind::BoolValue(b) => b.to_string(),
        Kind::NullValue(_) => "null".into(),
        Kind::StructValue(_) => "a struct".into(),
        Kind::ListValue(_) => "a list".into(),
    }
}

fn parse_port(s: &str) -> Option<u32> {
    s.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| (1..=65535).contains(p))
}

#[cfg(test)]
mod tests;
