//! HTTP on the wire, for tests that compare bytes: a backend that records every byte it
//! receives and every request it can frame ([`Recorder`]: raw HTTP/1.1, or h2c through hyper),
//! and a client that writes exact bytes and reads back whatever responses come ([`exchange`]).
//!
//! The HTTP/1.1 recorder frames requests itself (heads with `httparse`, bodies by
//! Content-Length or chunked) so it sees exactly what a proxy sent, framing included; anything
//! it cannot frame unambiguously is recorded as an error, which tests assert never happens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How a request's body was framed on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No Content-Length, no Transfer-Encoding (HTTP/1), or END_STREAM on the headers (h2).
    None,
    Length(u64),
    Chunked,
    /// HTTP/2 DATA frames without a content-length header.
    H2Data,
}

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
    pub version: String,
    /// Names lowercased, in arrival order (HTTP/2 pseudo-headers excluded).
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The connection it came on (numbered in accept order).
    pub conn: u64,
}

impl Recorded {
    /// Every value of header `name` (lowercase).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).first().copied()
    }
}

#[derive(Default)]
struct Log {
    /// Every byte received since the last clear, by connection.
    raw: std::collections::BTreeMap<u64, Vec<u8>>,
    connections: u64,
    requests: Vec<Recorded>,
    errors: Vec<String>,
    /// Raw responses to send next (HTTP/1 recorder), one per request; then the default.
    script: std::collections::VecDeque<Vec<u8>>,
}

/// The default answer: `200`, body `ok`.
pub const OK_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// A backend that records what it receives. Stops when dropped.
pub struct Recorder {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl Recorder {
    /// An HTTP/1.1 backend framing requests itself; answers [`OK_RESPONSE`] (or the script).
    pub async fn h1() -> Recorder {
        Recorder::start(false).await
    }

    /// A cleartext HTTP/2 (prior knowledge) backend; answers 200 `ok`.
    pub async fn h2c() -> Recorder {
        Recorder::start(true).await
    }

    async fn start(h2: bool) -> Recorder {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|e| panic!("recorder: cannot bind loopback: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("recorder: no local address: {e}"));
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = log.clone();
        let task = tokio::spawn(jalur_demo::app::accept_loop(
            listener,
            "recorder".to_string(),
            move |stream| {
                let log = shared.clone();
                async move {
                    if h2 {
                        serve_h2(stream, log).await
                    } else {
                        serve_h1(stream, log).await
                    }
                }
            },
        ));
        Recorder { addr, log, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.log)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log().requests.clone()
    }

    /// Every byte received since the last clear, by connection (numbered in accept order); for
    /// the h2c recorder, the DATA of each stream as it arrived.
    pub fn raw(&self) -> std::collections::BTreeMap<u64, Vec<u8>> {
        self.log().raw.clone()
    }

    /// What the recorder could not frame (a test asserts this stays empty).
    pub fn errors(&self) -> Vec<String> {
        self.log().errors.clone()
    }

    /// Forgets everything recorded so far.
    pub fn clear(&self) {
        let mut log = self.log();
        log.raw.clear();
        log.requests.clear();
        log.errors.clear();
    }

    /// Answers the next requests with these raw responses, one each, in order (HTTP/1 only).
    /// One containing `connection: close` closes the connection after it is written.
    pub fn script(&self, responses: impl IntoIterator<Item = Vec<u8>>) {
        self.log().script.extend(responses);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(log: &Mutex<Log>) -> MutexGuard<'_, Log> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Frames HTTP/1 requests from `stream`, records them, answers each.
async fn serve_h1(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
    let conn = {
        let mut l = lock(&log);
        l.connections += 1;
        l.connections
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let request = match read_request(&mut stream, &mut buf, &log, conn).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                lock(&log).errors.push(e);
                return;
            }
        };
        let close = request
            .header_all("connection")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("close"));
        let response = {
            let mut l = lock(&log);
            l.requests.push(request);
            l.script.pop_front()
        };
        let response = response.unwrap_or_else(|| OK_RESPONSE.to_vec());
        // A scripted answer saying `connection: close` is followed by the close.
        let answer_closes = String::from_utf8_lossy(&response)
            .to_ascii_lowercase()
            .contains("connection: close");
        if stream.write_all(&response).await.is_err() || close || answer_closes {
            return;
        }
    }
}

/// Reads more bytes into `buf` (and the connection's raw log). `Ok(false)` at EOF.
async fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    log: &Mutex<Log>,
    conn: u64,
) -> Result<bool, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    lock(log)
        .raw
        .entry(conn)
        .or_default()
        .extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    log: &Mutex<Log>,
    conn: u64,
) -> Result<Option<Recorded>, String> {
    let (head_len, mut request) = loop {
        if let Some(parsed) = parse_head(buf)? {
            break parsed;
        }
        if !fill(stream, buf, log, conn).await? {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(format!("connection ended inside a head: {buf:?}"))
            };
        }
    };
    buf.drain(..head_len);
    request.conn = conn;
    let te = request.header_all("transfer-encoding");
    let cl = request.header_all("content-length");
    request.framing = match (te.as_slice(), cl.as_slice()) {
        ([], []) => Framing::None,
        ([], [n]) => Framing::Length(n.parse().map_err(|_| format!("bad content-length {n:?}"))?),
        ([t], []) if t.eq_ignore_ascii_case("chunked") => Framing::Chunked,
        _ => return Err(format!("ambiguous framing: te {te:?}, cl {cl:?}")),
    };
    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|e| format!("write 100: {e}"))?;
    }
    match request.framing.clone() {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| "length overflows".to_string())?;
            while buf.len() < n {
                if !fill(stream, buf, log, conn).await? {
                    return Err(format!("body ended after {} of {n} bytes", buf.len()));
                }
            }
            request.body = buf.drain(..n).collect();
        }
        Framing::Chunked => loop {
            match decode_chunked(buf)? {
                Some((used, body, trailers)) => {
                    buf.drain(..used);
                    request.body = body;
                    request.trailers = trailers;
                    break;
                }
                None => {
                    if !fill(stream, buf, log, conn).await? {
                        return Err("connection ended inside a chunked body".into());
                    }
                }
            }
        },
        Framing::None | Framing::H2Data => {}
    }
    Ok(Some(request))
}

/// A complete head at the start of `buf`: its length and the request (framing not set yet).
fn parse_head(buf: &[u8]) -> Result<Option<(usize, Recorded)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("unparseable head ({e}): {buf:?}")),
    };
    let recorded = Recorded {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        version: format!("HTTP/1.{}", req.version.unwrap_or(1)),
        headers: pairs(req.headers),
        framing: Framing::None,
        body: Vec::new(),
        trailers: Vec::new(),
        conn: 0,
    };
    Ok(Some((len, recorded)))
}

fn pairs(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

type Decoded = (usize, Vec<u8>, Vec<(String, String)>);

/// Decodes a whole chunked body at the start of `buf`: bytes used, the data, the trailers.
/// `None` when more bytes are needed. Strict: hex sizes, CRLF everywhere.
pub fn decode_chunked(buf: &[u8]) -> Result<Option<Decoded>, String> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = &buf[at..at + line_end];
        let size_text = line.split(|b| *b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_text).map_err(|_| "chunk size not text")?;
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        at += line_end + 2;
        if size == 0 {
            break;
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
    let mut trailers = Vec::new();
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = &buf[at..at + line_end];
        at += line_end + 2;
        if line.is_empty() {
            return Ok(Some((at, body, trailers)));
        }
        let text = String::from_utf8_lossy(line);
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| format!("bad trailer line {text:?}"))?;
        trailers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

async fn serve_h2(stream: TcpStream, log: Arc<Mutex<Log>>) {
    let service = service_fn(move |req: hyper::Request<Incoming>| {
        let log = log.clone();
        async move {
            // Each stream's DATA goes to `raw` as it arrives, under a number of its own.
            let stream_id = {
                let mut l = lock(&log);
                l.connections += 1;
                l.connections
            };
            let (parts, body) = req.into_parts();
            let ended = hyper::body::Body::is_end_stream(&body);
            let mut data = Vec::new();
            let mut trailers = Vec::new();
            let mut body = body;
            let mut error = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(bytes) => {
                            lock(&log)
                                .raw
                                .entry(stream_id)
                                .or_default()
                                .extend_from_slice(&bytes);
                            data.extend_from_slice(&bytes)
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                trailers = header_pairs(&t);
                            }
                        }
                    },
                    Err(e) => {
                        error = Some(format!("h2 body: {e}"));
                        break;
                    }
                }
            }
            let headers = header_pairs(&parts.headers);
            let framing = match headers.iter().find(|(n, _)| n == "content-length") {
                Some((_, n)) => Framing::Length(n.parse().unwrap_or(u64::MAX)),
                None if ended => Framing::None,
                None => Framing::H2Data,
            };
            let mut l = lock(&log);
            match error {
                Some(e) => l.errors.push(e),
                None => l.requests.push(Recorded {
                    method: parts.method.to_string(),
                    target: parts.uri.to_string(),
                    version: "HTTP/2".into(),
                    headers,
                    framing,
                    body: data,
                    trailers,
                    conn: 0,
                }),
            }
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn header_pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// One response as the client read it.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What came back on one connection.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    /// Final responses (1xx skipped), in order.
    pub responses: Vec<RawResponse>,
    /// The peer closed the connection (EOF or reset) before the reading stopped.
    pub closed: bool,
    /// Bytes after the last response that did not parse as one.
    pub rest: Vec<u8>,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

/// How long [`exchange`] waits for the connection to close once it has `expect` responses.
pub const CLOSE_GRACE: Duration = Duration::from_millis(300);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes `bytes` to `addr` on a fresh connection, then reads responses until the peer closes,
/// or until `expect` final responses arrived and nothing more came within [`CLOSE_GRACE`].
pub async fn exchange(addr: SocketAddr, bytes: &[u8], expect: usize) -> Exchange {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    send_and_read(&mut stream, bytes, expect).await
}

/// [`exchange`] on a connection already open (the second request of a keep-alive one).
pub async fn send_and_read(stream: &mut TcpStream, bytes: &[u8], expect: usize) -> Exchange {
    // A peer may answer and close before it read everything: a failed write is part of the
    // answer, not a test failure.
    let _ = stream.write_all(bytes).await;
    read_responses(stream, expect).await
}

/// Sends a head with `Expect: 100-continue`, waits for the interim `100` (or a final answer),
/// then the body; returns the final responses.
pub async fn exchange_expect(addr: SocketAddr, head: &[u8], body: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let _ = stream.write_all(head).await;
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => {
                return Exchange {
                    closed: true,
                    rest: buf,
                    ..Exchange::default()
                }
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.starts_with(b"HTTP/1.1 100") && find_crlf_crlf(&buf).is_some() {
            break;
        }
        if !buf.starts_with(b"HTTP/1.1 100") && !b"HTTP/1.1 100".starts_with(&buf) {
            // A final answer instead of 100: the body is not wanted.
            let mut ex = parse_responses(&buf);
            ex.closed = true;
            return ex;
        }
    }
    let _ = stream.write_all(body).await;
    read_responses(&mut stream, 1).await
}

async fn read_responses(stream: &mut TcpStream, expect: usize) -> Exchange {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    let mut closed = false;
    loop {
        let have = parse_responses(&buf).responses.len();
        let wait = if have >= expect {
            tokio::time::Instant::now() + CLOSE_GRACE
        } else {
            deadline
        };
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout_at(wait.min(deadline), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let mut ex = parse_responses(&buf);
    ex.closed = closed;
    ex
}

fn find_crlf_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Splits `buf` into complete responses (1xx skipped); what does not parse goes to `rest`.
pub fn parse_responses(buf: &[u8]) -> Exchange {
    let mut ex = Exchange::default();
    let mut at = 0;
    while at < buf.len() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(&buf[at..]) else {
            break;
        };
        let status = resp.code.unwrap_or(0);
        let headers = pairs(resp.headers);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let start = at + len;
        let (used, body) = if (100..200).contains(&status) || status == 204 || status == 304 {
            (0, Vec::new())
        } else if find("transfer-encoding").is_some() {
            match decode_chunked(&buf[start..]) {
                Ok(Some((used, body, _))) => (used, body),
                _ => break,
            }
        } else if let Some(n) = find("content-length").and_then(|n| n.parse::<usize>().ok()) {
            if buf.len() < start + n {
                break;
            }
            (n, buf[start..start + n].to_vec())
        } else {
            (buf.len() - start, buf[start..].to_vec())
        };
        at = start + used;
        if !(100..200).contains(&status) {
            ex.responses.push(RawResponse {
                status,
                headers,
                body,
            });
        }
    }
    ex.rest = buf[at..].to_vec();
    ex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode_with_trailers() {
        let wire = b"5;ext=1\r\nhello\r\n0\r\nx-sum: 7\r\n\r\nNEXT";
        let (used, body, trailers) = decode_chunked(wire).expect("valid").expect("complete");
        assert_eq!(&wire[used..], b"NEXT");
        assert_eq!(body, b"hello");
        assert_eq!(trailers, vec![("x-sum".to_string(), "7".to_string())]);
        assert!(decode_chunked(b"5\r\nhel").expect("valid so far").is_none());
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    #[test]
    fn responses_split_and_skip_interim() {
        let ex = parse_responses(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 400 Bad\r\ncontent-length: 0\r\n\r\n",
        );
        assert_eq!(ex.statuses(), vec![200, 400]);
        assert_eq!(ex.responses[0].body, b"ok");
        assert!(ex.rest.is_empty());
    }
}
