//! Per-type bookkeeping of one stream, shared by the SotW and delta protocols: subscription,
//! what the client holds, the last nonce sent and what the client answered.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::google::rpc::Status as RpcStatus;

use crate::resource::{ClientSnapshot, Resource, TypeUrl};
use crate::status::{Nack, TypeStatus};

/// The xDS name that subscribes to every resource of a type.
pub(crate) const WILDCARD: &str = "*";

/// How a client answered a response.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    Ack,
    Nack(Nack),
    /// The nonce is not the last one sent for the type: the client has not seen our newest
    /// response yet, so its answer says nothing about it.
    Stale,
}

#[derive(Debug)]
pub(crate) struct TypeTrack {
    pub(crate) type_url: TypeUrl,
    /// At least one request for the type arrived on this stream.
    pub(crate) requested: bool,
    pub(crate) wildcard: bool,
    pub(crate) names: BTreeSet<String>,
    /// name -> version the client holds: what went out, rolled back to `acked_sent` on a NACK
    /// (SotW: the set the last response carried, or the last ACKed set after a NACK).
    pub(crate) sent: BTreeMap<String, String>,
    /// `sent` as of the client's last ACK (delta: plus `initial_resource_versions`). A client
    /// that rejects a response keeps the state it had before it, so a NACK returns `sent` here.
    pub(crate) acked_sent: BTreeMap<String, String>,
    /// SotW: the client has sent a non-empty name list for the type, which ends "empty list
    /// means wildcard" (the legacy wildcard of the xDS spec).
    pub(crate) named_ever: bool,
    /// Delta: subscribed names the client was told (via `removed_resources`) do not exist.
    pub(crate) told_absent: BTreeSet<String>,
    /// `told_absent` as of the client's last ACK.
    pub(crate) acked_absent: BTreeSet<String>,
    status: TypeStatus,
    /// Last nonce the client ACKed or NACKed.
    answered_nonce: String,
}

impl TypeTrack {
    pub(crate) fn new(type_url: TypeUrl) -> TypeTrack {
        TypeTrack {
            type_url,
            requested: false,
            wildcard: false,
            names: BTreeSet::new(),
            sent: BTreeMap::new(),
            acked_sent: BTreeMap::new(),
            named_ever: false,
            told_absent: BTreeSet::new(),
            acked_absent: BTreeSet::new(),
            status: TypeStatus::default(),
            answered_nonce: String::new(),
        }
    }

    /// The resources of this type in `snapshot` the client subscribes to, by name.
    pub(crate) fn select<'a>(&self, snapshot: &'a ClientSnapshot) -> Vec<&'a Resource> {
        let Some(all) = snapshot.of_type(self.type_url) else {
            return Vec::new();
        };
        if self.wildcard {
            return all.values().collect();
        }
        self.names.iter().filter_map(|n| all.get(n)).collect()
    }

    pub(crate) fn record_sent(&mut self, version: String, nonce: String) {
        self.status.sent_version = version;
        self.status.sent_nonce = nonce;
    }

    /// Books the client's answer to the response with `nonce`: an ACK makes what was sent the
    /// baseline, a NACK rolls back to it. `client_version` is the `version_info` a SotW client
    /// reports; delta clients report none.
    pub(crate) fn reply(
        &mut self,
        nonce: &str,
        error: Option<&RpcStatus>,
        client_version: Option<&str>,
    ) -> Reply {
        if nonce != self.status.sent_nonce {
            return Reply::Stale;
        }
        self.answered_nonce = nonce.to_string();
        match error {
            Some(err) => {
                let nack = Nack {
                    version: self.status.sent_version.clone(),
                    nonce: nonce.to_string(),
                    detail: error_text(err),
                    at_unix: unix_now(),
                };
                self.status.last_nack = Some(nack.clone());
                self.roll_back();
                Reply::Nack(nack)
            }
            None => {
                let version = client_version.unwrap_or(&self.status.sent_version);
                self.status.acked_version = version.to_string();
                self.status.acked_nonce = nonce.to_string();
                self.acked_sent.clone_from(&self.sent);
                self.acked_absent.clone_from(&self.told_absent);
                Reply::Ack
            }
        }
    }

    /// The client rejected a response: it still holds what it held at its last ACK, so whatever
    /// went out since must be sent again once it changes (or on the next generation, for SotW).
    pub(crate) fn roll_back(&mut self) {
        self.sent.clone_from(&self.acked_sent);
        self.told_absent.clone_from(&self.acked_absent);
    }

    /// A response went out and the client has neither ACKed nor NACKed it.
    pub(crate) fn awaiting_reply(&self) -> bool {
        !self.status.sent_nonce.is_empty() && self.answered_nonce != self.status.sent_nonce
    }

    pub(crate) fn status(&self) -> TypeStatus {
        let mut status = self.status.clone();
        status.wildcard = self.wildcard;
        status.subscribed = self.names.iter().cloned().collect();
        status.resources = self.sent.len();
        status.in_sync = status.compute_in_sync();
        status
    }
}

/// What a proxy needs before it can serve: its listeners and clusters (wildcard types, so
/// answered at least once) and the route configurations and endpoint assignments they use.
const SERVING_TYPES: [TypeUrl; 4] = [
    TypeUrl::Cluster,
    TypeUrl::ClusterLoadAssignment,
    TypeUrl::Listener,
    TypeUrl::RouteConfiguration,
];

/// The client has ACKed every resource of `snapshot` in the types a proxy serves from (by
/// name: a later version still in flight does not make a held config incomplete), and has
/// ACKed LDS and CDS at least once. Judged against the snapshot, not the subscription: a
/// client that ACKed its listeners but has not yet asked for their routes is not complete.
pub(crate) fn holds_all(types: &BTreeMap<TypeUrl, TypeTrack>, snapshot: &ClientSnapshot) -> bool {
    SERVING_TYPES.iter().all(|t| {
        let track = types.get(t);
        let acked_once = track.is_some_and(|tr| !tr.status.acked_nonce.is_empty());
        if t.is_wildcard_capable() && !acked_once {
            return false;
        }
        let held = |name: &String| track.is_some_and(|tr| tr.acked_sent.contains_key(name));
        snapshot
            .of_type(*t)
            .is_none_or(|wanted| wanted.keys().all(held))
    })
}

fn error_text(err: &RpcStatus) -> String {
    if err.message.is_empty() {
        format!("error code {} without message", err.code)
    } else {
        err.message.clone()
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str) -> Resource {
        Resource::new(
            name,
            Cluster {
                name: name.to_string(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn select_honours_wildcard_and_names() {
        let mut snap = ClientSnapshot::default();
        snap.insert(TypeUrl::Cluster, cluster("a"));
        snap.insert(TypeUrl::Cluster, cluster("b"));
        let mut t = TypeTrack::new(TypeUrl::Cluster);
        t.names.insert("b".into());
        t.names.insert("missing".into());
        let names = |t: &TypeTrack| {
            t.select(&snap)
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&t), vec!["b"]);
        t.wildcard = true;
        assert_eq!(names(&t), vec!["a", "b"]);
    }

    #[test]
    fn reply_matches_only_the_last_nonce() {
        let mut t = TypeTrack::new(TypeUrl::Cluster);
        t.record_sent("v1".into(), "1".into());
        t.record_sent("v2".into(), "2".into());
        assert!(t.awaiting_reply());
        assert_eq!(t.reply("1", None, Some("v1")), Reply::Stale);
        let err = RpcStatus {
            code: 3,
            message: "bad cluster".into(),
            details: vec![],
        };
        let Reply::Nack(nack) = t.reply("2", Some(&err), Some("v0")) else {
            panic!("expected a NACK");
        };
        assert_eq!(
            (nack.version.as_str(), nack.detail.as_str()),
            ("v2", "bad cluster")
        );
        assert!(!t.awaiting_reply());
        assert!(!t.status().in_sync);
        t.record_sent("v3".into(), "3".into());
        assert_eq!(t.reply("3", None, None), Reply::Ack);
        let s = t.status();
        assert!(s.in_sync);
        assert_eq!(
            (s.acked_version.as_str(), s.acked_nonce.as_str()),
            ("v3", "3")
        );
    }

    #[test]
    fn nack_rolls_back_to_what_was_acked() {
        let err = RpcStatus {
            code: 3,
            message: "bad".into(),
            details: vec![],
        };
        let mut t = TypeTrack::new(TypeUrl::Cluster);
        t.sent.insert("a".into(), "1".into());
        t.record_sent("v1".into(), "1".into());
        assert_eq!(t.reply("1", None, None), Reply::Ack);
        t.sent.insert("a".into(), "2".into());
        t.sent.insert("b".into(), "bad".into());
        t.told_absent.insert("gone".into());
        t.record_sent("v2".into(), "2".into());
        assert!(matches!(t.reply("2", Some(&err), None), Reply::Nack(_)));
        assert_eq!(t.sent, BTreeMap::from([("a".into(), "1".into())]));
        assert!(t.told_absent.is_empty());
        assert_eq!(t.status().resources, 1);
    }
}
