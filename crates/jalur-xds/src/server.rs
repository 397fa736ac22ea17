//! The ADS gRPC service: one task per stream, fed by the client's requests and by the control
//! plane's generation counter, answering through a bounded channel so a slow client only ever
//! slows itself.

mod conn;
mod delta;
mod sotw;
mod track;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::StreamExt;
use tonic::codegen::http;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::{Convergence, Metrics};
use crate::resource::ClientSnapshot;
use crate::status::SyncRegistry;
use crate::Node;

/// Responses queued per stream before the stream task waits for the client to read.
const STREAM_BUFFER: usize = 16;

/// Errors of the ADS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind the xDS listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("xDS gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// The control plane's side of the server: who a client is and what it should see.
pub trait Generator: Send + Sync + 'static {
    /// Label for this client's kind, e.g. "sidecar", "gateway", "proxyless-grpc", "router".
    /// Used in metrics and status.
    fn client_kind(&self, node: &Node) -> String;

    /// All resources this client should currently see, built from ONE immutable config snapshot
    /// (so a (re)connecting client always gets a consistent set).
    fn generate(&self, node: &Node) -> Arc<ClientSnapshot>;

    /// May this stream's node be served? Called with the node of the first request and the
    /// request's extensions (what the transport knows about the connection, e.g. a verified
    /// client identity) before anything else: an `Err` ends the stream with that status and
    /// the node is never registered (`connected` is not called, so no traffic can be sent to
    /// it). Default: everyone.
    fn admit(&self, _node: &Node, _extensions: &http::Extensions) -> Result<(), Status> {
        Ok(())
    }

    /// A stream got its node (first request). The control plane registers the proxy's workload
    /// here. Called before the first `generate` for the stream.
    fn connected(&self, _conn_id: u64, _node: &Node) {}

    /// The client holds a complete config: it has ACKed every listener, route configuration,
    /// cluster and endpoint assignment of its snapshot, or its first request said it already
    /// holds one (a serving proxy reconnecting). Called at most once per `connected`. A proxy's
    /// workload becomes an endpoint only from here on: callers must not be sent to a proxy
    /// whose listeners and routes are not in place yet.
    fn ready(&self, _conn_id: u64, _node: &Node) {}

    /// The stream ended (client gone, error, or server shutdown). Called exactly once per
    /// `connected`, unless the client left (see [`Generator::left`]).
    fn disconnected(&self, _conn_id: u64, _node: &Node) {}

    /// The client ended its stream itself (a gRPC half-close): a proxy saying it is leaving,
    /// which `jalur proxy` does when it starts draining. Called instead of `disconnected`;
    /// a connection that merely broke (a crash, a network fault) is `disconnected`.
    fn left(&self, conn_id: u64, node: &Node) {
        self.disconnected(conn_id, node);
    }
}

/// State shared by every stream of one server.
pub(crate) struct Shared {
    pub(crate) generator: Arc<dyn Generator>,
    pub(crate) changes: watch::Receiver<u64>,
    pub(crate) sync: SyncRegistry,
    pub(crate) metrics: Metrics,
    pub(crate) convergence: Convergence,
    pub(crate) next_conn_id: AtomicU64,
    /// Flips to true to end every stream (server shutdown).
    pub(crate) closing: watch::Sender<bool>,
    /// False while the control plane is warming up: clients are registered (`connected`) as
    /// they come, but nobody is answered until it turns true.
    pub(crate) warm: watch::Receiver<bool>,
}

/// Handle to the ADS server. Cheap to clone; all clones serve the same clients.
#[derive(Clone)]
pub struct AdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("clients", &self.shared.sync.len())
            .finish()
    }
}

impl AdsServer {
    /// `changes` carries a generation counter bumped (already debounced) by the control plane
    /// whenever config or endpoints changed.
    pub fn new(generator: Arc<dyn Generator>, changes: watch::Receiver<u64>) -> AdsServer {
        AdsServer::with_warmup(generator, changes, watch::channel(true).1)
    }

    /// As [`AdsServer::new`], answering no client until `warm` is true: a restarted control
    /// plane first lets its registries fill (proxies reconnecting, Consul answering) so that no
    /// proxy receives an endpoint set that merely lacks instances not yet re-announced.
    pub fn with_warmup(
        generator: Arc<dyn Generator>,
        changes: watch::Receiver<u64>,
        warm: watch::Receiver<bool>,
    ) -> AdsServer {
        let (closing, _) = watch::channel(false);
        let shared = Shared {
            generator,
            changes,
            sync: SyncRegistry::new(),
            metrics: Metrics::new(),
            convergence: Convergence::default(),
            next_conn_id: AtomicU64::new(1),
            closing,
            warm,
        };
        AdsServer {
            shared: Arc::new(shared),
        }
    }

    /// Registers the `jalur_xds_*` metric families.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.shared
            .metrics
            .register(registry, self.shared.sync.clone());
    }

    /// Per-client sync status, for the status API.
    pub fn sync(&self) -> SyncRegistry {
        self.shared.sync.clone()
    }

    /// The gRPC service, to mount in a tonic `Server`.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(AdsService {
            shared: self.shared.clone(),
        })
    }

    /// Ends every open stream with `UNAVAILABLE` (clients reconnect elsewhere); streams opened
    /// afterwards are refused. Needed for a graceful shutdown, which otherwise waits for
    /// long-lived ADS streams forever.
    pub fn close_streams(&self) {
        self.shared.closing.send_replace(true);
    }

    /// Convenience: serve on an already-bound listener until `shutdown` resolves, then end all
    /// streams and wait for the connections to close.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "xDS server listening");
        // Clients that vanished without closing their connection (a killed VM, a dropped NAT
        // entry) are found by TCP keepalive, so their streams end and
        // `Generator::disconnected` runs; no HTTP/2 ping timeout can end a healthy stream
        // whose pong a busy server read late (`jalur_wire::keepalive`).
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            if let Ok(tcp) = &accepted {
                if let Err(error) = jalur_wire::keepalive::apply(tcp) {
                    tracing::warn!(%error, "xDS listener: cannot set TCP keepalive");
                }
            }
            accepted
        });
        let closer = self.clone();
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                tracing::info!("xDS server shutting down, closing streams");
                closer.close_streams();
            })
            .await
            .map_err(Error::Serve)
    }
}

/// Connections waiting to be accepted. tokio's default (1,024) overflowed when thousands of
/// proxies connected at once (a control plane restart, a fleet rollout): the kernel reset the
/// rest, and each came back later with a full sync. The kernel caps it at `net.core.somaxconn`.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Binds a TCP listener for [`AdsServer::serve`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    listen(addr).map_err(|source| Error::Bind { addr, source })
}

/// A listener for xDS on `addr`, with address reuse (a restarted plane takes its port back at
/// once) and an [`ACCEPT_BACKLOG`] deep accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The tonic service behind [`AdsServer::service`].
pub struct AdsService {
    shared: Arc<Shared>,
}

impl AdsService {
    fn refuse_if_closing(&self) -> Result<(), Status> {
        if *self.shared.closing.borrow() {
            return Err(Status::unavailable("xDS server is shutting down"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        self.refuse_if_closing()?;
        let peer = request.remote_addr();
        let (_, extensions, inbound) = request.into_parts();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = conn::run::<sotw::Sotw>(self.shared.clone(), inbound, tx, peer, extensions);
        tokio::spawn(session);
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        self.refuse_if_closing()?;
        let peer = request.remote_addr();
        let (_, extensions, inbound) = request.into_parts();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let session = conn::run::<delta::Delta>(self.shared.clone(), inbound, tx, peer, extensions);
        tokio::spawn(session);
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
