//! Connections to upstream endpoints: one pooled hyper client per cluster, speaking the
//! cluster's protocol (HTTP/1.1 keep-alive or HTTP/2 multiplexed, h2c). The pool is keyed by
//! endpoint address, so each endpoint keeps its own warm connections.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Cluster, UpstreamProtocol};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Request and response bodies on both sides of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[derive(Clone, Debug)]
pub struct Upstream {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
    protocol: UpstreamProtocol,
}

impl Upstream {
    pub fn new(cluster: &Cluster) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cluster.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let idle = cluster.idle_timeout.unwrap_or(Duration::from_secs(60));
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(1024)
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .http2_only(true)
            .http2_keep_alive_interval(Some(Duration::from_secs(30)))
            .build(connector);
        Upstream {
            h1,
            h2,
            protocol: cluster.protocol,
        }
    }

    /// The client for a request that arrived over HTTP/2 (`downstream_h2`) or HTTP/1.
    pub fn client(&self, downstream_h2: bool) -> &Client<HttpConnector, Body> {
        if self.is_h2(downstream_h2) {
            &self.h2
        } else {
            &self.h1
        }
    }

    /// Whether such a request goes upstream over HTTP/2.
    pub fn is_h2(&self, downstream_h2: bool) -> bool {
        match self.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Downstream => downstream_h2,
        }
    }
}
