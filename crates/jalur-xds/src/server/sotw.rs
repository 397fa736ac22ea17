//! State-of-the-world ADS: every response for a type carries the client's whole subscribed set.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::debug;

use super::conn::{Conn, Protocol, Push};
use super::track::{holds_all, Reply, TypeTrack, WILDCARD};
use crate::resource::{content_version, ClientSnapshot, TypeUrl};
use crate::status::{Mode, TypeStatus};
use crate::Node;

#[derive(Debug, Default)]
pub(crate) struct Sotw {
    types: BTreeMap<TypeUrl, TypeTrack>,
}

impl Protocol for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const MODE: Mode = Mode::Sotw;

    fn node(request: &DiscoveryRequest) -> Option<&Node> {
        request.node.as_ref()
    }

    fn on_request(
        &mut self,
        conn: &mut Conn,
        req: DiscoveryRequest,
    ) -> Vec<Push<DiscoveryResponse>> {
        let Some(type_url) = TypeUrl::parse(&req.type_url) else {
            debug!(conn = conn.id, node = %conn.node.id, type_url = %req.type_url, "ignoring request for a type this server does not serve");
            return Vec::new();
        };
        let track = self
            .types
            .entry(type_url)
            .or_insert_with(|| TypeTrack::new(type_url));
        if !req.response_nonce.is_empty() {
            let error = req.error_detail.as_ref();
            match track.reply(&req.response_nonce, error, Some(&req.version_info)) {
                // The xDS spec: a request with a stale nonce is ignored entirely, subscription
                // included; the client re-sends its subscription when it answers the newer one.
                Reply::Stale => {
                    debug!(conn = conn.id, node = %conn.node.id, r#type = type_url.short(), nonce = %req.response_nonce, "ignoring request with stale nonce");
                    return Vec::new();
                }
                Reply::Nack(nack) => conn.nacked(type_url, &nack),
                Reply::Ack => {
                    debug!(conn = conn.id, node = %conn.node.id, r#type = type_url.short(), nonce = %req.response_nonce, version = %req.version_info, "ACK");
                }
            }
        }
        let first = !track.requested;
        track.requested = true;
        let changed = subscribe(track, &req.resource_names);
        if first || changed {
            return vec![respond(track, conn)];
        }
        Vec::new()
    }

    fn on_change(&mut self, conn: &mut Conn) -> Vec<Push<DiscoveryResponse>> {
        let snapshot = conn.snapshot.clone();
        let mut pushes = Vec::new();
        // BTreeMap order is TypeUrl order: clusters and endpoints before listeners and routes.
        // After a NACK `sent` is the last ACKed set, so the next generation re-sends the full
        // current set even if it equals the rejected one; the NACK itself pushes nothing, so
        // rejected content is retried once per generation, never in a loop.
        for track in self.types.values_mut().filter(|t| t.requested) {
            let current = versions(track.select(&snapshot));
            if current == track.sent {
                continue;
            }
            if track.type_url.is_wildcard_capable() {
                pushes.push(respond(track, conn));
            } else if let Some(push) = respond_changed(track, conn) {
                pushes.push(push);
            }
        }
        pushes
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

    fn holds_config(first: &DiscoveryRequest) -> bool {
        !first.version_info.is_empty()
    }

    fn holds(&self, snapshot: &ClientSnapshot) -> bool {
        holds_all(&self.types, snapshot)
    }
}

/// Applies a request's name list; returns whether the subscription changed.
fn subscribe(track: &mut TypeTrack, names: &[String]) -> bool {
    let legacy_wildcard =
        names.is_empty() && track.type_url.is_wildcard_capable() && !track.named_ever;
    let wildcard = legacy_wildcard || names.iter().any(|n| n == WILDCARD);
    track.named_ever |= !names.is_empty();
    let names: BTreeSet<String> = names.iter().filter(|n| *n != WILDCARD).cloned().collect();
    let changed = wildcard != track.wildcard || names != track.names;
    track.wildcard = wildcard;
    track.names = names;
    changed
}

fn respond(track: &mut TypeTrack, conn: &mut Conn) -> Push<DiscoveryResponse> {
    let snapshot = conn.snapshot.clone();
    let selected = track.select(&snapshot);
    let resources: Vec<_> = selected.iter().map(|r| r.body.clone()).collect();
    track.sent = versions(selected);
    let version = set_version(&track.sent);
    let nonce = conn.next_nonce();
    track.record_sent(version.clone(), nonce.clone());
    Push {
        type_url: track.type_url,
        nonce: nonce.clone(),
        resources: resources.len(),
        removed: 0,
        response: DiscoveryResponse {
            version_info: version,
            resources,
            type_url: track.type_url.as_str().to_string(),
            nonce,
            ..Default::default()
        },
    }
}

/// EDS, RDS and SDS after a change: only the resources whose version differs from what the
/// client holds. The xDS spec lets a SotW response for a type that is not LDS or CDS carry a
/// subset (the client keeps the resources left out), as istiod's incremental EDS does: a change
/// of one endpoint set sends that one, not all of them. `None` when nothing needs sending (a
/// subscribed resource merely went away; as with the whole set, a SotW client is not told).
/// The `version_info` still names the whole set the client holds after it.
fn respond_changed(track: &mut TypeTrack, conn: &mut Conn) -> Option<Push<DiscoveryResponse>> {
    let snapshot = conn.snapshot.clone();
    let selected = track.select(&snapshot);
    let changed: Vec<_> = selected
        .iter()
        .filter(|r| track.sent.get(&r.name) != Some(&r.version))
        .map(|r| r.body.clone())
        .collect();
    track.sent = versions(selected);
    if changed.is_empty() {
        return None;
    }
    let version = set_version(&track.sent);
    let nonce = conn.next_nonce();
    track.record_sent(version.clone(), nonce.clone());
    Some(Push {
        type_url: track.type_url,
        nonce: nonce.clone(),
        resources: changed.len(),
        removed: 0,
        response: DiscoveryResponse {
            version_info: version,
            resources: changed,
            type_url: track.type_url.as_str().to_string(),
            nonce,
            ..Default::default()
        },
    })
}

fn versions(selected: Vec<&crate::Resource>) -> BTreeMap<String, String> {
    selected
        .into_iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

/// A type's `version_info`: a hash over the sorted (name, version) pairs sent, so equal sets have
/// equal versions on every control-plane replica.
fn set_version(sent: &BTreeMap<String, String>) -> String {
    let mut bytes = Vec::new();
    for (name, version) in sent {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(version.as_bytes());
        bytes.push(b'\n');
    }
    content_version(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_list_is_wildcard_only_until_names_were_sent() {
        let mut t = TypeTrack::new(TypeUrl::Listener);
        assert!(subscribe(&mut t, &[]));
        assert!(t.wildcard);
        assert!(!subscribe(&mut t, &[]));
        assert!(subscribe(&mut t, &names(&["a"])));
        assert!(!t.wildcard);
        assert!(subscribe(&mut t, &[]));
        assert!(!t.wildcard && t.names.is_empty());
        assert!(subscribe(&mut t, &names(&["*", "b"])));
        assert!(t.wildcard);
    }

    #[test]
    fn empty_list_is_not_wildcard_for_endpoints() {
        let mut t = TypeTrack::new(TypeUrl::ClusterLoadAssignment);
        assert!(!subscribe(&mut t, &[]));
        assert!(!t.wildcard);
    }

    #[test]
    fn set_version_depends_on_names_and_versions() {
        let a = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let b = BTreeMap::from([("a".to_string(), "2".to_string())]);
        assert_ne!(set_version(&a), set_version(&b));
        assert_eq!(set_version(&a), set_version(&a.clone()));
    }
}
