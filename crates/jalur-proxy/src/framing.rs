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
//! The guard also owns the header read timeout, as Envoy's `request_headers_timeout` runs: from
//! the connection's start until its first head is whole, then from the first byte of each later
//! head. A keep-alive connection idle between requests is not timed (closing it would race the
//! caller's pool reusing it); one that never sends a whole head is closed (slowloris).

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
    timed_out: bool,
}

impl Verdicts {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict on the next HTTP/1 request, in the order hyper reads them.
    pub fn next(&self) -> Verdict {
        self.lock()
            .queue
            .pop_front()
            .unwrap_or(Verdict::Pass { upgrade: false })
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

    /// The connection was closed for not sending a whole head in time.
    pub fn timed_out(&self) -> bool {
        self.lock().timed_out
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
    /// Running while a head is awaited (see the module documentation).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    heads: u64,
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

    /// Polls the header read deadline while a head is awaited: before the first one, or once a
    /// later one has begun to arrive. `true` when it has passed.
    fn head_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let timed = self.framer.is_awaiting_head() && (self.heads == 0 || !self.buf.is_empty());
        if !timed {
            self.deadline = None;
            return false;
        }
        let timeout = self.header_timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            self.verdicts.lock().timed_out = true;
            return true;
        }
        false
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
                self.deadline = None;
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
                Poll::Pending if this.head_overdue(cx) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no whole request head within {:?}", this.header_timeout),
                    )))
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
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

    #[tokio::test(start_paused = true)]
    async fn a_head_must_be_whole_in_time_but_an_idle_keep_alive_connection_is_not_timed() {
        let (mut client, server) = tokio::io::duplex(1024);
        let (mut guard, verdicts) = Guard::new(server, Duration::from_secs(10));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut chunk = [0u8; 256];
        let n = guard.read(&mut chunk).await.expect("the first head");
        assert!(n > 0);
        // Idle between requests for far longer than the timeout: still open.
        let idle = tokio::time::timeout(Duration::from_secs(60), guard.read(&mut chunk)).await;
        assert!(
            idle.is_err(),
            "an idle keep-alive connection was timed: {idle:?}"
        );
        // A head that starts and stalls is cut at the timeout.
        client.write_all(b"GET / HT").await.expect("write");
        let started = tokio::time::Instant::now();
        let err = guard.read(&mut chunk).await.expect_err("a stalled head");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(verdicts.timed_out());

        // A connection that never sends anything is cut too.
        let (_quiet, server) = tokio::io::duplex(1024);
        let (mut guard, _) = Guard::new(server, Duration::from_secs(10));
        let err = guard.read(&mut chunk).await.expect_err("nothing sent");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
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
