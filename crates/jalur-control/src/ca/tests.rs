use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jalur_identity::istio_ca::{CertificateAuthority, IstioCertificateRequest, TlsConnectInfo};
use jalur_identity::{verify, SpiffeId, WorkloadCert, WorkloadKey};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tonic::Code;
use x509_parser::extensions::GeneralName;

use super::*;

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", ns, sa)
}

fn csr(id: &SpiffeId) -> (WorkloadKey, String) {
    let key = WorkloadKey::generate().expect("key");
    let csr = key.csr_pem(id).expect("csr");
    (key, csr)
}

fn authority(dir: &Path) -> Arc<Authority> {
    Authority::load_or_create(dir, &CaOptions::default()).expect("authority")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `openssl verify` of `leaf` against `root` with `untrusted` intermediates: a second, unrelated
/// X.509 implementation judging what rcgen wrote.
fn openssl_verify(dir: &Path, root: &str, untrusted: &[String], leaf: &str) -> Result<(), String> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let root = write("verify-root.pem", root);
    let leaf = write("verify-leaf.pem", leaf);
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify")
        .arg("-x509_strict")
        .arg("-CAfile")
        .arg(&root);
    if !untrusted.is_empty() {
        cmd.arg("-untrusted")
            .arg(write("verify-untrusted.pem", &untrusted.concat()));
    }
    let out = cmd
        .arg(&leaf)
        .output()
        .expect("openssl is installed (Debian's openssl package)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

fn uri_sans(pem: &str) -> Vec<String> {
    let der = jalur_identity::TrustBundle::from_pem(pem)
        .expect("pem")
        .roots[0]
        .clone();
    let (_, x509) = x509_parser::parse_x509_certificate(der.as_ref()).expect("x509");
    let san = x509
        .subject_alternative_name()
        .expect("san ok")
        .expect("san present");
    san.value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::URI(u) => u.to_string(),
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_first_start_creates_a_root_and_a_restart_loads_the_same_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = authority(dir.path());
    let ca = dir.path().join("ca");
    #[cfg(unix)]
    {
        assert_eq!(mode(&ca.join("root-key.pem")), 0o600);
        assert_eq!(mode(&ca.join("root-cert.pem")) & 0o600, 0o600);
    }
    let bundle = std::fs::read_to_string(ca.join("trust-bundle.pem")).expect("bundle file");
    assert_eq!(bundle, first.bundle_pem());
    assert_eq!(first.trust_bundle().roots.len(), 1);
    let root = std::fs::read_to_string(ca.join("root-cert.pem")).expect("root");
    assert_eq!(bundle, root);
    drop(first);

    let again = authority(dir.path());
    assert_eq!(again.bundle_pem(), root, "a restart made a new root");
    // And it signs with the same key: its leaves verify against the first root.
    let (_, request) = csr(&id("shop", "storefront"));
    let chain = again
        .sign_csr(&request, &id("shop", "storefront"), None)
        .expect("signed");
    openssl_verify(dir.path(), &root, &[], &chain[0]).expect("leaf verifies against the root");
}

#[cfg(unix)]
#[test]
fn a_root_key_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(authority(dir.path()));
    let key = dir.path().join("ca/root-key.pem");
    chmod(&key, 0o644);
    let err = Authority::load_or_create(dir.path(), &CaOptions::default()).expect_err("refused");
    assert!(
        matches!(err, CaError::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("root-key.pem") && text.contains("chmod 600"),
        "{text}"
    );
    chmod(&key, 0o640);
    assert!(Authority::load_or_create(dir.path(), &CaOptions::default()).is_err());
    chmod(&key, 0o400);
    Authority::load_or_create(dir.path(), &CaOptions::default()).expect("0400 is private");
}

#[test]
fn half_a_root_is_refused_rather_than_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(authority(dir.path()));
    std::fs::remove_file(dir.path().join("ca/root-cert.pem")).expect("rm");
    let err = Authority::load_or_create(dir.path(), &CaOptions::default()).expect_err("refused");
    assert!(matches!(err, CaError::HalfRoot { .. }), "{err}");
    assert!(
        dir.path().join("ca/root-key.pem").exists(),
        "the key of the old root was overwritten"
    );
}

#[test]
fn a_csr_is_signed_for_its_caller_with_a_capped_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authority(dir.path());
    let caller = id("shop", "storefront");
    let (key, request) = csr(&caller);
    let before = SystemTime::now();
    let chain = ca
        .sign_csr(&request, &caller, Some(Duration::from_secs(7 * 24 * 3600)))
        .expect("signed");
    assert_eq!(chain.len(), 2, "leaf and root");
    assert_eq!(chain[1], ca.bundle_pem());
    assert!(chain
        .iter()
        .all(|c| c.matches("BEGIN CERTIFICATE").count() == 1));
    let cert = WorkloadCert::new(&key, &chain.concat()).expect("the chain certifies the key");
    assert_eq!(cert.id, caller);
    assert_eq!(uri_sans(&chain[0]), vec![caller.to_string()]);
    let life = cert.not_after.duration_since(before).expect("after");
    assert!(
        life <= Duration::from_secs(24 * 3600 + 5) && life >= Duration::from_secs(24 * 3600 - 60),
        "a week was asked, --workload-cert-ttl is 24h, got {life:?}"
    );
    // A shorter request is honoured.
    let chain = ca
        .sign_csr(&request, &caller, Some(Duration::from_secs(3600)))
        .expect("signed");
    let (_, not_after) = verify::validity(
        &jalur_identity::TrustBundle::from_pem(&chain[0])
            .expect("pem")
            .roots[0],
    )
    .expect("validity");
    assert!(not_after.duration_since(before).expect("after") <= Duration::from_secs(3600 + 5));
    openssl_verify(dir.path(), ca.bundle_pem(), &[], &chain[0]).expect("openssl accepts the leaf");
    // A short-lived certificate is not backdated past its own half life: its renewal is ahead.
    let chain = ca
        .sign_csr(&request, &caller, Some(Duration::from_secs(4)))
        .expect("signed");
    let cert = WorkloadCert::new(&key, &chain.concat()).expect("cert");
    assert!(cert.renew_at() > before, "renewal due before issue");
}

#[test]
fn a_csr_for_another_identity_is_permission_denied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authority(dir.path());
    let (_, request) = csr(&id("shop", "payments"));
    let err = ca
        .sign_csr(&request, &id("shop", "storefront"), None)
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "a credential for shop/storefront may not request spiffe://cluster.local/ns/shop/sa/payments"
    );
    // Another trust domain, even with a matching CSR.
    let foreign = SpiffeId::new("evil.example", "shop", "storefront");
    let (_, request) = csr(&foreign);
    let err = ca.sign_csr(&request, &foreign, None).expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("trust domain cluster.local"),
        "{}",
        err.message()
    );
}

#[test]
fn a_csr_naming_more_than_the_caller_or_not_a_csr_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authority(dir.path());
    let caller = id("shop", "storefront");
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI(caller.to_string().try_into().expect("uri")),
        rcgen::SanType::DnsName("bank.example".try_into().expect("dns")),
    ];
    let request = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let err = ca.sign_csr(&request, &caller, None).expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("DNS:bank.example"),
        "{}",
        err.message()
    );

    let err = ca
        .sign_csr("not a csr", &caller, None)
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    // A CSR whose signature does not match its key (the requester does not hold the key).
    let (_, good) = csr(&caller);
    let der = pem::parse(&good).expect("pem");
    let mut bytes = der.contents().to_vec();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    let forged = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", bytes));
    let err = ca.sign_csr(&forged, &caller, None).expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// An operator's root and intermediate, as Istio's `cacerts` holds them.
struct PluginFiles {
    root_pem: String,
    inter_pem: String,
    plugin: PluginCa,
}

fn plugin_files(dir: &Path) -> PluginFiles {
    let root_key = KeyPair::generate().expect("key");
    let mut root = CertificateParams::default();
    root.distinguished_name
        .push(DnType::CommonName, "operator root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(root, root_key);
    let inter_key = KeyPair::generate().expect("key");
    let mut inter = CertificateParams::default();
    inter.distinguished_name = rcgen::DistinguishedName::new();
    inter
        .distinguished_name
        .push(DnType::CommonName, "cluster one intermediate");
    inter.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    inter.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    inter.use_authority_key_identifier_extension = true;
    let inter_cert = inter
        .signed_by(&inter_key, &root_issuer)
        .expect("intermediate");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let key = write("ca-key.pem", &inter_key.serialize_pem());
    #[cfg(unix)]
    chmod(&key, 0o600);
    PluginFiles {
        plugin: PluginCa {
            cert: write("ca-cert.pem", &inter_cert.pem()),
            key,
            chain: write("cert-chain.pem", &(inter_cert.pem() + &root_cert.pem())),
        },
        root_pem: root_cert.pem(),
        inter_pem: inter_cert.pem(),
    }
}

#[test]
fn a_plugin_intermediate_signs_chains_openssl_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = plugin_files(dir.path());
    let opts = CaOptions {
        plugin: Some(files.plugin.clone()),
        ..CaOptions::default()
    };
    let state = dir.path().join("state");
    let ca = Authority::load_or_create(&state, &opts).expect("plug-in CA");
    assert_eq!(
        ca.bundle_pem(),
        files.root_pem,
        "the bundle is the operator's root"
    );
    assert!(
        !state.join("ca/root-key.pem").exists(),
        "a root was created beside the plug-in"
    );
    let caller = id("shop", "storefront");
    let (key, request) = csr(&caller);
    let chain = ca.sign_csr(&request, &caller, None).expect("signed");
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(chain[1], files.inter_pem);
    assert_eq!(chain[2], files.root_pem);
    WorkloadCert::new(&key, &chain.concat()).expect("chain certifies the key");
    openssl_verify(dir.path(), &files.root_pem, &chain[1..2], &chain[0])
        .expect("openssl accepts leaf -> intermediate -> root");
    // Without the intermediate the leaf does not verify: the chain really goes through it.
    assert!(openssl_verify(dir.path(), &files.root_pem, &[], &chain[0]).is_err());

    // A chain file that stops before the root is refused, naming the file.
    std::fs::write(&files.plugin.chain, &files.inter_pem).expect("write");
    let err = Authority::load_or_create(&state, &opts).expect_err("refused");
    assert!(err.to_string().contains("cert-chain.pem"), "{err}");
    // A key that is not the certificate's.
    std::fs::write(
        &files.plugin.chain,
        files.inter_pem.clone() + &files.root_pem,
    )
    .expect("write");
    std::fs::write(
        &files.plugin.key,
        KeyPair::generate().expect("k").serialize_pem(),
    )
    .expect("write");
    let err = Authority::load_or_create(&state, &opts).expect_err("refused");
    assert!(err.to_string().contains("is not the key of"), "{err}");
    #[cfg(unix)]
    {
        // World-readable where every account can reach it (the rule: `ca/files.rs`).
        chmod(dir.path(), 0o755);
        chmod(&files.plugin.key, 0o644);
        let err = Authority::load_or_create(&state, &opts).expect_err("refused");
        assert!(matches!(err, CaError::PluginKeyPermissions { .. }), "{err}");
    }
}

#[test]
fn extra_roots_join_the_trust_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let other = plugin_files(dir.path());
    let extra = dir.path().join("extra.pem");
    std::fs::write(&extra, &other.root_pem).expect("write");
    let opts = CaOptions {
        extra_roots: Some(extra),
        ..CaOptions::default()
    };
    let ca = Authority::load_or_create(dir.path(), &opts).expect("authority");
    assert_eq!(ca.trust_bundle().roots.len(), 2);
    let file = std::fs::read_to_string(dir.path().join("ca/trust-bundle.pem")).expect("read");
    assert!(file.ends_with(&other.root_pem), "{file}");
    assert_eq!(file, ca.bundle_pem());
}

#[tokio::test]
async fn the_control_plane_certificate_names_its_id_names_and_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = authority(dir.path());
    let bind: IpAddr = "10.1.2.3".parse().expect("ip");
    let creds = ca.server_credentials(&[bind]).expect("credentials");
    let current = creds.borrow().clone();
    assert_eq!(
        current.cert.id.to_string(),
        "spiffe://cluster.local/ns/jalur-system/sa/jalur-control"
    );
    let sans = uri_sans(&current.cert.chain_pem());
    for want in [
        "spiffe://cluster.local/ns/jalur-system/sa/jalur-control",
        "DNS:localhost",
        "DNS:jalur-control",
        "DNS:jalur-control.jalur-system.svc",
        "IP:[127, 0, 0, 1]",
        "IP:[10, 1, 2, 3]",
    ] {
        assert!(
            sans.iter().any(|s| s == want),
            "{want} missing from {sans:?}"
        );
    }
    openssl_verify(dir.path(), ca.bundle_pem(), &[], &current.cert.chain_pem())
        .expect("openssl accepts the control plane certificate");
}

#[tokio::test(start_paused = true)]
async fn the_control_plane_certificate_is_renewed_at_half_life() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = CaOptions {
        workload_ttl: Duration::from_secs(3600),
        ..CaOptions::default()
    };
    let ca = Authority::load_or_create(dir.path(), &opts).expect("authority");
    let mut creds = ca.server_credentials(&[]).expect("credentials");
    let first = creds.borrow_and_update().cert.chain_pem();
    // Let the renewal task start its timer before the clock moves.
    tokio::task::yield_now().await;
    // Half of the hour plus the one-minute backdate: due at ~29 min.
    tokio::time::advance(Duration::from_secs(25 * 60)).await;
    tokio::task::yield_now().await;
    assert!(!creds.has_changed().expect("open"), "renewed too early");
    tokio::time::advance(Duration::from_secs(6 * 60)).await;
    tokio::time::timeout(Duration::from_secs(1), creds.changed())
        .await
        .expect("renewed by half life")
        .expect("open");
    assert_ne!(creds.borrow().cert.chain_pem(), first);
}

fn service(ca: Arc<Authority>) -> (CaService, CaMetrics) {
    let metrics = CaMetrics::default();
    let svc = CaService::new(ca, vec![Arc::new(ClientCertAuthenticator)], metrics.clone());
    (svc, metrics)
}

fn request(csr: String, tls: Option<TlsConnectInfo>) -> tonic::Request<IstioCertificateRequest> {
    let mut r = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 0,
        metadata: None,
    });
    if let Some(tls) = tls {
        r.extensions_mut().insert(tls);
    }
    r
}

fn refused(metrics: &CaMetrics, reason: &str) -> u64 {
    metrics
        .refused
        .get_or_create(&vec![("reason".to_string(), reason.to_string())])
        .get()
}

#[tokio::test]
async fn a_renewal_authenticated_by_the_client_certificate_is_signed_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (svc, metrics) = service(authority(dir.path()));
    let caller = id("shop", "storefront");
    let tls = TlsConnectInfo {
        remote: None,
        peer: Some(caller.clone()),
    };
    let (_, csr_pem) = csr(&caller);
    let chain = svc
        .create_certificate(request(csr_pem, Some(tls.clone())))
        .await
        .expect("signed")
        .into_inner()
        .cert_chain;
    assert_eq!(uri_sans(&chain[0]), vec![caller.to_string()]);
    assert_eq!(metrics.issued.get(), 1);

    let (_, other) = csr(&id("shop", "payments"));
    let err = svc
        .create_certificate(request(other, Some(tls)))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(refused(&metrics, "permission_denied"), 1);

    let (_, csr_pem) = csr(&caller);
    let err = svc
        .create_certificate(request(csr_pem, Some(TlsConnectInfo::default())))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "no client certificate and no bearer token");
    assert_eq!(refused(&metrics, "unauthenticated"), 1);
    assert_eq!(metrics.issued.get(), 1);
}

#[test]
fn two_control_planes_starting_on_one_state_dir_share_one_root() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let ca = Authority::load_or_create(&path, &CaOptions::default())
                        .expect("each start succeeds");
                    let tokens = Tokens::load_or_create(&path, "cluster.local").expect("tokens");
                    let t = tokens
                        .create("shop", "storefront", Duration::from_secs(60), true)
                        .expect("token");
                    (ca.bundle_pem().to_string(), t.token)
                })
            })
            .collect();
        let results: Vec<(String, String)> = starts
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        assert!(
            results.iter().all(|(b, _)| b == &results[0].0),
            "two roots were created"
        );
        // One token key: a token minted by any of them verifies on a fresh load.
        let tokens = Tokens::load_or_create(&path, "cluster.local").expect("tokens");
        for (_, t) in &results {
            let claims = tokens.verify(t).map(|(c, _)| c);
            // (tokens.json is last-writer-wins between processes; only the signature matters here)
            if let Err(e) = &claims {
                assert!(!e.message().contains("signature"), "{}", e.message());
            }
        }
    }
}

/// Istio's plug-in CA recipe done with openssl itself: an RSA root and intermediate, the
/// intermediate's key in the traditional PKCS#1 form Istio's samples ship.
#[test]
fn an_openssl_made_rsa_intermediate_works_as_plugin_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .expect("openssl is installed (Debian's openssl package)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        d.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,digitalSignature,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n",
    )
    .expect("write");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "root-key.pem",
        "-out",
        "root-cert.pem",
        "-days",
        "3650",
        "-subj",
        "/O=Istio/CN=Root CA",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key8.pem",
        "-out",
        "ca.csr",
        "-subj",
        "/O=Istio/CN=Intermediate CA/L=cluster1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root-cert.pem",
        "-CAkey",
        "root-key.pem",
        "-CAcreateserial",
        "-out",
        "ca-cert.pem",
        "-days",
        "730",
        "-extfile",
        "ext.cnf",
    ]);
    openssl(&[
        "rsa",
        "-in",
        "ca-key8.pem",
        "-traditional",
        "-out",
        "ca-key.pem",
    ]);
    let key_text = std::fs::read_to_string(d.join("ca-key.pem")).expect("key");
    assert!(
        key_text.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{key_text}"
    );
    #[cfg(unix)]
    chmod(&d.join("ca-key.pem"), 0o600);
    let root = std::fs::read_to_string(d.join("root-cert.pem")).expect("root");
    let inter = std::fs::read_to_string(d.join("ca-cert.pem")).expect("inter");
    std::fs::write(d.join("cert-chain.pem"), inter.clone() + &root).expect("write");
    let opts = CaOptions {
        plugin: Some(PluginCa {
            cert: d.join("ca-cert.pem"),
            key: d.join("ca-key.pem"),
            chain: d.join("cert-chain.pem"),
        }),
        ..CaOptions::default()
    };
    let ca = Authority::load_or_create(&d.join("state"), &opts).expect("plug-in CA");
    let caller = id("shop", "storefront");
    let (key, request) = csr(&caller);
    let chain = ca.sign_csr(&request, &caller, None).expect("signed");
    assert_eq!(chain.len(), 3);
    WorkloadCert::new(&key, &chain.concat()).expect("chain certifies the key");
    openssl_verify(d, &root, &chain[1..2], &chain[0]).expect("openssl accepts the chain");
}
