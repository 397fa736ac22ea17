//! Request bodies on their way upstream. When the route retries, a body whose Content-Length
//! says it fits [`MAX_RETRY_BODY`] is read whole first (so a retry or a mirror can send it
//! again); any other body streams upstream as it arrives — a gRPC stream or a slow upload must
//! never wait for its own end — while a copy is kept as long as it fits [`MAX_RETRY_BODY`], so a
//! retry can still resend it (Envoy's model). Either way the upstream sees the body the client
//! sent: its bytes, its trailers, and (on HTTP/1.1) its framing ([`ReqBody::upstream_framing`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use crate::error::{Flag, ProxyError};
use crate::upstream::{Body, BoxError};

/// Responses declaring at most this many bytes are read whole before their head goes back, so
/// one that ends short is a clean 502 (and may be retried) rather than a truncated answer.
pub const MAX_HELD_RESPONSE: u64 = 64 * 1024;

/// A retry can resend a body of up to this size; a larger one is sent once.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;

/// The request's body.
pub enum ReqBody {
    /// The request ended with its head (no body, `Content-Length: 0`, or h2 END_STREAM).
    Empty,
    /// Read whole before the first attempt (a small Content-Length).
    Held {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Streamed as it arrives, with a copy kept while it fits.
    Teed(Arc<Mutex<Tee>>),
    /// No retries on the route: sent once, as it arrives.
    Streaming(Option<Body>),
}

/// The downstream body shared by the attempts that stream it, and the copy that lets a later
/// attempt replay what an earlier one consumed.
pub struct Tee {
    incoming: Incoming,
    kept: Vec<Bytes>,
    kept_len: u64,
    /// More than [`MAX_RETRY_BODY`] went by: the copy was dropped, no replay is possible.
    overflowed: bool,
    /// The downstream body ended (with these trailers, if any).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// The attempt allowed to read; an earlier one still polled by its connection is cut off.
    attempt: u64,
}

impl ReqBody {
    /// Takes the downstream body for sending: read whole first only when `retry` and its
    /// Content-Length fits [`MAX_RETRY_BODY`]; otherwise streamed (with a copy when `retry`).
    pub async fn take(body: Incoming, retry: bool) -> Result<ReqBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(ReqBody::Empty);
        }
        if !retry {
            return Ok(ReqBody::Streaming(Some(boxed(body))));
        }
        if body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_RETRY_BODY)
        {
            let collected = body.collect().await.map_err(read_error)?;
            let trailers = collected.trailers().cloned();
            return Ok(ReqBody::Held {
                data: collected.to_bytes(),
                trailers,
            });
        }
        Ok(ReqBody::Teed(Arc::new(Mutex::new(Tee {
            incoming: body,
            kept: Vec::new(),
            kept_len: 0,
            overflowed: false,
            ended: false,
            trailers: None,
            attempt: 0,
        }))))
    }

    /// The body for one attempt upstream; a streaming body can be sent only once.
    pub fn attempt(&mut self) -> Result<Body, ProxyError> {
        match self {
            ReqBody::Empty => Ok(crate::upstream::empty()),
            ReqBody::Held { data, trailers } => Ok(Replay {
                data: Some(data.clone()).filter(|d| !d.is_empty()),
                trailers: trailers.clone(),
            }
            .boxed_unsync()),
            ReqBody::Teed(tee) => {
                let attempt = {
                    let mut t = lock(tee);
                    if t.overflowed {
                        return Err(ProxyError::new(
                            Flag::UpstreamReset,
                            "the request body outgrew the retry buffer",
                        ));
                    }
                    t.attempt += 1;
                    t.attempt
                };
                Ok(TeeBody {
                    tee: tee.clone(),
                    attempt,
                    replayed: 0,
                    trailers_sent: false,
                }
                .boxed_unsync())
            }
            ReqBody::Streaming(b) => b
                .take()
                .ok_or_else(|| ProxyError::new(Flag::UpstreamReset, "streaming body already sent")),
        }
    }

    /// Whether another attempt can send the body again.
    pub fn can_replay(&self) -> bool {
        match self {
            ReqBody::Empty | ReqBody::Held { .. } => true,
            ReqBody::Teed(tee) => !lock(tee).overflowed,
            ReqBody::Streaming(_) => false,
        }
    }

    /// Data and trailers, for a mirror's copy (bodies read whole before sending).
    pub fn held(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Held { data, trailers } => Some(ReqBody::Held {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            ReqBody::Teed(_) | ReqBody::Streaming(_) => None,
        }
    }

    /// On an HTTP/1.1 upstream, a body that had no Content-Length goes chunked (as it came, or
    /// as HTTP/2 DATA of unknown length) — hyper would otherwise give a held body a
    /// Content-Length, and drop its trailers. Trailers named in `Trailer` travel with it.
    pub fn upstream_framing(&self, headers: &mut HeaderMap) {
        if !matches!(self, ReqBody::Empty) && !headers.contains_key(http::header::CONTENT_LENGTH) {
            headers.insert(
                http::header::TRANSFER_ENCODING,
                http::HeaderValue::from_static("chunked"),
            );
        }
    }
}

/// An upstream response made ready to go back: refused when its framing is ambiguous (both
/// Content-Length and Transfer-Encoding, or several Content-Lengths — hyper lets
/// Transfer-Encoding win; the connection is dropped with the response); read whole when it
/// declares a small length, so a short body is caught here.
pub async fn settle_response(
    resp: http::Response<Incoming>,
    upstream: std::net::SocketAddr,
) -> Result<http::Response<Body>, ProxyError> {
    let headers = resp.headers();
    let lengths = headers.get_all(http::header::CONTENT_LENGTH).iter().count();
    if lengths > 1 || lengths == 1 && headers.contains_key(http::header::TRANSFER_ENCODING) {
        return Err(ProxyError::new(
            Flag::UpstreamProtocolError,
            format!("ambiguous framing in the response from {upstream}: {lengths} Content-Length and Transfer-Encoding {:?}", headers.get(http::header::TRANSFER_ENCODING)),
        ));
    }
    let small = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= MAX_HELD_RESPONSE);
    if !small || resp.body().is_end_stream() {
        return Ok(resp.map(boxed));
    }
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| {
        ProxyError::new(
            Flag::UpstreamProtocolError,
            format!("the response from {upstream} ended before its Content-Length: {e}"),
        )
    })?;
    let trailers = collected.trailers().cloned();
    let replay = Replay {
        data: Some(collected.to_bytes()).filter(|d| !d.is_empty()),
        trailers,
    };
    Ok(http::Response::from_parts(parts, replay.boxed_unsync()))
}

fn boxed(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

/// A client that went away mid-body is a disconnect (DC); a body the framing guard or hyper
/// found malformed is a protocol error (DPE).
fn read_error(e: hyper::Error) -> ProxyError {
    let flag = if e.is_incomplete_message() || e.is_canceled() {
        Flag::DownstreamDisconnect
    } else {
        Flag::DownstreamProtocolError
    };
    ProxyError::new(flag, format!("reading the request body: {e}"))
}

/// A held body sent again: its data, then its trailers. Never ends with the head, so a 0-byte
/// chunked body stays chunked (`0\r\n\r\n`) and an h2 one keeps its DATA frame.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    /// Never exact: the length travels in the request's own Content-Length when it had one,
    /// and a body that came without one (chunked, h2 DATA) must not be given one on the way.
    fn size_hint(&self) -> SizeHint {
        let mut hint = SizeHint::new();
        hint.set_lower(self.data.as_ref().map_or(0, |d| d.len() as u64));
        hint
    }
}

fn lock(tee: &Mutex<Tee>) -> std::sync::MutexGuard<'_, Tee> {
    tee.lock().unwrap_or_else(|p| p.into_inner())
}

/// One attempt's view of a [`Tee`]: what earlier attempts consumed (replayed from the copy),
/// then the rest of the downstream body as it arrives (copied while it fits).
struct TeeBody {
    tee: Arc<Mutex<Tee>>,
    attempt: u64,
    replayed: usize,
    trailers_sent: bool,
}

impl hyper::body::Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // Never held across an await: polling is all that happens under the lock.
        let mut t = lock(&this.tee);
        if t.attempt != this.attempt {
            return Poll::Ready(Some(Err(
                "a later attempt took over the request body".into()
            )));
        }
        if let Some(kept) = t.kept.get(this.replayed).cloned() {
            this.replayed += 1;
            return Poll::Ready(Some(Ok(Frame::data(kept))));
        }
        if t.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(t.trailers.clone().map(|tr| Ok(Frame::trailers(tr))));
        }
        let frame = match Pin::new(&mut t.incoming).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                t.ended = true;
                this.trailers_sent = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if !t.overflowed {
                    t.kept_len += data.len() as u64;
                    if t.kept_len > MAX_RETRY_BODY {
                        t.overflowed = true;
                        t.kept = Vec::new();
                    } else {
                        t.kept.push(data.clone());
                        this.replayed = t.kept.len();
                    }
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(frame) => {
                t.ended = true;
                this.trailers_sent = true;
                t.trailers = frame.into_trailers().ok();
                Poll::Ready(t.trailers.clone().map(|tr| Ok(Frame::trailers(tr))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let t = lock(&self.tee);
        t.ended && self.trailers_sent && self.replayed >= t.kept.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replayed_body_yields_data_then_trailers_every_time() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", http::HeaderValue::from_static("7"));
        let mut held = ReqBody::Held {
            data: Bytes::from_static(b"hello"),
            trailers: Some(trailers),
        };
        for _ in 0..2 {
            let collected = held
                .attempt()
                .expect("held")
                .collect()
                .await
                .expect("replayed");
            assert_eq!(collected.trailers().map(|t| t.len()), Some(1));
            assert_eq!(collected.to_bytes(), "hello");
        }
    }

    #[test]
    fn an_empty_held_body_still_has_a_body() {
        let mut held = ReqBody::Held {
            data: Bytes::new(),
            trailers: None,
        };
        let body = held.attempt().expect("held");
        assert!(
            !body.is_end_stream(),
            "a 0-byte chunked body is not the same as no body"
        );
        let mut headers = HeaderMap::new();
        held.upstream_framing(&mut headers);
        assert_eq!(headers["transfer-encoding"], "chunked");
        let mut headers = HeaderMap::new();
        ReqBody::Empty.upstream_framing(&mut headers);
        assert!(headers.is_empty());
    }
}
