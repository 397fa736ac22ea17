//! A read-side watch on HTTP/1 connections for what hyper forgives but a mesh must refuse: a
//! request head carrying both Content-Length and Transfer-Encoding (hyper, per RFC 9112, lets
//! Transfer-Encoding win; a proxy in front of other parsers must reject it outright, as Envoy
//! does). It frames requests only as far as it safely can: heads, and bodies of a known length;
//! after a chunked body it stops watching that connection (hyper itself still frames correctly).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MAX_HEAD: usize = 64 * 1024;

/// Per-connection verdicts, one per request head seen, in order.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<bool>>,
}

impl Verdicts {
    /// Whether the next request on this connection had conflicting framing headers.
    pub fn next_conflicted(&self) -> bool {
        self.queue
            .lock()
            .map(|mut q| q.pop_front().unwrap_or(false))
            .unwrap_or(false)
    }
}

enum State {
    Head {
        line: Vec<u8>,
        head_len: usize,
        cl: Option<u64>,
        te: bool,
    },
    Body {
        remaining: u64,
    },
    /// HTTP/2, an upgrade, a chunked body, or something unparseable: no more watching.
    Off,
}

pub struct Sniff<T> {
    inner: T,
    state: State,
    verdicts: Arc<Verdicts>,
    first: bool,
}

impl<T> Sniff<T> {
    pub fn new(inner: T) -> (Sniff<T>, Arc<Verdicts>) {
        let verdicts = Arc::new(Verdicts::default());
        (
            Sniff {
                inner,
                state: State::new_head(),
                verdicts: verdicts.clone(),
                first: true,
            },
            verdicts,
        )
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        if self.first && !bytes.is_empty() {
            self.first = false;
            if bytes.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Off;
            }
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::Off => return,
                State::Body { remaining } => {
                    let take = (*remaining).min(bytes.len() as u64) as usize;
                    *remaining -= take as u64;
                    bytes = &bytes[take..];
                    if *remaining == 0 {
                        self.state = State::new_head();
                    }
                }
                State::Head {
                    line,
                    head_len,
                    cl,
                    te,
                } => {
                    let Some(nl) = bytes.iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(bytes);
                        *head_len += bytes.len();
                        if *head_len > MAX_HEAD {
                            self.state = State::Off;
                        }
                        return;
                    };
                    line.extend_from_slice(&bytes[..nl]);
                    *head_len += nl + 1;
                    bytes = &bytes[nl + 1..];
                    let text = std::mem::take(line);
                    let text = text.strip_suffix(b"\r").unwrap_or(&text);
                    if text.is_empty() {
                        if *head_len <= 2 {
                            // Stray CRLF between requests.
                            *head_len = 0;
                            continue;
                        }
                        let (cl, te) = (*cl, *te);
                        if let Ok(mut q) = self.verdicts.queue.lock() {
                            q.push_back(cl.is_some() && te);
                        }
                        self.state = match (cl, te) {
                            (_, true) => State::Off,
                            (Some(n), false) if n > 0 => State::Body { remaining: n },
                            _ => State::new_head(),
                        };
                        continue;
                    }
                    if let Some((name, value)) = text
                        .iter()
                        .position(|b| *b == b':')
                        .map(|i| (&text[..i], &text[i + 1..]))
                    {
                        if name.eq_ignore_ascii_case(b"content-length") {
                            *cl = std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .or(Some(0));
                        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                            *te = true;
                        } else if name.eq_ignore_ascii_case(b"upgrade") {
                            // What follows a 101 is not HTTP.
                            if let Ok(mut q) = self.verdicts.queue.lock() {
                                q.push_back(false);
                            }
                            self.state = State::Off;
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl State {
    fn new_head() -> State {
        State::Head {
            line: Vec::new(),
            head_len: 0,
            cl: None,
            te: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniff<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let new = buf.filled()[before..].to_vec();
            if !matches!(self.state, State::Off) {
                self.observe(&new);
            }
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniff<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[&[u8]]) -> Vec<bool> {
        let (mut s, v) = Sniff::new(());
        for chunk in stream {
            s.observe(chunk);
        }
        let mut out = Vec::new();
        while let Some(x) = v.queue.lock().ok().and_then(|mut q| q.pop_front()) {
            out.push(x);
        }
        out
    }

    #[test]
    fn flags_cl_and_te_in_one_head_across_reads() {
        let got = verdicts(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Len",
            b"gth: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ]);
        assert_eq!(got, vec![true]);
    }

    #[test]
    fn frames_keep_alive_requests_with_bodies() {
        let got = verdicts(&[b"POST /a HTTP/1.1\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert_eq!(
            got,
            vec![false, false],
            "a body that looks like headers is not a head"
        );
    }

    #[test]
    fn http2_is_not_watched() {
        assert!(verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).is_empty());
    }
}
