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
