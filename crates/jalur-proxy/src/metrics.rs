//! Istio's standard metrics, names and labels unchanged, so existing dashboards (and Kiali) read
//! jalur proxies as they read Envoy sidecars; plus a few `jalur_proxy_*` families for what Istio
//! has no name for. Served on 15090 `/stats/prometheus`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::error::Flag;
use crate::tls::ConnSecurity;

/// Labels of `istio_requests_total` and its histograms. `Arc<str>` so that building one per
/// request copies pointers, not strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: Arc<str>,
    pub source_canonical_service: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_canonical_service: Arc<str>,
    pub destination_version: Arc<str>,
    pub response_code: u16,
    pub response_flags: &'static str,
    pub grpc_response_status: std::borrow::Cow<'static, str>,
    pub request_protocol: &'static str,
    pub connection_security_policy: &'static str,
    pub source_principal: Arc<str>,
    pub destination_principal: Arc<str>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let code = self.response_code.to_string();
        [
            ("reporter", self.reporter),
            ("source_workload", &*self.source_workload),
            ("source_canonical_service", &*self.source_canonical_service),
            ("destination_service", &*self.destination_service),
            ("destination_workload", &*self.destination_workload),
            (
                "destination_canonical_service",
                &*self.destination_canonical_service,
            ),
            ("destination_version", &*self.destination_version),
            ("response_code", code.as_str()),
            ("response_flags", self.response_flags),
            ("grpc_response_status", self.grpc_response_status.as_ref()),
            ("request_protocol", self.request_protocol),
            (
                "connection_security_policy",
                self.connection_security_policy,
            ),
            ("source_principal", &*self.source_principal),
            ("destination_principal", &*self.destination_principal),
        ]
        .as_slice()
        .encode(encoder)
    }
}

/// Labels of the `istio_tcp_*` families.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels {
    pub reporter: Arc<str>,
    pub source_workload: Arc<str>,
    pub destination_service: Arc<str>,
    pub response_flags: &'static str,
    pub security: SecurityLabels,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        [
            ("reporter", &*self.reporter),
            ("source_workload", &*self.source_workload),
            ("destination_service", &*self.destination_service),
            ("response_flags", self.response_flags),
            (
                "connection_security_policy",
                self.security.connection_security_policy,
            ),
            ("source_principal", &*self.security.source_principal),
            (
                "destination_principal",
                &*self.security.destination_principal,
            ),
        ]
        .as_slice()
        .encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

fn ms_buckets() -> Histogram {
    // Istio's default buckets for istio_request_duration_milliseconds.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn byte_buckets() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

/// Who this proxy is, for the `source_*` / `destination_*` metric labels.
#[derive(Debug, Clone)]
pub struct Identity {
    pub workload: Arc<str>,
    pub canonical_service: Arc<str>,
    pub version: Arc<str>,
}

/// The `destination_*` labels of one upstream cluster, worked out once when it is compiled.
#[derive(Debug)]
pub struct ClusterLabels {
    /// The cluster's name (the access log's `upstream_cluster`).
    pub name: Arc<str>,
    /// `destination_service` (the host of `outbound|PORT|SUBSET|HOST`, or the cluster name).
    pub service: Arc<str>,
    /// `destination_version` as the subset name, or "unknown".
    pub subset: Arc<str>,
    /// `destination_canonical_service`: the service's first label.
    pub canonical: Arc<str>,
}

/// What the metrics and the access log record about one request.
pub struct Outcome {
    pub status: http::StatusCode,
    pub flag: Option<Flag>,
    pub cluster: Option<Arc<ClusterLabels>>,
    pub grpc_status: Option<String>,
    /// The TLS of the connection the reporter saw: the downstream one (destination reporter)
    /// or the upstream one (source reporter); `None` for plaintext.
    pub security: Option<Arc<ConnSecurity>>,
    /// Envoy's response code details, where jalur answered itself for a reason Envoy names
    /// (`rbac_access_denied_matched_policy[...]`).
    pub details: Option<String>,
}

/// Istio's `connection_security_policy`, `source_principal` and `destination_principal`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SecurityLabels {
    pub connection_security_policy: &'static str,
    pub source_principal: Arc<str>,
    pub destination_principal: Arc<str>,
}

impl SecurityLabels {
    /// As Istio fills them: the destination reporter says `mutual_tls` or `none` and names the
    /// peer as source; the source reporter says `unknown` (it cannot know the server's policy)
    /// and names the upstream's certificate as destination. `unknown` where no certificate was
    /// presented.
    pub fn new(inbound: bool, security: Option<&ConnSecurity>, unknown: &Arc<str>) -> Self {
        let name = |p: Option<&Arc<str>>| p.cloned().unwrap_or_else(|| unknown.clone());
        let (peer, local) = match security {
            Some(s) => (s.peer.as_ref(), s.local.as_ref()),
            None => (None, None),
        };
        if inbound {
            let mutual = security.is_some_and(|s| s.mutual);
            SecurityLabels {
                connection_security_policy: if mutual { "mutual_tls" } else { "none" },
                source_principal: name(peer),
                destination_principal: name(local.filter(|_| mutual)),
            }
        } else {
            SecurityLabels {
                connection_security_policy: "unknown",
                source_principal: name(local),
                destination_principal: name(peer),
            }
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration_ms: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub request_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub response_bytes: Family<RequestLabels, Histogram, fn() -> Histogram>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    /// Requests refused before routing (malformed, oversized headers), by reason.
    pub downstream_rejected: Family<ReasonLabels, Counter>,
    pub registry: Arc<Registry>,
    pub unknown: Arc<str>,
    /// Counters under Envoy's own names (RBAC's), outside Istio's families.
    pub envoy: Arc<crate::rbac::EnvoyCounters>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let requests = Family::default();
        let duration_ms = Family::new_with_constructor(ms_buckets as fn() -> Histogram);
        let request_bytes = Family::new_with_constructor(byte_buckets as fn() -> Histogram);
        let response_bytes = Family::new_with_constructor(byte_buckets as fn() -> Histogram);
        let (tcp_sent, tcp_received, tcp_opened, tcp_closed) = (
            Family::default(),
            Family::default(),
            Family::default(),
            Family::default(),
        );
        let downstream_rejected = Family::default();
        let mut r = Registry::default();
        r.register(
            "istio_requests",
            "Requests handled, by Istio's standard labels",
            requests.clone(),
        );
        r.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration_ms.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request body sizes",
            request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response body sizes",
            response_bytes.clone(),
        );
        r.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream in TCP connections",
            tcp_sent.clone(),
        );
        r.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream in TCP connections",
            tcp_received.clone(),
        );
        r.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        r.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        r.register(
            "jalur_proxy_downstream_rejected",
            "Requests refused before routing (malformed or oversized), by reason",
            downstream_rejected.clone(),
        );
        Metrics {
            requests,
            duration_ms,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            downstream_rejected,
            registry: Arc::new(r),
            unknown: Arc::from("unknown"),
            envoy: Arc::default(),
        }
    }

    /// Counts one finished request in Istio's metrics.
    /// `inbound`: the proxy is the destination (its `inbound` listener), else the source.
    /// `bytes`: the request's and the response's body sizes.
    pub fn record_request(
        &self,
        id: &Identity,
        inbound: bool,
        o: &Outcome,
        protocol: &'static str,
        elapsed: Duration,
        (request_bytes, response_bytes): (u64, u64),
    ) {
        let (service, canonical, subset) = match &o.cluster {
            Some(c) => (c.service.clone(), c.canonical.clone(), c.subset.clone()),
            None => (
                self.unknown.clone(),
                self.unknown.clone(),
                self.unknown.clone(),
            ),
        };
        let security = SecurityLabels::new(inbound, o.security.as_deref(), &self.unknown);
        let labels = RequestLabels {
            reporter: if inbound { "destination" } else { "source" },
            source_workload: if inbound {
                self.unknown.clone()
            } else {
                id.workload.clone()
            },
            source_canonical_service: if inbound {
                self.unknown.clone()
            } else {
                id.canonical_service.clone()
            },
            destination_service: if inbound {
                id.canonical_service.clone()
            } else {
                service.clone()
            },
            destination_workload: if inbound {
                id.workload.clone()
            } else {
                self.unknown.clone()
            },
            destination_canonical_service: if inbound {
                id.canonical_service.clone()
            } else {
                canonical
            },
            destination_version: if inbound { id.version.clone() } else { subset },
            response_code: o.status.as_u16(),
            response_flags: o.flag.map(Flag::as_str).unwrap_or("-"),
            grpc_response_status: grpc_status_label(o.grpc_status.as_deref()),
            request_protocol: protocol,
            connection_security_policy: security.connection_security_policy,
            source_principal: security.source_principal,
            destination_principal: security.destination_principal,
        };
        self.duration_ms
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64() * 1000.0);
        self.response_bytes
            .get_or_create(&labels)
            .observe(response_bytes as f64);
        self.request_bytes
            .get_or_create(&labels)
            .observe(request_bytes as f64);
        self.requests.get_or_create(&labels).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        // Envoy's counters go before the OpenMetrics terminator.
        let envoy = self.envoy.prometheus();
        match out.strip_suffix("# EOF\n") {
            Some(head) => format!("{head}{envoy}# EOF\n"),
            None => out + &envoy,
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// gRPC status codes 0..=16 as static labels (no allocation per request); anything else as is.
fn grpc_status_label(status: Option<&str>) -> std::borrow::Cow<'static, str> {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match status {
        None => std::borrow::Cow::Borrowed(""),
        Some(s) => match CODES.iter().find(|c| **c == s) {
            Some(c) => std::borrow::Cow::Borrowed(c),
            None => std::borrow::Cow::Owned(s.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(mutual: bool, peer: Option<&str>, local: Option<&str>) -> ConnSecurity {
        ConnSecurity {
            mutual,
            peer: peer.map(Arc::from),
            local: local.map(Arc::from),
            peer_names: peer.map(str::to_string).into_iter().collect(),
        }
    }

    #[test]
    fn security_labels_as_istio_fills_them() {
        let unknown: Arc<str> = Arc::from("unknown");
        let (a, b) = ("spiffe://td/ns/a/sa/a", "spiffe://td/ns/b/sa/b");
        let label = |inbound, s: Option<&ConnSecurity>| {
            let l = SecurityLabels::new(inbound, s, &unknown);
            (
                l.connection_security_policy,
                l.source_principal.to_string(),
                l.destination_principal.to_string(),
            )
        };
        // Destination: the caller's certificate is the source.
        assert_eq!(
            label(true, Some(&conn(true, Some(a), Some(b)))),
            ("mutual_tls", a.into(), b.into())
        );
        assert_eq!(
            label(true, None),
            ("none", "unknown".into(), "unknown".into())
        );
        // A server-only TLS connection (a gateway's SIMPLE listener) is not mutual.
        assert_eq!(
            label(true, Some(&conn(false, None, None))),
            ("none", "unknown".into(), "unknown".into())
        );
        // Source: the upstream's certificate is the destination; the policy is not its to know.
        assert_eq!(
            label(false, Some(&conn(true, Some(b), Some(a)))),
            ("unknown", a.into(), b.into())
        );
        assert_eq!(
            label(false, None),
            ("unknown", "unknown".into(), "unknown".into())
        );
    }
}
