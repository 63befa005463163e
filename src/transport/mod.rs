//! The pipeline, in wire order: TCP → TLS (→ WebSocket → multiplexing, in later layers).
//! This module is the only place that knows the order and which layers are optional; roles see
//! only [`Dialer`], [`Acceptor`], [`BoxIo`] and [`relay`].

pub mod cert;
pub mod http;
pub mod io;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::sync::Arc;

use crate::addr::HostPort;
use crate::config::{CONNECT_TIMEOUT, CertSource, ClientConfig, ServerConfig, WsClientConfig};
use crate::{Error, Result};

/// ALPN of the WebSocket modes: HTTP/1.1 only, never h2 (the upgrade needs HTTP/1.1).
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

pub use io::{BoxIo, Io, Transferred, relay};
pub use tcp::{Listener, Stream};

/// Opens tunnels to the server: TCP, then TLS, then (with `-wss`) WebSocket.
pub struct Dialer {
    server: HostPort,
    tls: tls::TlsClient,
    ws: Option<WsClientConfig>,
}

impl Dialer {
    /// Builds the layers from a validated client configuration (reads `-ca` now).
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        let alpn = if cfg.ws.is_some() { ALPN_HTTP1 } else { &[] };
        Ok(Dialer {
            server: cfg.server.clone(),
            tls: tls::TlsClient::new(&cfg.tls, alpn)?,
            ws: cfg.ws.clone(),
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
        let Some(ws) = &self.ws else {
            return Ok(Box::new(tls));
        };
        let upgrade = ws::client(tls, &ws.host, &ws.path, http::SMUX_OFF);
        let stream = tokio::time::timeout(crate::config::HANDSHAKE_TIMEOUT, upgrade)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no WebSocket upgrade response in time",
                ))
            })
            .map_err(|e| {
                Error::io(
                    format!("WebSocket upgrade {} at {}", ws.path, self.server),
                    e,
                )
            })?;
        Ok(Box::new(stream))
    }
}

/// Ends tunnels on the server: TLS (unless disabled) over an accepted connection, then (with
/// `-wss`) the HTTP front and WebSocket.
pub struct Acceptor {
    tls: Option<tls::TlsServer>,
    fingerprint: Option<String>,
    http: Option<Arc<http::HttpServer>>,
}

impl Acceptor {
    /// Loads or makes the certificate (none with `-disable-tls`) and sets up the layers.
    pub fn new(cfg: &ServerConfig) -> Result<Self> {
        let http = cfg.ws.as_ref().map(|ws| {
            Arc::new(http::HttpServer {
                path: ws.path.clone(),
                fallback: ws.fallback.clone(),
            })
        });
        let alpn = if http.is_some() { ALPN_HTTP1 } else { &[] };
        let ck = match cfg.tls.as_ref() {
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
        let tls = ck.map(|ck| tls::TlsServer::new(ck, alpn)).transpose()?;
        Ok(Acceptor {
            tls,
            fingerprint,
            http,
        })
    }

    /// SHA-256 of the certificate served, if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint.clone()
    }

    /// Completes the layers over one accepted connection: a tunnel, or `None` when the
    /// connection only carried ordinary HTTP requests.
    pub async fn accept<S: Io + 'static>(&self, io: S, id: &str) -> Result<Option<BoxIo>> {
        match &self.tls {
            None => self.after_tls(io, id).await,
            Some(t) => {
                let s = t
                    .accept(io)
                    .await
                    .map_err(|e| Error::io("TLS handshake", e))?;
                self.after_tls(s, id).await
            }
        }
    }

    async fn after_tls<S: Io + 'static>(&self, io: S, id: &str) -> Result<Option<BoxIo>> {
        let Some(front) = &self.http else {
            return Ok(Some(Box::new(io)));
        };
        match front.serve(io, id).await {
            Ok(Some((stream, http::Carry::Plain))) => Ok(Some(stream)),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::io("HTTP", e)),
        }
    }
}
