//! Shared by the control plane's integration tests: a control plane on a temp config dir, and
//! traffic helpers that count which backend answered.

#![allow(dead_code)]

pub mod ads;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jalur_control::{ControlPlane, Options};
use jalur_testkit::{http_get, unique_temp_dir};

pub struct Plane {
    pub plane: ControlPlane,
    pub dir: PathBuf,
}

impl Plane {
    /// A control plane on 127.0.0.1:0 serving `files` (name -> YAML) from a fresh directory.
    pub async fn start(files: &[(&str, String)]) -> Plane {
        let dir = unique_temp_dir("jalur-control-test").expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write config");
        }
        let opts = Options {
            config: vec![dir.clone()],
            xds_addr: ([127, 0, 0, 1], 0).into(),
            status_addr: ([127, 0, 0, 1], 0).into(),
            debounce: Duration::from_millis(20),
            registry_grace: Duration::ZERO,
            watch_interval: Duration::from_millis(50),
        };
        let plane = ControlPlane::start(opts)
            .await
            .expect("control plane starts");
        Plane { plane, dir }
    }

    pub fn xds(&self) -> SocketAddr {
        self.plane.xds_addr
    }

    pub fn status(&self) -> SocketAddr {
        self.plane.status_addr
    }

    /// Rewrites one config file (atomically, as editors and config-sync tools do).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, self.dir.join(name)).expect("rename");
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).expect("remove");
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, _, body) = http_get(self.status(), "status", path, &[])
            .await
            .expect("status API");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("json")
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `n` requests for `host` through `proxy` and counts the `x-backend` that answered
/// (non-200 answers count under their status code).
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

pub fn share(seen: &BTreeMap<String, usize>, backend: &str) -> f64 {
    let total: usize = seen.values().sum();
    100.0 * *seen.get(backend).unwrap_or(&0) as f64 / total.max(1) as f64
}

/// A mesh-internal service `host` (port 9080, HTTP) whose endpoints are WorkloadEntries.
pub fn service_entry(name: &str, ns: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  workloadSelector:\n    labels: {{app: {name}}}\n"
    )
}

pub fn workload_entry(app: &str, version: &str, ns: &str, addr: SocketAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {app}-{version}, namespace: {ns}}}\nspec:\n  address: {}\n  ports: {{http: {}}}\n  labels: {{app: {app}, version: {version}}}\n",
        addr.ip(),
        addr.port()
    )
}

pub fn subsets_rule(name: &str, ns: &str, versions: &[&str]) -> String {
    let subsets: String = versions
        .iter()
        .map(|v| format!("  - {{name: {v}, labels: {{version: {v}}}}}\n"))
        .collect();
    format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  subsets:\n{subsets}")
}

pub fn dir_exists(p: &Path) -> bool {
    p.is_dir()
}
