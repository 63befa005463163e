//! The dialling end of the pipeline: [`Dialer`] opens tunnels to the server, each a new
//! connection (TCP → TLS → WebSocket?) or a stream of a shared multiplexed session; a tunnel
//! carries a byte stream or, marked as such before its first byte, datagrams.

use std::sync::Arc;

use super::datagram::{self, Kind};
use super::io::BoxIo;
use super::options::DialOptions;
use super::{ALPN_HTTP1, dns, front, mux, tcp, tls, ws};
use crate::error::Step;
use crate::{Error, Result};

/// The layers below multiplexing: one connection to the server per call.
struct Connector {
    opts: DialOptions,
    dial: tcp::DialOpts,
    /// TLS of TCP tunnels and sessions: no ALPN in plain mode (as the original), `mtt-mux2`
    /// for plain multiplexed sessions, `http/1.1` for WebSocket.
    tls: tls::TlsClient,
    /// TLS of plain-mode UDP tunnels: ALPN `mtt-udp`.
    tls_udp: tls::TlsClient,
}

/// What a server said no to: UDP (no `-udp` there, or too old).
fn udp_refused(server: &str, why: &str) -> Error {
    let e = std::io::Error::new(std::io::ErrorKind::Unsupported, why.to_string());
    Error::tunnel(Step::Udp, format!("server {server}"), e)
}

impl Connector {
    /// One connection for `kind`; with it, whether a multiplexed session on it is of
    /// version 2 (streams open with a type byte, datagrams allowed).
    async fn connect(&self, kind: Kind) -> Result<(BoxIo, bool)> {
        let server = &self.opts.server;
        let peer = || format!("server {server}");
        let tcp = tcp::connect_with(server, self.opts.timeouts.connect, &self.dial)
            .await
            .map_err(|e| Error::tunnel(Step::Connect, peer(), e))?;
        let udp_plain = kind == Kind::Datagrams && self.opts.ws.is_none();
        let client = if udp_plain { &self.tls_udp } else { &self.tls };
        let tls = client
            .connect(tcp)
            .await
            .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let Some(ws) = &self.opts.ws else {
            if udp_plain && alpn.as_deref() != Some(datagram::ALPN_UDP) {
                return Err(udp_refused(
                    &server.to_string(),
                    "it does not carry UDP (run it with -udp)",
                ));
            }
            let v2 = alpn.as_deref() == Some(datagram::ALPN_MUX2);
            return Ok((Box::new(tls), v2));
        };
        let protocol = match (kind, self.opts.mux.as_ref().map(|m| m.muxing)) {
            (Kind::Datagrams, None) => datagram::SUBPROTOCOL_UDP,
            (_, Some(mux::Muxing::Yamux)) => "yamux2, yamux",
            (_, Some(mux::Muxing::Smux)) => front::SMUX_ON,
            (Kind::Stream, None) => front::SMUX_OFF,
        };
        let upgrade = ws::client(tls, &ws.host, &ws.path, protocol);
        let (stream, chosen) = tokio::time::timeout(self.opts.timeouts.handshake, upgrade)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no WebSocket upgrade response in time",
                ))
            })
            .map_err(|e| Error::tunnel(Step::WebSocket, format!("{} at {server}", ws.path), e))?;
        if protocol == datagram::SUBPROTOCOL_UDP && chosen.as_deref() != Some(protocol) {
            return Err(udp_refused(
                &server.to_string(),
                "it does not carry UDP (run it with -udp)",
            ));
        }
        let v2 = chosen.as_deref() == Some(datagram::SUBPROTOCOL_YAMUX2);
        Ok((Box::new(stream), v2))
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
        // A plain-mode smux client offers no ALPN, as the original.
        let alpn: &[&[u8]] = match (opts.ws.is_some(), opts.mux.as_ref().map(|m| m.muxing)) {
            (true, _) => ALPN_HTTP1,
            (false, Some(mux::Muxing::Yamux)) => &[datagram::ALPN_MUX2],
            (false, _) => &[],
        };
        let handshake = opts.timeouts.handshake;
        if opts.tls.verify == super::options::Verify::Insecure {
            log::warn!(
                "-sv: the server's certificate is not verified; anyone on the path can impersonate it (use -cert-sha256 or -ca instead)"
            );
        }
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
            tls: tls::TlsClient::new(&opts.tls, alpn, handshake)?,
            tls_udp: tls::TlsClient::new(&opts.tls, &[datagram::ALPN_UDP], handshake)?,
            opts: opts.clone(),
        });
        let pool = opts.mux.as_ref().map(|m| {
            let c = connector.clone();
            let dial: mux::DialFn = Box::new(move || {
                let c = c.clone();
                Box::pin(async move { c.connect(Kind::Stream).await })
            });
            mux::MuxPool::new(m.max_streams, m.idle, m.muxing, dial)
        });
        Ok(Dialer { connector, pool })
    }

    /// One new tunnel carrying `kind`, ready for application bytes (or datagram frames).
    pub async fn dial(&self, kind: Kind) -> Result<BoxIo> {
        match &self.pool {
            None => self.connector.connect(kind).await.map(|(io, _)| io),
            Some(pool) => pool.open(kind).await.map(|s| Box::new(s) as BoxIo),
        }
    }

    /// The server this dialer reaches, for logs.
    pub fn server(&self) -> String {
        self.connector.opts.server.to_string()
    }
}
