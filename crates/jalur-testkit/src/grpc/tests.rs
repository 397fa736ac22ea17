//! The peer scripts themselves, exercised against each other without a control plane: the
//! clients take a plain `127.0.0.1:PORT` target as well as `xds:///NAME`.

use std::collections::BTreeMap;

use super::*;
use crate::peers::{node_client_dir, python, require_peer};

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address")
}

#[tokio::test]
async fn python_client_reaches_the_python_backend() {
    let Some(python) = require_peer("python venv with grpcio", python()) else {
        return;
    };
    let backend = GrpcBackend::start(&python, "b1")
        .await
        .expect("backend starts");
    let report = XdsClient::python(&python, closed_port(), &backend.addr().to_string())
        .count(3)
        .run()
        .await
        .expect("client runs");
    assert_eq!(
        report,
        XdsClientReport {
            ok: 3,
            replies: BTreeMap::from([("b1:hello".to_string(), 3)]),
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn node_client_reaches_the_python_backend() {
    let Some(python) = require_peer("python venv with grpcio", python()) else {
        return;
    };
    let Some(node_dir) = require_peer("node gRPC xDS client", node_client_dir()) else {
        return;
    };
    let backend = GrpcBackend::start(&python, "b2")
        .await
        .expect("backend starts");
    let report = XdsClient::node(&node_dir, closed_port(), &backend.addr().to_string())
        .count(2)
        .message("yo")
        .run()
        .await
        .expect("client runs");
    assert_eq!(report.ok, 2, "{report:?}");
    assert_eq!(report.replies.get("b2:yo"), Some(&2), "{report:?}");
}

#[tokio::test]
async fn python_client_reports_failures_without_a_control_plane() {
    let Some(python) = require_peer("python venv with grpcio", python()) else {
        return;
    };
    let report = XdsClient::python(&python, closed_port(), "xds:///nowhere")
        .count(2)
        .timeout(Duration::from_secs(1))
        .run()
        .await
        .expect("client runs");
    assert_eq!((report.ok, report.failed), (0, 2), "{report:?}");
    assert!(report.errors[0].contains("DEADLINE_EXCEEDED"), "{report:?}");
}
