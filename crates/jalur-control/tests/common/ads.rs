//! A minimal SotW ADS client for tests that need to see exactly what the control plane pushes.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{lb_endpoint, ClusterLoadAssignment};
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use jalur_xds::TypeUrl;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub struct AdsClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: Option<Node>,
}

pub fn node(id: &str, metadata: &[(&str, &str)]) -> Node {
    let mut md = Struct::default();
    for (k, v) in metadata {
        md.fields.insert(
            k.to_string(),
            Value {
                kind: Some(Kind::StringValue(v.to_string())),
            },
        );
    }
    Node {
        id: id.into(),
        user_agent_name: "ads-test".into(),
        metadata: Some(md),
        ..Node::default()
    }
}

impl AdsClient {
    pub async fn connect(addr: std::net::SocketAddr, node: Node) -> AdsClient {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect ADS");
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open stream")
            .into_inner();
        AdsClient {
            tx,
            rx,
            node: Some(node),
        }
    }

    pub async fn request(
        &mut self,
        t: TypeUrl,
        names: &[&str],
        ack_of: Option<&DiscoveryResponse>,
    ) {
        let req = DiscoveryRequest {
            node: self.node.take(),
            type_url: t.as_str().into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: ack_of.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: ack_of.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..DiscoveryRequest::default()
        };
        self.tx.send(req).await.expect("send request");
    }

    /// The next response, or None if nothing arrives within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<DiscoveryResponse> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(r))) => Some(r),
            Ok(other) => panic!("ADS stream ended: {other:?}"),
            Err(_) => None,
        }
    }

    pub async fn recv(&mut self) -> DiscoveryResponse {
        self.recv_within(Duration::from_secs(10))
            .await
            .expect("a response within 10s")
    }

    /// Asks for `t` (`names`), ACKs the answer, returns it.
    pub async fn fetch(&mut self, t: TypeUrl, names: &[String]) -> DiscoveryResponse {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.request(t, &names, None).await;
        let resp = self.recv().await;
        self.request(t, &names, Some(&resp)).await;
        resp
    }

    /// Takes a whole config as a proxy does (clusters, their endpoints, listeners, their
    /// routes) and ACKs all of it: what makes the control plane count the proxy as ready.
    pub async fn sync_all(&mut self) {
        let cds = self.fetch(TypeUrl::Cluster, &[]).await;
        self.sync_after_clusters(&cds).await;
    }

    /// As [`AdsClient::sync_all`], the clusters (`cds`) already taken.
    pub async fn sync_after_clusters(&mut self, cds: &DiscoveryResponse) {
        let clusters: Vec<String> = cds
            .resources
            .iter()
            .filter_map(|any| Cluster::decode(any.value.as_slice()).ok())
            .map(|c| c.name)
            .collect();
        self.fetch(TypeUrl::ClusterLoadAssignment, &clusters).await;
        let lds = self.fetch(TypeUrl::Listener, &[]).await;
        self.fetch(TypeUrl::RouteConfiguration, &rds_names(&lds))
            .await;
    }
}

/// The route configurations the listeners of an LDS response ask for over RDS.
pub fn rds_names(lds: &DiscoveryResponse) -> Vec<String> {
    let mut names: Vec<String> = lds
        .resources
        .iter()
        .filter_map(|any| Listener::decode(any.value.as_slice()).ok())
        .flat_map(|l| l.filter_chains)
        .flat_map(|fc| fc.filters)
        .filter_map(|f| match f.config_type? {
            filter::ConfigType::TypedConfig(any) => {
                HttpConnectionManager::decode(any.value.as_slice()).ok()
            }
            _ => None,
        })
        .filter_map(|hcm| match hcm.route_specifier? {
            RouteSpecifier::Rds(rds) => Some(rds.route_config_name),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `ip:port` of every endpoint in an EDS response.
pub fn endpoints(resp: &DiscoveryResponse) -> Vec<String> {
    resp.resources
        .iter()
        .filter_map(|any| ClusterLoadAssignment::decode(any.value.as_slice()).ok())
        .flat_map(|cla| cla.endpoints.into_iter().flat_map(|l| l.lb_endpoints))
        .filter_map(|e| match e.host_identifier? {
            lb_endpoint::HostIdentifier::Endpoint(ep) => match ep.address?.address? {
                address::Address::SocketAddress(s) => match s.port_specifier? {
                    socket_address::PortSpecifier::PortValue(p) => {
                        Some(format!("{}:{p}", s.address))
                    }
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}
