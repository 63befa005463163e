//! The pipeline, in wire order: TCP → TLS (→ WebSocket → multiplexing, in later layers).
//! This module is the only place that knows the order and which layers are optional; roles see
//! only [`Dialer`], [`Acceptor`], [`BoxIo`] and [`relay`].

pub mod cert;
pub mod io;
pub mod tcp;
pub mod tls;

use crate::addr::HostPort;
use crate::config::{CONNECT_TIMEOUT, CertSource, ClientConfig};
use crate::{Error, Result};

pub use io::{BoxIo, Io, Transferred, relay};
pub use tcp::{Listener, Stream};

/// Opens tunnels to the server: TCP, then TLS.
pub struct Dialer {
    server: HostPort,
    tls: tls::TlsClient,
}

impl Dialer {
    /// Builds the layers from a validated client configuration (reads `-ca` now).
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        Ok(Dialer {
            server: cfg.server.clone(),
            tls: tls::TlsClient::new(&cfg.tls, &[])?,
        })
    }

    /// One new tunnel, ready for application bytes.
    pub async fn dial(&self) -> Result<BoxIo> {
        let tcp = tcp::connect(&self.server, CONNECT_TIMEOUT)
            .await
            .map_err(|e| Error::io(format!("connect to server {}", self.server), e))?;
        let tls = self
            .tls
            .connect(tcp)
            .await
            .map_err(|e| Error::io(format!("TLS handshake with server {}", self.server), e))?;
        Ok(Box::new(tls))
    }
}

/// Ends tunnels on the server: TLS (unless disabled) over an accepted connection.
pub struct Acceptor {
    tls: Option<tls::TlsServer>,
    fingerprint: Option<String>,
}

impl Acceptor {
    /// Loads or makes the certificate. `None` serves without TLS (`-disable-tls`).
    pub fn new(source: Option<&CertSource>) -> Result<Self> {
        let ck = match source {
            None => None,
            Some(CertSource::Files { cert: c, key: k }) => Some(cert::load(c, k)?),
            Some(CertSource::SelfSigned(name)) => {
                let ss = cert::self_signed(name.as_deref())?;
                log::warn!(
                    "no -cert/-key: using a self-signed certificate for '{}'; clients can pin it with -cert-sha256 {}",
                    ss.name,
                    ss.cert_key.fingerprint()
                );
                Some(ss.cert_key)
            }
        };
        let fingerprint = ck.as_ref().map(cert::CertKey::fingerprint);
        let tls = ck.map(|ck| tls::TlsServer::new(ck, &[])).transpose()?;
        Ok(Acceptor { tls, fingerprint })
    }

    /// SHA-256 of the certificate served, if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }

    /// Completes the layers over one accepted connection.
    pub async fn accept<S: Io + 'static>(&self, io: S) -> Result<BoxIo> {
        match &self.tls {
            None => Ok(Box::new(io)),
            Some(t) => {
                let s = t
                    .accept(io)
                    .await
                    .map_err(|e| Error::io("TLS handshake", e))?;
                Ok(Box::new(s))
            }
        }
    }
}
