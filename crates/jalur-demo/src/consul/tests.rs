//! Tests of the Consul protocol double, through its HTTP API with a bare hyper client.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::checks::parse_go_duration;
use super::*;
use crate::eventually::assert_eventually;

/// A status, the response headers and the body.
type Reply = (u16, HeaderMap, String);

/// One request on a fresh HTTP/1.1 connection, bounded by 20 s.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<Reply, String> {
    let what = format!("{method} {path} to the Consul double at {addr}");
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("handshake: {err}"))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| format!("bad request: {err}"))?;
        let response = sender.send_request(request).await;
        let response = response.map_err(|err| format!("request: {err}"));
        let reply = match response {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|err| format!("reading the body: {err}"))?
                    .to_bytes();
                Ok((
                    parts.status.as_u16(),
                    parts.headers,
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            }
            Err(err) => Err(err),
        };
        connection.abort();
        reply
    };
    match tokio::time::timeout(Duration::from_secs(20), exchange).await {
        Ok(reply) => reply.map_err(|err| format!("{what}: {err}")),
        Err(_) => Err(format!("{what}: no answer within 20s")),
    }
}

async fn get(consul: &ConsulDouble, path: &str) -> Reply {
    call(consul.addr(), "GET", path, &[], None)
        .await
        .expect("the double answers")
}

async fn put(consul: &ConsulDouble, path: &str, body: Value) -> Reply {
    call(consul.addr(), "PUT", path, &[], Some(body))
        .await
        .expect("the double answers")
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.2)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {} {}", reply.0, reply.2))
}

fn consul_index(reply: &Reply) -> u64 {
    reply
        .1
        .get("x-consul-index")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", reply.1))
}

fn ids(entries: &Value) -> Vec<String> {
    entries
        .as_array()
        .expect("a list of entries")
        .iter()
        .map(|entry| {
            entry["Service"]["ID"]
                .as_str()
                .or(entry["ServiceID"].as_str())
                .expect("an entry names its service ID")
                .to_string()
        })
        .collect()
}

/// The endpoint an HTTP check polls: answers every request with a status the test sets
/// (200 at first) and counts the requests. Stops when dropped.
struct CheckedEndpoint {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl CheckedEndpoint {
    async fn start() -> CheckedEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a local address");
        let status = Arc::new(AtomicU16::new(200));
        let hits = Arc::new(AtomicU64::new(0));
        let (answer_with, count) = (status.clone(), hits.clone());
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (status, hits) = (answer_with.clone(), count.clone());
                let service = hyper::service::service_fn(move |_request| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let status = status.load(Ordering::SeqCst);
                    let response = http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from_static(b"checked\n")));
                    std::future::ready(response)
                });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        CheckedEndpoint {
            addr,
            status,
            hits,
            accept,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn fail_always(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn answer(&self) {
        self.status.store(200, Ordering::SeqCst);
    }
}

impl Drop for CheckedEndpoint {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Waits until the double holds a blocking query (one with `index`) still unanswered.
async fn until_blocked(consul: &ConsulDouble) {
    assert_eventually(
        "a blocking query is in flight",
        Duration::from_secs(10),
        || async {
            let blocked = consul
                .requests()
                .iter()
                .any(|request| request.param("index").is_some() && request.status.is_none());
            if blocked {
                Ok(())
            } else {
                Err(format!("requests so far: {:?}", consul.requests()))
            }
        },
    )
    .await;
}

/// Test timings, no wait jitter.
fn fast() -> ConsulOpts {
    let mut opts = ConsulOpts::default().fast_checks();
    opts.wait_jitter = false;
    opts
}

#[tokio::test]
async fn registers_over_the_agent_api_and_lists_it_in_the_catalog() {
    let consul = ConsulDouble::start().await;
    let (status, _, _) = put(
        &consul,
        "/v1/agent/service/register",
        json!({
            "Name": "payments",
            "ID": "payments-1",
            "Tags": ["version=v2", "primary"],
            "Address": "10.0.0.7",
            "Port": 8080,
            "Meta": { "team": "pay" },
            "Weights": { "Passing": 10, "Warning": 1 },
        }),
    )
    .await;
    assert_eq!(status, 200);

    let services = get(&consul, "/v1/catalog/services").await;
    assert_eq!(services.0, 200);
    assert!(consul_index(&services) > 1);
    assert_eq!(
        services.1.get("x-consul-knownleader").map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    assert_eq!(
        json_of(&services),
        json!({ "consul": [], "payments": ["primary", "version=v2"] })
    );

    let health = json_of(&get(&consul, "/v1/health/service/payments").await);
    let entry = &health[0];
    assert_eq!(entry["Service"]["ID"], "payments-1");
    assert_eq!(entry["Service"]["Service"], "payments");
    assert_eq!(entry["Service"]["Address"], "10.0.0.7");
    assert_eq!(entry["Service"]["Port"], 8080);
    assert_eq!(entry["Service"]["Meta"]["team"], "pay");
    assert_eq!(
        entry["Service"]["Weights"],
        json!({ "Passing": 10, "Warning": 1 })
    );
    assert_eq!(entry["Node"]["Node"], "consul-double");
    assert_eq!(entry["Node"]["Address"], "127.0.0.1");
    assert_eq!(entry["Node"]["Datacenter"], "dc1");
    // No service check: only the node's serfHealth.
    assert_eq!(entry["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(entry["Checks"].as_array().map(Vec::len), Some(1));

    let catalog = json_of(&get(&consul, "/v1/catalog/service/payments").await);
    assert_eq!(catalog[0]["ServiceID"], "payments-1");
    assert_eq!(catalog[0]["ServiceAddress"], "10.0.0.7");
    assert_eq!(catalog[0]["Address"], "127.0.0.1");
    assert_eq!(catalog[0]["ServiceTags"], json!(["version=v2", "primary"]));

    let agent = json_of(&get(&consul, "/v1/agent/services").await);
    assert_eq!(agent["payments-1"]["Service"], "payments");
    assert!(agent.get("consul").is_none(), "{agent}");

    let instances = consul.instances("payments");
    assert_eq!(instances.len(), 1);
    assert_eq!(
        instances[0].weights,
        Weights {
            passing: 10,
            warning: 1
        }
    );
    assert_eq!(instances[0].status, Some(Status::Passing));

    // Deregistering removes it from the catalog; an unknown ID is a 404.
    let (status, _, _) = put(
        &consul,
        "/v1/agent/service/deregister/payments-1",
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&get(&consul, "/v1/catalog/services").await),
        json!({ "consul": [] })
    );
    let (status, _, body) = put(
        &consul,
        "/v1/agent/service/deregister/payments-1",
        json!(null),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("Unknown service ID"), "{body}");

    let requests = consul.requests();
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/v1/agent/service/register");
    assert_eq!(requests[0].status, Some(200));
}

#[tokio::test]
async fn rejects_registrations_consul_rejects() {
    let consul = ConsulDouble::start().await;
    let (status, _, body) = put(&consul, "/v1/agent/service/register", json!({ "Port": 1 })).await;
    assert_eq!((status, body.as_str()), (400, "Missing service name"));

    let (status, _, body) = put(
        &consul,
        "/v1/agent/service/register",
        json!({ "Name": "web", "Check": { "HTTP": "http://127.0.0.1:1/" } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Interval must be > 0"), "{body}");

    let (status, _, body) = put(
        &consul,
        "/v1/agent/service/register",
        json!({ "Name": "web", "Check": { "Args": ["/bin/true"], "Interval": "10s" } }),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, _, _) = call(
        consul.addr(),
        "GET",
        "/v1/agent/service/register",
        &[],
        None,
    )
    .await
    .expect("answers");
    assert_eq!(status, 405);
    assert!(consul.instances("web").is_empty());
}

#[tokio::test]
async fn health_filters_by_passing_tag_and_datacenter() {
    let consul = ConsulDouble::start_with(ConsulOpts::default().datacenter("eu-west")).await;
    consul.register(Instance::new("api", "api-1", "10.0.0.1", 80).tag("v1"));
    consul.register(
        Instance::new("api", "api-2", "", 80)
            .tag("V2")
            .on_node("vm-2", "10.0.0.2")
            .status(Status::Passing),
    );
    consul.register(
        Instance::new("api", "api-3", "10.0.0.3", 80)
            .tag("v2")
            .status(Status::Warning),
    );
    consul.register(Instance::new("api", "api-4", "10.0.0.4", 80).status(Status::Critical));

    let all = json_of(&get(&consul, "/v1/health/service/api").await);
    assert_eq!(
        ids(&all),
        ["api-1", "api-3", "api-4", "api-2"],
        "sorted by node, then ID"
    );
    let passing = json_of(&get(&consul, "/v1/health/service/api?passing").await);
    assert_eq!(ids(&passing), ["api-1", "api-2"], "warning is not passing");
    let passing = json_of(&get(&consul, "/v1/health/service/api?passing=true").await);
    assert_eq!(ids(&passing), ["api-1", "api-2"]);
    let unfiltered = json_of(&get(&consul, "/v1/health/service/api?passing=false").await);
    assert_eq!(ids(&unfiltered).len(), 4);
    let (status, _, body) = get(&consul, "/v1/health/service/api?passing=maybe").await;
    assert_eq!((status, body.as_str()), (400, "Invalid value for ?passing"));

    // Tags match case-insensitively; several tags must all match.
    let v2 = json_of(&get(&consul, "/v1/health/service/api?tag=v2").await);
    assert_eq!(ids(&v2), ["api-3", "api-2"]);
    let none = json_of(&get(&consul, "/v1/health/service/api?tag=v2&tag=v1").await);
    assert_eq!(ids(&none), Vec::<String>::new());

    // An empty service address: the client falls back to the node's.
    let api2 = &passing[1];
    assert_eq!(api2["Service"]["Address"], "");
    assert_eq!(api2["Node"]["Address"], "10.0.0.2");
    assert_eq!(api2["Node"]["Datacenter"], "eu-west");
    assert_eq!(api2["Checks"][1]["CheckID"], "service:api-2");
    assert_eq!(api2["Checks"][1]["Status"], "passing");

    // A failing node takes its instances out of ?passing.
    assert!(consul.set_node_status("vm-2", Status::Critical));
    let passing = json_of(&get(&consul, "/v1/health/service/api?passing").await);
    assert_eq!(ids(&passing), ["api-1"]);

    let ok = get(&consul, "/v1/health/service/api?dc=eu-west").await;
    assert_eq!(ok.0, 200);
    let (status, _, body) = get(&consul, "/v1/health/service/api?dc=us-east").await;
    assert_eq!((status, body.as_str()), (500, "No path to datacenter"));

    let (status, _, body) = get(
        &consul,
        "/v1/health/service/api?filter=Service.Port%3D%3D80",
    )
    .await;
    assert_eq!(status, 400, "{body}");

    // An unknown service: an empty list with an index, as Consul answers.
    let unknown = get(&consul, "/v1/health/service/nope").await;
    assert_eq!((unknown.0, json_of(&unknown)), (200, json!([])));
    assert!(consul_index(&unknown) >= 1);
}

#[tokio::test]
async fn blocking_query_returns_when_the_service_changes_and_not_before() {
    let consul = ConsulDouble::start_with(fast()).await;
    consul.register(Instance::new("api", "api-1", "10.0.0.1", 80).status(Status::Passing));
    let first = get(&consul, "/v1/health/service/api?passing").await;
    let index = consul_index(&first);
    assert_eq!(ids(&json_of(&first)), ["api-1"]);

    let addr = consul.addr();
    let started = Instant::now();
    let blocked = tokio::spawn(async move {
        let reply = call(
            addr,
            "GET",
            &format!("/v1/health/service/api?passing&index={index}&wait=10s"),
            &[],
            None,
        )
        .await;
        (reply, started.elapsed())
    });
    // A change to another service does not wake a query on this one.
    until_blocked(&consul).await;
    consul.register(Instance::new("other", "other-1", "10.0.0.9", 80));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!blocked.is_finished(), "answered before any change to api");
    let changed_at = started.elapsed();
    consul.set_status("api-1", Status::Critical);

    let (reply, elapsed) = blocked.await.expect("the blocking request ran");
    let reply = reply.expect("the blocking query answers");
    assert!(
        elapsed >= changed_at,
        "answered after {elapsed:?}, before the change at {changed_at:?}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(consul_index(&reply) > index);
    assert_eq!(json_of(&reply), json!([]), "api-1 is critical now");

    let logged = consul
        .requests()
        .into_iter()
        .find(|request| request.param("index").is_some())
        .expect("the blocking query is recorded");
    assert_eq!(logged.param("index"), Some(index.to_string()));
    assert_eq!(logged.param("wait").as_deref(), Some("10s"));
    assert_eq!(logged.param("passing").as_deref(), Some(""));
    assert_eq!(logged.status, Some(200));
}

#[tokio::test]
async fn blocking_query_times_out_with_the_same_index() {
    let consul = ConsulDouble::start_with(fast()).await;
    consul.register(Instance::new("api", "api-1", "10.0.0.1", 80));
    let index = consul_index(&get(&consul, "/v1/health/service/api").await);

    let started = Instant::now();
    let reply = get(
        &consul,
        &format!("/v1/health/service/api?index={index}&wait=400ms"),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400),
        "returned after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "returned after {elapsed:?}"
    );
    assert_eq!(consul_index(&reply), index);
    assert_eq!(ids(&json_of(&reply)), ["api-1"]);

    // A health change does not move the services table: /catalog/services keeps blocking.
    let catalog_index = consul_index(&get(&consul, "/v1/catalog/services").await);
    let addr = consul.addr();
    let blocked = tokio::spawn(async move {
        call(
            addr,
            "GET",
            &format!("/v1/catalog/services?index={catalog_index}&wait=400ms"),
            &[],
            None,
        )
        .await
    });
    consul.set_status("api-1", Status::Warning);
    let reply = blocked.await.expect("ran").expect("answers");
    assert_eq!(consul_index(&reply), catalog_index);
    // A new service does.
    consul.register(Instance::new("db", "db-1", "10.0.0.5", 5432));
    let reply = get(
        &consul,
        &format!("/v1/catalog/services?index={catalog_index}&wait=5s"),
    )
    .await;
    assert!(consul_index(&reply) > catalog_index);
    assert_eq!(json_of(&reply)["db"], json!([]));

    // Invalid parameters are refused as Consul refuses them.
    let (status, _, body) = get(&consul, "/v1/health/service/api?index=1&wait=soon").await;
    assert_eq!((status, body.as_str()), (400, "Invalid wait time"));
    let (status, _, body) = get(&consul, "/v1/health/service/api?index=-1").await;
    assert_eq!((status, body.as_str()), (400, "Invalid index"));
}

#[tokio::test]
async fn max_wait_caps_a_clients_default_wait() {
    let consul = ConsulDouble::start_with(fast().max_wait(Duration::from_millis(300))).await;
    let index = consul_index(&get(&consul, "/v1/catalog/services").await);
    let started = Instant::now();
    // No wait given: Consul's 5 minutes, capped by the test to 300 ms.
    let reply = get(&consul, &format!("/v1/catalog/services?index={index}")).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(consul_index(&reply), index);
}

#[tokio::test]
async fn index_reset_wakes_blocked_queries_and_goes_backwards() {
    let consul = ConsulDouble::start_with(fast()).await;
    for n in 0..5 {
        consul.register(Instance::new(
            "api",
            &format!("api-{n}"),
            "10.0.0.1",
            80 + n,
        ));
    }
    let before = consul_index(&get(&consul, "/v1/health/service/api").await);
    assert!(before > 5, "{before}");

    let addr = consul.addr();
    let blocked = tokio::spawn(async move {
        call(
            addr,
            "GET",
            &format!("/v1/health/service/api?index={before}&wait=10s"),
            &[],
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    assert_eq!(consul.reset_index(), 1);
    let reply = blocked.await.expect("ran").expect("answers");
    assert!(started.elapsed() < Duration::from_secs(5));
    let after = consul_index(&reply);
    assert!(after < before, "index went from {before} to {after}");
    assert_eq!(
        ids(&json_of(&reply)).len(),
        5,
        "the data survives the restore"
    );

    // A client that keeps its old index misses a change until the index passes it again...
    consul.deregister("api-0");
    let stale = get(
        &consul,
        &format!("/v1/health/service/api?index={before}&wait=300ms"),
    )
    .await;
    assert!(consul_index(&stale) < before);
    // ...one that restarts from 0 sees it at once.
    let fresh = get(&consul, "/v1/health/service/api?index=0").await;
    assert_eq!(ids(&json_of(&fresh)).len(), 4);
    assert_eq!(consul_index(&fresh), consul.index());
}

#[tokio::test]
async fn acl_rejects_missing_and_unknown_tokens() {
    let consul = ConsulDouble::start_with(ConsulOpts::default().acl_token("s3cr3t")).await;
    consul.register(Instance::new("api", "api-1", "10.0.0.1", 80));
    let addr = consul.addr();

    let (status, _, body) = call(addr, "GET", "/v1/health/service/api", &[], None)
        .await
        .expect("answers");
    assert_eq!(status, 403);
    assert!(body.starts_with("Permission denied"), "{body}");

    let (status, _, body) = call(
        addr,
        "GET",
        "/v1/health/service/api",
        &[("X-Consul-Token", "wrong")],
        None,
    )
    .await
    .expect("answers");
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    let (status, _, _) = call(
        addr,
        "PUT",
        "/v1/agent/service/register",
        &[],
        Some(json!({ "Name": "sneaky" })),
    )
    .await
    .expect("answers");
    assert_eq!(status, 403);
    assert!(consul.instances("sneaky").is_empty());

    for (path, headers) in [
        ("/v1/health/service/api", vec![("X-Consul-Token", "s3cr3t")]),
        (
            "/v1/health/service/api",
            vec![("Authorization", "Bearer s3cr3t")],
        ),
        ("/v1/health/service/api?token=s3cr3t", vec![]),
    ] {
        let (status, _, body) = call(addr, "GET", path, &headers, None)
            .await
            .expect("answers");
        assert_eq!(status, 200, "{path} {headers:?}: {body}");
    }
    // The liveness probe needs no token, as in Consul.
    let (status, _, body) = call(addr, "GET", "/v1/status/leader", &[], None)
        .await
        .expect("answers");
    assert_eq!((status, body.as_str()), (200, "\"127.0.0.1:8300\""));

    let tokens: Vec<Option<String>> = consul.requests().into_iter().map(|r| r.token).collect();
    assert_eq!(tokens[0], None);
    assert_eq!(tokens[1].as_deref(), Some("wrong"));
    assert_eq!(tokens[3].as_deref(), Some("s3cr3t"));
}

#[tokio::test]
async fn http_check_follows_the_checked_endpoint() {
    let consul = ConsulDouble::start_with(fast()).await;
    let backend = CheckedEndpoint::start().await;
    let (status, _, body) = put(
        &consul,
        "/v1/agent/service/register",
        json!({
            "Name": "gateway",
            "ID": "gateway-1",
            "Port": backend.addr().port(),
            "Check": {
                "HTTP": format!("http://{}/ready", backend.addr()),
                "Interval": "50ms",
                "Timeout": "1s",
            },
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Checks start critical until the first run.
    let wait_for = |want: Status| {
        let consul = &consul;
        async move {
            assert_eventually(
                &format!("gateway-1 is {want:?}"),
                Duration::from_secs(10),
                || async {
                    match consul.check_status("service:gateway-1") {
                        Some(status) if status == want => Ok(()),
                        other => Err(format!("status {other:?}")),
                    }
                },
            )
            .await;
        }
    };
    wait_for(Status::Passing).await;
    let checks = json_of(&get(&consul, "/v1/health/service/gateway").await);
    let check = &checks[0]["Checks"][1];
    assert_eq!(check["Type"], "http");
    assert_eq!(check["Interval"], "50ms");
    assert!(
        check["Output"].as_str().unwrap_or("").contains("200 OK"),
        "{check}"
    );
    assert!(backend.hits() >= 1);

    backend.fail_always(429);
    wait_for(Status::Warning).await;
    backend.fail_always(503);
    wait_for(Status::Critical).await;
    let passing = json_of(&get(&consul, "/v1/health/service/gateway?passing").await);
    assert_eq!(passing, json!([]));
    backend.answer();
    wait_for(Status::Passing).await;
    assert_eq!(consul.status("gateway-1"), Some(Status::Passing));

    let agent_checks = json_of(&get(&consul, "/v1/agent/checks").await);
    assert_eq!(agent_checks["service:gateway-1"]["ServiceID"], "gateway-1");
}

#[tokio::test]
async fn ttl_check_starts_critical_and_follows_updates() {
    let consul = ConsulDouble::start_with(fast()).await;
    let (status, _, body) = put(
        &consul,
        "/v1/agent/service/register",
        json!({
            "name": "worker",
            "id": "worker-1",
            "checks": [
                { "CheckID": "worker-ttl", "TTL": "400ms" },
                { "TTL": "1h", "Status": "passing" },
            ],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(consul.check_status("worker-ttl"), Some(Status::Critical));
    // The second check got Consul's default ID for a service with several checks.
    assert_eq!(
        consul.check_status("service:worker-1:2"),
        Some(Status::Passing)
    );

    let (status, _, _) = put(
        &consul,
        "/v1/agent/check/pass/worker-ttl?note=alive",
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(consul.check_status("worker-ttl"), Some(Status::Passing));
    let (status, _, _) = put(
        &consul,
        "/v1/agent/check/update/worker-ttl",
        json!({ "Status": "warning", "Output": "slow" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(consul.check_status("worker-ttl"), Some(Status::Warning));
    assert_eventually("the TTL expires", Duration::from_secs(10), || async {
        match consul.check_status("worker-ttl") {
            Some(Status::Critical) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let health = json_of(&get(&consul, "/v1/health/service/worker").await);
    let output = health[0]["Checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|check| check["CheckID"] == "worker-ttl"))
        .map(|check| check["Output"].to_string())
        .unwrap_or_default();
    assert!(output.contains("TTL expired"), "{output}");

    let (status, _, body) = put(&consul, "/v1/agent/check/pass/nope", json!(null)).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn deregister_critical_service_after_removes_the_instance() {
    let consul = ConsulDouble::start_with(fast()).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let healthy = CheckedEndpoint::start().await;
    let started = Instant::now();
    for (id, target) in [("dead-1", closed), ("alive-1", healthy.addr())] {
        let (status, _, body) = put(
            &consul,
            "/v1/agent/service/register",
            json!({
                "Name": "legacy",
                "ID": id,
                "Check": {
                    "HTTP": format!("http://{target}/health"),
                    "Interval": "50ms",
                    "DeregisterCriticalServiceAfter": "300ms",
                },
            }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eventually("dead-1 is reaped", Duration::from_secs(10), || async {
        let ids: Vec<String> = consul
            .instances("legacy")
            .into_iter()
            .map(|i| i.id)
            .collect();
        if ids == ["alive-1"] {
            Ok(())
        } else {
            Err(format!("instances {ids:?}"))
        }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(consul.check_status("service:dead-1").is_none());
    let catalog = json_of(&get(&consul, "/v1/catalog/service/legacy").await);
    assert_eq!(ids(&catalog), ["alive-1"]);
}

#[tokio::test]
async fn deregister_critical_after_has_consuls_one_minute_floor_by_default() {
    let consul = ConsulDouble::start().await;
    let (status, _, _) = put(
        &consul,
        "/v1/agent/service/register",
        json!({ "Name": "w", "Check": { "TTL": "10s", "DeregisterCriticalServiceAfter": "1s" } }),
    )
    .await;
    assert_eq!(status, 200);
    let checks = json_of(&get(&consul, "/v1/agent/checks").await);
    assert_eq!(
        checks["service:w"]["Definition"]["DeregisterCriticalServiceAfter"],
        "1m0s"
    );
}

#[tokio::test]
async fn pause_refuses_connections_and_resume_serves_on_the_same_port() {
    let consul = ConsulDouble::start_with(fast()).await;
    consul.register(Instance::new("api", "api-1", "10.0.0.1", 80));
    let addr = consul.addr();
    let index = consul_index(&get(&consul, "/v1/health/service/api").await);
    let blocked = tokio::spawn(async move {
        call(
            addr,
            "GET",
            &format!("/v1/health/service/api?index={index}&wait=10s"),
            &[],
            None,
        )
        .await
    });
    until_blocked(&consul).await;

    consul.pause().await;
    assert!(consul.is_paused());
    let cut = blocked.await.expect("ran");
    assert!(cut.is_err(), "a blocking query in flight is cut: {cut:?}");
    let refused = TcpStream::connect(addr).await;
    assert_eq!(
        refused.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    // State keeps changing while Consul is unreachable.
    consul.register(Instance::new("api", "api-2", "10.0.0.2", 80));

    consul.resume().await;
    assert!(!consul.is_paused());
    assert_eq!(consul.addr(), addr);
    let reply = get(&consul, "/v1/health/service/api").await;
    assert_eq!(ids(&json_of(&reply)), ["api-1", "api-2"]);
    assert!(consul_index(&reply) > index);
    let (status, _, _) = get(&consul, "/v1/status/leader").await;
    assert_eq!(status, 200);
}

#[test]
fn go_durations_parse_as_go_does() {
    let ms = Duration::from_millis;
    assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_go_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_go_duration("1.5s"), Some(ms(1500)));
    assert_eq!(parse_go_duration("250ms"), Some(ms(250)));
    assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
    assert_eq!(parse_go_duration("10"), None);
    assert_eq!(parse_go_duration("-1s"), None);
    assert_eq!(parse_go_duration("soon"), None);
    assert_eq!(super::state::go_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(super::state::go_duration(ms(50)), "50ms");
}

#[test]
fn query_strings_decode_as_go_does() {
    let params = api::parse_query("tag=version%3Dv2&passing&note=a+b&token=");
    assert_eq!(
        params,
        [
            ("tag".to_string(), "version=v2".to_string()),
            ("passing".to_string(), String::new()),
            ("note".to_string(), "a b".to_string()),
            ("token".to_string(), String::new()),
        ]
    );
}
