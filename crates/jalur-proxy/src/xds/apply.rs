//! One xDS response applied to a [`Snapshot`]: pure, no I/O, all or nothing. Every resource of
//! the response is converted first; one failure rejects the whole response (a NACK) and leaves
//! the snapshot as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::config::convert::{self, ConvertError};
use crate::config::{
    Cluster, Discovery, EndpointSet, Listener, ListenerKind, RouteSource, RouteTable, Snapshot,
};

/// The xDS resource types the proxy consumes over ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum ResourceType {
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
}

impl ResourceType {
    pub(crate) const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::ClusterLoadAssignment,
        ResourceType::Listener,
        ResourceType::RouteConfiguration,
    ];

    pub(crate) fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
        }
    }

    /// `cds`, `eds`, `lds`, `rds`: status keys and log fields, as the control plane names them.
    pub(crate) fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::ClusterLoadAssignment => "eds",
            ResourceType::Listener => "lds",
            ResourceType::RouteConfiguration => "rds",
        }
    }

    /// The message name, as [`ConvertError::kind`] spells it.
    fn label(self) -> &'static str {
        match self {
            ResourceType::Cluster => "Cluster",
            ResourceType::ClusterLoadAssignment => "ClusterLoadAssignment",
            ResourceType::Listener => "Listener",
            ResourceType::RouteConfiguration => "RouteConfiguration",
        }
    }

    pub(crate) fn parse(type_url: &str) -> Option<ResourceType> {
        ResourceType::ALL
            .into_iter()
            .find(|t| t.type_url() == type_url)
    }

    /// LDS and CDS are subscribed by wildcard, and a SotW response carries the whole set.
    pub(crate) fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Whether `snapshot` holds a resource of this type named `name`.
    fn holds(self, snapshot: &Snapshot, name: &str) -> bool {
        match self {
            ResourceType::Cluster => snapshot.clusters.contains_key(name),
            ResourceType::ClusterLoadAssignment => snapshot.endpoints.contains_key(name),
            ResourceType::Listener => snapshot.listeners.contains_key(name),
            ResourceType::RouteConfiguration => snapshot.routes.contains_key(name),
        }
    }

    pub(crate) fn count(self, snapshot: &Snapshot) -> usize {
        match self {
            ResourceType::Cluster => snapshot.clusters.len(),
            ResourceType::ClusterLoadAssignment => snapshot.endpoints.len(),
            ResourceType::Listener => snapshot.listeners.len(),
            ResourceType::RouteConfiguration => snapshot.routes.len(),
        }
    }
}

/// A cluster and its inline endpoints, as `convert::cluster` returns them.
type ClusterResult = Result<(Cluster, Option<EndpointSet>), ConvertError>;

/// The wire -> domain conversion, as plain function pointers so tests can put a fake in its
/// place (the xDS client must not depend on what the real conversion accepts).
#[derive(Clone, Copy)]
pub(crate) struct Convert {
    pub(crate) listener: fn(&XdsListener) -> Result<Listener, ConvertError>,
    pub(crate) route_table: fn(&RouteConfiguration) -> Result<RouteTable, ConvertError>,
    pub(crate) cluster: fn(&XdsCluster) -> ClusterResult,
    pub(crate) endpoints: fn(&ClusterLoadAssignment) -> Result<EndpointSet, ConvertError>,
}

impl Convert {
    /// The real conversion of `config/convert.rs`.
    pub(crate) const ENVOY: Convert = Convert {
        listener: convert::listener,
        route_table: convert::route_table,
        cluster: convert::cluster,
        endpoints: convert::endpoints,
    };
}

/// One resource as it came off the wire.
#[derive(Debug, Clone)]
pub(crate) struct WireResource {
    /// Delta: the name the server gave it (must match the one inside); SotW: none.
    pub(crate) name: Option<String>,
    /// Delta: the resource's version; SotW: empty.
    pub(crate) version: String,
    pub(crate) body: Any,
}

/// One response, protocol-neutral.
#[derive(Debug, Clone)]
pub(crate) struct Update {
    pub(crate) rtype: ResourceType,
    /// The resources are the whole set of the type (SotW LDS/CDS); otherwise upserts by name.
    pub(crate) replace: bool,
    pub(crate) resources: Vec<WireResource>,
    /// Delta: names the server removed (or says do not exist).
    pub(crate) removed: Vec<String>,
}

enum Converted {
    // Boxed, as clusters: a listener (with its RBAC filters) is much larger than the others.
    Listener(Box<Listener>),
    Routes(RouteTable),
    // Boxed: a cluster (with its TLS settings) is much larger than the other resources.
    Cluster(Box<Cluster>, Option<EndpointSet>),
    Endpoints(EndpointSet),
}

impl Converted {
    fn name(&self) -> &str {
        match self {
            Converted::Listener(l) => &l.name,
            Converted::Routes(r) => &r.name,
            Converted::Cluster(c, _) => &c.name,
            Converted::Endpoints(e) => &e.cluster,
        }
    }
}

/// The snapshot after `update`, or every reason it cannot be honoured.
pub(crate) fn apply(
    current: &Snapshot,
    update: &Update,
    convert: Convert,
) -> Result<Snapshot, Vec<ConvertError>> {
    let mut errors = Vec::new();
    let mut converted = Vec::new();
    let mut seen = BTreeSet::new();
    for (index, wire) in update.resources.iter().enumerate() {
        match convert_one(update.rtype, index, wire, convert) {
            Ok(c) if !seen.insert(c.name().to_string()) => errors.push(ConvertError {
                kind: update.rtype.label(),
                name: c.name().to_string(),
                field: "name".to_string(),
                message: "appears more than once in one response".to_string(),
            }),
            Ok(c) => converted.push(c),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut next = current.clone();
    merge(&mut next, current, update, converted);
    collect_garbage(&mut next);
    Ok(next)
}

/// The NACK's error_detail message: every error, each naming resource and field.
pub(crate) fn describe(errors: &[ConvertError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn convert_one(
    rtype: ResourceType,
    index: usize,
    wire: &WireResource,
    convert: Convert,
) -> Result<Converted, ConvertError> {
    let fail = |field: &str, message: String| ConvertError {
        kind: rtype.label(),
        name: wire
            .name
            .clone()
            .unwrap_or_else(|| format!("resources[{index}]")),
        field: field.to_string(),
        message,
    };
    if wire.body.type_url != rtype.type_url() {
        let got = &wire.body.type_url;
        return Err(fail(
            "type_url",
            format!("expected {}, got {got:?}", rtype.type_url()),
        ));
    }
    let bytes = wire.body.value.as_slice();
    let undecodable = |e: prost::DecodeError| fail("resource", format!("cannot decode: {e}"));
    let converted = match rtype {
        ResourceType::Listener => Converted::Listener(Box::new((convert.listener)(
            &XdsListener::decode(bytes).map_err(undecodable)?,
        )?)),
        ResourceType::RouteConfiguration => Converted::Routes((convert.route_table)(
            &RouteConfiguration::decode(bytes).map_err(undecodable)?,
        )?),
        ResourceType::Cluster => {
            let (c, inline) = (convert.cluster)(&XdsCluster::decode(bytes).map_err(undecodable)?)?;
            Converted::Cluster(Box::new(c), inline)
        }
        ResourceType::ClusterLoadAssignment => Converted::Endpoints((convert.endpoints)(
            &ClusterLoadAssignment::decode(bytes).map_err(undecodable)?,
        )?),
    };
    match &wire.name {
        Some(outer) if outer != converted.name() => Err(fail(
            "name",
            format!("the resource inside is named {:?}", converted.name()),
        )),
        _ => Ok(converted),
    }
}

fn merge(next: &mut Snapshot, current: &Snapshot, update: &Update, converted: Vec<Converted>) {
    let (replace, removed) = (update.replace, update.removed.as_slice());
    match update.rtype {
        ResourceType::Listener => {
            let items = converted.into_iter().filter_map(|c| match c {
                Converted::Listener(l) => Some((l.name.clone(), *l)),
                _ => None,
            });
            upsert(&mut next.listeners, replace, removed, items);
        }
        ResourceType::RouteConfiguration => {
            let items = converted.into_iter().filter_map(|c| match c {
                Converted::Routes(r) => Some((r.name.clone(), r)),
                _ => None,
            });
            upsert(&mut next.routes, replace, removed, items);
        }
        ResourceType::ClusterLoadAssignment => {
            let items = converted.into_iter().filter_map(|c| match c {
                Converted::Endpoints(e) => Some((e.cluster.clone(), e)),
                _ => None,
            });
            upsert(&mut next.endpoints, replace, removed, items);
        }
        ResourceType::Cluster => {
            let clusters: Vec<(Cluster, Option<EndpointSet>)> = converted
                .into_iter()
                .filter_map(|c| match c {
                    Converted::Cluster(c, inline) => Some((*c, inline)),
                    _ => None,
                })
                .collect();
            let items = clusters.iter().map(|(c, _)| (c.name.clone(), c.clone()));
            upsert(&mut next.clusters, replace, removed, items);
            for (cluster, inline) in clusters {
                place_endpoints(next, current, &cluster, inline);
            }
        }
    }
}

fn upsert<T>(
    map: &mut BTreeMap<String, Arc<T>>,
    replace: bool,
    removed: &[String],
    items: impl Iterator<Item = (String, T)>,
) {
    if replace {
        map.clear();
    }
    for name in removed {
        map.remove(name);
    }
    map.extend(items.map(|(name, item)| (name, Arc::new(item))));
}

/// Inline endpoints replace the cluster's; an EDS cluster whose service name changed keeps
/// serving the endpoints it had until its new ClusterLoadAssignment arrives (what Envoy's
/// cluster warming achieves by keeping the old cluster).
fn place_endpoints(
    next: &mut Snapshot,
    current: &Snapshot,
    cluster: &Cluster,
    inline: Option<EndpointSet>,
) {
    match (&cluster.discovery, inline) {
        (Discovery::Eds { service_name }, _) => {
            if next.endpoints.contains_key(service_name) {
                return;
            }
            let before = current.clusters.get(&cluster.name);
            let held = before.and_then(|c| current.endpoints.get(endpoint_key(c)));
            if let Some(held) = held {
                next.endpoints.insert(service_name.clone(), held.clone());
            }
        }
        (_, Some(set)) => {
            next.endpoints.insert(cluster.name.clone(), Arc::new(set));
        }
        (_, None) => {
            next.endpoints.remove(&cluster.name);
        }
    }
}

/// The key of a cluster's endpoints in [`Snapshot::endpoints`].
fn endpoint_key(cluster: &Cluster) -> &str {
    match &cluster.discovery {
        Discovery::Eds { service_name } => service_name,
        Discovery::Static | Discovery::Dns { .. } => &cluster.name,
    }
}

/// Route tables no listener references and endpoint sets no cluster owns are dropped: the
/// client stops subscribing to them, and what it no longer subscribes to it forgets.
fn collect_garbage(snapshot: &mut Snapshot) {
    let routes = rds_names(snapshot);
    snapshot.routes.retain(|name, _| routes.contains(name));
    let owned: BTreeSet<String> = snapshot
        .clusters
        .values()
        .map(|c| endpoint_key(c).to_string())
        .collect();
    snapshot.endpoints.retain(|name, _| owned.contains(name));
}

/// Route configurations the HTTP listeners fetch over RDS.
pub(crate) fn rds_names(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .listeners
        .values()
        .filter_map(|l| match &l.kind {
            ListenerKind::Http(http) => match &http.routes {
                RouteSource::Rds(name) => Some(name.clone()),
                RouteSource::Inline(_) => None,
            },
            ListenerKind::Tcp(_) | ListenerKind::Sni(_) => None,
        })
        .collect()
}

/// EDS service names of the EDS clusters.
pub(crate) fn eds_names(snapshot: &Snapshot) -> BTreeSet<String> {
    snapshot
        .clusters
        .values()
        .filter_map(|c| match &c.discovery {
            Discovery::Eds { service_name } => Some(service_name.clone()),
            Discovery::Static | Discovery::Dns { .. } => None,
        })
        .collect()
}

/// Names of `rtype` the snapshot's listeners and clusters call for (none for LDS/CDS, which are
/// wildcard).
pub(crate) fn wanted(rtype: ResourceType, snapshot: &Snapshot) -> BTreeSet<String> {
    match rtype {
        ResourceType::RouteConfiguration => rds_names(snapshot),
        ResourceType::ClusterLoadAssignment => eds_names(snapshot),
        ResourceType::Cluster | ResourceType::Listener => BTreeSet::new(),
    }
}

/// What the client holds beyond the snapshot itself; survives reconnects, so a new stream can
/// tell the server what it already has.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Delta: version of every resource held, by type and name.
    pub(crate) versions: BTreeMap<ResourceType, BTreeMap<String, String>>,
    /// The version of the last accepted response of each type.
    pub(crate) type_versions: BTreeMap<ResourceType, String>,
    /// Types with at least one accepted response.
    pub(crate) received: BTreeSet<ResourceType>,
    /// Delta: subscribed names the server said do not exist.
    pub(crate) absent: BTreeMap<ResourceType, BTreeSet<String>>,
}

impl Held {
    /// Books an accepted `update` (already applied, giving `snapshot`). `subscribed` is what the
    /// stream subscribes to of the update's type.
    pub(crate) fn accepted(
        &mut self,
        update: &Update,
        version: &str,
        subscribed: &BTreeSet<String>,
        snapshot: &Snapshot,
    ) {
        let rtype = update.rtype;
        self.received.insert(rtype);
        self.type_versions.insert(rtype, version.to_string());
        let versions = self.versions.entry(rtype).or_default();
        let absent = self.absent.entry(rtype).or_default();
        for name in &update.removed {
            versions.remove(name);
            if subscribed.contains(name) {
                absent.insert(name.clone());
            }
        }
        for wire in &update.resources {
            if let Some(name) = &wire.name {
                versions.insert(name.clone(), wire.version.clone());
                absent.remove(name);
            }
        }
        // Applying one type can drop resources of another (routes of a removed listener).
        for (t, versions) in &mut self.versions {
            versions.retain(|name, _| t.holds(snapshot, name));
        }
        for (t, absent) in &mut self.absent {
            let wanted = wanted(*t, snapshot);
            absent.retain(|name| wanted.contains(name));
        }
    }

    /// A complete config: LDS and CDS received, and every route configuration and EDS service
    /// they call for either held or known not to exist.
    pub(crate) fn complete(&self, snapshot: &Snapshot) -> bool {
        let resolved = |rtype: ResourceType| {
            let absent = self.absent.get(&rtype);
            wanted(rtype, snapshot)
                .iter()
                .all(|name| rtype.holds(snapshot, name) || absent.is_some_and(|a| a.contains(name)))
        };
        self.received.contains(&ResourceType::Listener)
            && self.received.contains(&ResourceType::Cluster)
            && resolved(ResourceType::RouteConfiguration)
            && resolved(ResourceType::ClusterLoadAssignment)
    }

    /// Versions held of `rtype` among `names` (all of them when `names` is `None`), for a delta
    /// stream's `initial_resource_versions`.
    pub(crate) fn versions_of(
        &self,
        rtype: ResourceType,
        names: Option<&BTreeSet<String>>,
    ) -> std::collections::HashMap<String, String> {
        self.versions
            .get(&rtype)
            .into_iter()
            .flatten()
            .filter(|(name, _)| names.is_none_or(|n| n.contains(*name)))
            .map(|(name, version)| (name.clone(), version.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests;
