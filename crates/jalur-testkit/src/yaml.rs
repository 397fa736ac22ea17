//! Istio YAML for test fixtures: a mesh-internal service, its workload entries and subsets, and
//! counting which backend answered a burst of requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::client::http_get;

/// A mesh-internal service `host` (port 9080, HTTP) whose endpoints are WorkloadEntries labelled
/// `app: name`.
pub fn service_entry(name: &str, ns: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  workloadSelector:\n    labels: {{app: {name}}}\n"
    )
}

/// A WorkloadEntry `app-version` at `addr` (its `http` port), labelled app and version.
pub fn workload_entry(app: &str, version: &str, ns: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {app}-{version}, namespace: {ns}}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: {app}, version: {version}}}\n",
        addr.ip(),
        addr.port()
    )
}

/// A DestinationRule for `name` with one subset per version (label `version`).
pub fn subsets_rule(name: &str, ns: &str, versions: &[&str]) -> String {
    let subsets: String = versions
        .iter()
        .map(|v| format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"))
        .collect();
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  subsets:\n{subsets}")
}

/// Sends `n` requests for `host` through `proxy` and counts the `x-backend` that answered
/// (non-200 answers count under their status code, failures under "error: ...").
pub async fn spread(
    proxy: SocketAddr,
    host: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let key = match http_get(proxy, host, "/", headers).await {
            Ok((200, h, _)) => h
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_string(),
            Ok((status, _, _)) => status.to_string(),
            Err(e) => format!("error: {e}"),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// Percentage of `seen` that went to `backend`.
pub fn share(seen: &BTreeMap<String, usize>, backend: &str) -> f64 {
    let total: usize = seen.values().sum();
    100.0 * *seen.get(backend).unwrap_or(&0) as f64 / total.max(1) as f64
}
