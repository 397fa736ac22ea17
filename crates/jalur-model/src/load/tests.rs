use std::path::Path;

use super::*;
use crate::networking::StringMatch;

const VS: &str = r#"# leading comment
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 90
    - destination: {host: reviews, subset: v3}
      weight: 10
    timeout: 5s
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
"#;

fn parse(text: &str) -> (Vec<Resource>, Vec<Diagnostic>) {
    parse_str(Path::new("cfg/test.yaml"), text)
}

#[test]
fn parses_multi_document_istio_yaml() {
    let (res, diags) = parse(VS);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(res.len(), 2);
    let Spec::VirtualService(vs) = &res[0].spec else {
        panic!("not a VS")
    };
    assert_eq!(vs.http.len(), 2);
    assert_eq!(
        vs.http[0].matches[0].headers.get("end-user"),
        Some(&StringMatch::Exact("jason".into()))
    );
    assert_eq!(vs.http[1].route[1].weight, Some(10));
    assert_eq!(res[1].meta.namespace, "default");
    assert_eq!(res[1].origin.line, 25);
    assert_eq!(res[0].origin.line_of("spec.http[1].route[1].weight"), 22);
}

#[test]
fn unknown_field_names_file_line_resource_and_field() {
    let text = VS.replace("subset: v2", "subsett: v2");
    let (_, diags) = parse(&text);
    assert_eq!(diags.len(), 1, "{diags:?}");
    let d = &diags[0];
    assert_eq!(d.code, "JAL0003");
    assert_eq!(d.line, Some(17), "{d}");
    assert_eq!(
        d.field.as_deref(),
        Some("spec.http[0].route[0].destination.subsett"),
        "{d}"
    );
    assert!(d.message.contains("unknown field `subsett`"), "{d}");
    let shown = d.to_string();
    assert!(
        shown.contains("VirtualService bookinfo/reviews cfg/test.yaml:17"),
        "{shown}"
    );
}

#[test]
fn bad_value_type_and_enum_are_field_errors() {
    let text = VS.replace("weight: 90", "weight: ninety");
    let (_, diags) = parse(&text);
    assert_eq!(diags[0].line, Some(20), "{}", diags[0]);
    assert_eq!(
        diags[0].field.as_deref(),
        Some("spec.http[1].route[0].weight")
    );

    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: x\n  trafficPolicy:\n    loadBalancer:\n      simple: FASTEST\n";
    let (_, diags) = parse(dr);
    assert_eq!(diags[0].line, Some(8), "{}", diags[0]);
    assert!(diags[0].message.contains("FASTEST"), "{}", diags[0]);
}

#[test]
fn unknown_kind_and_api_version() {
    let (_, d) = parse(
        "apiVersion: networking.istio.io/v1\nkind: Sidecars\nmetadata: {name: x}\nspec: {}\n",
    );
    assert_eq!((d[0].code, d[0].line), ("JAL0002", Some(2)));
    let (_, d) =
        parse("apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: x}\nspec: {}\n");
    assert_eq!((d[0].code, d[0].line), ("JAL0002", Some(1)));
}

#[test]
fn yaml_syntax_error_has_absolute_line() {
    let text = format!("{VS}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: gw\nspec: {{}}\n");
    let (res, diags) = parse(&text);
    assert_eq!(res.len(), 2, "good documents are kept");
    assert_eq!(diags[0].code, "JAL0001");
    assert!(diags[0].line.is_some_and(|l| l >= 34), "{}", diags[0]);
}

#[test]
fn bad_duration_and_name() {
    let text = VS.replace("timeout: 5s", "timeout: 5 seconds");
    let (_, d) = parse(&text);
    assert_eq!(
        (d[0].line, d[0].field.as_deref()),
        (Some(23), Some("spec.http[1].timeout"))
    );
    let text = VS.replace("name: reviews", "name: Reviews_1");
    let (_, d) = parse(&text);
    assert_eq!(d[0].code, "JAL0004");
}
