//! The SDS server Envoy's `sds-grpc` cluster talks to: Istio's secret names `default` and
//! `ROOTCA`, built from the current [`Credentials`], and `file-cert:CHAIN~KEY` /
//! `file-root:CA`, read from those files (`sds/files.rs`); each pushed again on every change.
//! A gateway's Envoy without a mesh identity gets the file names only
//! ([`SdsSocket::bind_files_only`]).
//!
//! Each Envoy SDS subscription is its own gRPC stream; one task per stream follows both the
//! stream's requests and the credentials watch (`sotw.rs`, `delta.rs` keep what each stream
//! was sent). Responses carry the private key, so nothing here ever formats a response, a
//! secret or a `Credentials` into a log line: logs name secrets and versions only.

mod delta;
mod files;
mod sotw;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::{AgentError, Credentials, CredentialsWatch};

/// The type every SDS request and response carries.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
/// Istio's name for the workload's certificate chain and key.
pub const DEFAULT: &str = "default";
/// Istio's name for the roots peers are verified against.
pub const ROOTCA: &str = "ROOTCA";

/// One secret as a stream sends it: its content version and the packed `Secret`.
pub(crate) struct Built {
    pub version: String,
    pub any: Any,
}

/// What secrets are built from at one moment: the workload's credentials (none for a
/// gateway without a mesh identity) and the file secrets.
pub(crate) struct Sources<'a> {
    pub creds: Option<&'a Credentials>,
    pub files: &'a files::FileSecrets,
}

/// The secret `name` from `src`, or `None` for a name this agent does not serve (or whose
/// files do not load).
pub(crate) fn build(name: &str, src: &Sources<'_>) -> Option<Built> {
    let file = || src.files.build(name);
    let creds = || src.creds;
    let (content_id, kind) = match name {
        DEFAULT => {
            let creds = creds()?;
            let chain = creds.cert.chain_pem();
            // The version hashes the chain only: the chain certifies the key, so it changes
            // whenever the key does, and no digest of the key itself leaves the process.
            let version = content_version(chain.as_bytes());
            let tls = TlsCertificate {
                certificate_chain: Some(inline(chain.into_bytes())),
                private_key: Some(inline(creds.cert.key_pem_secret().into_bytes())),
                ..Default::default()
            };
            (version, secret::Type::TlsCertificate(tls))
        }
        ROOTCA => {
            let roots = creds()?.bundle.to_pem();
            let version = content_version(roots.as_bytes());
            let validation = CertificateValidationContext {
                trusted_ca: Some(inline(roots.into_bytes())),
                ..Default::default()
            };
            (version, secret::Type::ValidationContext(validation))
        }
        _ => file()?,
    };
    let secret = Secret {
        name: name.to_string(),
        r#type: Some(kind),
    };
    Some(Built {
        version: content_id,
        any: envoy_types::util::pack_any(secret),
    })
}

fn inline(bytes: Vec<u8>) -> DataSource {
    DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    }
}

/// A short content hash: equal content, equal version, on every agent.
pub(crate) fn content_version(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs, once per stream and name, a secret name this agent does not serve. Such names are
/// answered with nothing: Envoy keeps waiting for them, and the log says why.
#[derive(Default)]
pub(crate) struct UnknownNames(BTreeSet<String>);

impl UnknownNames {
    pub fn note<'a>(&mut self, stream: u64, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            let known = name == DEFAULT
                || name == ROOTCA
                || jalur_identity::files::FileSecret::parse(name).is_some();
            if !known && self.0.insert(name.clone()) {
                warn!(stream, secret = %name, "Envoy asked for a secret this agent does not serve (only {DEFAULT}, {ROOTCA}, file-cert: and file-root:); not answering it");
            }
        }
    }
}

/// What one SDS stream keeps between messages (state of the world in `sotw.rs`, delta in
/// `delta.rs`): it answers Envoy's requests and decides what a change of credentials pushes.
pub(crate) trait StreamState: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// A request from Envoy: a subscription, an ACK or a NACK.
    fn on_request(&mut self, req: &Self::Request, src: &Sources<'_>) -> Option<Self::Response>;
    /// New credentials or files: a push when a secret the stream holds changed.
    fn on_change(&mut self, src: &Sources<'_>) -> Option<Self::Response>;
}

/// Serves one stream with `state` until Envoy closes it, the server stops, or the response
/// channel closes.
pub(crate) async fn serve<S: StreamState>(
    stream: u64,
    mut state: S,
    mut requests: Streaming<S::Request>,
    service: SdsService,
    tx: Out<S::Response>,
) {
    let mut creds = service.creds.clone();
    let mut creds_open = creds.is_some();
    let files = &service.files;
    let mut files_changed = files.subscribe();
    let mut stop = service.stop.subscribe();
    let current = |creds: &mut Option<CredentialsWatch>| {
        creds.as_mut().map(|c| c.borrow_and_update().clone())
    };
    loop {
        let push = tokio::select! {
            req = requests.message() => match req {
                Ok(Some(req)) => {
                    let now = current(&mut creds);
                    state.on_request(&req, &Sources { creds: now.as_deref(), files })
                }
                Ok(None) => break,
                Err(status) => {
                    debug!(stream, "SDS stream ended: {}", status.message());
                    break;
                }
            },
            changed = async { creds.as_mut()?.changed().await.ok() }, if creds_open => {
                if changed.is_none() {
                    // Nobody will renew any more: keep answering with what there is.
                    creds_open = false;
                    None
                } else {
                    let now = current(&mut creds);
                    state.on_change(&Sources { creds: now.as_deref(), files })
                }
            }
            Ok(()) = files_changed.changed() => {
                let now = current(&mut creds);
                state.on_change(&Sources { creds: now.as_deref(), files })
            }
            _ = stop.changed() => {
                let _ = tx.send(Err(Status::unavailable("jalur agent is shutting down"))).await;
                break;
            }
            () = tx.closed() => break,
        };
        if let Some(response) = push {
            if tx.send(Ok(response)).await.is_err() {
                break;
            }
        }
    }
    debug!(stream, "SDS stream closed");
}

/// The tonic service over one credentials watch (if any) and the file secrets asked for.
#[derive(Clone)]
pub struct SdsService {
    creds: Option<CredentialsWatch>,
    files: files::FileSecrets,
    streams: Arc<std::sync::atomic::AtomicU64>,
    /// Set on shutdown: every open stream ends (Envoy never closes its SDS streams itself).
    stop: Arc<watch::Sender<bool>>,
}

impl SdsService {
    pub fn new(creds: CredentialsWatch) -> Self {
        Self::with(Some(creds))
    }

    /// Serves file secrets only (a gateway's Envoy without a mesh identity).
    pub fn files_only() -> Self {
        Self::with(None)
    }

    fn with(creds: Option<CredentialsWatch>) -> Self {
        let stop = watch::channel(false).0;
        Self {
            creds,
            files: files::FileSecrets::new(stop.subscribe()),
            streams: Arc::default(),
            stop: Arc::new(stop),
        }
    }

    /// Ends every open stream with UNAVAILABLE.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn next_stream(&self) -> u64 {
        self.streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }
}

type Out<T> = mpsc::Sender<Result<T, Status>>;

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let stream = self.next_stream();
        debug!(stream, "SDS stream opened (state of the world)");
        tokio::spawn(serve(
            stream,
            sotw::Sotw::new(stream),
            request.into_inner(),
            self.clone(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let stream = self.next_stream();
        debug!(stream, "SDS stream opened (delta)");
        tokio::spawn(serve(
            stream,
            delta::Delta::new(stream),
            request.into_inner(),
            self.clone(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let request = request.into_inner();
        let creds = self.creds.as_ref().map(|c| c.borrow().clone());
        let src = Sources {
            creds: creds.as_deref(),
            files: &self.files,
        };
        let mut unknown = UnknownNames::default();
        unknown.note(0, &request.resource_names);
        let built: Vec<(String, Built)> = request
            .resource_names
            .iter()
            .filter_map(|n| build(n, &src).map(|b| (n.clone(), b)))
            .collect();
        Ok(Response::new(sotw::response(&built, String::new())))
    }
}

/// A running SDS server on a private Unix socket. Dropping it stops serving and removes the
/// socket file; [`SdsSocket::shutdown`] does the same and waits for the server to end.
pub struct SdsSocket {
    path: PathBuf,
    service: SdsService,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SdsSocket {
    /// Binds `path` (mode 0600, see `socket.rs`) and serves the secrets of `creds` (and file
    /// secrets) on it.
    pub async fn bind(path: &Path, creds: CredentialsWatch) -> Result<SdsSocket, AgentError> {
        SdsSocket::bind_service(path, SdsService::new(creds)).await
    }

    /// Binds `path` and serves file secrets only (`file-cert:`, `file-root:`): the Envoy of a
    /// gateway that holds no mesh identity.
    pub async fn bind_files_only(path: &Path) -> Result<SdsSocket, AgentError> {
        SdsSocket::bind_service(path, SdsService::files_only()).await
    }

    async fn bind_service(path: &Path, sds: SdsService) -> Result<SdsSocket, AgentError> {
        let listener = crate::socket::bind_private(path).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let service = SecretDiscoveryServiceServer::new(sds.clone());
        let shown = path.display().to_string();
        let task = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                warn!(socket = %shown, "SDS server ended: {e}");
            }
        });
        info!(socket = %path.display(), mesh = sds.creds.is_some(), "serving SDS secrets ({DEFAULT} and {ROOTCA} with a mesh identity; file-cert: and file-root: always)");
        Ok(SdsSocket {
            path: path.to_path_buf(),
            service: sds,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends the open streams and removes the socket file.
    pub async fn shutdown(mut self) {
        self.service.stop();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // The streams were told to end; a connection that will not close is cut.
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SdsSocket {
    fn drop(&mut self) {
        self.service.stop();
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
