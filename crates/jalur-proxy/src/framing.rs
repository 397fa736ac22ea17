//! The framing guard in front of hyper on every downstream HTTP/1 connection (plaintext or
//! after TLS). hyper forgives what a proxy in front of other parsers must refuse — both
//! Content-Length and Transfer-Encoding, obfuscated codings, bare LF — and a refusal must hold
//! for every request on a connection, keep-alive or pipelined, in any header order.
//!
//! So hyper reads the connection through [`Guard`], which hands it only bytes the
//! [`parse::Framer`] has judged: whole unambiguous heads, then their bodies as framed. A
//! refused request never reaches hyper: in its place hyper reads a stand-in head, whose
//! [`Verdict`] tells the request path to answer the refusal and close; nothing after it is
//! read. A body found malformed after its head went through fails the connection. After an
//! upgrade request the guard holds the bytes that follow until the request path says whether
//! the protocol switched ([`Verdicts::upgrade_outcome`]). HTTP/2 passes unexamined.
//!
//! The guard also owns the connection's read timers, as Envoy runs them: the header read timeout
//! (`request_headers_timeout`) from the connection's start until its first head is whole, then
//! from the first byte of each later head — a connection that never sends a whole head is closed
//! (slowloris); an idle timeout between requests ([`IDLE_TIMEOUT`], Envoy's 1 h default: a
//! shorter one would race callers' pools reusing the connection); and a body idle timeout
//! ([`BODY_IDLE_TIMEOUT`], Envoy's 5 min stream idle timeout) while a request body stalls. No
//! timer runs while a request is being answered, nor over HTTP/2 or a tunnel.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[doc(hidden)]
pub mod fuzz;
pub mod parse;

pub use parse::{Event, Framer, Rejection};

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A keep-alive connection with no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// A request body that sends nothing for this long fails its connection.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The head hyper reads in place of a refused request; its verdict carries the refusal.
const STAND_IN: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\n\r\n";

/// What the request path must do with the next HTTP/1 request hyper hands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it. `upgrade`: report the outcome with [`Verdicts::upgrade_outcome`].
    Pass { upgrade: bool },
    /// Answer the refusal, with `Connection: close`.
    Reject(Rejection),
}

/// Shared by a [`Guard`] and the request path of its connection.
#[derive(Debug, Default)]
pub struct Verdicts {
    inner: Mutex<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: VecDeque<Verdict>,
    upgraded: Option<bool>,
    waker: Option<Waker>,
    aborted: Option<Rejection>,
    /// Which timer closed the connection (a metric reason).
    timed_out: Option<&'static str>,
    /// Requests the request path has answered (their response head produced).
    answered: u64,
}

impl Verdicts {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict on the next HTTP/1 request, in the order hyper reads them. hyper only reads
    /// heads judged first, so the queue cannot run dry; if it ever did, the request is refused.
    pub fn next(&self) -> Verdict {
        self.lock()
            .queue
            .pop_front()
            .unwrap_or(Verdict::Reject(Rejection {
                reason: "unjudged",
                status: http::StatusCode::BAD_REQUEST,
            }))
    }

    fn answered(&self) {
        self.lock().answered += 1;
    }

    /// Whether the upgrade request just served switched protocols (a 101 went back).
    pub fn upgrade_outcome(&self, upgraded: bool) {
        let waker = {
            let mut s = self.lock();
            s.upgraded = Some(upgraded);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// A body found malformed after its head was served (the connection failed on it).
    pub fn aborted(&self) -> Option<Rejection> {
        self.lock().aborted
    }

    /// The timer that closed the connection, if one did: `header_timeout`, `idle_timeout` or
    /// `body_idle_timeout`.
    pub fn timed_out(&self) -> Option<&'static str> {
        self.lock().timed_out
    }
}

/// A response body that tells the guard when it is done (or dropped): until then the
/// connection is busy answering, and no read timer runs.
pub struct Answering {
    inner: crate::upstream::Body,
    verdicts: Option<std::sync::Arc<Verdicts>>,
}

impl Answering {
    pub fn new(inner: crate::upstream::Body, verdicts: std::sync::Arc<Verdicts>) -> Answering {
        Answering {
            inner,
            verdicts: Some(verdicts),
        }
    }

    fn done(&mut self) {
        if let Some(v) = self.verdicts.take() {
            v.answered();
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.done();
    }
}

impl hyper::body::Body for Answering {
    type Data = bytes::Bytes;
    type Error = crate::upstream::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.done();
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

/// See the module documentation.
pub struct Guard<T> {
    io: T,
    /// Bytes read and not yet handed to hyper; the first `ready` of them are judged.
    buf: BytesMut,
    ready: usize,
    framer: Framer,
    verdicts: std::sync::Arc<Verdicts>,
    eof: bool,
    header_timeout: Duration,
    /// The running read timer and what it times (see the module documentation).
    deadline: Option<(Wait, Pin<Box<tokio::time::Sleep>>)>,
    heads: u64,
}

/// What a read timer is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// A whole head: not reset by bytes arriving.
    Head,
    /// The next request: reset by bytes arriving.
    Idle,
    /// More of a body: reset by bytes arriving.
    Body,
}

impl Wait {
    fn reason(self) -> &'static str {
        match self {
            Wait::Head => "header_timeout",
            Wait::Idle => "idle_timeout",
            Wait::Body => "body_idle_timeout",
        }
    }
}

impl<T> Guard<T> {
    pub fn new(io: T, header_timeout: Duration) -> (Guard<T>, std::sync::Arc<Verdicts>) {
        let verdicts = std::sync::Arc::new(Verdicts::default());
        let guard = Guard {
            io,
            buf: BytesMut::new(),
            ready: 0,
            framer: Framer::new(),
            verdicts: verdicts.clone(),
            eof: false,
            header_timeout,
            deadline: None,
            heads: 0,
        };
        (guard, verdicts)
    }

    /// What the connection waits for now, if anything is timed.
    fn waiting_for(&self) -> Option<(Wait, Duration)> {
        if self.framer.is_passthrough() || self.framer.is_awaiting_upgrade() {
            return None;
        }
        if !self.framer.is_awaiting_head() {
            return Some((Wait::Body, BODY_IDLE_TIMEOUT));
        }
        if self.heads > self.verdicts.lock().answered {
            return None; // hyper is answering a request; the next head waits for it
        }
        if self.heads == 0 || !self.buf.is_empty() {
            Some((Wait::Head, self.header_timeout))
        } else {
            Some((Wait::Idle, IDLE_TIMEOUT))
        }
    }

    /// Polls the timer of what the connection waits for (started when that wait began). The
    /// reason, once it has passed.
    fn overdue(&mut self, cx: &mut Context<'_>) -> Option<&'static str> {
        let Some((wait, timeout)) = self.waiting_for() else {
            self.deadline = None;
            return None;
        };
        if self.deadline.as_ref().is_none_or(|(w, _)| *w != wait) {
            self.deadline = Some((wait, Box::pin(tokio::time::sleep(timeout))));
        }
        let (_, sleep) = self.deadline.as_mut()?;
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.verdicts.lock().timed_out = Some(wait.reason());
        Some(wait.reason())
    }

    /// Judges the buffered bytes once. `true`: something changed, look again.
    fn judge(&mut self) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let a = self.framer.advance(&self.buf);
        self.ready = a.pass;
        match a.event {
            None => a.pass > 0,
            Some(Event::Request { upgrade }) => {
                self.heads += 1;
                self.verdicts
                    .lock()
                    .queue
                    .push_back(Verdict::Pass { upgrade });
                true
            }
            Some(Event::Reject(r)) => {
                self.verdicts.lock().queue.push_back(Verdict::Reject(r));
                self.buf.clear();
                self.buf.extend_from_slice(STAND_IN);
                self.ready = STAND_IN.len();
                true
            }
            Some(Event::Abort(r)) => {
                self.verdicts.lock().aborted = Some(r);
                true
            }
        }
    }

    /// An upgrade's outcome, once known; registers `waker` until then.
    fn upgrade_outcome(&self, waker: &Waker) -> Option<bool> {
        let mut s = self.verdicts.lock();
        match s.upgraded.take() {
            Some(outcome) => Some(outcome),
            None => {
                s.waker = Some(waker.clone());
                None
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.framer.is_passthrough() && this.buf.is_empty() {
                if this.buf.capacity() > 0 {
                    // HTTP/2 or a tunnel: the buffer is not needed again.
                    this.buf = BytesMut::new();
                    this.deadline = None;
                }
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            if this.framer.is_awaiting_upgrade() {
                match this.upgrade_outcome(cx.waker()) {
                    Some(true) => this.framer.passthrough(),
                    Some(false) => this.framer.resume(),
                    None => return Poll::Pending,
                }
                continue;
            }
            if this.framer.is_stopped() {
                return match this.verdicts.aborted() {
                    Some(r) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("malformed request body: {}", r.reason),
                    ))),
                    // Refused: hyper answers the stand-in and closes; nothing more is read.
                    None => Poll::Pending,
                };
            }
            if this.judge() {
                continue;
            }
            if this.eof {
                // Whatever is left is an incomplete head: hyper sees the end of the stream.
                return Poll::Ready(Ok(()));
            }
            this.buf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    return match this.overdue(cx) {
                        Some(reason) => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("connection closed: {reason}"),
                        ))),
                        None => Poll::Pending,
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {
                    // Bytes arrived: an idle or body wait starts over; a head's does not.
                    if this
                        .deadline
                        .as_ref()
                        .is_some_and(|(w, _)| *w != Wait::Head)
                    {
                        this.deadline = None;
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything hyper would read from a guard over `input`, and the verdicts it queued.
    async fn through(input: &[u8]) -> (Vec<u8>, Vec<Verdict>) {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, verdicts) = Guard::new(server, Duration::from_secs(10));
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            for part in input.chunks(7) {
                client.write_all(part).await.expect("write");
            }
            client
        });
        let mut seen = Vec::new();
        let mut chunk = [0u8; 100];
        loop {
            match tokio::time::timeout(
                std::time::Duration::from_millis(200),
                guard.read(&mut chunk),
            )
            .await
            {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
            }
        }
        drop(writer.await);
        let mut queued = Vec::new();
        while let Some(v) = verdicts.lock().queue.pop_front() {
            queued.push(v);
        }
        (seen, queued)
    }

    #[tokio::test]
    async fn a_refused_request_is_replaced_and_nothing_after_it_is_read() {
        let good = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let bad = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let (seen, verdicts) = through(&[&good[..], bad].concat()).await;
        assert_eq!(seen, [&good[..], STAND_IN].concat());
        assert_eq!(
            verdicts,
            vec![
                Verdict::Pass { upgrade: false },
                Verdict::Reject(Rejection {
                    reason: "content_length_and_transfer_encoding",
                    status: http::StatusCode::BAD_REQUEST
                })
            ]
        );
    }

    /// Stands for the request path answering one request on the guarded connection.
    fn answer(verdicts: &std::sync::Arc<Verdicts>) {
        drop(Answering::new(crate::upstream::empty(), verdicts.clone()));
    }

    #[tokio::test(start_paused = true)]
    async fn read_timers_follow_what_the_connection_waits_for() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, verdicts) = Guard::new(server, Duration::from_secs(10));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut chunk = [0u8; 256];
        assert!(guard.read(&mut chunk).await.expect("the first head") > 0);
        // Busy answering (a long download, say): nothing is timed, however long it takes.
        let busy = tokio::time::timeout(Duration::from_secs(7200), guard.read(&mut chunk)).await;
        assert!(busy.is_err(), "a busy connection was timed: {busy:?}");
        answer(&verdicts);
        // Idle between requests: far longer than the header timeout is fine...
        let idle = tokio::time::timeout(Duration::from_secs(600), guard.read(&mut chunk)).await;
        assert!(
            idle.is_err(),
            "an idle keep-alive connection was cut early: {idle:?}"
        );
        // ...and a head that starts and stalls is cut at the header timeout.
        client.write_all(b"GET / HT").await.expect("write");
        let started = tokio::time::Instant::now();
        let err = guard.read(&mut chunk).await.expect_err("a stalled head");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert_eq!(verdicts.timed_out(), Some("header_timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_idle_and_stalled_body_connections_are_cut_at_their_timeouts() {
        let mut chunk = [0u8; 256];
        // Never sends anything: the header timeout.
        let (_quiet, server) = tokio::io::duplex(1024);
        let (mut guard, v) = Guard::new(server, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        guard.read(&mut chunk).await.expect_err("nothing sent");
        assert_eq!(
            (started.elapsed(), v.timed_out()),
            (Duration::from_secs(10), Some("header_timeout"))
        );

        // Answered, then idle for an hour: the idle timeout.
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, v) = Guard::new(server, Duration::from_secs(10));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".len();
        guard
            .read_exact(&mut chunk[..head])
            .await
            .expect("the head");
        answer(&v);
        let started = tokio::time::Instant::now();
        guard.read(&mut chunk).await.expect_err("idle");
        assert_eq!(
            (started.elapsed(), v.timed_out()),
            (IDLE_TIMEOUT, Some("idle_timeout"))
        );

        // A body that stops half-way: the body idle timeout, restarted by every byte.
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, v) = Guard::new(server, Duration::from_secs(10));
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            .await
            .expect("write");
        while guard
            .read(&mut chunk)
            .await
            .expect("head and part of the body")
            > 0
        {
            if guard.framer.is_awaiting_head() || guard.buf.is_empty() && guard.ready == 0 {
                break;
            }
        }
        tokio::time::sleep(BODY_IDLE_TIMEOUT / 2).await;
        client.write_all(b"d").await.expect("write");
        assert_eq!(guard.read(&mut chunk).await.expect("a byte more"), 1);
        let started = tokio::time::Instant::now();
        guard.read(&mut chunk).await.expect_err("stalled body");
        assert_eq!(
            (started.elapsed(), v.timed_out()),
            (BODY_IDLE_TIMEOUT, Some("body_idle_timeout"))
        );
    }

    #[tokio::test]
    async fn an_upgrade_outcome_wakes_the_held_connection() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, verdicts) = Guard::new(server, Duration::from_secs(10));
        let head =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
        client.write_all(head).await.expect("write");
        client.write_all(b"tunnel bytes").await.expect("write");
        let mut seen = vec![0u8; head.len()];
        guard.read_exact(&mut seen).await.expect("the upgrade head");
        assert_eq!(verdicts.next(), Verdict::Pass { upgrade: true });
        let waker = verdicts.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            waker.upgrade_outcome(true);
        });
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), guard.read(&mut chunk))
            .await
            .expect("woken by the outcome")
            .expect("read");
        assert_eq!(&chunk[..n], b"tunnel bytes");
    }

    #[tokio::test]
    async fn a_malformed_chunk_fails_the_read_after_the_good_bytes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, verdicts) = Guard::new(server, Duration::from_secs(10));
        client
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        let mut chunk = [0u8; 256];
        let error = loop {
            match guard.read(&mut chunk).await {
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(e) => break e,
            }
        };
        assert!(seen.ends_with(b"3\r\nabc\r\n"), "{seen:?}");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            verdicts.aborted().map(|r| r.reason),
            Some("invalid_chunk_size")
        );
    }
}
