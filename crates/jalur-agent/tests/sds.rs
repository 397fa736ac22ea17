//! The agent's SDS server over its real Unix socket, driven by a tonic SDS client the way Envoy
//! drives it: both secrets served with the right content, pushes on rotation and bundle change,
//! ACK and NACK not re-sending, unknown names answered with nothing.

mod common;

use std::sync::Arc;

use common::*;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use jalur_agent::SdsSocket;
use jalur_identity::{Credentials, TrustBundle, WorkloadCert};
use jalur_testkit::ca::TestCa;

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
