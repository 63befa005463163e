//! The accepting end of the pipeline: [`Acceptor`] completes the layers over each accepted
//! connection (TLS?, HTTP front and WebSocket?, multiplexing?) and hands every tunnel they
//! carry, the connection itself or each stream of a session, to the role, each in a task
//! that drain waits for.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::datagram::{self, Kind};
use super::front::{Carry, HttpServer, Upgrade};
use super::grpc::{self, GrpcFront};
use super::io::{BoxIo, Io};
use super::listen::{Listener, Stream};
use super::mux::{Muxing, Quiet};
use super::options::AcceptOptions;
use super::serve::{ConnId, Limits, accept_loop};
use super::{ALPN_HTTP1, preamble, sniff, tls};
use crate::certs::{Certs, acme};
use crate::error::Step;
use crate::metrics::Failure;
use crate::{Error, Result};

mod alpn;
mod session;

/// One tunnel, ready for application bytes: its stream, who it is in logs, (mu-server)
/// whose it is, and whether it carries a byte stream or datagrams.
pub struct Tunnel<O = ()> {
    /// The tunnel's bytes (datagram frames, for [`Kind::Datagrams`]).
    pub io: BoxIo,
    /// A byte stream, or datagrams.
    pub kind: Kind,
    /// Connection number and peer (with the stream number within a session).
    pub id: ConnId,
    /// The owner of the path it came on, when paths are routed.
    pub owner: Option<O>,
    /// Fires at shutdown: byte streams may drain, datagram tunnels (which never "finish")
    /// end at once.
    pub shutdown: CancellationToken,
}

/// Ends tunnels: TLS (unless disabled) over an accepted connection, then (with `-wss`) the
/// HTTP front and WebSocket, then (with `-mux` or the client's choice) multiplexing.
pub struct Acceptor<O = ()> {
    tls: Option<tls::TlsServer>,
    certs: Option<Arc<Certs>>,
    http: Option<Arc<HttpServer<O>>>,
    /// gRPC tunnels on HTTP/2 connections (`-grpc`).
    grpc: Option<Arc<GrpcFront<O>>>,
    mux: bool,
    quiet: Quiet,
    /// Plain-TLS tunnels of a server: `-mux` on one end only is told by the first bytes.
    sniff: bool,
    /// Whether tunnels may carry datagrams (`-udp`).
    udp: bool,
    /// Proxies believed about the client behind them.
    trusted: super::origin::Trusted,
    /// How long a PROXY header from a trusted proxy may take.
    handshake: std::time::Duration,
}

/// Set once a refused UDP tunnel has been logged.
pub(crate) static UDP_REFUSED: AtomicBool = AtomicBool::new(false);

impl<O: Clone + Send + Sync + 'static> Acceptor<O> {
    /// Loads or makes the certificate (none with `-disable-tls`) and sets up the layers.
    pub fn new(opts: &AcceptOptions<O>) -> Result<Self> {
        let http = opts.ws.as_ref().map(|ws| {
            Arc::new(HttpServer {
                path: ws.path.clone(),
                fallback: ws.fallback.clone(),
                early_data: ws.early_data,
                default_mux: opts.mux,
                timeouts: opts.timeouts,
                udp: opts.udp,
                trusted: opts.trusted.clone(),
            })
        });
        let grpc = opts.grpc.as_ref().map(|g| {
            Arc::new(GrpcFront {
                services: g.services.clone(),
                calls: g.calls.clone(),
                fallback: g.fallback.clone(),
                timeouts: opts.timeouts,
                udp: opts.udp,
            })
        });
        let certs = opts.tls.as_ref().map(Certs::new).transpose()?.map(Arc::new);
        let (alpn, extra) = alpn::offered(
            grpc.is_some(),
            http.is_some(),
            opts.mux,
            opts.udp,
            certs.as_ref().is_some_and(|c| c.acme().is_some()),
        );
        let tls = certs
            .as_ref()
            .map(|c| {
                let handshake = opts.timeouts.handshake;
                tls::TlsServer::with_extra(c.store(), alpn, &extra, handshake, opts.zero_rtt)
            })
            .transpose()?;
        Ok(Acceptor {
            tls,
            certs,
            http,
            grpc,
            mux: opts.mux,
            quiet: Quiet {
                first: opts.timeouts.handshake,
                idle: opts.session_idle,
                ping: opts.timeouts.ping,
            },
            sniff: opts.ws.is_none(),
            udp: opts.udp,
            trusted: opts.trusted.clone(),
            handshake: opts.timeouts.handshake,
        })
    }

    /// The keys of the session tickets, if TLS is on: what a fleet shares.
    pub fn tickets(&self) -> Option<Arc<super::tickets::Tickets>> {
        self.tls.as_ref().map(|t| t.tickets().clone())
    }

    /// The certificate served, if TLS is on: what reloads and ACME act on.
    pub fn certs(&self) -> Option<Arc<Certs>> {
        self.certs.clone()
    }

    /// Serves `listener` until `shutdown`: every tunnel of every accepted connection goes to
    /// `handle` in a task of its own; then drains them all (see [`accept_loop`]). Multiplexed
    /// sessions stop taking streams at shutdown and close once their last stream has ended.
    pub async fn serve<H, Fut>(
        self: Arc<Self>,
        listener: Listener,
        shutdown: CancellationToken,
        limits: Limits,
        handle: H,
    ) where
        H: Fn(Tunnel<O>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = shutdown.clone();
        let this = self.clone();
        // The connection's future itself, not an `async` block awaiting it (which would
        // hold its arguments twice in every connection's task).
        accept_loop(listener, shutdown, limits, move |conn, id, tasks| {
            this.clone()
                .connection(conn, id, tasks, stop.clone(), handle.clone())
        })
        .await;
    }

    async fn connection<H, Fut>(
        self: Arc<Self>,
        conn: Stream,
        id: ConnId,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        handle: H,
    ) where
        H: Fn(Tunnel<O>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let _active = crate::metrics::get().serving();
        let start = std::time::Instant::now();
        let mut id = id;
        let m = crate::metrics::get();
        // A trusted TLS-passthrough proxy says first who its client is (PROXY v1/v2).
        let from_proxy =
            self.trusted.proxy_protocol && id.client.is_some_and(|c| self.trusted.trusts(c.ip()));
        // The round trip sizes a session's windows (sessions come with `-mux`, or on a
        // WebSocket whose client asks); through a proxy it is not the client's.
        let rtt = match &conn {
            tokio_util::either::Either::Left(tcp)
                if (self.mux || self.udp || self.http.is_some()) && !from_proxy =>
            {
                crate::sys::tcp_rtt(tcp).ok()
            }
            _ => None,
        };
        // Boxed: handshake state is freed once done instead of sizing every tunnel's task.
        let layered = if from_proxy {
            let mut conn = conn;
            // Boxed, as the layers are: its buffers are not part of every tunnel's task.
            match Box::pin(super::origin::read_header(&mut conn, self.handshake)).await {
                Ok((client, rest)) => {
                    if let Some(c) = client {
                        id.behind_proxy(c);
                    }
                    let io: BoxIo = Box::new(sniff::Rewind::new(conn, &rest));
                    Box::pin(self.layers(io, &id)).await
                }
                Err(e) => {
                    m.fail(Failure::Handshake);
                    crate::rarely!(Warn, "{id}: {}", crate::error::Report(&e));
                    return;
                }
            }
        } else {
            Box::pin(self.layers(conn, &id)).await
        };
        let (io, up) = match layered {
            Ok(Some(x)) => x,
            // Ordinary HTTP requests were answered, or the client left.
            Ok(None) => return,
            Err(e) => {
                m.fail(Failure::Handshake);
                say_failed_handshake(&id, &e);
                return;
            }
        };
        if self.tls.is_some() || self.http.is_some() || self.mux {
            m.handshake_took(start.elapsed());
        }
        // A trusted HTTP proxy's forwarding headers named the client.
        let rtt = match up.client {
            Some(ip) => {
                id.behind_proxy(std::net::SocketAddr::new(ip, 0));
                None
            }
            None => rtt,
        };
        match up.carry {
            Carry::Plain => {
                // A WebSocket client speaks first within about a round trip if it ever does:
                // a Mux.Cool session (v2ray-plugin's) is then known before a destination is
                // dialled for nothing; later first bytes are still told apart below.
                let mut io = io;
                let window = rtt.map_or(PEEK, |r| (2 * r + PEEK / 5).min(PEEK * 5));
                // So does a plain-TLS client whose preamble asks for a UDP tunnel.
                if self.http.is_none() && self.udp && !self.mux {
                    let taken;
                    (io, taken) =
                        Box::pin(preamble::take_datagrams(io, window, self.handshake)).await;
                    match taken {
                        Some(true) => {
                            let carry = Carry::Datagrams;
                            let tunnel =
                                self.other(carry, io, id, up, rtt, tasks, shutdown, handle);
                            return Box::pin(tunnel).await;
                        }
                        Some(false) => return,
                        None => {}
                    }
                }
                if self.http.is_some() {
                    let (peeked, muxcool) = Box::pin(sniff::peek_muxcool(io, window)).await;
                    io = peeked;
                    if muxcool {
                        let carry = Carry::Session {
                            muxing: Some(Muxing::MuxCool),
                            v2: true,
                        };
                        return Box::pin(
                            self.other(carry, io, id, up, rtt, tasks, shutdown, handle),
                        )
                        .await;
                    }
                }
                let handoff = sniff::Handoff::default();
                let io: BoxIo = Box::new(sniff::FirstRead::new(
                    io,
                    id.id,
                    up.ws_hello,
                    self.sniff,
                    handoff.clone(),
                ));
                // Boxed: measured, an idle tunnel then costs the server 10.9 KiB, not 12.4
                // (its task is not sized for the layers' and the handshake's states).
                Box::pin(handle.clone()(Tunnel {
                    io,
                    kind: Kind::Stream,
                    id: id.clone(),
                    owner: up.owner.clone(),
                    shutdown: shutdown.clone(),
                }))
                .await;
                // Its first bytes opened a Mux.Cool session (v2ray-plugin's clients): served
                // as one, on any server.
                let session = handoff.lock().ok().and_then(|mut s| s.take());
                if let Some(io) = session {
                    let carry = Carry::Session {
                        muxing: Some(Muxing::MuxCool),
                        v2: true,
                    };
                    Box::pin(self.other(carry, io, id, up, rtt, tasks, shutdown, handle)).await
                }
            }
            // Boxed: datagram tunnels and sessions are few, and every connection's task
            // would otherwise be sized for them (a session's state, yamux's included, is far
            // larger than a plain tunnel's).
            carry => Box::pin(self.other(carry, io, id, up, rtt, tasks, shutdown, handle)).await,
        }
    }

    /// Completes the layers; `None` when the connection carried no tunnel.
    async fn layers<S: Io + 'static>(
        &self,
        io: S,
        id: &ConnId,
    ) -> Result<Option<(BoxIo, Upgrade<O>)>> {
        match &self.tls {
            None => self.after_tls(io, id, None, false).await,
            Some(t) => {
                let (s, agreed) = t
                    .negotiate(io)
                    .await
                    .map_err(|e| Error::tunnel(Step::Tls, "client", e))?;
                log::debug!("{id}: TLS {}", agreed.agreed);
                let chosen = agreed.chosen.clone();
                if chosen.as_deref() == Some(acme::ALPN_ACME) {
                    // An ACME server validating this one: the handshake was the answer.
                    log::debug!("{id}: answered an ACME TLS-ALPN-01 validation");
                    return Ok(None);
                }
                if self.http.is_none()
                    && agreed.offers(datagram::ALPN_UDP)
                    && chosen.as_deref() != Some(datagram::ALPN_UDP)
                {
                    datagram::warn_once(
                        &UDP_REFUSED,
                        format_args!(
                            "{id}: a client asked for a UDP tunnel; this server runs without -udp{} (said once)",
                            if self.mux {
                                ", or with -mux (UDP then rides the client's multiplexed sessions)"
                            } else {
                                ""
                            }
                        ),
                    );
                    return Ok(None);
                }
                let ws_hello = agreed.offered == [ALPN_HTTP1[0].to_vec()];
                self.after_tls(s, id, chosen, ws_hello).await
            }
        }
    }

    async fn after_tls<S: Io + 'static>(
        &self,
        io: S,
        id: &ConnId,
        alpn: Option<Vec<u8>>,
        ws_hello: bool,
    ) -> Result<Option<(BoxIo, Upgrade<O>)>> {
        // HTTP/2 is known by its preface: without TLS (behind a proxy that ends it) as h2c;
        // agreed by ALPN, as gRPC clients and browsers send it at once, where an mtt client in
        // plain mode, which offers h2 too, sends the application's bytes or nothing yet.
        let agreed_h2 = alpn.as_deref() == Some(grpc::ALPN_H2);
        if self.grpc.is_some() && (self.tls.is_none() || agreed_h2) {
            let wait = if agreed_h2 { PEEK * 5 } else { self.handshake };
            let (io, h2c) = sniff::starts_with(Box::new(io), grpc::H2C_PREFACE, wait).await;
            if h2c {
                return Ok(Some((io, Upgrade::grpc())));
            }
            return self.past_http2(io, id, alpn, ws_hello).await;
        }
        self.past_http2(io, id, alpn, ws_hello).await
    }

    /// The layers of a connection that is not HTTP/2.
    async fn past_http2<S: Io + 'static>(
        &self,
        io: S,
        id: &ConnId,
        alpn: Option<Vec<u8>>,
        ws_hello: bool,
    ) -> Result<Option<(BoxIo, Upgrade<O>)>> {
        let Some(front) = &self.http else {
            // Plain TLS names a multiplexing by ALPN only for version 2; else the first bytes
            // tell which (with `-mux`).
            let named = alpn.as_deref().and_then(Muxing::by_alpn);
            let carry = match alpn.as_deref() {
                Some(p) if p == datagram::ALPN_UDP => Carry::Datagrams,
                _ if self.mux => Carry::Session {
                    muxing: named,
                    v2: named.is_some(),
                },
                _ => Carry::Plain,
            };
            let up = Upgrade {
                carry,
                path: String::new(),
                owner: None,
                client: None,
                ws_hello,
            };
            return Ok(Some((Box::new(io), up)));
        };
        let peer = id.client.map(|a| a.ip());
        front
            .serve(io, &id.to_string(), peer)
            .await
            .map_err(|e| Error::tunnel(Step::Http, "client", e))
    }
}

/// How long a WebSocket tunnel's first bytes are waited for before its destination is
/// dialled, without a measured round trip (with one: two round trips, at most 5 × this).
const PEEK: std::time::Duration = std::time::Duration::from_millis(100);

/// Says why a connection's handshake failed, in the words of what happened rather than of
/// the library that noticed: a peer that closes before TLS is done (a health check, a port
/// scan) is no news at the default level; a peer that speaks no TLS, or no HTTP to a `-wss`
/// server, is told apart from a broken handshake. At most once a second per kind.
fn say_failed_handshake(id: &ConnId, e: &Error) {
    let Error::Tunnel { step, source, .. } = e else {
        crate::rarely!(Warn, "{id}: {}", e.report());
        return;
    };
    let text = source.to_string();
    match step {
        crate::error::Step::Tls if source.kind() == std::io::ErrorKind::UnexpectedEof => {
            log::debug!(
                "{id}: closed before the TLS handshake was done (a health check, or a scan)"
            );
        }
        crate::error::Step::Tls
            if text.contains("InvalidContentType") || text.contains("corrupt message") =>
        {
            crate::rarely!(
                Warn,
                "{id}: the client speaks no TLS (plain HTTP, or another protocol, to this TLS port): point it at the right port, or give it TLS"
            );
        }
        crate::error::Step::Http
            if text.starts_with("invalid") || text.contains("before message completed") =>
        {
            crate::rarely!(
                Warn,
                "{id}: the client sent no HTTP request ({text}): a client without -wss at this -wss server? (-wss must be on both ends)"
            );
        }
        _ => {
            crate::rarely!(Warn, "{id}: {}", e.report());
        }
    }
}
