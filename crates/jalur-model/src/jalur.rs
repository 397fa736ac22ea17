//! jalur's own resources, `jalur.dev/v1alpha1`.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

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

/// A staged, metric-gated move of one route from a `legacy` path to a `mesh` path (or, inside the
/// mesh, from one subset to another: the same engine runs version canaries). The migration
/// controller only ever writes the weights of the VirtualService route for `host`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Migration {
    /// The host callers use: the route being moved. Default: the legacy path's host.
    #[serde(default)]
    pub host: Option<String>,
    /// Where the route applies, as a VirtualService's `gateways` (default: `mesh`, the sidecars
    /// and fronting proxies).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// The path traffic leaves (Consul instances, or subset v1 for a canary).
    pub legacy: MigrationPath,
    /// The path traffic moves to (meshed instances, or subset v2 for a canary).
    pub mesh: MigrationPath,
    /// The destination port of both paths, when the hosts have several.
    #[serde(default)]
    pub port: Option<u32>,
    /// Mesh-path percentages in increasing order, ending at 100.
    pub stages: Vec<MigrationStage>,
    #[serde(default)]
    pub gates: MigrationGates,
    /// What a failed gate does: `rollback` (default: 100 % back on the legacy path) or `pause`.
    #[serde(default)]
    pub on_failure: Option<FailureAction>,
}

/// One side of a migration: a Consul service (`registry` + `service`, host
/// `SERVICE.service.consul`) or a mesh `host`, optionally narrowed to a `subset`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationPath {
    /// A ConsulRegistry in the Migration's namespace.
    #[serde(default)]
    pub registry: Option<String>,
    /// The Consul service name in that registry.
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub subset: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationStage {
    /// Percent of the route's traffic on the mesh path.
    pub weight: u32,
    /// How long the stage holds (gates keep being checked) before the next one.
    #[serde(default)]
    pub hold: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationGates {
    /// Largest acceptable error rate of the mesh path over the window, 0..1 (default 0.01).
    #[serde(default)]
    pub max_error_rate: Option<f64>,
    /// Largest acceptable mesh-path p99 as a multiple of the legacy path's p99 over the same
    /// window (default 2.0).
    #[serde(default)]
    pub max_p99_ratio: Option<f64>,
    /// Latency the ratio gate forgives on top of the ratio (default 5ms): at sub-millisecond
    /// latencies a ratio alone trips on noise.
    #[serde(default)]
    pub p99_allowance: Option<Duration>,
    /// Gates judge a window only once the mesh path served this many requests in it (default 20).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// The sliding window gates are computed over (default 10s).
    #[serde(default)]
    pub window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureAction {
    Rollback,
    Pause,
}

impl Migration {
    pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
    pub const DEFAULT_MAX_P99_RATIO: f64 = 2.0;
    pub const DEFAULT_P99_ALLOWANCE: StdDuration = StdDuration::from_millis(5);
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;
    pub const DEFAULT_WINDOW: StdDuration = StdDuration::from_secs(10);

    pub fn on_failure(&self) -> FailureAction {
        self.on_failure.unwrap_or(FailureAction::Rollback)
    }

    /// The host the route is moved for, unqualified as written (callers qualify it).
    pub fn route_host(&self) -> Option<String> {
        self.host.clone().or_else(|| self.legacy.host())
    }
}

impl MigrationPath {
    /// The destination host: `host`, or `SERVICE.service.consul` for a Consul service.
    pub fn host(&self) -> Option<String> {
        self.host.clone().or_else(|| {
            self.service
                .as_ref()
                .map(|s| format!("{s}.{}", crate::analyze::hybrid::CONSUL_DOMAIN))
        })
    }
}

impl MigrationGates {
    pub fn max_error_rate(&self) -> f64 {
        self.max_error_rate
            .unwrap_or(Migration::DEFAULT_MAX_ERROR_RATE)
    }
    pub fn max_p99_ratio(&self) -> f64 {
        self.max_p99_ratio
            .unwrap_or(Migration::DEFAULT_MAX_P99_RATIO)
    }
    pub fn p99_allowance(&self) -> StdDuration {
        self.p99_allowance
            .map(Duration::as_std)
            .unwrap_or(Migration::DEFAULT_P99_ALLOWANCE)
    }
    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(Migration::DEFAULT_MIN_REQUESTS)
    }
    pub fn window(&self) -> StdDuration {
        self.window
            .map(Duration::as_std)
            .unwrap_or(Migration::DEFAULT_WINDOW)
    }
}
