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

/// How far (in percentage points) the observed share of `n` requests may stray from a
/// weight of `percent` % when each request is routed at random (Envoy, gRPC): four standard
/// deviations of a binomial proportion, `4 · sqrt(p (1 - p) / n)`. A correct split lands
/// outside it about once in 16,000 runs; a wrong one (a weight off by a few points) does not
/// land inside it at the sample sizes the tests use.
pub fn four_sigma(percent: f64, n: usize) -> f64 {
    let p = percent / 100.0;
    400.0 * (p * (1.0 - p) / n.max(1) as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::four_sigma;

    #[test]
    fn four_sigma_of_common_splits() {
        let close = |a: f64, b: f64| (a - b).abs() < 0.01;
        assert!(
            close(four_sigma(90.0, 2000), 2.68),
            "{}",
            four_sigma(90.0, 2000)
        );
        assert!(
            close(four_sigma(30.0, 2000), 4.10),
            "{}",
            four_sigma(30.0, 2000)
        );
        assert!(
            close(four_sigma(20.0, 1000), 5.06),
            "{}",
            four_sigma(20.0, 1000)
        );
        assert_eq!(
            four_sigma(100.0, 10),
            0.0,
            "a certain outcome has no spread"
        );
    }
}
