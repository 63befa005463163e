//! The pipeline, in wire order: TCP → TLS → optional WebSocket → optional multiplexing.
//! This module is the only place that knows the order and which layers are optional; roles see
//! only [`Dialer`], [`Acceptor`], [`Accepted`], [`BoxIo`] and [`relay`].

pub mod cert;
pub mod dns;
pub mod http;
pub mod io;
pub mod mux;
pub mod protect;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::sync::Arc;

use crate::addr::HostPort;
use crate::config::{
    CONNECT_TIMEOUT, ClientConfig, HANDSHAKE_TIMEOUT, ServerConfig, WsClientConfig,
};
use crate::{Error, Result};

pub use io::{BoxIo, Io, Transferred, relay};
pub use mux::{MuxSession, MuxStream};
pub use tcp::{Listener, Stream};

/// ALPN of the WebSocket modes: HTTP/1.1 only, never h2 (the upgrade needs HTTP/1.1).
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// The layers below multiplexing: one connection to the server per call.
struct Connector {
    server: HostPort,
    dial: tcp::DialOpts,
    tls: tls::TlsClient,
    ws: Option<WsClientConfig>,
    /// WebSocket subprotocol: what the connection will carry.
    protocol: &'static str,
}

impl Connector {
    async fn connect(&self) -> Result<BoxIo> {
        let tcp = tcp::connect_with(&self.server, CONNECT_TIMEOUT, &self.dial)
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
        let upgrade = ws::client(tls, &ws.host, &ws.path, self.protocol);
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, upgrade)
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

/// Opens tunnels to the server: a new connection each (TCP, TLS, WebSocket), or a stream of
/// a shared multiplexed session.
pub struct Dialer {
    connector: Arc<Connector>,
    pool: Option<Arc<mux::MuxPool>>,
}

impl Dialer {
    /// Builds the layers from a validated client configuration (reads `-ca` now).
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        let alpn = if cfg.ws.is_some() { ALPN_HTTP1 } else { &[] };
        let connector = Arc::new(Connector {
            server: cfg.server.clone(),
            dial: tcp::DialOpts {
                fast_open: cfg.fast_open,
                dns: cfg
                    .fallback_dns
                    .map(dns::Dns::new)
                    .transpose()?
                    .map(Arc::new),
                protect: cfg.protect.clone(),
            },
            tls: tls::TlsClient::new(&cfg.tls, alpn)?,
            ws: cfg.ws.clone(),
            protocol: if cfg.mux.is_some() {
                http::YAMUX
            } else {
                http::SMUX_OFF
            },
        });
        let pool = cfg.mux.as_ref().map(|m| {
            let c = connector.clone();
            let dial: mux::DialFn = Box::new(move || {
                let c = c.clone();
                Box::pin(async move {
                    c.connect()
                        .await
                        .map_err(|e| std::io::Error::other(e.to_string()))
                })
            });
            mux::MuxPool::new(m.max_streams, m.idle, dial)
        });
        Ok(Dialer { connector, pool })
    }

    /// One new tunnel, ready for application bytes.
    pub async fn dial(&self) -> Result<BoxIo> {
        match &self.pool {
            None => self.connector.connect().await,
            Some(pool) => pool
                .open()
                .await
                .map(|s| Box::new(s) as BoxIo)
                .map_err(|e| {
                    Error::io(
                        format!("multiplexed stream to server {}", self.connector.server),
                        e,
                    )
                }),
        }
    }

    /// Multiplexed sessions alive or being dialled (0 without `-mux`).
    pub fn sessions(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.sessions())
    }
}

/// What an accepted connection turned out to carry; the tag names the tunnels' owner when
/// the HTTP front routes paths (mu-server).
pub enum Accepted {
    /// One tunnel.
    Tunnel(BoxIo, Option<http::Tag>),
    /// A multiplexed session: its streams are tunnels.
    Session(Box<MuxSession>, Option<http::Tag>),
    /// Nothing: ordinary HTTP requests were answered, or the client left.
    Nothing,
}

/// Ends tunnels on the server: TLS (unless disabled) over an accepted connection, then (with
/// `-wss`) the HTTP front and WebSocket, then (with `-mux` or the client's choice)
/// multiplexing.
pub struct Acceptor {
    tls: Option<tls::TlsServer>,
    store: Option<Arc<tls::CertStore>>,
    /// Where the certificate came from, for reloads.
    source: Option<crate::config::CertSource>,
    fingerprint: std::sync::RwLock<Option<String>>,
    http: Option<Arc<http::HttpServer>>,
    mux: bool,
}

impl Acceptor {
    /// Loads or makes the certificate (none with `-disable-tls`) and sets up the layers.
    pub fn new(cfg: &ServerConfig) -> Result<Self> {
        Self::with_layers(cfg.tls.as_ref(), cfg.ws.as_ref(), cfg.mux)
    }

    /// The layers chosen one by one: TLS certificate (none: plain), HTTP front, `-mux`.
    pub fn with_layers(
        tls: Option<&crate::config::CertSource>,
        ws: Option<&crate::config::WsServerConfig>,
        mux: bool,
    ) -> Result<Self> {
        let tls_source = tls.cloned();
        let http = ws.map(|ws| {
            Arc::new(http::HttpServer {
                path: ws.path.clone(),
                fallback: ws.fallback.clone(),
                default_mux: mux,
            })
        });
        let alpn = if http.is_some() { ALPN_HTTP1 } else { &[] };
        let ck = match tls {
            None => None,
            Some(crate::config::CertSource::Files { cert: c, key: k }) => Some(cert::load(c, k)?),
            Some(crate::config::CertSource::SelfSigned(name)) => {
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
        let store = ck.map(tls::CertStore::new).transpose()?;
        let tls = store
            .clone()
            .map(|s| tls::TlsServer::new(s, alpn))
            .transpose()?;
        Ok(Acceptor {
            tls,
            store,
            source: tls_source,
            fingerprint: std::sync::RwLock::new(fingerprint),
            http,
            mux,
        })
    }

    /// SHA-256 of the certificate served, if TLS is on.
    pub fn fingerprint(&self) -> Option<String> {
        self.fingerprint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads `-cert`/`-key`: new handshakes present the new certificate, live tunnels are
    /// untouched; a file that does not load leaves the old certificate in place. Returns the
    /// new fingerprint, or `None` when there are no files to re-read.
    pub fn reload(&self) -> Result<Option<String>> {
        let (Some(store), Some(crate::config::CertSource::Files { cert: c, key: k })) =
            (&self.store, &self.source)
        else {
            return Ok(None);
        };
        let ck = cert::load(c, k)?;
        let fp = ck.fingerprint();
        store.replace(ck)?;
        *self.fingerprint.write().unwrap_or_else(|p| p.into_inner()) = Some(fp.clone());
        Ok(Some(fp))
    }

    /// The `-cert`/`-key` files that [`Acceptor::reload`] re-reads, if the certificate came
    /// from files.
    pub fn cert_files(&self) -> Option<[std::path::PathBuf; 2]> {
        match &self.source {
            Some(crate::config::CertSource::Files { cert, key }) => {
                Some([cert.clone(), key.clone()])
            }
            _ => None,
        }
    }

    /// Completes the layers over one accepted connection.
    pub async fn accept<S: Io + 'static>(&self, io: S, id: &str) -> Result<Accepted> {
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

    async fn after_tls<S: Io + 'static>(&self, io: S, id: &str) -> Result<Accepted> {
        let (stream, carry, tag): http::Upgraded = match &self.http {
            None if self.mux => (Box::new(io), http::Carry::Mux, None),
            None => (Box::new(io), http::Carry::Plain, None),
            Some(front) => match front.serve(io, id).await {
                Ok(Some(upgraded)) => upgraded,
                Ok(None) => return Ok(Accepted::Nothing),
                Err(e) => return Err(Error::io("HTTP", e)),
            },
        };
        Ok(match carry {
            http::Carry::Plain => Accepted::Tunnel(stream, tag),
            http::Carry::Mux => Accepted::Session(
                Box::new(MuxSession::server(stream, mux::MAX_STREAMS_PER_SESSION)),
                tag,
            ),
        })
    }
}
