//! yamux, mtt's multiplexing: its settings (windows sized to the path), the writer beneath
//! a connection ([`Coalesce`], which also puts owed resets and keepalives on the wire), its
//! streams, and both ends of a session: [`YamuxClient`] (whose one task drives the connection,
//! as yamux requires) and [`YamuxSession`].

mod client;
mod coalesce;
mod reset;
mod server;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

pub use client::YamuxClient;
pub use coalesce::Coalesce;
pub use server::YamuxSession;

use super::super::io::BoxIo;
use reset::Resets;

/// The WebSocket subprotocol of a yamux session of version 2 (streams typed by their first
/// byte).
pub const SUBPROTOCOL_V2: &str = crate::transport::datagram::SUBPROTOCOL_YAMUX2;
/// And of version 1 (mtt before UDP).
pub const SUBPROTOCOL_V1: &str = "yamux";
/// What a yamux client offers: version 2, else version 1.
pub const SUBPROTOCOLS: &str = "yamux2, yamux";
/// The ALPN a plain-TLS yamux client offers: version 2.
pub const ALPN: &[&[u8]] = &[crate::transport::datagram::ALPN_MUX2];

/// Whether `b` begins like a yamux client's first frame: version 0, flags SYN, and a ping on
/// stream 0 (yamux measures the round trip first) or a data or window-update frame opening
/// stream 1. `None` while fewer than 8 bytes are known.
pub fn looks_like_yamux(b: &[u8]) -> Option<bool> {
    let h = b.get(..8)?;
    let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let syn = h[2] == 0 && h[3] & 0x01 != 0;
    let opening = match h[1] {
        0 | 1 => id == 1,
        2 => id == 0,
        _ => false,
    };
    Some(h[0] == 0 && syn && opening)
}

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

/// The multiplexing a yamux connection error is, as an I/O error.
fn mux_err(e: yamux::ConnectionError) -> io::Error {
    match e {
        yamux::ConnectionError::Io(e) => e,
        other => io::Error::other(other),
    }
}

/// A yamux stream as a tokio byte stream; dropping it resets it if the peer could otherwise
/// wait on it for ever (see [`reset`]).
pub struct YamuxStream {
    inner: Compat<yamux::Stream>,
    resets: Arc<Resets>,
}

impl YamuxStream {
    fn new(stream: yamux::Stream, resets: Arc<Resets>) -> Self {
        YamuxStream {
            inner: stream.compat(),
            resets,
        }
    }

    /// Writes `first` (possibly nothing), which makes yamux send the frame that opens the
    /// stream at once.
    async fn announce(&mut self, first: &[u8]) -> io::Result<()> {
        tokio::io::AsyncWriteExt::write_all(&mut self.inner, first).await?;
        if first.is_empty() {
            tokio::io::AsyncWriteExt::write(&mut self.inner, &[]).await?;
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

impl AsyncRead for YamuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > start {
            // yamux returns the window for bytes taken only when asked for more, which a
            // relay does after it has written these out: the sender would stop for that long
            // once per window. An empty read returns it now.
            let mut none = ReadBuf::new(&mut []);
            let _ = Pin::new(&mut self.inner).poll_read(cx, &mut none);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for YamuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // yamux FIN: our side is done, the peer may still send (half-close).
        self.resets.fin_asked(self.inner.get_ref().id().val());
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::transport::io::BoxIo;
    use crate::transport::mux::{DialFn, Dialled, MAX_STREAMS_PER_SESSION, MuxPool, Muxing, Quiet};

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
    fn pair() -> (Arc<MuxPool>, YamuxSession) {
        pair_idle(Duration::from_secs(30))
    }

    /// [`pair`] whose client closes a session `idle` after its last stream.
    fn pair_idle(idle: Duration) -> (Arc<MuxPool>, YamuxSession) {
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
                .ok_or_else(|| crate::Error::runtime("dialled twice"))
            })
        });
        let pool = MuxPool::with_ping(4, idle, Muxing::Yamux, None, dial);
        (
            pool,
            YamuxSession::server(
                Box::new(b),
                MAX_STREAMS_PER_SESSION,
                Quiet {
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
        let crate::transport::mux::MuxStream { io, _slot } = c;
        drop(io);
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
