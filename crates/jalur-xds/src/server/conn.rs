//! One stream's life, common to SotW and delta: take the node from the first request, register
//! the client, then react to requests and generation changes until the client goes away.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::track::unix_now;
use super::Shared;
use crate::resource::{ClientSnapshot, TypeUrl};
use crate::status::{ClientStatus, Mode, Nack, TypeStatus};
use crate::Node;

/// One response ready to go out, with what the log line needs.
pub(crate) struct Push<R> {
    pub(crate) type_url: TypeUrl,
    pub(crate) nonce: String,
    pub(crate) resources: usize,
    pub(crate) removed: usize,
    pub(crate) response: R,
}

/// A protocol variant's per-stream state machine. Pure bookkeeping: no I/O, no awaits.
pub(crate) trait Protocol: Default + Send + 'static {
    type Request: Send + 'static;
    type Response: prost::Message + Send + 'static;
    const MODE: Mode;

    fn node(request: &Self::Request) -> Option<&Node>;
    /// Handles one client request; returns the responses it calls for, in push order.
    fn on_request(&mut self, conn: &mut Conn, request: Self::Request) -> Vec<Push<Self::Response>>;
    /// `conn.snapshot` was regenerated; returns the responses for what changed, in push order.
    fn on_change(&mut self, conn: &mut Conn) -> Vec<Push<Self::Response>>;
    fn type_statuses(&self) -> BTreeMap<String, TypeStatus>;
    /// Some response has neither been ACKed nor NACKed yet.
    fn awaiting_reply(&self) -> bool;
    /// The first request of a stream says the client already holds config (SotW: a
    /// `version_info`; delta: `initial_resource_versions`): a serving proxy reconnecting.
    fn holds_config(first: &Self::Request) -> bool;
    /// The client has ACKed every resource of `snapshot` it needs to serve.
    fn holds(&self, snapshot: &ClientSnapshot) -> bool;
}

/// A registered client. Dropping it deregisters the client, exactly once, however the stream
/// ended.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) node: Node,
    pub(crate) kind: String,
    pub(crate) snapshot: Arc<ClientSnapshot>,
    pub(crate) generation: u64,
    /// When the generation being pushed was first observed; `None` for request-driven responses.
    change_seen: Option<Instant>,
    next_nonce: u64,
    status: ClientStatus,
    /// The generator was told the client holds a complete config.
    ready: bool,
    /// The client ended its stream itself (it is leaving), rather than losing it.
    left: bool,
    /// Why the stream ended when the client did not end it, for the log line.
    why: Option<String>,
}

impl Conn {
    /// `id` was already announced to the generator (`connected`) by [`run`].
    fn open(
        shared: Arc<Shared>,
        id: u64,
        node: Node,
        mode: Mode,
        (peer, identity): (Option<SocketAddr>, Option<String>),
        changes: &mut watch::Receiver<u64>,
        ready: bool,
    ) -> Conn {
        let kind = shared.generator.client_kind(&node);
        shared.convergence.joined(id);
        // Mark the generation seen before generating, so a change racing with this connect
        // triggers a regeneration instead of being lost.
        let generation = *changes.borrow_and_update();
        let snapshot = shared.generator.generate(&node);
        let status = ClientStatus {
            conn_id: id,
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            kind: kind.clone(),
            client_version: client_version(&node),
            mode,
            peer: peer.map(|p| p.to_string()),
            identity,
            connected_at: unix_now(),
            generation,
            types: BTreeMap::new(),
            in_sync: true,
            ready,
            last_snapshot: snapshot.clone(),
        };
        info!(conn = id, node = %node.id, kind, client = %status.client_version, mode = mode.as_str(), ?peer, identity = ?status.identity, "xDS client connected");
        shared.sync.publish(status.clone());
        Conn {
            shared,
            id,
            node,
            kind,
            snapshot,
            generation,
            change_seen: None,
            next_nonce: 0,
            status,
            ready,
            left: false,
            why: None,
        }
    }

    /// Tells the generator once the client holds everything it needs to serve.
    fn check_ready<P: Protocol>(&mut self, proto: &P) {
        if self.ready || !proto.holds(&self.snapshot) {
            return;
        }
        self.ready = true;
        self.status.ready = true;
        info!(conn = self.id, node = %self.node.id, generation = self.generation, "xDS client holds a complete config");
        self.shared.generator.ready(self.id, &self.node);
    }

    /// Rebuilds the snapshot after the control plane bumped the generation.
    fn regenerate(&mut self, changes: &mut watch::Receiver<u64>) {
        self.generation = *changes.borrow_and_update();
        self.change_seen = Some(self.shared.convergence.observed(self.generation));
        self.snapshot = self.shared.generator.generate(&self.node);
    }

    /// A fresh nonce; per stream and monotonic, so a reply can be matched to its response.
    pub(crate) fn next_nonce(&mut self) -> String {
        self.next_nonce += 1;
        self.next_nonce.to_string()
    }

    pub(crate) fn nacked(&self, type_url: TypeUrl, nack: &Nack) {
        warn!(
            conn = self.id, node = %self.node.id, r#type = type_url.short(), nonce = %nack.nonce,
            version = %nack.version, detail = %nack.detail, "xDS client rejected (NACKed) a response"
        );
        self.shared.metrics.nacked(type_url, &self.kind);
    }

    fn publish<P: Protocol>(&mut self, proto: &P) {
        self.status.types = proto.type_statuses();
        self.status.in_sync = self.status.compute_in_sync();
        self.status.generation = self.generation;
        self.status.last_snapshot = self.snapshot.clone();
        self.shared.sync.publish(self.status.clone());
        if !proto.awaiting_reply() {
            for seconds in self.shared.convergence.settled(self.id, self.generation) {
                self.shared.metrics.converged(seconds);
            }
        }
    }

    fn pushed<R: prost::Message>(&self, push: &Push<R>) {
        let metrics = &self.shared.metrics;
        metrics.pushed(push.type_url, &self.kind, push.response.encoded_len());
        if let Some(seen) = self.change_seen {
            metrics.push_latency(push.type_url, seen.elapsed().as_secs_f64());
        }
        debug!(
            conn = self.id, node = %self.node.id, r#type = push.type_url.short(), nonce = %push.nonce,
            resources = push.resources, removed = push.removed, generation = self.generation,
            "xDS response sent"
        );
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.left {
            self.shared.generator.left(self.id, &self.node);
        } else {
            self.shared.generator.disconnected(self.id, &self.node);
        }
        self.shared.sync.remove(self.id);
        for seconds in self.shared.convergence.left(self.id) {
            self.shared.metrics.converged(seconds);
        }
        if self.left {
            info!(conn = self.id, node = %self.node.id, "xDS client left (it ended its stream)");
        } else {
            let reason = self.why.as_deref().unwrap_or("unknown");
            info!(conn = self.id, node = %self.node.id, reason, "xDS client disconnected");
        }
    }
}

/// User agent name and version, e.g. "envoy 1.40.0" or "grpc-python 1.76.0".
pub(crate) fn client_version(node: &Node) -> String {
    let version = match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    };
    let joined = format!("{} {}", node.user_agent_name, version);
    match joined.trim() {
        "" => "unknown".to_string(),
        s => s.to_string(),
    }
}

type Outbound<R> = mpsc::Sender<Result<R, Status>>;

/// What woke the stream task.
enum Event<R> {
    Request(R),
    Change,
    /// Stream error, client gone, or server shutdown: the status to end the stream on, and why
    /// it ends (logged, so no stream closes without a reason; issue 12).
    End(Option<Status>, String),
    /// The client ended its request stream (half-close): it is leaving.
    Left,
}

/// Drives one stream until the client goes away; the per-stream task.
pub(crate) async fn run<P: Protocol>(
    shared: Arc<Shared>,
    mut inbound: Streaming<P::Request>,
    tx: Outbound<P::Response>,
    peer: Option<SocketAddr>,
    extensions: tonic::codegen::http::Extensions,
) {
    let mut changes = shared.changes.clone();
    let mut closing = shared.closing.subscribe();
    let first = match first_request::<P>(&mut inbound, &tx, &mut closing).await {
        Ok(request) => request,
        Err((status, why)) => {
            debug!(?peer, reason = %why, "xDS stream ended before its first request");
            return end(&tx, status).await;
        }
    };
    let Some(node) = P::node(&first).cloned() else {
        let msg = "the first request of a stream must carry the node (id, cluster, user agent)";
        return end(&tx, Some(Status::invalid_argument(msg))).await;
    };
    if node.id.is_empty() {
        let msg = "node.id is empty: the control plane identifies proxies by it";
        return end(&tx, Some(Status::invalid_argument(msg))).await;
    }
    if let Err(status) = shared.generator.admit(&node, &extensions) {
        warn!(node = %node.id, ?peer, code = ?status.code(), reason = status.message(), "xDS client refused");
        shared.metrics.refused(&status);
        return end(&tx, Some(status)).await;
    }
    // Registered at once (its workload counts while the plane warms up), answered once warm.
    let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    shared.generator.connected(id, &node);
    // A proxy that reconnects with config in hand is serving already: its endpoint counts at
    // once (a restarted control plane's warm-up waits for exactly these).
    let ready = P::holds_config(&first);
    if ready {
        shared.generator.ready(id, &node);
    }
    let mut warm = shared.warm.clone();
    if !*warm.borrow() {
        debug!(conn = id, node = %node.id, "holding the first response until the control plane is warm");
        let ready = tokio::select! {
            r = warm.wait_for(|w| *w) => r.is_ok(),
            _ = shutdown(&mut closing) => false,
            _ = tx.closed() => false,
        };
        if !ready {
            shared.generator.disconnected(id, &node);
            info!(conn = id, node = %node.id, "xDS client disconnected before the control plane was warm");
            return end(&tx, Some(shutting_down())).await;
        }
    }
    let identity = extensions
        .get::<crate::status::PeerIdentity>()
        .map(|p| p.0.clone());
    let remote = (peer, identity);
    let mut conn = Conn::open(shared, id, node, P::MODE, remote, &mut changes, ready);
    let mut proto = P::default();
    let mut watching = true;
    let mut event = Event::Request(first);
    loop {
        let pushes = match event {
            Event::Request(request) => proto.on_request(&mut conn, request),
            Event::Change => {
                conn.regenerate(&mut changes);
                proto.on_change(&mut conn)
            }
            Event::End(status, why) => {
                conn.why = Some(why);
                return end(&tx, status).await;
            }
            Event::Left => {
                conn.left = true;
                return end(&tx, None).await;
            }
        };
        if send_all(&conn, &tx, pushes).await.is_err() {
            conn.why = Some("the client is gone: a response could not be queued".into());
            return;
        }
        conn.check_ready(&proto);
        conn.publish(&proto);
        conn.change_seen = None;
        event = next_event::<P>(&mut inbound, &tx, &mut closing, &mut changes, &mut watching).await;
    }
}

async fn first_request<P: Protocol>(
    inbound: &mut Streaming<P::Request>,
    tx: &Outbound<P::Response>,
    closing: &mut watch::Receiver<bool>,
) -> Result<P::Request, (Option<Status>, String)> {
    let event = tokio::select! {
        msg = inbound.message() => from_message(msg),
        _ = shutdown(closing) => shut_down(),
        _ = tx.closed() => connection_closed(),
    };
    match event {
        Event::Request(request) => Ok(request),
        Event::Change | Event::Left => Err((None, "the client ended its stream".into())),
        Event::End(status, why) => Err((status, why)),
    }
}

async fn next_event<P: Protocol>(
    inbound: &mut Streaming<P::Request>,
    tx: &Outbound<P::Response>,
    closing: &mut watch::Receiver<bool>,
    changes: &mut watch::Receiver<u64>,
    watching: &mut bool,
) -> Event<P::Request> {
    loop {
        tokio::select! {
            msg = inbound.message() => return from_message(msg),
            changed = changes.changed(), if *watching => match changed {
                Ok(()) => return Event::Change,
                // The control plane dropped its sender: keep serving the last snapshot.
                Err(_) => *watching = false,
            },
            _ = shutdown(closing) => return shut_down(),
            _ = tx.closed() => return connection_closed(),
        }
    }
}

fn from_message<R>(msg: Result<Option<R>, Status>) -> Event<R> {
    match msg {
        Ok(Some(request)) => Event::Request(request),
        Ok(None) => Event::Left,
        // E.g. the connection broke, or an HTTP/2 keep-alive ping went unanswered.
        Err(status) => Event::End(None, format!("the stream failed: {status}")),
    }
}

fn shut_down<R>() -> Event<R> {
    Event::End(
        Some(shutting_down()),
        "the control plane is shutting down".into(),
    )
}

fn connection_closed<R>() -> Event<R> {
    Event::End(
        None,
        "the client's connection closed (its responses are no longer read)".into(),
    )
}

fn shutting_down() -> Status {
    Status::unavailable("xDS server is shutting down")
}

async fn shutdown(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|c| *c).await.is_err() {
        // The sender lives as long as the server; if it is gone, nobody can ask us to close.
        std::future::pending::<()>().await;
    }
}

async fn end<R>(tx: &Outbound<R>, status: Option<Status>) {
    if let Some(status) = status {
        // The client may already be gone; then there is nobody to tell.
        let _ = tx.send(Err(status)).await;
    }
}

/// Queues the responses in order; `Err` when the client is gone.
async fn send_all<R: prost::Message>(
    conn: &Conn,
    tx: &Outbound<R>,
    pushes: Vec<Push<R>>,
) -> Result<(), ()> {
    for push in pushes {
        conn.pushed(&push);
        tx.send(Ok(push.response)).await.map_err(|_| ())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::BuildVersion;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;

    #[test]
    fn client_version_from_free_form_or_build_version() {
        let mut node = Node {
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: 1,
                        minor_number: 40,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        };
        assert_eq!(client_version(&node), "envoy 1.40.0");
        node.user_agent_name = "grpc-python".into();
        node.user_agent_version_type =
            Some(UserAgentVersionType::UserAgentVersion("1.76.0".into()));
        assert_eq!(client_version(&node), "grpc-python 1.76.0");
        assert_eq!(client_version(&Node::default()), "unknown");
    }
}
