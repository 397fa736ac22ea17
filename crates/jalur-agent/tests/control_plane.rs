//! The agent and stock Envoy against a real control plane with its CA and TLS xDS port (15012,
//! no plaintext port): the agent gets its certificate with a bootstrap token, Envoy starts from
//! the bootstrap the agent wrote, syncs over mTLS with the agent's SDS secrets (`/debug/syncz`
//! shows it in sync) and routes traffic with the config it got there.

use std::net::SocketAddr;
use std::time::Duration;

use jalur_agent::bootstrap::{control_plane_id, ControlPlane, EnvoyBootstrap};
use jalur_agent::{Agent, AgentOptions};
use jalur_control::ca::CaOptions;
use jalur_control::{ControlPlane as Plane, Options};
use jalur_identity::rotate::RotatorOptions;
use jalur_identity::SpiffeId;
use jalur_testkit::yaml::{service_entry, workload_entry};
use jalur_testkit::{assert_eventually, envoy_binary, http_get, require_peer, EchoServer, Envoy};
use jalur_wire::NodeMeta;

const HOST: &str = "reviews.bookinfo.svc.cluster.local";
const NODE: &str = "sidecar~127.0.0.1~productpage-1.bookinfo~bookinfo.svc.cluster.local";

async fn secure_plane(dir: &tempfile::TempDir, backend: SocketAddr) -> Plane {
    let config = dir.path().join("config");
    std::fs::create_dir(&config).expect("config dir");
    std::fs::write(
        config.join("svc.yaml"),
        service_entry("reviews", "bookinfo", HOST),
    )
    .expect("write");
    std::fs::write(
        config.join("we.yaml"),
        workload_entry("reviews", "v1", "bookinfo", backend),
    )
    .expect("write");
    let opts = Options {
        config: vec![config],
        state_dir: Some(dir.path().join("state")),
        ca: Some(CaOptions::default()),
        insecure_xds: false,
        xds_addr: ([127, 0, 0, 1], 0).into(),
        xds_tls_addr: ([127, 0, 0, 1], 0).into(),
        status_addr: ([127, 0, 0, 1], 0).into(),
        debounce: Duration::from_millis(20),
        registry_grace: Duration::ZERO,
        ..Options::default()
    };
    Plane::start(opts).await.expect("control plane with a CA")
}

async fn syncz_entry(status: SocketAddr, node: &str) -> Result<serde_json::Value, String> {
    let (code, _, body) = http_get(status, "status", "/debug/syncz", &[]).await?;
    if code != 200 {
        return Err(format!("syncz: {code} {body}"));
    }
    let all: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    all.as_array()
        .and_then(|a| a.iter().find(|c| c["node_id"] == node))
        .cloned()
        .ok_or_else(|| format!("{node} not in syncz: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_syncs_over_mtls_with_the_agents_certificate() {
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let backend = EchoServer::start("v1").await;
    let dir = tempfile::TempDir::with_prefix("jalur-agent-cp-").expect("tmp");
    let plane = secure_plane(&dir, backend.addr()).await;
    let tls = plane.xds_tls_addr.expect("the TLS xDS port");
    let ca = plane.state.ca.clone().expect("the mesh CA");
    let id = SpiffeId::new("cluster.local", "bookinfo", "productpage");
    let token = ca
        .tokens
        .create("bookinfo", "productpage", Duration::from_secs(600), false)
        .expect("token")
        .token;

    let url = format!("https://{tls}");
    let mut rotator = RotatorOptions::new(
        &url,
        id.clone(),
        dir.path().join("state/ca/trust-bundle.pem"),
    );
    rotator.token = Some(token);
    let socket = dir.path().join("sds.sock");
    let cp = ControlPlane::from_url(&url, control_plane_id("cluster.local", "jalur-system"))
        .expect("url");
    let mut bootstrap = EnvoyBootstrap::new(&id, NODE, &socket, cp);
    bootstrap.admin = ([127, 0, 0, 1], 0).into();
    bootstrap.meta = NodeMeta {
        service: Some("productpage".into()),
        ephemeral_ports: true,
        listen_address: Some("127.0.0.1".into()),
        ..bootstrap.meta
    };
    let bootstrap_path = dir.path().join("envoy.json");
    let agent = Agent::start(AgentOptions {
        rotator,
        sds_socket: socket,
        envoy_bootstrap: Some((bootstrap_path.clone(), bootstrap)),
    })
    .await
    .expect("the agent gets its certificate with the token");

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bootstrap_path).expect("bootstrap"))
            .expect("JSON");
    let envoy = Envoy::start_with_bootstrap(&binary, &written)
        .await
        .expect("Envoy starts");
    let port = envoy
        .listener_port("outbound")
        .await
        .expect("listeners arrive over 15012");
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    jalur_testkit::assert_serves(
        "Envoy routes with that config",
        proxy,
        HOST,
        "v1",
        Duration::from_secs(20),
    )
    .await;
    let entry = assert_eventually(
        "syncz shows Envoy in sync",
        Duration::from_secs(10),
        || async {
            let entry = syncz_entry(plane.status_addr, NODE).await?;
            if entry["in_sync"] == true {
                Ok(entry)
            } else {
                Err(format!("not in sync: {entry}"))
            }
        },
    )
    .await;
    assert!(
        entry["client_version"]
            .as_str()
            .is_some_and(|v| v.contains("1.40")),
        "{entry}"
    );
    drop(envoy);
    agent.shutdown().await;
    plane.stop().await;
}
