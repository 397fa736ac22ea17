//! Metrics and the access log for one request, recorded when its response body ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Outcome;
use crate::error::Flag;
use crate::runtime::{ListenerCtx, Runtime};
use crate::upstream::{Body, BoxError};

/// A response body that counts itself and records the request in the metrics when it is done
/// (or dropped half-way: the downstream went away, flag DC), so gRPC's status, which travels in
/// the trailers, and the real duration of a streamed response are what the metrics show.
pub(super) struct Recorded {
    pub(super) inner: Body,
    pub(super) record: Option<Record>,
}

pub(super) struct AccessEntry {
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) authority: String,
    pub(super) peer: SocketAddr,
}

pub(super) struct Record {
    pub(super) access: Option<AccessEntry>,
    pub(super) rt: Arc<Runtime>,
    pub(super) ln: Arc<ListenerCtx>,
    pub(super) outcome: Outcome,
    pub(super) protocol: &'static str,
    pub(super) started: Instant,
    pub(super) request_size: u64,
    pub(super) response_size: u64,
    pub(super) finished: bool,
}

impl hyper::body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(r) = self.record.as_mut() {
            match &poll {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        r.response_size += data.len() as u64;
                    } else if let Some(status) =
                        frame.trailers_ref().and_then(|t| t.get("grpc-status"))
                    {
                        r.outcome.grpc_status = status.to_str().ok().map(str::to_string);
                    }
                }
                std::task::Poll::Ready(None) => r.finished = true,
                std::task::Poll::Ready(Some(Err(_))) => {
                    r.outcome.flag = r.outcome.flag.or(Some(Flag::UpstreamReset))
                }
                std::task::Poll::Pending => {}
            }
        }
        if matches!(poll, std::task::Poll::Ready(None)) {
            self.record.take();
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // An empty body may never be polled: it is done if the inner body says so.
        if let Some(r) = self.record.as_mut() {
            r.finished |= hyper::body::Body::is_end_stream(&self.inner);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.finished && self.outcome.flag.is_none() {
            self.outcome.flag = Some(Flag::DownstreamDisconnect);
        }
        let elapsed = self.started.elapsed();
        if let Some(a) = &self.access {
            tracing::info!(
                target: "jalur::access",
                listener = %self.ln.name,
                method = %a.method,
                authority = %a.authority,
                path = %a.path,
                peer = %a.peer,
                status = self.outcome.status.as_u16(),
                flags = self.outcome.flag.map(Flag::as_str).unwrap_or("-"),
                upstream_cluster = self.outcome.cluster.as_ref().map(|c| &*c.name).unwrap_or("-"),
                grpc_status = self.outcome.grpc_status.as_deref().unwrap_or("-"),
                bytes_received = self.request_size,
                bytes_sent = self.response_size,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                protocol = self.protocol,
                details = self.outcome.details.as_deref().unwrap_or("-"),
            );
        }
        self.rt.record(
            &self.ln,
            &self.outcome,
            self.protocol,
            elapsed,
            self.request_size,
            self.response_size,
        );
    }
}
