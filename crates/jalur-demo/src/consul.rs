//! A Consul protocol double: an in-process HTTP server that answers the parts of Consul's
//! documented HTTP API that jalur uses, so tests can run without a Consul server (none can be
//! installed on these machines). It is a double, not Consul: production code is written against
//! the real API and must also work against a real agent; the double follows the documented
//! shapes and semantics closely so that code written that way passes here too.
//!
//! What it serves (on 127.0.0.1, HTTP/1.1):
//! - `GET /v1/catalog/services` (name -> tags), `GET /v1/catalog/service/:name` and
//!   `GET /v1/health/service/:name` (`passing`, repeated `tag`, `dc`), all three as blocking
//!   queries: `index` and `wait` (default 5m, at most 10m, plus up to wait/16 of jitter, as
//!   Consul does), answered with `X-Consul-Index`, `X-Consul-KnownLeader`,
//!   `X-Consul-LastContact`. An unknown `dc` answers 500 `No path to datacenter`.
//! - `PUT /v1/agent/service/register` (Name, ID, Tags, Address, Port, Meta, Weights,
//!   EnableTagOverride, Check/Checks with HTTP, TCP or TTL checks, Interval, Timeout, Status,
//!   DeregisterCriticalServiceAfter; `?replace-existing-checks`), `PUT
//!   /v1/agent/service/deregister/:id`, `GET /v1/agent/services`, `GET /v1/agent/checks`,
//!   `PUT /v1/agent/check/{pass,warn,fail}/:check_id` (`?note=`) and
//!   `PUT /v1/agent/check/update/:check_id`.
//! - `GET /v1/status/leader` and `/v1/status/peers` (no token needed, as in Consul).
//!
//! How it behaves like Consul:
//! - One raft-like index moves on every write; each query answers with the index of what it
//!   reads (a service's own index for `/health/service/NAME` and `/catalog/service/NAME`, the
//!   services table's for `/catalog/services`), never 0. A blocking query returns when that
//!   index moves past `index`, or when `wait` elapses (with the same index), or at once after
//!   [`ConsulDouble::reset_index`] (the index going backwards, as after a snapshot restore).
//! - Checks start `critical` unless the registration gives `Status`. The double itself polls
//!   HTTP checks every Interval (2xx passing, 429 warning, anything else critical) and TCP
//!   checks (connect = passing); TTL checks go critical when not updated within their TTL;
//!   an instance critical for longer than `DeregisterCriticalServiceAfter` is removed by a
//!   reaper. Consul's floors (1 s check interval, 1 min DeregisterCriticalServiceAfter, reaper
//!   every 30 s) are the defaults; [`ConsulOpts::fast_checks`] lowers them for tests.
//! - Every node carries Consul's `serfHealth` check, and `?passing` keeps only entries whose
//!   checks are all passing (so `warning` is filtered out too). The `consul` service itself is
//!   listed, as a real catalog lists it.
//! - With an ACL token configured, a request without a token gets 403 `Permission denied…` and
//!   one with another token gets 403 `ACL not found`; the token is read from `X-Consul-Token`,
//!   `Authorization: Bearer` or `?token=`. (A real Consul with `default_policy = deny` may
//!   instead filter reads made with the anonymous token to an empty answer; code must not rely
//!   on getting a 403 there.)
//!
//! What it does not do: `?filter` and `?node-meta` (answered 400, so a test notices), script,
//! gRPC and alias checks (400 on registration), namespaces, prepared queries, KV, Connect.
//!
//! ```no_run
//! use jalur_demo::consul::{ConsulDouble, Instance, Status};
//! # async fn example() {
//! let consul = ConsulDouble::start().await;
//! consul.register(Instance::new("payments", "payments-1", "127.0.0.1", 8080).tag("version=v2"));
//! consul.set_status("payments-1", Status::Critical);
//! // point the code under test at consul.url(), e.g. http://127.0.0.1:41234
//! # }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod api;
mod checks;
mod shared;
mod state;

use shared::Shared;

/// How a [`ConsulDouble`] is set up. `Default` follows a real Consul agent.
#[derive(Clone, Debug)]
pub struct ConsulOpts {
    /// The datacenter the double answers for; `?dc=` naming another one gets 500.
    pub datacenter: String,
    /// When set, every API call but `/v1/status/*` must carry this token.
    pub acl_token: Option<String>,
    /// The agent's node name: services registered over the agent API live on it.
    pub node_name: String,
    /// Longest a blocking query may wait (Consul caps `wait` at 10 minutes); lower it so a
    /// client asking for the default 5 minutes does not hold a test.
    pub max_wait: Duration,
    /// Add up to wait/16 to a blocking query's wait, as Consul does.
    pub wait_jitter: bool,
    /// Shortest check Interval; shorter ones are raised to it (Consul: 1 s).
    pub min_check_interval: Duration,
    /// Shortest DeregisterCriticalServiceAfter; shorter ones are raised to it (Consul: 1 min).
    pub min_deregister_critical_after: Duration,
    /// How often critical services are reaped (Consul: every 30 s).
    pub reap_interval: Duration,
    /// List the `consul` service (the servers) in the catalog, as a real Consul does.
    pub consul_service: bool,
}

impl Default for ConsulOpts {
    fn default() -> ConsulOpts {
        ConsulOpts {
            datacenter: "dc1".to_string(),
            acl_token: None,
            node_name: "consul-double".to_string(),
            max_wait: Duration::from_secs(600),
            wait_jitter: true,
            min_check_interval: Duration::from_secs(1),
            min_deregister_critical_after: Duration::from_secs(60),
            reap_interval: Duration::from_secs(30),
            consul_service: true,
        }
    }
}

impl ConsulOpts {
    /// Requires `token` on every API call.
    pub fn acl_token(mut self, token: &str) -> ConsulOpts {
        self.acl_token = Some(token.to_string());
        self
    }

    pub fn datacenter(mut self, datacenter: &str) -> ConsulOpts {
        self.datacenter = datacenter.to_string();
        self
    }

    /// Caps every blocking query's wait at `max_wait`.
    pub fn max_wait(mut self, max_wait: Duration) -> ConsulOpts {
        self.max_wait = max_wait;
        self
    }

    /// Test timings instead of Consul's floors: intervals down to 10 ms,
    /// DeregisterCriticalServiceAfter taken as given, the reaper every 50 ms.
    pub fn fast_checks(mut self) -> ConsulOpts {
        self.min_check_interval = Duration::from_millis(10);
        self.min_deregister_critical_after = Duration::ZERO;
        self.reap_interval = Duration::from_millis(50);
        self
    }
}

/// A check's (or an instance's aggregated) health, as Consul spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// Consul's service `Weights`: the DNS SRV / load-balancing weight while passing or warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    /// Consul's default: 1 and 1.
    fn default() -> Weights {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One service instance, as a test registers it with [`ConsulDouble::register`] and reads it
/// back with [`ConsulDouble::instances`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The service ID (unique in the double).
    pub id: String,
    /// The service name.
    pub name: String,
    pub tags: Vec<String>,
    /// The service address; empty means "use the node's address", as in Consul.
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    /// The node it runs on; `None` registers it on the double's own agent node. Read back:
    /// always the node's name.
    pub node: Option<String>,
    /// The node's address (ignored for the agent's own node, which is 127.0.0.1).
    pub node_address: String,
    /// Registering: `Some` gives the instance one check `service:<id>` in that state, `None`
    /// gives it no check (Consul then counts it as passing). Read back: the aggregated status
    /// of all its checks, node checks included.
    pub status: Option<Status>,
}

impl Instance {
    /// Instance `id` of service `name` at `address:port` on the agent's node, no tags, no meta,
    /// default weights, no check.
    pub fn new(name: &str, id: &str, address: &str, port: u16) -> Instance {
        Instance {
            id: id.to_string(),
            name: name.to_string(),
            tags: Vec::new(),
            address: address.to_string(),
            port,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            node: None,
            node_address: "127.0.0.1".to_string(),
            status: None,
        }
    }

    pub fn tag(mut self, tag: &str) -> Instance {
        self.tags.push(tag.to_string());
        self
    }

    pub fn meta(mut self, key: &str, value: &str) -> Instance {
        self.meta.insert(key.to_string(), value.to_string());
        self
    }

    pub fn weights(mut self, passing: u32, warning: u32) -> Instance {
        self.weights = Weights { passing, warning };
        self
    }

    /// Runs on node `node` at `address` (another agent's node).
    pub fn on_node(mut self, node: &str, address: &str) -> Instance {
        self.node = Some(node.to_string());
        self.node_address = address.to_string();
        self
    }

    /// Gives the instance a check `service:<id>` in state `status`.
    pub fn status(mut self, status: Status) -> Instance {
        self.status = Some(status);
        self
    }
}

/// One request the double received, for assertions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string (without `?`), empty when there was none.
    pub query: String,
    /// The ACL token the request carried (header, bearer or `?token=`).
    pub token: Option<String>,
    /// The status answered; `None` while the request is still running (a blocking query),
    /// or when the client gave up or the connection was cut before the answer.
    pub status: Option<u16>,
}

impl RecordedRequest {
    /// The first value of query parameter `name`, percent-decoded; `Some("")` for a bare
    /// `?name`.
    pub fn param(&self, name: &str) -> Option<String> {
        api::parse_query(&self.query)
            .into_iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

/// A running Consul protocol double on 127.0.0.1; stops when dropped.
pub struct ConsulDouble {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Mutex<Option<JoinHandle<()>>>,
    reaper: JoinHandle<()>,
}

impl ConsulDouble {
    /// Starts a double with Consul's defaults (datacenter `dc1`, no ACLs).
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken test machine).
    pub async fn start() -> ConsulDouble {
        Self::start_with(ConsulOpts::default()).await
    }

    /// Starts a double set up by `opts`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start_with(opts: ConsulOpts) -> ConsulDouble {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap_or_else(|err| panic!("Consul double: cannot bind 127.0.0.1:0: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("Consul double: no local address: {err}"));
        let shared = Shared::new(opts);
        let accept = tokio::spawn(api::accept_loop(listener, shared.clone()));
        let reaper = tokio::spawn(shared::reap_loop(Arc::downgrade(&shared)));
        ConsulDouble {
            addr,
            shared,
            accept: Mutex::new(Some(accept)),
            reaper,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the address to give a Consul client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn datacenter(&self) -> &str {
        &self.shared.opts.datacenter
    }

    /// Registers (or replaces, by ID) an instance, as another agent's anti-entropy would:
    /// the index moves unless nothing changed. The instance's checks become exactly the one
    /// [`Instance::status`] describes (or none), replacing any it was registered with.
    pub fn register(&self, instance: Instance) {
        self.shared.register_instance(instance);
    }

    /// Removes the instance with service ID `id` and its checks; false when there was none.
    pub fn deregister(&self, id: &str) -> bool {
        self.shared.deregister(id)
    }

    /// Sets every check of instance `id` to `status` (giving it a check `service:<id>` when it
    /// has none); false when there is no such instance. A check the double polls (HTTP, TCP)
    /// or times (TTL) sets its own status again on its next run.
    pub fn set_status(&self, id: &str, status: Status) -> bool {
        self.shared.set_service_status(id, status)
    }

    /// Sets node `node`'s `serfHealth` check (the node failing takes all its instances out
    /// of `?passing` answers); false when there is no such node.
    pub fn set_node_status(&self, node: &str, status: Status) -> bool {
        self.shared.set_node_status(node, status)
    }

    /// The aggregated status of instance `id` (its checks and its node's), if it exists.
    pub fn status(&self, id: &str) -> Option<Status> {
        self.shared.state().aggregate_status(id)
    }

    /// The status of check `check_id` (e.g. `service:payments-1`), if it exists.
    pub fn check_status(&self, check_id: &str) -> Option<Status> {
        self.shared.state().check_status(check_id)
    }

    /// The instances of service `name`, sorted by node then ID.
    pub fn instances(&self, name: &str) -> Vec<Instance> {
        self.shared.state().instances(name)
    }

    /// The current raft-like index.
    pub fn index(&self) -> u64 {
        self.shared.state().index()
    }

    /// Makes the index go backwards, as after a Consul snapshot restore: every index drops to
    /// 1 and blocking queries in flight return at once with it. A client that keeps blocking
    /// on its old (higher) index then misses changes until the index passes it again; Consul's
    /// documentation tells clients to restart from 0. Returns the new index.
    pub fn reset_index(&self) -> u64 {
        self.shared.reset_index()
    }

    /// Makes Consul unreachable: the listener is closed (new connections are refused) and open
    /// connections, blocking queries included, are cut. State and checks keep running.
    pub async fn pause(&self) {
        let accept = lock(&self.accept).take();
        if let Some(accept) = accept {
            accept.abort();
            // Awaiting the aborted task guarantees the listener is closed on return.
            let _ = accept.await;
        }
    }

    /// Listens again on the same port after [`ConsulDouble::pause`]; a no-op when running.
    ///
    /// # Panics
    /// When the port cannot be bound again (something else took it meanwhile).
    pub async fn resume(&self) {
        if !self.is_paused() {
            return;
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .unwrap_or_else(|err| panic!("Consul double: cannot rebind {}: {err}", self.addr));
        let accept = tokio::spawn(api::accept_loop(listener, self.shared.clone()));
        *lock(&self.accept) = Some(accept);
    }

    pub fn is_paused(&self) -> bool {
        lock(&self.accept).is_none()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.shared.clear_requests();
    }
}

impl Drop for ConsulDouble {
    fn drop(&mut self) {
        // Connection tasks live in the accept task's JoinSet, so they end with it.
        if let Some(accept) = lock(&self.accept).take() {
            accept.abort();
        }
        self.reaper.abort();
        self.shared.stop_runners();
    }
}

/// Locks `mutex`, going on when a panicking holder poisoned it: every critical section in
/// the double leaves its data whole.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
