//! The type-erased stream every layer hands to the next ([`BoxIo`]) and the byte relay that
//! joins two streams with half-close and a two-way idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Any async byte stream a layer can carry.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream erased once, at the top of the pipeline. tokio's `Box<T>` impls forward
/// `poll_write_vectored`, so nothing is lost by boxing.
pub type BoxIo = Box<dyn Io>;

/// Copy buffer of each direction of a relay.
pub const RELAY_BUFFER: usize = 64 * 1024;

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
pub async fn relay<A: Io + ?Sized, B: Io + ?Sized>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> io::Result<Transferred> {
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Activity {
        inner: a,
        last: &last,
        start,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, b, RELAY_BUFFER, RELAY_BUFFER);
    tokio::pin!(copy);
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

/// Joins small writes (frame headers) with the write that follows them into one vectored
/// write, without copying the large one: a layer that writes a header and then a body costs
/// the transport one write, not two (for TLS: one record and one syscall, not two).
pub struct Coalesce<S> {
    inner: S,
    pending: Vec<u8>,
}

/// Writes up to this size wait for the next write or a flush.
const SMALL_WRITE: usize = 64;

impl<S> Coalesce<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            pending: Vec::with_capacity(SMALL_WRITE),
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesce<S> {
    fn poll_write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() <= SMALL_WRITE && this.pending.len() + buf.len() <= 4 * SMALL_WRITE {
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            if this.pending.is_empty() {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            let held = this.pending.len();
            let slices = [io::IoSlice::new(&this.pending), io::IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n <= held {
                this.pending.drain(..n);
                continue;
            }
            this.pending.clear();
            return Poll::Ready(Ok(n - held));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
