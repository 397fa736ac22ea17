//! The request framer: a pure state machine over the bytes a client sends on one HTTP/1
//! connection. It decides, request after request, where each head and body ends, and refuses
//! every message whose framing another parser could read differently (RFC 9112 §6, §7; the
//! request-smuggling cases). Heads are parsed by `httparse` (strict: no obs-fold, no space
//! before a colon, one space between request-line parts), after a scan that refuses bare CR
//! and bare LF, which `httparse` tolerates.
//!
//! Hand-written because no crate validates HTTP/1 framing incrementally over a byte stream
//! while leaving the parsing of the messages to another library (hyper).

use http::StatusCode;

/// The longest request head (request line and fields) accepted; the same limit as hyper's.
pub const MAX_HEAD: usize = 64 * 1024;
/// The longest trailer section (hyper's limit on trailer fields is 16 KiB too).
const MAX_TRAILERS: usize = 16 * 1024;
/// The longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// At most this many header fields in a head or a trailer section.
const MAX_FIELDS: usize = 100;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Why a request is refused, and the status its client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// A metric label (`reason`) and the `x-jalur-reason` of the response.
    pub reason: &'static str,
    pub status: StatusCode,
}

const fn bad(reason: &'static str) -> Rejection {
    Rejection {
        reason,
        status: StatusCode::BAD_REQUEST,
    }
}

/// What the framer found in the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request head, whole and unambiguous, ends within the bytes passed. `upgrade`: it asks
    /// for a protocol switch, and nothing after it is framed until [`Framer::resume`] or
    /// [`Framer::passthrough`] says how it went.
    Request { upgrade: bool },
    /// The request starting here is refused; none of its bytes may be passed.
    Reject(Rejection),
    /// A body turned out malformed after its head was passed: the connection must fail.
    Abort(Rejection),
}

/// The result of one [`Framer::advance`]: the first `pass` bytes may go to the HTTP parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub pass: usize,
    pub event: Option<Event>,
}

impl Advance {
    fn pass(pass: usize) -> Advance {
        Advance { pass, event: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing seen yet: HTTP/2 prior knowledge or HTTP/1.
    Start,
    /// `scanned`: how many bytes of the pending head were already checked (a head trickled in
    /// byte by byte is scanned once, not once per byte).
    Head {
        scanned: usize,
    },
    Body(u64),
    ChunkSize {
        scanned: usize,
    },
    ChunkData(u64),
    ChunkEnd,
    Trailers {
        scanned: usize,
    },
    /// After an upgrade request, until its outcome is known.
    AwaitUpgrade,
    /// HTTP/2, or an upgraded connection: bytes pass unexamined.
    Passthrough,
    /// A request was refused or a body was malformed: nothing more passes.
    Stopped,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Framer {
    state: State,
}

impl Default for Framer {
    fn default() -> Framer {
        Framer::new()
    }
}

impl Framer {
    pub fn new() -> Framer {
        Framer {
            state: State::Start,
        }
    }

    /// Bytes pass unexamined from now on.
    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Waiting for an upgrade's outcome.
    pub fn is_awaiting_upgrade(&self) -> bool {
        self.state == State::AwaitUpgrade
    }

    /// Between requests or inside a head: where a client that stops sending holds the
    /// connection without asking anything (the header read timeout applies here).
    pub fn is_awaiting_head(&self) -> bool {
        matches!(self.state, State::Start | State::Head { .. })
    }

    /// A request was refused or a body aborted: nothing passes any more.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// The upgrade was refused: the connection goes on with the next request.
    pub fn resume(&mut self) {
        if self.state == State::AwaitUpgrade {
            self.state = State::head();
        }
    }

    /// The upgrade happened (101): what follows is another protocol.
    pub fn passthrough(&mut self) {
        self.state = State::Passthrough;
    }

    /// Examines `input`, the bytes after those already passed. Returns how many of them may be
    /// passed on, and what was found; `pass == 0` with no event means more bytes are needed
    /// (or the framer is waiting, see [`Framer::is_awaiting_upgrade`]).
    pub fn advance(&mut self, input: &[u8]) -> Advance {
        match self.state {
            State::Start => self.start(input),
            State::Head { scanned } => self.head(input, scanned),
            State::Body(remaining) => {
                let take = remaining.min(input.len() as u64);
                self.state = match remaining - take {
                    0 => State::head(),
                    left => State::Body(left),
                };
                Advance::pass(take as usize)
            }
            State::ChunkSize { scanned } => self.chunk_size(input, scanned),
            State::ChunkData(remaining) => {
                let take = remaining.min(input.len() as u64);
                self.state = match remaining - take {
                    0 => State::ChunkEnd,
                    left => State::ChunkData(left),
                };
                Advance::pass(take as usize)
            }
            State::ChunkEnd => match input {
                [b'\r', b'\n', ..] => {
                    self.state = State::ChunkSize { scanned: 0 };
                    Advance::pass(2)
                }
                [] | [b'\r'] => Advance::pass(0),
                _ => self.abort("chunk_data_not_followed_by_crlf"),
            },
            State::Trailers { scanned } => self.trailers(input, scanned),
            State::Passthrough => Advance::pass(input.len()),
            State::AwaitUpgrade | State::Stopped => Advance::pass(0),
        }
    }

    fn start(&mut self, input: &[u8]) -> Advance {
        let n = input.len().min(H2_PREFACE.len());
        if input[..n] != H2_PREFACE[..n] {
            self.state = State::head();
            return self.head(input, 0);
        }
        if n == H2_PREFACE.len() {
            self.state = State::Passthrough;
            return Advance::pass(input.len());
        }
        Advance::pass(0)
    }

    fn reject(&mut self, rejection: Rejection) -> Advance {
        self.state = State::Stopped;
        Advance {
            pass: 0,
            event: Some(Event::Reject(rejection)),
        }
    }

    fn abort(&mut self, reason: &'static str) -> Advance {
        self.state = State::Stopped;
        Advance {
            pass: 0,
            event: Some(Event::Abort(bad(reason))),
        }
    }

    fn head(&mut self, input: &[u8], scanned: usize) -> Advance {
        // An empty line before a request line is tolerated (RFC 9112 §2.2), as hyper does.
        if input.starts_with(b"\r\n") {
            self.state = State::head();
            return Advance::pass(2);
        }
        let Some(end) = find_from(input, scanned, b"\r\n\r\n") else {
            if input.len() > MAX_HEAD {
                return self.reject(Rejection {
                    reason: "headers_too_large",
                    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                });
            }
            // A bare LF or a stray CR already decides the verdict; no need to wait.
            if let Some(reason) = line_ending_fault(input, scanned, false) {
                return self.reject(bad(reason));
            }
            self.state = State::Head {
                scanned: input.len(),
            };
            return Advance::pass(0);
        };
        let len = end + 4;
        if len > MAX_HEAD {
            return self.reject(Rejection {
                reason: "headers_too_large",
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            });
        }
        match judge_head(&input[..len]) {
            Ok(Framing { body, upgrade }) => {
                self.state = match body {
                    _ if upgrade => State::AwaitUpgrade,
                    Body::None => State::head(),
                    Body::Length(0) => State::head(),
                    Body::Length(n) => State::Body(n),
                    Body::Chunked => State::ChunkSize { scanned: 0 },
                };
                Advance {
                    pass: len,
                    event: Some(Event::Request { upgrade }),
                }
            }
            Err(rejection) => self.reject(rejection),
        }
    }

    fn chunk_size(&mut self, input: &[u8], scanned: usize) -> Advance {
        let Some(end) = find_from(input, scanned, b"\r\n") else {
            if input.len() > MAX_CHUNK_LINE {
                return self.abort("chunk_line_too_long");
            }
            if let Some(reason) = line_ending_fault(input, scanned, false) {
                return self.abort(reason);
            }
            self.state = State::ChunkSize {
                scanned: input.len(),
            };
            return Advance::pass(0);
        };
        if end > MAX_CHUNK_LINE {
            return self.abort("chunk_line_too_long");
        }
        if let Some(reason) = line_ending_fault(&input[..end], scanned, true) {
            return self.abort(reason);
        }
        match chunk_line(&input[..end]) {
            Ok(0) => {
                self.state = State::Trailers { scanned: 0 };
                Advance::pass(end + 2)
            }
            Ok(size) => {
                self.state = State::ChunkData(size);
                Advance::pass(end + 2)
            }
            Err(reason) => self.abort(reason),
        }
    }

    fn trailers(&mut self, input: &[u8], scanned: usize) -> Advance {
        // No trailers: the body ends here, however the CRLF was delivered.
        if input.starts_with(b"\r\n") {
            self.state = State::head();
            return Advance::pass(2);
        }
        let Some(end) = find_from(input, scanned, b"\r\n\r\n") else {
            if input.len() > MAX_TRAILERS {
                return self.abort("trailers_too_large");
            }
            if let Some(reason) = line_ending_fault(input, scanned, false) {
                return self.abort(reason);
            }
            self.state = State::Trailers {
                scanned: input.len(),
            };
            return Advance::pass(0);
        };
        let len = end + 4;
        if len > MAX_TRAILERS {
            return self.abort("trailers_too_large");
        }
        let section = &input[..len];
        if let Some(reason) = line_ending_fault(section, 0, true) {
            return self.abort(reason);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        match httparse::parse_headers(section, &mut fields) {
            Ok(httparse::Status::Complete((used, parsed))) if used == len => {
                // Fields that frame or route a message have no place after its body.
                let framing = parsed.iter().any(|f| {
                    ["content-length", "transfer-encoding", "host", "trailer"]
                        .iter()
                        .any(|n| f.name.eq_ignore_ascii_case(n))
                });
                if framing {
                    return self.abort("framing_field_in_trailers");
                }
                self.state = State::head();
                Advance::pass(len)
            }
            _ => self.abort("malformed_trailers"),
        }
    }
}

impl State {
    fn head() -> State {
        State::Head { scanned: 0 }
    }
}

/// Where `needle` starts in `haystack`, searching only what was not searched before
/// (`scanned` bytes, less the needle's length so a needle split across reads is found).
fn find_from(haystack: &[u8], scanned: usize, needle: &[u8]) -> Option<usize> {
    let from = scanned.saturating_sub(needle.len() - 1);
    memchr::memmem::find(&haystack[from.min(haystack.len())..], needle).map(|i| from + i)
}

/// A bare LF, a CR not followed by LF, or a NUL, in `bytes[from..]`. `complete`: `bytes` ends
/// a section, so a trailing CR is a fault too (otherwise it may be half of a CRLF to come).
fn line_ending_fault(bytes: &[u8], from: usize, complete: bool) -> Option<&'static str> {
    // One byte back: a CR left at the end of the last scan is judged with what follows it.
    let from = from.saturating_sub(1);
    for i in from..bytes.len() {
        match bytes[i] {
            b'\n' if i == 0 || bytes[i - 1] != b'\r' => return Some("bare_lf"),
            b'\r' => match bytes.get(i + 1) {
                Some(b'\n') => {}
                None if !complete => {}
                _ => return Some("bare_cr"),
            },
            0 => return Some("nul_byte"),
            _ => {}
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

struct Framing {
    body: Body,
    upgrade: bool,
}

/// The framing of one complete head (`head` ends with CRLF CRLF), or why it is refused.
fn judge_head(head: &[u8]) -> Result<Framing, Rejection> {
    if let Some(reason) = line_ending_fault(head, 0, true) {
        return Err(bad(reason));
    }
    // Uninitialised slots: zeroing 100 headers per request costs more than parsing most heads.
    let mut fields =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut fields) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection {
                reason: "too_many_headers",
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            })
        }
        Err(httparse::Error::HeaderName) => return Err(bad("invalid_header_name")),
        Err(httparse::Error::HeaderValue) => return Err(bad("invalid_header_value")),
        Err(httparse::Error::Version) => return Err(bad("invalid_version")),
        _ => return Err(bad("malformed_request_line")),
    }
    let http10 = req.version == Some(0);
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Rejection {
            reason: "connect_not_supported",
            status: StatusCode::METHOD_NOT_ALLOWED,
        });
    }
    let mut named = Named::default();
    for f in req.headers.iter() {
        named.see(f);
    }
    let body = framing(&named, http10)?;
    check_host(&named, target, http10)?;
    let upgrade = !named.upgrade.is_empty();
    if upgrade {
        if http10 {
            return Err(bad("upgrade_in_http10"));
        }
        if body != Body::None && body != Body::Length(0) {
            return Err(bad("upgrade_with_body"));
        }
        if !named.expect.is_empty() {
            return Err(bad("upgrade_with_expect"));
        }
    }
    match named.expect.as_slice() {
        [] => {}
        [one] if trim(one).eq_ignore_ascii_case(b"100-continue") => {}
        [_] => {
            return Err(Rejection {
                reason: "unsupported_expectation",
                status: StatusCode::EXPECTATION_FAILED,
            })
        }
        _ => return Err(bad("duplicate_expect")),
    }
    Ok(Framing { body, upgrade })
}

/// The values of the fields that decide framing and routing.
#[derive(Default)]
struct Named<'a> {
    content_length: Seen<'a>,
    transfer_encoding: Seen<'a>,
    host: Seen<'a>,
    upgrade: Seen<'a>,
    expect: Seen<'a>,
}

/// The first two values of a field (a third changes no verdict), without allocating.
#[derive(Default)]
struct Seen<'a> {
    values: [&'a [u8]; 2],
    count: usize,
}

impl<'a> Seen<'a> {
    fn push(&mut self, value: &'a [u8]) {
        if let Some(slot) = self.values.get_mut(self.count) {
            *slot = value;
            self.count += 1;
        }
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        &self.values[..self.count]
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl<'a> Named<'a> {
    fn see(&mut self, f: &httparse::Header<'a>) {
        let list = match f.name.len() {
            14 if f.name.eq_ignore_ascii_case("content-length") => &mut self.content_length,
            17 if f.name.eq_ignore_ascii_case("transfer-encoding") => &mut self.transfer_encoding,
            4 if f.name.eq_ignore_ascii_case("host") => &mut self.host,
            7 if f.name.eq_ignore_ascii_case("upgrade") => &mut self.upgrade,
            6 if f.name.eq_ignore_ascii_case("expect") => &mut self.expect,
            _ => return,
        };
        list.push(f.value);
    }
}

/// RFC 9112 §6.3, minus everything two parsers could disagree on: one Transfer-Encoding,
/// exactly `chunked`, never with a Content-Length, never in HTTP/1.0; one Content-Length of
/// plain digits.
fn framing(named: &Named<'_>, http10: bool) -> Result<Body, Rejection> {
    match (
        named.transfer_encoding.as_slice(),
        named.content_length.as_slice(),
    ) {
        ([], []) => Ok(Body::None),
        ([_, ..], [_, ..]) => Err(bad("content_length_and_transfer_encoding")),
        ([_], []) if http10 => Err(bad("transfer_encoding_in_http10")),
        ([te], []) if trim(te).eq_ignore_ascii_case(b"chunked") => Ok(Body::Chunked),
        ([_], []) => Err(bad("unsupported_transfer_encoding")),
        (_, []) => Err(bad("duplicate_transfer_encoding")),
        ([], [cl]) => content_length(trim(cl))
            .map(Body::Length)
            .ok_or(bad("invalid_content_length")),
        ([], _) => Err(bad("duplicate_content_length")),
    }
}

/// 1*DIGIT that fits in a u64 (no sign, no hex, no inner space, no list).
fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One Host (required in HTTP/1.1), and an absolute-form target naming the same authority.
fn check_host(named: &Named<'_>, target: &str, http10: bool) -> Result<(), Rejection> {
    let host = match named.host.as_slice() {
        [] if http10 => None,
        [] => return Err(bad("missing_host")),
        [one] => Some(trim(one)),
        _ => return Err(bad("duplicate_host")),
    };
    let lower = target
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return Ok(());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match host {
        Some(h) if h.eq_ignore_ascii_case(authority.as_bytes()) => Ok(()),
        None => Ok(()),
        Some(_) => Err(bad("host_mismatch")),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !is_ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// `chunk-size [ chunk-ext ]` (RFC 9112 §7.1): up to 16 hex digits, then extensions
/// `*( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )`.
fn chunk_line(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("invalid_chunk_size");
    }
    if digits > 16 {
        return Err("chunk_size_overflow");
    }
    let size = std::str::from_utf8(&line[..digits])
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or("chunk_size_overflow")?;
    let mut rest = &line[digits..];
    loop {
        rest = skip_ows(rest);
        match rest.split_first() {
            None => return Ok(size),
            Some((b';', after)) => rest = skip_ows(after),
            Some(_) => return Err("invalid_chunk_size"),
        }
        let name = token_len(rest);
        if name == 0 {
            return Err("invalid_chunk_extension");
        }
        rest = &rest[name..];
        let after_ows = skip_ows(rest);
        if let Some((b'=', value)) = after_ows.split_first() {
            let value = skip_ows(value);
            let used = match value.first() {
                Some(b'"') => quoted_len(value).ok_or("invalid_chunk_extension")?,
                _ => token_len(value),
            };
            if used == 0 {
                return Err("invalid_chunk_extension");
            }
            rest = &value[used..];
        }
    }
}

fn skip_ows(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &v[n..]
}

/// tchar (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token_len(v: &[u8]) -> usize {
    v.iter().take_while(|b| is_tchar(**b)).count()
}

/// The length of a quoted-string at the start of `v`, closing quote included.
fn quoted_len(v: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'"' => return Some(i + 1),
            // quoted-pair = "\\" ( HTAB / SP / VCHAR / obs-text )
            b'\\'
                if v.get(i + 1)
                    .is_some_and(|b| matches!(b, b'\t' | b' '..=0x7e | 0x80..=0xff)) =>
            {
                i += 2
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// Delivers `chunks` to a new [`Framer`] the way a connection would — each advance sees the
/// bytes not yet passed — and returns the bytes passed on and the events, in order. An upgrade
/// is answered with `upgraded`. For tests and the fuzz target.
pub fn feed(chunks: &[&[u8]], upgraded: bool) -> (Vec<u8>, Vec<Event>) {
    let mut f = Framer::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut passed = Vec::new();
    let mut events = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        loop {
            let a = f.advance(&pending);
            passed.extend(pending.drain(..a.pass));
            if let Some(e) = a.event {
                events.push(e);
            }
            if f.is_awaiting_upgrade() {
                if upgraded {
                    f.passthrough();
                } else {
                    f.resume();
                }
                continue;
            }
            if a.pass == 0 && a.event.is_none() || f.is_stopped() {
                break;
            }
        }
    }
    (passed, events)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
