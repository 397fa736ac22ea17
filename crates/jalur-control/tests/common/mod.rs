//! Shared by the control plane's integration tests: a control plane on a temp config dir, and
//! traffic helpers that count which backend answered.

#![allow(dead_code)]

pub mod ads;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jalur_control::{ControlPlane, Options};
use jalur_testkit::http_get;

pub struct Plane {
    pub plane: ControlPlane,
    pub dir: PathBuf,
    /// Owns `dir`: removed when the plane is dropped.
    _tmp: tempfile::TempDir,
}

impl Plane {
    /// A control plane on 127.0.0.1:0 serving `files` (name -> YAML) from a fresh directory.
    pub async fn start(files: &[(&str, String)]) -> Plane {
        let tmp = tempfile::TempDir::with_prefix("jalur-control-test-").expect("temp dir");
        let dir = tmp.path().to_path_buf();
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
            ..Options::default()
        };
        let plane = ControlPlane::start(opts)
            .await
            .expect("control plane starts");
        Plane {
            plane,
            dir,
            _tmp: tmp,
        }
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

#[allow(unused_imports)]
pub use jalur_testkit::yaml::{service_entry, share, spread, subsets_rule, workload_entry};
