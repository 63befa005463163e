//! Layer 4, multiplexing (yamux): many tunnels as streams of one TLS or WebSocket connection.
//! This file holds what both ends share (settings, [`MuxStream`]); the client's pool is in
//! [`pool`], the server's sessions in [`session`].
//!
//! The client keeps a [`MuxPool`] of sessions: a new tunnel takes a stream on a session with
//! room, reserving its slot under one lock, so concurrent arrivals neither overfill a session
//! nor dial a session each; a session that is still being dialled takes reservations too. An
//! idle session is kept for a while to save the next handshake, then closed. A session whose
//! connection failed is dead at once and never given new streams.
//!
//! The server turns each connection into a [`MuxSession`] and takes its streams one by one,
//! refusing (resetting) streams beyond the per-session limit without harming the others.
//! Each yamux connection is driven by exactly one task, as yamux requires.

mod coalesce;
pub mod pool;
mod reset;
pub mod session;
pub mod smux;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use coalesce::Coalesce;
pub use pool::{DialFn, Dialled, MuxPool};
pub use session::MuxSession;

use super::io::BoxIo;
use reset::Resets;

/// Streams one server session carries at once (the original's limit); more are refused.
pub const MAX_STREAMS_PER_SESSION: usize = 16;
/// How long a client keeps a session without streams before closing it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10);

/// Streams yamux keeps per connection: room for streams that are closing but not yet
/// collected (the limit of live streams is [`MAX_STREAMS_PER_SESSION`], enforced by us).
const YAMUX_STREAMS: usize = 256;
/// yamux guarantees each stream a 256 KiB receive window out of the connection's.
const YAMUX_MIN_WINDOW: usize = 256 * 1024;
/// The most a busy stream's window may grow by (yamux doubles it while the sender uses it up
/// within two round trips). Without room above the guaranteed windows, every stream stays at
/// 256 KiB and a single stream over a long path is held to 256 KiB per round trip.
const YAMUX_WINDOW_GROWTH: usize = 32 * 1024 * 1024;

/// The rate, in bytes per second, a stream's window is allowed to grow for: the window may
/// reach this rate's bandwidth-delay product at the session's round trip (2.5 Gbit/s; 15.6
/// MB at 50 ms). Past the path's product, a bigger window only lets more of a bulk stream wait
/// in the session's socket buffers, in front of every sibling's small exchange: on a host
/// whose CPU is the bottleneck (loopback, a small router), that queue is what a sibling's
/// round trip costs, and yamux, which sizes windows by how fast the reader takes bytes, grows
/// them there to megabytes.
const PATH_RATE: f64 = 2.5e9 / 8.0;

/// Growth allowed however short the path: a busy stream's window may reach 512 KiB. The
/// window is also what carries a stream over the moments either end is off the CPU; measured
/// on loopback (2 cores, `benches/latency.py` and iperf3 through mux, medians of 3–4 runs):
///
/// | stream window | sibling round trip beside a saturating stream, p50 / p99 | mux ÷ TLS |
/// |---|---|---|
/// | 256 KiB (no growth) | 0.56–1.03 / 1.6–3.1 ms | 0.8 |
/// | 512 KiB | 1.4 / 3.1–4.2 ms | 1.0 |
/// | 1 MiB | 1.8–2.1 / 4.4–7.9 ms | 1.0 |
/// | grown by yamux alone (before) | 2.4 / 9.0 ms | 1.0 |
const SHORT_PATH_GROWTH: usize = 256 * 1024;

/// What the streams' windows may grow by in total on a session whose round trip is `rtt`
/// (unknown: as much as ever, the path may be long).
fn window_growth(rtt: Option<Duration>) -> usize {
    match rtt {
        Some(rtt) => {
            ((rtt.as_secs_f64() * PATH_RATE) as usize).clamp(SHORT_PATH_GROWTH, YAMUX_WINDOW_GROWTH)
        }
        None => YAMUX_WINDOW_GROWTH,
    }
}

/// yamux settings shared by both ends, for a session whose round trip is `rtt`.
fn config(rtt: Option<Duration>) -> yamux::Config {
    let growth = window_growth(rtt);
    log::debug!(
        "multiplexed session: round trip {}, stream windows may grow by {} KiB",
        rtt.map_or_else(|| "unknown".into(), |r| format!("{r:?}")),
        growth / 1024
    );
    let mut c = yamux::Config::default();
    c.set_max_num_streams(YAMUX_STREAMS);
    c.set_max_connection_receive_window(Some(YAMUX_STREAMS * YAMUX_MIN_WINDOW + growth));
    c.set_split_send_size(SPLIT_SEND);
    c
}

/// What a yamux connection runs over: yamux writes each frame's 12-byte header and its body
/// separately, and every write to TLS becomes a record and a syscall; [`Coalesce`] joins them.
type Transport = Compat<Coalesce<BoxIo>>;

fn transport(io: BoxIo, resets: Arc<Resets>, ping: Option<Duration>) -> Transport {
    Coalesce::new(io, resets, ping).compat()
}

/// Largest data frame yamux sends. A new stream's window is 256 KiB and yamux doubles it only
/// when half of it is used within two of its sampled round trips, which on a fast link it
/// often is not: a 256 KiB frame then fills the whole window and each one waits for the
/// window update of the last (single-stream mux swung between 0.55× and 1.0× of plain TLS
/// from run to run). 64 KiB frames keep four in flight and the update arrives before the
/// sender runs dry: measured with iperf3 through separate processes, 0.9–1.05× every run, at
/// the same CPU per GiB; 16 KiB frames cost more writes to TLS, each one a syscall.
const SPLIT_SEND: usize = 64 * 1024;

/// The multiplexing a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Muxing {
    /// yamux (mtt clients).
    Yamux,
    /// smux version 1 (the original's clients).
    Smux,
}

/// The server end of a session of either multiplexing.
pub enum ServerSession {
    /// yamux (mtt clients); boxed, as yamux's state is large.
    Yamux(Box<MuxSession>),
    /// smux version 1 (the original's clients).
    Smux(smux::SmuxSession),
}

impl ServerSession {
    /// Starts the server end of a session of `muxing` over an established connection.
    /// `rtt`, the round trip to the client where known, sizes a yamux session's windows.
    pub fn new(
        io: BoxIo,
        muxing: crate::transport::sniff::Muxing,
        quiet: session::Quiet,
        rtt: Option<Duration>,
    ) -> Self {
        match muxing {
            crate::transport::sniff::Muxing::Yamux => ServerSession::Yamux(Box::new(
                MuxSession::server(io, MAX_STREAMS_PER_SESSION, quiet, rtt),
            )),
            Muxing::Smux => {
                ServerSession::Smux(smux::SmuxSession::server(io, smux::DEFAULT, quiet))
            }
        }
    }

    /// The next stream (see [`MuxSession::next`]).
    pub async fn next(&mut self) -> Option<io::Result<BoxIo>> {
        match self {
            ServerSession::Yamux(s) => Some(s.next().await?.map(|s| Box::new(s) as BoxIo)),
            ServerSession::Smux(s) => Some(s.next().await?.map(|s| Box::new(s) as BoxIo)),
        }
    }

    /// Lets the open streams finish, takes no new ones, then closes.
    pub async fn finish(self) {
        match self {
            ServerSession::Yamux(s) => s.finish().await,
            ServerSession::Smux(s) => s.finish().await,
        }
    }
}

fn mux_err(e: yamux::ConnectionError) -> io::Error {
    match e {
        yamux::ConnectionError::Io(e) => e,
        other => io::Error::other(format!("multiplexing: {other}")),
    }
}

/// One stream of a session (yamux or smux), as a tokio byte stream. Dropping it releases
/// its slot.
pub struct MuxStream {
    inner: Inner,
    _slot: Slot,
}

enum Inner {
    Yamux(YamuxStream),
    Smux(smux::SmuxStream),
}

/// A yamux stream; dropping it resets it if the peer could otherwise wait on it for ever
/// (see [`reset`]).
struct YamuxStream {
    inner: Compat<yamux::Stream>,
    resets: Arc<Resets>,
}

impl MuxStream {
    fn new(stream: yamux::Stream, resets: Arc<Resets>, slot: Slot) -> Self {
        MuxStream {
            inner: Inner::Yamux(YamuxStream {
                inner: stream.compat(),
                resets,
            }),
            _slot: slot,
        }
    }

    fn smux(stream: smux::SmuxStream, slot: Slot) -> Self {
        MuxStream {
            inner: Inner::Smux(stream),
            _slot: slot,
        }
    }

    /// Writes `first` (possibly nothing), which makes yamux send the frame that opens the
    /// stream at once (smux has sent its SYN already).
    async fn announce(&mut self, first: &[u8]) -> io::Result<()> {
        let Inner::Yamux(y) = &mut self.inner else {
            return Ok(());
        };
        tokio::io::AsyncWriteExt::write_all(&mut y.inner, first).await?;
        if first.is_empty() {
            tokio::io::AsyncWriteExt::write(&mut y.inner, &[]).await?;
        }
        Ok(())
    }
}

impl Drop for YamuxStream {
    fn drop(&mut self) {
        let s = self.inner.get_ref();
        // Our FIN went out but the peer's has not come: the peer may be writing into this
        // stream or waiting to read from it.
        let half_open = s.is_write_closed() && !s.is_closed();
        self.resets.dropped(s.id().val(), half_open);
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

impl tokio::io::AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Yamux(y) => {
                let start = buf.filled().len();
                ready!(Pin::new(&mut y.inner).poll_read(cx, buf))?;
                if buf.filled().len() > start {
                    // yamux returns the window for bytes taken only when asked for more,
                    // which a relay does after it has written these out: the sender would
                    // stop for that long once per window. An empty read returns it now.
                    let mut none = tokio::io::ReadBuf::new(&mut []);
                    let _ = Pin::new(&mut y.inner).poll_read(cx, &mut none);
                }
                Poll::Ready(Ok(()))
            }
            Inner::Smux(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Yamux(y) => Pin::new(&mut y.inner).poll_write(cx, buf),
            Inner::Smux(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Yamux(y) => Pin::new(&mut y.inner).poll_flush(cx),
            Inner::Smux(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Yamux(y) => {
                // yamux FIN: our side is done, the peer may still send (half-close).
                y.resets.fin_asked(y.inner.get_ref().id().val());
                Pin::new(&mut y.inner).poll_shutdown(cx)
            }
            Inner::Smux(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::transport::io::BoxIo;

    /// Windows grow for the path's bandwidth-delay product at 2.5 Gbit/s: the short-path
    /// allowance on loopback, megabytes over a continent, never past the ceiling; an unknown
    /// path (a proxy in between) keeps the ceiling.
    #[test]
    fn windows_grow_for_the_path_they_cover() {
        assert_eq!(
            window_growth(Some(Duration::from_micros(10))),
            SHORT_PATH_GROWTH
        );
        let far = window_growth(Some(Duration::from_millis(50)));
        assert!((15_000_000..16_000_000).contains(&far), "{far}");
        assert_eq!(
            window_growth(Some(Duration::from_secs(1))),
            YAMUX_WINDOW_GROWTH
        );
        assert_eq!(window_growth(None), YAMUX_WINDOW_GROWTH);
    }

    /// A client pool and a server session joined by an in-memory pipe.
    fn pair() -> (Arc<MuxPool>, MuxSession) {
        pair_idle(Duration::from_secs(30))
    }

    /// [`pair`] whose client closes a session `idle` after its last stream.
    fn pair_idle(idle: Duration) -> (Arc<MuxPool>, MuxSession) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let a = Mutex::new(Some(Box::new(a) as BoxIo));
        let dial: DialFn = Box::new(move || {
            let io = a.lock().ok().and_then(|mut a| a.take());
            Box::pin(async move {
                io.map(|io| Dialled {
                    io,
                    v2: false,
                    rtt: None,
                })
                .ok_or_else(|| crate::Error::Runtime("dialled twice".into()))
            })
        });
        let pool = MuxPool::new(4, idle, Muxing::Yamux, dial);
        (
            pool,
            MuxSession::server(
                Box::new(b),
                MAX_STREAMS_PER_SESSION,
                session::Quiet {
                    first: Duration::from_secs(30),
                    idle: Duration::from_secs(30),
                    ping: None,
                },
                None,
            ),
        )
    }

    /// The far end half-closes a stream and drops it without reading (its relay failed on
    /// the other direction): the writer here, soon out of window, gets an error instead of
    /// waiting for ever.
    #[tokio::test]
    async fn a_stream_dropped_after_its_fin_stops_the_peers_writer() {
        let (pool, mut session) = pair();
        let server = tokio::spawn(async move {
            let mut s = session.next().await.expect("a stream").expect("stream");
            s.shutdown().await.expect("FIN");
            drop(s);
            while let Some(Ok(_)) = session.next().await {}
        });
        let mut c = pool
            .open(crate::transport::datagram::Kind::Stream)
            .await
            .expect("open");
        let chunk = vec![7u8; 64 * 1024];
        let written = tokio::time::timeout(Duration::from_secs(5), async {
            let mut n = 0usize;
            loop {
                match c.write_all(&chunk).await {
                    Ok(()) => n += chunk.len(),
                    Err(e) => return (n, e),
                }
            }
        })
        .await;
        let (n, e) = written.expect("the writer was never told the stream is gone");
        assert!(n <= 1 << 20, "{n} bytes went into a stream nobody reads");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WriteZero
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
        server.abort();
    }

    /// The last stream's slot is freed after its yamux stream has gone and the connection has
    /// fallen quiet (as when the stream's drop and the session's task run on two threads): the
    /// client still closes the idle session on time, rather than when the server gives up on it.
    #[tokio::test(start_paused = true)]
    async fn a_session_whose_last_slot_goes_last_still_closes_when_idle() {
        let idle = Duration::from_secs(1);
        let (pool, mut session) = pair_idle(idle);
        let server = tokio::spawn(async move {
            while let Some(Ok(mut s)) = session.next().await {
                let _ = s.shutdown().await;
            }
            tokio::time::Instant::now()
        });
        let mut c = pool
            .open(crate::transport::datagram::Kind::Stream)
            .await
            .expect("open");
        c.shutdown().await.expect("FIN");
        let mut back = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut back)
            .await
            .expect("EOF");
        let MuxStream { inner, _slot } = c;
        drop(inner);
        // With the clock paused, this returns only once every task is idle (time moves only
        // then): whatever the stream's end sent has been answered and the session's task is
        // asleep. It waits for that state, not for an amount of time.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let freed = tokio::time::Instant::now();
        drop(_slot);
        let closed = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the idle session was never closed by the client")
            .expect("server task");
        let after = closed - freed;
        assert!(
            after >= idle && after < idle + Duration::from_millis(100),
            "closed {after:?} after the last slot was freed"
        );
    }

    /// A stream closed both ways, or one dropped while still open (yamux resets those itself),
    /// needs no reset of ours: nothing is queued for them.
    #[tokio::test]
    async fn streams_closed_both_ways_owe_no_reset() {
        let (pool, mut session) = pair();
        let resets = session.resets.clone();
        let server = tokio::spawn(async move {
            while let Some(Ok(mut s)) = session.next().await {
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut sink).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        for _ in 0..3 {
            let mut c = pool
                .open(crate::transport::datagram::Kind::Stream)
                .await
                .expect("open");
            c.write_all(b"hello").await.expect("write");
            c.shutdown().await.expect("FIN");
            let mut back = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut c, &mut back)
                .await
                .expect("EOF");
        }
        assert!(!resets.any_due());
        server.abort();
    }
}
