//! Certificates for tests: a CA and its leaf, and self-signed ones, as PEM files.

use super::*;

/// A CA and a leaf it signed for `localhost` and 127.0.0.1, written as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mtt test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("p");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let write = |name: &str, data: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).expect("write");
        p
    };
    let ca = write("ca.crt", ca_cert.pem());
    let cert = write("server.crt", format!("{}{}", leaf.pem(), ca_cert.pem()));
    let key = write("server.key", leaf_key.serialize_pem());
    Pki { dir, ca, cert, key }
}

/// A self-signed certificate for `name` written to PEM files: (dir, cert, key, SHA-256).
pub fn self_signed_files(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let ss = mtt::testing::certs::pem::self_signed(Some(name)).expect("cert");
    let cert = dir.path().join("c.pem");
    let key = dir.path().join("k.pem");
    std::fs::write(&cert, &ss.cert_pem).expect("write cert");
    std::fs::write(&key, &ss.key_pem).expect("write key");
    (dir, cert, key, ss.cert_key.fingerprint())
}
