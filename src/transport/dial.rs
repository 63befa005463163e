//! The dialling end of the pipeline: [`Dialer`] opens tunnels to the server, each a new
//! connection (TCP → TLS → WebSocket?) or a stream of a shared multiplexed session; a tunnel
//! carries a byte stream or, marked as such before its first byte, datagrams.

use std::sync::Arc;

use super::datagram::{self, Kind};
use super::io::BoxIo;
use super::options::DialOptions;
use super::preamble::{self, Ask};
use super::{ALPN_HTTP1, dns, front, grpc, mux, tcp, tls, ws};
use crate::error::Step;
use crate::{Error, Result};

/// The layers below multiplexing: one connection to the server per call.
struct Connector {
    opts: DialOptions,
    dial: tcp::DialOpts,
    /// TLS of every connection: in plain mode the hello offers a browser's ALPN (or
    /// `-alpn`), `http/1.1` for WebSocket, `h2` for gRPC.
    tls: tls::TlsClient,
    /// Connections being set up now: bounded, so a storm of new tunnels (a server that is
    /// slow or gone, an application opening thousands) cannot take every descriptor.
    in_flight: tokio::sync::Semaphore,
}

/// Connections a client sets up at once (TCP, TLS, WebSocket); more wait for one of them, at
/// most the handshake timeout. Each in flight holds a descriptor and a TLS state.
pub const DIALS_IN_FLIGHT: usize = 256;

/// What a server said no to: UDP (no `-udp` there, or too old).
fn udp_refused(server: &str, why: &str) -> Error {
    let e = std::io::Error::new(std::io::ErrorKind::Unsupported, why.to_string());
    Error::tunnel(Step::Udp, format!("server {server}"), e)
}

impl Connector {
    /// One connection for `kind`; with it, whether a multiplexed session on it is of
    /// version 2 (streams open with a type byte, datagrams allowed), and the round trip.
    async fn connect(&self, kind: Kind) -> Result<mux::Dialled> {
        self.connect_early(kind, &[]).await
    }

    /// [`Connector::connect`] with the application's first bytes: with early data on, they
    /// ride the WebSocket upgrade when they fit, else follow it; otherwise they are written
    /// first. Empty: nothing to send yet.
    async fn connect_early(&self, kind: Kind, first: &[u8]) -> Result<mux::Dialled> {
        let server = &self.opts.server;
        let peer = || format!("server {server}");
        let _slot = match self.in_flight.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                crate::rarely!(
                    Warn,
                    "{DIALS_IN_FLIGHT} tunnels to {server} are being set up at once (the limit): new ones wait for them"
                );
                let wait = self.opts.timeouts.handshake;
                match tokio::time::timeout(wait, self.in_flight.acquire()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        let e = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "{DIALS_IN_FLIGHT} tunnels were being set up for {wait:?} and none finished: the server is slow or unreachable"
                            ),
                        );
                        return Err(Error::tunnel(Step::Connect, peer(), e));
                    }
                }
            }
        };
        let dial = || async {
            tcp::connect_with(server, self.opts.timeouts.connect, &self.dial)
                .await
                .map_err(|e| Error::tunnel(Step::Connect, peer(), e))
        };
        let tcp = dial().await?;
        if self.opts.disable_tls {
            // No TLS at this end (v2ray-plugin's default without `tls`): the WebSocket, if
            // any, goes over TCP as it is.
            return self.above_tls(tcp, None, None, kind, first).await;
        }
        let tls = match self.tls.connect(tcp).await {
            Ok(tls) => Ok(tls),
            // A server without TLS 1.3, or with other ECH keys: once more.
            Err(e) if self.tls.retry(&e, &server.to_string()) => {
                self.tls.connect(dial().await?).await
            }
            Err(e) => Err(e),
        }
        .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
        let mut tls = tls;
        let mut first = first;
        // 0-RTT, resuming: in plain mode the first bytes ride the hello; a WebSocket's
        // upgrade request does instead (its flush completes the handshake).
        if self.opts.ws.is_none() {
            let sent = self
                .tls
                .finish(&mut tls, first)
                .await
                .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
            if sent {
                first = &[];
            }
        }
        if !tls.get_ref().1.is_handshaking() {
            log::debug!("TLS with server {server}: {}", tls::agreed(tls.get_ref().1));
        }
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        // The kernel's estimate from the handshakes: the path to the server itself (asked
        // only for a session's connection, whose windows it sizes).
        let rtt = match (&self.opts.mux, &self.opts.grpc) {
            (None, None) => None,
            _ => crate::sys::tcp_rtt(tls.get_ref().0).ok(),
        };
        self.above_tls(tls, alpn, rtt, kind, first).await
    }

    /// The layers above TLS (or above TCP, without TLS): the WebSocket, if any, and the
    /// first bytes; `alpn`: what TLS agreed; `rtt`: the path's round trip, where known.
    async fn above_tls<S: super::io::Io + 'static>(
        &self,
        tls: S,
        alpn: Option<Vec<u8>>,
        rtt: Option<std::time::Duration>,
        kind: Kind,
        first: &[u8],
    ) -> Result<mux::Dialled> {
        let server = &self.opts.server;
        let peer = || format!("server {server}");
        if self.opts.grpc.is_some() {
            // HTTP/2 itself: agreed by ALPN over TLS, or spoken from the first byte (h2c)
            // to a proxy without TLS.
            if !self.opts.disable_tls && alpn.as_deref() != Some(grpc::ALPN_H2) {
                let e = std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "the server did not agree to HTTP/2 (ALPN h2): run it with -grpc",
                );
                return Err(Error::tunnel(Step::Grpc, peer(), e));
            }
            return Ok(mux::Dialled {
                io: Box::new(tls),
                v2: true,
                rtt,
            });
        }
        let Some(ws) = &self.opts.ws else {
            let mut io: BoxIo = Box::new(tls);
            // What the connection carries beyond a byte stream is asked inside TLS.
            let ask = match kind {
                Kind::Datagrams => Some(Ask::Datagrams),
                Kind::Stream => self.opts.mux.as_ref().and_then(|m| m.muxing.preamble()),
            };
            match ask {
                None => {}
                // The session's first frames go out beside the request; a refusal ends the
                // session at its first read (said once by the multiplexer).
                Some(Ask::Session) => {
                    io = preamble::ask_ahead(io, Ask::Session)
                        .await
                        .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
                }
                // A datagram tunnel waits for the answer: a refusal is then said in words.
                Some(Ask::Datagrams) => {
                    let within = self.opts.timeouts.handshake;
                    let taken = preamble::ask(&mut io, Ask::Datagrams, within)
                        .await
                        .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
                    if !taken {
                        return Err(udp_refused(
                            &server.to_string(),
                            "it does not carry UDP (run it with -udp; with -mux, UDP rides -mux sessions)",
                        ));
                    }
                }
            }
            let v2 = ask == Some(Ask::Session);
            write_first(&mut io, first)
                .await
                .map_err(|e| Error::tunnel(Step::Tls, peer(), e))?;
            return Ok(mux::Dialled { io, v2, rtt });
        };
        let protocol = match (kind, self.opts.mux.as_ref().map(|m| m.muxing)) {
            (_, Some(muxing)) => muxing.subprotocols(),
            (Kind::Datagrams, None) => datagram::SUBPROTOCOL_UDP,
            (Kind::Stream, None) => front::SMUX_OFF,
        };
        // Early data (`?ed=`) takes the place of the subprotocol, as Xray's clients send it.
        let riding = !first.is_empty() && ws.early_data.is_some_and(|max| first.len() <= max);
        let early;
        let protocol = if riding {
            use base64::Engine;
            early = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(first);
            early.as_str()
        } else {
            protocol
        };
        // A request with early data says so in its path (`ed=N`, as the client was given):
        // an mtt server then takes it; Xray's and v2ray's servers match the path alone.
        let marked;
        let path = match ws.early_data {
            Some(max) if riding => {
                let sep = if ws.path.contains('?') { '&' } else { '?' };
                marked = format!("{}{sep}ed={max}", ws.path);
                marked.as_str()
            }
            _ => ws.path.as_str(),
        };
        let upgrade = ws::client(tls, &ws.host, path, protocol, &ws.headers);
        // The upgrade's answer comes from the server, through whatever CDN or proxy is in
        // between: its wait is the whole path's round trip (TCP's own ends at the first hop).
        let asked = std::time::Instant::now();
        let (stream, chosen) = tokio::time::timeout(self.opts.timeouts.handshake, upgrade)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no WebSocket upgrade response in time",
                ))
            })
            .map_err(|e| {
                // An mtt server without -udp refuses a datagram tunnel's upgrade with 400:
                // said in the same words as in plain TLS.
                if protocol == datagram::SUBPROTOCOL_UDP && e.to_string().contains("HTTP 400") {
                    return udp_refused(
                        &server.to_string(),
                        "it does not carry UDP (run it with -udp)",
                    );
                }
                Error::tunnel(Step::WebSocket, format!("{} at {server}", ws.path), e)
            })?;
        if protocol == datagram::SUBPROTOCOL_UDP && chosen.as_deref() != Some(protocol) {
            return Err(udp_refused(
                &server.to_string(),
                "it does not carry UDP (run it with -udp)",
            ));
        }
        let v2 = chosen.as_deref() == Some(datagram::SUBPROTOCOL_YAMUX2);
        let rtt = Some(asked.elapsed());
        let mut io: BoxIo = Box::new(stream.keepalive(self.opts.timeouts.ping));
        if !riding {
            write_first(&mut io, first).await.map_err(|e| {
                Error::tunnel(Step::WebSocket, format!("{} at {server}", ws.path), e)
            })?;
        }
        Ok(mux::Dialled { io, v2, rtt })
    }
}

/// Writes the application's first bytes, if any.
async fn write_first(io: &mut BoxIo, first: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if first.is_empty() {
        return Ok(());
    }
    io.write_all(first).await?;
    io.flush().await
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
        // Plain mode (any multiplexing): a browser's ALPN, or -alpn.
        let alpn: &[&[u8]] = match opts.ws.is_some() {
            _ if opts.grpc.is_some() => &[grpc::ALPN_H2],
            true => ALPN_HTTP1,
            false => &[],
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
                mark: opts.fwmark,
            },
            tls: tls::TlsClient::new(&opts.tls, alpn, handshake)?,
            in_flight: tokio::sync::Semaphore::new(DIALS_IN_FLIGHT),
            opts: opts.clone(),
        });
        let session_dial = || -> mux::DialFn {
            let c = connector.clone();
            Box::new(move || {
                let c = c.clone();
                Box::pin(async move { c.connect(Kind::Stream).await })
            })
        };
        let pool = match (&opts.mux, &opts.grpc) {
            (_, Some(g)) => {
                let target = Arc::new(grpc::Target {
                    authority: g.authority.clone(),
                    path: g.service.tun_path(),
                });
                let ping = opts.timeouts.ping;
                let start: mux::StartFn = Box::new(move |dialled| {
                    Box::pin(grpc::GrpcClient::start(dialled, target.clone(), ping))
                });
                Some(mux::MuxPool::new(
                    g.max_streams,
                    g.idle,
                    start,
                    session_dial(),
                ))
            }
            (Some(m), None) => Some(mux::MuxPool::with_ping(
                m.max_streams,
                m.idle,
                m.muxing,
                opts.timeouts.ping,
                session_dial(),
            )),
            (None, None) => None,
        };
        Ok(Dialer { connector, pool })
    }

    /// One new tunnel carrying `kind`, ready for application bytes (or datagram frames).
    pub async fn dial(&self, kind: Kind) -> Result<BoxIo> {
        match &self.pool {
            None => self.connector.connect(kind).await.map(|d| d.io),
            Some(pool) => pool.open(kind).await.map(|s| Box::new(s) as BoxIo),
        }
    }

    /// With early data on (`-wss-path …?ed=N`): at most how many first bytes ride the
    /// upgrade. The caller then waits briefly for them and dials with [`Dialer::dial_early`].
    pub fn early_data(&self) -> Option<usize> {
        match (&self.pool, &self.connector.opts.ws) {
            (None, Some(ws)) => ws.early_data,
            _ => None,
        }
    }

    /// Whether the next tunnel's connection resumes a TLS session with 0-RTT, so that its
    /// first bytes ride the hello (plain TLS, no multiplexing): they are worth a short wait.
    pub fn zero_rtt_ready(&self) -> bool {
        let o = &self.connector.opts;
        self.pool.is_none() && o.ws.is_none() && self.connector.tls.zero_rtt_ready()
    }

    /// A new byte-stream tunnel whose first bytes are `first` (see [`Dialer::early_data`]).
    pub async fn dial_early(&self, first: &[u8]) -> Result<BoxIo> {
        match &self.pool {
            None => self
                .connector
                .connect_early(Kind::Stream, first)
                .await
                .map(|d| d.io),
            Some(_) => {
                let mut io = self.dial(Kind::Stream).await?;
                write_first(&mut io, first)
                    .await
                    .map_err(|e| Error::tunnel(Step::Mux, "server", e))?;
                Ok(io)
            }
        }
    }
}
