//! State-of-the-world ADS (`StreamAggregatedResources`): every response carries the whole
//! subscribed set of its type; the client changes a subscription by re-sending the full name
//! list, and answers each response by echoing its nonce (with error_detail for a NACK).

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
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
    let mut stream = SotwStream {
        tx,
        node: Some(node),
        types: BTreeMap::new(),
    };
    // Queued before the call so the server sees them as soon as the stream opens.
    if let Err(error) = stream.subscribe_initial(session) {
        return error;
    }
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut inbound = match client
        .stream_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return XdsError::Refused(status),
    };
    session.opened();
    for (rtype, ts) in &stream.types {
        session.subscribed(*rtype, &ts.names);
    }
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

/// One type on this stream.
#[derive(Debug, Default)]
struct TypeState {
    names: BTreeSet<String>,
    /// Nonce of the last response received.
    nonce: String,
    /// The last response was NACKed with this; a subscription change repeats it so the server
    /// does not take the change for an ACK of that response.
    nack: Option<RpcStatus>,
}

struct SotwStream {
    tx: mpsc::UnboundedSender<DiscoveryRequest>,
    /// Sent with the first request only.
    node: Option<Node>,
    /// Types requested on this stream.
    types: BTreeMap<ResourceType, TypeState>,
}

impl SotwStream {
    fn send(&mut self, mut request: DiscoveryRequest) -> Result<(), XdsError> {
        request.node = self.node.take();
        self.tx.send(request).map_err(|_| XdsError::Closed)
    }

    /// Wildcard CDS and LDS (empty name lists), then RDS and EDS for what the held snapshot
    /// references. Each carries the version held, as Envoy does on reconnect.
    fn subscribe_initial(&mut self, session: &Session<'_>) -> Result<(), XdsError> {
        for rtype in [ResourceType::Cluster, ResourceType::Listener] {
            self.types.insert(rtype, TypeState::default());
            self.send(DiscoveryRequest {
                type_url: rtype.type_url().to_string(),
                version_info: held_version(session, rtype),
                ..Default::default()
            })?;
        }
        self.follow(session)
    }

    /// Brings the RDS and EDS name lists in step with the live snapshot.
    fn follow(&mut self, session: &Session<'_>) -> Result<(), XdsError> {
        for rtype in [
            ResourceType::ClusterLoadAssignment,
            ResourceType::RouteConfiguration,
        ] {
            let wanted = session.wanted(rtype);
            let request = match self.types.get_mut(&rtype) {
                // Not requested yet: the type's first request comes with its first name.
                None if wanted.is_empty() => continue,
                Some(ts) if ts.names == wanted => continue,
                None => {
                    let ts = TypeState {
                        names: wanted,
                        ..Default::default()
                    };
                    let request = request(rtype, &ts, held_version(session, rtype));
                    self.types.insert(rtype, ts);
                    request
                }
                Some(ts) => {
                    ts.names = wanted;
                    let mut request = request(rtype, ts, held_version(session, rtype));
                    request.response_nonce = ts.nonce.clone();
                    request.error_detail = ts.nack.clone();
                    request
                }
            };
            let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
            session.subscribed(rtype, &names);
            debug!(r#type = rtype.short(), names = ?request.resource_names, "xDS subscription changed");
            self.send(request)?;
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        session: &mut Session<'_>,
        response: DiscoveryResponse,
    ) -> Result<(), XdsError> {
        let Some(rtype) = ResourceType::parse(&response.type_url) else {
            debug!(type_url = %response.type_url, nonce = %response.nonce, "ignoring a response of a type the proxy does not consume");
            return Ok(());
        };
        let update = Update {
            rtype,
            replace: rtype.is_wildcard(),
            resources: response
                .resources
                .into_iter()
                .map(|body| WireResource {
                    name: None,
                    version: String::new(),
                    body,
                })
                .collect(),
            removed: Vec::new(),
        };
        let ts = self.types.entry(rtype).or_default();
        let result = session.apply(&update, &response.version_info, &response.nonce, &ts.names);
        ts.nonce = response.nonce;
        ts.nack = result.err().map(nack_status);
        // An ACK echoes the response's version; a NACK reports the version still in use.
        let version = match ts.nack {
            None => response.version_info,
            Some(_) => held_version(session, rtype),
        };
        let mut answer = request(rtype, ts, version);
        answer.response_nonce = ts.nonce.clone();
        answer.error_detail = ts.nack.clone();
        self.send(answer)?;
        self.follow(session)
    }
}

fn request(rtype: ResourceType, ts: &TypeState, version_info: String) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: rtype.type_url().to_string(),
        version_info,
        resource_names: ts.names.iter().cloned().collect(),
        ..Default::default()
    }
}

fn held_version(session: &Session<'_>, rtype: ResourceType) -> String {
    session
        .held()
        .type_versions
        .get(&rtype)
        .cloned()
        .unwrap_or_default()
}
