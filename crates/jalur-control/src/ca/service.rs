//! `CreateCertificate`: who is asking, then the [`Authority`] signs.
//!
//! The caller is the client certificate's SPIFFE id (a renewal: the 15012 server verified the
//! chain and put the id in [`TlsConnectInfo`]) or, without one, a bootstrap token in
//! `authorization: Bearer`. Each kind of credential is a [`WorkloadAuthenticator`]; Kubernetes
//! service-account tokens would be one more.

use std::sync::Arc;
use std::time::Duration;

use jalur_identity::istio_ca::{
    CertificateAuthority, IstioCertificateRequest, IstioCertificateResponse, TlsConnectInfo,
};
use jalur_identity::SpiffeId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::Authority;

/// One kind of workload credential.
pub trait WorkloadAuthenticator: Send + Sync + 'static {
    /// The caller's id if this kind of credential was presented and is good; `Ok(None)` when
    /// it was not presented at all (the next authenticator is asked); an error when it was
    /// presented and is bad (no other credential is tried: a bad token is not a fallback).
    fn authenticate(
        &self,
        metadata: &MetadataMap,
        tls: Option<&TlsConnectInfo>,
    ) -> Result<Option<SpiffeId>, Status>;

    /// A certificate was signed on this credential. An error discards it (a one-shot token
    /// another request spent first).
    fn issued(&self, _metadata: &MetadataMap) -> Result<(), Status> {
        Ok(())
    }
}

/// The client certificate the 15012 server verified against the trust bundle.
#[derive(Debug, Default)]
pub struct ClientCertAuthenticator;

impl WorkloadAuthenticator for ClientCertAuthenticator {
    fn authenticate(
        &self,
        _metadata: &MetadataMap,
        tls: Option<&TlsConnectInfo>,
    ) -> Result<Option<SpiffeId>, Status> {
        Ok(tls.and_then(|t| t.peer.clone()))
    }
}

/// `jalur_ca_certificates_issued_total`, `jalur_ca_requests_refused_total{reason}`.
#[derive(Clone, Default)]
pub struct CaMetrics {
    pub issued: Counter,
    pub refused: Family<Vec<(String, String)>, Counter>,
}

impl CaMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "jalur_ca_certificates_issued",
            "Workload certificates the CA signed",
            self.issued.clone(),
        );
        registry.register(
            "jalur_ca_requests_refused",
            "CreateCertificate requests refused, by reason (unauthenticated, permission_denied, \
             invalid_request, ca_unavailable)",
            self.refused.clone(),
        );
    }

    fn refuse(&self, status: &Status) {
        let reason = match status.code() {
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::InvalidArgument => "invalid_request",
            _ => "ca_unavailable",
        };
        self.refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }
}

/// The CA behind `istio.v1.auth.IstioCertificateService`: serve it with
/// `IstioCertificateServiceServer::new(Arc::new(service))`.
pub struct CaService {
    authority: Arc<Authority>,
    authenticators: Vec<Arc<dyn WorkloadAuthenticator>>,
    metrics: CaMetrics,
}

impl CaService {
    /// `authenticators` are asked in order; the first that recognises a credential decides.
    pub fn new(
        authority: Arc<Authority>,
        authenticators: Vec<Arc<dyn WorkloadAuthenticator>>,
        metrics: CaMetrics,
    ) -> Self {
        Self {
            authority,
            authenticators,
            metrics,
        }
    }

    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// Authenticates, signs, and lets the authenticator spend what it must.
    pub fn sign(
        &self,
        metadata: &MetadataMap,
        tls: Option<&TlsConnectInfo>,
        request: &IstioCertificateRequest,
    ) -> Result<Vec<String>, Status> {
        let (caller, authenticator) = self.authenticate(metadata, tls)?;
        let requested = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let chain = self.authority.sign_csr(&request.csr, &caller, requested)?;
        authenticator.issued(metadata)?;
        tracing::info!(id = %caller, remote = ?tls.and_then(|t| t.remote), "workload certificate issued");
        Ok(chain)
    }

    fn authenticate(
        &self,
        metadata: &MetadataMap,
        tls: Option<&TlsConnectInfo>,
    ) -> Result<(SpiffeId, &Arc<dyn WorkloadAuthenticator>), Status> {
        for authenticator in &self.authenticators {
            if let Some(id) = authenticator.authenticate(metadata, tls)? {
                return Ok((id, authenticator));
            }
        }
        Err(Status::unauthenticated(
            "no client certificate and no bearer token",
        ))
    }
}

#[tonic::async_trait]
impl CertificateAuthority for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let tls = request.extensions().get::<TlsConnectInfo>().cloned();
        match self.sign(request.metadata(), tls.as_ref(), request.get_ref()) {
            Ok(cert_chain) => {
                self.metrics.issued.inc();
                Ok(Response::new(IstioCertificateResponse { cert_chain }))
            }
            Err(status) => {
                self.metrics.refuse(&status);
                tracing::warn!(
                    remote = ?tls.as_ref().and_then(|t| t.remote),
                    code = ?status.code(),
                    reason = status.message(),
                    "certificate request refused"
                );
                Err(status)
            }
        }
    }
}
