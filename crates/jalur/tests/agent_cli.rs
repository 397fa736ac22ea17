//! `jalur agent` as a process: what an operator sees when its inputs are wrong. (The agent
//! against a real CA and Envoy is tested in crates/jalur-agent/tests.)

use std::process::Command;

fn agent(dir: &std::path::Path, xds: &str, token_file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jalur"))
        .env("RUST_LOG", "warn")
        .args(["agent", "--xds-address", xds, "--root-cert"])
        .arg(dir.join("root-cert.pem"))
        .arg("--token-file")
        .arg(token_file)
        .args([
            "--namespace",
            "shop",
            "--service-account",
            "payments",
            "--sds-socket",
        ])
        .arg(dir.join("sds.sock"))
        .arg("--envoy-bootstrap")
        .arg(dir.join("envoy.json"))
        .output()
        .expect("run jalur agent")
}

#[test]
fn agent_without_its_token_file_exits_one_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("no-such-token");
    let out = agent(dir.path(), "https://127.0.0.1:15012", &missing);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
    assert!(!dir.path().join("sds.sock").exists());
}

#[test]
fn agent_refuses_a_plaintext_control_plane_address() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "jalur.v1.x.y\n").expect("write");
    let out = agent(dir.path(), "http://127.0.0.1:15010", &token);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must be https://HOST:PORT"), "{stderr}");
    assert!(
        !dir.path().join("envoy.json").exists(),
        "no bootstrap written"
    );
}

#[test]
fn agent_with_an_unreadable_trust_bundle_exits_one_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let token = dir.path().join("token");
    std::fs::write(&token, "jalur.v1.x.y\n").expect("write");
    let out = agent(dir.path(), "https://127.0.0.1:15012", &token);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("root-cert.pem"), "{stderr}");
    assert!(
        !dir.path().join("sds.sock").exists(),
        "nothing served without a certificate"
    );
}
