//! The dialling end of the pipeline: [`Dialer`] opens tunnels to the server, each a new
//! connection (TCP → TLS → WebSocket?) or a stream of a shared multiplexed session.

use std::sync::Arc;

use super::io::BoxIo;
use super::options::DialOptions;
use super::{ALPN_HTTP1, dns, front, mux, tcp, tls, ws};
use crate::error::Step;
use crate::{Error, Result};

/// The layers below multiplexing: one connection to the server per call.
struct Connector {
    opts: DialOptions,
    dial: tcp::DialOpts,
    tls: tls::TlsClient,
    /// WebSocket subprotocol: what the connection will carry.
    protocol: &'static str,
}

impl Connector {
    async fn connect(&self) -> Result<BoxIo> {
        let server = &self.opts.server;
        let peer = || format!("server {server}");
        let tcp = tcp::connect_with(server, self.opts.timeouts.connect, &self.dial)
            .await
            .map_err(|e| Error::tunnel(Step::Connect, peer(), e))?;
        let tls = self
            .tls
            .connect(tcp)
            .await
            .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
        let Some(ws) = &self.opts.ws else {
            return Ok(Box::new(tls));
        };
        let upgrade = ws::client(tls, &ws.host, &ws.path, self.protocol);
        let stream = tokio::time::timeout(self.opts.timeouts.handshake, upgrade)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no WebSocket upgrade response in time",
                ))
            })
            .map_err(|e| Error::tunnel(Step::WebSocket, format!("{} at {server}", ws.path), e))?;
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
    /// Builds the layers (reads `-ca` now).
    pub fn new(opts: &DialOptions) -> Result<Self> {
        let alpn = if opts.ws.is_some() { ALPN_HTTP1 } else { &[] };
        let connector = Arc::new(Connector {
            dial: tcp::DialOpts {
                fast_open: opts.fast_open,
                dns: opts
                    .fallback_dns
                    .map(dns::Dns::new)
                    .transpose()?
                    .map(Arc::new),
                protect: opts.protect.clone(),
            },
            tls: tls::TlsClient::new(&opts.tls, alpn, opts.timeouts.handshake)?,
            protocol: if opts.mux.is_some() {
                front::YAMUX
            } else {
                front::SMUX_OFF
            },
            opts: opts.clone(),
        });
        let pool = opts.mux.as_ref().map(|m| {
            let c = connector.clone();
            let dial: mux::DialFn = Box::new(move || {
                let c = c.clone();
                Box::pin(async move { c.connect().await })
            });
            mux::MuxPool::new(m.max_streams, m.idle, dial)
        });
        Ok(Dialer { connector, pool })
    }

    /// One new tunnel, ready for application bytes.
    pub async fn dial(&self) -> Result<BoxIo> {
        match &self.pool {
            None => self.connector.connect().await,
            Some(pool) => pool.open().await.map(|s| Box::new(s) as BoxIo),
        }
    }
}
