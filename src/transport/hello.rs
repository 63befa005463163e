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

/// Sessions a client keeps to resume, per server name: a client has one server (a few names
/// with ECH's public name); each resumption uses a ticket up and brings a new one.
const SESSIONS_KEPT: usize = 4;

/// Where a client keeps the sessions it may resume: one store for every configuration of a
/// client (ECH, TLS 1.2 fallback), none with `-no-resume`.
pub(super) fn resumption(cfg: &TlsClientOptions) -> rustls::client::Resumption {
    if cfg.hello.no_resume {
        return rustls::client::Resumption::disabled();
    }
    let store = rustls::client::ClientSessionMemoryCache::new(SESSIONS_KEPT);
    rustls::client::Resumption::store(Arc::new(store))
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
    Ok(TlsConnector::from(Arc::new(config)))
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
