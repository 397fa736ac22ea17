use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use serde_json::Value;

use crate::assert_eventually;
use crate::envoy::*;
use crate::peers::{envoy_binary, require_peer};

/// An address nothing listens on: bound, read back, released.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address")
}

async fn starts_with_admin(delta: bool) {
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let mut opts = EnvoyOpts::new(closed_port(), "sidecar~127.0.0.1~test.default~default");
    opts.delta = delta;
    opts.metadata = json!({ "ISTIO_VERSION": "1.0", "labels": { "app": "test" } });
    let envoy = Envoy::start_with(&binary, opts)
        .await
        .expect("Envoy starts");

    let info = assert_eventually("Envoy admin answers", Duration::from_secs(10), || {
        envoy.admin_get("/server_info")
    })
    .await;
    let info: Value = serde_json::from_str(&info).expect("server_info is JSON");
    assert_eq!(
        info["node"]["id"], "sidecar~127.0.0.1~test.default~default",
        "{info}"
    );
    assert_eq!(info["node"]["metadata"]["labels"]["app"], "test", "{info}");
    // No control plane: Envoy waits for CDS, so /ready answers but says not ready.
    let ready = envoy.admin_get("/ready").await;
    assert!(ready.is_err(), "{ready:?}");
    assert!(envoy.log_tail().contains("envoy.log"));
}

#[tokio::test]
async fn starts_against_a_closed_ads_port_sotw() {
    starts_with_admin(false).await;
}

#[tokio::test]
async fn starts_against_a_closed_ads_port_delta() {
    starts_with_admin(true).await;
}

#[test]
fn bootstrap_points_ads_at_the_control_plane() {
    let mut opts = EnvoyOpts::new("127.0.0.1:15010".parse().expect("addr"), "n1");
    opts.delta = true;
    let bootstrap = bootstrap(&opts);
    let ads = &bootstrap["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "DELTA_GRPC");
    assert_eq!(ads["grpc_services"][0]["envoy_grpc"]["cluster_name"], "xds");
    let cluster = &bootstrap["static_resources"]["clusters"][0];
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        ["address"]["socket_address"];
    assert_eq!(address["port_value"], 15010);
    assert_eq!(bootstrap["node"]["id"], "n1");
}

#[test]
fn reads_the_bound_port_of_a_listener() {
    let listing = json!({ "listener_statuses": [
        { "name": "admin-less", "local_address": { "socket_address":
            { "address": "127.0.0.1", "port_value": 0 } } },
        { "name": "outbound", "local_address": { "socket_address":
            { "address": "127.0.0.1", "port_value": 41234 } } },
    ]})
    .to_string();
    assert_eq!(listener_port_in(&listing, "outbound"), Ok(41234));
    let missing = listener_port_in(&listing, "inbound").expect_err("no inbound listener");
    assert!(missing.contains("outbound"), "{missing}");
    assert!(listener_port_in(&listing, "admin-less").is_err());
}
