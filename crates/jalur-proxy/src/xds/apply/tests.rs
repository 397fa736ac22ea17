//! Applying responses without a socket, through the fake conversion of `xds/tests.rs`.

use envoy_types::pb::google::protobuf::Any;

use super::*;
use crate::xds::tests::{
    cla, eds_cluster, http_listener, routes, static_cluster, tcp_listener, FAKE,
};

fn any<M: prost::Name + prost::Message>(msg: M) -> Any {
    envoy_types::util::pack_any(msg)
}

fn sotw(rtype: ResourceType, bodies: Vec<Any>) -> Update {
    Update {
        rtype,
        replace: rtype.is_wildcard(),
        resources: bodies
            .into_iter()
            .map(|body| WireResource {
                name: None,
                version: String::new(),
                body,
            })
            .collect(),
        removed: Vec::new(),
    }
}

fn delta(rtype: ResourceType, named: Vec<(&str, Any)>, removed: &[&str]) -> Update {
    Update {
        rtype,
        replace: false,
        resources: named
            .into_iter()
            .map(|(name, body)| WireResource {
                name: Some(name.to_string()),
                version: format!("v-{name}"),
                body,
            })
            .collect(),
        removed: removed.iter().map(|s| s.to_string()).collect(),
    }
}

fn names<T>(map: &BTreeMap<String, T>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

fn ports(s: &Snapshot, key: &str) -> Vec<u16> {
    s.endpoints[key]
        .endpoints
        .iter()
        .map(|e| e.addr.port())
        .collect()
}

fn ok(current: &Snapshot, update: &Update) -> Snapshot {
    match apply(current, update, FAKE) {
        Ok(next) => next,
        Err(errors) => panic!("rejected: {}", describe(&errors)),
    }
}

/// Listeners `outbound` (RDS r1) and `tcp`, route r1, EDS cluster `a` with its endpoints, static
/// cluster `s`.
fn base() -> Snapshot {
    let s = Snapshot::default();
    let s = ok(
        &s,
        &sotw(
            ResourceType::Cluster,
            vec![any(eds_cluster("a", "")), any(static_cluster("s", &[9001]))],
        ),
    );
    let s = ok(
        &s,
        &sotw(
            ResourceType::ClusterLoadAssignment,
            vec![any(cla("a", &[8001]))],
        ),
    );
    let s = ok(
        &s,
        &sotw(
            ResourceType::Listener,
            vec![
                any(http_listener("outbound", "r1")),
                any(tcp_listener("tcp")),
            ],
        ),
    );
    ok(
        &s,
        &sotw(
            ResourceType::RouteConfiguration,
            vec![any(routes("r1", &["v1"]))],
        ),
    )
}

#[test]
fn base_holds_everything_it_references() {
    let s = base();
    assert_eq!(names(&s.listeners), ["outbound", "tcp"]);
    assert_eq!(names(&s.routes), ["r1"]);
    assert_eq!(names(&s.clusters), ["a", "s"]);
    // An empty EDS service name means the cluster's own.
    assert_eq!(names(&s.endpoints), ["a", "s"]);
    assert_eq!(ports(&s, "s"), [9001]);
    assert_eq!(
        wanted(ResourceType::RouteConfiguration, &s),
        BTreeSet::from(["r1".to_string()])
    );
    assert_eq!(
        wanted(ResourceType::ClusterLoadAssignment, &s),
        BTreeSet::from(["a".to_string()])
    );
    assert!(wanted(ResourceType::Listener, &s).is_empty());
}

#[test]
fn sotw_listeners_replace_the_set_and_unreferenced_routes_go() {
    let next = ok(
        &base(),
        &sotw(ResourceType::Listener, vec![any(http_listener("in", "r9"))]),
    );
    assert_eq!(names(&next.listeners), ["in"]);
    assert!(next.routes.is_empty(), "r1 outlived its listener");
    assert_eq!(names(&next.clusters), ["a", "s"]);
}

#[test]
fn sotw_routes_and_endpoints_are_by_name() {
    let s = base();
    let two = ok(
        &s,
        &sotw(
            ResourceType::Listener,
            vec![
                any(http_listener("outbound", "r1")),
                any(http_listener("in", "r2")),
            ],
        ),
    );
    let next = ok(
        &two,
        &sotw(
            ResourceType::RouteConfiguration,
            vec![any(routes("r2", &["v2"]))],
        ),
    );
    assert_eq!(names(&next.routes), ["r1", "r2"]);
    let next = ok(
        &next,
        &sotw(
            ResourceType::ClusterLoadAssignment,
            vec![any(cla("a", &[8002]))],
        ),
    );
    assert_eq!(ports(&next, "a"), [8002]);
    assert_eq!(ports(&next, "s"), [9001]);
}

#[test]
fn delta_upserts_and_removes() {
    let s = base();
    let next = ok(
        &s,
        &delta(
            ResourceType::Cluster,
            vec![("b", any(eds_cluster("b", "svc-b")))],
            &["s"],
        ),
    );
    assert_eq!(names(&next.clusters), ["a", "b"]);
    assert_eq!(
        names(&next.endpoints),
        ["a"],
        "s's inline endpoints went with it"
    );
    let next = ok(
        &next,
        &delta(
            ResourceType::ClusterLoadAssignment,
            vec![("svc-b", any(cla("svc-b", &[1])))],
            &["a"],
        ),
    );
    assert_eq!(names(&next.endpoints), ["svc-b"]);
    let next = ok(
        &next,
        &delta(ResourceType::Listener, Vec::new(), &["outbound"]),
    );
    assert_eq!(names(&next.listeners), ["tcp"]);
    assert!(next.routes.is_empty());
}

#[test]
fn one_bad_resource_rejects_the_whole_response() {
    let s = base();
    let update = sotw(
        ResourceType::Cluster,
        vec![
            any(static_cluster("s", &[9002])),
            any(eds_cluster("bad-x", "")),
            any(eds_cluster("bad-y", "")),
        ],
    );
    let errors = apply(&s, &update, FAKE).expect_err("rejected");
    assert_eq!(
        describe(&errors),
        "Cluster bad-x: lb_policy: rejected by the fake conversion; \
         Cluster bad-y: lb_policy: rejected by the fake conversion"
    );
}

#[test]
fn wire_faults_name_the_resource_and_field() {
    let s = base();
    let wrong_type = sotw(ResourceType::Cluster, vec![any(tcp_listener("l"))]);
    let errors = apply(&s, &wrong_type, FAKE).expect_err("wrong type");
    assert_eq!(errors[0].name, "resources[0]");
    assert_eq!(errors[0].field, "type_url");
    assert!(
        errors[0]
            .message
            .contains("envoy.config.listener.v3.Listener"),
        "{}",
        errors[0]
    );

    let garbage = Any {
        type_url: ResourceType::Cluster.type_url().to_string(),
        value: vec![0xff, 0xff, 0xff],
    };
    let errors = apply(
        &s,
        &delta(ResourceType::Cluster, vec![("g", garbage)], &[]),
        FAKE,
    )
    .expect_err("garbage");
    assert_eq!(
        (
            errors[0].kind,
            errors[0].name.as_str(),
            errors[0].field.as_str()
        ),
        ("Cluster", "g", "resource")
    );
    assert!(
        errors[0].message.starts_with("cannot decode"),
        "{}",
        errors[0]
    );

    let misnamed = delta(
        ResourceType::Cluster,
        vec![("x", any(eds_cluster("y", "")))],
        &[],
    );
    let errors = apply(&s, &misnamed, FAKE).expect_err("misnamed");
    assert_eq!(
        errors[0].to_string(),
        r#"Cluster x: name: the resource inside is named "y""#
    );

    let twice = sotw(
        ResourceType::Listener,
        vec![any(tcp_listener("l")), any(tcp_listener("l"))],
    );
    let errors = apply(&s, &twice, FAKE).expect_err("duplicate");
    assert_eq!(
        errors[0].to_string(),
        "Listener l: name: appears more than once in one response"
    );
}

#[test]
fn a_cluster_keeps_its_endpoints_until_its_new_eds_arrives() {
    let s = base();
    // Same service name: a CDS update leaves the endpoints alone.
    let next = ok(
        &s,
        &delta(
            ResourceType::Cluster,
            vec![("a", any(eds_cluster("a", "a")))],
            &[],
        ),
    );
    assert_eq!(ports(&next, "a"), [8001]);
    // New service name: the old endpoints serve under it until its CLA comes.
    let next = ok(
        &s,
        &delta(
            ResourceType::Cluster,
            vec![("a", any(eds_cluster("a", "a-v2")))],
            &[],
        ),
    );
    assert_eq!(names(&next.endpoints), ["a-v2", "s"]);
    assert_eq!(ports(&next, "a-v2"), [8001]);
    let next = ok(
        &next,
        &delta(
            ResourceType::ClusterLoadAssignment,
            vec![("a-v2", any(cla("a-v2", &[8100])))],
            &[],
        ),
    );
    assert_eq!(ports(&next, "a-v2"), [8100]);
    // Static to EDS under the same name: the inline endpoints serve until the CLA comes.
    let next = ok(
        &s,
        &delta(
            ResourceType::Cluster,
            vec![("s", any(eds_cluster("s", "")))],
            &[],
        ),
    );
    assert_eq!(ports(&next, "s"), [9001]);
}

#[test]
fn endpoints_nobody_owns_are_dropped() {
    let next = ok(
        &base(),
        &sotw(
            ResourceType::ClusterLoadAssignment,
            vec![any(cla("stray", &[1]))],
        ),
    );
    assert_eq!(names(&next.endpoints), ["a", "s"]);
}

#[test]
fn complete_needs_lds_cds_and_everything_they_reference() {
    let mut held = Held::default();
    let empty = BTreeSet::new();
    let s = Snapshot::default();
    let cds = delta(
        ResourceType::Cluster,
        vec![("a", any(eds_cluster("a", "")))],
        &[],
    );
    let s = ok(&s, &cds);
    held.accepted(&cds, "1", &empty, &s);
    assert!(!held.complete(&s), "no LDS yet");
    let lds = delta(
        ResourceType::Listener,
        vec![("outbound", any(http_listener("outbound", "r1")))],
        &[],
    );
    let s = ok(&s, &lds);
    held.accepted(&lds, "1", &empty, &s);
    assert!(!held.complete(&s), "no routes or endpoints yet");
    let rds = delta(
        ResourceType::RouteConfiguration,
        vec![("r1", any(routes("r1", &[])))],
        &[],
    );
    let s = ok(&s, &rds);
    held.accepted(&rds, "2", &BTreeSet::from(["r1".to_string()]), &s);
    assert!(!held.complete(&s), "no endpoints yet");
    // The server says `a` does not exist: nothing left to wait for.
    let eds = delta(ResourceType::ClusterLoadAssignment, Vec::new(), &["a"]);
    let s = ok(&s, &eds);
    held.accepted(&eds, "3", &BTreeSet::from(["a".to_string()]), &s);
    assert!(held.complete(&s));
    assert_eq!(
        held.type_versions[&ResourceType::ClusterLoadAssignment],
        "3"
    );
}

#[test]
fn held_versions_follow_the_snapshot() {
    let mut held = Held::default();
    let s = base();
    let lds = delta(
        ResourceType::Listener,
        vec![("outbound", any(http_listener("outbound", "r1")))],
        &[],
    );
    let s = ok(&s, &lds);
    held.accepted(&lds, "1", &BTreeSet::new(), &s);
    let rds = delta(
        ResourceType::RouteConfiguration,
        vec![("r1", any(routes("r1", &[])))],
        &[],
    );
    let s = ok(&s, &rds);
    held.accepted(&rds, "2", &BTreeSet::from(["r1".to_string()]), &s);
    let all = held.versions_of(ResourceType::RouteConfiguration, None);
    assert_eq!(all.get("r1").map(String::as_str), Some("v-r1"));
    let none = held.versions_of(ResourceType::RouteConfiguration, Some(&BTreeSet::new()));
    assert!(none.is_empty());
    // Removing the listener drops r1 from the snapshot, and so from what the client claims.
    let gone = delta(ResourceType::Listener, Vec::new(), &["outbound"]);
    let s = ok(&s, &gone);
    held.accepted(&gone, "3", &BTreeSet::new(), &s);
    assert!(held
        .versions_of(ResourceType::RouteConfiguration, None)
        .is_empty());
    assert_eq!(held.versions_of(ResourceType::Listener, None).len(), 0);
}
