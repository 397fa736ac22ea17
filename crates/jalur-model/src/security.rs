//! Istio `security.istio.io` resources as users write them (v1 and v1beta1 share one schema):
//! PeerAuthentication, and how the policies of a mesh resolve for one workload port.
//!
//! Resolution follows Istio: a policy selecting the workload (`selector.matchLabels`) wins over
//! the namespace's policy (no selector), which wins over the mesh-wide policy (no selector, in the
//! root namespace); a mode left `UNSET` inherits from the next level; PERMISSIVE when nothing
//! says otherwise. `portLevelMtls` (only on a policy with a selector) overrides the mode for the
//! workload's own port number; an `UNSET` port inherits the workload's mode.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Config, Resource};

pub mod authz;
pub mod request_authn;

pub use authz::AuthorizationPolicy;
pub use request_authn::RequestAuthentication;

/// Istio's default root namespace is `istio-system`; jalur's control plane lives in its own.
pub const DEFAULT_ROOT_NAMESPACE: &str = "jalur-system";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    #[serde(default)]
    pub selector: Option<PeerSelector>,
    #[serde(default)]
    pub mtls: Option<PeerMtls>,
    /// Workload port number -> its mode. YAML keys are numbers (`8080: {mode: DISABLE}`).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u32, PeerMtls>,
}

impl PeerAuthentication {
    /// The labels it selects by; `None` for a namespace- or mesh-wide policy (an empty
    /// `matchLabels` selects every workload, as no selector does).
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    pub fn mode(&self) -> MtlsMode {
        self.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerMtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the level above.
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        })
    }
}

/// The mode that applies to one workload port, and the policy (and field) that decided it:
/// `None` when no policy did (the PERMISSIVE default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved<'a> {
    pub mode: MtlsMode,
    pub decided_by: Option<(&'a Resource, &'a PeerAuthentication)>,
    /// The port-level entry that decided it, if one did.
    pub port: Option<u32>,
}

impl Resolved<'_> {
    /// `spec.mtls.mode` or `spec.portLevelMtls.PORT.mode`: where the deciding mode is written.
    pub fn field(&self) -> String {
        match self.port {
            Some(p) => format!("spec.portLevelMtls.{p}.mode"),
            None => "spec.mtls.mode".to_string(),
        }
    }
}

/// The PeerAuthentication policies of a config, by level, for resolving any workload.
#[derive(Debug, Clone)]
pub struct PeerPolicies<'a> {
    root_namespace: String,
    policies: Vec<(&'a Resource, &'a PeerAuthentication)>,
}

impl<'a> PeerPolicies<'a> {
    pub fn new(config: &'a Config, root_namespace: &str) -> PeerPolicies<'a> {
        PeerPolicies {
            root_namespace: root_namespace.to_string(),
            policies: config.peer_authentications().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Config order is namespace/name order; where Istio picks the oldest of two policies at one
    /// level, jalur picks the first by name (`jalur analyze` reports the conflict).
    fn first(
        &self,
        pred: impl Fn(&Resource, &PeerAuthentication) -> bool,
    ) -> Option<(&'a Resource, &'a PeerAuthentication)> {
        self.policies.iter().find(|(r, p)| pred(r, p)).copied()
    }

    /// The policy selecting this workload by its labels, if any.
    pub fn workload_policy(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(&'a Resource, &'a PeerAuthentication)> {
        self.first(|r, p| {
            r.meta.namespace == namespace
                && p.match_labels()
                    .is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
    }

    pub fn namespace_policy(
        &self,
        namespace: &str,
    ) -> Option<(&'a Resource, &'a PeerAuthentication)> {
        self.first(|r, p| r.meta.namespace == namespace && p.match_labels().is_none())
    }

    pub fn mesh_policy(&self) -> Option<(&'a Resource, &'a PeerAuthentication)> {
        self.namespace_policy(&self.root_namespace)
    }

    /// The mode for a workload in `namespace` with `labels`, on its port `port` (`None`: the
    /// workload as a whole, ignoring port-level settings).
    pub fn resolve(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        port: Option<u32>,
    ) -> Resolved<'a> {
        let workload = self.workload_policy(namespace, labels);
        let levels = [
            workload,
            self.namespace_policy(namespace),
            self.mesh_policy(),
        ];
        let whole = levels
            .into_iter()
            .flatten()
            .find(|(_, p)| p.mode() != MtlsMode::Unset)
            .map(|(r, p)| Resolved {
                mode: p.mode(),
                decided_by: Some((r, p)),
                port: None,
            })
            .unwrap_or(Resolved {
                mode: MtlsMode::Permissive,
                decided_by: None,
                port: None,
            });
        let port_level = port.zip(workload).and_then(|(n, (r, p))| {
            let m = p.port_level_mtls.get(&n)?.mode;
            (m != MtlsMode::Unset).then_some(Resolved {
                mode: m,
                decided_by: Some((r, p)),
                port: Some(n),
            })
        });
        port_level.unwrap_or(whole)
    }

    /// Every mode a workload's ports can resolve to (the whole workload's, and each port-level
    /// one), with what decided it: for checks that ask "is any port STRICT?".
    pub fn resolve_all(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        ports: &[u32],
    ) -> Vec<Resolved<'a>> {
        let mut out: Vec<Resolved<'a>> = Vec::new();
        let wanted: Vec<Option<u32>> = if ports.is_empty() {
            vec![None]
        } else {
            ports.iter().copied().map(Some).collect()
        };
        for port in wanted {
            let r = self.resolve(namespace, labels, port);
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
