//! Legacy -> mesh (case 2): every connected gateway proxy that an export selects is registered in
//! Consul's agent under the export's name (tag `jalur-managed`), with an HTTP check on the
//! gateway's `/healthz/ready` and `DeregisterCriticalServiceAfter`, so legacy callers that
//! resolve `payments` through Consul reach the mesh. Entries jalur owns are reconciled on every
//! change and, once the control plane is warm, on start (none is left stale), and removed when the
//! export goes away (rollback) or the control plane shuts down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jalur_model::jalur::ConsulRegistry;
use jalur_model::Config;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::api::Api;
use crate::node::ClientInfo;

/// The tag on every Consul entry jalur registered (and so may remove).
pub const OWNER_TAG: &str = "jalur-managed";

/// One agent registration, keyed by its service ID.
pub(crate) fn desired(spec: &ConsulRegistry, gateways: &[ClientInfo]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for export in &spec.exports {
        for gw in gateways {
            let selected = export
                .gateway_selector
                .iter()
                .all(|(k, v)| gw.labels.get(k) == Some(v));
            let Some(ip) = gw.ip.as_ref().filter(|_| selected) else {
                continue;
            };
            let id = format!("jalur-{}-{ip}-{}", export.name, export.port);
            let mut tags = vec![OWNER_TAG.to_string()];
            tags.extend(export.tags.iter().cloned());
            let body = json!({
                "ID": id,
                "Name": export.name,
                "Tags": tags,
                "Address": ip,
                "Port": export.port,
                "Meta": { "jalur-gateway": gw.id },
                "Check": {
                    "Name": "jalur gateway ready",
                    "HTTP": format!("http://{ip}:{}/healthz/ready", gw.health_port),
                    "Interval": "2s",
                    "Timeout": "1s",
                    "DeregisterCriticalServiceAfter": "1m",
                },
            });
            out.insert(id, body);
        }
    }
    out
}

/// Brings Consul's owned entries in line with `want`: registers missing ones, removes the rest.
pub(crate) async fn reconcile(api: &Api, want: &BTreeMap<String, Value>) -> Result<(), String> {
    let (current, _) = api
        .call(http::Method::GET, "/v1/agent/services", None)
        .await?;
    let owned: Vec<String> = current
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, svc)| {
            svc["Tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == OWNER_TAG))
        })
        .map(|(id, _)| id.clone())
        .collect();
    for (id, body) in want {
        let same = current
            .get(id)
            .is_some_and(|c| c["Port"] == body["Port"] && c["Address"] == body["Address"]);
        if !same {
            api.call(
                http::Method::PUT,
                "/v1/agent/service/register",
                Some(body.clone()),
            )
            .await?;
            tracing::info!(id = %id, service = %body["Name"], "gateway registered in Consul");
        }
    }
    for id in owned.iter().filter(|id| !want.contains_key(*id)) {
        api.call(
            http::Method::PUT,
            &format!("/v1/agent/service/deregister/{id}"),
            None,
        )
        .await?;
        tracing::info!(id = %id, "gateway registration removed from Consul");
    }
    Ok(())
}

/// Follows config and connected gateways; reconciles every ConsulRegistry's exports. On
/// `shutdown`, removes every entry it owns.
///
/// The first reconcile waits for `warm`: after a crash the entries of the last run are still in
/// Consul, and until its gateways have reconnected they would look stale. Removing them then
/// would leave legacy callers without an instance until the gateways are back; waiting until
/// the plane is warm removes only the entries whose gateway did not return.
pub(crate) async fn run(
    mut config: watch::Receiver<Arc<Config>>,
    mut gateways: watch::Receiver<Arc<Vec<ClientInfo>>>,
    mut shutdown: watch::Receiver<bool>,
    mut warm: watch::Receiver<bool>,
    report: impl Fn(&str, &str, Result<(), String>) + Send + 'static,
) {
    tokio::select! {
        r = warm.wait_for(|w| *w) => if r.is_err() { return },
        _ = shutdown.wait_for(|s| *s) => return,
    }
    // Registries that ever had exports: on their removal (rollback) their entries must go too.
    let mut known: BTreeMap<String, ConsulRegistry> = BTreeMap::new();
    loop {
        let cfg = config.borrow_and_update().clone();
        let gws = gateways.borrow_and_update().clone();
        for (r, spec) in cfg.consul_registries() {
            known.insert(
                format!("{}/{}", r.meta.namespace, r.meta.name),
                spec.clone(),
            );
        }
        let live: Vec<String> = cfg
            .consul_registries()
            .map(|(r, _)| format!("{}/{}", r.meta.namespace, r.meta.name))
            .collect();
        for (key, spec) in &known {
            let want = if live.contains(key) {
                desired(spec, &gws)
            } else {
                BTreeMap::new()
            };
            let api = Api::new(spec);
            let result = reconcile(&api, &want).await;
            if let Err(e) = &result {
                tracing::warn!(registry = %key, error = %e, "cannot reconcile gateway registrations in Consul; will retry");
            }
            report(key, &api.base(), result);
        }
        known.retain(|k, _| live.contains(k));
        tokio::select! {
            r = config.changed() => if r.is_err() { return },
            r = gateways.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(30)) => {},
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                for spec in cfg.consul_registries().map(|(_, s)| s) {
                    let _ = reconcile(&Api::new(spec), &BTreeMap::new()).await;
                }
                return;
            }
        }
    }
}
