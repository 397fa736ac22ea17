//! The private key never reaches a log line, whatever the agent logs at TRACE while serving,
//! rejecting and shutting down. Alone in its test binary: tracing caches per-callsite interest
//! process-wide, so a test running beside it on another thread could hide events from this
//! test's scoped subscriber.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use jalur_agent::SdsSocket;
use jalur_testkit::ca::TestCa;

/// Collects every log line the agent writes while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_private_key_never_reaches_a_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // A current-thread runtime: every task the server spawns logs through this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let ca = TestCa::new();
    let (renew, creds) = ca.watch(&id(), HOUR);
    let key_pem = renew.borrow().cert.key_pem_secret();
    let dir = tempfile::tempdir().expect("tmp");
    let sds = SdsSocket::bind(&socket_path(&dir), creds)
        .await
        .expect("bind");
    let mut stream = SotwStream::open(sds.path()).await;
    stream.send(&["default", "nope"], None, false).await;
    let first = stream.next().await;
    stream.send(&["default", "nope"], Some(&first), true).await;
    let mut delta = DeltaStream::open(sds.path()).await;
    delta.subscribe(&["default"]).await;
    let _ = delta.next().await;
    sds.shutdown().await;

    let text = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf8");
    assert!(text.contains("NACK"), "the capture works: {text}");
    assert!(text.contains("nope"), "unknown names are logged: {text}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "a line of the private key was logged");
    }
}
