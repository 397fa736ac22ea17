//! `/debug/syncz` shows, for a stream on the control plane's TLS port (15012), where the proxy
//! connects from (`peer`) and the SPIFFE id its client certificate proved (`identity`); on the
//! plaintext port `identity` is absent (nothing was proved there).

mod common;

use std::time::Duration;

use common::{jalur_sidecar, Plane};
use jalur_control::Options;
use jalur_identity::rotate::{CertRotator, RotatorOptions};
use jalur_identity::SpiffeId;
use jalur_proxy::run::ProxyOptions;
use jalur_testkit::{assert_eventually, http_get};

const DEADLINE: Duration = Duration::from_secs(20);

/// The `/debug/syncz` entry of `node_id`.
async fn syncz_entry(plane: &Plane, node_id: &str) -> Result<serde_json::Value, String> {
    let status = plane.control().status_addr;
    let (_, _, body) = http_get(status, "c", "/debug/syncz", &[]).await?;
    let all: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    all.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["node_id"] == node_id)
        .cloned()
        .ok_or_else(|| format!("{node_id} not in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncz_names_the_peer_and_its_proven_identity_on_15012() {
    let opts = Options {
        ca: Some(jalur_control::ca::CaOptions::default()),
        xds_tls_addr: ([127, 0, 0, 1], 0).into(),
        ..Plane::options()
    };
    let plane = Plane::start_with(&[], opts).await;
    let tls = plane.control().xds_tls_addr.expect("15012 served");
    let ca = plane.control().state.ca.as_ref().expect("CA");
    let token = ca
        .tokens
        .create("shop", "storefront", Duration::from_secs(600), false)
        .expect("token")
        .token;
    let id = SpiffeId::new("cluster.local", "shop", "storefront");
    let mut rotator = RotatorOptions::new(
        format!("https://{tls}"),
        id.clone(),
        plane.dir.join(".jalur/ca/trust-bundle.pem"),
    );
    rotator.token = Some(token);
    let identity = CertRotator::start(rotator).await.expect("a certificate");

    let (secure, _) = jalur_sidecar(ProxyOptions {
        xds: format!("https://{tls}"),
        credentials: Some(identity.credentials()),
        ..ProxyOptions::loopback(tls, "storefront", "shop")
    })
    .await;
    let (plain, _) = jalur_sidecar(ProxyOptions::loopback(plane.xds, "legacy", "shop")).await;

    let entry = assert_eventually("the TLS stream in syncz", DEADLINE, || async {
        syncz_entry(&plane, &secure.node_id).await
    })
    .await;
    let peer = entry["peer"].as_str().unwrap_or_default();
    let addr: std::net::SocketAddr = peer
        .parse()
        .unwrap_or_else(|e| panic!("peer {peer:?} is not an address ({e}): {entry}"));
    assert!(
        addr.ip().is_loopback() && addr.port() != 0 && addr.port() != tls.port(),
        "peer {addr} is not the proxy's side of the connection"
    );
    assert_eq!(entry["identity"], id.to_string(), "{entry}");

    let entry = assert_eventually("the plaintext stream in syncz", DEADLINE, || async {
        syncz_entry(&plane, &plain.node_id).await
    })
    .await;
    assert!(entry["peer"].is_string(), "{entry}");
    assert!(entry.get("identity").is_none(), "{entry}");
}
