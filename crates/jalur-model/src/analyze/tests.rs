use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;
use crate::{parse_str, Severity};

/// Services most tests route to: reviews (one port), ratings (two ports), an external API.
const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9443, name: https, protocol: HTTPS}]
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments-api}
spec:
  hosts: [api.payments.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;

fn diags_with(yaml: &str, extra: &KnownServices) -> Vec<Diagnostic> {
    let text = format!("{SERVICES}---\n{yaml}");
    let (resources, load) = parse_str(Path::new("t.yaml"), &text);
    assert!(load.is_empty(), "test config does not load: {load:?}");
    analyze_with(&Config::new(resources), extra)
}

fn diags(yaml: &str) -> Vec<Diagnostic> {
    diags_with(yaml, &KnownServices::new())
}

/// (code, severity, field) of every Warning and Error.
fn findings(yaml: &str) -> Vec<(&'static str, Severity, String)> {
    diags(yaml)
        .into_iter()
        .filter(|d| d.severity > Severity::Info)
        .map(|d| (d.code, d.severity, d.field.unwrap_or_default()))
        .collect()
}

fn codes_of(yaml: &str) -> Vec<&'static str> {
    findings(yaml).into_iter().map(|(c, ..)| c).collect()
}

fn vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

#[test]
fn services_alone_are_clean() {
    assert_eq!(findings("kind: VirtualService\napiVersion: networking.istio.io/v1\nmetadata: {name: x}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}\n"), vec![]);
    assert!(analyze(&Config::default()).is_empty());
}

#[test]
fn weights_must_sum_to_100_with_several_destinations() {
    let ok = vs("  - route:\n    - {destination: {host: reviews, subset: v1}, weight: 90}\n    - {destination: {host: reviews, subset: v2}, weight: 10}\n");
    assert_eq!(codes_of(&ok), Vec::<&str>::new());
    let bad = ok.replace("weight: 10", "weight: 20");
    assert_eq!(
        findings(&bad),
        vec![("JAL0101", Severity::Error, "spec.http[0].route".into())]
    );
    let missing = ok.replace(", weight: 10", "");
    let d = diags(&missing);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].message.contains("90, -") && d[0].message.contains("sum to 90"),
        "{}",
        d[0]
    );
    let single = vs("  - route:\n    - destination: {host: reviews}\n");
    assert!(codes_of(&single).is_empty());
}

#[test]
fn subsets_must_be_defined_by_a_rule_for_the_host() {
    let bad = vs("  - route:\n    - destination: {host: reviews, subset: v3}\n");
    let d = diags(&bad);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].code, "JAL0102");
    assert_eq!(
        d[0].field.as_deref(),
        Some("spec.http[0].route[0].destination.subset")
    );
    assert!(d[0].message.contains("v1, v2"), "{}", d[0]);
    // No rule at all for ratings; mirrors are destinations too.
    let mirror = vs("  - route:\n    - destination: {host: reviews}\n    mirror: {host: ratings, subset: v1, port: {number: 9080}}\n");
    assert_eq!(
        findings(&mirror),
        vec![(
            "JAL0102",
            Severity::Error,
            "spec.http[0].mirror.subset".into()
        )]
    );
    // A rule in another namespace naming the FQDN counts.
    let other_ns = format!(
        "{}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: r, namespace: ops}}\nspec:\n  host: ratings.default.svc.cluster.local\n  subsets: [{{name: v1, labels: {{version: v1}}}}]\n",
        mirror
    );
    assert!(codes_of(&other_ns).is_empty(), "{:?}", findings(&other_ns));
}

#[test]
fn unknown_hosts_are_errors_except_mesh_internal_ones() {
    let external = vs("  - route:\n    - destination: {host: api.unknown.example.com}\n");
    assert_eq!(findings(&external)[0].0, "JAL0103");
    assert_eq!(findings(&external)[0].1, Severity::Error);
    let internal = vs("  - route:\n    - destination: {host: details}\n");
    let f = findings(&internal);
    assert_eq!(
        f,
        vec![(
            "JAL0103",
            Severity::Warning,
            "spec.http[0].route[0].destination.host".into()
        )]
    );
    let mut extra = KnownServices::new();
    extra.insert(
        "details.default.svc.cluster.local".into(),
        BTreeSet::from([9080]),
    );
    assert!(diags_with(&internal, &extra).is_empty());
    let wrong_port = internal.replace("host: details}", "host: details, port: {number: 80}}");
    let d = diags_with(&wrong_port, &extra);
    assert_eq!(
        d.iter().map(|d| d.code).collect::<Vec<_>>(),
        ["JAL0106"],
        "{d:?}"
    );
    // Ports unknown: no port check.
    extra.insert("details.default.svc.cluster.local".into(), BTreeSet::new());
    assert!(diags_with(&wrong_port, &extra).is_empty());
}

#[test]
fn wildcard_service_entries_know_their_subdomains() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: g}\nspec: {hosts: ['*.googleapis.com'], ports: [{number: 443, name: tls, protocol: TLS}]}\n---\n";
    let text = format!(
        "{se}{}",
        vs("  - route:\n    - destination: {host: storage.googleapis.com}\n")
    );
    assert!(codes_of(&text).is_empty(), "{:?}", findings(&text));
}

#[test]
fn two_virtual_services_claiming_a_host_conflict_per_gateway() {
    let first = vs("  - route:\n    - destination: {host: reviews}\n");
    let second = first
        .replace("name: reviews}", "name: reviews-2}")
        .replace("[reviews]", "[reviews.default.svc.cluster.local]");
    let text = format!("{first}---\n{second}");
    let d = diags(&text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].code, d[0].field.as_deref()),
        ("JAL0104", Some("spec.hosts[0]"))
    );
    assert!(
        d[0].message.contains("default/reviews (t.yaml:"),
        "{}",
        d[0]
    );
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]}\n---\n";
    let bound = second.replace("spec:\n", "spec:\n  gateways: [gw]\n");
    let text = format!("{gw}{first}---\n{bound}");
    assert!(codes_of(&text).is_empty(), "{:?}", findings(&text));
}

#[test]
fn duplicates_name_the_first_copy() {
    let one = vs("  - route:\n    - destination: {host: reviews}\n");
    let d = diags(&format!("{one}---\n{one}"));
    assert_eq!(
        d.iter().map(|d| d.code).collect::<Vec<_>>(),
        ["JAL0100"],
        "{d:?}"
    );
    assert!(
        d[0].message.contains("already defined at t.yaml:"),
        "{}",
        d[0]
    );
    assert_eq!(d[0].field.as_deref(), Some("metadata.name"));
}

#[test]
fn destination_rules_for_unknown_hosts() {
    let dr = |host: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d}}\nspec: {{host: {host}}}\n")
    };
    assert_eq!(
        findings(&dr("api.nowhere.example.com")),
        vec![("JAL0105", Severity::Warning, "spec.host".into())]
    );
    let info = diags(&dr("details"));
    assert_eq!(
        (info[0].code, info[0].severity),
        ("JAL0105", Severity::Info)
    );
    assert!(findings(&dr("'*.nowhere.org'"))
        .iter()
        .any(|f| f.0 == "JAL0105"));
    // A wildcard rule that covers a known host applies to it.
    assert!(findings(&dr("'*.example.com'")).is_empty());
    assert!(findings(&dr("'*.payments.example.com'")).is_empty());
}

#[test]
fn ports_must_be_ones_the_host_has() {
    // No port on a host with several: the request's own port (Istio's rule), a Warning.
    let several = vs("  - route:\n    - destination: {host: ratings}\n");
    assert_eq!(
        findings(&several),
        vec![(
            "JAL0106",
            Severity::Warning,
            "spec.http[0].route[0].destination".into()
        )]
    );
    let chosen = vs("  - route:\n    - destination: {host: ratings, port: {number: 9443}}\n");
    assert!(codes_of(&chosen).is_empty());
    let out_of_range =
        vs("  - route:\n    - destination: {host: ratings, port: {number: 70000}}\n");
    assert_eq!(codes_of(&out_of_range), ["JAL0124"]);
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: ratings\n  trafficPolicy:\n    portLevelSettings: [{port: {number: 8080}}]\n";
    assert_eq!(
        findings(dr),
        vec![(
            "JAL0106",
            Severity::Error,
            "spec.trafficPolicy.portLevelSettings[0].port.number".into()
        )]
    );
}

#[test]
fn gateway_match_ports_and_names() {
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: ingress}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*/*']}]}\n---\n";
    let route = "  - match: [{port: 8080}]\n    route: [{destination: {host: reviews}}]\n";
    let bound = vs(route).replace("spec:\n", "spec:\n  gateways: [ingress/edge]\n");
    let f = findings(&format!("{gw}{bound}"));
    assert_eq!(
        f,
        vec![(
            "JAL0106",
            Severity::Error,
            "spec.http[0].match[0].port".into()
        )]
    );
    let fine = bound.replace("port: 8080", "port: 80");
    assert!(codes_of(&format!("{gw}{fine}")).is_empty());
    // Bound to the mesh too: the port may be a service port.
    let mesh_too = bound.replace("[ingress/edge]", "[ingress/edge, mesh]");
    assert!(codes_of(&format!("{gw}{mesh_too}")).is_empty());
    let missing = bound.replace("[ingress/edge]", "[edge]");
    let f = findings(&format!("{gw}{missing}"));
    assert_eq!(
        f,
        vec![("JAL0108", Severity::Error, "spec.gateways[0]".into())]
    );
    let in_match =
        vs("  - match: [{gateways: [nope]}]\n    route: [{destination: {host: reviews}}]\n");
    assert_eq!(codes_of(&in_match), ["JAL0108"]);
}

#[test]
fn hosts_of_bound_gateways() {
    let gw = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec: {servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['bookinfo.example.com']}]}\n---\n";
    let v = |host: &str| {
        format!("{gw}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge}}\nspec: {{hosts: ['{host}'], gateways: [edge], http: [{{route: [{{destination: {{host: reviews}}}}]}}]}}\n")
    };
    assert!(codes_of(&v("bookinfo.example.com")).is_empty());
    assert_eq!(codes_of(&v("shop.example.com")), ["JAL0120"]);
    assert!(server_host_covers_for_test("ops/*", "ops", "x.example.com"));
    assert!(!server_host_covers_for_test(
        "ops/*",
        "default",
        "x.example.com"
    ));
}

fn server_host_covers_for_test(server_host: &str, vs_ns: &str, host: &str) -> bool {
    let gw = format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: ingress}}\nspec: {{servers: [{{port: {{number: 80, name: http, protocol: HTTP}}, hosts: ['{server_host}']}}]}}\n---\n");
    let text = format!("{gw}apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: v, namespace: {vs_ns}}}\nspec: {{hosts: ['{host}'], gateways: [ingress/edge], http: [{{route: [{{destination: {{host: api.payments.example.com}}}}]}}]}}\n");
    !codes_of(&text).contains(&"JAL0120")
}

#[test]
fn regexes_must_compile() {
    let bad = vs("  - match:\n    - uri: {prefix: /}\n    - uri: {regex: '/api/(v1'}\n      headers: {x-id: {regex: '[a-'}}\n    rewrite: {uriRegexRewrite: {match: '(?P<x', rewrite: '/'}}\n    route: [{destination: {host: reviews}}]\n");
    let d = diags(&bad);
    let fields: Vec<_> = d
        .iter()
        .map(|d| (d.code, d.field.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("JAL0107", "spec.http[0].match[1].uri.regex".to_string()),
            (
                "JAL0107",
                "spec.http[0].match[1].headers.x-id.regex".to_string()
            ),
            (
                "JAL0107",
                "spec.http[0].rewrite.uriRegexRewrite.match".to_string()
            ),
        ]
    );
    assert!(
        d[0].message.contains("regex parse error") && d[0].message.contains("unclosed group"),
        "{}",
        d[0]
    );
    assert_eq!(d[0].line, Some(d[1].line.unwrap_or(0) - 1));
}

#[test]
fn destination_rule_subsets() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r}\nspec:\n  host: ratings\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v1, labels: {version: v2}}\n  - {name: all}\n";
    let f = findings(dr);
    assert_eq!(
        f,
        vec![
            ("JAL0109", Severity::Error, "spec.subsets[1].name".into()),
            ("JAL0110", Severity::Warning, "spec.subsets[2]".into()),
        ]
    );
}

#[test]
fn route_level_values() {
    let retries = vs("  - timeout: 2s\n    retries: {attempts: 3, perTryTimeout: 5s}\n    route: [{destination: {host: reviews}}]\n");
    assert_eq!(
        findings(&retries),
        vec![(
            "JAL0111",
            Severity::Warning,
            "spec.http[0].retries.perTryTimeout".into()
        )]
    );
    assert!(codes_of(&retries.replace("5s", "500ms")).is_empty());
    let fault = vs("  - fault: {abort: {httpStatus: 700, percentage: {value: 150}}, delay: {fixedDelay: 1s, percent: 101}}\n    mirror: {host: reviews}\n    mirrorPercentage: {value: -1}\n    route: [{destination: {host: reviews}}]\n");
    assert_eq!(
        codes_of(&fault),
        ["JAL0112", "JAL0112", "JAL0123", "JAL0112"]
    );
    let redirect = vs("  - match: [{uri: {exact: /old}}]\n    redirect: {uri: /x, redirectCode: 200}\n  - directResponse: {status: 99}\n");
    assert_eq!(codes_of(&redirect), ["JAL0123", "JAL0123"]);
}

#[test]
fn route_actions_and_reachability() {
    let none = vs("  - match: [{uri: {prefix: /a}}]\n");
    assert_eq!(codes_of(&none), ["JAL0118"]);
    let both = vs("  - redirect: {uri: /b}\n    route: [{destination: {host: reviews}}]\n");
    let d = diags(&both);
    assert!(
        d[0].message.contains("route and redirect are exclusive"),
        "{}",
        d[0]
    );
    let shadow = vs("  - route: [{destination: {host: reviews}}]\n  - match: [{uri: {prefix: /a}}]\n    route: [{destination: {host: reviews}}]\n");
    assert_eq!(
        findings(&shadow),
        vec![("JAL0119", Severity::Warning, "spec.http[1]".into())]
    );
    let slash = shadow.replace(
        "  - route: [{destination: {host: reviews}}]\n  - match",
        "  - match: [{uri: {prefix: /}}]\n    route: [{destination: {host: reviews}}]\n  - match",
    );
    assert_eq!(codes_of(&slash), ["JAL0119"]);
    let empty = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: e}\nspec: {hosts: []}\n";
    assert_eq!(codes_of(empty), ["JAL0115", "JAL0118"]);
}

#[test]
fn match_conditions() {
    let m = vs("  - match:\n    - headers: {':path': {exact: /}, method: {exact: GET}, 'bad header': {exact: x}}\n      queryParams: {q: {prefix: a}}\n    route: [{destination: {host: reviews}}]\n");
    let f = findings(&m);
    let got: Vec<_> = f
        .iter()
        .map(|(c, s, field)| (*c, *s, field.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "JAL0117",
                Severity::Error,
                "spec.http[0].match[0].headers.:path"
            ),
            (
                "JAL0117",
                Severity::Error,
                "spec.http[0].match[0].headers.bad header"
            ),
            (
                "JAL0117",
                Severity::Warning,
                "spec.http[0].match[0].headers.method"
            ),
            (
                "JAL0117",
                Severity::Error,
                "spec.http[0].match[0].queryParams.q.prefix"
            ),
        ]
    );
}

#[test]
fn service_entries() {
    let se = |spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s}}\nspec:\n{spec}")
    };
    let f = |spec: &str| findings(&se(spec));
    assert_eq!(codes_of(&se("  hosts: [db.internal]\n")), ["JAL0114"]);
    let ports = "  ports: [{number: 5432, name: pg, protocol: TCP}]\n";
    assert_eq!(
        codes_of(&se(&format!(
            "  hosts: [db.internal]\n{ports}  resolution: STATIC\n"
        ))),
        ["JAL0113"]
    );
    let stat = format!("  hosts: [db.internal]\n{ports}  resolution: STATIC\n  endpoints: [{{address: db1.internal}}]\n");
    assert_eq!(
        f(&stat),
        vec![(
            "JAL0113",
            Severity::Error,
            "spec.endpoints[0].address".into()
        )]
    );
    let dns_ip = format!(
        "  hosts: [db.internal]\n{ports}  resolution: DNS\n  endpoints: [{{address: 10.0.0.1}}]\n"
    );
    assert_eq!(
        f(&dns_ip),
        vec![(
            "JAL0113",
            Severity::Warning,
            "spec.endpoints[0].address".into()
        )]
    );
    let none = format!("  hosts: [db.internal]\n{ports}  endpoints: [{{address: 10.0.0.1}}]\n");
    assert_eq!(codes_of(&se(&none)), ["JAL0113"]);
    let wildcard = format!("  hosts: ['*.internal']\n{ports}  resolution: DNS\n");
    assert_eq!(
        f(&wildcard),
        vec![("JAL0113", Severity::Error, "spec.hosts[0]".into())]
    );
    let names = format!("  hosts: [db.internal]\n{ports}  resolution: STATIC\n  endpoints: [{{address: 10.0.0.1, ports: {{postgres: 6432}}}}]\n");
    assert_eq!(
        f(&names),
        vec![(
            "JAL0106",
            Severity::Error,
            "spec.endpoints[0].ports.postgres".into()
        )]
    );
    let dup = "  hosts: [db.internal]\n  ports: [{number: 5432, name: pg}, {number: 5432, name: pg2}, {number: 0, name: x}]\n";
    assert_eq!(codes_of(&se(dup)), ["JAL0124", "JAL0124"]);
}

#[test]
fn gateways_and_tls() {
    let gw = |spec: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: g}}\nspec:\n{spec}")
    };
    assert_eq!(
        codes_of(&gw("  selector: {istio: ingressgateway}\n")),
        ["JAL0116"]
    );
    let https =
        "  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: ['*']\n";
    assert_eq!(codes_of(&gw(https)), ["JAL0122"]);
    let simple = format!("{https}    tls: {{mode: SIMPLE}}\n");
    let d = diags(&gw(&simple));
    assert!(
        d[0].message.contains("SIMPLE") && d[0].message.contains("serverCertificate, privateKey"),
        "{}",
        d[0]
    );
    assert!(codes_of(&gw(&format!(
        "{https}    tls: {{mode: SIMPLE, credentialName: cert}}\n"
    )))
    .is_empty());
    let no_hosts = "  servers: [{port: {number: 80, name: http, protocol: HTTP}}]\n";
    assert_eq!(codes_of(&gw(no_hosts)), ["JAL0115"]);
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: p}\nspec: {host: api.payments.example.com, trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}}\n";
    let d = diags(dr);
    // MUTUAL from files is translated: only the missing key is reported.
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].code, "JAL0122", "{d:?}");
    assert!(
        d[0].message.contains("privateKey") && !d[0].message.contains("clientCertificate and"),
        "{}",
        d[0]
    );
}

#[test]
fn second_rule_for_a_host_is_reported() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews-2}\nspec: {host: reviews.default.svc.cluster.local}\n";
    let d = diags(dr);
    assert_eq!(
        d.iter().map(|d| d.code).collect::<Vec<_>>(),
        ["JAL0121"],
        "{d:?}"
    );
    assert!(d[0].message.contains("default/reviews"), "{}", d[0]);
}

#[test]
fn results_are_sorted_and_located() {
    let text = vs("  - route:\n    - {destination: {host: nope.example.com}, weight: 5}\n    - {destination: {host: reviews, subset: v9}, weight: 5}\n");
    let d = diags(&text);
    let keys: Vec<_> = d.iter().map(|d| (d.line, d.code)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(d
        .iter()
        .all(|d| d.file.as_deref() == Some(Path::new("t.yaml")) && d.resource.is_some()));
    let shown = d[0].to_string();
    assert!(
        shown.contains("VirtualService default/reviews t.yaml:"),
        "{shown}"
    );
}

#[test]
fn every_code_has_a_unique_id() {
    let ids: BTreeSet<&str> = codes::ALL.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), codes::ALL.len());
    let names: BTreeMap<&str, &str> = codes::ALL.iter().map(|c| (c.name, c.id)).collect();
    assert_eq!(names.len(), codes::ALL.len());
}

const CANARY: &str = r#"
apiVersion: jalur.dev/v1alpha1
kind: Migration
metadata: {name: reviews-v2}
spec:
  legacy: {host: reviews, subset: v1}
  mesh: {host: reviews, subset: v2}
  stages: [{weight: 10, hold: 1m}, {weight: 100, hold: 1m}]
  gates: {maxErrorRate: 0.02, maxP99Ratio: 1.5, window: 1m}
"#;

#[test]
fn a_canary_between_defined_subsets_is_a_valid_migration() {
    assert_eq!(findings(CANARY), []);
}

#[test]
fn migration_paths_registries_subsets_and_gates_are_checked() {
    let yaml = r#"
apiVersion: jalur.dev/v1alpha1
kind: Migration
metadata: {name: payments}
spec:
  legacy: {registry: legacy}
  mesh: {host: reviews, subset: v9}
  stages: [{weight: 0}, {weight: 100}]
  gates: {maxErrorRate: 5, maxP99Ratio: 0, window: 0s}
"#;
    let fields: Vec<String> = findings(yaml)
        .into_iter()
        .filter(|(code, _, _)| *code == codes::INVALID_MIGRATION.id)
        .map(|(_, _, field)| field)
        .collect();
    for expected in [
        "spec.legacy",
        "spec.legacy.registry",
        "spec.legacy.service",
        "spec.mesh.subset",
        "spec.stages[0].weight",
        "spec.gates.maxErrorRate",
        "spec.gates.maxP99Ratio",
        "spec.gates.window",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
}

#[test]
fn two_migrations_of_one_route_and_identical_paths_are_errors() {
    let yaml = format!(
        "{CANARY}---\napiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {{name: again}}\nspec:\n  host: reviews\n  legacy: {{host: reviews.default.svc.cluster.local, subset: v1}}\n  mesh: {{host: reviews, subset: v1}}\n  stages: [{{weight: 100}}]\n"
    );
    let found = findings(&yaml);
    let messages: Vec<String> = diags(&yaml).iter().map(|d| d.message.clone()).collect();
    assert!(
        found
            .iter()
            .filter(|(c, _, _)| *c == codes::INVALID_MIGRATION.id)
            .count()
            >= 2,
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("already migrates the route")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("the mesh path is the legacy path")),
        "{messages:?}"
    );
}

#[test]
fn a_route_that_never_reaches_the_legacy_path_is_an_error() {
    let yaml = format!(
        "{CANARY}---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{{destination: {{host: reviews}}}}]\n"
    );
    let messages: Vec<String> = diags(&yaml).iter().map(|d| d.message.clone()).collect();
    assert!(
        messages.iter().any(|m| m.contains("would move nothing")),
        "{messages:?}"
    );
}
