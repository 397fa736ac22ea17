use super::*;

/// What a connection delivering `chunks` yields: the bytes passed on and the events, with
/// every upgrade refused (the connection goes on).
fn frame(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
    feed(chunks, false)
}

/// The verdicts on `bytes` delivered whole and delivered one byte at a time: they must agree.
fn verdicts(bytes: &[u8]) -> Vec<Event> {
    let (passed, whole) = frame(&[bytes]);
    let singles: Vec<&[u8]> = bytes.chunks(1).collect();
    let (passed_1, trickled) = frame(&singles);
    assert_eq!(whole, trickled, "byte-by-byte delivery changes the verdict");
    assert_eq!(passed, passed_1);
    whole
}

fn reason(bytes: &[u8]) -> &'static str {
    match verdicts(bytes).last() {
        Some(Event::Reject(r)) | Some(Event::Abort(r)) => r.reason,
        other => panic!(
            "not refused: {other:?} for {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

const OK: Event = Event::Request { upgrade: false };

#[test]
fn keep_alive_requests_are_framed_one_after_another() {
    let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\nTransfer-Encoding: chunked\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\nPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(verdicts(stream), vec![OK, OK, OK, OK]);
    let (passed, _) = frame(&[stream]);
    assert_eq!(passed, stream, "everything valid passes, byte for byte");
}

#[test]
fn a_second_request_with_both_lengths_is_refused_after_a_chunked_one() {
    let stream = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (passed, events) = frame(&[stream]);
    assert_eq!(
        events,
        vec![
            OK,
            Event::Reject(bad("content_length_and_transfer_encoding"))
        ]
    );
    assert!(
        !String::from_utf8_lossy(&passed).contains("Content-Length"),
        "the refused head never passes"
    );
}

#[test]
fn every_ambiguity_is_refused() {
    let cases: &[(&[u8], &str)] = &[
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "duplicate_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx", "invalid_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x1\r\n\r\nx", "invalid_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 1\r\n\r\nx", "invalid_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1,1\r\n\r\nx", "invalid_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", "invalid_content_length"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", "unsupported_transfer_encoding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "unsupported_transfer_encoding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \x0bchunked\r\n\r\n", "invalid_header_value"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "duplicate_transfer_encoding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", "invalid_header_name"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n  , identity\r\n\r\n", "invalid_header_name"),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "transfer_encoding_in_http10"),
        (b"GET / HTTP/1.1\nHost: x\n\n", "bare_lf"),
        (b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", "bare_cr"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "nul_byte"),
        (b"GET / HTTP/1.1\r\n\r\n", "missing_host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "duplicate_host"),
        (b"GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n", "host_mismatch"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "upgrade_with_expect"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\nab", "upgrade_with_body"),
        (b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", "upgrade_in_http10"),
        (b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n", "unsupported_expectation"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "connect_not_supported"),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed_request_line"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "invalid_version"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n", "invalid_chunk_size"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "invalid_chunk_size"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1 2\r\n", "invalid_chunk_size"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n", "chunk_size_overflow"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;\r\n", "invalid_chunk_extension"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\"b\r\n", "invalid_chunk_extension"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\"\\\x00\"\r\n", "nul_byte"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a=\"\\\x01\"\r\n", "invalid_chunk_extension"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\nx", "bare_lf"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n", "chunk_data_not_followed_by_crlf"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n", "framing_field_in_trailers"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n", "malformed_trailers"),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            reason(bytes),
            *expected,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn what_is_valid_passes() {
    for bytes in [
        &b"GET http://a:80/x HTTP/1.1\r\nHost: A:80\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 005\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tChunked \r\n\r\n1;name=\"q\\\"v\" ; n2\r\nx\r\n0\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx",
    ] {
        assert_eq!(verdicts(bytes), vec![OK], "{:?}", String::from_utf8_lossy(bytes));
        assert_eq!(frame(&[bytes]).0, bytes);
    }
    // The end of a body with no trailers, its last LF delivered on its own.
    let (passed, events) = frame(&[
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r",
        b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ]);
    assert_eq!(events, vec![OK, OK]);
    assert!(passed.ends_with(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
}

#[test]
fn an_upgrade_holds_what_follows_until_its_outcome() {
    let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n";
    let mut f = Framer::new();
    let mut input = head.to_vec();
    input.extend_from_slice(b"\x81\x05hello");
    let first = f.advance(&input);
    assert_eq!(first.pass, head.len());
    assert_eq!(first.event, Some(Event::Request { upgrade: true }));
    assert_eq!(f.advance(&input[head.len()..]).pass, 0, "held");
    f.passthrough();
    assert_eq!(f.advance(&input[head.len()..]).pass, 7);

    let mut refused = Framer::new();
    refused.advance(head);
    refused.resume();
    let next = refused.advance(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        next.event,
        Some(OK),
        "framing goes on after a refused upgrade"
    );
}

#[test]
fn http2_prior_knowledge_passes_unexamined() {
    let (passed, events) = frame(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\n\x00\x00garbage"]);
    assert!(events.is_empty());
    assert_eq!(passed.len(), 24 + 9);
}

#[test]
fn oversized_heads_are_refused_without_waiting_for_their_end() {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(MAX_HEAD + 10, b'a');
    let (passed, events) = frame(&[&head]);
    assert!(passed.is_empty());
    assert_eq!(
        events,
        vec![Event::Reject(Rejection {
            reason: "headers_too_large",
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        })]
    );
}

#[test]
fn a_trickled_head_is_scanned_once() {
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
    head.resize(4 * 1024, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let mut f = Framer::new();
    for end in 1..head.len() {
        assert_eq!(f.advance(&head[..end]).pass, 0);
        // Each delivery resumes where the last scan stopped: a head trickled in byte by byte
        // costs its length, not its length squared (slowloris).
        assert!(
            matches!(f.state, State::Head { scanned } if scanned == end) || end < 24,
            "{:?} after {end} bytes",
            f.state
        );
    }
    assert_eq!(f.advance(&head).event, Some(OK));
}

/// Requests that exercise every state of the framer: the seeds of the fuzz target
/// `http1_head` and of the smoke test below.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = [
        &b"GET / HTTP/1.1\r\nHost: victim.shop.svc.cluster.local\r\n\r\n"[..],
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: a.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\\\"c\"\r\nabc\r\n0\r\nx-t: 1\r\n\r\nGET /api/v1/x HTTP/1.1\r\nHost: api.example.com\r\nEnd-User: j\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05helloGET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        b"GET http://victim.shop.svc.cluster.local:9080/x?y=1 HTTP/1.1\r\nHost: victim.shop.svc.cluster.local:9080\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        b"\r\nPOST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    // Each seed led by a byte choosing its delivery: whole, or in small pieces.
    for s in seeds.iter_mut() {
        s.insert(0, 31);
    }
    let mut pieces = seeds.clone();
    for s in pieces.iter_mut() {
        s[0] = 2;
    }
    seeds.extend(pieces);
    seeds
}

/// The stable stand-in for `cargo fuzz run http1_head` (nightly): deterministic mutations of
/// the seeds, every one through the invariants of `framing::fuzz::http1_head`.
#[test]
fn mutated_heads_keep_the_framing_invariants() {
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(0x006a_616c_7572);
    let interesting =
        b"\r\n:; ,\t\x00\x0b\"0123456789abcdefxXchunkedContent-LengthTransfer-Encoding";
    for round in 0..60_000 {
        let mut input = seeds[round % seeds.len()].clone();
        for _ in 0..rng.usize(1..=4) {
            let at = rng.usize(1..input.len().max(2)).min(input.len() - 1);
            let byte = interesting[rng.usize(..interesting.len())];
            match rng.u8(0..4) {
                0 => input[at] = byte,
                1 => input.insert(at, byte),
                2 if input.len() > 2 => {
                    input.remove(at);
                }
                _ => {
                    let other = &seeds[rng.usize(..seeds.len())];
                    let from = rng.usize(1..other.len());
                    input.extend_from_slice(&other[from..]);
                }
            }
        }
        super::super::fuzz::http1_head(&input);
    }
}

/// Writes the seeds where the fuzz target's corpus lives:
/// `JALUR_HTTP1_CORPUS=$PWD/fuzz/corpus/http1_head cargo test -p jalur-proxy --lib http1_seeds`.
#[test]
fn http1_seeds_are_valid() {
    for seed in seeds() {
        super::super::fuzz::http1_head(&seed);
    }
    if let Some(dir) = std::env::var_os("JALUR_HTTP1_CORPUS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (i, seed) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("write seed");
        }
    }
}
