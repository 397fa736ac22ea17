use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use super::*;
use crate::node::ClientInfo;

fn sidecar(md: &[(&str, &str)], labels: &[(&str, &str)]) -> ClientInfo {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let mut metadata = Struct::default();
    for (k, v) in md {
        metadata.fields.insert(k.to_string(), s(v));
    }
    let mut l = Struct::default();
    for (k, v) in labels {
        l.fields.insert(k.to_string(), s(v));
    }
    metadata.fields.insert(
        "LABELS".into(),
        Value {
            kind: Some(Kind::StructValue(l)),
        },
    );
    ClientInfo::from_node(&Node {
        id: "sidecar~10.0.3.1~payments-1.shop~shop.svc.cluster.local".into(),
        metadata: Some(metadata),
        ..Node::default()
    })
}

const MTLS: (&str, &str) = ("security.istio.io/tlsMode", "istio");

fn identity_of(w: &Workload) -> Option<Identity> {
    let mesh = Mesh::build(Arc::default(), std::slice::from_ref(w));
    mesh.endpoints(&w.host)[0].identity.clone()
}

#[test]
fn a_proxy_with_credentials_is_mtls_capable_with_its_service_account() {
    let md = [("JALUR_SERVICE", "payments"), ("JALUR_PORTS", "http:8080")];
    let w = sidecar(&md, &[MTLS]).workload().expect("workload");
    assert_eq!(
        w.service_account.as_deref(),
        Some("payments"),
        "defaults to the service"
    );
    let id = identity_of(&w).expect("identity");
    assert_eq!(
        id.spiffe_id("cluster.local"),
        "spiffe://cluster.local/ns/shop/sa/payments"
    );

    let md = [
        ("JALUR_SERVICE", "payments"),
        ("JALUR_PORTS", "http:8080"),
        ("SERVICE_ACCOUNT", "payments-api"),
    ];
    let w = sidecar(&md, &[MTLS]).workload().expect("workload");
    assert_eq!(
        identity_of(&w).map(|i| i.service_account).as_deref(),
        Some("payments-api")
    );
    // Without the label the proxy has no credentials: callers keep plaintext.
    let w = sidecar(&md, &[]).workload().expect("workload");
    assert!(!w.mtls_capable());
    assert_eq!(identity_of(&w), None);
}

#[test]
fn registry_instances_without_an_account_are_never_mtls_capable() {
    let mut w = sidecar(
        &[("JALUR_SERVICE", "payments"), ("JALUR_PORTS", "http:80")],
        &[MTLS],
    )
    .workload()
    .expect("workload");
    // What consul.rs reports: no account, whatever the instance's metadata says.
    w.source = "consul:default/legacy".into();
    w.service_account = None;
    assert!(!w.mtls_capable());
    assert_eq!(identity_of(&w), None);
}

#[test]
fn workload_entries_carry_their_service_account() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: ledger, namespace: shop}\nspec:\n  hosts: [ledger.shop.svc.cluster.local]\n  location: MESH_INTERNAL\n  ports: [{number: 80, name: http}]\n  endpoints:\n  - {address: 10.0.0.1, labels: {security.istio.io/tlsMode: istio}, serviceAccount: ledger-sa}\n  - {address: 10.0.0.2, labels: {security.istio.io/tlsMode: istio}}\n  - {address: 10.0.0.3}\n";
    let (res, diags) = jalur_model::parse_str(Path::new("se.yaml"), yaml);
    assert!(diags.is_empty(), "{diags:?}");
    let mesh = Mesh::build(Arc::new(jalur_model::Config::new(res)), &[]);
    let ids: Vec<Option<String>> = mesh
        .endpoints("ledger.shop.svc.cluster.local")
        .iter()
        .map(|e| e.identity.as_ref().map(|i| i.spiffe_id("td.example")))
        .collect();
    assert_eq!(
        ids,
        [
            Some("spiffe://td.example/ns/shop/sa/ledger-sa".to_string()),
            Some("spiffe://td.example/ns/shop/sa/ledger".to_string()),
            None
        ]
    );
}

#[test]
fn a_host_served_by_an_import_and_by_proxies_is_imported_whatever_the_order() {
    let meshed = sidecar(
        &[("JALUR_SERVICE", "payments"), ("JALUR_PORTS", "http:8080")],
        &[MTLS],
    )
    .workload()
    .expect("workload");
    assert!(meshed.source.starts_with("proxy:"), "{}", meshed.source);
    let mut legacy = meshed.clone();
    legacy.source = "consul:shop/legacy".into();
    legacy.address = "10.0.9.9".into();
    legacy.service_account = None;
    for set in [
        vec![meshed.clone(), legacy.clone()],
        vec![legacy.clone(), meshed.clone()],
    ] {
        let mesh = Mesh::build(Arc::default(), &set);
        let service = &mesh.services[&meshed.host];
        assert_eq!(
            service.imported_from.as_deref(),
            Some("consul:shop/legacy"),
            "order {:?}",
            set.iter().map(|w| &w.source).collect::<Vec<_>>()
        );
        assert_eq!(mesh.endpoints(&meshed.host).len(), 2);
    }
}
