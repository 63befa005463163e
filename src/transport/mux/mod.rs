//! Layer 4, multiplexing: many tunnels as streams of one TLS or WebSocket connection. Each
//! multiplexer lives in a folder of its own ([`yamux`], mtt's; [`smux`], the original's;
//! [`muxcool`], v2ray's; the last two share the [`engine`] of multiplexers without per-stream
//! flow control) behind one seam: a [`Muxing`] names it and starts either end of a session, the client end as a
//! [`ClientSession`] that opens streams, the server end as a [`ServerSession`] that yields
//! them. Nothing outside the multiplexers matches on which one a session speaks.
//!
//! The client keeps a [`MuxPool`] of sessions of any multiplexer (see [`pool`]). The server
//! turns each connection into a [`ServerSession`] and takes its streams one by one, refusing
//! streams beyond the per-session limit without harming the others.

pub mod engine;
pub mod muxcool;
pub mod pool;
pub mod smux;
pub mod yamux;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

pub use pool::{DialFn, Dialled, MuxPool, StartFn};

use super::datagram::Kind;
use super::io::BoxIo;

/// Streams one server session carries at once (the original's limit); more are refused.
pub const MAX_STREAMS_PER_SESSION: usize = 16;
/// How long a client keeps a session without streams before closing it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10);

/// A boxed future of the seam's methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The multiplexing a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Muxing {
    /// yamux (mtt clients).
    Yamux,
    /// smux version 1 (the original's clients).
    Smux,
    /// Mux.Cool (v2ray-plugin's clients and servers).
    MuxCool,
}

impl Muxing {
    /// The multiplexer named `name` by `-mux-proto`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "yamux" => Some(Muxing::Yamux),
            "smux" => Some(Muxing::Smux),
            "mux.cool" | "muxcool" => Some(Muxing::MuxCool),
            _ => None,
        }
    }

    /// What a session's first bytes say it speaks: `None` if more bytes are needed,
    /// `Some(None)` if it is no session of ours.
    pub fn detect(first: &[u8]) -> Option<Option<Self>> {
        if yamux::looks_like_yamux(first)? {
            return Some(Some(Muxing::Yamux));
        }
        if muxcool::frame::looks_like_muxcool(first)? {
            return Some(Some(Muxing::MuxCool));
        }
        Some(smux::frame::looks_like_smux(first)?.then_some(Muxing::Smux))
    }

    /// The session a WebSocket client asks for with one of `offered` (yamux version 2 first,
    /// then version 1, then smux): the multiplexing, whether it is version 2, and the
    /// subprotocol to answer.
    pub fn named(offered: &[String]) -> Option<(Self, bool, &'static str)> {
        let has = |p: &str| offered.iter().any(|o| o == p);
        if has(yamux::SUBPROTOCOL_V2) {
            Some((Muxing::Yamux, true, yamux::SUBPROTOCOL_V2))
        } else if has(yamux::SUBPROTOCOL_V1) {
            Some((Muxing::Yamux, false, yamux::SUBPROTOCOL_V1))
        } else if has(smux::SUBPROTOCOL) {
            Some((Muxing::Smux, false, smux::SUBPROTOCOL))
        } else {
            None
        }
    }

    /// The WebSocket subprotocols a client offers for a session of this multiplexing (none
    /// for Mux.Cool: v2ray's servers know it by their configuration, mtt's by its bytes).
    pub fn subprotocols(self) -> &'static str {
        match self {
            Muxing::Yamux => yamux::SUBPROTOCOLS,
            Muxing::Smux => smux::SUBPROTOCOL,
            Muxing::MuxCool => "",
        }
    }

    /// The session a plain-TLS client named by its ALPN value `p` (version 2 only: earlier
    /// sessions, and the original's, are told by their first bytes).
    pub fn by_alpn(p: &[u8]) -> Option<Self> {
        yamux::ALPN.contains(&p).then_some(Muxing::Yamux)
    }

    /// What a plain-TLS client asks for in its preamble to open a session of this
    /// multiplexing: version 2 of yamux; the original's smux and v2ray's Mux.Cool ask nothing
    /// (their servers know them by their first bytes).
    pub fn preamble(self) -> Option<crate::transport::preamble::Ask> {
        match self {
            Muxing::Yamux => Some(crate::transport::preamble::Ask::Session),
            Muxing::Smux | Muxing::MuxCool => None,
        }
    }

    /// Its name in logs; `v2`: the session's streams open with a type byte.
    pub fn describe(self, v2: bool) -> &'static str {
        match (self, v2) {
            (Muxing::Smux, _) => "smux version 1",
            (Muxing::MuxCool, _) => "Mux.Cool",
            (Muxing::Yamux, true) => "yamux, version 2",
            (Muxing::Yamux, false) => "yamux",
        }
    }

    /// Whether the streams a server takes from a session begin with a byte saying what they
    /// carry: yamux's of version 2 (`v2`, as the client's ALPN or subprotocol said), and
    /// Mux.Cool's (made from what the stream's New frame said).
    pub fn typed(self, v2: bool) -> bool {
        match self {
            Muxing::Yamux => v2,
            Muxing::Smux => false,
            Muxing::MuxCool => true,
        }
    }

    /// Starts the client end of a session over a dialled connection; `ping`: keepalive.
    pub fn client(self, dialled: Dialled, ping: Option<Duration>) -> Arc<dyn ClientSession> {
        match self {
            Muxing::Yamux => yamux::YamuxClient::start(dialled, ping),
            Muxing::Smux => Arc::new(smux::SmuxClient::new(dialled.io, smux::DEFAULT)),
            Muxing::MuxCool => Arc::new(muxcool::MuxCoolClient::new(dialled.io, muxcool::DEFAULT)),
        }
    }

    /// Starts the server end of a session over an established connection; `rtt`, the round
    /// trip to the client where known, sizes its windows where it has any.
    pub fn server(self, io: BoxIo, quiet: Quiet, rtt: Option<Duration>) -> Box<dyn ServerSession> {
        match self {
            Muxing::Yamux => Box::new(yamux::YamuxSession::server(
                io,
                MAX_STREAMS_PER_SESSION,
                quiet,
                rtt,
            )),
            Muxing::Smux => Box::new(smux::SmuxSession::server(io, smux::DEFAULT, quiet)),
            Muxing::MuxCool => {
                Box::new(muxcool::MuxCoolSession::server(io, muxcool::DEFAULT, quiet))
            }
        }
    }
}

/// The client end of a session, whichever its multiplexer.
pub trait ClientSession: Send + Sync {
    /// Opens a stream carrying `kind`, announced to the server before this returns (so it
    /// dials the destination even if the application waits for it to speak first).
    fn open(&self, kind: Kind) -> BoxFuture<'_, crate::Result<BoxIo>>;
    /// Resolves once the session has ended, by either end or by an error.
    fn closed(&self) -> BoxFuture<'_, ()>;
    /// Closes the session (what is queued is still sent).
    fn close(&self);
}

/// The server end of a session, whichever its multiplexer.
pub trait ServerSession: Send {
    /// The next stream within the limit; `None` when the session has ended, or stayed
    /// without streams for longer than [`Quiet`] allows (then it is closed). Keep calling it
    /// (or [`ServerSession::finish`]) while streams are open: it may be what moves them.
    fn next(&mut self) -> BoxFuture<'_, Option<io::Result<BoxIo>>>;
    /// For shutdown: refuses new streams, lets the open ones finish, then closes.
    fn finish(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// How long a session may carry no stream: before its first (the rest of the handshake),
/// and between streams (the idle timeout); then it is closed.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    /// Until the first stream.
    pub first: Duration,
    /// After the last stream ended.
    pub idle: Duration,
    /// Keepalive frames this often (`-ping`), and a pinging peer silent for two is gone.
    pub ping: Option<Duration>,
}

/// One stream of a session, holding its place in the session's count while it lives.
pub struct MuxStream<S = BoxIo> {
    io: S,
    _slot: Slot,
}

impl<S> MuxStream<S> {
    fn new(io: S, slot: Slot) -> Self {
        MuxStream { io, _slot: slot }
    }
}

/// A reserved place in a session; freeing it may start the session's idle timer.
struct Slot {
    count: Arc<Counter>,
}

/// Live streams of a session, with a wake-up for the task that watches it go idle.
#[derive(Default)]
struct Counter {
    open: AtomicUsize,
    idle: Notify,
}

impl Slot {
    fn new(count: Arc<Counter>) -> Self {
        crate::metrics::get().mux_streams.inc();
        Slot { count }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::get().mux_streams.dec();
        if self.count.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.idle.notify_one();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MuxStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MuxStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
