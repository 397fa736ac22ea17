//! Delta ADS (`DeltaAggregatedResources`): responses carry changed resources and removed names;
//! the client subscribes and unsubscribes by name and, on a new stream, says which versions it
//! already holds so the server sends only what changed while it was away.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tracing::debug;

use super::apply::{ResourceType, Update, WireResource};
use super::{leave, leaving_or_stopped, nack_status, Lifecycle, Session, XdsError};

/// Runs one stream until it fails; the snapshot stays as the last response left it.
pub(super) async fn stream(
    channel: Channel,
    node: Node,
    session: &mut Session<'_>,
    lifecycle: &mut watch::Receiver<Lifecycle>,
) -> XdsError {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stream = DeltaStream {
        tx,
        node: Some(node),
        subscribed: BTreeMap::new(),
    };
    // Queued before the call so the server sees them as soon as the stream opens.
    if let Err(error) = stream.subscribe_initial(session) {
        return error;
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut inbound = match client
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return XdsError::Refused(status),
    };
    session.opened();
    stream.publish_subscriptions(session);
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = leaving_or_stopped(lifecycle) => {
                // Dropping the request sender half-closes the stream.
                drop(stream);
                return leave(inbound).await;
            }
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return XdsError::Closed,
            Err(status) => return XdsError::Stream(status),
        };
        if let Err(error) = stream.on_response(session, response) {
            return error;
        }
    }
}

struct DeltaStream {
    tx: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    /// Sent with the first request only.
    node: Option<Node>,
    /// Names subscribed on this stream, for RDS and EDS; a type is present once requested.
    subscribed: BTreeMap<ResourceType, BTreeSet<String>>,
}

impl DeltaStream {
    fn send(&mut self, mut request: DeltaDiscoveryRequest) -> Result<(), XdsError> {
        request.node = self.node.take();
        self.tx.send(request).map_err(|_| XdsError::Closed)
    }

    /// Wildcard CDS and LDS (an empty first subscription, understood by every server), then RDS
    /// and EDS for what the held snapshot references.
    fn subscribe_initial(&mut self, session: &Session<'_>) -> Result<(), XdsError> {
        for rtype in [ResourceType::Cluster, ResourceType::Listener] {
            self.send(DeltaDiscoveryRequest {
                type_url: rtype.type_url().to_string(),
                initial_resource_versions: session.held().versions_of(rtype, None),
                ..Default::default()
            })?;
        }
        self.follow(session)
    }

    /// Brings the RDS and EDS subscriptions in step with the live snapshot.
    fn follow(&mut self, session: &Session<'_>) -> Result<(), XdsError> {
        for rtype in [
            ResourceType::ClusterLoadAssignment,
            ResourceType::RouteConfiguration,
        ] {
            let wanted = session.wanted(rtype);
            let first = !self.subscribed.contains_key(&rtype);
            let current = self.subscribed.entry(rtype).or_default();
            let subscribe: Vec<String> = wanted.difference(current).cloned().collect();
            let unsubscribe: Vec<String> = current.difference(&wanted).cloned().collect();
            if subscribe.is_empty() && unsubscribe.is_empty() {
                if first && wanted.is_empty() {
                    // Nothing to ask for yet: the type's first request comes with its first name.
                    self.subscribed.remove(&rtype);
                }
                continue;
            }
            *current = wanted;
            let initial_resource_versions = if first {
                session.held().versions_of(rtype, Some(current))
            } else {
                Default::default()
            };
            session.subscribed(rtype, current);
            debug!(
                r#type = rtype.short(),
                ?subscribe,
                ?unsubscribe,
                "xDS subscription changed"
            );
            self.send(DeltaDiscoveryRequest {
                type_url: rtype.type_url().to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions,
                ..Default::default()
            })?;
        }
        Ok(())
    }

    fn publish_subscriptions(&self, session: &Session<'_>) {
        for (rtype, names) in &self.subscribed {
            session.subscribed(*rtype, names);
        }
    }

    fn on_response(
        &mut self,
        session: &mut Session<'_>,
        response: DeltaDiscoveryResponse,
    ) -> Result<(), XdsError> {
        let Some(rtype) = ResourceType::parse(&response.type_url) else {
            debug!(type_url = %response.type_url, nonce = %response.nonce, "ignoring a response of a type the proxy does not consume");
            return Ok(());
        };
        let resources = response
            .resources
            .into_iter()
            // A body-less resource only refreshes a TTL, which the proxy does not use.
            .filter_map(|r| {
                Some(WireResource {
                    body: r.resource?,
                    name: Some(r.name),
                    version: r.version,
                })
            })
            .collect();
        let update = Update {
            rtype,
            replace: false,
            resources,
            removed: response.removed_resources,
        };
        let subscribed = self.subscribed.get(&rtype).cloned().unwrap_or_default();
        let version = &response.system_version_info;
        let result = session.apply(&update, version, &response.nonce, &subscribed);
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            error_detail: result.err().map(nack_status),
            ..Default::default()
        })?;
        self.follow(session)
    }
}
