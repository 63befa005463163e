//! Server certificates: loading PEM files, making self-signed ones with rcgen, and writing
//! them for `mtt cert`.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::fingerprint;
use crate::error::CertError;
use crate::{Error, Result};

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct CertKey {
    /// DER certificates, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// DER private key.
    pub key: PrivateKeyDer<'static>,
}

impl CertKey {
    /// SHA-256 of the leaf certificate, as clients pin it.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint::of(c))
            .unwrap_or_default()
    }
}

/// Loads a PEM certificate chain and a PEM key (PKCS#8, PKCS#1 or SEC1).
pub fn load(cert: &Path, key: &Path) -> Result<CertKey> {
    let chain = load_certs("-cert", cert)?;
    let key_path = key;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        let encrypted = std::fs::read_to_string(key_path)
            .is_ok_and(|t| t.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        match encrypted {
            true => Error::cert("-key", key_path, CertError::Encrypted),
            false => Error::cert("-key", key_path, pem(e)),
        }
    })?;
    Ok(CertKey { chain, key })
}

/// Loads every certificate of a PEM file; `flag` names the option in errors.
pub fn load_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e| Error::cert(flag, path, e);
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem(e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(pem(e)))?;
    if chain.is_empty() {
        return Err(bad(CertError::NoCertificate));
    }
    Ok(chain)
}

fn pem(e: rustls::pki_types::pem::Error) -> CertError {
    match e {
        rustls::pki_types::pem::Error::NoItemsFound => CertError::NoKey,
        rustls::pki_types::pem::Error::Io(e) => CertError::Unreadable(e),
        other => CertError::Pem(other),
    }
}

/// A self-signed certificate and its PEM texts.
pub struct SelfSigned {
    /// The name it was made for.
    pub name: String,
    /// For the TLS server.
    pub cert_key: CertKey,
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM of the PKCS#8 key.
    pub key_pem: String,
}

/// Makes an ECDSA P-256 self-signed certificate for `name` (DNS name, or IP address as an IP
/// SAN); a random plausible host name when `None`.
pub fn self_signed(name: Option<&str>) -> Result<SelfSigned> {
    let name = match name {
        Some(n) => n.to_string(),
        None => random_name()?,
    };
    let bad = |e: rcgen::Error| Error::failed(format!("self-signed certificate for '{name}'"), e);
    let mut params = rcgen::CertificateParams::new(vec![name.clone()]).map_err(bad)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.as_str());
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let cert = params.self_signed(&key).map_err(bad)?;
    let cert_key = CertKey {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    Ok(SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        name,
        cert_key,
    })
}

/// A random host name that looks like an ordinary site (`kavoleti.com`).
pub fn random_name() -> Result<String> {
    let bytes = crate::random::bytes::<8>()?;
    const CONSONANTS: &[u8] = b"bcdfghklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    const TLDS: [&str; 4] = ["com", "net", "org", "io"];
    let syllables = 2 + (bytes[0] % 3) as usize;
    let mut name = String::new();
    for b in &bytes[1..=syllables] {
        name.push(CONSONANTS[(b >> 4) as usize % CONSONANTS.len()] as char);
        name.push(VOWELS[(b & 0x0f) as usize % VOWELS.len()] as char);
    }
    name.push('.');
    name.push_str(TLDS[(bytes[7] % 4) as usize]);
    Ok(name)
}

/// Refuses `-n` values no client would accept a certificate for (the client's own check):
/// a certificate for such a name is useless.
pub fn check_name(name: &str) -> Result<()> {
    if name.contains('/')
        || name.starts_with('.')
        || rustls::pki_types::ServerName::try_from(name).is_err()
    {
        return Err(Error::usage(format!(
            "-n: '{name}' is neither a DNS name nor an IP address (e.g. tunnel.example or 203.0.113.7)"
        )));
    }
    Ok(())
}

/// `mtt cert`: writes `NAME.crt` and `NAME.key` (mode 0600, never over existing files) into
/// `dir` for a self-signed certificate; returns their paths and the fingerprint.
pub fn write_self_signed(name: &str, dir: &Path) -> Result<(PathBuf, PathBuf, String)> {
    use std::io::Write;

    check_name(name)?;
    if !dir.exists() {
        crate::sys::create_private_dir(dir)
            .map_err(|e| Error::io(format!("create -out {}", dir.display()), e))?;
    }
    let ss = self_signed(Some(name))?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    let write = |path: &Path, mode: u32, data: &str| -> Result<()> {
        let mut f = crate::sys::create_new_file(path, mode).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::usage(format!(
                "{} exists and is not overwritten: remove it, or choose another -out",
                path.display()
            )),
            _ => Error::io(format!("write {}", path.display()), e),
        })?;
        f.write_all(data.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    };
    write(&key_path, 0o600, &ss.key_pem)?;
    if let Err(e) = write(&cert_path, 0o644, &ss.cert_pem) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((cert_path, key_path, ss.cert_key.fingerprint()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encrypted key is said to be one, with the command that decrypts it; damaged base64
    /// is said to be unreadable PEM, not only in the decoder's words.
    #[test]
    fn key_and_pem_troubles_are_said_plainly() {
        let dir = tempfile::tempdir().expect("tmp");
        let ss = self_signed(Some("t.example")).expect("cert");
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, &ss.cert_pem).expect("write");
        let key = dir.path().join("k.pem");
        std::fs::write(
            &key,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkqhkiG9w0BBQwwHAQI\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let e = load(&cert, &key)
            .expect_err("encrypted")
            .report()
            .to_string();
        assert!(
            e.contains("the key is encrypted") && e.contains("openssl pkey"),
            "{e}"
        );
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nMII!!!notbase64\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = load_certs("-cert", &broken)
            .expect_err("broken")
            .report()
            .to_string();
        assert!(e.contains("not readable as PEM"), "{e}");
    }

    #[test]
    fn random_names_look_like_hosts() {
        for _ in 0..50 {
            let n = random_name().unwrap();
            let (host, tld) = n.split_once('.').unwrap();
            assert!((4..=8).contains(&host.len()), "{n}");
            assert!(["com", "net", "org", "io"].contains(&tld), "{n}");
            assert!(rustls::pki_types::DnsName::try_from(n.as_str()).is_ok());
        }
    }

    #[test]
    fn self_signed_for_ip_and_name() {
        let s = self_signed(Some("127.0.0.1")).unwrap();
        assert_eq!(s.cert_key.fingerprint().len(), 64);
        let s = self_signed(None).unwrap();
        assert!(s.name.contains('.'));
        assert!(s.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }
}
