//! Certificates, apart from the transport that presents them: the one a server presents
//! (loaded from `-cert`/`-key`, made self-signed at start or obtained through ACME), held in
//! a resolver that handshakes read and replaced in place when the files change or ACME renews
//! it; PEM files ([`pem`]), fingerprints and pins ([`fingerprint`]), ACME ([`acme`]), and the
//! process's one crypto provider ([`provider`]).

pub mod acme;
pub mod fingerprint;
pub mod pem;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::CertError;
use crate::{Error, Result};
use acme::Acme;
use pem::CertKey;

/// The one crypto provider of the process: aws-lc-rs, in a browser's order of preference.
/// Cipher suites: AES-128-GCM first (as browsers offer, and the fastest with AES
/// instructions), then AES-256-GCM and ChaCha20-Poly1305, TLS 1.3 before 1.2. Key exchange:
/// X25519MLKEM768 (post-quantum hybrid) first, then X25519, P-256 and P-384; a client sends
/// the hybrid's share and X25519's, so a server without ML-KEM needs no second round trip,
/// and a server takes the first group of the client's list it knows. Passed explicitly so
/// two compiled-in providers can never clash.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider, kx_group};
            Arc::new(rustls::crypto::CryptoProvider {
                cipher_suites: vec![
                    cs::TLS13_AES_128_GCM_SHA256,
                    cs::TLS13_AES_256_GCM_SHA384,
                    cs::TLS13_CHACHA20_POLY1305_SHA256,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                ],
                kx_groups: vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                    kx_group::SECP384R1,
                ],
                ..default_provider()
            })
        })
        .clone()
}

/// Where a server's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files given with `-cert` and `-key`.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Made at start-up for this name (a random plausible one when `None`).
    SelfSigned(Option<String>),
    /// Obtained and renewed through ACME (`-acme`).
    Acme(acme::AcmeOptions),
}

/// How long `left` is, as a person says it: days (with hours under three days), hours,
/// minutes or seconds.
fn in_words(left: Duration) -> String {
    let s = left.as_secs();
    match s {
        0..=119 => format!("{s} seconds"),
        120..=7199 => format!("{} minutes", s / 60),
        7200..=259_199 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// A server's certificate and where it came from.
pub struct Certs {
    store: Arc<CertStore>,
    files: Option<[PathBuf; 2]>,
    acme: Option<Arc<Acme>>,
}

impl Certs {
    /// Loads the files, makes a self-signed certificate (and says how to pin it), or (ACME)
    /// takes the cached certificate if there is a valid one.
    pub fn new(source: &CertSource) -> Result<Self> {
        let (ck, files) = match source {
            CertSource::Files { cert, key } => {
                (pem::load(cert, key)?, Some([cert.clone(), key.clone()]))
            }
            CertSource::SelfSigned(name) => {
                let ss = pem::self_signed(name.as_deref())?;
                log::warn!(
                    "no -cert/-key: using a self-signed certificate for '{}'; clients can pin it with -cert-sha256 {}",
                    ss.name,
                    ss.cert_key.fingerprint()
                );
                (ss.cert_key, None)
            }
            CertSource::Acme(opts) => {
                let store = CertStore::empty();
                let acme = Acme::new(opts.clone(), store.clone())?;
                return Ok(Certs {
                    store,
                    files: None,
                    acme: Some(Arc::new(acme)),
                });
            }
        };
        let store = CertStore::new(ck).map_err(|e| mismatch(files.as_ref(), e))?;
        Ok(Certs {
            store,
            files,
            acme: None,
        })
    }

    /// The resolver TLS handshakes take the certificate from.
    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// What obtains and renews the certificate, with `-acme`.
    pub fn acme(&self) -> Option<Arc<Acme>> {
        self.acme.clone()
    }

    /// SHA-256 of the certificate served now (empty while there is none).
    pub fn fingerprint(&self) -> String {
        self.store.fingerprint()
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
        let ck = pem::load(cert, key)?;
        let fp = ck.fingerprint();
        self.store
            .replace(ck)
            .map_err(|e| mismatch(self.files.as_ref(), e))?;
        Ok(Some(fp))
    }
}

/// The certificate a server presents, replaceable while it runs (hot reload, ACME renewal):
/// handshakes take whichever is current; live connections keep the one they started with.
/// While an ACME order is validated it also holds the challenge certificates, presented only
/// to validation connections (ALPN `acme-tls/1`).
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Option<Served>>,
    challenges: RwLock<HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
}

#[derive(Debug)]
struct Served {
    key: Arc<rustls::sign::CertifiedKey>,
    /// Read from the certificate when first asked (renewal, a metrics scrape): a server
    /// that is never asked never pages in the parser.
    validity: std::sync::OnceLock<Option<Validity>>,
}

impl Served {
    fn validity(&self) -> Option<&Validity> {
        self.validity
            .get_or_init(|| self.key.cert.first().and_then(|c| Validity::of(c)))
            .as_ref()
    }
}

/// What a certificate says about its life and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The end, as the certificate writes it.
    pub not_after_text: String,
    /// Serial number, hex.
    pub serial: String,
    /// DNS names of the subject alternative names.
    pub names: Vec<String>,
}

impl Validity {
    /// Reads a DER certificate; `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<Self> {
        let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
        let at = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                UNIX_EPOCH
            }
        };
        let names = c
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Validity {
            not_before: at(c.validity().not_before),
            not_after: at(c.validity().not_after),
            not_after_text: c.validity().not_after.to_string(),
            serial: hex::encode(c.tbs_certificate.raw_serial()),
            names,
        })
    }

    /// How long until only `left` (a fraction) of the lifetime is left (zero if already).
    pub fn renew_in(&self, left: f64) -> Duration {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let renew_at = self.not_after - life.mul_f64(left);
        renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }

    /// When it expires, as written, and how far off that is.
    pub fn until(&self) -> String {
        match self.not_after.duration_since(SystemTime::now()) {
            Ok(left) => format!("{} (in {})", self.not_after_text, in_words(left)),
            Err(_) => format!("{} (expired)", self.not_after_text),
        }
    }
}

/// A certificate and key that rustls refused together, blamed on the file at fault when
/// there are files: a certificate it cannot read, a key of a kind it cannot use, or a key
/// that is another certificate's.
fn mismatch(files: Option<&[PathBuf; 2]>, e: Error) -> Error {
    let Some([cert, key]) = files else {
        return e;
    };
    match e {
        Error::Tls(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            // The plain words say all a key that is another certificate's needs.
            Error::cert("-key", key, CertError::Mismatch(None))
        }
        Error::Tls(e @ rustls::Error::InvalidCertificate(_)) => {
            Error::cert("-cert", cert, CertError::UnusableCertificate(e))
        }
        Error::Tls(e @ rustls::Error::General(_)) => {
            Error::cert("-key", key, CertError::UnusableKey(e))
        }
        Error::Tls(e) => Error::cert("-key", key, CertError::Mismatch(Some(e))),
        e => e,
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
        let store = Self::empty();
        store.replace(ck)?;
        Ok(store)
    }

    /// A store with no certificate yet: handshakes fail until one is put in. Its certificate's
    /// expiry is what `mtt_certificate_expiry_seconds` shows, read when metrics are rendered.
    pub fn empty() -> Arc<Self> {
        let store = Arc::new(CertStore {
            current: RwLock::new(None),
            challenges: RwLock::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&store);
        crate::metrics::before_render(Box::new(move || {
            let Some(store) = weak.upgrade() else { return };
            let secs = store
                .validity()
                .and_then(|v| v.not_after.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            crate::metrics::get().certificate_expiry.set(secs);
        }));
        store
    }

    /// Presents `ck` from the next handshake on; on error the current one stays.
    pub fn replace(&self, ck: CertKey) -> Result<()> {
        let key = Self::certified(ck)?;
        let served = Served {
            key,
            validity: std::sync::OnceLock::new(),
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(served);
        Ok(())
    }

    /// SHA-256 of the certificate presented now (empty while there is none).
    pub fn fingerprint(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|s| s.key.cert.first().map(|c| fingerprint::of(c)))
            .unwrap_or_default()
    }

    /// Validity of the certificate presented now, if there is one.
    pub fn validity(&self) -> Option<Validity> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|s| s.validity().cloned())
    }

    /// Presents `proof` to TLS-ALPN-01 validation connections for `name`.
    pub fn answer(&self, name: &str, proof: CertKey) {
        // Not through `certified`: its check of key against certificate parses the
        // certificate with webpki, which refuses the critical acmeIdentifier extension.
        let certified = provider()
            .key_provider
            .load_private_key(proof.key)
            .map(|key| Arc::new(rustls::sign::CertifiedKey::new(proof.chain, key)));
        match certified {
            Ok(k) => {
                self.challenges
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.to_ascii_lowercase(), k);
            }
            Err(e) => log::warn!("ACME: challenge certificate for {name}: {e}"),
        }
    }

    /// Stops answering validation connections for `name`.
    pub fn unanswer(&self, name: &str) {
        self.challenges
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let validating = hello
            .alpn()
            .is_some_and(|mut ps| ps.any(|p| p == acme::ALPN_ACME));
        if validating {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&name)
                .cloned();
        }
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|s| s.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_as_a_person_says_it() {
        assert_eq!(in_words(Duration::from_secs(157_766_398)), "1825 days");
        assert_eq!(in_words(Duration::from_secs(3 * 86_400)), "3 days");
        assert_eq!(in_words(Duration::from_secs(50 * 3600)), "50 hours");
        assert_eq!(in_words(Duration::from_secs(300)), "5 minutes");
        assert_eq!(in_words(Duration::from_secs(59)), "59 seconds");
    }
}
