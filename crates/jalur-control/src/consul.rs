//! Consul as a live registry: every `ConsulRegistry` resource in config becomes a watcher that
//! follows Consul's catalog and health endpoints with blocking queries and turns instances into
//! workloads (`payments` -> `payments.service.consul`, plus aliases). Written against Consul's
//! documented HTTP API: `/v1/catalog/services`, `/v1/health/service/:name`, `index`/`wait`,
//! `X-Consul-Index` (reset to 0 when it goes backwards), `X-Consul-Token`.
//!
//! While Consul is unreachable the last known instances stay; `/debug/registry` and the
//! `jalur_consul_up` gauge say so.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod api;
mod export;
mod json;

pub use export::OWNER_TAG;

use api::Api;

use jalur_model::jalur::{ConsulRegistry, WarningPolicy};
use jalur_model::Config;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::registry::Registry;
use crate::workload::{Port, Protocol, Workload, WorkloadSet, ORIGIN_LABEL};

const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_SERVICE_PORT: u32 = 80;

type Labels = Vec<(String, String)>;

/// What `/debug/registry` shows per ConsulRegistry.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WatchStatus {
    pub registry: String,
    pub address: String,
    pub up: bool,
    pub last_error: Option<String>,
    pub last_success_unix: Option<u64>,
    pub services: usize,
    pub instances: usize,
}

/// All ConsulRegistry watchers, as one [`Registry`] named `consul`.
pub struct ConsulRegistries {
    tx: watch::Sender<WorkloadSet>,
    exporter: Mutex<Option<JoinHandle<()>>>,
    inner: Arc<Mutex<Inner>>,
    up: Family<Labels, Gauge>,
    errors: Family<Labels, Counter>,
    invalid: Family<Labels, Counter>,
}

#[derive(Default)]
struct Inner {
    watchers: HashMap<String, (ConsulRegistry, JoinHandle<()>)>,
    workloads: BTreeMap<String, BTreeMap<String, Vec<Workload>>>,
    status: BTreeMap<String, WatchStatus>,
    /// `registry|service` health loops that have not had their first answer yet.
    first_pending: std::collections::HashSet<String>,
}

impl ConsulRegistries {
    /// Starts following the ConsulRegistry resources of `config`, now and after every change,
    /// and registering the connected `gateways` their exports select once the plane is `warm`;
    /// `shutdown` removes every registration jalur owns.
    pub fn start(
        mut config: watch::Receiver<Arc<Config>>,
        gateways: watch::Receiver<Arc<Vec<crate::node::ClientInfo>>>,
        shutdown: watch::Receiver<bool>,
        warm: watch::Receiver<bool>,
    ) -> Arc<ConsulRegistries> {
        let (tx, _) = watch::channel(Arc::new(Vec::new()));
        let this = Arc::new(ConsulRegistries {
            tx,
            exporter: Mutex::new(None),
            inner: Arc::default(),
            up: Family::default(),
            errors: Family::default(),
            invalid: Family::default(),
        });
        let weak = Arc::downgrade(&this);
        let export_config = config.clone();
        tokio::spawn(async move {
            loop {
                let current = config.borrow_and_update().clone();
                match weak.upgrade() {
                    Some(me) => me.reconcile(&current),
                    None => return,
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        });
        let weak = Arc::downgrade(&this);
        let report = move |key: &str, base: &str, result: Result<(), String>| {
            if let Some(me) = weak.upgrade() {
                me.report(key, base, result);
            }
        };
        let task = tokio::spawn(export::run(export_config, gateways, shutdown, warm, report));
        *this.exporter.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        this
    }

    /// Waits (bounded) for the exporter to remove jalur's registrations after shutdown.
    pub async fn exports_stopped(&self, within: Duration) {
        let task = self
            .exporter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = task {
            let abort = t.abort_handle();
            if tokio::time::timeout(within, t).await.is_err() {
                abort.abort();
            }
        }
    }

    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "jalur_consul_up",
            "1 while the last Consul query of a ConsulRegistry succeeded",
            self.up.clone(),
        );
        registry.register(
            "jalur_consul_errors",
            "Failed Consul queries, by ConsulRegistry",
            self.errors.clone(),
        );
        registry.register(
            "jalur_consul_invalid_entries",
            "Consul health entries that could not be read and were skipped, by ConsulRegistry",
            self.invalid.clone(),
        );
    }

    pub fn status(&self) -> Vec<WatchStatus> {
        self.lock().status.values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts watchers for new or changed ConsulRegistry resources, stops removed ones.
    fn reconcile(self: &Arc<Self>, config: &Config) {
        let wanted: HashMap<String, ConsulRegistry> = config
            .consul_registries()
            .map(|(r, c)| (format!("{}/{}", r.meta.namespace, r.meta.name), c.clone()))
            .collect();
        let mut inner = self.lock();
        let stale: Vec<String> = inner
            .watchers
            .iter()
            .filter(|(k, (spec, _))| wanted.get(*k) != Some(spec))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some((_, task)) = inner.watchers.remove(&key) {
                task.abort();
            }
            inner.workloads.remove(&key);
            inner.status.remove(&key);
        }
        for (key, spec) in wanted {
            if inner.watchers.contains_key(&key) {
                continue;
            }
            tracing::info!(registry = %key, addresses = ?spec.addresses, "following Consul");
            let task =
                tokio::spawn(Watcher::new(Arc::downgrade(self), key.clone(), spec.clone()).run());
            inner.watchers.insert(key, (spec, task));
        }
        drop(inner);
        self.publish();
    }

    /// Every registry has answered its catalog at least once and every service it selected has
    /// had its first health answer: the instances known are what Consul says, not an empty
    /// start. Errors do not count (the warm-up waits at most a few seconds for answers).
    /// `expected` is the number of ConsulRegistry resources in the config (watchers start
    /// asynchronously).
    pub fn synced(&self, expected: usize) -> bool {
        let inner = self.lock();
        inner.watchers.len() >= expected
            && inner.first_pending.is_empty()
            && inner.watchers.keys().all(|k| {
                inner
                    .status
                    .get(k)
                    .is_some_and(|st| st.last_success_unix.is_some())
            })
    }

    fn first_answer(&self, registry: &str, service: &str) {
        self.lock()
            .first_pending
            .remove(&format!("{registry}|{service}"));
    }

    fn set_service(&self, registry: &str, service: &str, workloads: Vec<Workload>) {
        let mut inner = self.lock();
        let services = inner.workloads.entry(registry.to_string()).or_default();
        if workloads.is_empty() {
            services.remove(service);
        } else {
            services.insert(service.to_string(), workloads);
        }
        let (count, instances) = (services.len(), services.values().map(Vec::len).sum());
        let st = inner.status.entry(registry.to_string()).or_default();
        st.services = count;
        st.instances = instances;
        drop(inner);
        self.publish();
    }

    /// Drops the services of one datacenter (keys ending in `suffix`) that are not in `keep`.
    fn retain_services(&self, registry: &str, suffix: &str, keep: &[String]) {
        let mut inner = self.lock();
        if let Some(services) = inner.workloads.get_mut(registry) {
            services.retain(|key, _| !key.ends_with(suffix) || keep.contains(key));
        }
        drop(inner);
        self.publish();
    }

    fn report(&self, registry: &str, address: &str, result: Result<(), String>) {
        let labels = vec![("registry".to_string(), registry.to_string())];
        let mut inner = self.lock();
        let st = inner.status.entry(registry.to_string()).or_default();
        st.registry = registry.to_string();
        st.address = address.to_string();
        match result {
            Ok(()) => {
                st.up = true;
                st.last_error = None;
                st.last_success_unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
                self.up.get_or_create(&labels).set(1);
            }
            Err(e) => {
                if st.up || st.last_error.is_none() {
                    tracing::warn!(registry, address, error = %e, "Consul unreachable; keeping the last known instances");
                }
                st.up = false;
                st.last_error = Some(e);
                self.up.get_or_create(&labels).set(0);
                self.errors.get_or_create(&labels).inc();
            }
        }
    }

    fn publish(&self) {
        let set: Vec<Workload> = self
            .lock()
            .workloads
            .values()
            .flat_map(|s| s.values().flatten().cloned())
            .collect();
        // Only a real change: every send makes the plane rebuild and bump the generation.
        self.tx.send_if_modified(|current| {
            let changed = **current != set;
            if changed {
                *current = Arc::new(set);
            }
            changed
        });
    }
}

impl Registry for ConsulRegistries {
    fn name(&self) -> &str {
        "consul"
    }

    fn watch(&self) -> watch::Receiver<WorkloadSet> {
        self.tx.subscribe()
    }
}

/// One ConsulRegistry: a catalog loop that starts and stops one health loop per service.
struct Watcher {
    parent: std::sync::Weak<ConsulRegistries>,
    key: String,
    spec: ConsulRegistry,
    api: Api,
}

impl Watcher {
    fn new(
        parent: std::sync::Weak<ConsulRegistries>,
        key: String,
        spec: ConsulRegistry,
    ) -> Arc<Watcher> {
        let api = Api::new(&spec);
        Arc::new(Watcher {
            parent,
            key,
            spec,
            api,
        })
    }

    fn base(&self) -> String {
        self.api.base()
    }

    fn wait(&self) -> Duration {
        self.spec.wait.map(|d| d.as_std()).unwrap_or(DEFAULT_WAIT)
    }

    /// One catalog loop per datacenter (the agent's own when none is listed).
    async fn run(self: Arc<Self>) {
        let dcs: Vec<Option<String>> = if self.spec.datacenters.is_empty() {
            vec![None]
        } else {
            self.spec.datacenters.iter().cloned().map(Some).collect()
        };
        let loops = Tasks(
            dcs.into_iter()
                .map(|dc| tokio::spawn(self.clone().run_dc(dc)))
                .collect(),
        );
        std::future::pending::<()>().await;
        drop(loops);
    }

    /// Follows one datacenter's catalog and starts/stops one health loop per selected service.
    async fn run_dc(self: Arc<Self>, dc: Option<String>) {
        let mut index = 0u64;
        // Dropped (aborting every health loop) when this loop is aborted: a reconfigured or
        // removed registry leaves nothing running behind.
        let mut health: HashMap<String, AbortOnDrop> = HashMap::new();
        let mut failures = 0u32;
        let suffix = dc_suffix(dc.as_deref());
        loop {
            let query = format!(
                "/v1/catalog/services?index={index}&wait={}s{}",
                self.wait().as_secs(),
                dc_param(dc.as_deref())
            );
            match self.get(&query).await {
                Ok((body, new_index)) => {
                    let names = match json::catalog(body) {
                        Ok(catalog) => self.selected(catalog),
                        Err(e) => {
                            self.report(Err(e.to_string()));
                            failures += 1;
                            tokio::time::sleep(backoff(failures)).await;
                            continue;
                        }
                    };
                    failures = 0;
                    index = next_index(index, new_index);
                    health.retain(|name, _| names.contains(name));
                    if let Some(p) = self.parent.upgrade() {
                        let keys: Vec<String> =
                            names.iter().map(|n| format!("{n}{suffix}")).collect();
                        p.retain_services(&self.key, &suffix, &keys);
                    }
                    for name in names {
                        health.entry(name.clone()).or_insert_with(|| {
                            if let Some(p) = self.parent.upgrade() {
                                let pending = format!("{}|{name}{suffix}", self.key);
                                p.lock().first_pending.insert(pending);
                            }
                            let me = self.clone();
                            let dc = dc.clone();
                            AbortOnDrop(tokio::spawn(async move { me.follow(name, dc).await }))
                        });
                    }
                    // After the health loops are pending, so `synced` never sees a gap.
                    self.report(Ok(()));
                }
                Err(e) => {
                    self.report(Err(e));
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    /// Follows one service's health in one datacenter.
    async fn follow(self: Arc<Self>, name: String, dc: Option<String>) {
        let mut index = 0u64;
        let mut failures = 0u32;
        let key = format!("{name}{}", dc_suffix(dc.as_deref()));
        loop {
            let query = format!(
                "/v1/health/service/{name}?index={index}&wait={}s{}",
                self.wait().as_secs(),
                dc_param(dc.as_deref())
            );
            match self.get(&query).await {
                Ok((body, new_index)) => {
                    let entries = match json::health(&name, body) {
                        Ok((entries, invalid)) => {
                            self.invalid(&invalid);
                            entries
                        }
                        Err(e) => {
                            self.report(Err(e.to_string()));
                            failures += 1;
                            tokio::time::sleep(backoff(failures)).await;
                            continue;
                        }
                    };
                    failures = 0;
                    index = next_index(index, new_index);
                    let workloads = self.workloads(&name, &entries, dc.as_deref());
                    if let Some(p) = self.parent.upgrade() {
                        p.set_service(&self.key, &key, workloads);
                        p.first_answer(&self.key, &key);
                    }
                }
                Err(e) => {
                    // Still pending: an error is not an answer (the warm-up's bound applies).
                    self.report(Err(e));
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }

    fn report(&self, result: Result<(), String>) {
        if let Some(p) = self.parent.upgrade() {
            p.report(&self.key, &self.base(), result);
        }
    }

    /// A blocking GET: the JSON body and `X-Consul-Index`.
    async fn get(&self, path_and_query: &str) -> Result<(Value, u64), String> {
        // Consul may add up to wait/16 of jitter; allow for it and the network.
        let timeout = self.wait() + self.wait() / 16 + Duration::from_secs(5);
        self.api
            .call_within(http::Method::GET, path_and_query, None, timeout)
            .await
    }

    /// Logs and counts health entries that could not be read (they are left out).
    fn invalid(&self, errors: &[json::JsonError]) {
        let Some(p) = self.parent.upgrade() else {
            return;
        };
        for error in errors {
            tracing::warn!(registry = %self.key, %error, "Consul health entry skipped");
            let labels = vec![("registry".to_string(), self.key.clone())];
            p.invalid.get_or_create(&labels).inc();
        }
    }

    /// Service names from `/v1/catalog/services` that the spec selects.
    fn selected(&self, catalog: json::Catalog) -> Vec<String> {
        let sel = self.spec.services.clone().unwrap_or_default();
        // A BTreeMap: the names come out sorted.
        catalog
            .into_iter()
            .filter(|(name, _)| name.as_str() != "consul")
            .filter(|(name, tags)| {
                let by_name = sel.names.is_empty() || sel.names.iter().any(|n| n == name);
                let tags = tags.as_deref().unwrap_or_default();
                let by_tag = sel.tags.is_empty() || sel.tags.iter().any(|t| tags.contains(t));
                by_name && by_tag
            })
            .map(|(name, _)| name)
            .collect()
    }

    /// Health entries -> workloads for `name.service.consul` and its aliases.
    fn workloads(
        &self,
        name: &str,
        health: &[json::HealthEntry],
        dc: Option<&str>,
    ) -> Vec<Workload> {
        let include_warning = self.spec.warning == Some(WarningPolicy::Include);
        let service_port = self.spec.service_port.unwrap_or(DEFAULT_SERVICE_PORT);
        let mut hosts = vec![format!("{name}.service.consul")];
        hosts.extend(self.spec.aliases.get(name).cloned().unwrap_or_default());
        let mut out = Vec::new();
        for entry in health {
            // json::health keeps only entries with an address.
            let Some(address) = entry.address() else {
                continue;
            };
            let svc = &entry.service;
            let statuses: Vec<&str> = entry.checks.iter().map(|c| c.status.as_str()).collect();
            let critical = statuses.contains(&"critical") || statuses.contains(&"maintenance");
            let warning = statuses.contains(&"warning");
            let healthy = !critical && (!warning || include_warning);
            let weight = svc
                .weights
                .map(|w| if warning { w.warning } else { w.passing })
                .unwrap_or(1)
                .max(1);
            let mut labels = BTreeMap::from([(ORIGIN_LABEL.to_string(), "consul".to_string())]);
            for tag in &svc.tags {
                if let Some((k, v)) = tag.split_once('=').or_else(|| tag.split_once(':')) {
                    labels.insert(k.to_string(), v.to_string());
                }
            }
            labels.extend(svc.meta.clone());
            let protocol = match labels.get("protocol") {
                Some(p) => Protocol::parse(Some(p), None),
                None => Protocol::Http,
            };
            let datacenter = Some(entry.node.datacenter.as_str())
                .filter(|d| !d.is_empty())
                .or(dc)
                .unwrap_or("")
                .to_string();
            let id = if svc.id.is_empty() { name } else { &svc.id };
            for host in &hosts {
                out.push(Workload {
                    host: host.clone(),
                    namespace: "consul".into(),
                    name: id.to_string(),
                    address: address.to_string(),
                    ports: vec![Port {
                        number: service_port,
                        name: "http".into(),
                        protocol,
                    }],
                    target_port: Some(u32::from(svc.port)),
                    labels: labels.clone(),
                    weight,
                    locality: datacenter.clone(),
                    healthy,
                    source: format!("consul:{}", self.key),
                    service_account: None,
                });
            }
        }
        out
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Aborts every task when dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How a service's key in the workload map names its datacenter.
fn dc_suffix(dc: Option<&str>) -> String {
    format!("@{}", dc.unwrap_or("local"))
}

fn dc_param(dc: Option<&str>) -> String {
    dc.map(|d| format!("&dc={d}")).unwrap_or_default()
}

/// Consul's rule: a new index lower than the last one (a snapshot restore, a leader change with
/// an older raft log) means start over from 0; an index of 0 is treated as 1 so queries block.
fn next_index(previous: u64, new: u64) -> u64 {
    if new < previous {
        0
    } else {
        new.max(1)
    }
}

/// Exponential backoff with jitter: 200 ms doubling up to 10 s, each wait drawn uniformly from
/// the upper half, so the watchers of one registry do not hammer a recovering Consul together.
/// The only backoff in this crate, so it stays a function here rather than a dependency.
fn backoff(failures: u32) -> Duration {
    let cap = Duration::from_millis(200)
        .saturating_mul(1u32 << failures.min(6))
        .min(Duration::from_secs(10));
    cap.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A one-shot read of what Consul holds, for `jalur analyze --consul ADDR`: every service with
/// its tags and how many of its instances pass all their checks.
pub async fn fetch_view(
    address: &str,
    token: Option<String>,
) -> Result<jalur_model::analyze::hybrid::ConsulView, String> {
    use jalur_model::analyze::hybrid::{ConsulService, ConsulView};
    let spec = ConsulRegistry {
        addresses: vec![address.to_string()],
        ..ConsulRegistry::default()
    };
    let mut api = Api::new(&spec);
    api.token = token;
    let (catalog, _) = api
        .call(http::Method::GET, "/v1/catalog/services", None)
        .await?;
    let catalog = json::catalog(catalog).map_err(|e| e.to_string())?;
    let mut view = ConsulView::default();
    for (name, tags) in catalog {
        if name == "consul" {
            continue;
        }
        let (health, _) = api
            .call(
                http::Method::GET,
                &format!("/v1/health/service/{name}"),
                None,
            )
            .await?;
        // An offline check reports what it cannot read rather than guessing around it.
        let (entries, invalid) = json::health(&name, health).map_err(|e| e.to_string())?;
        if let Some(e) = invalid.first() {
            return Err(e.to_string());
        }
        let passing = entries
            .iter()
            .filter(|e| e.checks.iter().all(|c| c.status == "passing"))
            .count();
        view.services.insert(
            name,
            ConsulService {
                tags: tags.unwrap_or_default(),
                passing,
                total: entries.len(),
            },
        );
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_going_backwards_restarts_from_zero() {
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(12, 3), 0);
        assert_eq!(next_index(0, 0), 1);
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        for f in 0..20 {
            let b = backoff(f);
            assert!(
                b <= Duration::from_secs(10) && b >= Duration::from_millis(100),
                "{b:?}"
            );
        }
    }
}
