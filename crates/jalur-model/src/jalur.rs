//! jalur's own resources, `jalur.dev/v1alpha1`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// A Consul deployment whose services join the mesh: `payments` appears as
/// `payments.service.consul` (what legacy code already calls) plus any aliases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsulRegistry {
    /// Consul agents or servers, `http://host:port` or `host:port`; tried in order.
    pub addresses: Vec<String>,
    /// Datacenters to import from; empty = the agent's own.
    #[serde(default)]
    pub datacenters: Vec<String>,
    /// ACL token source (never logged).
    #[serde(default)]
    pub token: Option<TokenSource>,
    /// Which services to import; default: all.
    #[serde(default)]
    pub services: Option<ServiceSelector>,
    /// What a `warning` check means: `exclude` (as `?passing`, the default) or `include`.
    #[serde(default)]
    pub warning: Option<WarningPolicy>,
    /// Extra mesh hosts per Consul service name, e.g. `payments: [payments.prod.svc.cluster.local]`.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
    /// The port mesh callers use for imported services (each instance keeps its own port).
    #[serde(default)]
    pub service_port: Option<u32>,
    /// Blocking-query wait (Consul's `wait`), default 30s.
    #[serde(default)]
    pub wait: Option<Duration>,
    /// Active health checks of imported instances, on top of Consul's own checks and outlier
    /// detection: an instance that fails them leaves rotation even while Consul says passing.
    #[serde(default)]
    pub health_check: Option<ActiveHealthCheck>,
    /// Mesh services that legacy callers reach through gateways: jalur registers every
    /// connected gateway proxy matching `gatewaySelector` in Consul under `name`, with an HTTP
    /// check on its readiness endpoint, and removes the entry when the export goes away.
    #[serde(default)]
    pub exports: Vec<ConsulExport>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsulExport {
    /// The Consul service name legacy callers already resolve, e.g. `payments`.
    pub name: String,
    /// Labels of the gateway proxies to register (e.g. `istio: ingressgateway`).
    pub gateway_selector: BTreeMap<String, String>,
    /// The gateway port legacy callers connect to (a Gateway server port).
    pub port: u32,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSource {
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub env: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSelector {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WarningPolicy {
    Exclude,
    Include,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActiveHealthCheck {
    /// HTTP GET path (2xx = healthy); without it, a TCP connect check.
    #[serde(default)]
    pub http_path: Option<String>,
    #[serde(default)]
    pub interval: Option<Duration>,
    #[serde(default)]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub unhealthy_threshold: Option<u32>,
    #[serde(default)]
    pub healthy_threshold: Option<u32>,
}
