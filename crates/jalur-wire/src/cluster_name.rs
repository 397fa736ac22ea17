//! Istio's cluster names: `outbound|PORT|SUBSET|HOST` for a service port (and subset) as callers
//! see it, `inbound|PORT||` for the local app behind a sidecar's inbound listener.

use std::fmt;
use std::str::FromStr;

/// A cluster name in Istio's shape. Any other name is still a valid Envoy cluster name; it just
/// carries no service or subset (`"x".parse::<ClusterName>()` is an error saying why).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ClusterName {
    /// `outbound|PORT|SUBSET|HOST`; an empty subset is `None`.
    Outbound {
        port: u32,
        subset: Option<String>,
        host: String,
    },
    /// `inbound|PORT||`.
    Inbound { port: u32 },
}

impl ClusterName {
    pub fn outbound(port: u32, subset: Option<&str>, host: &str) -> ClusterName {
        ClusterName::Outbound {
            port,
            subset: subset.filter(|s| !s.is_empty()).map(str::to_string),
            host: host.to_string(),
        }
    }

    pub fn inbound(port: u32) -> ClusterName {
        ClusterName::Inbound { port }
    }

    pub fn port(&self) -> u32 {
        match self {
            ClusterName::Outbound { port, .. } | ClusterName::Inbound { port } => *port,
        }
    }

    /// The service host of an outbound cluster.
    pub fn host(&self) -> Option<&str> {
        match self {
            ClusterName::Outbound { host, .. } => Some(host),
            ClusterName::Inbound { .. } => None,
        }
    }

    /// The subset of an outbound cluster, if it names one.
    pub fn subset(&self) -> Option<&str> {
        match self {
            ClusterName::Outbound { subset, .. } => subset.as_deref(),
            ClusterName::Inbound { .. } => None,
        }
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterName::Outbound { port, subset, host } => {
                write!(
                    f,
                    "outbound|{port}|{}|{host}",
                    subset.as_deref().unwrap_or("")
                )
            }
            ClusterName::Inbound { port } => write!(f, "inbound|{port}||"),
        }
    }
}

/// A name that is not in Istio's shape, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cluster name {name:?} is not Istio's outbound|PORT|SUBSET|HOST or inbound|PORT||: {reason}"
)]
pub struct ClusterNameError {
    pub name: String,
    pub reason: &'static str,
}

impl FromStr for ClusterName {
    type Err = ClusterNameError;

    fn from_str(name: &str) -> Result<ClusterName, ClusterNameError> {
        let fail = |reason| ClusterNameError {
            name: name.to_string(),
            reason,
        };
        let parts: Vec<&str> = name.split('|').collect();
        let [direction, port, subset, host] = parts[..] else {
            return Err(fail("it does not have four |-separated parts"));
        };
        let port = match port.parse::<u32>() {
            Ok(p @ 1..=65535) => p,
            _ => return Err(fail("the port is not a number from 1 to 65535")),
        };
        match direction {
            "outbound" if host.is_empty() => Err(fail("the host is empty")),
            "outbound" => Ok(ClusterName::outbound(port, Some(subset), host)),
            "inbound" if subset.is_empty() && host.is_empty() => Ok(ClusterName::inbound(port)),
            "inbound" => Err(fail("an inbound name has no subset or host")),
            _ => Err(fail("it starts with neither outbound nor inbound")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_and_inbound_names_round_trip() {
        for name in [
            "outbound|9080|v1|reviews.bookinfo.svc.cluster.local",
            "outbound|80||payments.service.consul",
            "inbound|8080||",
        ] {
            let parsed: ClusterName = name.parse().expect(name);
            assert_eq!(parsed.to_string(), name);
        }
        let c = ClusterName::outbound(9080, Some("v1"), "reviews.ns.svc.cluster.local");
        assert_eq!(c.to_string().parse::<ClusterName>(), Ok(c.clone()));
        assert_eq!(c.subset(), Some("v1"));
        assert_eq!(c.host(), Some("reviews.ns.svc.cluster.local"));
        assert_eq!(ClusterName::outbound(80, Some(""), "h").subset(), None);
    }

    #[test]
    fn other_names_are_errors_that_say_why() {
        for (name, why) in [
            ("xds", "four"),
            ("outbound|80|v1", "four"),
            ("outbound|http|v1|reviews", "port"),
            ("outbound|0||reviews", "port"),
            ("outbound|70000||reviews", "port"),
            ("outbound|80|v1|", "host"),
            ("inbound|80|v1|x", "inbound"),
            ("sideways|80||x", "neither"),
            ("outbound|80|a|b|c", "four"),
        ] {
            let err = name.parse::<ClusterName>().expect_err(name);
            assert!(err.reason.contains(why), "{name}: {err}");
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}
