//! The config store: a directory (or files) of YAML, loaded whole, validated, and watched. A change
//! that fails to load or validate is rejected with its diagnostics (file, line, resource, field)
//! and the last good config keeps being served.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jalur_model::analyze;
use jalur_model::{Config, Diagnostic, Severity};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStatus {
    pub paths: Vec<PathBuf>,
    pub files: usize,
    pub resources: usize,
    pub reloads: u64,
    pub rejected: u64,
    /// Diagnostics of the last rejected change; empty once a good change lands.
    pub last_rejection: Vec<Diagnostic>,
    /// Warnings of the config being served.
    pub warnings: Vec<Diagnostic>,
}

#[derive(Debug, thiserror::Error)]
#[error("config in {paths} is invalid:\n{}", .diagnostics.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"))]
pub struct InvalidConfig {
    pub paths: String,
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Clone)]
pub struct ConfigStore {
    paths: Vec<PathBuf>,
    /// Where mesh-wide policies live (`--root-namespace`), for the analyzers' findings.
    root_namespace: Arc<str>,
    tx: Arc<watch::Sender<Arc<Config>>>,
    status: Arc<Mutex<StoreStatus>>,
    applied: Counter,
    rejected: Counter,
    last_ok: Gauge,
}

impl ConfigStore {
    /// Loads the config once; an invalid initial config is an error (there is nothing to keep
    /// serving yet). Mesh-wide policies are read in the default root namespace.
    pub fn open(paths: Vec<PathBuf>) -> Result<ConfigStore, InvalidConfig> {
        ConfigStore::open_in(paths, jalur_model::security::DEFAULT_ROOT_NAMESPACE)
    }

    /// As [`ConfigStore::open`], with mesh-wide policies in `root_namespace` (the control
    /// plane's `--root-namespace`), so the findings it logs name the policies it enforces.
    pub fn open_in(
        paths: Vec<PathBuf>,
        root_namespace: &str,
    ) -> Result<ConfigStore, InvalidConfig> {
        let config = validate(&paths, root_namespace).map_err(|diagnostics| InvalidConfig {
            paths: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            diagnostics,
        })?;
        let (tx, _) = watch::channel(Arc::new(config.0));
        let status = StoreStatus {
            paths: paths.clone(),
            files: config.1,
            resources: tx.borrow().resources.len(),
            reloads: 1,
            warnings: config.2,
            ..StoreStatus::default()
        };
        let last_ok = Gauge::default();
        last_ok.set(1);
        Ok(ConfigStore {
            paths,
            root_namespace: root_namespace.into(),
            tx: Arc::new(tx),
            status: Arc::new(Mutex::new(status)),
            applied: Counter::default(),
            rejected: Counter::default(),
            last_ok,
        })
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "jalur_config_changes_applied",
            "Config changes validated and applied",
            self.applied.clone(),
        );
        registry.register(
            "jalur_config_changes_rejected",
            "Config changes rejected (the previous config kept serving)",
            self.rejected.clone(),
        );
        registry.register(
            "jalur_config_last_change_ok",
            "1 if the last config change was applied, 0 if it was rejected",
            self.last_ok.clone(),
        );
    }

    pub fn current(&self) -> Arc<Config> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.tx.subscribe()
    }

    pub fn status(&self) -> StoreStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the config now. Returns whether the served config changed.
    pub fn reload(&self) -> bool {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match validate(&self.paths, &self.root_namespace) {
            Ok((config, files, warnings)) => {
                status.reloads += 1;
                status.files = files;
                status.resources = config.resources.len();
                status.last_rejection.clear();
                status.warnings = warnings;
                self.last_ok.set(1);
                let changed = *self.tx.borrow().as_ref() != config;
                if changed {
                    self.applied.inc();
                    tracing::info!(
                        resources = config.resources.len(),
                        files,
                        "config change applied"
                    );
                    self.tx.send_replace(Arc::new(config));
                }
                changed
            }
            Err(diagnostics) => {
                status.rejected += 1;
                self.rejected.inc();
                self.last_ok.set(0);
                for d in &diagnostics {
                    tracing::error!(diagnostic = %d, "config change rejected; still serving the previous config");
                }
                status.last_rejection = diagnostics;
                false
            }
        }
    }

    /// Watches the config paths and reloads once a change has been quiet for `settle` (editors
    /// write in several steps). inotify (the `notify` crate) wakes the watch as a file is
    /// written, so a change is seen at once instead of at the next poll; the poll every
    /// `interval` (modification time, size and the set of files) stays as the safety net for
    /// what inotify cannot see (network file systems, a watch limit reached) and is what the
    /// watch relies on alone when inotify cannot be set up (logged).
    pub async fn watch(self, interval: Duration, settle: Duration) {
        let (wake_tx, mut wake) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = self.watch_events(wake_tx);
        let mut seen = fingerprint(&self.paths);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                Some(()) = wake.recv() => {}
            }
            let mut now = fingerprint(&self.paths);
            if now == seen {
                continue;
            }
            // Quiet for `settle`: a burst of writes is one reload.
            loop {
                tokio::time::sleep(settle).await;
                let again = fingerprint(&self.paths);
                if again == now {
                    break;
                }
                now = again;
            }
            seen = now;
            self.reload();
        }
    }

    /// An inotify watch on every config path (a directory recursively; a file through its
    /// directory, so a file renamed over it is seen) that wakes `wake`. `None`, logged, when it
    /// cannot be set up.
    fn watch_events(
        &self,
        wake: tokio::sync::mpsc::Sender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::{RecursiveMode, Watcher};
        let mut watcher =
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    // Full means a wake-up is already pending: nothing is lost.
                    let _ = wake.try_send(());
                }
            }) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "no inotify watch on the config; polling only");
                    return None;
                }
            };
        for path in &self.paths {
            let (target, mode) = if path.is_dir() {
                (path.as_path(), RecursiveMode::Recursive)
            } else {
                match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) => (dir, RecursiveMode::NonRecursive),
                    None => (std::path::Path::new("."), RecursiveMode::NonRecursive),
                }
            };
            if let Err(e) = watcher.watch(target, mode) {
                tracing::warn!(path = %target.display(), error = %e, "no inotify watch on this config path; polling it");
            }
        }
        Some(watcher)
    }
}

/// Loads and validates; returns the config, the number of files, and the warnings — or every
/// diagnostic at Error severity. Severity means what it says (issue 12): every analyzer finding
/// at Error rejects the edit, whatever its code, and the last good config keeps serving; what
/// only runtime can settle (a host a workload may still register, a Consul service) the
/// analyzer reports as a Warning, which is logged and served.
fn validate(
    paths: &[PathBuf],
    root_namespace: &str,
) -> Result<(Config, usize, Vec<Diagnostic>), Vec<Diagnostic>> {
    let loaded = jalur_model::load_paths(paths);
    if loaded.has_errors() {
        return Err(loaded
            .diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .collect());
    }
    let findings = analyze::analyze_in(
        &loaded.config,
        &analyze::KnownServices::new(),
        root_namespace,
    );
    let (fatal, rest): (Vec<Diagnostic>, Vec<Diagnostic>) =
        findings.into_iter().partition(Diagnostic::is_error);
    if !fatal.is_empty() {
        return Err(fatal);
    }
    let warnings = rest
        .into_iter()
        .filter(|d| d.severity >= Severity::Warning)
        .collect();
    Ok((loaded.config, loaded.files.len(), warnings))
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out);
    }
    out.sort();
    out
}

fn walk(path: &PathBuf, out: &mut Fingerprint) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        out.push((path.clone(), meta.modified().ok(), 0));
        if let Ok(entries) = std::fs::read_dir(path) {
            // Hidden entries are not config (the loader skips them too); `.jalur/` holds the
            // controller's own state, which must not look like an edit.
            for e in entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            {
                walk(&e.path(), out);
            }
        }
    } else {
        out.push((path.clone(), meta.modified().ok(), meta.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Migration whose legacy side is reached without any proxy, and a STRICT policy in
    /// `istio-system`: mesh-wide only where `istio-system` is the root namespace.
    const STRICT_OVER_LEGACY: &str = "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {name: legacy, namespace: shop}\nspec:\n  addresses: [127.0.0.1:8500]\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: payments, namespace: shop}\nspec:\n  host: payments.service.consul\n  subsets:\n  - {name: legacy, labels: {jalur.dev/origin: consul}}\n  - {name: mesh, labels: {jalur.dev/origin: mesh}}\n---\n\
apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: payments, namespace: shop}\nspec:\n  legacy: {host: payments.service.consul, subset: legacy}\n  mesh: {host: payments.service.consul, subset: mesh}\n  stages: [{weight: 100}]\n---\n\
apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec:\n  mtls: {mode: STRICT}\n";

    fn rejects_strict(diagnostics: &[Diagnostic]) -> bool {
        diagnostics
            .iter()
            .any(|d| d.code == jalur_model::diag::codes::STRICT_WITH_PLAINTEXT_CALLERS.id)
    }

    /// The STRICT policy is an Error (legacy callers would be refused) only where
    /// `istio-system` is the root namespace, and an Error rejects the config.
    #[test]
    fn findings_read_mesh_wide_policies_in_the_planes_root_namespace() {
        let dir = tempfile::TempDir::new().expect("tmp");
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, STRICT_OVER_LEGACY).expect("write");
        let paths = vec![dir.path().to_path_buf()];
        let default_root = ConfigStore::open(paths.clone()).expect("valid");
        assert!(
            !rejects_strict(&default_root.status().warnings),
            "{:?}",
            default_root.status()
        );
        let refused = ConfigStore::open_in(paths.clone(), "istio-system")
            .err()
            .expect("STRICT over legacy callers is refused");
        assert!(rejects_strict(&refused.diagnostics), "{refused}");
        // A reload keeps judging in the same root namespace.
        let without_policy = STRICT_OVER_LEGACY
            .split("---\n")
            .filter(|doc| !doc.contains("PeerAuthentication"))
            .collect::<Vec<_>>()
            .join("---\n");
        std::fs::write(&file, without_policy).expect("write");
        let istio_root = ConfigStore::open_in(paths, "istio-system").expect("valid");
        std::fs::write(&file, STRICT_OVER_LEGACY).expect("write");
        assert!(!istio_root.reload());
        assert!(
            rejects_strict(&istio_root.status().last_rejection),
            "{:?}",
            istio_root.status()
        );
    }

    /// Severity means what it says: a finding at Error rejects the edit whatever its code
    /// (JAL0106, a route to a port the service does not have, used to be served anyway), and
    /// the config before it keeps serving.
    #[test]
    fn an_error_finding_rejects_the_edit_whatever_its_code() {
        let dir = tempfile::TempDir::new().expect("tmp");
        let config = |port: u32| {
            format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: pay, namespace: shop}}\nspec:\n  hosts: [pay.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports: [{{number: 9080, name: http, protocol: HTTP}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: pay, namespace: shop}}\nspec:\n  hosts: [pay.example.com]\n  http:\n  - route:\n    - destination: {{host: pay.example.com, port: {{number: {port}}}}}\n")
        };
        let file = dir.path().join("pay.yaml");
        std::fs::write(&file, config(9080)).expect("write");
        let store = ConfigStore::open(vec![dir.path().to_path_buf()]).expect("valid");
        let served = store.subscribe().borrow().clone();

        std::fs::write(&file, config(9090)).expect("write");
        assert!(!store.reload(), "an edit with an Error finding was applied");
        let status = store.status();
        assert_eq!(status.rejected, 1);
        let codes: Vec<&str> = status.last_rejection.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["JAL0106"], "{:?}", status.last_rejection);
        assert!(
            status.last_rejection[0].to_string().contains("pay.yaml:"),
            "names the file and line: {}",
            status.last_rejection[0]
        );
        assert_eq!(
            *store.subscribe().borrow(),
            served,
            "the previous config keeps serving"
        );

        // A Warning is served: a port the analyzer cannot judge is not an error.
        std::fs::write(&file, config(9080)).expect("write");
        store.reload();
        assert!(store.status().last_rejection.is_empty());
    }

    /// inotify wakes the watch: with a poll interval of an hour, an edit is still loaded
    /// within the deadline (a polling-only watch would not see it).
    #[tokio::test]
    async fn an_edit_is_loaded_as_it_is_written_not_at_the_next_poll() {
        let dir = tempfile::TempDir::new().expect("tmp");
        let vs = |name: &str| {
            format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [a.example.com]\n  http:\n  - directResponse: {{status: 200}}\n")
        };
        let file = dir.path().join("vs.yaml");
        std::fs::write(&file, vs("first")).expect("write");
        let store = ConfigStore::open(vec![dir.path().to_path_buf()]).expect("valid");
        let mut config = store.subscribe();
        config.borrow_and_update();
        tokio::spawn(
            store
                .clone()
                .watch(Duration::from_secs(3600), Duration::from_millis(20)),
        );
        let names = |c: &Config| -> Vec<String> {
            c.resources.iter().map(|r| r.meta.name.clone()).collect()
        };
        // The watch may not be registered the instant it is spawned: write until it is seen.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        loop {
            n += 1;
            std::fs::write(&file, vs(&format!("edit-{n}"))).expect("write");
            let seen = tokio::time::timeout(Duration::from_millis(500), config.changed()).await;
            if seen.is_ok() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no edit was loaded within 10 s with an hour's poll interval"
            );
        }
        assert!(
            names(&config.borrow_and_update())
                .iter()
                .any(|n| n.starts_with("edit-")),
            "{:?}",
            names(&config.borrow())
        );
        // A file renamed over the watched one (how editors and Kubernetes replace files).
        let tmp = dir.path().join(".vs.yaml.tmp");
        std::fs::write(&tmp, vs("renamed")).expect("write");
        std::fs::rename(&tmp, &file).expect("rename");
        tokio::time::timeout(Duration::from_secs(5), config.changed())
            .await
            .expect("a rename over the file is loaded")
            .expect("store alive");
        assert_eq!(names(&config.borrow()), ["renamed"]);
    }
}
