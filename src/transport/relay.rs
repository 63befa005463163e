//! The byte relay that joins two streams, with half-close and a two-way idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::io::Io;
use super::pool;

/// Copy buffer of each direction of a relay, held only while that direction has data (see
/// `Direction`). Measured against 64 KiB: fewer, larger writes to TLS and to yamux (one
/// frame per write), so less CPU per byte in every mode.
pub const RELAY_BUFFER: usize = 256 * 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// From the first stream to the second.
    pub a_to_b: u64,
    /// From the second stream to the first.
    pub b_to_a: u64,
}

/// Copies both ways between `a` and `b` until both directions have ended.
///
/// * An EOF on one side shuts down the writing half of the other (TCP FIN, or TLS
///   close_notify + FIN), and the other direction keeps flowing: replies after a half-close
///   still arrive.
/// * The idle timeout counts bytes in either direction: a long one-way download is never cut;
///   a tunnel silent both ways for `idle` ends with [`io::ErrorKind::TimedOut`].
/// * Any I/O error ends both directions; dropping the streams closes them.
/// * Bytes are counted into `tally` as they move (once per wake-up, not per write), so
///   counters of a long-lived tunnel are never behind by more than what is in flight.
pub async fn relay<A: Io + ?Sized, B: Io + ?Sized>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
    tally: &dyn Tally,
) -> io::Result<Transferred> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Activity {
        inner: a,
        last: &last,
        start,
    };
    let mut copy = std::pin::pin!(Bidirectional {
        a: &mut a,
        b,
        a_to_b: Direction::default(),
        b_to_a: Direction::default(),
        tally,
        told: (0, 0),
    });
    loop {
        let deadline = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            res = &mut copy => {
                return res.map(|(a_to_b, b_to_a)| Transferred { a_to_b, b_to_a });
            }
            _ = tokio::time::sleep_until(deadline) => {
                let quiet = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("idle for {idle:?} in both directions"),
                    ));
                }
            }
        }
    }
}

/// Where a relay counts the bytes it moves, as they move.
pub trait Tally: Send + Sync {
    /// `a_to_b` more bytes went from the first stream to the second, `b_to_a` back.
    fn add(&self, a_to_b: u64, b_to_a: u64);
}

/// Counts nothing.
impl Tally for () {
    fn add(&self, _: u64, _: u64) {}
}

/// Both directions of a relay; ready when both have ended, or at the first error.
struct Bidirectional<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Direction,
    b_to_a: Direction,
    tally: &'a dyn Tally,
    /// What `tally` has been told so far.
    told: (u64, u64),
}

impl<A: Io + ?Sized, B: Io + ?Sized> Future for Bidirectional<'_, A, B> {
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // An error names the stream it came from: the reader's or the writer's.
        let up = this
            .a_to_b
            .poll_copy(cx, &mut *this.a, &mut *this.b)
            .map_err(|(reading, e)| failed(if reading { Side::A } else { Side::B }, e));
        let down = match up {
            Poll::Ready(Err(_)) => Poll::Pending,
            _ => this
                .b_to_a
                .poll_copy(cx, &mut *this.b, &mut *this.a)
                .map_err(|(reading, e)| failed(if reading { Side::B } else { Side::A }, e)),
        };
        // Counted before any error is returned: what moved, moved.
        let moved = (this.a_to_b.moved, this.b_to_a.moved);
        if moved != this.told {
            this.tally.add(moved.0 - this.told.0, moved.1 - this.told.1);
            this.told = moved;
        }
        match (up?, down?) {
            (Poll::Ready(up), Poll::Ready(down)) => Poll::Ready(Ok((up, down))),
            _ => Poll::Pending,
        }
    }
}

/// Which stream of a relay an error came from: the first (`a`) or the second (`b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first stream given to [`relay`].
    A,
    /// The second.
    B,
}

/// An error of one stream of a relay: its text and kind are the stream's own.
#[derive(Debug)]
struct Failed {
    side: Side,
    source: io::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for Failed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}

fn failed(side: Side, source: io::Error) -> io::Error {
    io::Error::new(source.kind(), Failed { side, source })
}

/// The stream of a relay that `e` (a relay's error) came from; `None` for the relay's own
/// errors (the idle timeout).
pub fn failed_side(e: &io::Error) -> Option<Side> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Failed>())
        .map(|f| f.side)
}

/// One direction of a relay. It holds a copy buffer only while it has bytes to write: a
/// direction waiting for input gives its buffer back to the worker thread's pool, so an idle
/// tunnel holds no relay buffers at all, and a busy one reuses the same few without zeroing
/// or allocating them again.
#[derive(Default)]
struct Direction {
    buf: Option<Box<[u8]>>,
    pos: usize,
    end: usize,
    moved: u64,
    eof: bool,
    unflushed: bool,
    done: bool,
}

impl Direction {
    fn poll_copy<R: AsyncRead + Unpin + ?Sized, W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<Result<u64, (bool, io::Error)>> {
        if self.done {
            return Poll::Ready(Ok(self.moved));
        }
        loop {
            if self.pos == self.end && !self.eof {
                let mut buf = self.buf.take().unwrap_or_else(pool::take);
                let mut rb = ReadBuf::new(&mut buf[..RELAY_BUFFER]);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        self.eof = true;
                        pool::give(buf);
                    }
                    Poll::Ready(Ok(())) => {
                        (self.pos, self.end) = (0, rb.filled().len());
                        self.buf = Some(buf);
                    }
                    Poll::Ready(Err(e)) => {
                        pool::give(buf);
                        return Poll::Ready(Err((true, e)));
                    }
                    Poll::Pending => {
                        pool::give(buf);
                        // Nothing more to send for now: push out what the writer holds.
                        if self.unflushed {
                            ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(|e| (false, e))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if let Some(buf) = &self.buf {
                while self.pos < self.end {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.end]))
                        .map_err(|e| (false, e))?;
                    if n == 0 {
                        return Poll::Ready(Err((false, io::ErrorKind::WriteZero.into())));
                    }
                    self.pos += n;
                    self.moved += n as u64;
                    self.unflushed = true;
                }
            }
            if self.eof {
                if self.unflushed {
                    ready!(Pin::new(&mut *w).poll_flush(cx)).map_err(|e| (false, e))?;
                    self.unflushed = false;
                }
                ready!(Pin::new(&mut *w).poll_shutdown(cx)).map_err(|e| (false, e))?;
                self.done = true;
                return Poll::Ready(Ok(self.moved));
            }
        }
    }
}

/// Records the time of the last byte read from or written to the wrapped stream. Both
/// directions of a relay pass through one of its sides, so one wrapper sees all activity.
struct Activity<'a, S: ?Sized> {
    inner: &'a mut S,
    last: &'a AtomicU64,
    start: Instant,
}

impl<S: ?Sized> Activity<'_, S> {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin + ?Sized> AsyncRead for Activity<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin + ?Sized> AsyncWrite for Activity<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut *self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Endings that are part of normal life, in plain words: idle, a peer that closed without
/// TLS close_notify, one that closed while data was still on its way. `None`: worth a line.
pub fn plain_ending(e: &io::Error) -> Option<String> {
    let own = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<Failed>())
        .map_or(e, |f| &f.source);
    if let Some(h) = own
        .get_ref()
        .and_then(|i| i.downcast_ref::<super::sniff::HandedOff>())
    {
        return Some(h.to_string());
    }
    match e.kind() {
        io::ErrorKind::TimedOut => Some(e.to_string()),
        io::ErrorKind::UnexpectedEof => Some("the peer closed without TLS close_notify".into()),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
            Some("the other side closed while data was still on its way".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A relay that has moved data and now waits on both sides holds no copy buffer: both
    /// went back to the pool (an idle tunnel costs no relay memory), and the next burst reuses
    /// them instead of allocating.
    #[tokio::test]
    async fn an_idle_relay_gives_its_buffers_back() {
        let (mut app, a) = tokio::io::duplex(256 * 1024);
        let (b, mut far) = tokio::io::duplex(256 * 1024);
        let relay = tokio::spawn(async move {
            let (mut a, mut b) = (a, b);
            relay(&mut a, &mut b, Duration::from_secs(30), &()).await
        });
        assert_eq!(pool::idle(), 0);
        let mut made = Vec::new();
        for round in 0..3u8 {
            let data = vec![round; 200 * 1024];
            app.write_all(&data).await.expect("write");
            far.write_all(&data).await.expect("write");
            let (mut up, mut down) = (vec![0; data.len()], vec![0; data.len()]);
            far.read_exact(&mut up).await.expect("read");
            app.read_exact(&mut down).await.expect("read");
            assert!(up == data && down == data, "round {round}: bytes changed");
            // Let the relay find both sides empty again (it runs on this thread).
            for _ in 0..1000 {
                if pool::idle() == pool::made() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert_eq!(
                pool::idle(),
                pool::made(),
                "round {round}: the relay holds none"
            );
            made.push(pool::made());
        }
        // At most one buffer per direction, allocated once and reused afterwards.
        assert!((1..=2).contains(&made[0]), "{made:?}");
        assert!(made.iter().all(|&m| m == made[0]), "{made:?}");
        app.shutdown().await.expect("shutdown");
        far.shutdown().await.expect("shutdown");
        let moved = relay.await.expect("join").expect("relay");
        assert_eq!((moved.a_to_b, moved.b_to_a), (600 * 1024, 600 * 1024));
    }
}
