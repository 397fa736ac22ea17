//! One state-of-the-world SDS stream: every response carries every secret the stream asked for.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use tracing::{debug, warn};

use super::{build, content_version, Built, Sources, StreamState, UnknownNames, SECRET_TYPE_URL};

/// What one stream asked for and was last sent.
#[derive(Default)]
pub(crate) struct Sotw {
    stream: u64,
    names: BTreeSet<String>,
    requested: bool,
    /// name → version of the last response (ACKed or not: a NACKed version is not re-sent
    /// until the credentials change, so a secret Envoy rejects cannot loop).
    sent: BTreeMap<String, String>,
    nonce: u64,
    unknown: UnknownNames,
}

impl Sotw {
    pub fn new(stream: u64) -> Self {
        Self {
            stream,
            ..Default::default()
        }
    }
}

impl StreamState for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        src: &Sources<'_>,
    ) -> Option<DiscoveryResponse> {
        let stream = self.stream;
        if !req.type_url.is_empty() && req.type_url != SECRET_TYPE_URL {
            warn!(stream, type_url = %req.type_url, "ignoring an SDS request for another type");
            return None;
        }
        if !req.response_nonce.is_empty() {
            // The xDS rule: a request answering an older response is ignored whole; Envoy
            // answers the newest one too.
            if req.response_nonce != self.nonce.to_string() {
                debug!(stream, nonce = %req.response_nonce, "ignoring a request with a stale nonce");
                return None;
            }
            match &req.error_detail {
                Some(error) => {
                    warn!(stream, secrets = ?self.sent.keys().collect::<Vec<_>>(), version = %req.version_info, "Envoy rejected the secrets (NACK): {}", error.message)
                }
                None => debug!(stream, version = %req.version_info, "ACK"),
            }
        }
        let names: BTreeSet<String> = req.resource_names.iter().cloned().collect();
        self.unknown.note(stream, &names);
        let changed = names != self.names || !self.requested;
        self.names = names;
        self.requested = true;
        // Only unknown names, and nothing sent before: nothing to say (see `UnknownNames`).
        if !changed || (self.sent.is_empty() && self.select(src).1.is_empty()) {
            return None;
        }
        Some(self.respond(src))
    }

    fn on_change(&mut self, src: &Sources<'_>) -> Option<DiscoveryResponse> {
        if !self.requested || self.select(src).1 == self.sent {
            return None;
        }
        Some(self.respond(src))
    }
}

impl Sotw {
    fn select(&self, src: &Sources<'_>) -> (Vec<(String, Built)>, BTreeMap<String, String>) {
        let built: Vec<(String, Built)> = self
            .names
            .iter()
            .filter_map(|n| build(n, src).map(|b| (n.clone(), b)))
            .collect();
        let versions = built
            .iter()
            .map(|(n, b)| (n.clone(), b.version.clone()))
            .collect();
        (built, versions)
    }

    fn respond(&mut self, src: &Sources<'_>) -> DiscoveryResponse {
        let (built, versions) = self.select(src);
        self.sent = versions;
        self.nonce += 1;
        debug!(stream = self.stream, secrets = ?self.sent, nonce = self.nonce, "pushing secrets");
        response(&built, self.nonce.to_string())
    }
}

/// A response carrying `built`; its version hashes the secrets' versions.
pub(crate) fn response(built: &[(String, Built)], nonce: String) -> DiscoveryResponse {
    let mut versions = String::new();
    for (name, b) in built {
        versions.push_str(name);
        versions.push('=');
        versions.push_str(&b.version);
        versions.push('\n');
    }
    DiscoveryResponse {
        version_info: content_version(versions.as_bytes()),
        resources: built.iter().map(|(_, b)| b.any.clone()).collect(),
        type_url: SECRET_TYPE_URL.to_string(),
        nonce,
        ..Default::default()
    }
}
