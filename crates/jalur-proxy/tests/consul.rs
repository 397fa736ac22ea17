//! Mesh -> legacy (case 3) against a Consul protocol DOUBLE (no Consul server is obtainable
//! here; the double follows Consul's documented HTTP API): sidecars of both kinds, stock Envoy
//! and jalur proxy, route `payments.service.consul` to the instances registered in the double;
//! an instance that dies but stays "passing" costs at most a few requests before outlier
//! detection ejects it, and none when retries are on.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{envoy_sidecar, jalur_sidecar, sidecar_opts, Plane};
use jalur_testkit::consul::{ConsulDouble, ConsulOpts, Instance, Status};
use jalur_testkit::yaml::spread;
use jalur_testkit::{
    assert_eventually, envoy_binary, http_get, require_peer, EchoServer, Envoy, EnvoyOpts,
};
use serde_json::json;

const HOST: &str = "payments.service.consul";

fn registry(consul: &ConsulDouble) -> String {
    format!(
        "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {{name: legacy, namespace: default}}\nspec:\n  addresses: [\"{}\"]\n  wait: 2s\n",
        consul.url()
    )
}

fn no_retries() -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: payments, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  http:\n  - retries: {{attempts: 0}}\n    route:\n    - destination: {{host: {HOST}}}\n")
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Jalur,
    Envoy,
}

async fn sidecar(
    kind: Kind,
    plane: &Plane,
) -> Option<(SocketAddr, Option<Envoy>, Option<jalur_proxy::run::Proxy>)> {
    match kind {
        Kind::Jalur => {
            let (p, out) = jalur_sidecar(sidecar_opts(plane.xds, "checkout", "shop")).await;
            Some((out, None, Some(p)))
        }
        Kind::Envoy => {
            let (envoy, out) = envoy_sidecar(plane.xds, "checkout-1", "shop").await?;
            Some((out, Some(envoy), None))
        }
    }
}

async fn dead_but_passing_instance(kind: Kind, retries: bool) {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    let (a, b) = (
        EchoServer::start("legacy-a").await,
        EchoServer::start("legacy-b").await,
    );
    consul.register(
        Instance::new("payments", "payments-a", "127.0.0.1", a.addr().port())
            .status(Status::Passing),
    );
    consul.register(
        Instance::new("payments", "payments-b", "127.0.0.1", b.addr().port())
            .status(Status::Passing),
    );
    let mut files = vec![("consul.yaml", registry(&consul))];
    if !retries {
        files.push(("vs.yaml", no_retries()));
    }
    let plane = Plane::start(&files).await;
    let Some((out, envoy, _proxy)) = sidecar(kind, &plane).await else {
        return;
    };
    reaches_both(kind, out).await;

    // legacy-b dies; Consul still says passing.
    drop(b);
    let seen = spread(out, HOST, 60, &[]).await;
    let failed: usize = seen
        .iter()
        .filter(|(k, _)| *k != "legacy-a")
        .map(|(_, n)| n)
        .sum();
    eprintln!("{kind:?} retries={retries}: after the kill {seen:?}");
    if retries {
        assert_eq!(failed, 0, "{kind:?} with retries: {seen:?}");
    } else if failed > 5 {
        panic!(
            "{kind:?}: {failed} failed before ejection: {seen:?}\n{}",
            envoy_view(envoy.as_ref()).await
        );
    }
    let after = spread(out, HOST, 40, &[]).await;
    assert_eq!(
        after.get("legacy-a"),
        Some(&40),
        "{kind:?}: the dead instance stays ejected: {after:?}"
    );
    assert_eq!(
        consul.status("payments-b"),
        Some(Status::Passing),
        "the double still calls it passing"
    );
}

/// What a stock Envoy knows of the legacy cluster, for a failure message: its hosts' flags,
/// its outlier detection counters, and whether CDS replaced the cluster (which forgets every
/// ejection).
async fn envoy_view(envoy: Option<&Envoy>) -> String {
    let Some(envoy) = envoy else {
        return String::new();
    };
    let mut view = String::new();
    for path in [
        "/clusters",
        "/stats?filter=payments.service.consul",
        "/stats?filter=cluster_manager",
    ] {
        let body = envoy.admin_get(path).await.unwrap_or_else(|e| e);
        let lines: Vec<&str> = body
            .lines()
            .filter(|l| !path.starts_with("/clusters") || l.contains(HOST))
            .collect();
        view.push_str(&format!("--- Envoy {path}\n{}\n", lines.join("\n")));
    }
    view
}

/// Waits until requests through `out` reach both legacy instances.
async fn reaches_both(kind: Kind, out: SocketAddr) {
    assert_eventually(
        &format!("{kind:?} reaches both legacy instances"),
        Duration::from_secs(20),
        || async {
            let seen = spread(out, HOST, 20, &[]).await;
            if seen.contains_key("legacy-a") && seen.contains_key("legacy-b") {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_ejects_a_dead_passing_instance_within_five_failures() {
    dead_but_passing_instance(Kind::Jalur, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ejects_a_dead_passing_instance_within_five_failures() {
    dead_but_passing_instance(Kind::Envoy, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_with_retries_loses_nothing_to_a_dead_passing_instance() {
    dead_but_passing_instance(Kind::Jalur, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_with_retries_loses_nothing_to_a_dead_passing_instance() {
    dead_but_passing_instance(Kind::Envoy, true).await;
}

/// Health changes in Consul reach the sidecar: a critical instance stops getting traffic; and
/// while Consul is unreachable the last known instances keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_health_flaps_and_outages_follow_through() {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    let (a, b) = (
        EchoServer::start("legacy-a").await,
        EchoServer::start("legacy-b").await,
    );
    consul.register(
        Instance::new("payments", "payments-a", "127.0.0.1", a.addr().port())
            .status(Status::Passing),
    );
    consul.register(
        Instance::new("payments", "payments-b", "127.0.0.1", b.addr().port())
            .status(Status::Passing),
    );
    let plane = Plane::start(&[("consul.yaml", registry(&consul))]).await;
    let (proxy, out) = jalur_sidecar(sidecar_opts(plane.xds, "checkout", "shop")).await;
    assert_eventually("both instances", Duration::from_secs(20), || async {
        let seen = spread(out, HOST, 20, &[]).await;
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;
    consul.set_status("payments-b", Status::Critical);
    assert_eventually(
        "critical instance withdrawn",
        Duration::from_secs(10),
        || async {
            let seen = spread(out, HOST, 20, &[]).await;
            if seen.get("legacy-a") == Some(&20) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    consul.set_status("payments-b", Status::Passing);
    assert_eventually("instance back", Duration::from_secs(10), || async {
        let seen = spread(out, HOST, 20, &[]).await;
        if seen.contains_key("legacy-b") {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    })
    .await;

    consul.pause().await;
    let status = plane.plane.as_ref().map(|p| p.status_addr).expect("plane");
    assert_eventually(
        "the status API says Consul is down",
        Duration::from_secs(15),
        || async {
            let (_, _, body) = http_get(status, "s", "/debug/registry", &[]).await?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if v["consul"][0]["up"] == false {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    let seen = spread(out, HOST, 20, &[]).await;
    assert_eq!(
        seen.values().sum::<usize>(),
        seen.get("legacy-a").unwrap_or(&0) + seen.get("legacy-b").unwrap_or(&0),
        "last known instances keep serving: {seen:?}"
    );
    consul.resume().await;
    proxy.shutdown().await;
}

/// Legacy -> mesh (case 2): jalur registers the gateway in Consul under the exported name; a
/// legacy client that resolves `payments` through Consul reaches the meshed service through it;
/// after a rollback (the export removed) the entry is gone from the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_reaches_the_mesh_through_the_registered_gateway_until_rollback() {
    let consul = ConsulDouble::start_with(
        ConsulOpts::default()
            .max_wait(Duration::from_secs(2))
            .fast_checks(),
    )
    .await;
    let meshed = EchoServer::start("mesh-payments").await;
    // The gateway port legacy callers will dial is written into config before the gateway
    // starts, so ask the kernel for a free one (bind :0, read, release).
    let gw_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let export = |with: bool| {
        let exports = if with {
            format!("  exports:\n  - name: payments\n    gatewaySelector: {{istio: ingressgateway}}\n    port: {gw_port}\n")
        } else {
            String::new()
        };
        format!("{}{exports}", registry(&consul))
    };
    let files = vec![
        ("svc.yaml", jalur_testkit::yaml::service_entry("payments", "default", "payments.default.svc.cluster.local")),
        ("we.yaml", jalur_testkit::yaml::workload_entry("payments", "v1", "default", meshed.addr())),
        ("consul.yaml", export(true)),
        (
            "gateway.yaml",
            format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: legacy-bridge, namespace: default}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {gw_port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: payments-from-legacy, namespace: default}}\nspec:\n  hosts: [\"*\"]\n  gateways: [legacy-bridge]\n  http:\n  - route:\n    - destination: {{host: payments.default.svc.cluster.local}}\n"),
        ),
    ];
    let plane = Plane::start(&files).await;
    let gateway = jalur_proxy::run::Proxy::start(jalur_proxy::run::ProxyOptions {
        role: jalur_proxy::run::Role::Gateway,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..sidecar_opts(plane.xds, "legacy-bridge", "default")
    })
    .await
    .expect("gateway");

    // What a legacy client does: ask Consul for passing instances, call one.
    let resolve = || async {
        let (status, _, body) = http_get(
            consul.addr(),
            "consul",
            "/v1/health/service/payments?passing",
            &[],
        )
        .await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        let addrs: Vec<SocketAddr> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                format!(
                    "{}:{}",
                    e["Service"]["Address"].as_str()?,
                    e["Service"]["Port"].as_u64()?
                )
                .parse()
                .ok()
            })
            .collect();
        Ok::<_, String>(addrs)
    };
    let reply = assert_eventually(
        "a legacy client reaches the mesh via Consul",
        Duration::from_secs(20),
        || async {
            let addrs = resolve().await?;
            let first = addrs
                .first()
                .ok_or("no passing instance of payments in Consul yet")?;
            match http_get(*first, "payments.service.consul", "/charge", &[]).await {
                Ok((200, h, body)) => Ok((h, body)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(reply.1, "mesh-payments");
    let entries = consul.instances("payments");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        entries[0].tags.iter().any(|t| t == "jalur-managed"),
        "{entries:?}"
    );

    // Rollback: the export goes; so does the catalog entry.
    plane.write("consul.yaml", &export(false));
    assert_eventually(
        "the gateway's entry is removed on rollback",
        Duration::from_secs(10),
        || async {
            let left = consul.instances("payments");
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    gateway.shutdown().await;
}

/// Fronting topology: the proxies in front of a service (existing fronting Envoys, or jalur)
/// split it between its legacy instances (from Consul) and its meshed ones by subset — exact
/// shares whatever the replica counts (three legacy instances, one meshed).
async fn fronting_split(kind: Kind) {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    let legacy: Vec<EchoServer> = vec![
        EchoServer::start("legacy-1").await,
        EchoServer::start("legacy-2").await,
        EchoServer::start("legacy-3").await,
    ];
    for (i, l) in legacy.iter().enumerate() {
        consul.register(
            Instance::new(
                "payments",
                &format!("payments-{i}"),
                "127.0.0.1",
                l.addr().port(),
            )
            .status(Status::Passing),
        );
    }
    let mesh_app = EchoServer::start("mesh-1").await;
    let mesh_host = "payments.default.svc.cluster.local";
    let files = vec![
        ("consul.yaml", format!("{}  servicePort: 9080\n  aliases:\n    payments: [{mesh_host}]\n", registry(&consul))),
        ("svc.yaml", format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: payments, namespace: default}}\nspec:\n  hosts: [{mesh_host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n")),
        ("dr.yaml", format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: payments, namespace: default}}\nspec:\n  host: {mesh_host}\n  subsets:\n  - {{name: legacy, labels: {{jalur.dev/origin: consul}}}}\n  - {{name: mesh, labels: {{jalur.dev/origin: mesh}}}}\n")),
        ("vs.yaml", format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: payments, namespace: default}}\nspec:\n  hosts: [{mesh_host}]\n  http:\n  - retries: {{attempts: 0}}\n    route:\n    - destination: {{host: {mesh_host}, subset: legacy}}\n      weight: 70\n    - destination: {{host: {mesh_host}, subset: mesh}}\n      weight: 30\n")),
    ];
    let plane = Plane::start(&files).await;
    // The meshed instance: a jalur sidecar registering itself (service port 9080, app elsewhere).
    let server = jalur_proxy::run::Proxy::start(jalur_proxy::run::ProxyOptions {
        app_port: Some(mesh_app.addr().port()),
        ports: vec!["http:9080".parse().expect("port")],
        ..sidecar_opts(plane.xds, "payments", "default")
    })
    .await
    .expect("meshed instance's sidecar");
    let front: SocketAddr;
    let _keep: (Option<Envoy>, Option<jalur_proxy::run::Proxy>);
    match kind {
        Kind::Envoy => {
            let Some(binary) = require_peer("envoy", envoy_binary()) else {
                return;
            };
            // An existing fronting Envoy: its own node id (not Istio's shape), pointed at jalur.
            let mut opts = EnvoyOpts::new(plane.xds, "payments-front-1");
            opts.metadata =
                json!({ "JALUR_EPHEMERAL_PORTS": "true", "JALUR_LISTEN_ADDRESS": "127.0.0.1" });
            let envoy = Envoy::start_with(&binary, opts)
                .await
                .expect("fronting envoy");
            let port = envoy.listener_port("outbound").await.expect("outbound");
            front = SocketAddr::from(([127, 0, 0, 1], port));
            _keep = (Some(envoy), None);
        }
        Kind::Jalur => {
            let (p, out) =
                jalur_sidecar(sidecar_opts(plane.xds, "payments-front", "default")).await;
            front = out;
            _keep = (None, Some(p));
        }
    }
    assert_eventually(
        &format!("{kind:?} front reaches both origins"),
        Duration::from_secs(20),
        || async {
            let seen = spread(front, mesh_host, 40, &[]).await;
            if seen.contains_key("mesh-1")
                && seen.keys().any(|k| k.starts_with("legacy"))
                && seen
                    .keys()
                    .all(|k| k.starts_with("legacy") || k == "mesh-1")
            {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    // Both origins answering is not yet the final config (the Consul import and the meshed
    // sidecar's registration each bump the generation): sample only once every client holds the
    // current generation, so the split measured is the converged one.
    let state = &plane.control().state;
    assert_eventually(
        "every client holds the plane's current generation",
        Duration::from_secs(20),
        || async {
            let now = state.generation.load(std::sync::atomic::Ordering::SeqCst);
            let behind: Vec<String> = state
                .ads
                .sync()
                .clients()
                .iter()
                .filter(|c| c.generation < now || !c.in_sync)
                .map(|c| format!("{} at {} (in sync {})", c.node_id, c.generation, c.in_sync))
                .collect();
            behind
                .is_empty()
                .then_some(())
                .ok_or(format!("generation {now}; behind: {behind:?}"))
        },
    )
    .await;
    let seen = spread(front, mesh_host, 2000, &[]).await;
    let mesh = jalur_testkit::yaml::share(&seen, "mesh-1");
    // Envoy picks at random: 4σ of a binomial share (4.1 points); jalur's split is exact
    // within one request per hundred.
    let tolerance = match kind {
        Kind::Envoy => jalur_testkit::yaml::four_sigma(30.0, 2000),
        Kind::Jalur => 1.0,
    };
    assert!(
        (mesh - 30.0).abs() <= tolerance,
        "{kind:?}: 70/30 legacy/mesh observed as {seen:?} (±{tolerance:.2} points)"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronting_envoy_splits_legacy_and_mesh_exactly() {
    fronting_split(Kind::Envoy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronting_jalur_splits_legacy_and_mesh_exactly() {
    fronting_split(Kind::Jalur).await;
}

/// An ACL-protected Consul: without the token the registry reports the 403 (and imports
/// nothing); with the token from a file it imports. The token never shows in the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_token_is_required_and_never_shown() {
    let consul = ConsulDouble::start_with(
        ConsulOpts::default()
            .max_wait(Duration::from_secs(2))
            .acl_token("s3cr3t-token"),
    )
    .await;
    consul.register(Instance::new("payments", "p-1", "127.0.0.1", 9001).status(Status::Passing));
    let mut plane = Plane::start(&[("consul.yaml", registry(&consul))]).await;
    let status = plane.plane.as_ref().map(|p| p.status_addr).expect("plane");
    let registry_status = || async {
        let (_, _, body) = http_get(status, "s", "/debug/registry", &[]).await?;
        serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string())
    };
    let denied = assert_eventually("the 403 is reported", Duration::from_secs(10), || async {
        let v = registry_status().await?;
        if v["consul"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("403"))
        {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    assert_eq!(denied["consul"][0]["up"], false);
    let token_file = plane.dir.join("consul-token");
    std::fs::write(&token_file, "s3cr3t-token\n").expect("token file");
    plane.write(
        "consul.yaml",
        &format!(
            "{}  token: {{file: {}}}\n",
            registry(&consul),
            token_file.display()
        ),
    );
    let ok = assert_eventually(
        "imports with the token",
        Duration::from_secs(10),
        || async {
            let v = registry_status().await?;
            if v["consul"][0]["up"] == true && v["consul"][0]["instances"] == 1 {
                Ok(v)
            } else {
                Err(v.to_string())
            }
        },
    )
    .await;
    assert!(
        !ok.to_string().contains("s3cr3t-token"),
        "the token leaked into the status: {ok}"
    );
    plane.stop().await;
}

/// Optional active health checks for imported services: an instance whose health endpoint fails
/// leaves rotation though Consul still says passing (outlier detection switched off here, so
/// only the health check can do it).
async fn active_health_check_takes_a_failing_instance_out(kind: Kind) {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    let (a, b) = (
        EchoServer::start("legacy-a").await,
        EchoServer::start("legacy-b").await,
    );
    consul.register(
        Instance::new("payments", "payments-a", "127.0.0.1", a.addr().port())
            .status(Status::Passing),
    );
    consul.register(
        Instance::new("payments", "payments-b", "127.0.0.1", b.addr().port())
            .status(Status::Passing),
    );
    let files = vec![
        ("consul.yaml", format!("{}  healthCheck: {{httpPath: /healthz, interval: 200ms, timeout: 500ms, unhealthyThreshold: 2}}\n", registry(&consul))),
        ("vs.yaml", no_retries()),
        ("dr.yaml", format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: payments, namespace: default}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 0, consecutiveGatewayErrors: 0}}\n")),
    ];
    let plane = Plane::start(&files).await;
    let Some((out, _envoy, _proxy)) = sidecar(kind, &plane).await else {
        return;
    };
    reaches_both(kind, out).await;
    b.fail_always(503);
    assert_eventually(
        &format!("{kind:?} health check takes legacy-b out"),
        Duration::from_secs(15),
        || async {
            let seen = spread(out, HOST, 20, &[]).await;
            if seen.get("legacy-a") == Some(&20) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    let after = spread(out, HOST, 40, &[]).await;
    assert_eq!(after.get("legacy-a"), Some(&40), "{kind:?}: {after:?}");
    assert_eq!(consul.status("payments-b"), Some(Status::Passing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jalur_active_health_check_takes_a_failing_instance_out() {
    active_health_check_takes_a_failing_instance_out(Kind::Jalur).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_active_health_check_takes_a_failing_instance_out() {
    active_health_check_takes_a_failing_instance_out(Kind::Envoy).await;
}

/// Several addresses: an unreachable first one fails over to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_consul_address_fails_over_to_the_next() {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    consul.register(Instance::new("payments", "p-1", "127.0.0.1", 9001).status(Status::Passing));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let spec = format!(
        "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {{name: legacy, namespace: default}}\nspec:\n  addresses: [\"127.0.0.1:{}\", \"{}\"]\n  wait: 2s\n",
        dead.port(),
        consul.url()
    );
    let mut plane = Plane::start(&[("consul.yaml", spec)]).await;
    let status = plane.plane.as_ref().map(|p| p.status_addr).expect("plane");
    assert_eventually(
        "imports through the second address",
        Duration::from_secs(15),
        || async {
            let (_, _, body) = http_get(status, "s", "/debug/registry", &[]).await?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if v["consul"][0]["instances"] == 1 && v["consul"][0]["address"] == consul.url() {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    plane.stop().await;
}

/// Export bookkeeping against the Consul protocol DOUBLE, across a control plane that crashed
/// (its `jalur-managed` entries still in Consul) and then stops cleanly:
/// - at start, once warm, the entry whose gateway did not come back is removed, the entry of the
///   gateway that reconnected is kept as it is (never deregistered, so legacy callers always
///   find it), and entries jalur does not own are left alone;
/// - on stop, every entry jalur owns is deregistered before `stop` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_double_stale_exports_cleaned_at_start_and_all_deregistered_at_stop() {
    let consul =
        ConsulDouble::start_with(ConsulOpts::default().max_wait(Duration::from_secs(2))).await;
    // A port number in Consul only: nothing binds it in this test.
    let gw_port = 18_080;
    let live_id = format!("jalur-payments-127.0.0.1-{gw_port}");
    let stale_id = format!("jalur-payments-10.9.9.9-{gw_port}");
    // What the crashed run left, and what others registered.
    for (id, address, tag) in [
        (live_id.as_str(), "127.0.0.1", Some("jalur-managed")),
        (stale_id.as_str(), "10.9.9.9", Some("jalur-managed")),
        ("payments-legacy-1", "127.0.0.1", None),
    ] {
        let port = if tag.is_some() { gw_port } else { 9_999 };
        let mut instance = Instance::new("payments", id, address, port);
        if let Some(tag) = tag {
            instance = instance.tag(tag);
        }
        consul.register(instance);
    }
    let files = [(
        "consul.yaml",
        format!("{}  exports:\n  - name: payments\n    gatewaySelector: {{istio: ingressgateway}}\n    port: {gw_port}\n", registry(&consul)),
    )];
    let gateway_opts = jalur_proxy::run::ProxyOptions {
        role: jalur_proxy::run::Role::Gateway,
        labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
        ..sidecar_opts(([127, 0, 0, 1], 1).into(), "legacy-bridge", "default")
    };
    // The crashed run's memory of its clients: this start waits for the gateway to return.
    let state_tmp = tempfile::TempDir::with_prefix("jalur-export-state-").expect("temp dir");
    let state_dir = state_tmp.path().to_path_buf();
    let gateway_id = jalur_proxy::run::node(&gateway_opts).id;
    std::fs::write(
        state_dir.join("clients.json"),
        serde_json::to_vec(&[&gateway_id]).expect("json"),
    )
    .expect("clients.json");
    let mut opts = Plane::options();
    opts.registry_grace = Duration::from_secs(20);
    opts.state_dir = Some(state_dir.clone());
    let mut plane = Plane::start_with(&files, opts).await;
    let gateway = jalur_proxy::run::Proxy::start(jalur_proxy::run::ProxyOptions {
        xds: plane.xds.to_string(),
        ..gateway_opts
    })
    .await
    .expect("gateway");

    let ids = || {
        let mut ids: Vec<String> = consul
            .instances("payments")
            .into_iter()
            .map(|i| i.id)
            .collect();
        ids.sort();
        ids
    };
    assert_eventually(
        "the stale entry is removed once the plane is warm",
        Duration::from_secs(20),
        || async {
            let now = ids();
            if now == [live_id.clone(), "payments-legacy-1".to_string()] {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
    let touched_live: Vec<String> = consul
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.contains(&live_id))
        .map(|r| r.path)
        .collect();
    assert!(
        touched_live.is_empty(),
        "the reconnected gateway's entry is kept, not deregistered and registered again: {touched_live:?}"
    );

    plane.stop().await;
    assert_eq!(
        ids(),
        ["payments-legacy-1"],
        "stopping the control plane deregisters what it owns, and only that"
    );
    gateway.shutdown().await;
}
