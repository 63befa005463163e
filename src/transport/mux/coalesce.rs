//! [`Coalesce`], the writer under a yamux connection: joins yamux's small frame headers with
//! the frame body that follows into one vectored write to the transport, and puts the stream
//! resets yamux owes ([`Resets`]) on the wire between frames.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::reset::{FrameTracker, Resets, rst_frame};
use crate::transport::io::forward_read;

/// Joins small writes (frame headers) with the write that follows them into one vectored
/// write, without copying the large one: a layer that writes a header and then a body costs
/// the transport one write, not two (for TLS: one record and one syscall, not two).
pub struct Coalesce<S> {
    inner: S,
    pending: Vec<u8>,
    frames: FrameTracker,
    resets: Arc<Resets>,
}

/// Writes up to this size wait for the next write or a flush.
const SMALL_WRITE: usize = 64;

impl<S> Coalesce<S> {
    /// Wraps `inner`, the transport of the connection whose resets are `resets`.
    pub(super) fn new(inner: S, resets: Arc<Resets>) -> Self {
        Coalesce {
            inner,
            pending: Vec::with_capacity(SMALL_WRITE),
            frames: FrameTracker::default(),
            resets,
        }
    }

    /// Queues the RST frames that are due, if the bytes so far end at a frame boundary.
    fn queue_resets(&mut self) {
        if self.frames.at_boundary() && self.resets.any_due() {
            for id in self.resets.take_due() {
                log::debug!("multiplexed stream {id}: reset (dropped after its FIN)");
                self.pending.extend_from_slice(&rst_frame(id));
            }
        }
    }

    /// Notes `n` bytes of `buf` taken from yamux.
    fn took(&mut self, buf: &[u8], n: usize) {
        let resets = &self.resets;
        self.frames.feed(&buf[..n], |id| resets.fin_written(id));
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

forward_read!(impl[S: AsyncRead + Unpin] Coalesce<S>, inner);

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.queue_resets();
        if buf.len() <= SMALL_WRITE && this.pending.len() + buf.len() <= 4 * SMALL_WRITE {
            this.pending.extend_from_slice(buf);
            this.took(buf, buf.len());
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            if this.pending.is_empty() {
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                this.took(buf, n);
                return Poll::Ready(Ok(n));
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
            this.took(buf, n - held);
            return Poll::Ready(Ok(n - held));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_resets();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
