//! Istio's `AuthorizationPolicy` (security.istio.io/v1, v1beta1) as users write it. What a policy
//! means is decided by translation (Envoy RBAC filters); this file only holds the shape and the
//! few facts every reader of a policy needs (its action, whether it selects a workload).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::PeerSelector;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads it applies to; none (or empty `matchLabels`): every workload of its namespace,
    /// or of the mesh when it lives in the root namespace.
    #[serde(default)]
    pub selector: Option<PeerSelector>,
    #[serde(default)]
    pub action: AuthzAction,
    /// `CUSTOM`'s extension provider; jalur has none and says so in `jalur analyze`.
    #[serde(default)]
    pub provider: Option<ExtensionProvider>,
    /// `None` (field absent) and `Some([])` both match nothing: an ALLOW policy without rules
    /// denies every request, a DENY policy without rules denies none. One empty rule (`- {}`)
    /// matches every request.
    #[serde(default)]
    pub rules: Option<Vec<Rule>>,
}

impl AuthorizationPolicy {
    /// The labels it selects by; `None` for a namespace- or mesh-wide policy.
    pub fn match_labels(&self) -> Option<&BTreeMap<String, String>> {
        self.selector
            .as_ref()
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
    }

    pub fn rules(&self) -> &[Rule] {
        self.rules.as_deref().unwrap_or_default()
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

impl AuthzAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthzAction::Allow => "ALLOW",
            AuthzAction::Deny => "DENY",
            AuthzAction::Audit => "AUDIT",
            AuthzAction::Custom => "CUSTOM",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    #[serde(default)]
    pub name: String,
}

/// A request matches a rule when it matches one `from` (if any), one `to` (if any) and every
/// `when` (if any).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

/// Every non-empty field must match (AND); within a field any value may (OR); `not*` fields
/// must match none of their values. Values take Istio's forms: exact, `prefix*`, `*suffix`, `*`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities as `TRUST_DOMAIN/ns/NS/sa/SA` (the SPIFFE id without `spiffe://`).
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT identities as `ISS/SUB`.
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    /// The peer's address (the connection's), IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// The original client's address (X-Forwarded-For as the proxy trusts it).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Port numbers as strings, as Istio writes them.
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `key` is one of Istio's condition keys (`request.headers[NAME]`, `source.ip`,
/// `remote.ip`, `source.namespace`, `source.principal`, `request.auth.principal`,
/// `request.auth.audiences`, `request.auth.presenter`, `request.auth.claims[NAME]`,
/// `destination.ip`, `destination.port`, `connection.sni`, `experimental.envoy.filters.*`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}
