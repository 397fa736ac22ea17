//! jalur's config model: Istio's `networking.istio.io` resources as users write them, parsed from
//! directories of multi-document YAML with every error naming file, line, resource and field, plus
//! the offline analyzers behind `jalur analyze`. No network I/O.

pub mod analyze;
pub mod diag;
pub mod duration;
pub mod host;
pub mod jalur;
pub mod load;
pub mod networking;
pub mod scope;
pub mod security;
pub mod span;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use diag::{Diagnostic, Severity};
pub use load::{load_paths, parse_str, Loaded};

/// The kinds jalur understands. Istio's groups accept v1, v1beta1 and v1alpha3 alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Gateway,
    Sidecar,
    ConsulRegistry,
    Migration,
    PeerAuthentication,
    AuthorizationPolicy,
    RequestAuthentication,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::Gateway,
        Kind::Sidecar,
        Kind::ConsulRegistry,
        Kind::Migration,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
    ];

    pub fn group(self) -> &'static str {
        match self {
            Kind::ConsulRegistry | Kind::Migration => "jalur.dev",
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                "security.istio.io"
            }
            _ => "networking.istio.io",
        }
    }

    /// API versions accepted for this kind; the first is the one to write.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::ConsulRegistry | Kind::Migration => &["v1alpha1"],
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                &["v1", "v1beta1"]
            }
            _ => &["v1", "v1beta1", "v1alpha3"],
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Gateway => "Gateway",
            Kind::Sidecar => "Sidecar",
            Kind::ConsulRegistry => "ConsulRegistry",
            Kind::Migration => "Migration",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
        }
    }

    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Kind namespace/name`, how diagnostics and logs name a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ResourceRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The part of Kubernetes ObjectMeta that config files carry. Server-populated fields are accepted
/// (so `kubectl get -o yaml` output loads) and ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Meta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    pub uid: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub resource_version: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub generation: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub creation_timestamp: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub owner_references: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub finalizers: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub generate_name: Option<serde_json::Value>,
}

pub fn default_namespace() -> String {
    "default".to_string()
}

// Resources number in the hundreds and are built once per config change: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Spec {
    VirtualService(networking::VirtualService),
    DestinationRule(networking::DestinationRule),
    ServiceEntry(networking::ServiceEntry),
    WorkloadEntry(networking::WorkloadEntry),
    Gateway(networking::Gateway),
    Sidecar(networking::Sidecar),
    ConsulRegistry(jalur::ConsulRegistry),
    Migration(jalur::Migration),
    PeerAuthentication(security::PeerAuthentication),
    AuthorizationPolicy(security::AuthorizationPolicy),
    RequestAuthentication(security::RequestAuthentication),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::ConsulRegistry(_) => Kind::ConsulRegistry,
            Spec::Migration(_) => Kind::Migration,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::RequestAuthentication(_) => Kind::RequestAuthentication,
        }
    }
}

/// Where a resource came from: its file, its first line, and the line of each of its fields.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub spans: Arc<span::SpanIndex>,
}

impl Origin {
    /// Line of a field path such as `spec.http[0].route[1].weight` (or its nearest ancestor).
    pub fn line_of(&self, path: &str) -> usize {
        self.spans.line_of(path).unwrap_or(self.line)
    }
}

impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        self.file == other.file && self.line == other.line
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub api_version: String,
    pub meta: Meta,
    pub spec: Spec,
    pub origin: Origin,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn reference(&self) -> ResourceRef {
        ResourceRef {
            kind: self.kind(),
            namespace: self.meta.namespace.clone(),
            name: self.meta.name.clone(),
        }
    }

    /// A diagnostic located at `field` of this resource.
    pub fn diag(&self, code: diag::Code, field: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(code, message)
            .on(self.reference())
            .at(self.origin.file.clone(), Some(self.origin.line_of(field)))
            .field(field)
    }
}

/// A whole, validated set of resources: what the control plane translates and serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub resources: Vec<Resource>,
}

macro_rules! typed_iter {
    ($fn:ident, $variant:ident, $ty:ty) => {
        pub fn $fn(&self) -> impl Iterator<Item = (&Resource, &$ty)> {
            self.resources.iter().filter_map(|r| match &r.spec {
                Spec::$variant(s) => Some((r, s)),
                _ => None,
            })
        }
    };
}

impl Config {
    typed_iter!(virtual_services, VirtualService, networking::VirtualService);
    typed_iter!(
        destination_rules,
        DestinationRule,
        networking::DestinationRule
    );
    typed_iter!(service_entries, ServiceEntry, networking::ServiceEntry);
    typed_iter!(workload_entries, WorkloadEntry, networking::WorkloadEntry);
    typed_iter!(gateways, Gateway, networking::Gateway);
    typed_iter!(sidecars, Sidecar, networking::Sidecar);
    typed_iter!(consul_registries, ConsulRegistry, jalur::ConsulRegistry);
    typed_iter!(migrations, Migration, jalur::Migration);
    typed_iter!(
        peer_authentications,
        PeerAuthentication,
        security::PeerAuthentication
    );
    typed_iter!(
        authorization_policies,
        AuthorizationPolicy,
        security::AuthorizationPolicy
    );
    typed_iter!(
        request_authentications,
        RequestAuthentication,
        security::RequestAuthentication
    );

    /// Sorted by kind, namespace, name so that translation is deterministic whatever the file order.
    pub fn new(mut resources: Vec<Resource>) -> Config {
        resources.sort_by_key(Resource::reference);
        Config { resources }
    }
}
