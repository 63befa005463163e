//! Certificates from an ACME CA (`-acme`, RFC 8555): the account, orders whose TLS-ALPN-01
//! challenges (RFC 8737) are answered on the server's own port, the cache in `-acme-dir`, and
//! renewal into the live certificate store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

mod support;

use super::pem::{self, CertKey};
use super::{CertStore, Validity, provider};
use crate::error::CertError;
use crate::{Error, Result};
use support::{Failed, Http, challenge_cert, create_dir, failed, why_invalid, write_private};

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ALPN_ACME: &[u8] = b"acme-tls/1";
/// Let's Encrypt, the default `-acme-directory`.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How long obtaining the first certificate may take before the server gives up.
const FIRST_LIMIT: Duration = Duration::from_secs(120);
/// How long one order (validation, finalisation, download) may take.
const ORDER_LIMIT: Duration = Duration::from_secs(90);
/// First pause after a failed renewal; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// A certificate with less than this fraction of its lifetime left is renewed.
const RENEW_WHEN_LEFT: f64 = 1.0 / 3.0;

/// What `-acme` and its flags ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOptions {
    /// The names the certificate is for (the first names the cached files).
    pub domains: Vec<String>,
    /// Contact address given to the CA.
    pub email: Option<String>,
    /// Where the account key and certificates are kept.
    pub dir: PathBuf,
    /// The CA's directory URL.
    pub directory: String,
    /// Trust this PEM root for the CA's own HTTPS instead of the public roots.
    pub ca: Option<PathBuf>,
}

/// Obtains and renews the certificate of one server.
pub struct Acme {
    opts: AcmeOptions,
    store: Arc<CertStore>,
}

impl Acme {
    /// Prepares `-acme-dir` (created 0700) and reads the cached certificate into `store` if
    /// it is for these names and not yet expired.
    pub fn new(opts: AcmeOptions, store: Arc<CertStore>) -> Result<Self> {
        create_dir(&opts.dir)?;
        let acme = Acme { opts, store };
        match acme.cached() {
            Ok(Some(ck)) => {
                acme.store.replace(ck)?;
                if let Some(v) = acme.store.validity() {
                    log::info!(
                        "ACME: serving the cached certificate for {} (valid until {})",
                        acme.names(),
                        v.until()
                    );
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!(
                "ACME: the cached certificate is not usable ({}); a new one will be ordered",
                e.report()
            ),
        }
        Ok(acme)
    }

    fn names(&self) -> String {
        self.opts.domains.join(",")
    }

    fn cert_path(&self) -> PathBuf {
        self.opts.dir.join(format!("{}.crt", self.opts.domains[0]))
    }

    fn key_path(&self) -> PathBuf {
        self.opts.dir.join(format!("{}.key", self.opts.domains[0]))
    }

    /// Where the account of this CA is kept: one file per directory URL, so that changing
    /// `-acme-directory` (staging to production) never presents one CA's account to another.
    fn account_path(&self) -> PathBuf {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.opts.directory.as_bytes());
        self.opts.dir.join(format!(
            "account-{}.json",
            hex::encode(&digest.as_ref()[..8])
        ))
    }

    /// The cached certificate, if there is one for exactly these names and it has not expired.
    fn cached(&self) -> Result<Option<CertKey>> {
        let (cert, key) = (self.cert_path(), self.key_path());
        if !cert.exists() || !key.exists() {
            return Ok(None);
        }
        let ck = pem::load(&cert, &key)?;
        let leaf =
            ck.chain
                .first()
                .ok_or(Error::cert("-acme-dir", &cert, CertError::NoCertificate))?;
        let v =
            Validity::of(leaf).ok_or(Error::cert("-acme-dir", &cert, CertError::NoCertificate))?;
        if v.not_after <= SystemTime::now() {
            log::info!(
                "ACME: the cached certificate for {} has expired",
                self.names()
            );
            return Ok(None);
        }
        let mut want = self.opts.domains.clone();
        let mut have = v.names.clone();
        want.sort();
        have.sort();
        if want != have {
            log::info!(
                "ACME: the cached certificate is for {}, not {}: a new one will be ordered",
                have.join(","),
                self.names()
            );
            return Ok(None);
        }
        Ok(Some(ck))
    }

    /// Keeps a valid certificate in the store until `shutdown`: obtains the first one if
    /// there is none (an error if the CA refuses, or none comes within [`FIRST_LIMIT`]), then
    /// renews whenever a third of the lifetime is left, retrying failures with backoff.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        if self.store.validity().is_none() {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(FIRST_LIMIT, self.first()) => r,
            };
            match first {
                Ok(r) => r?,
                Err(_) => {
                    return Err(Error::runtime(format!(
                        "-acme: no certificate for {} within {FIRST_LIMIT:?} from {}",
                        self.names(),
                        self.opts.directory
                    )));
                }
            }
        }
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match self.store.validity() {
                Some(v) => v.renew_in(RENEW_WHEN_LEFT),
                None => Duration::ZERO,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            let renewed = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = self.order() => r,
            };
            match renewed {
                Ok(()) => retry = FIRST_RETRY,
                Err(e) => {
                    let left = self
                        .store
                        .validity()
                        .map(|v| format!("it expires {}", v.until()))
                        .unwrap_or_default();
                    log::warn!(
                        "ACME: renewing the certificate for {} failed: {e}; retrying in {retry:?}; {left}",
                        self.names()
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// The first certificate: a refusal ends the attempt with the CA's words; a CA that
    /// cannot be reached is tried again every few seconds.
    async fn first(&self) -> Result<()> {
        let mut pause = Duration::from_secs(2);
        loop {
            match self.order().await {
                Ok(()) => return Ok(()),
                Err(Failed::Refused(why)) => {
                    return Err(Error::runtime(format!(
                        "-acme: no certificate for {}: {} refused: {why}",
                        self.names(),
                        self.opts.directory
                    )));
                }
                Err(Failed::Unreachable(why)) => {
                    log::warn!("ACME: {why}; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// One order, from account to certificate in the store and on disk.
    async fn order(&self) -> std::result::Result<(), Failed> {
        match tokio::time::timeout(ORDER_LIMIT, self.order_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Failed::Unreachable(format!(
                "the order took longer than {ORDER_LIMIT:?}"
            ))),
        }
    }

    async fn order_inner(&self) -> std::result::Result<(), Failed> {
        let account = self.account().await?;
        let ids: Vec<Identifier> = self
            .opts
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| failed("new order", e))?;
        log::info!(
            "ACME: ordering a certificate for {} from {}",
            self.names(),
            self.opts.directory
        );
        let mut answered = Vec::new();
        let result = async {
            let mut authzs = order.authorizations();
            while let Some(authz) = authzs.next().await {
                let mut authz = authz.map_err(|e| failed("authorization", e))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let mut ch = authz.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
                    Failed::Refused("the CA offers no tls-alpn-01 challenge".into())
                })?;
                let name = ch.identifier().to_string();
                let proof = challenge_cert(&name, ch.key_authorization().digest().as_ref())
                    .map_err(|e| Failed::Unreachable(format!("challenge certificate: {e}")))?;
                self.store.answer(&name, proof);
                answered.push(name);
                ch.set_ready().await.map_err(|e| failed("challenge", e))?;
            }
            let retries = RetryPolicy::new()
                .initial_delay(Duration::from_millis(250))
                .timeout(ORDER_LIMIT);
            let status = order
                .poll_ready(&retries)
                .await
                .map_err(|e| failed("validation", e))?;
            if status != OrderStatus::Ready {
                return Err(Failed::Refused(why_invalid(&mut order).await));
            }
            let key_pem = order.finalize().await.map_err(|e| failed("finalize", e))?;
            let chain_pem = order
                .poll_certificate(&retries)
                .await
                .map_err(|e| failed("certificate", e))?;
            Ok((chain_pem, key_pem))
        }
        .await;
        for name in &answered {
            self.store.unanswer(name);
        }
        let (chain_pem, key_pem) = result?;
        self.install(&chain_pem, &key_pem)
            .map_err(|e| Failed::Unreachable(e.report().to_string()))
    }

    /// Writes the certificate and key (0600, each replaced whole) and serves them.
    fn install(&self, chain_pem: &str, key_pem: &str) -> Result<()> {
        let bad = |e: rustls::pki_types::pem::Error| {
            Error::failed("ACME: the CA sent a certificate that does not parse", e)
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(bad)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(bad)?;
        write_private(&self.key_path(), key_pem.as_bytes())?;
        write_private(&self.cert_path(), chain_pem.as_bytes())?;
        self.store.replace(CertKey { chain, key })?;
        if let Some(v) = self.store.validity() {
            log::info!(
                target: crate::logging::NOTICE,
                "ACME: new certificate for {} (serial {}), valid until {}",
                self.names(),
                v.serial,
                v.until()
            );
        }
        Ok(())
    }

    /// The account at this CA: the saved one, or a new one (saved 0600).
    async fn account(&self) -> std::result::Result<Account, Failed> {
        let path = self.account_path();
        let builder = || {
            self.http()
                .map(|h| Account::builder_with_http(Box::new(h)))
                .map_err(|e| Failed::Unreachable(e.report().to_string()))
        };
        if let Ok(text) = std::fs::read(&path) {
            match serde_json::from_slice::<AccountCredentials>(&text) {
                Ok(creds) => {
                    return builder()?
                        .from_credentials(creds)
                        .await
                        .map_err(|e| failed("account", e));
                }
                Err(e) => log::warn!(
                    "ACME: {} does not parse ({e}); registering a new account",
                    path.display()
                ),
            }
        }
        let contact = self.opts.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.opts.directory.clone(),
                None,
            )
            .await
            .map_err(|e| failed("new account", e))?;
        let text =
            serde_json::to_vec(&creds).map_err(|e| Failed::Unreachable(format!("account: {e}")))?;
        write_private(&path, &text).map_err(|e| Failed::Unreachable(e.report().to_string()))?;
        log::info!("ACME: registered an account at {}", self.opts.directory);
        Ok(account)
    }

    /// The HTTPS client for the CA: the public roots, or `-acme-ca`.
    fn http(&self) -> Result<Http> {
        let mut roots = RootCertStore::empty();
        match &self.opts.ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let (added, _) =
                    roots.add_parsable_certificates(pem::load_certs("-acme-ca", path)?);
                if added == 0 {
                    return Err(Error::cert("-acme-ca", path, CertError::NoUsableCa));
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Ok(Http(
            HyperClient::builder(TokioExecutor::new()).build(https),
        ))
    }
}
