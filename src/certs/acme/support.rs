//! What the ACME loop leans on: the CA's errors in its own words, the certificate that
//! answers a TLS-ALPN-01 challenge, private files in `-acme-dir`, and the HTTP client that
//! reaches the CA with mtt's trust.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::PrivateKeyDer;

use super::super::pem::CertKey;
use crate::{Error, Result};

/// Why an order did not give a certificate: the CA said no (its words), or the way there
/// failed (worth retrying).
#[derive(Debug)]
pub(super) enum Failed {
    Refused(String),
    Unreachable(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused(why) => write!(f, "the CA refused: {why}"),
            Failed::Unreachable(why) => f.write_str(why),
        }
    }
}

pub(super) fn failed(what: &str, e: instant_acme::Error) -> Failed {
    match e {
        instant_acme::Error::Api(p) => Failed::Refused(format!("{what}: {}", problem(&p))),
        other => Failed::Unreachable(format!("{what}: {}", chain(&other))),
    }
}

/// A problem document in the CA's words, with its type and the first subproblem.
pub(super) fn problem(p: &instant_acme::Problem) -> String {
    let mut s = p.detail.clone().unwrap_or_else(|| "no detail".into());
    if let Some(t) = &p.r#type {
        s.push_str(&format!(" ({t})"));
    }
    if let Some(sub) = p.subproblems.first() {
        s.push_str(&format!("; {sub}"));
    }
    s
}

/// An error and its causes on one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cause = c.source();
    }
    s
}

/// What made an order invalid, in the CA's words (the failed challenge's error).
pub(super) async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut why = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut authz)) = authzs.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    why.push(format!("{name}: {}", problem(p)));
                }
            }
        }
    }
    if why.is_empty() {
        "the order became invalid".into()
    } else {
        why.join("; ")
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge for `name`: the name as
/// its only SAN and the key authorization's digest in the critical acmeIdentifier extension.
pub(super) fn challenge_cert(
    name: &str,
    digest: &[u8],
) -> std::result::Result<CertKey, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(CertKey {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    })
}

pub(super) fn create_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    crate::sys::create_private_dir(dir)
        .map_err(|e| Error::io(format!("-acme-dir: create {}", dir.display()), e))
}

/// Replaces `path` whole with `data`, readable by the owner only.
pub(super) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    crate::sys::replace_file(path, data, 0o600)
        .map_err(|e| Error::io(format!("-acme-dir: write {}", path.display()), e))
}

/// The CA's HTTPS, through hyper and rustls with mtt's trust (not the system's).
pub(super) struct Http(
    pub(super) HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
);

impl HttpClient for Http {
    fn request(
        &self,
        req: hyper::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = std::result::Result<BytesResponse, instant_acme::Error>> + Send>>
    {
        let fut = self.0.request(req);
        Box::pin(async move {
            match fut.await {
                Ok(rsp) => Ok(BytesResponse::from(rsp)),
                Err(e) => Err(instant_acme::Error::Other(Box::new(e))),
            }
        })
    }
}
