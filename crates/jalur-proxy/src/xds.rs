//! The proxy's ADS client: one stream to the control plane (delta by default, state-of-the-world
//! on request), wildcard LDS and CDS, RDS and EDS by the names those call for. Each response is
//! converted whole at the edge (`config/convert.rs`); a single bad resource NACKs the response
//! and nothing changes, otherwise a new [`Snapshot`] is swapped in atomically and ACKed.
//!
//! The last good snapshot serves through any outage: a lost control plane only means retrying
//! with jittered exponential backoff, and a new stream tells the server what the proxy holds.
//!
//! Layout: `apply.rs` (pure: response + snapshot -> snapshot), `delta.rs` and `sotw.rs` (the two
//! wire protocols); this file holds the public face and the reconnect loop.

mod apply;
mod delta;
mod sotw;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use jalur_identity::channel::ClientAuth;
use jalur_identity::verify::Accept;
use jalur_identity::{CredentialsWatch, SpiffeId};

use crate::backoff::Backoff;
use crate::config::Snapshot;
use apply::{Convert, Held, ResourceType, Update};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a leaving proxy waits for the control plane to end the stream it half-closed.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);
/// google.rpc.Code INVALID_ARGUMENT, the code of every NACK.
const INVALID_ARGUMENT: i32 = 3;

/// How to reach the control plane and who to say we are.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// `host:port` (plaintext gRPC), or a URI with scheme.
    pub addr: String,
    /// Sent on the first request of every stream (id and metadata as `jalur-control`'s
    /// `node.rs` reads them).
    pub node: Node,
    /// Delta ADS (`DeltaAggregatedResources`); `false` for state-of-the-world.
    pub delta: bool,
    /// First reconnect delay, and the floor of every one.
    pub backoff_base: Duration,
    /// Ceiling of the reconnect delay.
    pub backoff_max: Duration,
    /// xDS over TLS (the control plane's 15012): this workload's certificate, and the
    /// control plane's SPIFFE id the server must prove. Every (re)connect presents the
    /// certificate current at that moment.
    pub tls: Option<XdsTls>,
}

/// How the proxy authenticates to the control plane and recognises it.
#[derive(Debug, Clone)]
pub struct XdsTls {
    pub credentials: CredentialsWatch,
    pub control_plane: SpiffeId,
}

impl XdsOptions {
    /// Delta ADS, backoff 100 ms up to 5 s.
    pub fn new(addr: impl Into<String>, node: Node) -> XdsOptions {
        XdsOptions {
            addr: addr.into(),
            node,
            delta: true,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// What the proxy wants of its xDS client; sent on the watch given to [`run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Stay configured: connect, follow, reconnect.
    Serve,
    /// The proxy is draining: end the stream cleanly (a gRPC half-close), which the control
    /// plane takes as "this proxy is leaving" and withdraws its endpoint at once, then stop.
    /// The last config keeps serving.
    Leave,
    /// Stop now, without a word to the control plane.
    Stop,
}

/// The ADS protocol variant in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Delta,
    Sotw,
}

/// The client's view of its sync with the control plane, for the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XdsStatus {
    pub addr: String,
    pub mode: Mode,
    /// A stream to the control plane is open.
    pub connected: bool,
    /// A complete config has arrived (see [`ConfigState::ready`]).
    pub ready: bool,
    /// Why the last connection attempt or stream failed; kept after reconnecting.
    pub last_error: Option<String>,
    /// Streams opened so far.
    pub streams: u64,
    /// Keyed by `cds`, `eds`, `lds`, `rds`.
    pub types: BTreeMap<String, TypeSync>,
}

/// Sync of one resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TypeSync {
    /// Version of the last accepted response (SotW `version_info`, delta `system_version_info`).
    pub version: String,
    /// Nonce of the last response received, accepted or not.
    pub nonce: String,
    /// The last response was accepted (false after a NACK until the next good one).
    pub accepted: bool,
    /// Resources of the type in the live snapshot.
    pub resources: usize,
    /// Names subscribed on the current stream (RDS, EDS); empty for the wildcard types.
    pub subscribed: Vec<String>,
    pub last_nack: Option<Nack>,
}

/// A response the proxy rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nack {
    pub version: String,
    pub nonce: String,
    /// The error_detail message sent: every conversion error, naming resource and field.
    pub detail: String,
    pub at_unix: u64,
}

/// The live configuration and the client's sync status, shared between the xDS client (the
/// only writer: one [`run`] per state) and the data plane (lock-free readers).
#[derive(Debug)]
pub struct ConfigState {
    snapshot: ArcSwap<Snapshot>,
    ready: watch::Sender<bool>,
    /// Bumped on every accepted change, so the runtime rebuilds and listeners reconcile.
    changes: watch::Sender<u64>,
    status: Mutex<XdsStatus>,
}

impl ConfigState {
    pub fn new() -> Arc<ConfigState> {
        Arc::new(ConfigState {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            ready: watch::channel(false).0,
            changes: watch::channel(0).0,
            status: Mutex::new(XdsStatus::default()),
        })
    }

    /// The current snapshot; callers keep the `Arc` for as long as a request needs it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Turns true once a complete config has arrived (LDS and CDS, and every route
    /// configuration and EDS service they reference, or that a delta server reported as not
    /// existing), and stays true: the proxy keeps serving its last good config through
    /// control-plane outages.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn status(&self) -> XdsStatus {
        self.lock_status().clone()
    }

    /// Ticks after every accepted change of the snapshot.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    // Only the xDS client writes the status and every write is a field assignment, so a
    // poisoned lock still holds a consistent value.
    fn lock_status(&self) -> MutexGuard<'_, XdsStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_status(&self, f: impl FnOnce(&mut XdsStatus)) {
        f(&mut self.lock_status());
    }

    fn type_sync(&self, rtype: ResourceType, f: impl FnOnce(&mut TypeSync)) {
        self.update_status(|s| f(s.types.entry(rtype.short().to_string()).or_default()));
    }

    fn publish(&self, snapshot: Snapshot, complete: bool) {
        let counts = ResourceType::ALL.map(|t| (t, t.count(&snapshot)));
        self.snapshot.store(Arc::new(snapshot));
        self.changes.send_modify(|n| *n += 1);
        if complete {
            self.ready
                .send_if_modified(|ready| !std::mem::replace(ready, true));
        }
        self.update_status(|s| {
            s.ready |= complete;
            for (t, count) in counts {
                s.types.entry(t.short().to_string()).or_default().resources = count;
            }
        });
    }
}

/// Why a connection attempt or a stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum XdsError {
    #[error("invalid control plane address {addr:?}: {}", chain(.source))]
    Address {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("cannot connect: {}", chain(.0))]
    Connect(tonic::transport::Error),
    /// A TLS connection failed (refused handshake, unreachable): the message says which.
    #[error("{0}")]
    Tls(String),
    #[error("control plane refused the stream: {:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("stream failed: {:?}: {}", .0.code(), .0.message())]
    Stream(tonic::Status),
    #[error("control plane closed the stream")]
    Closed,
    /// The proxy ended its stream because it is leaving; not an error to retry.
    #[error("left the control plane")]
    Left,
}

impl XdsError {
    /// What an operator reads: where, and the cause in plain words.
    fn describe(&self, addr: &str) -> String {
        match self {
            XdsError::Connect(e) => {
                format!("cannot reach the control plane at {addr}: {}", cause(e))
            }
            // Already names the address.
            XdsError::Tls(message) => message.clone(),
            other => format!("control plane at {addr}: {other}"),
        }
    }
}

/// The innermost cause of a connection failure: an OS error as its kind says it ("connection
/// refused", "timed out"), otherwise the last message in the chain.
fn cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error.to_string();
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io.kind().to_string();
        }
        last = e.to_string();
        source = e.source();
    }
    last
}

/// An error and its sources, `a: b: c` (tonic's transport error alone says only "transport
/// error").
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Keeps the proxy configured from the control plane until `lifecycle` says leave or stop:
/// connect, subscribe, apply, and on any failure reconnect after a jittered, growing delay.
pub async fn run(opts: XdsOptions, state: Arc<ConfigState>, lifecycle: watch::Receiver<Lifecycle>) {
    run_with(opts, state, lifecycle, Convert::ENVOY).await;
}

pub(crate) async fn run_with(
    opts: XdsOptions,
    state: Arc<ConfigState>,
    mut shutdown: watch::Receiver<Lifecycle>,
    convert: Convert,
) {
    let mode = if opts.delta { Mode::Delta } else { Mode::Sotw };
    state.update_status(|s| {
        s.addr = opts.addr.clone();
        s.mode = mode;
        for t in ResourceType::ALL {
            s.types.entry(t.short().to_string()).or_default();
        }
    });
    info!(addr = %opts.addr, mode = ?mode, node = %opts.node.id, "xDS client starting");
    let mut held = Held::default();
    let mut backoff = Backoff::new(opts.backoff_base, opts.backoff_max);
    loop {
        let mut session = Session::new(&state, &mut held, convert);
        let mut leaving = shutdown.clone();
        let error = tokio::select! {
            error = connect_and_stream(&opts, &mut session, &mut leaving) => error,
            () = stopped(&mut shutdown) => break,
        };
        if matches!(error, XdsError::Left) {
            info!(addr = %opts.addr, "left the control plane (stream ended by this proxy); serving the last config while draining");
            break;
        }
        if session.responses > 0 {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let error = error.describe(&opts.addr);
        warn!(addr = %opts.addr, retry_in_ms = delay.as_millis(), "{error} (retrying in {:.1} s); serving the last good config", delay.as_secs_f64());
        state.update_status(|s| {
            s.connected = false;
            s.last_error = Some(error);
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = leaving_or_stopped(&mut shutdown) => break,
        }
    }
    state.update_status(|s| s.connected = false);
    info!(addr = %opts.addr, "xDS client stopped");
}

async fn stopped(lifecycle: &mut watch::Receiver<Lifecycle>) {
    wait_for(lifecycle, |l| l == Lifecycle::Stop).await;
}

/// Resolves once the proxy wants to leave (or stop).
pub(crate) async fn leaving_or_stopped(lifecycle: &mut watch::Receiver<Lifecycle>) {
    wait_for(lifecycle, |l| l != Lifecycle::Serve).await;
}

async fn wait_for(lifecycle: &mut watch::Receiver<Lifecycle>, f: impl Fn(Lifecycle) -> bool) {
    if lifecycle.wait_for(|l| f(*l)).await.is_err() {
        // Nobody can ask us to stop any more: run until the runtime ends.
        std::future::pending::<()>().await;
    }
}

async fn connect_and_stream(
    opts: &XdsOptions,
    session: &mut Session<'_>,
    lifecycle: &mut watch::Receiver<Lifecycle>,
) -> XdsError {
    let channel = tokio::select! {
        channel = connect(&opts.addr, opts.tls.as_ref()) => match channel {
            Ok(channel) => channel,
            Err(error) => return error,
        },
        // Not connected: nobody to tell.
        () = leaving_or_stopped(lifecycle) => return XdsError::Left,
    };
    if opts.delta {
        delta::stream(channel, opts.node.clone(), session, lifecycle).await
    } else {
        sotw::stream(channel, opts.node.clone(), session, lifecycle).await
    }
}

/// Ends a stream the proxy is leaving: the request side was closed (dropped by the caller);
/// waits, bounded, for the control plane to end its side, so it sees a clean half-close and
/// not a reset.
async fn leave<R>(mut inbound: tonic::Streaming<R>) -> XdsError {
    let drained = async { while let Ok(Some(_)) = inbound.message().await {} };
    if tokio::time::timeout(LEAVE_TIMEOUT, drained).await.is_err() {
        warn!("the control plane did not end the stream this proxy left; closing it");
    }
    XdsError::Left
}

async fn connect(addr: &str, tls: Option<&XdsTls>) -> Result<Channel, XdsError> {
    if let Some(tls) = tls {
        let auth = ClientAuth::Certificate(tls.credentials.clone());
        let accept = Accept::AnyOf(vec![tls.control_plane.clone()]);
        return jalur_identity::channel::connect(addr, auth, accept)
            .await
            .map_err(|e| XdsError::Tls(e.to_string()));
    }
    let uri = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| XdsError::Address {
        addr: addr.to_string(),
        source,
    })?;
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // TCP keepalive notices a control plane that vanished without closing the connection
        // (a dead VM, a dropped NAT entry), so the proxy reconnects instead of waiting on a
        // dead stream forever; HTTP/2 pings would also end healthy streams to a plane too busy
        // to answer within their timeout (`jalur_wire::keepalive`). tonic sets no
        // TCP_USER_TIMEOUT here; the TLS connector (15012) does.
        .tcp_keepalive(Some(jalur_wire::keepalive::IDLE))
        .tcp_keepalive_interval(Some(jalur_wire::keepalive::INTERVAL))
        .tcp_keepalive_retries(Some(jalur_wire::keepalive::RETRIES))
        .connect()
        .await
        .map_err(XdsError::Connect)
}

/// The error_detail of a NACK.
fn nack_status(message: String) -> RpcStatus {
    RpcStatus {
        code: INVALID_ARGUMENT,
        message,
        details: Vec::new(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One stream's access to the shared state: what both protocols do with a response.
pub(crate) struct Session<'a> {
    state: &'a ConfigState,
    held: &'a mut Held,
    convert: Convert,
    /// Responses received on this stream (a stream that got any was healthy).
    responses: u64,
}

impl<'a> Session<'a> {
    fn new(state: &'a ConfigState, held: &'a mut Held, convert: Convert) -> Session<'a> {
        Session {
            state,
            held,
            convert,
            responses: 0,
        }
    }

    fn held(&self) -> &Held {
        self.held
    }

    fn opened(&self) {
        self.state.update_status(|s| {
            s.connected = true;
            s.streams += 1;
            for t in s.types.values_mut() {
                t.subscribed.clear();
            }
        });
        info!(addr = %self.state.lock_status().addr, "xDS stream open");
    }

    /// Names of `rtype` the live snapshot calls for.
    fn wanted(&self, rtype: ResourceType) -> BTreeSet<String> {
        apply::wanted(rtype, &self.state.snapshot())
    }

    fn subscribed(&self, rtype: ResourceType, names: &BTreeSet<String>) {
        self.state
            .type_sync(rtype, |t| t.subscribed = names.iter().cloned().collect());
    }

    /// Applies one response: on success the new snapshot is live before this returns; on
    /// failure nothing changed and the error is the NACK's message.
    fn apply(
        &mut self,
        update: &Update,
        version: &str,
        nonce: &str,
        subscribed: &BTreeSet<String>,
    ) -> Result<(), String> {
        self.responses += 1;
        let rtype = update.rtype;
        let current = self.state.snapshot();
        match apply::apply(&current, update, self.convert) {
            Ok(next) => {
                self.held.accepted(update, version, subscribed, &next);
                let complete = self.held.complete(&next);
                info!(
                    r#type = rtype.short(),
                    version,
                    nonce,
                    resources = update.resources.len(),
                    removed = update.removed.len(),
                    listeners = next.listeners.len(),
                    routes = next.routes.len(),
                    clusters = next.clusters.len(),
                    endpoints = next.endpoints.len(),
                    complete,
                    "xDS config applied"
                );
                self.state.publish(next, complete);
                self.state.type_sync(rtype, |t| {
                    t.version = version.to_string();
                    t.nonce = nonce.to_string();
                    t.accepted = true;
                });
                Ok(())
            }
            Err(errors) => {
                let detail = apply::describe(&errors);
                warn!(r#type = rtype.short(), version, nonce, errors = errors.len(), %detail, "xDS response rejected (NACK); keeping the last good config");
                let nack = Nack {
                    version: version.to_string(),
                    nonce: nonce.to_string(),
                    detail: detail.clone(),
                    at_unix: unix_now(),
                };
                self.state.type_sync(rtype, |t| {
                    t.nonce = nonce.to_string();
                    t.accepted = false;
                    t.last_nack = Some(nack);
                });
                Err(detail)
            }
        }
    }
}
