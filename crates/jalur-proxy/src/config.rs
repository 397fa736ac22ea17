//! The proxy's own configuration: small, validated, immutable domain types built from Envoy's
//! wire resources at the edge (`config/convert.rs`). Nothing past the edge touches a protobuf.
//! A [`Snapshot`] is swapped atomically; requests in flight keep the one they started with.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod convert;

/// Everything the proxy is configured with at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// Endpoints by cluster (EDS service name, or the cluster's own for static/DNS clusters).
    pub endpoints: BTreeMap<String, Arc<EndpointSet>>,
}

// ------------------------------------------------------------------------------------ listeners

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub addr: SocketAddr,
    pub kind: ListenerKind,
    /// Terminate TLS on this listener (a gateway's HTTPS server, a sidecar's mTLS inbound).
    pub tls: Option<ServerTls>,
    /// With `tls`: a connection whose first byte does not start a TLS handshake is served in
    /// plaintext (PERMISSIVE: a `tls` and a `raw_buffer` filter chain, told apart as Envoy's
    /// tls_inspector does). Without it such a connection is closed (no chain matches).
    pub plaintext_too: bool,
    /// Network RBAC filters before the listener's network filter, decided once per connection.
    pub network_rbac: Vec<crate::rbac::RbacFilter>,
}

/// How a listener terminates TLS: its certificate, whether clients must present one, and the
/// ALPN protocols offered (`h2`, `http/1.1`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    pub cert: CertSource,
    /// Mutual TLS: a client certificate is required and checked as this says.
    pub client_cert: Option<PeerTrust>,
    pub alpn: Vec<String>,
}

/// Where a certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    /// PEM read when the config was applied (files or inline data).
    Pem {
        cert_chain_pem: Vec<u8>,
        private_key_pem: Vec<u8>,
    },
    /// SDS secret `default`: the proxy's own workload certificate, read at every handshake so a
    /// rotation needs no config change.
    Mesh,
    /// SDS secret `file-cert:CHAIN~KEY`: read from these files and re-read when they change.
    Files {
        chain: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

/// How a peer's certificate is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerTrust {
    /// Against SDS `ROOTCA` (the proxy's trust bundle), then its SPIFFE id.
    Mesh(PeerMatch),
    /// Against the CA bundle in a file (SDS `file-root:CA`, re-read when it changes), then, when
    /// `sans` is not empty, one of its subject alternative names must equal one of them.
    Files {
        ca: std::path::PathBuf,
        sans: Vec<String>,
    },
    /// Not checked at all: an upstream whose config says so explicitly (a DestinationRule's
    /// `insecureSkipVerify`, an empty validation context). Never for a listener.
    Unverified,
}

/// Which peer identities a mesh TLS connection accepts once the chain is good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    /// One of these SPIFFE ids (URI SANs matched exactly: an upstream's service accounts).
    AnyOf(Vec<jalur_identity::SpiffeId>),
    /// Any workload of this trust domain (a URI SAN prefix `spiffe://TD/`).
    TrustDomain(String),
    /// No SAN matcher in the config: any workload of the proxy's own trust domain. Envoy would
    /// accept any certificate the roots sign; a mesh peer always has a SPIFFE id, so jalur asks
    /// for one.
    OwnTrustDomain,
}

/// TLS towards an upstream: mesh mTLS (the proxy's certificate, SDS `default`; the peer
/// verified against SDS `ROOTCA`), or origination to a server outside the mesh (the server
/// checked against a CA file, a client certificate from files or none); SNI and ALPN as the
/// cluster says.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub peer: PeerTrust,
    /// The certificate presented; `None`: no client certificate (SIMPLE origination).
    pub cert: Option<CertSource>,
}

/// How a cluster's connections are made.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum UpstreamTransport {
    #[default]
    Plaintext,
    /// Every endpoint over TLS.
    Tls(ClientTls),
    /// Envoy's `transport_socket_matches`: the first match whose criteria an endpoint's
    /// `envoy.transport_socket_match` metadata contains decides; none matching, `otherwise_tls`
    /// (the cluster's own `transport_socket`). One TLS configuration per cluster.
    ByEndpoint {
        tls: ClientTls,
        matches: Vec<SocketMatch>,
        otherwise_tls: bool,
    },
}

impl UpstreamTransport {
    /// The TLS settings for an endpoint with this `envoy.transport_socket_match` metadata, or
    /// `None` for plaintext.
    pub fn for_endpoint(&self, metadata: &BTreeMap<String, String>) -> Option<&ClientTls> {
        match self {
            UpstreamTransport::Plaintext => None,
            UpstreamTransport::Tls(tls) => Some(tls),
            UpstreamTransport::ByEndpoint {
                tls,
                matches,
                otherwise_tls,
            } => {
                let hit = matches.iter().find(|m| {
                    m.criteria
                        .iter()
                        .all(|(k, v)| metadata.get(k).is_some_and(|mv| mv == v))
                });
                let use_tls = hit.map_or(*otherwise_tls, |m| m.tls);
                use_tls.then_some(tls)
            }
        }
    }

    pub fn tls(&self) -> Option<&ClientTls> {
        match self {
            UpstreamTransport::Plaintext => None,
            UpstreamTransport::Tls(tls) | UpstreamTransport::ByEndpoint { tls, .. } => Some(tls),
        }
    }
}

/// One of a cluster's `transport_socket_matches`.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketMatch {
    pub name: String,
    pub criteria: BTreeMap<String, String>,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListenerKind {
    Http(HttpListener),
    Tcp(TcpListener),
    /// TLS passed through untouched, a TCP proxy chosen by the ClientHello's SNI (a gateway's
    /// PASSTHROUGH server).
    Sni(SniRoutes),
}

/// Filter chains told apart by `filter_chain_match.server_names`, each a TCP proxy. A connection
/// whose SNI no chain names goes to the chain without names, else is closed (Envoy's matching,
/// in `crate::sni`).
#[derive(Debug, Clone, PartialEq)]
pub struct SniRoutes {
    pub chains: Vec<SniChain>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniChain {
    /// Exact names and `*.suffix` wildcards, lowercase; empty: any connection no other chain
    /// takes (TLS without SNI and plaintext included).
    pub server_names: Vec<String>,
    pub tcp: TcpListener,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpListener {
    pub stat_prefix: String,
    pub routes: RouteSource,
    /// The HTTP fault filter is in the chain, so per-route faults apply.
    pub faults: bool,
    pub rbac: HttpRbac,
    /// `envoy.filters.http.jwt_authn`, checked where the RBAC filters are (before them).
    pub jwt: Option<Arc<crate::jwt::JwtAuthn>>,
    /// The HCM's `normalize_path`: dot segments removed before RBAC and routing.
    pub normalize_path: bool,
}

/// The HTTP RBAC filters of a connection manager, in chain order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpRbac {
    pub filters: Vec<crate::rbac::RbacFilter>,
    /// The fault filter comes first in the chain: a fault is injected before RBAC decides.
    pub after_fault: bool,
    /// How the connection manager derives the client address `remote_ip` matches.
    pub remote: crate::rbac::RemoteAddress,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// By name over RDS.
    Rds(String),
    Inline(Arc<RouteTable>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TcpListener {
    pub stat_prefix: String,
    pub targets: Vec<WeightedCluster>,
    pub idle_timeout: Option<Duration>,
}

// ---------------------------------------------------------------------------------------- routes

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<DomainMatch>,
    pub routes: Vec<Route>,
}

/// Envoy's virtual-host domain forms: exact, `*.suffix`, `prefix.*`, `*`. Lowercase. A wildcard
/// stands for at least one character, so `Suffix(".example.com")` (from `*.example.com`) matches
/// `a.example.com` but not `.example.com`; Envoy prefers exact, then the longest suffix, then the
/// longest prefix, then `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainMatch {
    Exact(String),
    /// The text after the leading `*` (`*.example.com` -> `.example.com`).
    Suffix(String),
    /// The text before the trailing `*` (`example.*` -> `example.`).
    Prefix(String),
    Any,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Already anchored (`^(?:...)$`): Envoy's safe_regex must match the whole path.
    Regex(regex::Regex),
}

impl PartialEq for PathMatch {
    fn eq(&self, other: &PathMatch) -> bool {
        match (self, other) {
            (PathMatch::Prefix(a), PathMatch::Prefix(b))
            | (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
            (PathMatch::Regex(a), PathMatch::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Lowercase; pseudo-headers (`:method`, `:authority`, `:path`, `:scheme`) allowed.
    pub name: String,
    pub matcher: StringMatch,
    pub invert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub matcher: Option<StringMatch>,
}

/// Envoy's string matcher (in `string_match.rs`, a leaf that RBAC and routing share).
pub use crate::string_match::StringMatch;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct { status: u16, body: Option<String> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// One or more clusters with weights (a single cluster has weight 1).
    pub targets: Vec<WeightedCluster>,
    /// Whole-request timeout including retries; `None` = no timeout.
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<RegexRewrite>,
    pub host_rewrite: Option<String>,
    pub mirrors: Vec<Mirror>,
    pub hash: Vec<HashPolicy>,
    /// Where this route is in its weighted sequence (see [`Draws`]).
    pub draws: Draws,
}

/// A route's count of weighted picks. Splits are drawn from a low-discrepancy sequence over it,
/// not at random, so any run of requests splits within a request or two of the weights: a
/// 5 % stage of a migration is 5 % over the next 100 requests, not "5 % give or take 2 points".
/// Shared by clones of one route (one compiled config), ignored by equality.
#[derive(Debug, Clone, Default)]
pub struct Draws(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Draws {
    /// The next draw in `0..total`: `floor(frac(n * phi) * total)` for the route's n-th pick.
    pub fn next(&self, total: u64) -> u64 {
        const PHI_FRACTION: f64 = 0.618_033_988_749_894_9;
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let x = (n as f64 * PHI_FRACTION).fract();
        ((x * total as f64) as u64).min(total.saturating_sub(1))
    }
}

impl PartialEq for Draws {
    fn eq(&self, _: &Draws) -> bool {
        true
    }
}

#[derive(Debug, Clone)]
pub struct RegexRewrite {
    /// Not anchored: every match is replaced, as Envoy's regex_rewrite does.
    pub pattern: regex::Regex,
    /// In the `regex` crate's replacement syntax (`${1}`, `$$`), converted from RE2's (`\1`),
    /// ready for `pattern.replace_all(path, substitution)`.
    pub substitution: String,
}

impl PartialEq for RegexRewrite {
    fn eq(&self, other: &RegexRewrite) -> bool {
        self.pattern.as_str() == other.pattern.as_str() && self.substitution == other.substitution
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Redirect {
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub strip_query: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub cluster: String,
    /// Parts per million of requests mirrored.
    pub ppm: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HashPolicy {
    Header(String),
    Cookie(String),
    /// A cookie hash policy with a ttl: when the request lacks the cookie, Envoy picks a host,
    /// hashes a generated value and sets the cookie on the response (`Max-Age` = ttl, none when
    /// zero; `Path` when non-empty), so the client sticks from its first request on.
    GeneratedCookie {
        name: String,
        path: String,
        ttl: Duration,
    },
    QueryParameter(String),
    SourceIp,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderOps {
    /// (name, value, append): append=false overwrites.
    pub add: Vec<(String, String, bool)>,
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    pub retriable_status_codes: Vec<u16>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Do not retry on a host already tried (Envoy's previous_hosts predicate).
    pub other_hosts: bool,
}

/// Envoy's `retry_on` conditions jalur honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub server_error: bool,  // 5xx
    pub gateway_error: bool, // 502, 503, 504
    pub connect_failure: bool,
    pub reset: bool,
    pub refused_stream: bool,
    pub retriable_status_codes: bool,
    /// gRPC status conditions (cancelled, deadline-exceeded, internal, resource-exhausted,
    /// unavailable), by gRPC status number.
    pub grpc_statuses: [bool; 17],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, u32)>,
    /// (HTTP status, parts per million).
    pub abort: Option<(u16, u32)>,
}

// -------------------------------------------------------------------------------------- clusters

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    pub lb: LbPolicy,
    pub connect_timeout: Duration,
    pub protocol: UpstreamProtocol,
    pub breakers: Thresholds,
    /// Envoy's retry budget: concurrent retries at most `percent` of active requests (never
    /// fewer than `min_concurrency`), so retries cannot amplify an outage. Replaces max_retries.
    pub retry_budget: Option<RetryBudgetConfig>,
    pub outlier: Option<OutlierConfig>,
    /// Active health checking of every host.
    pub health_check: Option<HealthCheckConfig>,
    pub max_requests_per_connection: Option<u32>,
    pub idle_timeout: Option<Duration>,
    /// Plaintext, TLS, or chosen per endpoint.
    pub transport: UpstreamTransport,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// Endpoints arrive over EDS under this name.
    Eds { service_name: String },
    /// Endpoints given inline (STATIC), already resolved.
    Static,
    /// Hostnames resolved by the proxy (STRICT_DNS / LOGICAL_DNS), `host:port`, again every
    /// `refresh` (Envoy's `dns_refresh_rate`), or when the records expire if `respect_ttl`.
    Dns {
        hosts: Vec<(String, u16)>,
        refresh: Duration,
        respect_ttl: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    /// Whatever the downstream spoke.
    Downstream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Thresholds {
    /// Envoy's defaults.
    fn default() -> Thresholds {
        Thresholds {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// `Some(path)`: HTTP GET, 2xx healthy; `None`: a TCP connect.
    pub http_path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    pub percent: f64,
    pub min_concurrency: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_failure: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSet {
    pub cluster: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub healthy: bool,
    /// `region/zone/sub_zone` without trailing empty parts (`eu/a`); empty when unset.
    pub locality: String,
    /// The endpoint's `envoy.transport_socket_match` metadata (string values), which the
    /// cluster's transport socket matches read (`tlsMode: istio`).
    pub socket_match: BTreeMap<String, String>,
}
