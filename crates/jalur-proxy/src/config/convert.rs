//! Wire -> domain: Envoy v3 resources into the proxy's [`super`] types. Every failure names the
//! resource, the field path and what is wrong; the xDS client turns it into a NACK's
//! error_detail and keeps the last good config.
//!
//! What the proxy cannot honour is an error (an Envoy feature silently dropped would make jalur
//! proxy and Envoy behave differently on the same config); what only concerns Envoy's own
//! bookkeeping (stats, access logs, tracing, most connection-manager knobs) is ignored. Where a
//! field is absent, Envoy's default applies, so both data planes read a resource the same way.
//!
//! Helpers build errors bottom-up: a helper reports the field it knows (`weight`), each caller
//! prefixes its own step (`clusters[0]`, `weighted_clusters`, ...), and the public functions add
//! the resource kind and name.

use std::fmt::Display;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as XdsCluster;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, ConfigSource};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as XdsListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};
use envoy_types::pb::google::protobuf::{Any, Duration as XdsDuration};
use prost::{Message, Name};

use super::{Cluster, EndpointSet, Listener, RouteTable, StringMatch};

mod action;
mod cluster;
mod fault;
mod jwt;
mod listener;
mod rbac;
mod route;
mod sni;
mod tls;

pub use tls::{SDS_CERT, SDS_ROOTS, SOCKET_MATCH_METADATA};

#[cfg(test)]
mod tests;

/// Why a resource cannot be honoured: `Listener outbound: filter_chains[0].filters[0]: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name}: {field}: {message}")]
pub struct ConvertError {
    pub kind: &'static str,
    pub name: String,
    pub field: String,
    pub message: String,
}

pub fn listener(l: &XdsListener) -> Result<Listener, ConvertError> {
    listener::listener(l).map_err(|e| e.into_error("Listener", &l.name))
}

/// The `envoy.filters.http.jwt_authn` filter's typed config (the listener conversion hands it
/// the filter's `typed_config`).
pub fn jwt_filter(any: &Any) -> Result<crate::jwt::JwtAuthn, ConvertError> {
    jwt::jwt_authn(any).map_err(|e| e.into_error("HttpFilter", crate::jwt::FILTER_NAME))
}

pub fn route_table(rc: &RouteConfiguration) -> Result<RouteTable, ConvertError> {
    route::route_table(rc).map_err(|e| e.into_error("RouteConfiguration", &rc.name))
}

/// A cluster, and its endpoints when they come inline (STATIC load_assignment; DNS clusters carry
/// their hostnames in [`super::Discovery::Dns`] instead, since the proxy resolves them).
pub fn cluster(c: &XdsCluster) -> Result<(Cluster, Option<EndpointSet>), ConvertError> {
    cluster::cluster(c).map_err(|e| e.into_error("Cluster", &c.name))
}

pub fn endpoints(cla: &ClusterLoadAssignment) -> Result<EndpointSet, ConvertError> {
    cluster::endpoints(cla).map_err(|e| e.into_error("ClusterLoadAssignment", &cla.cluster_name))
}

// ------------------------------------------------------------------------------ error plumbing

/// A fault inside a resource before its kind and name are attached: the path from the resource
/// root (built up by the callers) and what is wrong.
#[derive(Debug)]
pub(crate) struct Invalid {
    field: String,
    message: String,
}

type Res<T> = Result<T, Invalid>;

impl Invalid {
    /// A fault at `field` (relative to whoever reports it; callers prefix their own path).
    fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A fault in the value the helper was handed; its caller names the field.
    fn here(message: impl Into<String>) -> Invalid {
        Invalid::new("", message)
    }

    /// Prefixes the path with one more step from the root: `clusters[0]` + `weight`.
    fn under(mut self, step: impl Display) -> Invalid {
        let step = step.to_string();
        self.field = match self.field.as_str() {
            "" => step,
            f if f.starts_with('[') => format!("{step}{f}"),
            f => format!("{step}.{f}"),
        };
        self
    }

    fn into_error(self, kind: &'static str, name: &str) -> ConvertError {
        ConvertError {
            kind,
            name: if name.is_empty() {
                "(unnamed)".to_string()
            } else {
                name.to_string()
            },
            field: if self.field.is_empty() {
                "(resource)".to_string()
            } else {
                self.field
            },
            message: self.message,
        }
    }
}

trait At<T> {
    /// On error, prefix the path with `step` (formatted only then).
    fn at(self, step: impl Display) -> Res<T>;
}

impl<T> At<T> for Res<T> {
    fn at(self, step: impl Display) -> Res<T> {
        self.map_err(|e| e.under(step))
    }
}

/// Fails with `field: message` when `unsupported` holds: for features jalur cannot honour.
fn reject_if(unsupported: bool, field: &str, message: &str) -> Res<()> {
    if unsupported {
        Err(Invalid::new(field, message))
    } else {
        Ok(())
    }
}

// ------------------------------------------------------------------------------- wire helpers

/// The message name an `Any` carries (`type.googleapis.com/envoy.X` -> `envoy.X`).
fn type_name(any: &Any) -> &str {
    any.type_url.rsplit('/').next().unwrap_or_default()
}

/// Decodes an `Any` that must hold a `T`.
fn decode<T: Message + Name + Default>(any: &Any) -> Res<T> {
    let expected = T::full_name();
    if type_name(any) != expected {
        return Err(Invalid::here(format!(
            "expected {expected}, got type_url \"{}\"",
            any.type_url
        )));
    }
    T::decode(any.value.as_slice())
        .map_err(|e| Invalid::here(format!("cannot decode {expected}: {e}")))
}

fn duration(d: &XdsDuration) -> Res<Duration> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Invalid::here(format!(
            "invalid duration ({}s {}ns): must be non-negative with nanos below 1e9",
            d.seconds, d.nanos
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional duration where zero means "none" (Envoy's convention for timeouts).
fn timeout(d: Option<&XdsDuration>, default: Option<Duration>) -> Res<Option<Duration>> {
    match d {
        None => Ok(default),
        Some(d) => Ok(Some(duration(d)?).filter(|d| !d.is_zero())),
    }
}

/// A duration Envoy requires to be positive.
fn positive(d: Option<&XdsDuration>, default: Duration) -> Res<Duration> {
    let Some(d) = d else { return Ok(default) };
    let d = duration(d)?;
    if d.is_zero() {
        return Err(Invalid::here("must be greater than zero"));
    }
    Ok(d)
}

/// A fraction as parts per million, clamped to 100 % like Envoy does.
fn ppm(f: &FractionalPercent) -> Res<u32> {
    let scale: u64 = match DenominatorType::try_from(f.denominator) {
        Ok(DenominatorType::Hundred) => 10_000,
        Ok(DenominatorType::TenThousand) => 100,
        Ok(DenominatorType::Million) => 1,
        Err(_) => {
            return Err(Invalid::new(
                "denominator",
                format!("unknown denominator {}", f.denominator),
            ))
        }
    };
    Ok((u64::from(f.numerator) * scale).min(1_000_000) as u32)
}

/// Where a resource's dependencies come from: jalur only serves them over the ADS stream.
fn ads_source(source: Option<&ConfigSource>) -> Res<()> {
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        Some(ConfigSourceSpecifier::Ads(_)) | Some(ConfigSourceSpecifier::Self_(_)) => Ok(()),
        None => Err(Invalid::here("a config source is required (ads)")),
        Some(_) => Err(Invalid::here(
            "only ADS config sources (ads or self) are supported",
        )),
    }
}

/// The socket address of an `Address`, as the parts Envoy allows: host text and TCP port.
fn host_port(a: Option<&Address>) -> Res<(&str, u16)> {
    let s = match a.and_then(|a| a.address.as_ref()) {
        Some(address::Address::SocketAddress(s)) => s,
        None => return Err(Invalid::here("a socket_address is required")),
        Some(address::Address::Pipe(_)) => {
            return Err(Invalid::here("unix pipes are not supported"))
        }
        Some(address::Address::EnvoyInternalAddress(_)) => {
            return Err(Invalid::here("Envoy internal addresses are not supported"))
        }
    };
    let s_path = |f: &str| format!("socket_address.{f}");
    reject_if(
        s.protocol != socket_address::Protocol::Tcp as i32,
        &s_path("protocol"),
        "only TCP is supported",
    )?;
    reject_if(
        !s.resolver_name.is_empty(),
        &s_path("resolver_name"),
        "custom resolvers are not supported",
    )?;
    let port = match s.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => u16::try_from(p)
            .map_err(|_| Invalid::new(s_path("port_value"), format!("port {p} is out of range")))?,
        Some(socket_address::PortSpecifier::NamedPort(_)) => {
            return Err(Invalid::new(
                s_path("named_port"),
                "named ports are not supported",
            ))
        }
        None => {
            return Err(Invalid::new(
                s_path("port_value"),
                "a port_value is required",
            ))
        }
    };
    reject_if(
        s.address.is_empty(),
        &s_path("address"),
        "an address is required",
    )?;
    Ok((&s.address, port))
}

/// An IPv4/IPv6 literal and port (listeners and EDS endpoints carry no hostnames).
fn socket_addr(a: Option<&Address>) -> Res<SocketAddr> {
    let (host, port) = host_port(a)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        Invalid::new(
            "socket_address.address",
            format!("\"{host}\" is not an IP address (hostnames are not allowed here)"),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

// ----------------------------------------------------------------------------- matching helpers

/// Regexes are compiled with bounded size: a hostile pattern must not exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles an RE2 pattern; `anchored` for Envoy's whole-string matches.
fn regex(pattern: &str, anchored: bool) -> Res<regex::Regex> {
    let build = |p: &str| {
        regex::RegexBuilder::new(p)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
    };
    // Compiled bare first so a pattern like `a)|(b` cannot escape the anchoring group.
    let bare = build(pattern).map_err(|e| Invalid::here(regex_error(pattern, &e)))?;
    if !anchored {
        return Ok(bare);
    }
    build(&format!("^(?:{pattern})$")).map_err(|e| Invalid::here(regex_error(pattern, &e)))
}

/// `invalid regex "(a": unclosed group` — the crate's multi-line message, on one line.
fn regex_error(pattern: &str, e: &regex::Error) -> String {
    let reason = match e {
        regex::Error::Syntax(text) => text
            .lines()
            .find_map(|l| l.strip_prefix("error: "))
            .unwrap_or("syntax error")
            .to_string(),
        regex::Error::CompiledTooBig(_) => "the compiled regex is too big".to_string(),
        other => other.to_string(),
    };
    format!("invalid regex \"{pattern}\": {reason}")
}

/// A literal matched case-insensitively as a whole-value regex: `start`/`end` say whether the
/// literal must sit at the value's start/end (exact: both; prefix: start; ...).
fn ignore_case(literal: &str, start: bool, end: bool) -> Res<StringMatch> {
    let any = "(?s:.*)";
    let pattern = format!(
        "^{}(?i:{}){}$",
        if start { "" } else { any },
        regex::escape(literal),
        if end { "" } else { any }
    );
    regex::RegexBuilder::new(&pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(StringMatch::Regex)
        .map_err(|e| Invalid::here(regex_error(&pattern, &e)))
}

/// Envoy's `StringMatcher`; errors name fields below the matcher.
fn string_match(m: &StringMatcher) -> Res<StringMatch> {
    let non_empty = |s: &str, field: &str| reject_if(s.is_empty(), field, "must not be empty");
    let ic = m.ignore_case;
    match &m.match_pattern {
        None => Err(Invalid::here(
            "a match pattern (exact, prefix, suffix, contains or safe_regex) is required",
        )),
        Some(MatchPattern::Exact(s)) if ic => ignore_case(s, true, true).at("exact"),
        Some(MatchPattern::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
        Some(MatchPattern::Prefix(s)) => {
            non_empty(s, "prefix")?;
            if ic {
                ignore_case(s, true, false).at("prefix")
            } else {
                Ok(StringMatch::Prefix(s.clone()))
            }
        }
        Some(MatchPattern::Suffix(s)) => {
            non_empty(s, "suffix")?;
            if ic {
                ignore_case(s, false, true).at("suffix")
            } else {
                Ok(StringMatch::Suffix(s.clone()))
            }
        }
        Some(MatchPattern::Contains(s)) => {
            non_empty(s, "contains")?;
            if ic {
                ignore_case(s, false, false).at("contains")
            } else {
                Ok(StringMatch::Contains(s.clone()))
            }
        }
        // Envoy documents ignore_case as having no effect on safe_regex.
        Some(MatchPattern::SafeRegex(r)) => regex(&r.regex, true)
            .map(StringMatch::Regex)
            .at("safe_regex.regex"),
        Some(MatchPattern::Custom(c)) => Err(Invalid::new(
            "custom",
            format!("custom string matchers ({}) are not supported", c.name),
        )),
    }
}
