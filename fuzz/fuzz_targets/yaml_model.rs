//! Arbitrary bytes through the YAML loader and every analyzer: nothing may panic.
//! Run with `cargo fuzz run yaml_model` (nightly); seed it with `testdata/analyze` for a
//! head start: `cargo fuzz run yaml_model ../testdata/analyze/broken ../testdata/analyze/good`.
#![no_main]

use std::path::Path;

use jalur_model::analyze::analyze;
use jalur_model::{parse_str, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (resources, _) = parse_str(Path::new("fuzz.yaml"), &text);
    let _ = analyze(&Config::new(resources));
});
