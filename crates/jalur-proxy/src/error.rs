//! One error type for the request path. Each error knows where the fault lies, whether a retry
//! may help, the status the caller gets, and Envoy's response flag — so responses, metrics,
//! access logs and retries are all decided from one place (after pingora's `Error`).

use std::fmt;

use http::StatusCode;

/// Envoy's response flags (the `response_flags` label and access-log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flag {
    /// No route configured for the request.
    NoRoute,
    /// The route's cluster is not configured.
    NoCluster,
    /// No healthy upstream host.
    NoHealthyUpstream,
    /// Upstream connection failure.
    UpstreamConnectFailure,
    /// Upstream reset after connecting.
    UpstreamReset,
    /// The upstream's response was malformed or ambiguously framed.
    UpstreamProtocolError,
    /// The upstream connection closed before the response was complete (Envoy's `UC`: the
    /// upstream process died, or closed a connection a request was on).
    UpstreamConnectionTermination,
    /// Upstream retry limit exceeded (the last attempt's failure is returned).
    UpstreamRetryLimit,
    /// Circuit breaker overflow.
    UpstreamOverflow,
    /// Upstream request timeout.
    UpstreamTimeout,
    /// The downstream went away before the response completed.
    DownstreamDisconnect,
    /// Fault injection: abort.
    FaultAbort,
    /// Fault injection: delay.
    FaultDelay,
    /// Malformed downstream request.
    DownstreamProtocolError,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::NoRoute => "NR",
            Flag::NoCluster => "NC",
            Flag::NoHealthyUpstream => "UH",
            Flag::UpstreamConnectFailure => "UF",
            Flag::UpstreamReset => "UR",
            Flag::UpstreamProtocolError => "UPE",
            Flag::UpstreamConnectionTermination => "UC",
            Flag::UpstreamRetryLimit => "URX",
            Flag::UpstreamOverflow => "UO",
            Flag::UpstreamTimeout => "UT",
            Flag::DownstreamDisconnect => "DC",
            Flag::FaultAbort => "FI",
            Flag::FaultDelay => "DI",
            Flag::DownstreamProtocolError => "DPE",
        }
    }
}

/// Who is at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Downstream,
    Upstream,
    Config,
}

#[derive(Debug, Clone)]
pub struct ProxyError {
    pub flag: Flag,
    pub source: Source,
    pub status: StatusCode,
    /// A retry (to another host) may succeed.
    pub retryable: bool,
    pub detail: String,
}

impl ProxyError {
    pub fn new(flag: Flag, detail: impl Into<String>) -> ProxyError {
        let (source, status, retryable) = match flag {
            Flag::NoRoute => (Source::Config, StatusCode::NOT_FOUND, false),
            Flag::NoCluster => (Source::Config, StatusCode::SERVICE_UNAVAILABLE, false),
            Flag::NoHealthyUpstream => (Source::Upstream, StatusCode::SERVICE_UNAVAILABLE, false),
            Flag::UpstreamConnectFailure => {
                (Source::Upstream, StatusCode::SERVICE_UNAVAILABLE, true)
            }
            Flag::UpstreamReset | Flag::UpstreamConnectionTermination => {
                (Source::Upstream, StatusCode::SERVICE_UNAVAILABLE, true)
            }
            Flag::UpstreamProtocolError => (Source::Upstream, StatusCode::BAD_GATEWAY, true),
            Flag::UpstreamRetryLimit => (Source::Upstream, StatusCode::SERVICE_UNAVAILABLE, false),
            Flag::UpstreamOverflow => (Source::Upstream, StatusCode::SERVICE_UNAVAILABLE, false),
            Flag::UpstreamTimeout => (Source::Upstream, StatusCode::GATEWAY_TIMEOUT, true),
            Flag::DownstreamDisconnect => (Source::Downstream, StatusCode::BAD_REQUEST, false),
            Flag::FaultAbort => (Source::Config, StatusCode::SERVICE_UNAVAILABLE, false),
            Flag::FaultDelay => (Source::Config, StatusCode::OK, false),
            Flag::DownstreamProtocolError => (Source::Downstream, StatusCode::BAD_REQUEST, false),
        };
        ProxyError {
            flag,
            source,
            status,
            retryable,
            detail: detail.into(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ProxyError {
        self.status = status;
        self
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status,
            self.flag.as_str(),
            self.detail
        )
    }
}

impl std::error::Error for ProxyError {}
