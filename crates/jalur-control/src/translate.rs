//! Translation: `(Mesh, ClientInfo) -> ClientSnapshot`, a pure function. The same config becomes
//! Envoy v3 Listeners, RouteConfigurations, Clusters and ClusterLoadAssignments shaped for each
//! client kind (sidecar, gateway, fronting Envoy, proxyless gRPC). Golden-tested in
//! `translate/tests.rs` against `testdata/golden/`.

pub mod authz;
pub mod cluster;
mod gateway;
pub mod jwt;
pub mod listener;
pub mod route;
pub mod tls;

use envoy_types::pb::envoy::config::core::v3::{
    config_source::ConfigSourceSpecifier, AggregatedConfigSource, ApiVersion, ConfigSource,
};
use envoy_types::pb::envoy::config::route::v3::route_action::{hash_policy, HashPolicy};
use jalur_model::networking::DestinationRule;
use jalur_model::{host, Resource};
use jalur_xds::{ClientSnapshot, Resource as XdsResource, TypeUrl};

use crate::mesh::Mesh;
use crate::node::{ClientInfo, ClientKind};

/// What translation needs to know while building one client's resources.
pub struct Ctx<'a> {
    pub mesh: &'a Mesh,
    pub client: &'a ClientInfo,
    /// gRPC's xDS client: only the subset of Envoy's API it implements.
    pub proxyless: bool,
    /// Gateways the routes being built belong to: `mesh`, or `namespace/name` of Gateways.
    pub gateway_names: Vec<String>,
    /// The gateway server port the routes being built serve, if any.
    pub gateway_port: Option<u32>,
    /// The Istio `Sidecar` that applies to this client, if any: it sees only the services its
    /// `egress.hosts` admit (gateways are never scoped, as in Istio).
    pub scope: Option<&'a jalur_model::networking::Sidecar>,
}

impl<'a> Ctx<'a> {
    pub fn new(mesh: &'a Mesh, client: &'a ClientInfo) -> Ctx<'a> {
        let scope = match client.kind {
            ClientKind::Gateway => None,
            _ => jalur_model::scope::select(
                &mesh.config,
                &client.namespace,
                &client.labels,
                &mesh.security.root_namespace,
            )
            .map(|(_, sidecar)| sidecar),
        };
        Ctx {
            mesh,
            client,
            proxyless: client.kind == ClientKind::ProxylessGrpc,
            gateway_names: vec!["mesh".to_string()],
            gateway_port: None,
            scope,
        }
    }

    /// Whether this client's `Sidecar` lets it see `service` (its clusters, endpoints and
    /// routes). In a root-namespace `Sidecar`, `.` means the client's own namespace, as Istio
    /// reads the mesh-wide default.
    pub fn sees(&self, service: &crate::mesh::Service) -> bool {
        self.scope.is_none_or(|sidecar| {
            jalur_model::scope::admits(
                sidecar,
                &self.client.namespace,
                &service.namespace,
                &service.host,
            )
        })
    }

    /// The DestinationRule for a host: an exact host match wins over a wildcard one.
    pub fn destination_rule(&self, fqdn: &str) -> Option<(&'a Resource, &'a DestinationRule)> {
        let rules: Vec<_> = self.mesh.config.destination_rules().collect();
        let qualified =
            |(r, d): &(&Resource, &DestinationRule)| host::qualify(&d.host, &r.meta.namespace);
        rules
            .iter()
            .find(|rd| qualified(rd) == fqdn)
            .or_else(|| rules.iter().find(|rd| host::matches(&qualified(rd), fqdn)))
            .copied()
    }

    /// Route hash policies for a destination whose DestinationRule asks for consistent hashing.
    pub fn hash_policy(&self, fqdn: &str) -> Vec<HashPolicy> {
        let Some((_, dr)) = self.destination_rule(fqdn) else {
            return Vec::new();
        };
        let Some(ch) = dr
            .traffic_policy
            .as_ref()
            .and_then(|tp| tp.load_balancer.as_ref())
            .and_then(|lb| lb.consistent_hash.as_ref())
        else {
            return Vec::new();
        };
        let spec = if let Some(h) = &ch.http_header_name {
            hash_policy::PolicySpecifier::Header(hash_policy::Header {
                header_name: h.clone(),
                ..Default::default()
            })
        } else if let Some(c) = &ch.http_cookie {
            hash_policy::PolicySpecifier::Cookie(hash_policy::Cookie {
                name: c.name.clone(),
                path: c.path.clone().unwrap_or_default(),
                ttl: c.ttl.map(|t| duration(t.as_std())),
                ..Default::default()
            })
        } else if let Some(q) = &ch.http_query_parameter_name {
            hash_policy::PolicySpecifier::QueryParameter(hash_policy::QueryParameter {
                name: q.clone(),
            })
        } else {
            hash_policy::PolicySpecifier::ConnectionProperties(hash_policy::ConnectionProperties {
                source_ip: true,
            })
        };
        vec![HashPolicy {
            policy_specifier: Some(spec),
            terminal: false,
        }]
    }
}

/// Everything one client should see.
pub fn translate(mesh: &Mesh, client: &ClientInfo) -> ClientSnapshot {
    let ctx = Ctx::new(mesh, client);
    let mut snap = ClientSnapshot::default();
    let (clusters, assignments) = cluster::clusters(&ctx);
    for c in clusters {
        snap.insert(TypeUrl::Cluster, XdsResource::new(c.name.clone(), c));
    }
    for a in assignments {
        snap.insert(
            TypeUrl::ClusterLoadAssignment,
            XdsResource::new(a.cluster_name.clone(), a),
        );
    }
    let (listeners, routes, extra_clusters) = match client.kind {
        ClientKind::Sidecar | ClientKind::Fronting => listener::sidecar(&ctx),
        ClientKind::Gateway => gateway::gateway(&ctx),
        ClientKind::ProxylessGrpc => listener::proxyless(&ctx),
    };
    for c in extra_clusters {
        snap.insert(TypeUrl::Cluster, XdsResource::new(c.name.clone(), c));
    }
    for l in listeners {
        snap.insert(TypeUrl::Listener, XdsResource::new(l.name.clone(), l));
    }
    for r in routes {
        snap.insert(
            TypeUrl::RouteConfiguration,
            XdsResource::new(r.name.clone(), r),
        );
    }
    snap
}

/// Istio's cluster naming: `outbound|9080|v1|reviews.bookinfo.svc.cluster.local`.
pub fn cluster_name(port: u32, subset: Option<&str>, host: &str) -> String {
    jalur_wire::ClusterName::outbound(port, subset, host).to_string()
}

pub fn duration(d: std::time::Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// "Over the same ADS stream", the only config source jalur hands out.
pub fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(
            ConfigSourceSpecifier::Ads(AggregatedConfigSource::default()),
        ),
        ..ConfigSource::default()
    }
}

#[cfg(test)]
mod tests;
