//! The certificate a server presents: loaded from `-cert`/`-key` or made self-signed at start,
//! held in a resolver that handshakes read, and replaced in place when the files change.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use super::cert::{self, CertKey};
use super::options::CertSource;
use super::tls::provider;
use crate::error::CertError;
use crate::{Error, Result};

/// A server's certificate, where it came from, and its fingerprint.
pub struct Certs {
    store: Arc<CertStore>,
    files: Option<[PathBuf; 2]>,
    fingerprint: RwLock<String>,
}

impl Certs {
    /// Loads the files, or makes a self-signed certificate (and says how to pin it).
    pub fn new(source: &CertSource) -> Result<Self> {
        let (ck, files) = match source {
            CertSource::Files { cert, key } => {
                (cert::load(cert, key)?, Some([cert.clone(), key.clone()]))
            }
            CertSource::SelfSigned(name) => {
                let ss = cert::self_signed(name.as_deref())?;
                log::warn!(
                    "no -cert/-key: using a self-signed certificate for '{}'; clients can pin it with -cert-sha256 {}",
                    ss.name,
                    ss.cert_key.fingerprint()
                );
                (ss.cert_key, None)
            }
        };
        let fingerprint = RwLock::new(ck.fingerprint());
        let store = CertStore::new(ck).map_err(|e| mismatch(files.as_ref(), e))?;
        Ok(Certs {
            store,
            files,
            fingerprint,
        })
    }

    /// The resolver TLS handshakes take the certificate from.
    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// SHA-256 of the certificate served now.
    pub fn fingerprint(&self) -> String {
        self.fingerprint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The `-cert`/`-key` files, if the certificate came from files.
    pub fn files(&self) -> Option<[PathBuf; 2]> {
        self.files.clone()
    }

    /// Re-reads the files: new handshakes present the new certificate, live tunnels are
    /// untouched; files that do not load leave the old certificate in place. Returns the new
    /// fingerprint, or `None` when there are no files to re-read.
    pub fn reload(&self) -> Result<Option<String>> {
        let Some([cert, key]) = &self.files else {
            return Ok(None);
        };
        let ck = cert::load(cert, key)?;
        let fp = ck.fingerprint();
        self.store
            .replace(ck)
            .map_err(|e| mismatch(self.files.as_ref(), e))?;
        *self.fingerprint.write().unwrap_or_else(|p| p.into_inner()) = fp.clone();
        Ok(Some(fp))
    }
}

/// The certificate a server presents, replaceable while it runs (hot reload): handshakes
/// take whichever is current; live connections keep the one they started with.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

/// A certificate and key that rustls refused together: about the key file when there is one.
fn mismatch(files: Option<&[PathBuf; 2]>, e: Error) -> Error {
    match (files, e) {
        (Some([_, key]), Error::Tls(e)) => Error::cert("-key", key, CertError::Mismatch(e)),
        (_, e) => e,
    }
}

impl CertStore {
    fn certified(ck: CertKey) -> Result<Arc<rustls::sign::CertifiedKey>> {
        rustls::sign::CertifiedKey::from_der(ck.chain, ck.key, &provider())
            .map(Arc::new)
            .map_err(Error::Tls)
    }

    /// A store holding `ck` (the key must belong to the certificate).
    pub fn new(ck: CertKey) -> Result<Arc<Self>> {
        Ok(Arc::new(CertStore {
            current: RwLock::new(Self::certified(ck)?),
        }))
    }

    /// Presents `ck` from the next handshake on; on error the current one stays.
    pub fn replace(&self, ck: CertKey) -> Result<()> {
        let next = Self::certified(ck)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}
