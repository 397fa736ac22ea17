//! Golden tests: each `testdata/golden/<scenario>/config.yaml` (plus the shared `base.yaml`) is
//! translated for a sidecar, a gateway and a proxyless gRPC client, rendered as JSON and compared
//! with the `insta` snapshot `expected.snap` beside it. After a deliberate change, run
//! `INSTA_UPDATE=always cargo test -p jalur-control golden` (or `cargo insta review`) and review
//! the diff. Under CI nothing is ever written: a mismatch fails (see [`refuse_updates_in_ci`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use serde_json::json;

use super::translate;
use crate::mesh::Mesh;
use crate::node::ClientInfo;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
}

fn node(id: &str, user_agent: &str, md: &[(&str, &str)]) -> ClientInfo {
    let mut metadata = Struct::default();
    for (k, v) in md {
        metadata.fields.insert(
            k.to_string(),
            Value {
                kind: Some(Kind::StringValue(v.to_string())),
            },
        );
    }
    ClientInfo::from_node(&Node {
        id: id.into(),
        user_agent_name: user_agent.into(),
        metadata: Some(metadata),
        ..Node::default()
    })
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

/// A node's metadata with `LABELS` as a struct, as proxies send it.
fn with_labels(md: &[(&str, &str)], labels: &[(&str, &str)]) -> Struct {
    let mut metadata = Struct::default();
    for (k, v) in md {
        metadata.fields.insert(k.to_string(), string(v));
    }
    let mut l = Struct::default();
    for (k, v) in labels {
        l.fields.insert(k.to_string(), string(v));
    }
    metadata.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(l)),
        },
    );
    metadata
}

/// The label a proxy holding mesh credentials announces.
const MTLS: (&str, &str) = ("security.istio.io/tlsMode", "istio");

fn gateway_node(secure: bool) -> ClientInfo {
    let mut labels = vec![("istio", "ingressgateway")];
    labels.extend(secure.then_some(MTLS));
    ClientInfo::from_node(&Node {
        id: "router~10.0.9.1~edge-gw-x.istio-system~istio-system.svc.cluster.local".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(with_labels(&[], &labels)),
        ..Node::default()
    })
}

fn sidecar_node(secure: bool) -> ClientInfo {
    let md = [
        ("JALUR_SERVICE", "productpage"),
        ("JALUR_PORTS", "http:9080"),
    ];
    if !secure {
        // Today's scenarios: exactly the metadata they were recorded with.
        return node(
            "sidecar~10.0.1.1~productpage-v1-x.bookinfo~bookinfo.svc.cluster.local",
            "envoy",
            &md,
        );
    }
    ClientInfo::from_node(&Node {
        id: "sidecar~10.0.1.1~productpage-v1-x.bookinfo~bookinfo.svc.cluster.local".into(),
        user_agent_name: "envoy".into(),
        metadata: Some(with_labels(&md, &[("app", "productpage"), MTLS])),
        ..Node::default()
    })
}

/// A scenario seen by clients without mesh credentials (every scenario before mTLS).
fn scenario(name: &str) {
    scenario_with(name, false)
}

/// `secure`: the sidecar and the gateway hold mesh credentials (they announce
/// `security.istio.io/tlsMode: istio`, as jalur proxy with an identity and agent-fronted Envoy do).
fn scenario_with(name: &str, secure: bool) {
    let dir = golden_dir();
    let loaded =
        jalur_model::load_paths(&[dir.join("base.yaml"), dir.join(name).join("config.yaml")]);
    assert!(!loaded.has_errors(), "{name}: {:#?}", loaded.diagnostics);
    let mesh = Mesh::build(Arc::new(loaded.config), &[]);
    let sidecar = sidecar_node(secure);
    let grpc = node("grpc-client-1", "gRPC Python", &[]);
    let gateway = gateway_node(secure);
    // A gateway sees the same clusters as a sidecar; only its listeners and routes differ.
    let mut gw = crate::render::snapshot(&translate(&mesh, &gateway));
    if let Some(m) = gw.as_object_mut() {
        m.retain(|k, _| k == "lds" || k == "rds");
    }
    let actual = json!({
        "sidecar": crate::render::snapshot(&translate(&mesh, &sidecar)),
        "gateway": gw,
        "proxyless-grpc": crate::render::snapshot(&translate(&mesh, &grpc)),
    });
    let text = serde_json::to_string_pretty(&actual).expect("json");
    refuse_updates_in_ci();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(dir.join(name));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!("expected", text));
}

/// In CI a golden file is never rewritten, whatever the environment says: insta's own default
/// there is to fail without writing, but `INSTA_UPDATE=always|force|unseen|new` or
/// `INSTA_FORCE_PASS` would accept (or stash) a changed translation and pass, and the old
/// `UPDATE_GOLDEN` rewrote the files. Any of them under `CI=true` fails the test instead.
fn refuse_updates_in_ci() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(v) = var("UPDATE_GOLDEN") {
        panic!(
            "UPDATE_GOLDEN={v} is gone: golden files are insta snapshots; run \
             `INSTA_UPDATE=always cargo test -p jalur-control golden` (never under CI)"
        );
    }
    let ci = var("CI").is_some_and(|v| v != "false" && v != "0");
    if !ci {
        return;
    }
    let update = var("INSTA_UPDATE").filter(|v| v != "auto" && v != "no");
    let force_pass = var("INSTA_FORCE_PASS").filter(|v| v != "0");
    if let Some(v) = update {
        panic!("INSTA_UPDATE={v} under CI=true: golden files are never updated in CI");
    }
    if let Some(v) = force_pass {
        panic!("INSTA_FORCE_PASS={v} under CI=true: a golden mismatch must fail in CI");
    }
}

#[test]
fn golden_split_90_10() {
    scenario("split");
}

#[test]
fn golden_header_match() {
    scenario("header-match");
}

#[test]
fn golden_retries_timeout() {
    scenario("retries-timeout");
}

#[test]
fn golden_outlier_detection() {
    scenario("outlier");
}

#[test]
fn golden_service_entry() {
    scenario("service-entry");
}

#[test]
fn golden_gateway_with_bound_virtual_service() {
    scenario("gateway");
}

/// PASSTHROUGH: one chain per claimed SNI set behind the tls_inspector, each a tcp_proxy; names
/// the server does not expose and routes for another port are left out.
#[test]
fn golden_gateway_passthrough_by_sni() {
    scenario("gateway-passthrough");
}

/// Gateway servers in each terminating mode: SIMPLE and MUTUAL with files as Istio's SDS names
/// `file-cert:`/`file-root:` (never the files' bytes), ISTIO_MUTUAL with `default`/`ROOTCA`.
#[test]
fn golden_gateway_tls_modes() {
    scenario_with("gateway-tls", true);
}

#[test]
fn golden_mtls_auto_by_endpoint_label() {
    scenario_with("mtls-auto", true);
}

#[test]
fn golden_authorization_policies() {
    scenario_with("authz", true);
}

#[test]
fn golden_mtls_strict_namespace() {
    scenario_with("mtls-strict", true);
}

#[test]
fn golden_mtls_port_level_disable_and_destination_rule_tls() {
    scenario_with("mtls-port-level", true);
}

/// The mTLS-capable mesh of `mtls-auto` for clients without credentials: today's plaintext
/// config (no socket matches, no inbound TLS chains); only endpoint metadata marks capable
/// endpoints.
#[test]
fn golden_mtls_mesh_seen_without_credentials() {
    scenario_with("mtls-no-credentials", false);
}

#[test]
fn translation_is_deterministic() {
    let dir = golden_dir();
    let loaded = jalur_model::load_paths(&[dir.join("base.yaml"), dir.join("split/config.yaml")]);
    let mesh = Mesh::build(Arc::new(loaded.config), &[]);
    let client = node(
        "sidecar~10.0.1.1~a.bookinfo~bookinfo.svc.cluster.local",
        "envoy",
        &[],
    );
    let a = translate(&mesh, &client);
    let b = translate(&mesh, &client);
    for (t, resources) in &a.resources {
        for (name, r) in resources {
            assert_eq!(
                Some(&r.version),
                b.resources[t].get(name).map(|r| &r.version),
                "{name}"
            );
        }
    }
}

/// gRPC takes a LOGICAL_DNS cluster only with exactly one endpoint; other counts of a DNS
/// service's endpoints become EDS (none) or an aggregate of one LOGICAL_DNS per endpoint.
#[test]
fn proxyless_dns_clusters_have_one_endpoint_each() {
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::extensions::clusters::aggregate::v3::ClusterConfig;
    use jalur_xds::TypeUrl;
    use prost::Message;

    let se = |endpoints: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: legacy, namespace: ns}}\nspec:\n  hosts: [legacy.example.com]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 7070, name: grpc, protocol: GRPC}}\n  endpoints: [{endpoints}]\n"
        )
    };
    let clusters = |endpoints: &str| -> Vec<Cluster> {
        let (resources, diags) = jalur_model::parse_str(Path::new("se.yaml"), &se(endpoints));
        assert!(diags.is_empty(), "{diags:#?}");
        let mesh = Mesh::build(Arc::new(jalur_model::Config::new(resources)), &[]);
        let snap = translate(&mesh, &node("grpc-client-1", "gRPC Python", &[]));
        snap.resources[&TypeUrl::Cluster]
            .values()
            .map(|r| Cluster::decode(r.body.value.as_slice()).expect("cluster"))
            .collect()
    };
    let kind = |c: &Cluster| c.cluster_discovery_type.clone();
    let dns = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::LogicalDns as i32,
    ));
    let name = "outbound|7070||legacy.example.com";

    let none = clusters("");
    assert_eq!(none.len(), 1);
    assert_eq!(
        kind(&none[0]),
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32
        ))
    );

    let one = clusters("{address: a.example.com}");
    assert_eq!((one.len(), kind(&one[0])), (1, dns.clone()));

    let two = clusters("{address: a.example.com}, {address: b.example.com, ports: {grpc: 7171}}");
    let children = [
        format!("{name}#a.example.com:7070"),
        format!("{name}#b.example.com:7171"),
    ];
    let aggregate = two.iter().find(|c| c.name == name).expect("aggregate");
    let Some(cluster::ClusterDiscoveryType::ClusterType(t)) = &aggregate.cluster_discovery_type
    else {
        panic!("not an aggregate: {aggregate:?}");
    };
    let config = t.typed_config.as_ref().expect("typed_config");
    assert_eq!(t.name, "envoy.clusters.aggregate");
    assert_eq!(
        ClusterConfig::decode(config.value.as_slice())
            .expect("ClusterConfig")
            .clusters,
        children
    );
    for child in &children {
        let c = two
            .iter()
            .find(|c| &c.name == child)
            .expect("child cluster");
        let cla = c.load_assignment.as_ref().expect("load_assignment");
        assert_eq!(kind(c), dns, "{child}");
        assert_eq!(
            (cla.endpoints.len(), cla.endpoints[0].lb_endpoints.len()),
            (1, 1)
        );
    }
}

#[test]
fn imported_services_get_the_registry_active_health_check() {
    use crate::workload::{Port, Protocol, Workload};
    let yaml = "apiVersion: jalur.dev/v1alpha1\nkind: ConsulRegistry\nmetadata: {name: legacy, namespace: default}\nspec:\n  addresses: [127.0.0.1:8500]\n  healthCheck: {httpPath: /healthz, interval: 200ms}\n";
    let (res, diags) = jalur_model::parse_str(std::path::Path::new("c.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:?}");
    let w = Workload {
        host: "payments.service.consul".into(),
        namespace: "consul".into(),
        name: "p-1".into(),
        address: "127.0.0.1".into(),
        ports: vec![Port {
            number: 80,
            name: "http".into(),
            protocol: Protocol::Http,
        }],
        target_port: Some(9001),
        labels: Default::default(),
        weight: 1,
        locality: String::new(),
        healthy: true,
        source: "consul:default/legacy".into(),
        service_account: None,
    };
    let mesh = Mesh::build(Arc::new(jalur_model::Config::new(res)), &[w]);
    let client = node(
        "sidecar~10.0.1.1~a.default~default.svc.cluster.local",
        "envoy",
        &[],
    );
    let snap = translate(&mesh, &client);
    let c = &snap.resources[&jalur_xds::TypeUrl::Cluster]["outbound|80||payments.service.consul"];
    use prost::Message;
    let cluster =
        envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(c.body.value.as_slice())
            .expect("decode");
    assert_eq!(cluster.health_checks.len(), 1, "{cluster:?}");
    assert!(
        cluster.outlier_detection.is_some(),
        "imported services get outlier detection by default"
    );
}

/// A gateway with credentials originates mTLS into the mesh: its cluster to a service with a
/// meshed instance carries the socket matches, while the service's Consul instances (no identity)
/// carry no `tlsMode` metadata and so take the plaintext `tlsMode-disabled` socket.
#[test]
fn gateway_speaks_mtls_to_meshed_instances_and_plaintext_to_consul_ones() {
    use crate::workload::{Port, Protocol, Workload};
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use jalur_xds::TypeUrl;
    use prost::Message;

    let port = Port {
        number: 80,
        name: "http".into(),
        protocol: Protocol::Http,
    };
    let consul = Workload {
        host: "payments.service.consul".into(),
        namespace: "consul".into(),
        name: "p-1".into(),
        address: "10.1.0.1".into(),
        ports: vec![port.clone()],
        target_port: Some(9001),
        labels: [
            ("jalur.dev/origin".to_string(), "consul".to_string()),
            // Even a stray label cannot make an instance without identity mTLS-capable.
            ("security.istio.io/tlsMode".to_string(), "istio".to_string()),
        ]
        .into(),
        weight: 1,
        locality: String::new(),
        healthy: true,
        source: "consul:default/legacy".into(),
        service_account: None,
    };
    let meshed = Workload {
        address: "10.0.5.1".into(),
        target_port: Some(15006),
        labels: [
            ("jalur.dev/origin".to_string(), "mesh".to_string()),
            ("security.istio.io/tlsMode".to_string(), "istio".to_string()),
        ]
        .into(),
        source: "proxy:sidecar~10.0.5.1~payments-1.shop~shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        service_account: Some("payments".into()),
        ..consul.clone()
    };
    let mesh = Mesh::build(Arc::default(), &[consul, meshed]);
    let snap = translate(&mesh, &gateway_node(true));
    let name = "outbound|80||payments.service.consul";
    let c = Cluster::decode(
        snap.resources[&TypeUrl::Cluster][name]
            .body
            .value
            .as_slice(),
    )
    .expect("cluster");
    let names: Vec<&str> = c
        .transport_socket_matches
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["tlsMode-istio", "tlsMode-disabled"]);
    let rendered = crate::render::resource(
        TypeUrl::Cluster,
        &snap.resources[&TypeUrl::Cluster][name].body,
    );
    assert!(
        rendered
            .to_string()
            .contains("spiffe://cluster.local/ns/shop/sa/payments"),
        "{rendered}"
    );
    let cla = ClusterLoadAssignment::decode(
        snap.resources[&TypeUrl::ClusterLoadAssignment][name]
            .body
            .value
            .as_slice(),
    )
    .expect("cla");
    let marked: Vec<(String, bool)> = cla.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| {
            let rendered = format!("{:?}", e.host_identifier);
            let address = if rendered.contains("10.1.0.1") {
                "consul"
            } else {
                "mesh"
            };
            (address.to_string(), e.metadata.is_some())
        })
        .collect();
    assert_eq!(
        marked,
        [("mesh".to_string(), true), ("consul".to_string(), false)]
    );
    // The same gateway without credentials keeps today's plaintext cluster.
    let snap = translate(&mesh, &gateway_node(false));
    let c = Cluster::decode(
        snap.resources[&TypeUrl::Cluster][name]
            .body
            .value
            .as_slice(),
    )
    .expect("cluster");
    assert!(c.transport_socket_matches.is_empty() && c.transport_socket.is_none());
}

/// A sidecar whose app port is declared TCP gets a tcp_proxy inbound to `inbound|PORT||` (an HTTP
/// connection manager would refuse a database's bytes), in the same TLS chains as HTTP: STRICT
/// with credentials, plaintext without. A port name that declares nothing stays HTTP.
#[test]
fn tcp_app_port_gets_a_tcp_proxy_inbound_in_the_policy_tls_chains() {
    let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec:\n  mtls: {mode: STRICT}\n";
    let (res, diags) = jalur_model::parse_str(Path::new("pa.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:?}");
    let mesh = Mesh::build(Arc::new(jalur_model::Config::new(res)), &[]);
    let redis = |ports: &str, labels: &[(&str, &str)]| {
        ClientInfo::from_node(&Node {
            id: "sidecar~10.0.7.1~cache-1.shop~shop.svc.cluster.local".into(),
            metadata: Some(with_labels(
                &[("JALUR_SERVICE", "cache"), ("JALUR_PORTS", ports)],
                labels,
            )),
            ..Node::default()
        })
    };
    let inbound = |client: &ClientInfo| {
        let snap = crate::render::snapshot(&translate(&mesh, client));
        (
            snap["lds"]["inbound"].clone(),
            snap["rds"].get("inbound").cloned(),
        )
    };

    let (listener, routes) = inbound(&redis("tcp-redis:6379", &[("app", "cache"), MTLS]));
    assert_eq!(routes, None, "a TCP inbound has no route table");
    let chains = listener["filter_chains"].as_array().expect("chains");
    assert_eq!(chains.len(), 1, "STRICT: the TLS chain only: {listener}");
    assert_eq!(chains[0]["transport_protocol"], "tls");
    assert_eq!(
        chains[0]["filters"],
        json!([{ "tcp_proxy": "inbound|6379||" }])
    );
    assert!(
        chains[0]["transport_socket"]["downstream_tls"]["require_client_certificate"]
            .as_bool()
            .unwrap_or(false)
    );
    assert_eq!(
        listener["listener_filters"],
        json!(["envoy.filters.listener.tls_inspector"])
    );

    let (listener, _) = inbound(&redis("tcp-redis:6379", &[("app", "cache")]));
    assert_eq!(
        listener["filters"],
        json!([{ "tcp_proxy": "inbound|6379||" }]),
        "without credentials: plaintext tcp_proxy: {listener}"
    );

    let (listener, routes) = inbound(&redis("web:8080", &[("app", "cache")]));
    assert!(routes.is_some(), "an undeclared port name stays HTTP");
    assert!(
        listener.to_string().contains("http_connection_manager"),
        "{listener}"
    );
}

/// SANs follow the mesh's trust domain (the CA's `--trust-domain`), not a fixed `cluster.local`:
/// certificates of another domain would never match.
#[test]
fn spiffe_ids_use_the_mesh_trust_domain() {
    let dir = golden_dir();
    let loaded =
        jalur_model::load_paths(&[dir.join("base.yaml"), dir.join("mtls-auto/config.yaml")]);
    let security = crate::mesh::Security::from(&crate::ca::CaOptions {
        trust_domain: "pay.example".into(),
        ..crate::ca::CaOptions::default()
    });
    let mesh = Mesh::build_with(Arc::new(loaded.config), &[], security);
    let text = crate::render::snapshot(&translate(&mesh, &sidecar_node(true))).to_string();
    assert!(
        text.contains("spiffe://pay.example/ns/bookinfo/sa/ratings"),
        "{text}"
    );
    assert!(
        text.contains("\"uri_prefix\":\"spiffe://pay.example/\""),
        "{text}"
    );
    assert!(!text.contains("cluster.local/ns/"), "{text}");
}

/// Auto mTLS follows the destination's PeerAuthentication, as Istio's does: a capable endpoint
/// whose policy DISABLEs mTLS (here on one workload, by port) carries no `tlsMode: istio`
/// metadata on that port, so a caller with credentials speaks plaintext to it — its inbound
/// serves plaintext only — while the other port and other workloads stay mTLS.
#[test]
fn a_destination_that_disables_mtls_is_called_in_plaintext_by_callers_with_credentials() {
    use crate::workload::{Port, Protocol, Workload};
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use jalur_xds::TypeUrl;
    use prost::Message;

    let yaml = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: payments, namespace: shop}\nspec:\n  selector: {matchLabels: {app: payments, version: legacy-tls}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    80: {mode: DISABLE}\n";
    let (res, diags) = jalur_model::parse_str(Path::new("pa.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:?}");
    let ports = vec![
        Port {
            number: 80,
            name: "http".into(),
            protocol: Protocol::Http,
        },
        Port {
            number: 81,
            name: "http-admin".into(),
            protocol: Protocol::Http,
        },
    ];
    let workload = |address: &str, version: &str| Workload {
        host: "payments.shop.svc.cluster.local".into(),
        namespace: "shop".into(),
        name: format!("payments-{version}"),
        address: address.into(),
        ports: ports.clone(),
        target_port: Some(15006),
        labels: [
            ("app", "payments"),
            ("version", version),
            ("security.istio.io/tlsMode", "istio"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        weight: 1,
        locality: String::new(),
        healthy: true,
        source: format!("proxy:sidecar~{address}~payments-{version}.shop~shop.svc.cluster.local"),
        service_account: Some("payments".into()),
    };
    let mesh = Mesh::build(
        Arc::new(jalur_model::Config::new(res)),
        &[
            workload("10.0.5.1", "v2"),
            workload("10.0.5.2", "legacy-tls"),
        ],
    );
    let snap = translate(&mesh, &sidecar_node(true));
    let marked = |port: u32| -> Vec<(bool, bool)> {
        let name = format!("outbound|{port}||payments.shop.svc.cluster.local");
        let cla = ClusterLoadAssignment::decode(
            snap.resources[&TypeUrl::ClusterLoadAssignment][&name]
                .body
                .value
                .as_slice(),
        )
        .expect("cla");
        cla.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .map(|e| {
                let legacy = format!("{:?}", e.host_identifier).contains("10.0.5.2");
                (legacy, e.metadata.is_some())
            })
            .collect()
    };
    assert_eq!(
        marked(80),
        [(false, true), (true, false)],
        "port 80: v2 over mTLS, the DISABLEd workload in plaintext"
    );
    assert_eq!(
        marked(81),
        [(false, true), (true, true)],
        "port 81 keeps the workload's STRICT"
    );
}

/// Istio's `Sidecar`: a bookinfo sidecar whose Sidecar admits `./*` and one billing host sees
/// those services' clusters, endpoints and routes and nothing of the rest; a gateway is never
/// scoped; without the Sidecar it sees everything.
#[test]
fn a_sidecar_resource_scopes_what_a_proxy_sees() {
    let dir = golden_dir();
    let others = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ledger, namespace: billing}\nspec:\n  hosts: [ledger.billing.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 8080, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.9.0.1}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: invoices, namespace: billing}\nspec:\n  hosts: [invoices.billing.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 8080, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.9.0.2}]\n";
    let sidecar = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: default, namespace: bookinfo}\nspec:\n  egress:\n  - hosts: [\"./*\", \"billing/ledger.billing.svc.cluster.local\"]\n";
    let mesh = |extra: &str| {
        let (mut resources, diags) =
            jalur_model::parse_str(Path::new("scoped.yaml"), &format!("{others}---\n{extra}"));
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:#?}");
        let base = jalur_model::load_paths(&[dir.join("base.yaml")]);
        resources.extend(base.config.resources);
        Mesh::build(Arc::new(jalur_model::Config::new(resources)), &[])
    };
    let clusters = |mesh: &Mesh, client: &ClientInfo| -> Vec<String> {
        translate(mesh, client)
            .of_type(jalur_xds::TypeUrl::Cluster)
            .map(|m| {
                m.keys()
                    .filter(|k| k.starts_with("outbound|"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let eds = |mesh: &Mesh, client: &ClientInfo| -> Vec<String> {
        translate(mesh, client)
            .of_type(jalur_xds::TypeUrl::ClusterLoadAssignment)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let open = mesh("");
    let scoped = mesh(sidecar);
    let productpage = sidecar_node(false);
    let all = clusters(&open, &productpage);
    assert!(
        all.iter()
            .any(|c| c.ends_with("|invoices.billing.svc.cluster.local")),
        "{all:?}"
    );
    let seen = clusters(&scoped, &productpage);
    assert!(
        seen.iter()
            .any(|c| c.ends_with("|ledger.billing.svc.cluster.local")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|c| c.ends_with("|reviews.bookinfo.svc.cluster.local")),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|c| c.contains("invoices")), "{seen:?}");
    assert!(!eds(&scoped, &productpage)
        .iter()
        .any(|c| c.contains("invoices")));
    let routes = crate::render::snapshot(&translate(&scoped, &productpage))["rds"].to_string();
    assert!(
        routes.contains("ledger.billing") && !routes.contains("invoices"),
        "{routes}"
    );
    // The gateway is not scoped by a Sidecar.
    let gateway = gateway_node(false);
    assert!(clusters(&scoped, &gateway)
        .iter()
        .any(|c| c.contains("invoices")));
}
