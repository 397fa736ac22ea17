//! What every connected client was sent and what it answered: the data behind `jalur proxy-status`,
//! the web UI's sync view and the `clients_out_of_sync` metric.
//!
//! Each stream task owns its own bookkeeping and publishes a fresh [`ClientStatus`] here after every
//! event, so readers never block a stream for longer than one map insert.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;

use crate::resource::ClientSnapshot;

/// Protocol variant a client speaks on its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sotw,
    Delta,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sotw => "sotw",
            Mode::Delta => "delta",
        }
    }
}

/// A response the client rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    /// Version of the rejected response (SotW: its `version_info`; delta: the generation).
    pub version: String,
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub detail: String,
    pub at_unix: u64,
}

/// Per-type bookkeeping of one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeStatus {
    /// The client subscribes to every resource of the type.
    pub wildcard: bool,
    /// Explicitly subscribed names (may be non-empty alongside `wildcard`).
    pub subscribed: Vec<String>,
    /// SotW: `version_info` of the last response; delta: generation it was built from.
    pub sent_version: String,
    pub sent_nonce: String,
    /// SotW: `version_info` the client reported when ACKing; delta: version of the ACKed response.
    pub acked_version: String,
    pub acked_nonce: String,
    /// SotW: resources in the last response; delta: resources the client currently holds. After
    /// a NACK, both count what the client held at its last ACK.
    pub resources: usize,
    pub last_nack: Option<Nack>,
    pub in_sync: bool,
}

impl TypeStatus {
    /// In sync when the last response was ACKed (a NACK leaves `acked_nonce` behind).
    pub fn compute_in_sync(&self) -> bool {
        self.sent_nonce.is_empty() || self.acked_nonce == self.sent_nonce
    }
}

/// Put into a stream's request extensions by a transport that authenticates its clients (the
/// control plane's TLS port): the identity it proved, shown as [`ClientStatus::identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub String);

/// One connected stream.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    pub conn_id: u64,
    pub node_id: String,
    /// `node.cluster` (Istio puts `<workload>.<namespace>` here).
    pub cluster: String,
    /// The generator's label, e.g. "sidecar", "gateway", "proxyless-grpc".
    pub kind: String,
    /// User agent name and version, e.g. "envoy 1.40.0".
    pub client_version: String,
    pub mode: Mode,
    /// Remote socket address, when the transport knows it.
    pub peer: Option<String>,
    /// The identity the transport proved for this client (the SPIFFE id of its client
    /// certificate on the control plane's TLS port); absent on a plaintext port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub connected_at: u64,
    /// Generation of the config snapshot the client was last built from.
    pub generation: u64,
    /// Keyed by short type name (`cds`, `eds`, `lds`, `rds`, `sds`).
    pub types: BTreeMap<String, TypeStatus>,
    pub in_sync: bool,
    /// The client holds a complete config (see `Generator::ready`); a proxy's workload is an
    /// endpoint only once this is true.
    pub ready: bool,
    /// What the client should currently have, for dumps (`jalur proxy-config`).
    #[serde(skip)]
    pub last_snapshot: Arc<ClientSnapshot>,
}

impl ClientStatus {
    /// Out of sync when some type's last response is un-ACKed or was NACKed.
    pub fn compute_in_sync(&self) -> bool {
        self.types.values().all(TypeStatus::compute_in_sync)
    }
}

/// Shared view of all connected clients. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SyncRegistry {
    clients: Arc<RwLock<HashMap<u64, ClientStatus>>>,
}

impl SyncRegistry {
    pub fn new() -> SyncRegistry {
        SyncRegistry::default()
    }

    /// All connected clients, ordered by node id then connection id.
    pub fn clients(&self) -> Vec<ClientStatus> {
        let mut all: Vec<ClientStatus> = self.read().values().cloned().collect();
        all.sort_by(|a, b| (&a.node_id, a.conn_id).cmp(&(&b.node_id, b.conn_id)));
        all
    }

    /// The newest stream of `node_id` (a reconnecting proxy briefly has two).
    pub fn client(&self, node_id: &str) -> Option<ClientStatus> {
        self.read()
            .values()
            .filter(|c| c.node_id == node_id)
            .max_by_key(|c| c.conn_id)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub(crate) fn publish(&self, status: ClientStatus) {
        self.write().insert(status.conn_id, status);
    }

    pub(crate) fn remove(&self, conn_id: u64) {
        self.write().remove(&conn_id);
    }

    /// Runs `f` over the clients under the read lock, without cloning them (for metric scrapes).
    pub(crate) fn with_clients<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &ClientStatus>) -> R,
    ) -> R {
        let guard = self.read();
        f(&mut guard.values())
    }

    // A panic in another holder must not take the status API down with it: the map is only ever
    // replaced entry by entry, so a poisoned lock still holds consistent entries.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<u64, ClientStatus>> {
        self.clients.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<u64, ClientStatus>> {
        self.clients.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(conn_id: u64, node_id: &str) -> ClientStatus {
        ClientStatus {
            conn_id,
            node_id: node_id.to_string(),
            cluster: String::new(),
            kind: "sidecar".to_string(),
            client_version: "envoy 1.40.0".to_string(),
            mode: Mode::Sotw,
            peer: None,
            identity: None,
            connected_at: 0,
            generation: 0,
            types: BTreeMap::new(),
            in_sync: true,
            ready: false,
            last_snapshot: Arc::default(),
        }
    }

    #[test]
    fn client_returns_newest_stream_of_a_node() {
        let reg = SyncRegistry::new();
        reg.publish(status(1, "a"));
        reg.publish(status(7, "a"));
        reg.publish(status(3, "b"));
        assert_eq!(reg.client("a").map(|c| c.conn_id), Some(7));
        assert_eq!(
            reg.clients().iter().map(|c| c.conn_id).collect::<Vec<_>>(),
            vec![1, 7, 3]
        );
        reg.remove(7);
        assert_eq!(reg.client("a").map(|c| c.conn_id), Some(1));
    }

    #[test]
    fn nacked_type_is_out_of_sync() {
        let mut t = TypeStatus {
            sent_nonce: "2".into(),
            acked_nonce: "1".into(),
            ..Default::default()
        };
        assert!(!t.compute_in_sync());
        t.acked_nonce = "2".into();
        assert!(t.compute_in_sync());
        assert!(TypeStatus::default().compute_in_sync());
    }
}
