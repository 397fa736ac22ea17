//! DNS clusters (STRICT_DNS, LOGICAL_DNS) resolved by the proxy itself, with Envoy's STRICT_DNS
//! semantics: every hostname is looked up again every `dns_refresh_rate`, or when its records
//! expire if `respect_dns_ttl` is set; a failed lookup keeps the addresses the cluster had (a
//! DNS blip must not empty a cluster). Lookups go through hickory-resolver, which reads
//! `/etc/resolv.conf` and `/etc/hosts` and reports each answer's TTL (the system resolver,
//! `getaddrinfo`, does not). IPv4 only, as before.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use crate::config::Endpoint;

/// When a cluster respects TTLs, records are not looked up again sooner than this (Envoy's
/// `dns_min_refresh_rate` default), so a zero-TTL answer cannot make the proxy hammer DNS.
pub const MIN_TTL_REFRESH: Duration = Duration::from_secs(5);

/// One round of lookups for a cluster's hostnames.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Every address found, sorted, one per address.
    pub endpoints: Vec<Endpoint>,
    /// The shortest time any answer stays valid.
    pub ttl: Option<Duration>,
    /// At least one hostname could not be resolved.
    pub failed: bool,
}

impl Resolved {
    /// What the cluster should hold now: the new addresses, unless lookups failed and found
    /// nothing (then `None`: keep the last ones).
    pub fn endpoints(self) -> Option<Vec<Endpoint>> {
        (!self.failed || !self.endpoints.is_empty()).then_some(self.endpoints)
    }
}

/// A resolver from the system's configuration (`None`, logged, if none can be built). One per
/// DNS cluster: its connections live on the runtime that uses it, and a cluster's resolve loop
/// runs on one runtime for its whole life.
pub fn resolver() -> Option<TokioResolver> {
    let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the system DNS configuration; only /etc/hosts and IP addresses resolve");
        let none = ResolverConfig::from_parts(None, Vec::new(), Vec::new());
        TokioResolver::builder_with_config(none, TokioRuntimeProvider::default())
    });
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4Only;
    builder
        .build()
        .inspect_err(|e| tracing::error!(error = %e, "cannot set up a DNS resolver"))
        .ok()
}

/// Looks every hostname up once.
pub async fn resolve(resolver: Option<&TokioResolver>, hosts: &[(String, u16)]) -> Resolved {
    let mut out = Resolved::default();
    let Some(resolver) = resolver else {
        out.failed = true;
        return out;
    };
    let now = std::time::Instant::now();
    for (host, port) in hosts {
        match resolver.lookup_ip(host.as_str()).await {
            Ok(answer) => {
                let ttl = answer.valid_until().saturating_duration_since(now);
                out.ttl = Some(out.ttl.map_or(ttl, |t| t.min(ttl)));
                out.endpoints
                    .extend(answer.iter().filter(|ip| ip.is_ipv4()).map(|ip| Endpoint {
                        addr: SocketAddr::new(ip, *port),
                        weight: 1,
                        healthy: true,
                        locality: String::new(),
                        socket_match: Default::default(),
                    }));
            }
            Err(e) => {
                out.failed = true;
                tracing::warn!(%host, error = %e, "DNS lookup failed; keeping the last addresses");
            }
        }
    }
    out.endpoints.sort_by_key(|e| e.addr);
    out.endpoints.dedup_by_key(|e| e.addr);
    out
}

/// How long to wait before the next round: the refresh rate, or, respecting TTLs, the shortest
/// TTL seen (never below [`MIN_TTL_REFRESH`]; the refresh rate when nothing answered).
pub fn next_refresh(refresh: Duration, respect_ttl: bool, ttl: Option<Duration>) -> Duration {
    match ttl {
        Some(ttl) if respect_ttl => ttl.max(MIN_TTL_REFRESH),
        _ => refresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn refresh_follows_the_rate_or_the_ttl_as_envoy_does() {
        assert_eq!(next_refresh(5 * S, false, Some(300 * S)), 5 * S);
        assert_eq!(next_refresh(5 * S, true, Some(300 * S)), 300 * S);
        assert_eq!(
            next_refresh(5 * S, true, Some(Duration::ZERO)),
            MIN_TTL_REFRESH
        );
        assert_eq!(next_refresh(7 * S, true, None), 7 * S);
    }

    #[test]
    fn a_failed_round_keeps_the_last_addresses_unless_it_found_some() {
        let found = || Endpoint {
            addr: SocketAddr::from(([10, 0, 0, 1], 80)),
            weight: 1,
            healthy: true,
            locality: String::new(),
            socket_match: Default::default(),
        };
        let nothing = Resolved {
            failed: true,
            ..Resolved::default()
        };
        assert_eq!(nothing.endpoints(), None);
        let partial = Resolved {
            endpoints: vec![found()],
            failed: true,
            ttl: None,
        };
        assert_eq!(partial.endpoints(), Some(vec![found()]));
        assert_eq!(Resolved::default().endpoints(), Some(Vec::new()));
    }

    #[tokio::test]
    async fn hosts_file_names_and_ip_literals_resolve_with_a_ttl() {
        let r = resolver();
        let hosts = [
            ("localhost".to_string(), 8080),
            ("10.1.2.3".to_string(), 80),
        ];
        let got = resolve(r.as_ref(), &hosts).await;
        assert!(!got.failed, "{got:?}");
        let addrs: Vec<SocketAddr> = got.endpoints.iter().map(|e| e.addr).collect();
        assert!(
            addrs.contains(&SocketAddr::from(([127, 0, 0, 1], 8080))),
            "{addrs:?}"
        );
        assert!(
            addrs.contains(&SocketAddr::from(([10, 1, 2, 3], 80))),
            "{addrs:?}"
        );
        assert!(got.ttl.is_some_and(|t| t > Duration::ZERO), "{got:?}");
    }

    #[tokio::test]
    async fn an_unresolvable_name_fails_without_emptying_the_cluster() {
        let got = resolve(
            resolver().as_ref(),
            &[("no-such-host.invalid".to_string(), 80)],
        )
        .await;
        assert!(got.failed);
        assert_eq!(got.endpoints(), None);
    }
}
