use std::path::Path;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::*;

struct Pki {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = params.self_signed(&key).expect("root");
        Pki {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (chain PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `content` beside `path` and renames it over, as an operator replaces a file.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn leaf_der(loaded: &Loaded) -> Vec<u8> {
    match loaded {
        Loaded::Cert(c) => c.certified_key().cert[0].as_ref().to_vec(),
        Loaded::Root(_) => panic!("a cert was expected"),
    }
}

#[test]
fn names_parse_as_istio_writes_them() {
    assert_eq!(
        FileSecret::parse("file-cert:/etc/c.pem~/etc/k.pem"),
        Some(Ok(FileSecret::Cert {
            chain: "/etc/c.pem".into(),
            key: "/etc/k.pem".into()
        }))
    );
    assert_eq!(
        FileSecret::parse("file-root:/etc/ca.pem"),
        Some(Ok(FileSecret::Root {
            ca: "/etc/ca.pem".into()
        }))
    );
    assert_eq!(FileSecret::parse("default"), None);
    assert!(matches!(
        FileSecret::parse("file-cert:/only-cert"),
        Some(Err(_))
    ));
    assert!(matches!(FileSecret::parse("file-root:"), Some(Err(_))));
    let s = FileSecret::parse("file-cert:/a~/b").and_then(Result::ok);
    assert_eq!(s.map(|s| s.sds_name()).as_deref(), Some("file-cert:/a~/b"));
}

#[test]
fn a_bad_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new();
    let (chain, key) = pki.leaf(&["gw.example.com"]);
    let (_, other_key) = pki.leaf(&["other"]);
    let (c, k, k2) = (
        dir.path().join("c.pem"),
        dir.path().join("k.pem"),
        dir.path().join("k2.pem"),
    );
    std::fs::write(&c, &chain).expect("c");
    std::fs::write(&k, &key).expect("k");
    std::fs::write(&k2, &other_key).expect("k2");
    CertFiles::load(&c, &k).expect("a good pair loads");

    let missing = CertFiles::load(&dir.path().join("nope.pem"), &k).expect_err("missing");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let mismatch = CertFiles::load(&c, &k2).expect_err("another key");
    assert!(
        mismatch.to_string().contains("k2.pem") && mismatch.to_string().contains("does not match"),
        "{mismatch}"
    );
    assert!(!mismatch.to_string().contains("PRIVATE KEY"), "{mismatch}");
    let not_pem = CertFiles::load(&k, &k).expect_err("a key is no certificate");
    assert!(not_pem.to_string().contains("k.pem"), "{not_pem}");

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.root_pem).expect("ca");
    RootFiles::load(&ca).expect("a CA loads");
    std::fs::write(&ca, "garbage").expect("ca");
    let e = RootFiles::load(&ca).expect_err("no certificate");
    assert!(e.to_string().contains("ca.pem"), "{e}");
}

#[test]
fn sans_are_matched_exactly_across_types() {
    let pki = Pki::new();
    let (chain, _) = pki.leaf(&["client.example.com", "10.1.2.3"]);
    let der = CertificateDer::from_pem_slice(chain.as_bytes()).expect("der");
    assert!(has_san(&der, &["client.example.com".into()]));
    assert!(has_san(&der, &["nope".into(), "10.1.2.3".into()]));
    assert!(!has_san(&der, &["example.com".into()]));
    assert!(!has_san(&der, &[]));
}

#[tokio::test]
async fn a_replaced_pair_is_picked_up_and_a_bad_one_keeps_the_last_good() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::new();
    let (chain, key) = pki.leaf(&["gw.example.com"]);
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&c, &chain).expect("c");
    std::fs::write(&k, &key).expect("k");
    let secret = FileSecret::Cert {
        chain: c.clone(),
        key: k.clone(),
    };
    let watch = FileWatch::start_every(&secret, Duration::from_millis(20)).expect("watch");
    let first = leaf_der(&watch.current());
    let mut rx = watch.subscribe();

    // Half a rotation (the new certificate, the old key) does not load: the last good stays.
    let (chain2, key2) = pki.leaf(&["gw.example.com"]);
    replace(&c, &chain2);
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            leaf_der(&watch.current()),
            first,
            "a mismatched pair must not replace the good one"
        );
    }
    // The key arrives: the new pair is published.
    replace(&k, &key2);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the new pair within 5 s")
        .expect("watch open");
    let now = leaf_der(&watch.current());
    assert_ne!(now, first);
    assert_eq!(
        now,
        CertificateDer::from_pem_slice(chain2.as_bytes())
            .expect("der")
            .as_ref()
            .to_vec()
    );
    // A removed file keeps the last good.
    std::fs::remove_file(&c).expect("rm");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(leaf_der(&watch.current()), now);
}
