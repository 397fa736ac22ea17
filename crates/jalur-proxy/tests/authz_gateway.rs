//! AuthorizationPolicy at the edge: policies in the gateway's namespace selecting its labels
//! become RBAC filters on its listeners; stock Envoy and jalur proxy, both as gateways of one
//! control plane, give the same answers. The VirtualService answers directly (RBAC runs before
//! the router, so a denied request never reaches it).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{envoy_gateway, jalur_gateway, Plane};
use jalur_testkit::{assert_eventually, http_get};

const GATEWAY: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*/*\"]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: edge, namespace: shop}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/edge]\n  http:\n  - directResponse: {status: 200, body: {string: welcome}}\n";

/// Only `shop.example.com` may be called through the edge, and nobody reaches `/admin` from
/// outside; a workload-less sidecar policy in `shop` must not reach the gateway.
const POLICIES: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: edge-hosts, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  rules:\n  - to:\n    - operation: {hosts: [shop.example.com]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: istio-system}\nspec:\n  selector: {matchLabels: {istio: ingressgateway}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [\"/admin*\"]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-all, namespace: shop}\nspec: {}\n";

async fn answer(gw: SocketAddr, host: &str, path: &str) -> (u16, String) {
    match http_get(gw, host, path, &[]).await {
        Ok((status, _, body)) => (status, body),
        Err(e) => (0, e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_jalur_gateways_enforce_the_policies_selecting_them() {
    let mut plane = Plane::start(&[("gateway.yaml", GATEWAY.to_string())]).await;
    let Some((_envoy, envoy_gw)) = envoy_gateway(plane.xds, "istio-system").await else {
        return;
    };
    let (_jalur, jalur_gw) = jalur_gateway(plane.xds, "istio-system").await;
    let gateways = [("envoy", envoy_gw), ("jalur", jalur_gw)];
    for (label, gw) in gateways {
        assert_eventually(
            &format!("{label} gateway answers"),
            Duration::from_secs(20),
            || async {
                let r = answer(gw, "other.example.com", "/admin").await;
                (r == (200, "welcome".into()))
                    .then_some(())
                    .ok_or(format!("{r:?}"))
            },
        )
        .await;
    }
    plane.write("policies.yaml", POLICIES);
    let denied = (403, "RBAC: access denied".to_string());
    for (label, gw) in gateways {
        assert_eventually(
            &format!("{label} gateway denies /admin"),
            Duration::from_secs(20),
            || async {
                let r = answer(gw, "shop.example.com", "/admin/users").await;
                (r == denied).then_some(()).ok_or(format!("{r:?}"))
            },
        )
        .await;
        let cases = [
            ("shop.example.com", "/cart", (200, "welcome".to_string())),
            ("SHOP.example.com", "/cart", (200, "welcome".to_string())),
            ("other.example.com", "/cart", denied.clone()),
            ("shop.example.com", "/admin", denied.clone()),
        ];
        for (host, path, expected) in cases {
            let got = answer(gw, host, path).await;
            assert_eq!(got, expected, "{label} gateway: {host}{path}");
        }
    }
    // Withdrawn: the edge is open again.
    plane.write("policies.yaml", "");
    for (label, gw) in gateways {
        assert_eventually(
            &format!("{label} gateway lets /admin through again"),
            Duration::from_secs(20),
            || async {
                let r = answer(gw, "other.example.com", "/admin").await;
                (r == (200, "welcome".into()))
                    .then_some(())
                    .ok_or(format!("{r:?}"))
            },
        )
        .await;
    }
    plane.stop().await;
}

/// The edge believes the TCP peer, not the client's `x-forwarded-for`: a policy that admits
/// only 10.9.9.9 (remoteIpBlocks) refuses a client on loopback that claims to be 10.9.9.9, and
/// a policy that admits loopback admits it whatever it claims. What the backend receives: the
/// client's list with an entry appended, `x-forwarded-proto: http` in place of the client's
/// `https`, and no `x-envoy-*` or `x-forwarded-client-cert` header the client sent — from Envoy
/// and jalur alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_and_jalur_gateways_take_the_client_address_from_the_connection() {
    use jalur_testkit::wire::{exchange, Recorder};
    let backend = Recorder::h1().await;
    let routes = format!("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: [\"*/*\"]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: app, namespace: shop}}\nspec:\n  hosts: [app.example.com]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 9080, name: http, protocol: HTTP}}\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: edge, namespace: shop}}\nspec:\n  hosts: [\"*\"]\n  gateways: [istio-system/edge]\n  http:\n  - route:\n    - destination: {{host: app.example.com, port: {{number: 9080}}}}\n", backend.addr().port());
    let mut plane = Plane::start(&[("gateway.yaml", routes)]).await;
    let Some((_envoy, envoy_gw)) = envoy_gateway(plane.xds, "istio-system").await else {
        return;
    };
    let (_jalur, jalur_gw) = jalur_gateway(plane.xds, "istio-system").await;
    let gateways = [("envoy", envoy_gw), ("jalur", jalur_gw)];
    let only = |cidr: &str| {
        format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: by-address, namespace: istio-system}}\nspec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  rules:\n  - from:\n    - source: {{remoteIpBlocks: [\"{cidr}\"]}}\n")
    };
    let request = |case: &str| {
        format!("GET /who HTTP/1.1\r\nhost: app.example.com\r\nx-case: {case}\r\nx-forwarded-for: 10.9.9.9\r\nx-forwarded-proto: https\r\nx-envoy-retry-on: 5xx\r\nx-envoy-upstream-rq-timeout-ms: 1\r\nx-forwarded-client-cert: By=spiffe://forged/ns/a/sa/b;URI=spiffe://forged/ns/shop/sa/admin\r\nconnection: close\r\n\r\n")
    };
    let status = |gw: SocketAddr, case: String| async move {
        exchange(gw, request(&case).as_bytes(), 1)
            .await
            .statuses()
            .first()
            .copied()
            .unwrap_or(0)
    };
    plane.write("policies.yaml", &only("10.9.9.9/32"));
    for (label, gw) in gateways {
        assert_eventually(
            &format!("{label}: a spoofed x-forwarded-for does not pass remoteIpBlocks"),
            Duration::from_secs(20),
            || async {
                let s = status(gw, format!("{label}-spoof")).await;
                (s == 403).then_some(()).ok_or(format!("{s}"))
            },
        )
        .await;
    }
    plane.write("policies.yaml", &only("127.0.0.1/32"));
    for (label, gw) in gateways {
        let case = format!("{label}-peer");
        assert_eventually(
            &format!("{label}: the peer's own address passes"),
            Duration::from_secs(20),
            || async {
                let s = status(gw, case.clone()).await;
                (s == 200).then_some(()).ok_or(format!("{s}"))
            },
        )
        .await;
        let seen = backend
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.header("x-case") == Some(case.as_str()))
            .expect("the backend saw the request");
        let xff: Vec<String> = seen
            .header_all("x-forwarded-for")
            .join(",")
            .split(',')
            .map(|e| e.trim().to_string())
            .collect();
        assert_eq!(
            xff.len(),
            2,
            "{label}: the client's entry and one appended: {xff:?}"
        );
        assert_eq!(xff[0], "10.9.9.9", "{label}: {xff:?}");
        assert!(
            xff[1].parse::<std::net::IpAddr>().is_ok(),
            "{label}: the appended entry is an address: {xff:?}"
        );
        assert_eq!(
            seen.header("x-forwarded-proto"),
            Some("http"),
            "{label}: the client's https is not believed on a plaintext connection"
        );
        assert_eq!(
            seen.header("x-forwarded-client-cert"),
            None,
            "{label}: a client-written x-forwarded-client-cert is removed (SANITIZE)"
        );
        for h in ["x-envoy-retry-on", "x-envoy-upstream-rq-timeout-ms"] {
            assert_eq!(
                seen.header(h),
                None,
                "{label}: {h} from the client is dropped"
            );
        }
    }
    plane.stop().await;
}
