//! One delta SDS stream: only secrets whose version the client does not hold are sent.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tracing::{debug, warn};

use super::{build, Sources, StreamState, UnknownNames, SECRET_TYPE_URL};

#[derive(Default)]
pub(crate) struct Delta {
    stream: u64,
    names: BTreeSet<String>,
    /// name → the version the client holds (from `initial_resource_versions`, then from what
    /// this stream sent; a NACKed version stays here so it is not re-sent until it changes).
    held: BTreeMap<String, String>,
    first: bool,
    nonce: u64,
    unknown: UnknownNames,
}

impl Delta {
    pub fn new(stream: u64) -> Self {
        Self {
            stream,
            first: true,
            ..Default::default()
        }
    }
}

impl StreamState for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        src: &Sources<'_>,
    ) -> Option<DeltaDiscoveryResponse> {
        let stream = self.stream;
        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL {
            warn!(stream, type_url = %req.type_url, "ignoring an SDS request for another type");
            return None;
        }
        if std::mem::take(&mut self.first) {
            self.held.extend(
                req.initial_resource_versions
                    .iter()
                    .map(|(n, v)| (n.clone(), v.clone())),
            );
        }
        if !req.response_nonce.is_empty() {
            match &req.error_detail {
                Some(error) => {
                    warn!(stream, nonce = %req.response_nonce, "Envoy rejected the secrets (NACK): {}", error.message)
                }
                None => debug!(stream, nonce = %req.response_nonce, "ACK"),
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                warn!(
                    stream,
                    "Envoy asked for every secret (wildcard); secrets are served by name only"
                );
                continue;
            }
            self.names.insert(name.clone());
        }
        self.unknown.note(stream, &req.resource_names_subscribe);
        for name in &req.resource_names_unsubscribe {
            self.names.remove(name);
            self.held.remove(name);
        }
        self.respond(src)
    }

    /// New credentials: the secrets that changed, if any.
    fn on_change(&mut self, src: &Sources<'_>) -> Option<DeltaDiscoveryResponse> {
        self.respond(src)
    }
}

impl Delta {
    fn respond(&mut self, src: &Sources<'_>) -> Option<DeltaDiscoveryResponse> {
        let mut resources = Vec::new();
        for name in &self.names {
            let Some(built) = build(name, src) else {
                continue;
            };
            if self.held.get(name) == Some(&built.version) {
                continue;
            }
            self.held.insert(name.clone(), built.version.clone());
            resources.push(Resource {
                name: name.clone(),
                version: built.version,
                resource: Some(built.any),
                ..Default::default()
            });
        }
        if resources.is_empty() {
            return None;
        }
        self.nonce += 1;
        debug!(stream = self.stream, secrets = ?resources.iter().map(|r| (&r.name, &r.version)).collect::<Vec<_>>(), nonce = self.nonce, "pushing secrets");
        Some(DeltaDiscoveryResponse {
            system_version_info: self.nonce.to_string(),
            resources,
            type_url: SECRET_TYPE_URL.to_string(),
            nonce: self.nonce.to_string(),
            ..Default::default()
        })
    }
}
