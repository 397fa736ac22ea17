//! The double's catalog: nodes, services, checks and the raft-like indexes, with the JSON
//! renderings Consul's endpoints answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::checks::{CheckDef, CheckKind};
use super::{ConsulOpts, Instance, Status, Weights};

/// The address the double claims for its (only) server, as `/v1/status/leader` answers.
pub(super) const SERVER_ADDR: &str = "127.0.0.1:8300";

/// A service as registered: what the catalog stores for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServiceDef {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub node: String,
}

/// One registration: a service, where its node is, and its checks.
#[derive(Clone, Debug)]
pub(super) struct Registration {
    pub service: ServiceDef,
    /// The node's address; `None` keeps the node's current one (127.0.0.1 when new).
    pub node_address: Option<String>,
    pub checks: Vec<CheckDef>,
    /// Remove the service's checks that this registration does not name.
    pub replace_existing_checks: bool,
}

struct NodeRecord {
    id: String,
    address: String,
    /// The node's `serfHealth` check.
    serf: Status,
    create_index: u64,
    modify_index: u64,
}

struct ServiceRecord {
    def: ServiceDef,
    create_index: u64,
    modify_index: u64,
}

struct CheckRecord {
    def: CheckDef,
    node: String,
    service_id: String,
    service_name: String,
    status: Status,
    output: String,
    critical_since: Option<Instant>,
    ttl_deadline: Option<Instant>,
    create_index: u64,
    modify_index: u64,
}

impl CheckRecord {
    fn set_status(&mut self, status: Status, now: Instant) {
        if status == Status::Critical {
            if self.status != Status::Critical || self.critical_since.is_none() {
                self.critical_since = Some(now);
            }
        } else {
            self.critical_since = None;
        }
        self.status = status;
    }
}

/// What a write did, for [`Shared`] to act on outside the lock.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) changed: bool,
    pub(super) start: Vec<(String, CheckKind)>,
    pub(super) stop: Vec<String>,
}

pub(super) struct State {
    datacenter: String,
    index: u64,
    /// Moves on every [`State::reset_index`], so blocking queries in flight return.
    epoch: u64,
    /// The services table's index: moves when a service is added, changed or removed.
    catalog_index: u64,
    /// Per service name: the index of the last write that touched it (kept after removal).
    service_index: HashMap<String, u64>,
    nodes: BTreeMap<String, NodeRecord>,
    services: BTreeMap<String, ServiceRecord>,
    checks: BTreeMap<String, CheckRecord>,
}

impl State {
    pub(super) fn new(opts: &ConsulOpts) -> State {
        let mut state = State {
            datacenter: opts.datacenter.clone(),
            index: 0,
            epoch: 0,
            catalog_index: 0,
            service_index: HashMap::new(),
            nodes: BTreeMap::new(),
            services: BTreeMap::new(),
            checks: BTreeMap::new(),
        };
        let now = Instant::now();
        state.ensure_node(&opts.node_name, Some("127.0.0.1"), 1);
        state.index = 1;
        if opts.consul_service {
            let consul = Registration {
                service: ServiceDef {
                    id: "consul".to_string(),
                    name: "consul".to_string(),
                    tags: Vec::new(),
                    address: String::new(),
                    port: 8300,
                    meta: BTreeMap::new(),
                    weights: Weights::default(),
                    enable_tag_override: false,
                    node: opts.node_name.clone(),
                },
                node_address: None,
                checks: Vec::new(),
                replace_existing_checks: false,
            };
            state.apply(consul, now);
        }
        state
    }

    pub(super) fn index(&self) -> u64 {
        self.index.max(1)
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The index `/catalog/services` answers with.
    pub(super) fn catalog_query_index(&self) -> u64 {
        self.catalog_index.max(1)
    }

    /// The index `/health/service/NAME` and `/catalog/service/NAME` answer with: the service's
    /// own, or the services table's for a name never seen.
    pub(super) fn service_query_index(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.catalog_index)
            .max(1)
    }

    /// Moves the index to `next` for the services named and, when `catalog`, the services
    /// table.
    fn commit(&mut self, next: u64, touched: &BTreeSet<String>, catalog: bool) {
        self.index = next;
        for name in touched {
            self.service_index.insert(name.clone(), next);
        }
        if catalog {
            self.catalog_index = next;
        }
    }

    fn names_on_node(&self, node: &str) -> BTreeSet<String> {
        self.services
            .values()
            .filter(|service| service.def.node == node)
            .map(|service| service.def.name.clone())
            .collect()
    }

    /// Creates node `name` or moves its address; true when either happened.
    fn ensure_node(&mut self, name: &str, address: Option<&str>, next: u64) -> bool {
        match self.nodes.get_mut(name) {
            Some(node) => match address {
                Some(address) if address != node.address => {
                    node.address = address.to_string();
                    node.modify_index = next;
                    true
                }
                _ => false,
            },
            None => {
                self.nodes.insert(
                    name.to_string(),
                    NodeRecord {
                        id: node_id(name),
                        address: address.unwrap_or("127.0.0.1").to_string(),
                        serf: Status::Passing,
                        create_index: next,
                        modify_index: next,
                    },
                );
                true
            }
        }
    }

    pub(super) fn apply(&mut self, registration: Registration, now: Instant) -> Outcome {
        let next = self.index + 1;
        let mut outcome = Outcome::default();
        let mut touched = BTreeSet::new();
        let mut catalog = false;
        let def = registration.service;

        if self.ensure_node(&def.node, registration.node_address.as_deref(), next) {
            touched.extend(self.names_on_node(&def.node));
            touched.insert(def.name.clone());
            catalog = true;
        }
        match self.services.get_mut(&def.id) {
            Some(existing) if existing.def == def => {}
            Some(existing) => {
                touched.insert(existing.def.name.clone());
                touched.insert(def.name.clone());
                existing.def = def.clone();
                existing.modify_index = next;
                catalog = true;
            }
            None => {
                self.services.insert(
                    def.id.clone(),
                    ServiceRecord {
                        def: def.clone(),
                        create_index: next,
                        modify_index: next,
                    },
                );
                touched.insert(def.name.clone());
                catalog = true;
            }
        }

        let named: BTreeSet<String> = registration
            .checks
            .iter()
            .map(|check| check.id.clone())
            .collect();
        for check in registration.checks {
            let id = check.id.clone();
            let kind = check.kind.clone();
            match self.checks.get_mut(&id) {
                Some(record) => {
                    // As a Consul agent does, a re-registered check keeps its status unless
                    // the registration sets one.
                    let status = check.initial.unwrap_or(record.status);
                    let moved = record.service_id != def.id
                        || record.node != def.node
                        || record.service_name != def.name;
                    if record.def != check || status != record.status || moved {
                        record.modify_index = next;
                        touched.insert(def.name.clone());
                        touched.insert(record.service_name.clone());
                    }
                    if record.def.kind != check.kind {
                        record.ttl_deadline = ttl_of(&check.kind).map(|ttl| now + ttl);
                    }
                    record.set_status(status, now);
                    record.def = check;
                    record.service_id = def.id.clone();
                    record.service_name = def.name.clone();
                    record.node = def.node.clone();
                }
                None => {
                    let status = check.initial.unwrap_or(Status::Critical);
                    let mut record = CheckRecord {
                        ttl_deadline: ttl_of(&check.kind).map(|ttl| now + ttl),
                        def: check,
                        node: def.node.clone(),
                        service_id: def.id.clone(),
                        service_name: def.name.clone(),
                        status,
                        output: String::new(),
                        critical_since: None,
                        create_index: next,
                        modify_index: next,
                    };
                    record.set_status(status, now);
                    self.checks.insert(id.clone(), record);
                    touched.insert(def.name.clone());
                }
            }
            if kind != CheckKind::Static {
                outcome.start.push((id, kind));
            }
        }
        // The service's own checks follow it when it moves (same ID, other name or node).
        for record in self.checks.values_mut() {
            if record.service_id == def.id
                && (record.node != def.node || record.service_name != def.name)
            {
                record.node = def.node.clone();
                record.service_name = def.name.clone();
                record.modify_index = next;
                touched.insert(def.name.clone());
            }
        }
        if registration.replace_existing_checks {
            let stale: Vec<String> = self
                .checks
                .iter()
                .filter(|(id, record)| record.service_id == def.id && !named.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                self.checks.remove(&id);
                outcome.stop.push(id);
                touched.insert(def.name.clone());
            }
        }

        if !touched.is_empty() || catalog {
            self.commit(next, &touched, catalog);
            outcome.changed = true;
        }
        outcome
    }

    /// Removes service `id` and its checks; the removed check IDs, or `None` when absent.
    pub(super) fn remove_service(&mut self, id: &str) -> Option<Vec<String>> {
        let service = self.services.remove(id)?;
        let removed: Vec<String> = self
            .checks
            .iter()
            .filter(|(_, record)| record.service_id == id)
            .map(|(check_id, _)| check_id.clone())
            .collect();
        for check_id in &removed {
            self.checks.remove(check_id);
        }
        let next = self.index + 1;
        self.commit(next, &BTreeSet::from([service.def.name]), true);
        Some(removed)
    }

    /// Sets a check's status and output; `None` when there is no such check, else whether
    /// the index moved (it moves on a status change only, as Consul defers output-only
    /// updates).
    pub(super) fn set_check(
        &mut self,
        id: &str,
        status: Status,
        output: Option<String>,
        now: Instant,
    ) -> Option<bool> {
        let next = self.index + 1;
        let record = self.checks.get_mut(id)?;
        if let Some(output) = output {
            record.output = truncate_output(output);
        }
        if record.status == status {
            return Some(false);
        }
        record.set_status(status, now);
        record.modify_index = next;
        let name = record.service_name.clone();
        self.commit(next, &BTreeSet::from([name]), false);
        Some(true)
    }

    /// Sets every check of service `id`, giving it a `service:<id>` check when it has none.
    /// `None` when there is no such service, else whether the index moved.
    pub(super) fn set_service_status(
        &mut self,
        id: &str,
        status: Status,
        now: Instant,
    ) -> Option<bool> {
        let service = self.services.get(id)?.def.clone();
        let next = self.index + 1;
        let mut changed = false;
        let mut any = false;
        for record in self.checks.values_mut() {
            if record.service_id != id {
                continue;
            }
            any = true;
            record.output = format!("set to {} by the test", status.as_str());
            if record.status != status {
                record.set_status(status, now);
                record.modify_index = next;
                changed = true;
            }
        }
        if !any {
            let check_id = format!("service:{id}");
            let mut record = CheckRecord {
                def: CheckDef {
                    id: check_id.clone(),
                    name: format!("Service '{}' check", service.name),
                    notes: String::new(),
                    kind: CheckKind::Static,
                    initial: Some(status),
                    deregister_after: None,
                },
                node: service.node.clone(),
                service_id: id.to_string(),
                service_name: service.name.clone(),
                status,
                output: format!("set to {} by the test", status.as_str()),
                critical_since: None,
                ttl_deadline: None,
                create_index: next,
                modify_index: next,
            };
            record.set_status(status, now);
            self.checks.insert(check_id, record);
            changed = true;
        }
        if changed {
            self.commit(next, &BTreeSet::from([service.name]), false);
        }
        Some(changed)
    }

    pub(super) fn set_node_status(&mut self, node: &str, status: Status) -> Option<bool> {
        let next = self.index + 1;
        let record = self.nodes.get_mut(node)?;
        if record.serf == status {
            return Some(false);
        }
        record.serf = status;
        record.modify_index = next;
        let touched = self.names_on_node(node);
        self.commit(next, &touched, false);
        Some(true)
    }

    /// A TTL check's deadline: `None` when the check is gone, `Some(None)` when expired and
    /// not updated since.
    pub(super) fn ttl_deadline(&self, id: &str) -> Option<Option<Instant>> {
        self.checks.get(id).map(|record| record.ttl_deadline)
    }

    /// Marks a TTL check as expired (critical) if its deadline has passed; whether the index
    /// moved.
    pub(super) fn expire_ttl(&mut self, id: &str, now: Instant) -> bool {
        let Some(record) = self.checks.get_mut(id) else {
            return false;
        };
        match record.ttl_deadline {
            Some(deadline) if deadline <= now => {
                record.ttl_deadline = None;
                let output = if record.output.is_empty() {
                    "TTL expired".to_string()
                } else {
                    format!(
                        "TTL expired (last output before timeout follows): {}",
                        record.output
                    )
                };
                self.set_check(id, Status::Critical, Some(output), now)
                    .unwrap_or(false)
            }
            _ => false,
        }
    }

    /// Updates a TTL check from the agent API: status, output, and a fresh TTL.
    pub(super) fn update_ttl(
        &mut self,
        id: &str,
        status: Status,
        output: String,
        now: Instant,
    ) -> Result<bool, TtlError> {
        let record = self.checks.get_mut(id).ok_or(TtlError::Unknown)?;
        let CheckKind::Ttl { ttl } = record.def.kind else {
            return Err(TtlError::NotTtl);
        };
        record.ttl_deadline = Some(now + ttl);
        Ok(self
            .set_check(id, status, Some(output), now)
            .unwrap_or(false))
    }

    /// Services with a check critical for longer than its DeregisterCriticalServiceAfter.
    pub(super) fn reapable(&self, now: Instant) -> Vec<String> {
        let mut ids: Vec<String> = self
            .checks
            .values()
            .filter(
                |record| match (record.def.deregister_after, record.critical_since) {
                    (Some(after), Some(since)) => {
                        record.status == Status::Critical && now >= since + after
                    }
                    _ => false,
                },
            )
            .map(|record| record.service_id.clone())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    pub(super) fn reset_index(&mut self) -> u64 {
        self.index = 1;
        self.catalog_index = 1;
        for index in self.service_index.values_mut() {
            *index = 1;
        }
        for node in self.nodes.values_mut() {
            node.create_index = 1;
            node.modify_index = 1;
        }
        for service in self.services.values_mut() {
            service.create_index = 1;
            service.modify_index = 1;
        }
        for check in self.checks.values_mut() {
            check.create_index = 1;
            check.modify_index = 1;
        }
        self.epoch += 1;
        self.index
    }

    pub(super) fn is_agent_service(&self, id: &str, agent_node: &str) -> bool {
        self.services
            .get(id)
            .is_some_and(|service| service.def.node == agent_node)
    }

    pub(super) fn check_status(&self, id: &str) -> Option<Status> {
        self.checks.get(id).map(|record| record.status)
    }

    fn node_status(&self, node: &str) -> Status {
        self.nodes
            .get(node)
            .map(|record| record.serf)
            .unwrap_or(Status::Passing)
    }

    pub(super) fn aggregate_status(&self, id: &str) -> Option<Status> {
        let service = self.services.get(id)?;
        Some(
            self.service_checks(id)
                .map(|record| record.status)
                .chain([self.node_status(&service.def.node)])
                .max()
                .unwrap_or(Status::Passing),
        )
    }

    fn service_checks<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a CheckRecord> + 'a {
        self.checks
            .values()
            .filter(move |record| record.service_id == id)
    }

    /// The instances of `name` sorted by node, then ID.
    fn sorted_instances<'a>(&'a self, name: &'a str, tags: &'a [String]) -> Vec<&'a ServiceRecord> {
        let mut services: Vec<&ServiceRecord> = self
            .services
            .values()
            .filter(|service| service.def.name == name && has_tags(&service.def, tags))
            .collect();
        services.sort_by(|a, b| (&a.def.node, &a.def.id).cmp(&(&b.def.node, &b.def.id)));
        services
    }

    pub(super) fn instances(&self, name: &str) -> Vec<Instance> {
        self.sorted_instances(name, &[])
            .into_iter()
            .map(|service| Instance {
                id: service.def.id.clone(),
                name: service.def.name.clone(),
                tags: service.def.tags.clone(),
                address: service.def.address.clone(),
                port: service.def.port,
                meta: service.def.meta.clone(),
                weights: service.def.weights,
                node: Some(service.def.node.clone()),
                node_address: self.node_address(&service.def.node),
                status: self.aggregate_status(&service.def.id),
            })
            .collect()
    }

    fn node_address(&self, node: &str) -> String {
        self.nodes
            .get(node)
            .map(|record| record.address.clone())
            .unwrap_or_default()
    }

    fn node_json(&self, name: &str) -> Value {
        let (id, address, create, modify) = match self.nodes.get(name) {
            Some(node) => (
                node.id.clone(),
                node.address.clone(),
                node.create_index,
                node.modify_index,
            ),
            None => (node_id(name), String::new(), 1, 1),
        };
        json!({
            "ID": id,
            "Node": name,
            "Address": address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": {
                "lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address
            },
            "Meta": { "consul-network-segment": "" },
            "CreateIndex": create,
            "ModifyIndex": modify,
        })
    }

    fn serf_check_json(&self, node: &str) -> Value {
        let (status, create, modify) = match self.nodes.get(node) {
            Some(record) => (record.serf, record.create_index, record.modify_index),
            None => (Status::Passing, 1, 1),
        };
        let output = match status {
            Status::Passing => "Agent alive and reachable",
            _ => "Agent not live or unreachable",
        };
        json!({
            "Node": node,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": status.as_str(),
            "Notes": "",
            "Output": output,
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": create,
            "ModifyIndex": modify,
        })
    }

    fn check_json(&self, record: &CheckRecord) -> Value {
        let tags = self
            .services
            .get(&record.service_id)
            .map(|service| service.def.tags.clone())
            .unwrap_or_default();
        let (interval, timeout) = match &record.def.kind {
            CheckKind::Http {
                interval, timeout, ..
            }
            | CheckKind::Tcp {
                interval, timeout, ..
            } => (go_duration(*interval), go_duration(*timeout)),
            CheckKind::Ttl { .. } | CheckKind::Static => (String::new(), String::new()),
        };
        let mut definition = Map::new();
        match &record.def.kind {
            CheckKind::Http { url, method, .. } => {
                definition.insert("HTTP".into(), json!(url));
                definition.insert("Method".into(), json!(method));
            }
            CheckKind::Tcp { addr, .. } => {
                definition.insert("TCP".into(), json!(addr));
            }
            CheckKind::Ttl { ttl } => {
                definition.insert("TTL".into(), json!(go_duration(*ttl)));
            }
            CheckKind::Static => {}
        }
        if let Some(after) = record.def.deregister_after {
            definition.insert(
                "DeregisterCriticalServiceAfter".into(),
                json!(go_duration(after)),
            );
        }
        if !interval.is_empty() {
            definition.insert("Interval".into(), json!(interval));
            definition.insert("Timeout".into(), json!(timeout));
        }
        json!({
            "Node": record.node,
            "CheckID": record.def.id,
            "Name": record.def.name,
            "Status": record.status.as_str(),
            "Notes": record.def.notes,
            "Output": record.output,
            "ServiceID": record.service_id,
            "ServiceName": record.service_name,
            "ServiceTags": tags,
            "Type": record.def.kind.type_name(),
            "Interval": interval,
            "Timeout": timeout,
            "ExposedPort": 0,
            "Definition": definition,
            "CreateIndex": record.create_index,
            "ModifyIndex": record.modify_index,
        })
    }

    fn weights_json(weights: Weights) -> Value {
        json!({ "Passing": weights.passing, "Warning": weights.warning })
    }

    fn service_json(service: &ServiceRecord) -> Value {
        let def = &service.def;
        json!({
            "ID": def.id,
            "Service": def.name,
            "Tags": def.tags,
            "Address": def.address,
            "Meta": def.meta,
            "Port": def.port,
            "Weights": Self::weights_json(def.weights),
            "EnableTagOverride": def.enable_tag_override,
            "Proxy": { "Mode": "", "MeshGateway": {}, "Expose": {} },
            "Connect": {},
            "PeerName": "",
            "CreateIndex": service.create_index,
            "ModifyIndex": service.modify_index,
        })
    }

    /// `/v1/health/service/NAME`: one entry per instance with its node, service and checks
    /// (the node's first); `passing` keeps only entries whose checks all pass.
    pub(super) fn health_entries(&self, name: &str, tags: &[String], passing: bool) -> Value {
        let mut entries = Vec::new();
        for service in self.sorted_instances(name, tags) {
            let node = &service.def.node;
            let mut checks = vec![self.serf_check_json(node)];
            let mut all_passing = self.node_status(node) == Status::Passing;
            for record in self.service_checks(&service.def.id) {
                all_passing &= record.status == Status::Passing;
                checks.push(self.check_json(record));
            }
            if passing && !all_passing {
                continue;
            }
            entries.push(json!({
                "Node": self.node_json(node),
                "Service": Self::service_json(service),
                "Checks": checks,
            }));
        }
        Value::Array(entries)
    }

    /// `/v1/catalog/service/NAME`: flat entries, health not considered.
    pub(super) fn catalog_entries(&self, name: &str, tags: &[String]) -> Value {
        let entries = self
            .sorted_instances(name, tags)
            .into_iter()
            .map(|service| {
                let node = self.node_json(&service.def.node);
                let def = &service.def;
                json!({
                    "ID": node["ID"],
                    "Node": def.node,
                    "Address": node["Address"],
                    "Datacenter": self.datacenter,
                    "TaggedAddresses": node["TaggedAddresses"],
                    "NodeMeta": node["Meta"],
                    "ServiceKind": "",
                    "ServiceID": def.id,
                    "ServiceName": def.name,
                    "ServiceTags": def.tags,
                    "ServiceAddress": def.address,
                    "ServiceWeights": Self::weights_json(def.weights),
                    "ServiceMeta": def.meta,
                    "ServicePort": def.port,
                    "ServiceEnableTagOverride": def.enable_tag_override,
                    "ServiceProxy": { "Mode": "", "MeshGateway": {}, "Expose": {} },
                    "ServiceConnect": {},
                    "CreateIndex": service.create_index,
                    "ModifyIndex": service.modify_index,
                })
            })
            .collect();
        Value::Array(entries)
    }

    /// `/v1/catalog/services`: every service name with the union of its instances' tags.
    pub(super) fn catalog_services(&self) -> Value {
        let mut names: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for service in self.services.values() {
            names
                .entry(&service.def.name)
                .or_default()
                .extend(service.def.tags.iter().map(String::as_str));
        }
        json!(names)
    }

    /// `/v1/agent/services`: the services of the agent's node, by ID.
    pub(super) fn agent_services(&self, agent_node: &str) -> Value {
        let mut services = Map::new();
        for service in self.services.values() {
            let def = &service.def;
            if def.node != agent_node || def.id == "consul" {
                continue;
            }
            services.insert(
                def.id.clone(),
                json!({
                    "ID": def.id,
                    "Service": def.name,
                    "Tags": def.tags,
                    "Meta": def.meta,
                    "Port": def.port,
                    "Address": def.address,
                    "Weights": Self::weights_json(def.weights),
                    "EnableTagOverride": def.enable_tag_override,
                    "Datacenter": self.datacenter,
                }),
            );
        }
        Value::Object(services)
    }

    /// `/v1/agent/checks`: the checks of the agent's node, by check ID.
    pub(super) fn agent_checks(&self, agent_node: &str) -> Value {
        let checks: Map<String, Value> = self
            .checks
            .values()
            .filter(|record| record.node == agent_node)
            .map(|record| (record.def.id.clone(), self.check_json(record)))
            .collect();
        Value::Object(checks)
    }
}

pub(super) enum TtlError {
    Unknown,
    NotTtl,
}

fn ttl_of(kind: &CheckKind) -> Option<std::time::Duration> {
    match kind {
        CheckKind::Ttl { ttl } => Some(*ttl),
        _ => None,
    }
}

/// Consul matches `?tag=` case-insensitively, every given tag required.
fn has_tags(def: &ServiceDef, tags: &[String]) -> bool {
    tags.iter().all(|wanted| {
        def.tags
            .iter()
            .any(|tag| tag.to_lowercase() == wanted.to_lowercase())
    })
}

/// Consul keeps at most 4 KiB of a check's output.
fn truncate_output(mut output: String) -> String {
    const MAX: usize = 4096;
    if output.len() > MAX {
        let mut end = MAX;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
    }
    output
}

/// A stable UUID-shaped node ID derived from the node's name.
fn node_id(name: &str) -> String {
    let mut first = std::collections::hash_map::DefaultHasher::new();
    ("jalur-consul-double", name).hash(&mut first);
    let mut second = std::collections::hash_map::DefaultHasher::new();
    (name, "node-id").hash(&mut second);
    let hex = format!("{:016x}{:016x}", first.finish(), second.finish());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// A duration the way Go prints it ("10s", "1m30s", "250ms").
pub(super) fn go_duration(duration: std::time::Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return if duration.is_zero() {
            "0s".to_string()
        } else {
            format!("{}µs", duration.as_micros())
        };
    }
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let secs = duration.as_secs();
    let (hours, minutes, seconds) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let fraction = duration.subsec_millis();
    let seconds = if fraction == 0 {
        format!("{seconds}s")
    } else {
        format!("{seconds}.{fraction:03}s")
            .trim_end_matches('0')
            .to_string()
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, m) => format!("{m}m{seconds}"),
        (h, m) => format!("{h}h{m}m{seconds}"),
    }
}
