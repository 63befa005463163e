//! Server certificates: loading PEM files, making self-signed ones with rcgen, and the SHA-256
//! fingerprints clients pin with `-cert-sha256`.

use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

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
            .map(|c| fingerprint(c))
            .unwrap_or_default()
    }
}

/// Loads a PEM certificate chain and a PEM key (PKCS#8, PKCS#1 or SEC1).
pub fn load(cert: &Path, key: &Path) -> Result<CertKey> {
    let chain = load_certs("cert", cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("-key {}: {}", key.display(), pem_error(e))))?;
    Ok(CertKey { chain, key })
}

/// Loads every certificate of a PEM file; `flag` names the option in errors.
pub fn load_certs(flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |why: String| Error::Tls(format!("-{flag} {}: {why}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(pem_error(e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_error(e)))?;
    if chain.is_empty() {
        return Err(bad(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    Ok(chain)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM private key found (PKCS#8, PKCS#1 or SEC1)".into(),
        other => format!("not valid PEM: {other:?}"),
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
    let bad = |e: rcgen::Error| Error::Tls(format!("self-signed certificate for '{name}': {e}"));
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
    let mut bytes = [0u8; 8];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Tls("no system randomness".into()))?;
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

/// SHA-256 of a DER certificate as 64 lowercase hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    hex(&sha256(der))
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
