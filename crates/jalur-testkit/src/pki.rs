//! Plain X.509 certificates in files, as an operator hands them to a gateway or a
//! DestinationRule (Istio's `serverCertificate`/`privateKey`/`caCertificates`): CAs, DNS-named
//! leaves, and replacing a file the way operators rotate (write beside, rename over).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A CA that signs leaves for DNS names (no SPIFFE ids).
pub struct FileCa {
    issuer: Issuer<'static, KeyPair>,
    pub root_pem: String,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    /// The leaf's DER, to compare with what a peer presented.
    pub der: Vec<u8>,
}

impl FileCa {
    pub fn new(name: &str) -> FileCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let root = params.self_signed(&key).expect("CA");
        FileCa {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS names or IP addresses), usable as a server and as a client.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            chain_pem: cert.pem(),
            der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the CA certificate to `dir/name`.
    pub fn write_root(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        replace(&path, &self.root_pem);
        path
    }
}

impl Leaf {
    /// Writes chain and key to `dir/NAME.pem` and `dir/NAME-key.pem`.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        replace(&cert, &self.chain_pem);
        replace(&key, &self.key_pem);
        (cert, key)
    }

    /// A rustls client identity from this leaf.
    pub fn client_auth(
        &self,
    ) -> (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .expect("key PEM");
        (certs, key)
    }
}

/// Replaces `path` atomically: the content goes to a file beside it, renamed over it.
pub fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp-new");
    std::fs::write(&tmp, content).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}
