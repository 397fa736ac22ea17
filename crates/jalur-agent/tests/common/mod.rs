//! An SDS client that speaks to the agent's socket the way Envoy does (shared by the SDS tests).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
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
use jalur_identity::{SpiffeId, WorkloadCert};
use prost::Message;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

pub const HOUR: Duration = Duration::from_secs(3600);
pub const WAIT: Duration = Duration::from_secs(10);

pub fn id() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "payments")
}

/// Connects tonic to a Unix socket (tonic dials URIs; this dials the path whatever the URI).
#[derive(Clone)]
pub struct UdsConnector(pub PathBuf);

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

pub async fn client(path: &Path) -> SecretDiscoveryServiceClient<Channel> {
    let channel = Endpoint::from_static("http://sds.invalid")
        .connect_with_connector(UdsConnector(path.to_path_buf()))
        .await
        .expect("connect to the SDS socket");
    SecretDiscoveryServiceClient::new(channel)
}

pub struct SotwStream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
}

impl SotwStream {
    pub async fn open(path: &Path) -> SotwStream {
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

    pub async fn send(&self, names: &[&str], answering: Option<&DiscoveryResponse>, nack: bool) {
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

    pub async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

pub fn secrets(resources: &[envoy_types::pb::google::protobuf::Any]) -> Vec<Secret> {
    resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).expect("a Secret")
        })
        .collect()
}

pub fn names(secrets: &[Secret]) -> Vec<&str> {
    secrets.iter().map(|s| s.name.as_str()).collect()
}

pub fn inline(source: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>) -> String {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).expect("utf8"),
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

/// The certificate a `default` secret carries, checked to pair with its key.
pub fn workload_cert(secret: &Secret) -> WorkloadCert {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{} is not a TLS certificate", secret.name);
    };
    WorkloadCert::from_pem(
        &inline(tls.private_key.as_ref()),
        &inline(tls.certificate_chain.as_ref()),
    )
    .expect("chain and key pair up")
}

pub fn trusted_ca(secret: &Secret) -> String {
    let Some(secret::Type::ValidationContext(v)) = &secret.r#type else {
        panic!("{} is not a validation context", secret.name);
    };
    inline(v.trusted_ca.as_ref())
}

pub fn socket_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("sds.sock")
}

pub struct DeltaStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    pub async fn open(path: &Path) -> DeltaStream {
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

    pub async fn send(&self, request: DeltaDiscoveryRequest) {
        let request = DeltaDiscoveryRequest {
            type_url: SECRET_TYPE_URL.to_string(),
            ..request
        };
        self.tx.send(request).await.expect("send");
    }

    pub async fn subscribe(&self, names: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
    }

    pub async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    pub async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }
}

pub fn delta_secrets(response: &DeltaDiscoveryResponse) -> Vec<Secret> {
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
