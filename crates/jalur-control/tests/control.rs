//! The control plane without a data plane: config edits (good and bad), the proxy registry, and
//! what gets pushed when only endpoints change. Uses a plain ADS client to see every push.

mod common;

use std::time::Duration;

use common::ads::{endpoints, node, AdsClient};
use common::{service_entry, Plane};
use jalur_testkit::assert_eventually;
use jalur_xds::TypeUrl;

const RATINGS: &str = "ratings.default.svc.cluster.local";

fn vs(weight_a: u32, weight_b: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings}}\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {{host: ratings, port: {{number: 9080}}}}\n      weight: {weight_a}\n    - destination: {{host: ratings, port: {{number: 9080}}}}\n      weight: {weight_b}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_edit_is_rejected_with_file_and_line_and_previous_config_keeps_serving() {
    let plane = Plane::start(&[
        ("ratings.yaml", service_entry("ratings", "default", RATINGS)),
        ("vs.yaml", vs(50, 50)),
    ])
    .await;
    let served = plane.get_json("/debug/config").await["generation"].clone();

    // An unknown field on line 9, then weights that do not add up: both rejected.
    plane.write(
        "vs.yaml",
        &vs(50, 50).replace(
            "weight: 50\n    - destination",
            "weigth: 50\n    - destination",
        ),
    );
    let rejection = assert_eventually(
        "the bad edit is rejected",
        Duration::from_secs(10),
        || async {
            let cfg = plane.get_json("/debug/config").await;
            match cfg["store"]["last_rejection"].as_array() {
                Some(d) if !d.is_empty() => Ok(d[0].clone()),
                _ => Err(format!("{cfg}")),
            }
        },
    )
    .await;
    assert_eq!(rejection["code"], "JAL0003", "{rejection}");
    assert!(
        rejection["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("vs.yaml")),
        "{rejection}"
    );
    assert_eq!(rejection["line"], 9, "{rejection}");
    assert_eq!(
        rejection["field"], "spec.http[0].route[0].weigth",
        "{rejection}"
    );
    let cfg = plane.get_json("/debug/config").await;
    assert_eq!(
        cfg["generation"], served,
        "nothing was pushed for the rejected edit"
    );
    assert!(
        cfg["services"].get(RATINGS).is_some(),
        "the previous config is still served"
    );

    plane.write("vs.yaml", &vs(50, 40));
    assert_eventually(
        "the weights edit is rejected",
        Duration::from_secs(10),
        || async {
            let cfg = plane.get_json("/debug/config").await;
            let codes: Vec<String> = cfg["store"]["last_rejection"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| d["code"].to_string())
                .collect();
            if codes.iter().any(|c| c.contains("JAL0101")) {
                Ok(())
            } else {
                Err(format!("{cfg}"))
            }
        },
    )
    .await;
    let metrics = jalur_testkit::http_get(plane.status(), "s", "/metrics", &[])
        .await
        .expect("metrics")
        .2;
    assert!(
        metrics.contains("jalur_config_changes_rejected_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("jalur_config_last_change_ok 0"),
        "{metrics}"
    );

    // A good edit clears the rejection and is applied.
    plane.write("vs.yaml", &vs(30, 70));
    assert_eventually(
        "the good edit is applied",
        Duration::from_secs(10),
        || async {
            let cfg = plane.get_json("/debug/config").await;
            let cleared = cfg["store"]["last_rejection"]
                .as_array()
                .is_some_and(|d| d.is_empty());
            if cleared && cfg["generation"] != served {
                Ok(())
            } else {
                Err(format!("{cfg}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_workload_becomes_an_endpoint_once_its_proxy_is_ready_and_only_eds_is_pushed() {
    let plane =
        Plane::start(&[("ratings.yaml", service_entry("ratings", "default", RATINGS))]).await;
    let cluster = format!("outbound|9080||{RATINGS}");

    // A caller subscribes to everything and ACKs it.
    let mut caller = AdsClient::connect(
        plane.xds(),
        node(
            "sidecar~127.0.0.2~productpage.default~default.svc.cluster.local",
            &[],
        ),
    )
    .await;
    caller.request(TypeUrl::Cluster, &[], None).await;
    let cds = caller.recv().await;
    caller.request(TypeUrl::Cluster, &[], Some(&cds)).await;
    caller
        .request(TypeUrl::ClusterLoadAssignment, &[&cluster], None)
        .await;
    let eds = caller.recv().await;
    assert_eq!(
        endpoints(&eds),
        Vec::<String>::new(),
        "no ratings workload yet"
    );
    caller
        .request(TypeUrl::ClusterLoadAssignment, &[&cluster], Some(&eds))
        .await;
    caller.request(TypeUrl::Listener, &[], None).await;
    let lds = caller.recv().await;
    caller.request(TypeUrl::Listener, &[], Some(&lds)).await;

    // A ratings sidecar connects and announces its workload in node metadata (Istio's keys).
    let ratings_node = node(
        "sidecar~127.0.0.9~ratings-v1-abc.default~default.svc.cluster.local",
        &[
            (
                "POD_PORTS",
                r#"[{"name":"http","containerPort":9080,"protocol":"TCP"}]"#,
            ),
            ("JALUR_SERVICE", "ratings"),
        ],
    );
    let mut ratings = AdsClient::connect(plane.xds(), ratings_node).await;
    let cds = ratings.fetch(TypeUrl::Cluster, &[]).await;
    // Not routable while its proxy holds only part of its config.
    assert!(
        caller
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "an endpoint was published before its proxy held a complete config"
    );
    ratings.sync_after_clusters(&cds).await;

    // The caller gets the new endpoint (the sidecar's inbound port) and nothing but EDS.
    let push = caller.recv().await;
    assert_eq!(
        push.type_url,
        TypeUrl::ClusterLoadAssignment.as_str(),
        "only EDS is pushed for an endpoint change"
    );
    assert_eq!(endpoints(&push), vec!["127.0.0.9:15006".to_string()]);
    caller
        .request(TypeUrl::ClusterLoadAssignment, &[&cluster], Some(&push))
        .await;
    assert!(
        caller
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "no other type pushed"
    );
    let registry = plane.get_json("/debug/registry").await;
    assert_eq!(registry["registries"][0]["name"], "proxies", "{registry}");
    assert_eq!(
        registry["registries"][0]["workloads"][0]["host"], RATINGS,
        "{registry}"
    );

    // The ratings sidecar goes away: its endpoint is withdrawn.
    drop(ratings);
    let push = caller.recv().await;
    assert_eq!(push.type_url, TypeUrl::ClusterLoadAssignment.as_str());
    assert_eq!(
        endpoints(&push),
        Vec::<String>::new(),
        "endpoint removed when its proxy disconnects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_edits_is_debounced_into_few_pushes() {
    let plane = Plane::start(&[
        ("ratings.yaml", service_entry("ratings", "default", RATINGS)),
        ("vs.yaml", vs(50, 50)),
    ])
    .await;
    let mut caller = AdsClient::connect(
        plane.xds(),
        node("sidecar~127.0.0.2~a.default~default.svc.cluster.local", &[]),
    )
    .await;
    caller
        .request(TypeUrl::RouteConfiguration, &["outbound"], None)
        .await;
    let first = caller.recv().await;
    caller
        .request(TypeUrl::RouteConfiguration, &["outbound"], Some(&first))
        .await;
    for w in 1..=20 {
        plane.write("vs.yaml", &vs(w, 100 - w));
    }
    // Count the RDS pushes until the stream has been quiet for a second; the last carries 20/80.
    let mut pushes = Vec::new();
    while let Some(r) = caller.recv_within(Duration::from_secs(1)).await {
        caller
            .request(TypeUrl::RouteConfiguration, &["outbound"], Some(&r))
            .await;
        pushes.push(r);
    }
    assert!(
        !pushes.is_empty() && pushes.len() <= 3,
        "20 edits in a burst caused {} pushes",
        pushes.len()
    );
    let last = pushes.last().map(route_weights).unwrap_or_default();
    assert_eq!(last, vec![20, 80], "the last push carries the last edit");
}

fn route_weights(
    r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
) -> Vec<u32> {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier, RouteConfiguration,
    };
    use prost::Message;
    let rc = RouteConfiguration::decode(r.resources[0].value.as_slice()).expect("route config");
    rc.virtual_hosts
        .iter()
        .flat_map(|vh| vh.routes.iter())
        .filter_map(|route| match &route.action {
            Some(Action::Route(a)) => match &a.cluster_specifier {
                Some(ClusterSpecifier::WeightedClusters(w)) => Some(
                    w.clusters
                        .iter()
                        .filter_map(|c| c.weight.as_ref().map(|w| w.value))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            },
            _ => None,
        })
        .flatten()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_what_a_client_was_sent_and_ready_answers() {
    let plane = Plane::start(&[
        ("ratings.yaml", service_entry("ratings", "default", RATINGS)),
        ("vs.yaml", vs(50, 50)),
    ])
    .await;
    let id = "sidecar~127.0.0.2~a.default~default.svc.cluster.local";
    let mut caller = AdsClient::connect(plane.xds(), node(id, &[])).await;
    caller.request(TypeUrl::Cluster, &[], None).await;
    let _ = caller.recv().await;

    let (status, _, body) = jalur_testkit::http_get(plane.status(), "s", "/ready", &[])
        .await
        .expect("ready");
    assert_eq!((status, body.trim()), (200, "ready"));
    let dump = assert_eventually(
        "config_dump has the client",
        Duration::from_secs(5),
        || async {
            let (status, _, body) = jalur_testkit::http_get(
                plane.status(),
                "s",
                &format!("/debug/config_dump?proxy={}", id.replace('~', "%7E")),
                &[],
            )
            .await?;
            if status == 200 {
                serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string())
            } else {
                Err(body)
            }
        },
    )
    .await;
    assert_eq!(dump["kind"], "sidecar");
    let cluster = &dump["resources"]["cds"][format!("outbound|9080||{RATINGS}")];
    assert_eq!(cluster["type"], "EDS", "{dump}");
    let routes =
        &dump["resources"]["rds"]["outbound"]["virtual_hosts"][0]["routes"][0]["action"]["to"];
    assert_eq!(routes[0]["weight"], 50, "{dump}");

    let (status, _, body) =
        jalur_testkit::http_get(plane.status(), "s", "/debug/config_dump?proxy=nobody", &[])
            .await
            .expect("dump");
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = jalur_testkit::http_get(plane.status(), "s", "/debug/config_dump", &[])
        .await
        .expect("dump");
    assert_eq!(status, 400);
}

/// A migration's weights (a rollback above all) are rebuilt and pushed at once, not after the
/// config debounce: with a 30 s debounce, each step bumps the generation within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_step_and_its_rollback_do_not_wait_for_the_debounce() {
    use jalur_control::migrate::{Command, Phase};
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    let tmp = tempfile::TempDir::with_prefix("jalur-control-debounce-").expect("temp dir");
    let dir = tmp.path().to_path_buf();
    std::fs::write(
        dir.join("m.yaml"),
        "apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: reviews, namespace: shop}\nspec:\n  legacy: {host: reviews.service.consul}\n  mesh: {host: reviews}\n  stages: [{weight: 50, hold: 1h}, {weight: 100, hold: 1h}]\n",
    )
    .expect("write");
    let plane = jalur_control::ControlPlane::start(jalur_control::Options {
        config: vec![dir.clone()],
        xds_addr: ([127, 0, 0, 1], 0).into(),
        status_addr: ([127, 0, 0, 1], 0).into(),
        debounce: Duration::from_secs(30),
        registry_grace: Duration::ZERO,
        ..jalur_control::Options::default()
    })
    .await
    .expect("control plane");
    let state = &plane.state;
    for (command, phase) in [
        (Command::Start, Phase::Shifting),
        (Command::Rollback, Phase::RolledBack),
    ] {
        let before = state.generation.load(Ordering::SeqCst);
        let sent = Instant::now();
        let s = state
            .migrations
            .command("reviews", None, command)
            .expect("command");
        assert_eq!(s.phase, phase);
        assert_eventually(
            &format!("{command:?} is rebuilt without the 30 s debounce"),
            Duration::from_secs(2),
            || async {
                if state.generation.load(Ordering::SeqCst) > before {
                    Ok(())
                } else {
                    Err("no rebuild yet".to_string())
                }
            },
        )
        .await;
        eprintln!(
            "{command:?}: rebuilt {:?} after the command",
            sent.elapsed()
        );
    }
    plane.stop().await;
}

/// A Consul agent that answers with one health entry jalur cannot read (a port that is not a
/// number) beside a good one: the good instance is served, the bad one is counted in
/// `jalur_consul_invalid_entries_total`, and neither is guessed at. Raw HTTP on purpose: the
/// Consul double only ever produces well-formed entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_consul_entry_is_counted_and_the_rest_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let consul = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = consul.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = consul.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if head.starts_with("GET /v1/catalog/services") {
                    r#"{"consul":[],"payments":["v1"]}"#
                } else {
                    r#"[{"Node":{"Address":"10.9.0.1"},"Service":{"ID":"p-1","Port":8080},"Checks":[{"Status":"passing"}]},
                        {"Node":{"Address":"10.9.0.2"},"Service":{"ID":"p-2","Port":"eighty"},"Checks":[]}]"#
                };
                // A blocking query that already has an index waits, as Consul's would.
                if !head.contains("index=0") {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    let registry = format!(
        "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {{name: legacy, namespace: default}}\nspec:\n  addresses: [\"{addr}\"]\n  wait: 1s\n"
    );
    let plane = Plane::start(&[("consul.yaml", registry)]).await;
    assert_eventually(
        "the readable instance is served and the other counted",
        Duration::from_secs(10),
        || async {
            let registry = plane.get_json("/debug/registry").await.to_string();
            let (_, _, metrics) =
                jalur_testkit::http_get(plane.status(), "status", "/metrics", &[])
                    .await
                    .map_err(|e| e.to_string())?;
            let counted = metrics.lines().any(|l| {
                l.starts_with("jalur_consul_invalid_entries_total{")
                    && l.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok()) >= Some(1.0)
            });
            if registry.contains("10.9.0.1") && !registry.contains("10.9.0.2") && counted {
                Ok(())
            } else {
                Err(format!("registry: {registry}\nmetrics: {metrics}"))
            }
        },
    )
    .await;
    server.abort();
}

/// A counter's value in the status API's `/metrics` text.
async fn counter(plane: &Plane, name: &str) -> u64 {
    let (_, _, text) = jalur_testkit::http_get(plane.status(), "status", "/metrics", &[])
        .await
        .expect("metrics");
    let line = format!("{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
}

/// Issue 12, compute once: forty sidecars of two deployments (namespaces `shop` and `default`)
/// hold two views; the config is translated twice per change, not forty times, and every
/// sidecar of a deployment is sent the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_sidecars_of_two_deployments_cost_two_translations_per_change() {
    let plane = Plane::start(&[
        ("ratings.yaml", service_entry("ratings", "default", RATINGS)),
        ("vs.yaml", vs(50, 50)),
    ])
    .await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let ns = if i % 2 == 0 { "shop" } else { "default" };
        let id = format!("sidecar~127.0.1.{i}~cart-{i}.{ns}~{ns}.svc.cluster.local");
        let mut c = AdsClient::connect(plane.xds(), node(&id, &[])).await;
        let cds = c.fetch(TypeUrl::Listener, &[]).await;
        clients.push((ns, c, cds));
    }
    assert_eq!(counter(&plane, "jalur_views_computed").await, 2);
    assert_eq!(counter(&plane, "jalur_views_shared").await, 38);
    for ns in ["shop", "default"] {
        let sent: Vec<_> = clients
            .iter()
            .filter(|(n, _, _)| *n == ns)
            .map(|(_, _, lds)| (lds.version_info.clone(), lds.resources.clone()))
            .collect();
        assert!(
            sent.windows(2).all(|w| w[0] == w[1]),
            "{ns}: sidecars got different listeners"
        );
    }

    // An edit: every stream regenerates, two translations between them.
    plane.write("vs.yaml", &vs(20, 80));
    assert_eventually(
        "all forty streams took the new generation",
        Duration::from_secs(10),
        || async {
            let clients = plane.plane.state.ads.sync().clients();
            let generation = plane
                .plane
                .state
                .generation
                .load(std::sync::atomic::Ordering::SeqCst);
            let behind = clients.iter().filter(|c| c.generation < generation).count();
            (generation > 0 && clients.len() == 40 && behind == 0)
                .then_some(())
                .ok_or(format!(
                    "{behind} of {} behind generation {generation}",
                    clients.len()
                ))
        },
    )
    .await;
    assert_eq!(counter(&plane, "jalur_views_computed").await, 4);
    assert_eq!(counter(&plane, "jalur_views_shared").await, 76);
}
