//! Config and status helpers for the proxyless gRPC tests: a mesh-internal gRPC service whose
//! endpoints are WorkloadEntries, weighted VirtualServices, and what /debug/syncz and /metrics say
//! about proxyless clients.
//!
//! Included from `tests/grpc.rs` with `#[path = "common/grpc.rs"]`, beside `mod common;`.

#![allow(dead_code)]

use std::net::SocketAddr;

use serde_json::Value;

/// The service port the gRPC tests resolve (`xds:///HOST:7070`).
pub const GRPC_PORT: u16 = 7070;

/// A mesh-internal gRPC service `host` on port 7070 (named `grpc`, protocol GRPC), STATIC, whose
/// endpoints are the WorkloadEntries labelled `app: <name>`.
pub fn grpc_service_entry(name: &str, ns: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: {GRPC_PORT}, name: grpc, protocol: GRPC}}\n  workloadSelector:\n    labels: {{app: {name}}}\n"
    )
}

/// A DNS-resolved gRPC service `host` on port 7070 whose endpoints are `(hostname, port)` pairs.
pub fn grpc_dns_service_entry(
    name: &str,
    ns: &str,
    host: &str,
    endpoints: &[(&str, u16)],
) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(address, port)| format!("  - {{address: {address}, ports: {{grpc: {port}}}}}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: {GRPC_PORT}, name: grpc, protocol: GRPC}}\n  endpoints:\n{endpoints}"
    )
}

/// A WorkloadEntry for `app` at `version` whose `grpc` port is the backend's real port.
pub fn grpc_workload_entry(app: &str, version: &str, ns: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {app}-{version}, namespace: {ns}}}\nspec:\n  address: {}\n  ports: {{grpc: {}}}\n  labels: {{app: {app}, version: {version}}}\n",
        addr.ip(),
        addr.port()
    )
}

/// A VirtualService for `name` with one match-free HTTP route split by weight between subsets.
pub fn weighted_vs(name: &str, ns: &str, split: &[(&str, u32)]) -> String {
    let destinations: String = split
        .iter()
        .map(|(subset, weight)| {
            format!(
                "    - destination: {{host: {name}, subset: {subset}}}\n      weight: {weight}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n{destinations}"
    )
}

/// The syncz entry of `node_id` (the newest stream if it has several).
pub fn syncz_client(syncz: &Value, node_id: &str) -> Option<Value> {
    syncz
        .as_array()?
        .iter()
        .filter(|c| c["node_id"] == node_id)
        .max_by_key(|c| c["conn_id"].as_u64())
        .cloned()
}

/// Every NACK a syncz entry records, as `type: detail`.
pub fn nacks_in(client: &Value) -> Vec<String> {
    client["types"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, t)| !t["last_nack"].is_null())
        .map(|(name, t)| format!("{name}: {}", t["last_nack"]["detail"]))
        .collect()
}

/// `jalur_xds_nacks_total` lines of proxyless gRPC clients with a non-zero count (NACKs outlive the
/// stream in /metrics, unlike in syncz).
pub fn proxyless_nacks(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("jalur_xds_nacks_total{") && l.contains("kind=\"proxyless-grpc\"")
        })
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_string)
        .collect()
}
