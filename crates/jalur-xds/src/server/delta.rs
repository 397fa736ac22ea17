//! Incremental (delta) ADS: responses carry only changed resources and the names that went away.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource as DeltaResource,
};
use tracing::{debug, warn};

use super::conn::{Conn, Protocol, Push};
use super::track::{holds_all, Reply, TypeTrack, WILDCARD};
use crate::resource::{ClientSnapshot, Resource, TypeUrl};
use crate::status::{Mode, TypeStatus};
use crate::Node;

#[derive(Debug, Default)]
pub(crate) struct Delta {
    types: BTreeMap<TypeUrl, TypeTrack>,
}

impl Protocol for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const MODE: Mode = Mode::Delta;

    fn node(request: &DeltaDiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        conn: &mut Conn,
        req: DeltaDiscoveryRequest,
    ) -> Vec<Push<DeltaDiscoveryResponse>> {
        let Some(type_url) = TypeUrl::parse(&req.type_url) else {
            debug!(conn = conn.id, node = %conn.node.id, type_url = %req.type_url, "ignoring request for a type this server does not serve");
            return Vec::new();
        };
        let track = self
            .types
            .entry(type_url)
            .or_insert_with(|| TypeTrack::new(type_url));
        if !req.response_nonce.is_empty() {
            // Unlike SotW, a stale delta request still carries subscription changes that exist
            // nowhere else, so only the ACK/NACK part is dropped.
            match track.reply(&req.response_nonce, req.error_detail.as_ref(), None) {
                // A delta response is not superseded by later ones: the client rejected its
                // changes whichever responses followed, so it is back at its last ACKed state.
                Reply::Stale if req.error_detail.is_some() => {
                    warn!(conn = conn.id, node = %conn.node.id, r#type = type_url.short(), nonce = %req.response_nonce, "xDS client rejected (NACKed) an older response");
                    track.roll_back();
                }
                Reply::Stale => {
                    debug!(conn = conn.id, node = %conn.node.id, r#type = type_url.short(), nonce = %req.response_nonce, "answer to an older response");
                }
                Reply::Nack(nack) => conn.nacked(type_url, &nack),
                Reply::Ack => {
                    debug!(conn = conn.id, node = %conn.node.id, r#type = type_url.short(), nonce = %req.response_nonce, "ACK");
                }
            }
        }
        let first = !track.requested;
        track.requested = true;
        let changed = subscribe(track, first, &req);
        if !(first || changed) {
            return Vec::new();
        }
        // The first request of a type always gets an answer, so the client's initial fetch ends
        // even when it already holds everything.
        respond(track, conn, first).into_iter().collect()
    }

    fn on_change(&mut self, conn: &mut Conn) -> Vec<Push<DeltaDiscoveryResponse>> {
        self.types
            .values_mut()
            .filter(|t| t.requested)
            .filter_map(|track| respond(track, conn, false))
            .collect()
    }

    fn type_statuses(&self) -> BTreeMap<String, TypeStatus> {
        self.types
            .iter()
            .map(|(t, track)| (t.short().to_string(), track.status()))
            .collect()
    }

    fn awaiting_reply(&self) -> bool {
        self.types.values().any(TypeTrack::awaiting_reply)
    }

    fn holds_config(first: &DeltaDiscoveryRequest) -> bool {
        !first.initial_resource_versions.is_empty()
    }

    fn holds(&self, snapshot: &ClientSnapshot) -> bool {
        holds_all(&self.types, snapshot)
    }
}

/// Applies subscribe/unsubscribe (and, on the first request, the versions the client already
/// holds); returns whether the subscription changed.
fn subscribe(track: &mut TypeTrack, first: bool, req: &DeltaDiscoveryRequest) -> bool {
    let before = (track.wildcard, track.names.clone());
    if first && track.type_url.is_wildcard_capable() && req.resource_names_subscribe.is_empty() {
        track.wildcard = true;
    }
    for name in &req.resource_names_subscribe {
        match name.as_str() {
            WILDCARD => track.wildcard = true,
            _ => _ = track.names.insert(name.clone()),
        }
    }
    for name in &req.resource_names_unsubscribe {
        match name.as_str() {
            WILDCARD => track.wildcard = false,
            _ => _ = track.names.remove(name),
        }
    }
    if first {
        track.sent.extend(req.initial_resource_versions.clone());
        track
            .acked_sent
            .extend(req.initial_resource_versions.clone());
    }
    // Resources that left the subscription are dropped by the client itself; forget them (in
    // the ACKed baseline too) so a later re-subscription sends them again.
    let (wildcard, names) = (track.wildcard, &track.names);
    let subscribed = |name: &String, _: &mut String| wildcard || names.contains(name);
    track.sent.retain(subscribed);
    track.acked_sent.retain(subscribed);
    track.told_absent.retain(|name| names.contains(name));
    track.acked_absent.retain(|name| names.contains(name));
    (track.wildcard, &track.names) != (before.0, &before.1)
}

/// What the client lacks or holds at an old version, and names it holds that no longer exist.
fn diff<'a>(track: &TypeTrack, snapshot: &'a ClientSnapshot) -> (Vec<&'a Resource>, Vec<String>) {
    let current = snapshot.of_type(track.type_url);
    let exists = |name: &str| current.is_some_and(|c| c.contains_key(name));
    let changed: Vec<&Resource> = track
        .select(snapshot)
        .into_iter()
        .filter(|r| track.sent.get(&r.name) != Some(&r.version))
        .collect();
    let mut removed: Vec<String> = track.sent.keys().filter(|n| !exists(n)).cloned().collect();
    // In delta, a subscribed name that does not exist is reported in removed_resources, so the
    // client stops waiting for it.
    let absent = track
        .names
        .iter()
        .filter(|n| !exists(n) && !track.sent.contains_key(*n) && !track.told_absent.contains(*n));
    removed.extend(absent.cloned());
    removed.sort();
    removed.dedup();
    (changed, removed)
}

fn respond(
    track: &mut TypeTrack,
    conn: &mut Conn,
    always: bool,
) -> Option<Push<DeltaDiscoveryResponse>> {
    let snapshot = conn.snapshot.clone();
    let (changed, removed) = diff(track, &snapshot);
    if changed.is_empty() && removed.is_empty() && !always {
        return None;
    }
    for r in &changed {
        track.sent.insert(r.name.clone(), r.version.clone());
        track.told_absent.remove(&r.name);
    }
    for name in &removed {
        track.sent.remove(name);
        if track.names.contains(name) {
            track.told_absent.insert(name.clone());
        }
    }
    let nonce = conn.next_nonce();
    let version = conn.generation.to_string();
    track.record_sent(version.clone(), nonce.clone());
    let resources: Vec<DeltaResource> = changed.iter().map(|r| delta_resource(r)).collect();
    Some(Push {
        type_url: track.type_url,
        nonce: nonce.clone(),
        resources: resources.len(),
        removed: removed.len(),
        response: DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: track.type_url.as_str().to_string(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        },
    })
}

fn delta_resource(r: &Resource) -> DeltaResource {
    DeltaResource {
        name: r.name.clone(),
        version: r.version.clone(),
        resource: Some(r.body.clone()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use std::collections::HashMap;

    fn cla(name: &str, weight_hint: u32) -> Resource {
        let msg = ClusterLoadAssignment {
            cluster_name: format!("{name}-{weight_hint}"),
            ..Default::default()
        };
        Resource {
            name: name.to_string(),
            ..Resource::new(name, msg)
        }
    }

    fn request(sub: &[&str], unsub: &[&str]) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            resource_names_subscribe: sub.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsub.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_names_and_wildcard() {
        let mut t = TypeTrack::new(TypeUrl::ClusterLoadAssignment);
        assert!(!subscribe(&mut t, true, &request(&[], &[])));
        assert!(!t.wildcard);
        assert!(subscribe(&mut t, false, &request(&["a", "b"], &[])));
        assert!(subscribe(&mut t, false, &request(&["*"], &["a"])));
        assert!(t.wildcard);
        assert_eq!(t.names.iter().collect::<Vec<_>>(), vec!["b"]);
        let mut l = TypeTrack::new(TypeUrl::Listener);
        assert!(subscribe(&mut l, true, &request(&[], &[])));
        assert!(l.wildcard);
    }

    #[test]
    fn diff_skips_held_versions_and_reports_missing_names() {
        let mut snap = ClientSnapshot::default();
        snap.insert(TypeUrl::ClusterLoadAssignment, cla("a", 1));
        snap.insert(TypeUrl::ClusterLoadAssignment, cla("b", 1));
        let held_a = cla("a", 1).version;
        let mut t = TypeTrack::new(TypeUrl::ClusterLoadAssignment);
        let mut req = request(&["a", "b", "gone", "never"], &[]);
        req.initial_resource_versions = HashMap::from([
            ("a".to_string(), held_a),
            ("gone".to_string(), "x".to_string()),
        ]);
        subscribe(&mut t, true, &req);
        let (changed, removed) = diff(&t, &snap);
        assert_eq!(
            changed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            vec!["b"]
        );
        assert_eq!(removed, vec!["gone", "never"]);
    }
}
