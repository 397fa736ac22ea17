//! Arbitrary bytes as a downstream HTTP/1 connection, delivered in pieces, through the framing
//! guard's `Framer` and the route lookup: nothing may panic, and whatever the guard passes on
//! must pass again whole with no refusal (see `jalur_proxy::framing::fuzz`).
//! Run with `cargo fuzz run http1_head` (nightly). Seed it first:
//! `JALUR_HTTP1_CORPUS=$PWD/fuzz/corpus/http1_head cargo test -p jalur-proxy --lib http1_seeds`.
//! The stable stand-in, which mutates those seeds, is
//! `framing::parse::tests::mutated_heads_keep_the_framing_invariants` in crates/jalur-proxy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jalur_proxy::framing::fuzz::http1_head(data);
});
