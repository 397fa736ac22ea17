//! The mesh as translation sees it: every service (from ServiceEntries and from workloads that
//! registries report) with its ports and endpoints, built from one config snapshot plus one set of
//! workloads. Immutable; rebuilt whenever either side changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jalur_model::host;
use jalur_model::networking::{self, Resolution, ServiceEntry};
use jalur_model::{Config, Resource};

use crate::workload::{is_mtls_labelled, Port, Protocol, Workload};

/// What translation needs to write identities: the trust domain of SPIFFE ids and the root
/// namespace whose PeerAuthentication is mesh-wide. The control plane's flags set them
/// (`--trust-domain`, `--root-namespace`); the defaults are Istio's and jalur's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Security {
    pub trust_domain: String,
    pub root_namespace: String,
}

impl Default for Security {
    fn default() -> Security {
        Security {
            trust_domain: "cluster.local".to_string(),
            root_namespace: jalur_model::security::DEFAULT_ROOT_NAMESPACE.to_string(),
        }
    }
}

/// The CA's identity settings are the mesh's: SANs and policies must use the same trust domain
/// and root namespace as the certificates.
impl From<&crate::ca::CaOptions> for Security {
    fn from(ca: &crate::ca::CaOptions) -> Security {
        Security {
            trust_domain: ca.trust_domain.clone(),
            root_namespace: ca.root_namespace.clone(),
        }
    }
}

/// Who an mTLS-capable endpoint is: the namespace and account of its SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// How a service's endpoints reach clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Discovery {
    /// Known addresses, pushed over EDS.
    Eds,
    /// Hostnames the client resolves itself (ServiceEntry resolution DNS).
    Dns,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Service {
    pub host: String,
    pub namespace: String,
    pub ports: Vec<Port>,
    pub discovery: Discovery,
    pub external: bool,
    /// Service port -> sidecar-local port for opaque TCP (annotation `jalur.dev/local-ports`,
    /// `5432=15432,6379=16379`): without iptables, an app reaches a TCP service through a local
    /// listener of its sidecar.
    pub local_ports: std::collections::BTreeMap<u32, u32>,
    /// The registry a service was imported from (`consul:NAMESPACE/NAME`): such clusters get
    /// outlier detection by default, since a dead instance can stay registered as passing.
    pub imported_from: Option<String>,
}

impl Service {
    pub fn port(&self, number: u32) -> Option<&Port> {
        self.ports.iter().find(|p| p.number == number)
    }

    /// Ports carried by the HTTP connection manager, in port order.
    pub fn http_ports(&self) -> Vec<&Port> {
        self.ports.iter().filter(|p| p.protocol.is_http()).collect()
    }
}

/// One address serving a service: `ports` maps each service port to the port to dial.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Endpoint {
    pub address: String,
    pub ports: BTreeMap<u32, u32>,
    pub labels: BTreeMap<String, String>,
    pub weight: u32,
    pub locality: String,
    pub healthy: bool,
    /// Set when the endpoint holds mesh credentials (label `security.istio.io/tlsMode: istio`
    /// and an identity): callers then reach it over mTLS and check this identity.
    pub identity: Option<Identity>,
    /// Service ports on which the endpoint's PeerAuthentication resolves to DISABLE: callers
    /// reach those in plaintext even though the endpoint holds credentials (Istio's auto mTLS
    /// follows the destination's policy). Judged by service port number, which is the
    /// workload's port in `portLevelMtls` whenever the workload declares its ports as served.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub plaintext_ports: BTreeSet<u32>,
}

impl Endpoint {
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Mesh {
    pub config: Arc<Config>,
    pub services: BTreeMap<String, Service>,
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    pub security: Security,
    /// The JWKS documents the control plane fetched for http(s) `jwksUri`s (`jwks.rs`).
    pub jwks: Arc<crate::jwks::JwksSet>,
}

impl Mesh {
    pub fn build(config: Arc<Config>, workloads: &[Workload]) -> Mesh {
        Mesh::build_with(config, workloads, Security::default())
    }

    pub fn build_with(config: Arc<Config>, workloads: &[Workload], security: Security) -> Mesh {
        let mut mesh = Mesh {
            config: config.clone(),
            security,
            ..Mesh::default()
        };
        for (res, se) in config.service_entries() {
            mesh.add_service_entry(&config, res, se);
        }
        // Registry imports first, then the proxies: a host both import and mesh serve is an
        // imported service (outlier detection and active checks by default) whichever
        // registry's set happens to come first.
        let (proxies, imported): (Vec<&Workload>, Vec<&Workload>) = workloads
            .iter()
            .partition(|w| w.source.starts_with("proxy:"));
        for w in imported.into_iter().chain(proxies) {
            mesh.add_workload(w);
        }
        mesh.mark_plaintext_ports();
        for eps in mesh.endpoints.values_mut() {
            eps.sort_by(|a, b| a.address.cmp(&b.address).then(a.ports.cmp(&b.ports)));
            eps.dedup();
        }
        mesh
    }

    /// Records, per capable endpoint, the ports its PeerAuthentication DISABLEs.
    fn mark_plaintext_ports(&mut self) {
        let policies =
            jalur_model::security::PeerPolicies::new(&self.config, &self.security.root_namespace);
        for e in self.endpoints.values_mut().flatten() {
            let Some(id) = &e.identity else { continue };
            e.plaintext_ports = e
                .ports
                .keys()
                .copied()
                .filter(|port| {
                    policies.resolve(&id.namespace, &e.labels, Some(*port)).mode
                        == jalur_model::security::MtlsMode::Disable
                })
                .collect();
        }
    }

    pub fn service(&self, host: &str) -> Option<&Service> {
        self.services.get(host)
    }

    pub fn endpoints(&self, host: &str) -> &[Endpoint] {
        self.endpoints.get(host).map(Vec::as_slice).unwrap_or(&[])
    }

    fn add_service_entry(&mut self, config: &Config, res: &Resource, se: &ServiceEntry) {
        let ns = &res.meta.namespace;
        let ports: Vec<Port> = se
            .ports
            .iter()
            .map(|p| Port {
                number: p.number,
                name: p.name.clone().unwrap_or_else(|| p.number.to_string()),
                protocol: Protocol::parse(p.protocol.as_deref(), p.name.as_deref()),
            })
            .collect();
        let discovery = match se.resolution {
            Some(Resolution::Dns) | Some(Resolution::DnsRoundRobin) => Discovery::Dns,
            _ => Discovery::Eds,
        };
        let external = se.location != Some(networking::Location::MeshInternal);
        let mut endpoints: Vec<Endpoint> = se
            .endpoints
            .iter()
            .filter_map(|we| endpoint_of(we, se, ns, &ports))
            .collect();
        if let Some(selector) = &se.workload_selector {
            for (wres, we) in config.workload_entries() {
                let selected = wres.meta.namespace == *ns
                    && selector
                        .labels
                        .iter()
                        .all(|(k, v)| we.labels.get(k) == Some(v));
                if selected {
                    endpoints.extend(endpoint_of(we, se, ns, &ports));
                }
            }
        }
        for h in &se.hosts {
            let fqdn = host::qualify(h, ns);
            let service = Service {
                host: fqdn.clone(),
                namespace: ns.clone(),
                ports: ports.clone(),
                discovery,
                external,
                local_ports: local_ports(res),
                imported_from: None,
            };
            self.services.entry(fqdn.clone()).or_insert(service);
            self.endpoints
                .entry(fqdn)
                .or_default()
                .extend(endpoints.iter().cloned());
        }
    }

    /// A workload reported by a registry joins its service, creating it if no ServiceEntry did.
    fn add_workload(&mut self, w: &Workload) {
        let service = self
            .services
            .entry(w.host.clone())
            .or_insert_with(|| Service {
                host: w.host.clone(),
                namespace: w.namespace.clone(),
                ports: Vec::new(),
                discovery: Discovery::Eds,
                external: false,
                local_ports: Default::default(),
                imported_from: Some(w.source.clone()).filter(|s| !s.starts_with("proxy:")),
            });
        for p in &w.ports {
            if service.port(p.number).is_none() {
                service.ports.push(p.clone());
                service.ports.sort();
            }
        }
        // Traffic to a meshed workload enters through its sidecar's inbound listener when it has one.
        let ports = service
            .ports
            .iter()
            .filter(|sp| {
                w.ports
                    .iter()
                    .any(|p| p.number == sp.number || p.name == sp.name)
            })
            .map(|sp| {
                let app = w
                    .ports
                    .iter()
                    .find(|p| p.number == sp.number || p.name == sp.name);
                (
                    sp.number,
                    w.target_port.or(app.map(|p| p.number)).unwrap_or(sp.number),
                )
            })
            .collect();
        self.endpoints
            .entry(w.host.clone())
            .or_default()
            .push(Endpoint {
                address: w.address.clone(),
                ports,
                labels: w.labels.clone(),
                weight: w.weight.max(1),
                locality: w.locality.clone(),
                healthy: w.healthy,
                plaintext_ports: BTreeSet::new(),
                identity: w.mtls_capable().then(|| Identity {
                    namespace: w.namespace.clone(),
                    service_account: w.service_account.clone().unwrap_or_default(),
                }),
            });
    }
}

/// Annotation `jalur.dev/local-ports: "5432=15432,6379=16379"`; malformed items are skipped
/// (`jalur analyze` reports them).
pub const LOCAL_PORTS_ANNOTATION: &str = "jalur.dev/local-ports";

fn local_ports(res: &Resource) -> std::collections::BTreeMap<u32, u32> {
    res.meta
        .annotations
        .get(LOCAL_PORTS_ANNOTATION)
        .map(|v| {
            v.split(',')
                .filter_map(|item| {
                    let (port, local) = item.trim().split_once('=')?;
                    Some((port.trim().parse().ok()?, local.trim().parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn endpoint_of(
    we: &networking::WorkloadEntry,
    se: &ServiceEntry,
    namespace: &str,
    ports: &[Port],
) -> Option<Endpoint> {
    let address = we.address.clone()?;
    let mapped = ports
        .iter()
        .map(|p| {
            let target = se
                .ports
                .iter()
                .find(|sp| sp.number == p.number)
                .and_then(|sp| sp.target_port);
            (
                p.number,
                we.ports
                    .get(&p.name)
                    .copied()
                    .or(target)
                    .unwrap_or(p.number),
            )
        })
        .collect();
    Some(Endpoint {
        address,
        ports: mapped,
        labels: we.labels.clone(),
        weight: we.weight.unwrap_or(1).max(1),
        locality: we.locality.clone().unwrap_or_default(),
        healthy: true,
        plaintext_ports: BTreeSet::new(),
        identity: is_mtls_labelled(&we.labels).then(|| Identity {
            namespace: namespace.to_string(),
            // As for a proxy without SERVICE_ACCOUNT: the account is the service's name.
            service_account: we.service_account.clone().unwrap_or_else(|| {
                let host = se.hosts.first().map(String::as_str).unwrap_or_default();
                host.split('.').next().unwrap_or_default().to_string()
            }),
        }),
    })
}

#[cfg(test)]
mod tests;
