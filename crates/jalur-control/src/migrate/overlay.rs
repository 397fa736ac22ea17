//! What the controller writes: the weights of the VirtualService route a Migration moves. The
//! served config is the store's config with these weights applied, so translation and push are
//! the same as for any hand-edited VirtualService.
//!
//! A VirtualService claiming the Migration's host keeps everything it says (matches, retries,
//! timeouts, headers) except the destinations of the routes that go to the legacy or the mesh
//! path: those become `legacy: 100 - w, mesh: w`. Without such a VirtualService the controller
//! adds one (`jalur-migration-NAME`) with a single route.

use std::collections::BTreeMap;
use std::sync::Arc;

use jalur_model::jalur::{Migration, MigrationPath};
use jalur_model::networking::{
    Destination, HttpRoute, HttpRouteDestination, PortSelector, VirtualService,
};
use jalur_model::{host, Config, Kind, Meta, Resource, Spec};

/// Mesh-path weight per Migration (`namespace/name`), for the migrations that have started.
pub type Overlay = BTreeMap<String, u32>;

pub fn key(r: &Resource) -> String {
    format!("{}/{}", r.meta.namespace, r.meta.name)
}

/// The store's config with every started migration's weights written into its route.
pub fn apply(config: &Arc<Config>, overlay: &Overlay) -> Arc<Config> {
    if overlay.is_empty() {
        return config.clone();
    }
    let mut resources = config.resources.clone();
    for (r, m) in config.migrations() {
        let Some(&weight) = overlay.get(&key(r)) else {
            continue;
        };
        let Some(paths) = Paths::of(r, m) else {
            continue;
        };
        let gateways = host::gateway_set(&m.gateways, &r.meta.namespace);
        let mut claimed = false;
        for res in resources.iter_mut() {
            let ns = res.meta.namespace.clone();
            let Spec::VirtualService(vs) = &mut res.spec else {
                continue;
            };
            let for_route = vs
                .hosts
                .iter()
                .any(|h| host::qualify(h, &ns) == paths.route);
            // Only where the Migration applies: a VirtualService bound to other gateways is
            // another route of the same host.
            if !for_route || host::gateway_set(&vs.gateways, &ns).is_disjoint(&gateways) {
                continue;
            }
            claimed = true;
            for route in vs.http.iter_mut() {
                let reaches_legacy = route
                    .route
                    .iter()
                    .any(|d| Paths::is(&paths.legacy, &d.destination, &ns));
                if reaches_legacy {
                    route.route = paths.rewrite(&route.route, weight, &ns);
                }
            }
        }
        if !claimed {
            resources.push(generated(r, m, &paths, weight));
        }
    }
    Arc::new(Config::new(resources))
}

/// A Migration's two destinations and its route, with hosts qualified in its namespace.
pub struct Paths {
    pub route: String,
    pub legacy: (String, Option<String>),
    pub mesh: (String, Option<String>),
    pub port: Option<PortSelector>,
}

impl Paths {
    pub fn of(r: &Resource, m: &Migration) -> Option<Paths> {
        let ns = &r.meta.namespace;
        let side = |p: &MigrationPath| p.host().map(|h| (host::qualify(&h, ns), p.subset.clone()));
        Some(Paths {
            route: host::qualify(&m.route_host()?, ns),
            legacy: side(&m.legacy)?,
            mesh: side(&m.mesh)?,
            port: m.port.map(|number| PortSelector { number }),
        })
    }

    fn is(side: &(String, Option<String>), d: &Destination, ns: &str) -> bool {
        host::qualify(&d.host, ns) == side.0 && d.subset == side.1
    }

    fn is_either(&self, d: &Destination, ns: &str) -> bool {
        Paths::is(&self.legacy, d, ns) || Paths::is(&self.mesh, d, ns)
    }

    /// A route's destinations with the share that goes to either path split `100 - w : w`
    /// between them; other destinations keep their weights, each side keeps its own port and
    /// headers. A side at 0 is left out.
    fn rewrite(
        &self,
        dests: &[HttpRouteDestination],
        weight: u32,
        ns: &str,
    ) -> Vec<HttpRouteDestination> {
        let on_path = |d: &HttpRouteDestination| self.is_either(&d.destination, ns);
        let total: u32 = match dests {
            [only] if only.weight.is_none() => 100,
            _ => dests
                .iter()
                .filter(|d| on_path(d))
                .filter_map(|d| d.weight)
                .sum(),
        };
        let total = if total == 0 { 100 } else { total };
        let mesh_w = (total * weight.min(100) + 50) / 100;
        let find = |side: &(String, Option<String>)| {
            dests
                .iter()
                .find(|d| Paths::is(side, &d.destination, ns))
                .cloned()
        };
        let template = |side: &(String, Option<String>)| {
            find(side).unwrap_or_else(|| HttpRouteDestination {
                destination: Destination {
                    host: side.0.clone(),
                    subset: side.1.clone(),
                    port: self.port,
                },
                weight: None,
                headers: None,
            })
        };
        let mut out: Vec<HttpRouteDestination> =
            dests.iter().filter(|d| !on_path(d)).cloned().collect();
        for (side, w) in [(&self.legacy, total - mesh_w), (&self.mesh, mesh_w)] {
            if w > 0 {
                out.push(HttpRouteDestination {
                    weight: Some(w),
                    ..template(side)
                });
            }
        }
        out
    }

    /// `legacy: 100 - w, mesh: w`; a side at 0 is left out (Envoy and gRPC clients need no
    /// cluster they would never pick).
    fn split(&self, weight: u32, port: Option<PortSelector>) -> Vec<HttpRouteDestination> {
        let weight = weight.min(100);
        [(&self.legacy, 100 - weight), (&self.mesh, weight)]
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|((h, subset), w)| HttpRouteDestination {
                destination: Destination {
                    host: h.clone(),
                    subset: subset.clone(),
                    port,
                },
                weight: Some(w),
                headers: None,
            })
            .collect()
    }
}

fn generated(r: &Resource, m: &Migration, paths: &Paths, weight: u32) -> Resource {
    Resource {
        api_version: format!(
            "{}/{}",
            Kind::VirtualService.group(),
            Kind::VirtualService.versions()[0]
        ),
        meta: Meta {
            name: format!("jalur-migration-{}", r.meta.name),
            namespace: r.meta.namespace.clone(),
            ..Meta::default()
        },
        spec: Spec::VirtualService(VirtualService {
            hosts: vec![paths.route.clone()],
            gateways: m.gateways.clone(),
            http: vec![HttpRoute {
                route: paths.split(weight, paths.port),
                ..HttpRoute::default()
            }],
            ..VirtualService::default()
        }),
        origin: r.origin.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
apiVersion: jalur.dev/v1alpha1
kind: Migration
metadata: {name: reviews, namespace: shop}
spec:
  legacy: {registry: legacy, service: reviews}
  mesh: {host: reviews}
  stages: [{weight: 10, hold: 5s}, {weight: 100}]
---
apiVersion: jalur.dev/v1alpha1
kind: Migration
metadata: {name: ratings, namespace: shop}
spec:
  host: ratings.service.consul
  legacy: {host: ratings.service.consul}
  mesh: {host: ratings}
  stages: [{weight: 100}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.service.consul]
  http:
  - match: [{headers: {x-debug: {exact: "1"}}}]
    route: [{destination: {host: debug.shop.svc.cluster.local}}]
  - retries: {attempts: 3}
    route: [{destination: {host: ratings.service.consul, port: {number: 80}}}]
"#;

    fn config() -> Arc<Config> {
        let (resources, diags) = jalur_model::load::parse_str("m.yaml".as_ref(), CONFIG);
        assert!(diags.is_empty(), "{diags:?}");
        Arc::new(Config::new(resources))
    }

    fn vs<'a>(c: &'a Config, name: &str) -> &'a VirtualService {
        c.virtual_services()
            .find(|(r, _)| r.meta.name == name)
            .map(|(_, vs)| vs)
            .unwrap_or_else(|| panic!("no VirtualService {name}"))
    }

    fn weights(route: &HttpRoute) -> Vec<(String, Option<u32>)> {
        route
            .route
            .iter()
            .map(|d| (d.destination.host.clone(), d.weight))
            .collect()
    }

    #[test]
    fn no_overlay_is_the_store_config() {
        let c = config();
        assert!(Arc::ptr_eq(&apply(&c, &Overlay::new()), &c));
    }

    #[test]
    fn without_a_virtual_service_one_is_generated_with_the_split() {
        let out = apply(
            &config(),
            &Overlay::from([("shop/reviews".to_string(), 10)]),
        );
        let generated = vs(&out, "jalur-migration-reviews");
        assert_eq!(generated.hosts, ["reviews.service.consul"]);
        assert_eq!(
            weights(&generated.http[0]),
            [
                ("reviews.service.consul".to_string(), Some(90)),
                ("reviews.shop.svc.cluster.local".to_string(), Some(10)),
            ]
        );
    }

    #[test]
    fn an_existing_virtual_service_keeps_its_other_routes_and_policies() {
        let out = apply(
            &config(),
            &Overlay::from([("shop/ratings".to_string(), 25)]),
        );
        let v = vs(&out, "ratings");
        assert_eq!(
            weights(&v.http[0]),
            [("debug.shop.svc.cluster.local".to_string(), None)]
        );
        assert_eq!(
            weights(&v.http[1]),
            [
                ("ratings.service.consul".to_string(), Some(75)),
                ("ratings.shop.svc.cluster.local".to_string(), Some(25)),
            ]
        );
        assert!(v.http[1].retries.is_some(), "the route's retries survive");
        // Each side keeps its own port: the legacy one as written, the mesh one the Migration's.
        assert_eq!(
            v.http[1].route[0].destination.port,
            Some(PortSelector { number: 80 })
        );
        assert_eq!(v.http[1].route[1].destination.port, None);
        assert!(out
            .virtual_services()
            .all(|(r, _)| r.meta.name != "jalur-migration-ratings"));
    }

    #[test]
    fn rollback_and_promotion_leave_one_destination() {
        let c = config();
        let back = apply(&c, &Overlay::from([("shop/ratings".to_string(), 0)]));
        assert_eq!(
            weights(&vs(&back, "ratings").http[1]),
            [("ratings.service.consul".to_string(), Some(100))]
        );
        let done = apply(&c, &Overlay::from([("shop/ratings".to_string(), 100)]));
        assert_eq!(
            weights(&vs(&done, "ratings").http[1]),
            [("ratings.shop.svc.cluster.local".to_string(), Some(100))]
        );
    }

    #[test]
    fn a_canary_moves_between_subsets_of_one_host() {
        let yaml = "apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: reviews-v2, namespace: shop}\nspec:\n  legacy: {host: reviews, subset: v1}\n  mesh: {host: reviews, subset: v2}\n  stages: [{weight: 100}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v1}}]\n";
        let (resources, diags) = jalur_model::load::parse_str("c.yaml".as_ref(), yaml);
        assert!(diags.is_empty(), "{diags:?}");
        let c = Arc::new(Config::new(resources));
        let out = apply(&c, &Overlay::from([("shop/reviews-v2".to_string(), 20)]));
        let route = &vs(&out, "reviews").http[0].route;
        let split: Vec<(Option<String>, Option<u32>)> = route
            .iter()
            .map(|d| (d.destination.subset.clone(), d.weight))
            .collect();
        assert_eq!(
            split,
            [(Some("v1".into()), Some(80)), (Some("v2".into()), Some(20))]
        );
    }

    #[test]
    fn other_destinations_keep_their_share_and_other_gateways_their_route() {
        let yaml = "apiVersion: jalur.dev/v1alpha1\nkind: Migration\nmetadata: {name: pay, namespace: shop}\nspec:\n  legacy: {host: pay.service.consul}\n  mesh: {host: pay}\n  stages: [{weight: 100}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: pay, namespace: shop}\nspec:\n  hosts: [pay.service.consul]\n  http:\n  - route:\n    - {destination: {host: pay.service.consul}, weight: 80}\n    - {destination: {host: pay-v3}, weight: 20}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: pay-edge, namespace: shop}\nspec:\n  hosts: [pay.service.consul]\n  gateways: [edge]\n  http:\n  - route: [{destination: {host: pay.service.consul}}]\n";
        let (resources, diags) = jalur_model::load::parse_str("p.yaml".as_ref(), yaml);
        assert!(diags.is_empty(), "{diags:?}");
        let out = apply(
            &Arc::new(Config::new(resources)),
            &Overlay::from([("shop/pay".to_string(), 25)]),
        );
        assert_eq!(
            weights(&vs(&out, "pay").http[0]),
            [
                ("pay-v3".to_string(), Some(20)),
                ("pay.service.consul".to_string(), Some(60)),
                ("pay.shop.svc.cluster.local".to_string(), Some(20)),
            ]
        );
        assert_eq!(
            weights(&vs(&out, "pay-edge").http[0]),
            [("pay.service.consul".to_string(), None)],
            "the edge gateway's route is another route: untouched"
        );
    }
}
