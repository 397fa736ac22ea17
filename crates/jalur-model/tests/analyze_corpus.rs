//! The analyzer corpus: `testdata/analyze/broken/*.yaml` are each broken in one way and say what
//! they expect in their first lines (`# expect: JAL0102 line 27`); `testdata/analyze/good/` is a
//! whole bookinfo-like config that must produce no Error and no Warning. Then a smoke fuzz: the
//! same files mutated deterministically, through the parser and the analyzers, must never panic.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use jalur_model::analyze::{analyze, analyze_with, KnownServices};
use jalur_model::diag::codes;
use jalur_model::{load_paths, parse_str, Config, Diagnostic, Severity};

fn corpus(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/analyze")
        .join(dir)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Load and analysis findings that count: Errors and Warnings.
fn findings(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let loaded = load_paths(paths);
    let mut all = loaded.diagnostics;
    all.extend(analyze(&loaded.config));
    all.retain(|d| d.severity > Severity::Info);
    all
}

/// `# expect: JAL0102 line 27` lines at the top of a file; `line` may be omitted for findings
/// that have no line.
fn expectations(text: &str) -> Result<Vec<(String, Option<usize>)>, String> {
    let mut out = Vec::new();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let Some(rest) = line.strip_prefix("# expect:") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        match words.as_slice() {
            [code] => out.push((code.to_string(), None)),
            [code, "line", n] => {
                let n = n
                    .parse()
                    .map_err(|_| format!("bad line number in {line:?}"))?;
                out.push((code.to_string(), Some(n)));
            }
            _ => {
                return Err(format!(
                    "cannot read {line:?}; write `# expect: JAL0xxx line N`"
                ))
            }
        }
    }
    Ok(out)
}

#[test]
fn broken_corpus_reports_exactly_what_each_file_expects() {
    let files = yaml_files(&corpus("broken"));
    assert!(files.len() >= 35, "only {} broken files", files.len());
    let mut failures = String::new();
    let mut covered = BTreeSet::new();
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default()).into_owned();
        let mut expected = match expectations(&text) {
            Ok(e) if !e.is_empty() => e,
            Ok(_) => {
                let _ = writeln!(failures, "{name}: no `# expect:` line");
                continue;
            }
            Err(e) => {
                let _ = writeln!(failures, "{name}: {e}");
                continue;
            }
        };
        expected.sort();
        covered.extend(expected.iter().map(|(c, _)| c.clone()));
        let found = findings(std::slice::from_ref(file));
        let mut actual: Vec<(String, Option<usize>)> =
            found.iter().map(|d| (d.code.to_string(), d.line)).collect();
        actual.sort();
        if actual != expected {
            let _ = writeln!(failures, "{name}: expected {expected:?}, found:");
            for d in &found {
                let _ = writeln!(failures, "    {d}");
            }
        }
        for d in &found {
            if d.file.as_deref() != Some(file.as_path()) || !d.to_string().contains(&name) {
                let _ = writeln!(failures, "{name}: diagnostic does not name its file: {d}");
            }
        }
    }
    assert!(failures.is_empty(), "\n{failures}");
    let uncovered: Vec<&str> = codes::ALL
        .iter()
        .map(|c| c.id)
        .filter(|id| *id != codes::UNREADABLE_FILE.id && !covered.contains(*id))
        .collect();
    assert!(uncovered.is_empty(), "no broken file shows {uncovered:?}");
}

#[test]
fn good_corpus_has_no_errors_or_warnings() {
    let dir = corpus("good");
    let loaded = load_paths(std::slice::from_ref(&dir));
    assert!(
        loaded.files.len() >= 3,
        "good corpus too small: {:?}",
        loaded.files
    );
    assert!(
        loaded.config.resources.len() >= 15,
        "{} resources",
        loaded.config.resources.len()
    );
    let found = findings(&[dir]);
    let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert!(found.is_empty(), "\n{}", shown.join("\n"));
}

#[test]
fn registry_services_make_unknown_hosts_known() {
    let file = corpus("broken").join("18-unknown-mesh-host.yaml");
    let loaded = load_paths(std::slice::from_ref(&file));
    assert_eq!(
        analyze(&loaded.config)
            .iter()
            .filter(|d| d.code == "JAL0103")
            .count(),
        1
    );
    let mut extra = KnownServices::new();
    extra.insert(
        "details.default.svc.cluster.local".to_string(),
        BTreeSet::from([9080]),
    );
    assert!(analyze_with(&loaded.config, &extra).is_empty());
}

// ---------------------------------------------------------------- smoke fuzz

/// fastrand's generator with a fixed seed: deterministic, so a failing case can be replayed by
/// its number.
type Rng = fastrand::Rng;

trait Below {
    /// A uniform index below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize;
}

impl Below for Rng {
    fn below(&mut self, n: usize) -> usize {
        self.usize(..n.max(1))
    }
}

const TOKENS: &[&str] = &[
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "*a",
    "&a ",
    "!!str ",
    "!!binary ",
    "\"",
    "'",
    "\n",
    "\t",
    "---\n",
    "...\n",
    "? ",
    "|",
    ">",
    "#",
    "~",
    "null",
    "-1",
    "1e999",
    ".nan",
    "0x10",
    "99999999999999999999",
    "(",
    "[a-",
    "\\",
    "%YAML 1.2\n",
    "<<: *a\n",
    "regex: '(?!x)'",
    "weight: 4294967295",
    "host: '*'",
    "subset: ",
    "gateways: [mesh]",
    "port: {number: 0}",
    "\u{0}",
    "\u{feff}",
    "é",
    "  ",
];

/// Values that keep a document parseable but push the analyzers to their edges.
const VALUES: &[&str] = &[
    "0",
    "100",
    "101",
    "-1",
    "65536",
    "4294967295",
    "1e308",
    "''",
    "'*'",
    "'*.'",
    "mesh",
    "a/b",
    "/",
    "x.svc.cluster.local",
    "'(?P<'",
    "[]",
    "{}",
    "null",
    "0s",
    "999999h",
    "':path'",
    "STATIC",
    "DNS",
    "NONE",
    "MUTUAL",
    "SIMPLE",
    "10.0.0.1",
    "'::1'",
    "unix:///s",
];

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(3) {
        match rng.below(7) {
            0 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(data.len());
                    if let Some(b) = data.get_mut(at) {
                        *b ^= (rng.u8(..)) | 1;
                    }
                }
            }
            1 => data.truncate(rng.below(data.len() + 1)),
            2 | 3 => {
                let mut lines: Vec<Vec<u8>> = data
                    .split_inclusive(|b| *b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect();
                let at = rng.below(lines.len());
                if at < lines.len() {
                    if rng.below(2) == 0 {
                        lines.remove(at);
                    } else {
                        let copy = lines[at].clone();
                        lines.insert(at, copy);
                    }
                }
                data = lines.concat();
            }
            4 => {
                // Replace the value after a random `key: ` with another value.
                let starts: Vec<usize> = data
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| w == b": ")
                    .map(|(i, _)| i + 2)
                    .collect();
                if let Some(&at) = starts.get(rng.below(starts.len())) {
                    let end = data[at..]
                        .iter()
                        .position(|b| matches!(b, b'\n' | b',' | b'}'))
                        .map_or(data.len(), |e| at + e);
                    let value = VALUES[rng.below(VALUES.len())].as_bytes();
                    data.splice(at..end, value.iter().copied());
                }
            }
            5 => {
                let token = TOKENS[rng.below(TOKENS.len())].as_bytes();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, token.iter().copied());
            }
            _ => {
                let (a, b) = (rng.below(data.len()), rng.below(data.len()));
                if a < data.len() && b < data.len() {
                    data.swap(a, b);
                }
            }
        }
    }
    data
}

#[test]
fn smoke_fuzz_mutated_corpus_never_panics() {
    let mut files = yaml_files(&corpus("broken"));
    files.extend(yaml_files(&corpus("good")));
    let inputs: Vec<Vec<u8>> = files.iter().filter_map(|f| std::fs::read(f).ok()).collect();
    assert!(!inputs.is_empty());
    let mut extra = KnownServices::new();
    extra.insert(
        "details.default.svc.cluster.local".to_string(),
        BTreeSet::from([9080]),
    );
    extra.insert("*.example.com".to_string(), BTreeSet::new());
    // JALUR_FUZZ_CASES=200000 for a longer local run; same seed, so the first cases are the same.
    let cases: usize = std::env::var("JALUR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut rng = Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let (mut with_resources, mut with_findings) = (0, 0);
    for case in 0..cases {
        let input = &inputs[case % inputs.len()];
        let data = mutate(&mut rng, input);
        let text = String::from_utf8_lossy(&data).into_owned();
        let run = catch_unwind(AssertUnwindSafe(|| {
            let (resources, _) = parse_str(Path::new("fuzz.yaml"), &text);
            let config = Config::new(resources);
            let found = analyze(&config);
            let _ = analyze_with(&config, &extra);
            (config.resources.len(), found.len())
        }));
        let Ok((resources, findings)) = run else {
            panic!("case {case} panicked on input:\n{text}");
        };
        with_resources += usize::from(resources > 0);
        with_findings += usize::from(findings > 0);
    }
    // Most mutants must still reach the analyzers, or this only fuzzes the YAML parser.
    assert!(
        with_resources * 5 > cases * 2 && with_findings * 5 > cases,
        "of {cases} mutants, {with_resources} kept a resource and {with_findings} had findings"
    );
}
