//! The agent's SDS server over its real Unix socket, driven by a tonic SDS client the way Envoy
//! drives it: both secrets served with the right content, pushes on rotation and bundle change,
//! ACK and NACK not re-sending, unknown names answered with nothing, the key never in a log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use jalur_agent::sds::SECRET_TYPE_URL;
use jalur_agent::SdsSocket;
use jalur_identity::{Credentials, SpiffeId, TrustBundle, WorkloadCert};
use jalur_testkit::ca::TestCa;
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

fn id() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "payments")
}

/// Connects tonic to a Unix socket (tonic dials URIs; this dials the path whatever the URI).
#[derive(Clone)]
struct UdsConnector(PathBuf);

impl tower_service::Service<Uri> for UdsConnector {
    type Response = hyper_util::rt::TokioIo<UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                UnixStream::connect(path).await?,
            ))
        })
    }
}

async fn client(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
    let channel = Endpoint::from_static("http://sds.invalid")
        .connect_with_connector(UdsConnector(path.to_path_buf()))
        .await
        .expect("connect to the SDS socket");
    SecretDiscoveryServiceClient::new(channel)
}

struct SotwStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl SotwStream {
    async fn open(path: &Path) -> SotwStream {
        let (tx, rx) = mpsc::channel(8);
        let response = client(path)
            .await
            .stream_secrets(ReceiverStream::new(rx))
            .await
            .expect("stream");
        SotwStream {
            tx,
            rx: response.into_inner(),
        }
    }

    async fn send(&self, names: &[&str], answering: Option<&DiscoveryResponse>, nack: bool) {
        let request = DiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_string(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: answering
                .map(|r| r.version_info.clone())
                .unwrap_or_default(),
            response_nonce: answering.map(|r| r.nonce.clone()).unwrap_or_default(),
            error_detail: nack.then(|| RpcStatus {
                code: 3,
                message: "test rejects it".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.tx.send(request).await.expect("send");
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

fn secrets(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<Secret> {
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).expect("a Secret")
        })
        .collect()
}

fn names(secrets: &[Secret]) -> Vec<&str> {
    secrets.iter().map(|s| s.name.as_str()).collect()
}

fn inline(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).expect("utf8"),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// The certificate a `default` secret carries, checked to pair with its key.
fn workload_cert(secret: &Secret) -> WorkloadCert {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{} is not a TLS certificate", secret.name);
    };
    WorkloadCert::from_pem(
        &inline(tls.private_key.as_ref()),
        &inline(tls.certificate_chain.as_ref()),
    )
    .expect("chain and key pair up")
}

fn trusted_ca(secret: &Secret) -> String {
    let Some(secret::Type::ValidationContext(v)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    inline(v.trusted_ca.as_ref())
}

fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sds.sock")
}

#[tokio::test]
async fn sotw_serves_both_secrets_and_pushes_each_rotation_once() {
    let ca = TestCa::new();
    let (renew, creds) = ca.watch(&id(), HOUR);
    let dir = tempfile::tempdir().expect("tmp");
    let sds = SdsSocket::bind(&socket_path(&dir), creds)
        .await
        .expect("bind");
    let mut stream = SotwStream::open(sds.path()).await;

    stream.send(&["default", "ROOTCA"], None, false).await;
    let first = stream.next().await;
    let got = secrets(&first.resources);
    assert_eq!(names(&got), ["ROOTCA", "default"]);
    assert_eq!(trusted_ca(&got[0]), ca.root_pem());
    let cert = workload_cert(&got[1]);
    assert_eq!(cert.id, id());
    assert_eq!(cert.chain_pem(), renew.borrow().cert.chain_pem());

    // An ACK sends nothing: the next message on the stream is the rotation's push.
    stream
        .send(&["default", "ROOTCA"], Some(&first), false)
        .await;
    renew.send_replace(ca.credentials(&id(), HOUR));
    let pushed = stream.next().await;
    let got = secrets(&pushed.resources);
    assert_eq!(
        names(&got),
        ["ROOTCA", "default"],
        "SotW sends the whole set"
    );
    let rotated = workload_cert(&got[1]);
    assert_ne!(rotated.chain_pem(), cert.chain_pem(), "the new certificate");
    assert_eq!(rotated.chain_pem(), renew.borrow().cert.chain_pem());
    assert_ne!(pushed.version_info, first.version_info);

    // A NACK is not answered with the same secrets again; the next change is pushed.
    stream
        .send(&["default", "ROOTCA"], Some(&pushed), true)
        .await;
    renew.send_replace(ca.credentials(&id(), HOUR));
    let after_nack = stream.next().await;
    let got = secrets(&after_nack.resources);
    assert_eq!(
        workload_cert(&got[1]).chain_pem(),
        renew.borrow().cert.chain_pem(),
        "after a NACK the next message is the next rotation, not a re-send"
    );
    sds.shutdown().await;
    assert!(!socket_path(&dir).exists(), "the socket file is removed");
}

#[tokio::test]
async fn unknown_secret_names_are_answered_with_nothing() {
    let ca = TestCa::new();
    let (_renew, creds) = ca.watch(&id(), HOUR);
    let dir = tempfile::tempdir().expect("tmp");
    let sds = SdsSocket::bind(&socket_path(&dir), creds)
        .await
        .expect("bind");
    let mut stream = SotwStream::open(sds.path()).await;
    stream
        .send(&["file-cert:/etc/certs/x.pem"], None, false)
        .await;
    // Had the unknown name been answered, that answer would come first.
    stream
        .send(&["file-cert:/etc/certs/x.pem", "ROOTCA"], None, false)
        .await;
    let response = stream.next().await;
    assert_eq!(names(&secrets(&response.resources)), ["ROOTCA"]);
}

struct DeltaStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    async fn open(path: &Path) -> DeltaStream {
        let (tx, rx) = mpsc::channel(8);
        let response = client(path)
            .await
            .delta_secrets(ReceiverStream::new(rx))
            .await
            .expect("stream");
        DeltaStream {
            tx,
            rx: response.into_inner(),
        }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        let request = DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_string(),
            ..request
        };
        self.tx.send(request).await.expect("send");
    }

    async fn subscribe(&self, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

fn delta_secrets(response: &DeltaDiscoveryResponse) -> Vec<Secret> {
    let anys: Vec<_> = response
        .resources
        .iter()
        .map(|r| {
            let any = r.resource.clone().expect("a resource");
            let secret = Secret::decode(any.value.as_slice()).expect("a Secret");
            assert_eq!(secret.name, r.name);
            any
        })
        .collect();
    secrets(&anys)
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let ca = TestCa::new();
    let (renew, creds) = ca.watch(&id(), HOUR);
    let dir = tempfile::tempdir().expect("tmp");
    let sds = SdsSocket::bind(&socket_path(&dir), creds)
        .await
        .expect("bind");

    // A reconnecting Envoy that already holds the current ROOTCA is not sent it again.
    let mut first = DeltaStream::open(sds.path()).await;
    first.subscribe(&["ROOTCA"]).await;
    let rootca = first.next().await;
    let rootca_version = rootca.resources[0].version.clone();
    let mut stream = DeltaStream::open(sds.path()).await;
    stream
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: vec!["ROOTCA".into(), "default".into()],
            initial_resource_versions: [("ROOTCA".to_string(), rootca_version)].into(),
            ..Default::default()
        })
        .await;
    let response = stream.next().await;
    let got = delta_secrets(&response);
    assert_eq!(names(&got), ["default"]);
    assert_eq!(workload_cert(&got[0]).id, id());
    stream.ack(&response).await;

    // A certificate rotation sends `default` only.
    renew.send_replace(ca.credentials(&id(), HOUR));
    let response = stream.next().await;
    let got = delta_secrets(&response);
    assert_eq!(names(&got), ["default"]);
    assert_eq!(
        workload_cert(&got[0]).chain_pem(),
        renew.borrow().cert.chain_pem()
    );
    stream.ack(&response).await;

    // A bundle change (a second root distributed ahead of a root rotation), same certificate:
    // `ROOTCA` only.
    let next_root = TestCa::new();
    let bundle = TrustBundle::from_pem(&format!("{}{}", ca.root_pem(), next_root.root_pem()))
        .expect("bundle");
    let same = {
        let current = renew.borrow();
        WorkloadCert::from_pem(&current.cert.key_pem_secret(), &current.cert.chain_pem())
            .expect("same cert")
    };
    renew.send_replace(Arc::new(Credentials::new(same, bundle).expect("creds")));
    let response = stream.next().await;
    let got = delta_secrets(&response);
    assert_eq!(names(&got), ["ROOTCA"]);
    assert_eq!(trusted_ca(&got[0]).matches("BEGIN CERTIFICATE").count(), 2);
    sds.shutdown().await;
}

/// Collects every log line the agent writes while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_private_key_never_reaches_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: every task the server spawns logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let ca = TestCa::new();
    let (renew, creds) = ca.watch(&id(), HOUR);
    let key_pem = renew.borrow().cert.key_pem_secret();
    let dir = tempfile::tempdir().expect("tmp");
    let sds = SdsSocket::bind(&socket_path(&dir), creds)
        .await
        .expect("bind");
    let mut stream = SotwStream::open(sds.path()).await;
    stream.send(&["default", "nope"], None, false).await;
    let first = stream.next().await;
    stream.send(&["default", "nope"], Some(&first), true).await;
    let mut delta = DeltaStream::open(sds.path()).await;
    delta.subscribe(&["default"]).await;
    let _ = delta.next().await;
    sds.shutdown().await;

    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(text.contains("NACK"), "the capture works: {text}");
    assert!(text.contains("nope"), "unknown names are logged: {text}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "a line of the private key was logged");
    }
}
