//! The control plane's TLS port (15012, `--xds-tls-addr`): ADS (SotW and delta) and Istio's
//! `IstioCertificateService` on one port, as istiod serves them.
//!
//! TLS presents the control plane's own certificate (`spiffe://TD/ns/ROOT_NS/sa/jalur-control`
//! from the CA, renewed in place) and verifies client certificates against the mesh's trust
//! bundle and trust domain. A client certificate is optional at the TLS layer, so a workload
//! with only a bootstrap token can ask for its first certificate; ADS requires one, and a node
//! may only announce the identity its certificate proves ([`admit`]): otherwise any process
//! that reaches the port could register itself as any service and attract its traffic.

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use jalur_identity::istio_ca::{IstioCertificateServiceServer, TlsConnectInfo};
use jalur_identity::verify::{server_config, Accept};
use jalur_identity::SpiffeId;
use jalur_xds::{AdsServer, PeerIdentity};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::Status;

use crate::ca::MeshCa;
use crate::node::ClientInfo;

/// The rustls config of 15012: the control plane's certificate (with `bind` as an IP SAN when it
/// is a specific address), clients of the mesh's trust domain, certificate optional, ALPN h2.
pub(crate) fn tls_config(
    ca: &MeshCa,
    bind: IpAddr,
) -> Result<Arc<rustls::ServerConfig>, crate::error::Error> {
    let ips: Vec<IpAddr> = [bind]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    let creds = ca.authority.server_credentials(&ips)?;
    let accept = Accept::TrustDomain(ca.authority.trust_domain().to_string());
    let config = server_config(creds, accept, true, &[b"h2"])
        .map_err(|e| crate::error::Error::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Serves ADS and the CA on `listener` until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    ads: AdsServer,
    ca: Arc<MeshCa>,
    mut shutdown: watch::Receiver<bool>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, "xDS + CA (TLS) listening");
    let incoming = jalur_identity::channel::incoming(listener, config);
    let closer = ads.clone();
    // Vanished clients are found by TCP keepalive, set by `incoming` on every connection.
    let served = tonic::transport::Server::builder()
        .add_service(InterceptedService::new(ads.service(), stream_peer))
        .add_service(IstioCertificateServiceServer::new(ca.service.clone()))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = shutdown.wait_for(|s| *s).await;
            closer.close_streams();
        })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "xDS TLS server stopped");
    }
}

/// Makes the TLS connection's facts visible to the ADS server, which knows no TLS: the remote
/// address where tonic's `remote_addr()` looks for it (our own acceptor's connect info is not
/// tonic's), and the client certificate's SPIFFE id, both shown by `/debug/syncz`.
fn stream_peer(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    let Some(tls) = request.extensions().get::<TlsConnectInfo>().cloned() else {
        return Ok(request);
    };
    let extensions = request.extensions_mut();
    extensions.insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: tls.remote,
    });
    if let Some(id) = tls.peer {
        extensions.insert(PeerIdentity(id.to_string()));
    }
    Ok(request)
}

/// Whether a node may be served on the stream it came on. Streams on 15012 carry a
/// [`TlsConnectInfo`]: they need a client certificate, and the node's namespace and service
/// account must be the certificate's. The plaintext port (`--insecure-xds`, development only)
/// has no identity to check.
pub(crate) fn admit(node: &Node, extensions: &http::Extensions) -> Result<(), Status> {
    let Some(tls) = extensions.get::<TlsConnectInfo>() else {
        return Ok(());
    };
    let Some(peer) = &tls.peer else {
        return Err(Status::unauthenticated(format!(
            "node {}: xDS on the TLS port needs a client certificate (a workload certificate \
             from the mesh CA); a bootstrap token only serves to ask for one",
            node.id
        )));
    };
    let client = ClientInfo::from_node(node);
    let account = client.service_account.clone();
    let announced = SpiffeId::new(
        peer.trust_domain.clone(),
        client.namespace.clone(),
        account.clone(),
    );
    if &announced != peer {
        return Err(Status::permission_denied(format!(
            "node {} announces {announced} (NAMESPACE {:?}, SERVICE_ACCOUNT {:?}) but its \
             certificate is {peer}: a proxy may only register the identity it proved",
            node.id, client.namespace, account
        )));
    }
    // Stricter than the account alone: a node registers endpoints of its service, and
    // callers send that service's traffic to them. Without Kubernetes nothing says which
    // accounts may run which service, so the service must be the one the identity names
    // (Istio's default of one account per service); otherwise a certificate for
    // `storefront` announcing service `payments` would attract payments' traffic.
    if let Some(service) = short_service(&client) {
        if service != peer.service_account {
            return Err(Status::permission_denied(format!(
                "node {} announces service {service:?} in namespace {:?} but its certificate \
                 is {peer}: a proxy may only register the service its identity names",
                node.id, client.namespace
            )));
        }
    }
    Ok(())
}

/// The node's service without any domain (`payments.shop.svc.cluster.local` → `payments`).
fn short_service(client: &ClientInfo) -> Option<&str> {
    client.service.as_deref().and_then(|s| s.split('.').next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jalur_wire::NodeMeta;

    fn node(ns: &str, service: &str, account: Option<&str>) -> Node {
        Node {
            id: format!("sidecar~127.0.0.1~{service}.{ns}~{ns}.svc.cluster.local"),
            metadata: Some(
                NodeMeta {
                    namespace: Some(ns.into()),
                    service: Some(service.into()),
                    service_account: account.map(str::to_string),
                    ..NodeMeta::default()
                }
                .to_struct(),
            ),
            ..Node::default()
        }
    }

    fn on_tls(peer: Option<&str>) -> http::Extensions {
        let mut ext = http::Extensions::new();
        ext.insert(TlsConnectInfo {
            remote: None,
            peer: peer.map(|p| p.parse().expect("id")),
        });
        ext
    }

    #[test]
    fn a_node_must_announce_the_identity_of_its_certificate() {
        let storefront = Some("spiffe://cluster.local/ns/shop/sa/storefront");
        // The account defaults to the service name.
        assert!(admit(&node("shop", "storefront", None), &on_tls(storefront)).is_ok());
        assert!(admit(
            &node("shop", "storefront", Some("storefront")),
            &on_tls(storefront)
        )
        .is_ok());
        // The certificate's account announcing another service: refused, naming both.
        let other_service = admit(
            &node("shop", "payments", Some("storefront")),
            &on_tls(storefront),
        )
        .expect_err("another service admitted");
        assert_eq!(other_service.code(), tonic::Code::PermissionDenied);
        assert!(
            other_service.message().contains("service \"payments\"")
                && other_service
                    .message()
                    .contains("spiffe://cluster.local/ns/shop/sa/storefront"),
            "{}",
            other_service.message()
        );
        let impostor = admit(&node("shop", "payments", None), &on_tls(storefront))
            .expect_err("impostor admitted");
        assert_eq!(impostor.code(), tonic::Code::PermissionDenied);
        assert!(
            impostor
                .message()
                .contains("announces spiffe://cluster.local/ns/shop/sa/payments")
                && impostor
                    .message()
                    .contains("certificate is spiffe://cluster.local/ns/shop/sa/storefront"),
            "{}",
            impostor.message()
        );
        let other_ns = admit(&node("bank", "storefront", None), &on_tls(storefront))
            .expect_err("other namespace admitted");
        assert_eq!(other_ns.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn ads_on_the_tls_port_needs_a_certificate_and_plaintext_has_none_to_check() {
        let anonymous = admit(&node("shop", "storefront", None), &on_tls(None))
            .expect_err("anonymous admitted");
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert!(admit(&node("shop", "payments", None), &http::Extensions::new()).is_ok());
    }
}
