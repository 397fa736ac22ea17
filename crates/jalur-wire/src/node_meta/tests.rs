use super::*;

fn s(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.into())),
    }
}

fn md(pairs: &[(&str, Value)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

fn full() -> NodeMeta {
    NodeMeta {
        namespace: Some("bookinfo".into()),
        labels: [("app", "reviews"), ("version", "v2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        instance_ips: vec!["10.1.2.3".into(), "fd00::3".into()],
        workload_name: Some("reviews-v2".into()),
        service_account: Some("bookinfo-reviews".into()),
        service: Some("reviews".into()),
        role: Some(Role::Gateway),
        ports: vec![
            NamedPort {
                name: "http".into(),
                number: 9080,
            },
            NamedPort {
                name: "grpc-api".into(),
                number: 9090,
            },
        ],
        app_port: Some(8080),
        inbound_port: Some(15006),
        outbound_port: Some(15001),
        health_port: Some(15021),
        stats_port: Some(15090),
        listen_address: Some("127.0.0.1".into()),
        ephemeral_ports: true,
    }
}

#[test]
fn every_field_round_trips_through_the_struct() {
    let meta = full();
    let (back, errors) = NodeMeta::from_struct(&meta.to_struct());
    assert_eq!(errors, vec![]);
    assert_eq!(back, meta);
    let (empty, errors) = NodeMeta::from_struct(&NodeMeta::default().to_struct());
    assert_eq!((empty, errors), (NodeMeta::default(), vec![]));
}

#[test]
fn writes_the_keys_readme_documents() {
    let md = full().to_struct();
    for k in [
        key::NAMESPACE,
        key::LABELS,
        key::INSTANCE_IPS,
        key::WORKLOAD_NAME,
        key::SERVICE,
        key::ROLE,
        key::PORTS,
        key::APP_PORT,
        key::INBOUND_PORT,
        key::OUTBOUND_PORT,
        key::HEALTH_PORT,
        key::STATS_PORT,
        key::LISTEN_ADDRESS,
        key::EPHEMERAL_PORTS,
    ] {
        assert!(md.fields.contains_key(k), "{k} missing");
    }
    assert_eq!(md.fields[key::PORTS], s("http:9080,grpc-api:9090"));
    assert_eq!(md.fields[key::INSTANCE_IPS], s("10.1.2.3,fd00::3"));
}

#[test]
fn reads_istio_bootstraps_numbers_bools_and_pod_ports() {
    let number = |n: f64| Value {
        kind: Some(Kind::NumberValue(n)),
    };
    let (meta, errors) = NodeMeta::from_struct(&md(&[
        (
            key::POD_PORTS,
            s(r#"[{"name":"http","containerPort":9080,"protocol":"TCP"}]"#),
        ),
        (key::INBOUND_PORT, number(15006.0)),
        (
            key::EPHEMERAL_PORTS,
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        ),
        (key::INSTANCE_IPS, s(" 10.0.0.1 , 10.0.0.2")),
        ("ISTIO_VERSION", s("1.22.0")),
    ]));
    assert_eq!(errors, vec![]);
    assert_eq!(
        meta.ports,
        vec![NamedPort {
            name: "http".into(),
            number: 9080
        }]
    );
    assert_eq!(meta.inbound_port, Some(15006));
    assert!(meta.ephemeral_ports);
    assert_eq!(meta.instance_ips, vec!["10.0.0.1", "10.0.0.2"]);
}

#[test]
fn jalur_ports_win_over_pod_ports_and_bare_numbers_are_http() {
    let (meta, errors) = NodeMeta::from_struct(&md(&[
        (key::PORTS, s("8080, grpc:9090")),
        (key::POD_PORTS, s(r#"[{"name":"tcp","containerPort":1}]"#)),
    ]));
    assert_eq!(errors, vec![]);
    let names: Vec<String> = meta.ports.iter().map(ToString::to_string).collect();
    assert_eq!(names, vec!["http-8080:8080", "grpc:9090"]);
}

#[test]
fn a_bad_value_is_reported_by_key_and_left_out() {
    let (meta, errors) = NodeMeta::from_struct(&md(&[
        (key::INBOUND_PORT, s("fifteen")),
        (key::STATS_PORT, s("70000")),
        (key::ROLE, s("ingress")),
        (key::EPHEMERAL_PORTS, s("yes")),
        (key::PORTS, s("http:8080,grpc:x")),
        (key::POD_PORTS, s("not json")),
        (key::NAMESPACE, s("ok")),
        (
            key::LABELS,
            Value {
                kind: Some(Kind::ListValue(Default::default())),
            },
        ),
    ]));
    let keys: Vec<&str> = errors.iter().map(|e| e.key).collect();
    assert_eq!(
        keys,
        vec![
            key::PORTS,
            key::LABELS,
            key::ROLE,
            key::INBOUND_PORT,
            key::STATS_PORT,
            key::EPHEMERAL_PORTS
        ]
    );
    assert_eq!(meta.inbound_port, None);
    assert_eq!(meta.role, None);
    assert!(!meta.ephemeral_ports);
    assert_eq!(meta.namespace.as_deref(), Some("ok"));
    // The good half of a port list is kept; POD_PORTS is not read when JALUR_PORTS is set.
    assert_eq!(meta.ports.len(), 1);
    let shown = errors[0].to_string();
    assert!(
        shown.contains("JALUR_PORTS") && shown.contains("grpc:x"),
        "{shown}"
    );
}
