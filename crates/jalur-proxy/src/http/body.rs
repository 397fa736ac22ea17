//! Request bodies on their way upstream. A body that fits [`MAX_RETRY_BODY`] is held whole —
//! data and trailers — so a retry can send it again; a larger one is forwarded as it comes,
//! after the part already read. Either way the upstream sees the body the client sent: its
//! bytes, its trailers, and (on HTTP/1.1) its framing, decided by [`ReqBody::upstream_framing`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};

use crate::error::{Flag, ProxyError};
use crate::upstream::{Body, BoxError};

/// Responses declaring at most this many bytes are read whole before their head goes back, so
/// one that ends short is a clean 502 (and may be retried) rather than a truncated answer.
pub const MAX_HELD_RESPONSE: u64 = 64 * 1024;

/// Bodies up to this size are held so the request can be retried; larger or streaming
/// bodies (gRPC streams) are forwarded as they come, without retries.
pub const MAX_RETRY_BODY: u64 = 64 * 1024;

/// The request's body: none, held whole (can be sent again), or streaming (sent once).
pub enum ReqBody {
    /// The request ended with its head (no body, `Content-Length: 0`, or h2 END_STREAM).
    Empty,
    Held {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    Streaming(Option<Body>),
}

impl ReqBody {
    /// Reads `body` up to [`MAX_RETRY_BODY`] when `hold` (the route retries), whatever its
    /// framing: Content-Length, chunked or HTTP/2 DATA.
    pub async fn take(mut body: Incoming, hold: bool) -> Result<ReqBody, ProxyError> {
        if body.is_end_stream() {
            return Ok(ReqBody::Empty);
        }
        if !hold || body.size_hint().lower() > MAX_RETRY_BODY {
            return Ok(ReqBody::Streaming(Some(boxed(body))));
        }
        let mut data = BytesMut::new();
        loop {
            let frame = match body.frame().await {
                None => {
                    return Ok(ReqBody::Held {
                        data: data.freeze(),
                        trailers: None,
                    })
                }
                Some(frame) => frame.map_err(read_error)?,
            };
            match frame.into_data() {
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    if data.len() as u64 > MAX_RETRY_BODY {
                        let resumed = Resumed {
                            held: Some(data.freeze()),
                            rest: body,
                        };
                        return Ok(ReqBody::Streaming(Some(resumed.boxed_unsync())));
                    }
                }
                Err(frame) => {
                    return Ok(ReqBody::Held {
                        data: data.freeze(),
                        trailers: frame.into_trailers().ok(),
                    })
                }
            }
        }
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
            ReqBody::Streaming(b) => b
                .take()
                .ok_or_else(|| ProxyError::new(Flag::UpstreamReset, "streaming body already sent")),
        }
    }

    /// Whether the body is held (a retry may send it again).
    pub fn is_held(&self) -> bool {
        !matches!(self, ReqBody::Streaming(_))
    }

    /// Data and trailers, for a mirror's copy (only held bodies are mirrored).
    pub fn held(&self) -> Option<ReqBody> {
        match self {
            ReqBody::Empty => Some(ReqBody::Empty),
            ReqBody::Held { data, trailers } => Some(ReqBody::Held {
                data: data.clone(),
                trailers: trailers.clone(),
            }),
            ReqBody::Streaming(_) => None,
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

fn read_error(e: hyper::Error) -> ProxyError {
    ProxyError::new(
        Flag::DownstreamProtocolError,
        format!("reading the request body: {e}"),
    )
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

/// A body that outgrew [`MAX_RETRY_BODY`] while being held: what was read, then the rest.
struct Resumed {
    held: Option<Bytes>,
    rest: Incoming,
}

impl hyper::body::Body for Resumed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(held) = self.held.take() {
            return Poll::Ready(Some(Ok(Frame::data(held))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + held);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + held);
        }
        hint
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
