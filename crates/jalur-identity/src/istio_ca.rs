//! Istio's CA protocol, `istio.v1.auth.IstioCertificateService/CreateCertificate` (istio/api
//! `security/v1alpha1/ca.proto`): a CSR in, a PEM chain out (leaf first, root last), so Istio's
//! own agents could use jalur's CA. envoy-types does not carry these two messages; they are
//! declared here with prost and served by a hand-written tonic service (the codegen needs protoc).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::google::protobuf::Struct;
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::{Request, Response, Status};

use crate::SpiffeId;

/// The gRPC service name.
pub const SERVICE: &str = "istio.v1.auth.IstioCertificateService";
/// The one method's path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime in seconds; the CA may shorten it.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates, leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// What the TLS port (15012) knows about the connection a request came on; the server puts it in
/// the request's extensions (tonic's `Connected::ConnectInfo`), the CA and ADS read it.
#[derive(Debug, Clone, Default)]
pub struct TlsConnectInfo {
    pub remote: Option<SocketAddr>,
    /// The client certificate's SPIFFE id, verified against the trust bundle; `None` when the
    /// client came without one (only a bootstrap token may then authenticate it).
    pub peer: Option<SpiffeId>,
}

/// The CA behind the service.
#[tonic::async_trait]
pub trait CertificateAuthority: Send + Sync + 'static {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status>;
}

/// The tonic service: add it to a `tonic::transport::Server` router.
#[derive(Debug)]
pub struct IstioCertificateServiceServer<T> {
    inner: Arc<T>,
}

impl<T> IstioCertificateServiceServer<T> {
    pub fn new(inner: Arc<T>) -> Self {
        Self { inner }
    }
}

impl<T> Clone for IstioCertificateServiceServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> tonic::server::NamedService for IstioCertificateServiceServer<T> {
    const NAME: &'static str = SERVICE;
}

struct CreateCertificateSvc<T>(Arc<T>);

impl<T: CertificateAuthority> tonic::server::UnaryService<IstioCertificateRequest>
    for CreateCertificateSvc<T>
{
    type Response = IstioCertificateResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<IstioCertificateRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.create_certificate(request).await })
    }
}

impl<T, B> tonic::codegen::Service<http::Request<B>> for IstioCertificateServiceServer<T>
where
    T: CertificateAuthority,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CREATE_CERTIFICATE {
            return Box::pin(async move {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(CreateCertificateSvc(inner), req).await)
        })
    }
}

/// Asks the CA at the other end of `channel` to sign `csr_pem`. `bearer`: a bootstrap token for
/// the first certificate (renewals authenticate with the client certificate of the channel).
pub async fn create_certificate(
    channel: tonic::transport::Channel,
    csr_pem: String,
    validity: Duration,
    bearer: Option<&str>,
) -> Result<Vec<String>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("CA not reachable: {e}")))?;
    let mut request = Request::new(IstioCertificateRequest {
        csr: csr_pem,
        validity_duration: i64::try_from(validity.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    if let Some(token) = bearer {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
    let response: Response<IstioCertificateResponse> = grpc
        .unary(request, path, tonic_prost::ProstCodec::default())
        .await?;
    Ok(response.into_inner().cert_chain)
}
