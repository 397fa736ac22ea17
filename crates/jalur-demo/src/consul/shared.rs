//! What the double's HTTP server, its check runners and the test controls share: the catalog
//! behind a lock, the change notifications blocking queries wait on, the recorded requests, and
//! the tasks that run each check (started and stopped as registrations come and go).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::checks::{self, CheckDef, CheckKind};
use super::state::{Registration, ServiceDef, State, TtlError};
use super::{lock, ConsulOpts, Instance, RecordedRequest, Status};

/// What the server, the check runners and the test controls share.
pub(super) struct Shared {
    pub(super) opts: ConsulOpts,
    state: Mutex<State>,
    changes: watch::Sender<u64>,
    requests: Mutex<Vec<(u64, RecordedRequest)>>,
    request_seq: AtomicU64,
    runners: Mutex<HashMap<String, JoinHandle<()>>>,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    /// # Panics
    /// Outside a Tokio runtime.
    pub(super) fn new(opts: ConsulOpts) -> Arc<Shared> {
        let state = State::new(&opts);
        let (changes, _) = watch::channel(0);
        Arc::new(Shared {
            opts,
            state: Mutex::new(state),
            changes,
            requests: Mutex::new(Vec::new()),
            request_seq: AtomicU64::new(0),
            runners: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A receiver that sees every change (and index reset) made after this call.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn notify(&self) {
        self.changes.send_modify(|generation| {
            *generation = generation.wrapping_add(1);
        });
    }

    pub(super) fn record_request(&self, request: RecordedRequest) -> u64 {
        let seq = self.request_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.requests).push((seq, request));
        seq
    }

    pub(super) fn record_status(&self, seq: u64, status: u16) {
        let mut requests = lock(&self.requests);
        if let Some((_, request)) = requests.iter_mut().rev().find(|(s, _)| *s == seq) {
            request.status = Some(status);
        }
    }

    pub(super) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests)
            .iter()
            .map(|(_, request)| request.clone())
            .collect()
    }

    pub(super) fn clear_requests(&self) {
        lock(&self.requests).clear();
    }

    pub(super) fn register(self: &Arc<Self>, registration: Registration) {
        let outcome = self.state().apply(registration, Instant::now());
        let mut runners = lock(&self.runners);
        for id in &outcome.stop {
            if let Some(runner) = runners.remove(id) {
                runner.abort();
            }
        }
        for (id, kind) in outcome.start {
            let runner = self
                .runtime
                .spawn(run_check(Arc::downgrade(self), id.clone(), kind));
            if let Some(previous) = runners.insert(id, runner) {
                previous.abort();
            }
        }
        drop(runners);
        if outcome.changed {
            self.notify();
        }
    }

    pub(super) fn register_instance(self: &Arc<Self>, instance: Instance) {
        let node = instance
            .node
            .clone()
            .unwrap_or_else(|| self.opts.node_name.clone());
        let node_address = if node == self.opts.node_name {
            None
        } else {
            Some(instance.node_address.clone())
        };
        let checks = instance
            .status
            .map(|status| CheckDef {
                id: format!("service:{}", instance.id),
                name: format!("Service '{}' check", instance.name),
                notes: String::new(),
                kind: CheckKind::Static,
                initial: Some(status),
                deregister_after: None,
            })
            .into_iter()
            .collect();
        self.register(Registration {
            service: ServiceDef {
                id: instance.id,
                name: instance.name,
                tags: instance.tags,
                address: instance.address,
                port: instance.port,
                meta: instance.meta,
                weights: instance.weights,
                enable_tag_override: false,
                node,
            },
            node_address,
            checks,
            replace_existing_checks: true,
        });
    }

    pub(super) fn deregister(&self, id: &str) -> bool {
        let removed = self.state().remove_service(id);
        let Some(removed) = removed else {
            return false;
        };
        let mut runners = lock(&self.runners);
        for check_id in removed {
            if let Some(runner) = runners.remove(&check_id) {
                runner.abort();
            }
        }
        drop(runners);
        self.notify();
        true
    }

    /// Sets a check from a runner; `None` when the check is gone.
    pub(super) fn update_check(&self, id: &str, status: Status, output: String) -> Option<()> {
        let changed = self
            .state()
            .set_check(id, status, Some(output), Instant::now())?;
        if changed {
            self.notify();
        }
        Some(())
    }

    pub(super) fn update_ttl(
        &self,
        id: &str,
        status: Status,
        output: String,
    ) -> Result<(), TtlError> {
        let changed = self
            .state()
            .update_ttl(id, status, output, Instant::now())?;
        if changed {
            self.notify();
        }
        Ok(())
    }

    pub(super) fn expire_ttl(&self, id: &str) {
        if self.state().expire_ttl(id, Instant::now()) {
            self.notify();
        }
    }

    pub(super) fn set_service_status(&self, id: &str, status: Status) -> bool {
        let changed = self.state().set_service_status(id, status, Instant::now());
        match changed {
            None => false,
            Some(changed) => {
                if changed {
                    self.notify();
                }
                true
            }
        }
    }

    pub(super) fn set_node_status(&self, node: &str, status: Status) -> bool {
        let changed = self.state().set_node_status(node, status);
        match changed {
            None => false,
            Some(changed) => {
                if changed {
                    self.notify();
                }
                true
            }
        }
    }

    pub(super) fn reset_index(&self) -> u64 {
        let index = self.state().reset_index();
        self.notify();
        index
    }

    /// Removes the services critical for longer than their DeregisterCriticalServiceAfter.
    pub(super) fn reap(&self) {
        let ids = self.state().reapable(Instant::now());
        for id in ids {
            tracing::debug!(%id, "Consul double: deregistering a service critical for too long");
            self.deregister(&id);
        }
    }

    pub(super) fn stop_runners(&self) {
        for (_, runner) in lock(&self.runners).drain() {
            runner.abort();
        }
    }
}

/// Runs one check until it is removed or the double stops: polls HTTP and TCP checks every
/// interval (the first run staggered at random within it, as Consul does) and expires TTL
/// checks.
pub(super) async fn run_check(shared: Weak<Shared>, id: String, kind: CheckKind) {
    let interval = match &kind {
        CheckKind::Static => return,
        CheckKind::Ttl { ttl } => return run_ttl(shared, id, *ttl).await,
        CheckKind::Http { interval, .. } | CheckKind::Tcp { interval, .. } => *interval,
    };
    tokio::time::sleep(checks::random_below(interval)).await;
    loop {
        let (status, output) = match &kind {
            CheckKind::Http {
                url,
                method,
                headers,
                body,
                timeout,
                ..
            } => checks::probe_http(url, method, headers, body, *timeout).await,
            CheckKind::Tcp { addr, timeout, .. } => checks::probe_tcp(addr, *timeout).await,
            CheckKind::Static | CheckKind::Ttl { .. } => return,
        };
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.update_check(&id, status, output).is_none() {
            return;
        }
        drop(strong);
        tokio::time::sleep(interval).await;
    }
}

async fn run_ttl(shared: Weak<Shared>, id: String, ttl: Duration) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let Some(deadline) = strong.state().ttl_deadline(&id) else {
            return;
        };
        match deadline {
            Some(deadline) if deadline <= Instant::now() => strong.expire_ttl(&id),
            Some(deadline) => {
                drop(strong);
                tokio::time::sleep_until(deadline).await;
            }
            // Expired: wait for an update to set a new deadline.
            None => {
                drop(strong);
                tokio::time::sleep(ttl.min(Duration::from_millis(20))).await;
            }
        }
    }
}

/// Every reap interval, removes the services critical for longer than their
/// DeregisterCriticalServiceAfter.
pub(super) async fn reap_loop(shared: Weak<Shared>) {
    loop {
        let Some(interval) = shared.upgrade().map(|strong| strong.opts.reap_interval) else {
            return;
        };
        tokio::time::sleep(interval.max(Duration::from_millis(1))).await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        strong.reap();
    }
}
