//! A client's life as the control plane's registry sees it: ready once it holds a complete
//! config (or reconnects holding one), leaving when it ends its stream itself, disconnected
//! when its connection breaks.

use tokio::net::TcpStream;

use super::*;

/// What a sidecar serves from: a cluster, its endpoints, a listener and its routes.
fn serving() -> ClientSnapshot {
    snapshot([cluster("c"), endpoints("c", 0), listener("l"), route("r")])
}

/// The generator's events for one node, in order.
fn kinds(h: &Harness, node_id: &str) -> Vec<&'static str> {
    h.generator
        .events()
        .into_iter()
        .filter(|e| e.2 == node_id)
        .map(|e| e.0)
        .collect()
}

fn is_ready(h: &Harness, node_id: &str) -> bool {
    h.status(node_id).is_some_and(|s| s.ready)
}

#[tokio::test]
async fn sotw_client_is_ready_only_once_it_acked_listeners_routes_clusters_and_endpoints() {
    let h = Harness::start(serving()).await;
    let id = "sidecar-new";
    let mut c = h.sotw(id).await;
    c.request(TypeUrl::Cluster, &[]).await;
    let cds = c.recv().await;
    c.ack(&cds, &[]).await;
    c.request(TypeUrl::ClusterLoadAssignment, &["c"]).await;
    let eds = c.recv().await;
    c.ack(&eds, &["c"]).await;
    c.request(TypeUrl::Listener, &[]).await;
    let lds = c.recv().await;
    c.ack(&lds, &[]).await;
    h.wait_acked(id, TypeUrl::Listener, &lds.nonce).await;
    // Listeners in place, their routes not even asked for: not ready.
    assert_eq!(kinds(&h, id), ["connected"]);
    assert!(!is_ready(&h, id));
    c.request(TypeUrl::RouteConfiguration, &["r"]).await;
    let rds = c.recv().await;
    // The routes went out but are not ACKed: still not ready (the server judged after sending).
    assert_eq!(kinds(&h, id), ["connected"]);
    c.ack(&rds, &["r"]).await;
    eventually("the client is ready", || {
        kinds(&h, id) == ["connected", "ready"]
    })
    .await;
    assert!(is_ready(&h, id));

    // Ready is said once: a later change the client takes does not repeat it.
    h.update(snapshot([
        cluster("c"),
        cluster("d"),
        endpoints("c", 0),
        listener("l"),
        route("r"),
    ]));
    let cds = c.recv().await;
    c.ack(&cds, &[]).await;
    h.wait_acked(id, TypeUrl::Cluster, &cds.nonce).await;
    assert_eq!(kinds(&h, id), ["connected", "ready"]);
}

#[tokio::test]
async fn delta_client_that_nacked_its_routes_is_not_ready() {
    let h = Harness::start(serving()).await;
    let id = "sidecar-nack";
    let mut c = h.delta(id).await;
    c.subscribe(TypeUrl::Cluster, &[]).await;
    let cds = c.recv().await;
    c.ack(&cds).await;
    c.subscribe(TypeUrl::ClusterLoadAssignment, &["c"]).await;
    let eds = c.recv().await;
    c.ack(&eds).await;
    c.subscribe(TypeUrl::Listener, &[]).await;
    let lds = c.recv().await;
    c.ack(&lds).await;
    c.subscribe(TypeUrl::RouteConfiguration, &["r"]).await;
    let rds = c.recv().await;
    c.nack(&rds, "route r: unknown cluster").await;
    wait_nacked(&h, id, TypeUrl::RouteConfiguration, &rds.nonce).await;
    assert_eq!(kinds(&h, id), ["connected"]);
    assert!(!is_ready(&h, id));
}

#[tokio::test]
async fn clients_reconnecting_with_config_in_hand_are_ready_at_once() {
    let h = Harness::start(serving()).await;
    let mut delta = h.delta("sidecar-delta").await;
    let held = h.generator.snapshot.lock().expect("snapshot lock").clone();
    let versions = held
        .of_type(TypeUrl::Cluster)
        .expect("clusters")
        .values()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    delta
        .send(DeltaDiscoveryRequest {
            type_url: TypeUrl::Cluster.as_str().into(),
            initial_resource_versions: versions,
            ..Default::default()
        })
        .await;
    delta.recv().await;
    assert_eq!(kinds(&h, "sidecar-delta"), ["connected", "ready"]);

    let mut sotw = h.sotw("sidecar-sotw").await;
    sotw.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        version_info: "held-before-the-restart".into(),
        ..Default::default()
    })
    .await;
    sotw.recv().await;
    assert_eq!(kinds(&h, "sidecar-sotw"), ["connected", "ready"]);
    assert!(is_ready(&h, "sidecar-sotw"));
}

#[tokio::test]
async fn a_client_that_half_closes_its_stream_is_leaving() {
    let h = Harness::start(serving()).await;
    let id = "sidecar-leaving";
    let mut c = h.delta(id).await;
    c.subscribe(TypeUrl::Cluster, &[]).await;
    c.recv().await;
    let DeltaClient { tx, mut rx, .. } = c;
    // END_STREAM on the requests; the responses stay open until the server ends them.
    drop(tx);
    let end = within("the server ends the stream", rx.message()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    eventually("left", || kinds(&h, id) == ["connected", "left"]).await;
}

/// Relays one TCP connection to `server` until `cut` fires, then drops both sockets: what the
/// server sees when a client process dies (the kernel closes its socket mid-stream).
async fn breakable_relay(server: SocketAddr) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let (cut, cutting) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut client, _)) = listener.accept().await else {
            return;
        };
        let Ok(mut upstream) = TcpStream::connect(server).await else {
            return;
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            _ = cutting => {}
        }
    });
    (addr, cut)
}

/// Every log line of this test binary: a process-wide subscriber (a per-test scoped one misses
/// lines when a parallel test first hits the same callsite without it — tracing caches a
/// callsite's interest), set once; tests find their own lines by node id.
fn logs() -> &'static std::sync::Mutex<Vec<u8>> {
    static LINES: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        let lines: &'static std::sync::Mutex<Vec<u8>> =
            Box::leak(Box::new(std::sync::Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || CaptureWriter(lines))
            .with_ansi(false)
            .finish();
        // Another test binary's subscriber cannot be here; a second call finds the first.
        let _ = tracing::subscriber::set_global_default(subscriber);
        lines
    })
}

struct CaptureWriter(&'static std::sync::Mutex<Vec<u8>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_client_whose_connection_breaks_is_disconnected_not_leaving() {
    let logs = logs();
    let h = Harness::start(serving()).await;
    let (relay, cut) = breakable_relay(h.addr).await;
    let mut client = within(
        "connect through the relay",
        AggregatedDiscoveryServiceClient::connect(format!("http://{relay}")),
    )
    .await
    .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    let mut rx_stream = within(
        "open stream",
        client.stream_aggregated_resources(ReceiverStream::new(rx)),
    )
    .await
    .expect("stream")
    .into_inner();
    tx.send(DiscoveryRequest {
        type_url: TypeUrl::Cluster.as_str().into(),
        node: Some(node("sidecar-crashed")),
        ..Default::default()
    })
    .await
    .expect("send");
    within("first response", rx_stream.message())
        .await
        .expect("stream ok")
        .expect("a response");
    cut.send(()).expect("relay running");
    eventually("disconnected", || {
        kinds(&h, "sidecar-crashed") == ["connected", "disconnected"]
    })
    .await;
    // The server says why the stream ended, never "unknown".
    let text =
        String::from_utf8_lossy(&logs.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("xDS client disconnected") && l.contains("sidecar-crashed"))
        .unwrap_or_else(|| panic!("no disconnect line in:\n{text}"));
    assert!(
        line.contains("reason=") && !line.contains("unknown"),
        "{line}"
    );
    drop(tx);
}
