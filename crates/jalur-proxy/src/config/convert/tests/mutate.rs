//! Stable-Rust stand-in for the `xds_convert` fuzz target: deterministic byte mutations of
//! valid encoded resources, decoded as every resource type and converted. Nothing may panic.

use super::*;

/// fastrand's generator with a fixed seed: deterministic, so a failing case can be replayed by
/// its number.
type Rng = fastrand::Rng;

trait Below {
    /// A uniform index below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize;
}

impl Below for Rng {
    fn below(&mut self, n: usize) -> usize {
        self.usize(..n.max(1))
    }
}

/// A route table touching most of what conversion reads.
fn rich_table() -> RouteConfiguration {
    let mut action = RouteAction {
        cluster_specifier: Some(weighted(&[("a", Some(60)), ("b", Some(40))])),
        timeout: Some(dur(3, 0)),
        prefix_rewrite: String::new(),
        regex_rewrite: Some(RegexMatchAndSubstitute {
            pattern: Some(RegexMatcher {
                regex: "^/v1/(.*)$".into(),
                engine_type: None,
            }),
            substitution: "/v2/\\1".into(),
        }),
        retry_policy: Some(XdsRetry {
            retry_on: "5xx,reset,retriable-status-codes".into(),
            num_retries: u32v(3),
            retriable_status_codes: vec![503, 502],
            per_try_timeout: Some(dur(1, 0)),
            ..XdsRetry::default()
        }),
        request_mirror_policies: vec![route_action::RequestMirrorPolicy {
            cluster: "shadow".into(),
            ..Default::default()
        }],
        ..RouteAction::default()
    };
    action.hash_policy = vec![route_action::HashPolicy {
        policy_specifier: Some(route_action::hash_policy::PolicySpecifier::Header(
            route_action::hash_policy::Header {
                header_name: "x-user".into(),
                regex_rewrite: None,
            },
        )),
        terminal: false,
    }];
    let mut r = to_cluster("split", "x");
    r.action = Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(action));
    r.r#match = Some(XdsRouteMatch {
        path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: "/api/v[0-9]+/.*".into(),
            engine_type: None,
        })),
        headers: vec![HeaderMatcher {
            name: "end-user".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            ..HeaderMatcher::default()
        }],
        ..XdsRouteMatch::default()
    });
    r.request_headers_to_add = vec![header(
        "x-a",
        "1",
        HeaderAppendAction::OverwriteIfExistsOrAdd,
    )];
    r.typed_per_filter_config.insert(
        "envoy.filters.http.fault".into(),
        pack_any(HttpFault {
            abort: Some(FaultAbort {
                percentage: Some(FractionalPercent {
                    numerator: 5,
                    denominator: 0,
                }),
                error_type: Some(fault_abort::ErrorType::HttpStatus(503)),
                ..FaultAbort::default()
            }),
            ..HttpFault::default()
        }),
    );
    table(vec![
        vhost(
            "reviews",
            &["reviews", "reviews:9080", "*.reviews"],
            vec![r, to_cluster("default", "c")],
        ),
        vhost("any", &["*"], vec![to_cluster("any", "c")]),
    ])
}

fn seeds() -> Vec<Vec<u8>> {
    let rich = rich_table();
    let mut static_cluster = eds_cluster("static");
    static_cluster.cluster_discovery_type = Some(cluster::ClusterDiscoveryType::Type(
        cluster::DiscoveryType::Static as i32,
    ));
    static_cluster.load_assignment = Some(cla(
        "static",
        vec![group(
            None,
            vec![lb_endpoint("127.0.0.1", 80, HealthStatus::Healthy, None)],
        )],
    ));
    static_cluster.outlier_detection = Some(OutlierDetection::default());
    let assignment = cla(
        "c",
        vec![group(
            Some(("eu", "a", "")),
            vec![
                lb_endpoint("10.0.0.1", 9080, HealthStatus::Healthy, Some(2)),
                lb_endpoint("fd00::1", 9080, HealthStatus::Unhealthy, None),
            ],
        )],
    );
    vec![
        outbound().encode_to_vec(),
        hcm_listener(hcm(RouteSpecifier::RouteConfig(rich.clone()), filters())).encode_to_vec(),
        tcp_listener(tcp_proxy::ClusterSpecifier::Cluster("db".into())).encode_to_vec(),
        rich.encode_to_vec(),
        eds_cluster("outbound|9080||reviews").encode_to_vec(),
        static_cluster.encode_to_vec(),
        assignment.encode_to_vec(),
    ]
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = bytes.len();
        let at = rng.below(len);
        match rng.below(7) {
            0 if len > 0 => bytes[at] ^= 1 << rng.below(8),
            1 if len > 0 => bytes[at] = rng.u8(..),
            2 if len > 0 => {
                let end = (at + 1 + rng.below(16)).min(len);
                bytes.drain(at..end);
            }
            3 => bytes.insert(at.min(len), rng.u8(..)),
            4 if len > 0 => {
                let end = (at + 1 + rng.below(32)).min(len);
                let copy: Vec<u8> = bytes[at..end].to_vec();
                let to = rng.below(len);
                bytes.splice(to..to, copy);
            }
            5 => bytes.truncate(at),
            // Interesting varints: lengths and enum values at their edges.
            _ if len > 0 => bytes[at] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.below(5)],
            _ => {}
        }
    }
}

/// Decodes `bytes` as every resource type and converts what decodes.
pub(crate) fn convert_all(bytes: &[u8]) -> usize {
    let mut converted = 0;
    if let Ok(l) = XdsListener::decode(bytes) {
        converted += usize::from(listener(&l).is_ok());
    }
    if let Ok(rc) = RouteConfiguration::decode(bytes) {
        converted += usize::from(route_table(&rc).is_ok());
    }
    if let Ok(c) = XdsCluster::decode(bytes) {
        converted += usize::from(cluster(&c).is_ok());
    }
    if let Ok(cla) = ClusterLoadAssignment::decode(bytes) {
        converted += usize::from(endpoints(&cla).is_ok());
    }
    converted
}

/// Also writes the seeds to `$JALUR_XDS_CORPUS` when set, to seed the `xds_convert` fuzzer.
#[test]
fn seeds_are_valid() {
    let corpus = std::env::var_os("JALUR_XDS_CORPUS").map(std::path::PathBuf::from);
    for (i, seed) in seeds().iter().enumerate() {
        assert!(convert_all(seed) >= 1, "seed {i} must convert");
        if let Some(dir) = &corpus {
            std::fs::create_dir_all(dir).expect("corpus dir");
            std::fs::write(dir.join(format!("seed-{i}")), seed).expect("write seed");
        }
    }
}

#[test]
fn mutated_resources_never_panic() {
    let seeds = seeds();
    let mut rng = Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    let mut converted = 0;
    for _ in 0..4000 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut bytes);
        converted += convert_all(&bytes);
    }
    // Not a goal in itself, but a sign the mutations stay near valid resources.
    assert!(converted > 100, "only {converted} mutants converted");
}
