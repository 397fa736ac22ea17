//! Secrets named by files (`file-cert:CHAIN~KEY`, `file-root:CA`: a gateway's or a
//! DestinationRule's certificates as Istio names them), served beside `default`/`ROOTCA`.
//! The first request for a name loads its files (`jalur_identity::files`, the loader jalur
//! proxy uses) and starts watching them; every later change bumps one counter that each SDS
//! stream follows, so a replaced certificate is pushed to Envoy without a restart. A name whose
//! files do not load is not answered (Envoy keeps the listener warming, as it does for any
//! secret it waits for) and is logged once, naming the file; never the key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, TlsCertificate,
};
use jalur_identity::files::{FileSecret, FileWatch, Loaded};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{content_version, inline};

/// The file secrets one SDS server has been asked for, by name.
#[derive(Clone)]
pub(crate) struct FileSecrets {
    /// `None`: the name's files did not load when first asked (not retried until asked again).
    watches: Arc<Mutex<HashMap<String, Option<FileWatch>>>>,
    changed: Arc<watch::Sender<u64>>,
    stop: watch::Receiver<bool>,
}

impl FileSecrets {
    /// Watches end when `stop` turns true or its sender goes away (the server stopped).
    pub fn new(stop: watch::Receiver<bool>) -> FileSecrets {
        FileSecrets {
            watches: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            stop,
        }
    }

    /// Bumped whenever a watched file secret changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The secret `name`, when it is a file secret whose files load (`None` otherwise).
    pub fn build(&self, name: &str) -> Option<(String, secret::Type)> {
        let secret = match FileSecret::parse(name)? {
            Ok(s) => s,
            Err(e) => {
                self.note_failure(name, &e);
                return None;
            }
        };
        let loaded = self.current(name, &secret)?;
        Some(match &*loaded {
            Loaded::Cert(c) => (
                // The version hashes the chain only: it changes whenever the key does.
                content_version(&c.chain_pem),
                secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(c.chain_pem.clone())),
                    private_key: Some(inline(c.key_pem_secret().to_vec())),
                    ..Default::default()
                }),
            ),
            Loaded::Root(r) => (
                content_version(&r.pem),
                secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(inline(r.pem.clone())),
                    ..Default::default()
                }),
            ),
        })
    }

    fn note_failure(&self, name: &str, why: &str) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if watches.insert(name.to_string(), None).is_none() {
            warn!(secret = %name, error = %why, "Envoy asked for a file secret that does not load; not answering it");
        }
    }

    fn current(&self, name: &str, secret: &FileSecret) -> Option<Arc<Loaded>> {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(w)) = watches.get(name) {
            return Some(w.current());
        }
        match FileWatch::start(secret) {
            Ok(w) => {
                info!(secret = %name, "serving a file secret; watching its files");
                self.forward(w.subscribe());
                let current = w.current();
                watches.insert(name.to_string(), Some(w));
                Some(current)
            }
            Err(e) => {
                // Logged once per failure streak: a name asked again is retried.
                if watches.insert(name.to_string(), None).is_none() {
                    warn!(secret = %name, error = %e, "Envoy asked for a file secret that does not load; not answering it");
                }
                None
            }
        }
    }

    /// Bumps the counter on every change of `rx` until the server stops.
    fn forward(&self, mut rx: watch::Receiver<Arc<Loaded>>) {
        let changed = self.changed.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return },
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return } else { continue },
                }
                changed.send_modify(|n| *n += 1);
            }
        });
    }
}
