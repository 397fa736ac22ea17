//! mTLS between two workloads whose certificates a test CA signed from their CSRs: the SPIFFE
//! verifiers accept the expected peer and refuse an unexpected id, another root, and a client
//! without a certificate where one is mandatory.

use std::sync::Arc;

use jalur_identity::verify::{client_config, peer_id, server_config, Accept};
use jalur_identity::{
    Credentials, CredentialsWatch, SpiffeId, TrustBundle, WorkloadCert, WorkloadKey,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl TestCa {
    fn new() -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        Self {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn credentials(&self, id: &SpiffeId) -> CredentialsWatch {
        let key = WorkloadKey::generate().expect("key");
        let csr = CertificateSigningRequestParams::from_pem(&key.csr_pem(id).expect("csr"))
            .expect("parse csr");
        let leaf = csr.signed_by(&self.issuer).expect("sign");
        let chain = format!("{}{}", leaf.pem(), self.root_pem);
        let cert = WorkloadCert::new(&key, &chain).expect("workload cert");
        assert_eq!(&cert.id, id);
        let bundle = TrustBundle::from_pem(&self.root_pem).expect("bundle");
        let creds = Credentials::new(cert, bundle).expect("credentials");
        tokio::sync::watch::channel(Arc::new(creds)).1
    }
}

async fn handshake(
    client: rustls::ClientConfig,
    server: rustls::ServerConfig,
) -> Result<Option<SpiffeId>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let server = tokio::spawn(async move {
        let mut tls = acceptor.accept(b).await.map_err(|e| e.to_string())?;
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| peer_id(c).expect("peer id"));
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(peer)
    });
    let name = ServerName::try_from("ignored.invalid").expect("name");
    let client = async {
        let mut tls = connector
            .connect(name, a)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    };
    let c = client.await;
    let s = server.await.expect("join");
    c.and(s)
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa)
}

#[tokio::test]
async fn mutual_tls_names_both_peers_and_refuses_strangers() {
    let ca = TestCa::new();
    let client = ca.credentials(&id("storefront"));
    let server = ca.credentials(&id("payments"));
    let td = Accept::TrustDomain("cluster.local".into());

    let peer = handshake(
        client_config(client.clone(), Accept::AnyOf(vec![id("payments")]), &[]).expect("c"),
        server_config(server.clone(), td.clone(), false, &[]).expect("s"),
    )
    .await
    .expect("handshake");
    assert_eq!(peer, Some(id("storefront")));

    // The client expects another service account: refused.
    let wrong = handshake(
        client_config(client.clone(), Accept::AnyOf(vec![id("ledger")]), &[]).expect("c"),
        server_config(server.clone(), td.clone(), false, &[]).expect("s"),
    )
    .await;
    assert!(wrong.is_err(), "an unexpected server id was accepted");

    // A server from another CA: refused.
    let stranger = TestCa::new().credentials(&id("payments"));
    let other_root = handshake(
        client_config(client.clone(), Accept::AnyOf(vec![id("payments")]), &[]).expect("c"),
        server_config(stranger, td.clone(), false, &[]).expect("s"),
    )
    .await;
    assert!(other_root.is_err(), "a chain to another root was accepted");

    // Another trust domain under the same root: refused by a trust-domain check.
    let foreign = ca.credentials(&SpiffeId::new("evil.example", "shop", "storefront"));
    let foreign_td = handshake(
        client_config(foreign, Accept::AnyOf(vec![id("payments")]), &[]).expect("c"),
        server_config(server.clone(), td.clone(), false, &[]).expect("s"),
    )
    .await;
    assert!(
        foreign_td.is_err(),
        "a client of another trust domain was accepted"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_passes_only_where_it_is_optional() {
    let ca = TestCa::new();
    let server = ca.credentials(&id("payments"));
    let td = Accept::TrustDomain("cluster.local".into());
    let bare = || client_config_without_cert(server.clone());
    let optional = handshake(
        bare(),
        server_config(server.clone(), td.clone(), true, &[]).expect("s"),
    )
    .await;
    assert_eq!(optional.expect("optional client auth"), None);
    let mandatory = handshake(
        bare(),
        server_config(server.clone(), td, false, &[]).expect("s"),
    )
    .await;
    assert!(
        mandatory.is_err(),
        "a client without a certificate was accepted"
    );
}

fn client_config_without_cert(creds: CredentialsWatch) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(jalur_identity::verify::SpiffeServerVerifier::new(
        creds,
        Accept::AnyOf(vec![id("payments")]),
    ))
    .with_no_client_auth()
}
