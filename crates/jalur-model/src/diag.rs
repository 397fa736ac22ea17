//! Diagnostics: one shape for load errors and analysis findings, in the manner of `istioctl
//! analyze` — a code, a severity, the resource, the file and line, the field, and what to do.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::ResourceRef;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "Info",
            Severity::Warning => "Warning",
            Severity::Error => "Error",
        })
    }
}

/// A stable diagnostic code. The catalogue lives in [`codes`]; codes never change meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Code {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
}

pub mod codes {
    use super::{Code, Severity};

    const fn code(id: &'static str, name: &'static str, severity: Severity) -> Code {
        Code { id, name, severity }
    }

    pub const YAML_SYNTAX: Code = code("JAL0001", "YamlSyntax", Severity::Error);
    pub const UNKNOWN_KIND: Code = code("JAL0002", "UnknownKind", Severity::Error);
    pub const INVALID_FIELD: Code = code("JAL0003", "InvalidField", Severity::Error);
    pub const INVALID_METADATA: Code = code("JAL0004", "InvalidMetadata", Severity::Error);
    pub const UNREADABLE_FILE: Code = code("JAL0005", "UnreadableFile", Severity::Error);
    pub const DUPLICATE_RESOURCE: Code = code("JAL0100", "DuplicateResource", Severity::Error);
    pub const WEIGHTS_NOT_100: Code = code("JAL0101", "WeightsNotSumTo100", Severity::Error);
    pub const UNDEFINED_SUBSET: Code = code("JAL0102", "UndefinedSubset", Severity::Error);
    pub const UNKNOWN_HOST: Code = code("JAL0103", "UnknownDestinationHost", Severity::Error);
    pub const CONFLICTING_VS_HOSTS: Code =
        code("JAL0104", "ConflictingVirtualServiceHosts", Severity::Error);
    pub const DR_UNKNOWN_HOST: Code = code(
        "JAL0105",
        "DestinationRuleForUnknownHost",
        Severity::Warning,
    );
    pub const PORT_MISMATCH: Code = code("JAL0106", "PortMismatch", Severity::Error);
    pub const INVALID_REGEX: Code = code("JAL0107", "InvalidRegex", Severity::Error);
    pub const GATEWAY_NOT_FOUND: Code = code("JAL0108", "GatewayNotFound", Severity::Error);
    pub const DUPLICATE_SUBSET: Code = code("JAL0109", "DuplicateSubset", Severity::Error);
    pub const SUBSET_WITHOUT_LABELS: Code =
        code("JAL0110", "SubsetWithoutLabels", Severity::Warning);
    pub const PER_TRY_TIMEOUT_EXCEEDS_TIMEOUT: Code =
        code("JAL0111", "PerTryTimeoutExceedsTimeout", Severity::Warning);
    pub const PERCENTAGE_OUT_OF_RANGE: Code =
        code("JAL0112", "PercentageOutOfRange", Severity::Error);
    pub const RESOLUTION_MISMATCH: Code = code("JAL0113", "ResolutionMismatch", Severity::Error);
    pub const SERVICE_ENTRY_WITHOUT_PORTS: Code =
        code("JAL0114", "ServiceEntryWithoutPorts", Severity::Error);
    pub const MISSING_HOSTS: Code = code("JAL0115", "MissingHosts", Severity::Error);
    pub const GATEWAY_WITHOUT_SERVERS: Code =
        code("JAL0116", "GatewayWithoutServers", Severity::Error);
    pub const INVALID_MATCH_CONDITION: Code =
        code("JAL0117", "InvalidMatchCondition", Severity::Error);
    pub const INVALID_ROUTE_ACTION: Code = code("JAL0118", "InvalidRouteAction", Severity::Error);
    pub const UNREACHABLE_ROUTE: Code = code("JAL0119", "UnreachableRoute", Severity::Warning);
    pub const HOST_NOT_IN_GATEWAY: Code = code("JAL0120", "HostNotInGateway", Severity::Warning);
    pub const DUPLICATE_DESTINATION_RULE_HOST: Code =
        code("JAL0121", "DuplicateDestinationRuleHost", Severity::Warning);
    pub const INCOMPLETE_TLS_SETTINGS: Code =
        code("JAL0122", "IncompleteTlsSettings", Severity::Error);
    pub const INVALID_STATUS_CODE: Code = code("JAL0123", "InvalidStatusCode", Severity::Error);
    pub const INVALID_PORT_NUMBER: Code = code("JAL0124", "InvalidPortNumber", Severity::Error);

    pub const INVALID_MIGRATION: Code = code("JAL0125", "InvalidMigration", Severity::Error);

    // Security (PeerAuthentication, DestinationRule tls).
    pub const PORT_LEVEL_MTLS_WITHOUT_SELECTOR: Code =
        code("JAL0140", "PortLevelMtlsWithoutSelector", Severity::Error);
    pub const CONFLICTING_PEER_AUTHENTICATION: Code = code(
        "JAL0141",
        "ConflictingPeerAuthentication",
        Severity::Warning,
    );
    pub const TLS_MODE_NOT_SUPPORTED: Code =
        code("JAL0142", "TlsModeNotSupported", Severity::Warning);
    pub const STRICT_WITH_PLAINTEXT_CALLERS: Code = code(
        "JAL0143",
        "StrictPolicyWithPlaintextCallers",
        Severity::Error,
    );

    // Authorization (AuthorizationPolicy, RequestAuthentication).
    pub const INVALID_PRINCIPAL: Code = code("JAL0150", "InvalidPrincipal", Severity::Error);
    pub const UNKNOWN_CONDITION_KEY: Code = code("JAL0151", "UnknownConditionKey", Severity::Error);
    pub const INVALID_AUTHORIZATION_RULE: Code =
        code("JAL0152", "InvalidAuthorizationRule", Severity::Error);
    pub const INVALID_IP_BLOCK: Code = code("JAL0153", "InvalidIpBlock", Severity::Error);
    pub const METHOD_NOT_UPPER_CASE: Code =
        code("JAL0154", "MethodNotUpperCase", Severity::Warning);
    pub const INVALID_AUTHORIZATION_PATH: Code =
        code("JAL0155", "InvalidAuthorizationPath", Severity::Error);
    pub const AUTHORIZATION_NOT_SUPPORTED: Code = code(
        "JAL0156",
        "AuthorizationFeatureNotSupported",
        Severity::Error,
    );
    pub const DENY_SHADOWS_ALLOW: Code = code("JAL0157", "DenyRuleShadowsAllow", Severity::Warning);
    pub const POLICY_SELECTS_NO_WORKLOAD: Code =
        code("JAL0158", "PolicySelectsNoWorkload", Severity::Warning);
    pub const HTTP_RULE_ON_TCP_PORT: Code =
        code("JAL0159", "HttpOnlyRuleOnTcpPort", Severity::Warning);
    pub const ALLOW_LOCKS_OUT_LEGACY_CALLERS: Code = code(
        "JAL0160",
        "AllowPolicyLocksOutLegacyCallers",
        Severity::Error,
    );
    pub const REQUEST_PRINCIPAL_WITHOUT_AUTHENTICATION: Code = code(
        "JAL0161",
        "RequestPrincipalWithoutAuthentication",
        Severity::Warning,
    );
    pub const INVALID_JWT_RULE: Code = code("JAL0162", "InvalidJwtRule", Severity::Error);
    pub const INVALID_JWKS: Code = code("JAL0163", "InvalidJwks", Severity::Error);
    pub const INVALID_JWKS_URI: Code = code("JAL0164", "InvalidJwksUri", Severity::Error);
    pub const DUPLICATE_JWT_ISSUER: Code = code("JAL0165", "DuplicateJwtIssuer", Severity::Error);
    // JAL0166 (remote JWKS not fetched by jalur proxy) is retired: the control plane fetches
    // http(s) JWKS and inlines them for every proxy.

    // Gateway TLS passthrough (SNI routing).
    pub const AUTO_PASSTHROUGH_NOT_SUPPORTED: Code =
        code("JAL0170", "AutoPassthroughNotSupported", Severity::Warning);
    pub const PASSTHROUGH_WITHOUT_TLS_ROUTE: Code = code(
        "JAL0171",
        "PassthroughServerWithoutTlsRoute",
        Severity::Warning,
    );
    pub const SNI_HOST_NOT_IN_GATEWAY: Code =
        code("JAL0172", "SniHostNotInGateway", Severity::Error);

    // Sidecar scoping (what each proxy sees).
    pub const INVALID_SIDECAR_HOST: Code =
        code("JAL0173", "InvalidSidecarEgressHost", Severity::Error);
    pub const CONFLICTING_SIDECARS: Code = code("JAL0174", "ConflictingSidecars", Severity::Error);
    pub const SIDECAR_FIELD_IGNORED: Code =
        code("JAL0175", "SidecarFieldIgnored", Severity::Warning);

    // Hybrid findings (`jalur analyze --consul ADDR`): config checked against a live Consul.
    pub const CONSUL_NAME_SHADOWED: Code = code("JAL0130", "ConsulNameShadowed", Severity::Warning);
    pub const CONSUL_NAME_COLLIDES: Code = code(
        "JAL0131",
        "ConsulNameCollidesWithMeshHost",
        Severity::Warning,
    );
    pub const CONSUL_SERVICE_MISSING: Code =
        code("JAL0132", "ConsulServiceMissing", Severity::Error);
    pub const CONSUL_NO_PASSING: Code = code(
        "JAL0133",
        "ConsulServiceWithoutPassingInstances",
        Severity::Warning,
    );

    /// The hybrid codes, reported only with a Consul to compare against.
    pub const HYBRID: &[Code] = &[
        CONSUL_NAME_SHADOWED,
        CONSUL_NAME_COLLIDES,
        CONSUL_SERVICE_MISSING,
        CONSUL_NO_PASSING,
    ];

    /// Every code, in id order: what `jalur analyze` can report.
    pub const ALL: &[Code] = &[
        YAML_SYNTAX,
        UNKNOWN_KIND,
        INVALID_FIELD,
        INVALID_METADATA,
        UNREADABLE_FILE,
        DUPLICATE_RESOURCE,
        WEIGHTS_NOT_100,
        UNDEFINED_SUBSET,
        UNKNOWN_HOST,
        CONFLICTING_VS_HOSTS,
        DR_UNKNOWN_HOST,
        PORT_MISMATCH,
        INVALID_REGEX,
        GATEWAY_NOT_FOUND,
        DUPLICATE_SUBSET,
        SUBSET_WITHOUT_LABELS,
        PER_TRY_TIMEOUT_EXCEEDS_TIMEOUT,
        PERCENTAGE_OUT_OF_RANGE,
        RESOLUTION_MISMATCH,
        SERVICE_ENTRY_WITHOUT_PORTS,
        MISSING_HOSTS,
        GATEWAY_WITHOUT_SERVERS,
        INVALID_MATCH_CONDITION,
        INVALID_ROUTE_ACTION,
        UNREACHABLE_ROUTE,
        HOST_NOT_IN_GATEWAY,
        DUPLICATE_DESTINATION_RULE_HOST,
        INCOMPLETE_TLS_SETTINGS,
        INVALID_STATUS_CODE,
        INVALID_PORT_NUMBER,
        INVALID_MIGRATION,
        PORT_LEVEL_MTLS_WITHOUT_SELECTOR,
        CONFLICTING_PEER_AUTHENTICATION,
        TLS_MODE_NOT_SUPPORTED,
        STRICT_WITH_PLAINTEXT_CALLERS,
        INVALID_PRINCIPAL,
        UNKNOWN_CONDITION_KEY,
        INVALID_AUTHORIZATION_RULE,
        INVALID_IP_BLOCK,
        METHOD_NOT_UPPER_CASE,
        INVALID_AUTHORIZATION_PATH,
        AUTHORIZATION_NOT_SUPPORTED,
        DENY_SHADOWS_ALLOW,
        POLICY_SELECTS_NO_WORKLOAD,
        HTTP_RULE_ON_TCP_PORT,
        ALLOW_LOCKS_OUT_LEGACY_CALLERS,
        REQUEST_PRINCIPAL_WITHOUT_AUTHENTICATION,
        INVALID_JWT_RULE,
        INVALID_JWKS,
        INVALID_JWKS_URI,
        DUPLICATE_JWT_ISSUER,
        AUTO_PASSTHROUGH_NOT_SUPPORTED,
        PASSTHROUGH_WITHOUT_TLS_ROUTE,
        SNI_HOST_NOT_IN_GATEWAY,
        INVALID_SIDECAR_HOST,
        CONFLICTING_SIDECARS,
        SIDECAR_FIELD_IGNORED,
    ];
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            code: code.id,
            name: code.name,
            severity: code.severity,
            message: message.into(),
            resource: None,
            file: None,
            line: None,
            field: None,
        }
    }

    /// Same code, but reported at another severity (e.g. an unknown mesh-internal host is only a
    /// warning, since a proxy may register it at runtime).
    pub fn with_severity(mut self, severity: Severity) -> Diagnostic {
        self.severity = severity;
        self
    }

    pub fn at(mut self, file: impl Into<PathBuf>, line: Option<usize>) -> Diagnostic {
        self.file = Some(file.into());
        self.line = line;
        self
    }

    pub fn on(mut self, resource: ResourceRef) -> Diagnostic {
        self.resource = Some(resource);
        self
    }

    pub fn field(mut self, field: impl Into<String>) -> Diagnostic {
        self.field = Some(field.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    /// `Error [JAL0102] (VirtualService default/reviews config/reviews.yaml:14) spec.http[0]...: message`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.severity, self.code)?;
        let mut origin = Vec::new();
        if let Some(r) = &self.resource {
            origin.push(r.to_string());
        }
        if let Some(file) = &self.file {
            match self.line {
                Some(line) => origin.push(format!("{}:{line}", file.display())),
                None => origin.push(file.display().to_string()),
            }
        }
        if !origin.is_empty() {
            write!(f, " ({})", origin.join(" "))?;
        }
        if let Some(field) = &self.field {
            write!(f, " {field}:")?;
        }
        write!(f, " {}", self.message)
    }
}
