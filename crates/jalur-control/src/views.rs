//! Compute once, share everywhere (issue 12): clients that would be handed the same config
//! share one translated snapshot per mesh version.
//!
//! Translation reads the client's kind, namespace, labels, ports and listen address, never who
//! it is (node id, instance IP, workload name, service account: the identity is the proxy's
//! certificate, not its config). So every sidecar of one deployment, and every
//! fronting proxy with the same bootstrap, has the same *view*: it is translated once when the
//! mesh changes, and each stream holds an `Arc` to the result, the encoded `Any` bytes included,
//! instead of a copy of its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use jalur_xds::ClientSnapshot;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry as MetricsRegistry;

use crate::mesh::Mesh;
use crate::node::ClientInfo;
use crate::translate::translate;

/// One view's snapshot, computed by the first stream that asks for it; streams asking at the
/// same time wait for that one translation instead of repeating it.
type Cell = Arc<OnceLock<Arc<ClientSnapshot>>>;

/// The mesh the cells were translated from, and a cell per view key.
type Generation = (Arc<Mesh>, HashMap<String, Cell>);

/// The views of the current mesh. A new mesh (any config or endpoint change) starts empty.
#[derive(Default)]
pub struct Views {
    current: Mutex<Option<Generation>>,
    computed: Counter,
    shared: Counter,
}

impl Views {
    pub fn register_metrics(&self, registry: &mut MetricsRegistry) {
        registry.register(
            "jalur_views_computed",
            "Client views translated (once per distinct view and mesh version)",
            self.computed.clone(),
        );
        registry.register(
            "jalur_views_shared",
            "Client snapshots served from a view another client already had translated",
            self.shared.clone(),
        );
    }

    /// `client`'s snapshot of `mesh`: the shared one if a client with the same view asked
    /// already, else translated now.
    pub fn snapshot(&self, mesh: Arc<Mesh>, client: &ClientInfo) -> Arc<ClientSnapshot> {
        let key = view_key(client);
        let cell = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            let stale = !matches!(&*current, Some((m, _)) if Arc::ptr_eq(m, &mesh));
            if stale {
                *current = Some((mesh.clone(), HashMap::new()));
            }
            let (_, cells) = current.as_mut().expect("set above");
            cells.entry(key).or_default().clone()
        };
        let mut translated = false;
        let snapshot = cell
            .get_or_init(|| {
                translated = true;
                Arc::new(translate(&mesh, client))
            })
            .clone();
        if translated {
            self.computed.inc();
        } else {
            self.shared.inc();
        }
        snapshot
    }
}

/// What translation reads of a client: everything but who it is. A field added to
/// [`ClientInfo`] is part of the view unless it is cleared here, so a new input to translation
/// can never be served from another client's view; clearing one that translation does read
/// would hand one proxy another's config, which `views_share_only_what_translation_ignores`
/// guards against.
fn view_key(client: &ClientInfo) -> String {
    let anonymous = ClientInfo {
        id: String::new(),
        ip: None,
        workload_name: String::new(),
        service_account: String::new(),
        metadata_errors: Vec::new(),
        ..client.clone()
    };
    serde_json::to_string(&anonymous).expect("ClientInfo serializes")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::node::ClientKind;

    /// A sidecar of `shop/cart` with an mTLS label, as Istio names one.
    fn sidecar(ip: &str, pod: &str) -> ClientInfo {
        use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
        let string = |v: &str| Value {
            kind: Some(Kind::StringValue(v.into())),
        };
        let mut labels = Struct::default();
        labels.fields.insert("app".into(), string("cart"));
        labels
            .fields
            .insert("security.istio.io/tlsMode".into(), string("istio"));
        let mut md = Struct::default();
        md.fields.insert("JALUR_SERVICE".into(), string("cart"));
        md.fields.insert("JALUR_PORTS".into(), string("http:9080"));
        md.fields.insert("INSTANCE_IPS".into(), string(ip));
        md.fields.insert(
            "LABELS".into(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        ClientInfo::from_node(&jalur_xds::Node {
            id: format!("sidecar~{ip}~{pod}.shop~shop.svc.cluster.local"),
            user_agent_name: "envoy".into(),
            metadata: Some(md),
            ..Default::default()
        })
    }

    /// Every golden scenario's config, as a mesh.
    fn golden_meshes() -> Vec<(String, Mesh)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden");
        let mut meshes = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("golden dir") {
            let scenario = entry.expect("entry").path();
            if !scenario.join("config.yaml").is_file() {
                continue;
            }
            let loaded =
                jalur_model::load_paths(&[dir.join("base.yaml"), scenario.join("config.yaml")]);
            let name = scenario.display().to_string();
            assert!(!loaded.has_errors(), "{name}: {:#?}", loaded.diagnostics);
            meshes.push((name, Mesh::build(Arc::new(loaded.config), &[])));
        }
        assert!(
            meshes.len() >= 10,
            "golden scenarios found: {}",
            meshes.len()
        );
        meshes
    }

    #[test]
    fn sidecars_of_one_deployment_share_one_view_and_a_change_of_mesh_recomputes_it() {
        let views = Views::default();
        let mesh = Arc::new(Mesh::default());
        let a = views.snapshot(mesh.clone(), &sidecar("10.0.0.1", "cart-1"));
        let b = views.snapshot(mesh.clone(), &sidecar("10.0.0.2", "cart-2"));
        assert!(Arc::ptr_eq(&a, &b), "same view, one snapshot");
        assert_eq!((views.computed.get(), views.shared.get()), (1, 1));

        let next = Arc::new(Mesh::default());
        let c = views.snapshot(next, &sidecar("10.0.0.1", "cart-1"));
        assert!(!Arc::ptr_eq(&a, &c), "a new mesh is translated again");
        assert_eq!(views.computed.get(), 2);
    }

    /// What the view key leaves out must not change a translation: two pods of one deployment
    /// get byte-identical resources from every golden scenario (authz, mTLS, gateways, ...).
    #[test]
    fn views_share_only_what_translation_ignores() {
        let a = sidecar("10.0.0.1", "cart-1");
        let b = ClientInfo {
            metadata_errors: vec!["JALUR_X: not a number".into()],
            service_account: "cart-canary".into(),
            ..sidecar("10.0.0.9", "cart-7")
        };
        assert_ne!(
            (&a.id, &a.ip, &a.workload_name),
            (&b.id, &b.ip, &b.workload_name)
        );
        assert_eq!(view_key(&a), view_key(&b));
        for (name, mesh) in golden_meshes() {
            assert_eq!(
                crate::render::snapshot(&translate(&mesh, &a)),
                crate::render::snapshot(&translate(&mesh, &b)),
                "{name}: the pods' translations differ, so they must not share a view"
            );
        }

        let base = a;
        let mut labelled = base.clone();
        labelled.labels.insert("version".into(), "v2".into());
        let different = [
            labelled,
            ClientInfo {
                namespace: "other".into(),
                ..base.clone()
            },
            ClientInfo {
                kind: ClientKind::Gateway,
                ..base.clone()
            },
            ClientInfo {
                listen_address: "127.0.0.1".into(),
                ..base.clone()
            },
            ClientInfo {
                ephemeral_ports: !base.ephemeral_ports,
                ..base.clone()
            },
            ClientInfo {
                app_port: Some(8081),
                ..base.clone()
            },
        ];
        for other in different {
            assert_ne!(view_key(&base), view_key(&other), "{other:?}");
        }
    }
}
