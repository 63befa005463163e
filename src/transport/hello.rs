//! What a client's TLS hello offers and how it trusts the server: the rustls client
//! configuration of a mode (ALPN, GREASE or real ECH, certificate decompression, TLS 1.2 or
//! not) and the verifiers of pinned and unverified (`-sv`) servers.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::options::{TlsClientOptions, Verify};
use crate::certs::{fingerprint, pem, provider};
use crate::error::CertError;
use crate::{Error, Result};

/// Where a client keeps the sessions it may resume: one store for every configuration of a
/// client (ECH, TLS 1.2 fallback), none with `-no-resume`.
pub(super) fn resumption(
    cfg: &TlsClientOptions,
) -> (rustls::client::Resumption, Option<Arc<Sessions>>) {
    if cfg.hello.no_resume {
        return (rustls::client::Resumption::disabled(), None);
    }
    let kept = Arc::new(Sessions::default());
    (rustls::client::Resumption::store(kept.clone()), Some(kept))
}

/// Server names a client keeps sessions for: it has one server (and, with ECH, a public
/// name), so a handful.
const NAMES_KEPT: usize = 4;
/// TLS 1.3 tickets kept per server name, the oldest forgotten first: each tunnel uses one
/// (the newest) and brings two, so a burst of this many new tunnels at once all resume.
/// rustls's own store keeps 8: a browser opening a page, or 32 connections at once in a
/// benchmark, found it empty for half of its tunnels.
const TICKETS_KEPT: usize = 32;

/// A client's sessions to resume (about 200 bytes a ticket: at most about 6 KiB a name).
#[derive(Debug, Default)]
pub(super) struct Sessions(std::sync::Mutex<Vec<(ServerName<'static>, Kept)>>);

#[derive(Debug, Default)]
struct Kept {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    tls13: std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
}

impl Sessions {
    /// Runs `f` on what is kept for `name`, made if new (the oldest name forgotten).
    fn edit<T>(&self, name: &ServerName<'_>, f: impl FnOnce(&mut Kept) -> T) -> T {
        let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = match names.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                if names.len() == NAMES_KEPT {
                    names.remove(0);
                }
                names.push((name.to_owned(), Kept::default()));
                names.len() - 1
            }
        };
        f(&mut names[at].1)
    }

    /// Whether the next handshake with `name` resumes a session that takes early data.
    pub(super) fn early_ready(&self, name: &ServerName<'_>) -> bool {
        self.existing(name, |k| {
            k.tls13.back().map(|t| t.max_early_data_size() > 0)
        })
        .unwrap_or(false)
    }

    /// Runs `f` on what is kept for `name`, if anything.
    fn existing<T>(
        &self,
        name: &ServerName<'_>,
        f: impl FnOnce(&mut Kept) -> Option<T>,
    ) -> Option<T> {
        let mut names = self.0.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|(_, k)| f(k))
    }
}

impl rustls::client::ClientSessionStore for Sessions {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.edit(&name, |k| k.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.existing(name, |k| k.kx_hint)
    }

    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.edit(&name, |k| k.tls12 = Some(value));
    }

    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.existing(name, |k| k.tls12.clone())
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.existing(name, |k| k.tls12.take());
    }

    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.edit(&name, |k| {
            if k.tls13.len() == TICKETS_KEPT {
                k.tls13.pop_front();
            }
            k.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.existing(name, |k| k.tls13.pop_back())
    }
}

/// A connector for `cfg` with `alpn`, with ECH (`ech`) or offering TLS 1.2 too, keeping its
/// sessions in `sessions`.
pub(super) fn connector(
    cfg: &TlsClientOptions,
    alpn: &[&[u8]],
    ech: Option<rustls::client::EchMode>,
    sessions: &rustls::client::Resumption,
) -> Result<TlsConnector> {
    let builder = rustls::ClientConfig::builder_with_provider(provider());
    let builder = match ech {
        Some(mode) => builder.with_ech(mode),
        None => builder.with_safe_default_protocol_versions(),
    }
    .map_err(Error::Tls)?;
    let mut config = client_config(builder, cfg, alpn)?;
    config.resumption = sessions.clone();
    config.enable_early_data = cfg.hello.early_data;
    Ok(TlsConnector::from(Arc::new(config)).early_data(cfg.hello.early_data))
}

/// The rest of a client configuration: trust, certificate decompression, ALPN.
pub(super) fn client_config(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    cfg: &TlsClientOptions,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    let algs = provider().signature_verification_algorithms;
    let mut config = match &cfg.verify {
        Verify::WebPki => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Ca(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(pem::load_certs("-ca", path)?);
            if added == 0 {
                return Err(Error::cert("-ca", path, CertError::NoUsableCa));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Verify::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Accept {
                pin: Some(*pin),
                algs,
            }))
            .with_no_client_auth(),
        Verify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Accept { pin: None, algs }))
            .with_no_client_auth(),
    };
    config.cert_decompressors = vec![&BrotliCertificates, rustls::compress::ZLIB_DECOMPRESSOR];
    config.alpn_protocols = if alpn.is_empty() {
        match &cfg.hello.alpn {
            Some(given) => given.iter().map(|p| p.as_bytes().to_vec()).collect(),
            None => BROWSER_ALPN.iter().map(|p| p.to_vec()).collect(),
        }
    } else {
        alpn.iter().map(|p| p.to_vec()).collect()
    };
    Ok(config)
}

/// ALPN of a plain-TLS client's hello unless `-alpn` says otherwise: what browsers offer.
/// A plain-TLS server chooses none (the original's clients send none), so the tunnel's
/// bytes are the same; which was chosen travels encrypted in TLS 1.3.
pub const BROWSER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Brotli-compressed certificate chains (RFC 8879), as browsers ask servers for.
#[derive(Debug)]
struct BrotliCertificates;

impl rustls::compress::CertDecompressor for BrotliCertificates {
    fn decompress(
        &self,
        input: &[u8],
        output: &mut [u8],
    ) -> std::result::Result<(), rustls::compress::DecompressionFailed> {
        use std::io::Read;
        let mut d = brotli_decompressor::Decompressor::new(input, 4096);
        // Exactly the announced length: not a byte less, not a byte more.
        let mut extra = [0u8; 1];
        match (d.read_exact(output), d.read(&mut extra)) {
            (Ok(()), Ok(0)) => Ok(()),
            _ => Err(rustls::compress::DecompressionFailed),
        }
    }

    fn algorithm(&self) -> rustls::CertificateCompressionAlgorithm {
        rustls::CertificateCompressionAlgorithm::Brotli
    }
}

/// HPKE suite of GREASE ECH: X25519, HKDF-SHA256, AES-128-GCM, as browsers' GREASE.
pub(super) fn grease_suite() -> &'static dyn rustls::crypto::hpke::Hpke {
    rustls::crypto::aws_lc_rs::hpke::DH_KEM_X25519_HKDF_SHA256_AES_128
}

/// GREASE ECH: an extension shaped as real ECH, its payload random bytes of a real one's
/// length (rustls's), its encapsulated key a new X25519 public key each hello.
pub(super) fn grease() -> Result<rustls::client::EchMode> {
    let (public, _private) = grease_suite().generate_key_pair().map_err(Error::Tls)?;
    Ok(rustls::client::EchGreaseConfig::new(&GreaseHpke, public).into())
}

/// GREASE ECH's HPKE: the encapsulated key is a fresh X25519 public key, as an observer
/// can check a real one is, but no secret is agreed from it (an X25519 multiplication and
/// a key schedule per hello, a sixth of a client's handshake CPU): nothing is sealed, the
/// payload is random.
#[derive(Debug)]
struct GreaseHpke;

impl rustls::crypto::hpke::Hpke for GreaseHpke {
    fn seal(
        &self,
        _info: &[u8],
        _aad: &[u8],
        _plaintext: &[u8],
        _pub_key: &rustls::crypto::hpke::HpkePublicKey,
    ) -> std::result::Result<(rustls::crypto::hpke::EncapsulatedSecret, Vec<u8>), rustls::Error>
    {
        Err(grease_only())
    }

    fn setup_sealer(
        &self,
        _info: &[u8],
        _pub_key: &rustls::crypto::hpke::HpkePublicKey,
    ) -> std::result::Result<
        (
            rustls::crypto::hpke::EncapsulatedSecret,
            Box<dyn rustls::crypto::hpke::HpkeSealer + 'static>,
        ),
        rustls::Error,
    > {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        let public = PrivateKey::generate(&X25519)
            .and_then(|k| k.compute_public_key())
            .map_err(|_| rustls::Error::FailedToGetRandomBytes)?;
        Ok((
            rustls::crypto::hpke::EncapsulatedSecret(public.as_ref().to_vec()),
            Box::new(SealsNothing),
        ))
    }

    fn open(
        &self,
        _enc: &rustls::crypto::hpke::EncapsulatedSecret,
        _info: &[u8],
        _aad: &[u8],
        _ciphertext: &[u8],
        _secret_key: &rustls::crypto::hpke::HpkePrivateKey,
    ) -> std::result::Result<Vec<u8>, rustls::Error> {
        Err(grease_only())
    }

    fn setup_opener(
        &self,
        _enc: &rustls::crypto::hpke::EncapsulatedSecret,
        _info: &[u8],
        _secret_key: &rustls::crypto::hpke::HpkePrivateKey,
    ) -> std::result::Result<Box<dyn rustls::crypto::hpke::HpkeOpener + 'static>, rustls::Error>
    {
        Err(grease_only())
    }

    fn generate_key_pair(
        &self,
    ) -> std::result::Result<
        (
            rustls::crypto::hpke::HpkePublicKey,
            rustls::crypto::hpke::HpkePrivateKey,
        ),
        rustls::Error,
    > {
        grease_suite().generate_key_pair()
    }

    fn suite(&self) -> rustls::crypto::hpke::HpkeSuite {
        grease_suite().suite()
    }
}

/// The sealer of GREASE ECH, which rustls never asks to seal.
#[derive(Debug)]
struct SealsNothing;

impl rustls::crypto::hpke::HpkeSealer for SealsNothing {
    fn seal(
        &mut self,
        _aad: &[u8],
        _plaintext: &[u8],
    ) -> std::result::Result<Vec<u8>, rustls::Error> {
        Err(grease_only())
    }
}

fn grease_only() -> rustls::Error {
    rustls::Error::General("GREASE ECH's HPKE seals and opens nothing".into())
}

/// Real ECH from an ECHConfigList: the first configuration whose HPKE suite aws-lc-rs has.
pub(super) fn ech_config(list: &[u8]) -> Result<rustls::client::EchMode> {
    rustls::client::EchConfig::new(
        rustls::pki_types::EchConfigListBytes::from(list.to_vec()),
        rustls::crypto::aws_lc_rs::hpke::ALL_SUPPORTED_SUITES,
    )
    .map(Into::into)
    .map_err(|e| {
        Error::usage(format!(
            "-ech-config: {e}: give the ECHConfigList the server publishes (base64, as in its DNS HTTPS record's ech= value)"
        ))
    })
}

/// Accepts the server certificate without a chain: by pinned fingerprint, or anything (`-sv`).
/// Handshake signatures are still verified, so the peer must hold the certificate's key.
#[derive(Debug)]
struct Accept {
    pin: Option<[u8; 32]>,
    algs: WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
pub(super) struct PinMismatch {
    got: String,
    want: String,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate has SHA-256 {}, -cert-sha256 expects {}",
            self.got, self.want
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for Accept {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if fingerprint::sha256(end_entity) != pin => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                        got: fingerprint::of(end_entity),
                        want: hex::encode(pin),
                    }))),
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
