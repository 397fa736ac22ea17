//! File secrets over the agent's SDS socket (a gateway's `file-cert:CHAIN~KEY` and
//! `file-root:CA`, Istio's names): served with the files' content beside `default`/`ROOTCA`,
//! pushed again when a file is replaced (rename over), kept when a replacement does not load,
//! and not answered while the files do not load. Also from a files-only socket (a gateway
//! Envoy without a mesh identity), where `default` is unknown.

mod common;

use common::*;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use jalur_agent::SdsSocket;
use jalur_testkit::ca::TestCa;
use jalur_testkit::pki::{replace, FileCa};

fn chain_of(secret: &Secret) -> String {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        panic!("{} is not a TLS certificate", secret.name);
    };
    inline(tls.certificate_chain.as_ref())
}

#[tokio::test]
async fn file_secrets_are_served_and_pushed_when_replaced() {
    let ca = TestCa::new();
    let (_renew, creds) = ca.watch(&id(), HOUR);
    let dir = tempfile::tempdir().expect("tmp");
    let edge = FileCa::new("edge CA");
    let leaf = edge.leaf(&["gw.example.com"]);
    let (cert, key) = leaf.write(dir.path(), "gw");
    let root = edge.write_root(dir.path(), "ca.pem");
    let cert_name = format!("file-cert:{}~{}", cert.display(), key.display());
    let root_name = format!("file-root:{}", root.display());
    let sds = SdsSocket::bind(&socket_path(&dir), creds)
        .await
        .expect("bind");
    let mut stream = SotwStream::open(sds.path()).await;

    let asked = ["default", cert_name.as_str(), root_name.as_str()];
    stream.send(&asked, None, false).await;
    let first = stream.next().await;
    let got = secrets(&first.resources);
    assert_eq!(
        names(&got),
        ["default", cert_name.as_str(), root_name.as_str()]
    );
    assert_eq!(chain_of(&got[1]), leaf.chain_pem);
    assert_eq!(trusted_ca(&got[2]), edge.root_pem);
    stream.send(&asked, Some(&first), false).await;

    // Rotation as operators do it: the key first (the pair does not load: nothing is pushed),
    // then the certificate; one push with the new pair.
    let next = edge.leaf(&["gw.example.com"]);
    replace(&key, &next.key_pem);
    replace(&cert, &next.chain_pem);
    let pushed = stream.next().await;
    let got = secrets(&pushed.resources);
    assert_eq!(
        chain_of(&got[1]),
        next.chain_pem,
        "the replaced certificate"
    );
    stream.send(&asked, Some(&pushed), false).await;

    // A replacement that does not load is not pushed; the next good one is.
    replace(&root, "not a certificate");
    let other = FileCa::new("edge CA 2");
    // Not a readiness wait: the bad content must be on disk for a whole poll period, or the
    // watch might never look at it and the case would test nothing.
    tokio::time::sleep(jalur_identity::files::POLL + std::time::Duration::from_millis(500)).await;
    replace(&root, &other.root_pem);
    let pushed = stream.next().await;
    let got = secrets(&pushed.resources);
    assert_eq!(
        trusted_ca(&got[2]),
        other.root_pem,
        "the push after a bad file carries the next good one"
    );
    sds.shutdown().await;
}

#[tokio::test]
async fn a_files_only_socket_serves_files_and_not_the_mesh_names() {
    let dir = tempfile::tempdir().expect("tmp");
    let edge = FileCa::new("edge CA");
    let (cert, key) = edge.leaf(&["gw.example.com"]).write(dir.path(), "gw");
    let cert_name = format!("file-cert:{}~{}", cert.display(), key.display());
    let missing = format!("file-root:{}", dir.path().join("missing.pem").display());
    let sds = SdsSocket::bind_files_only(&socket_path(&dir))
        .await
        .expect("bind");
    let mut stream = SotwStream::open(sds.path()).await;
    stream
        .send(
            &["default", cert_name.as_str(), missing.as_str()],
            None,
            false,
        )
        .await;
    let first = stream.next().await;
    let got = secrets(&first.resources);
    assert_eq!(
        names(&got),
        [cert_name.as_str()],
        "no mesh identity: default unknown; a missing file: not answered"
    );
    sds.shutdown().await;
}
