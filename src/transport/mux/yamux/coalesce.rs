//! [`Coalesce`], the writer under a yamux connection: joins yamux's small frame headers with
//! the frame body that follows into one vectored write to the transport, puts the stream
//! resets yamux owes ([`Resets`]) on the wire between frames, and (with `-ping`) a keepalive
//! frame every interval, taking a peer that pings too but has gone silent as gone.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::reset::{FrameTracker, Resets, keepalive_frame, rst_frame};

/// Joins small writes (frame headers) with the write that follows them into one vectored
/// write, without copying the large one: a layer that writes a header and then a body costs
/// the transport one write, not two (for TLS: one record and one syscall, not two).
pub struct Coalesce<S> {
    inner: S,
    pending: Vec<u8>,
    frames: FrameTracker,
    resets: Arc<Resets>,
    /// `-ping`; boxed, so a session without it stays small.
    keep: Option<Box<Keepalive>>,
    /// Set once the peer has sent anything at all (a client tells a server that does not
    /// multiplex by its silence).
    answered: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// A keepalive frame every `every`, whatever else is sent (proxies with idle timers see the
/// connection busy). A peer known to send them too (an mtt of this version) that sends
/// nothing at all for two intervals in a row is taken as gone; a peer that never sends them
/// (an older mtt) is never judged by them.
struct Keepalive {
    every: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    missed: u8,
    heard: bool,
    owed: bool,
    peer_pings: bool,
    inbound: FrameTracker,
}

/// Writes up to this size wait for the next write or a flush.
const SMALL_WRITE: usize = 64;

impl<S> Coalesce<S> {
    /// Wraps `inner`, the transport of the connection whose resets are `resets`.
    pub(super) fn new(inner: S, resets: Arc<Resets>, ping: Option<std::time::Duration>) -> Self {
        Coalesce {
            inner,
            pending: Vec::with_capacity(SMALL_WRITE),
            frames: FrameTracker::default(),
            resets,
            keep: ping.map(|every| {
                Box::new(Keepalive {
                    every,
                    timer: Box::pin(tokio::time::sleep(every)),
                    missed: 0,
                    heard: false,
                    owed: false,
                    peer_pings: false,
                    inbound: FrameTracker::default(),
                })
            }),
            answered: None,
        }
    }

    /// Sets `flag` once the peer has sent anything.
    pub(super) fn with_answered(mut self, flag: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.answered = Some(flag);
        self
    }

    /// Queues the RST frames that are due, and a keepalive frame owed, if the bytes so far end
    /// at a frame boundary.
    fn queue_resets(&mut self) {
        if !self.frames.at_boundary() {
            return;
        }
        if self.resets.any_due() {
            for id in self.resets.take_due() {
                log::debug!("multiplexed stream {id}: reset (dropped after its FIN)");
                self.pending.extend_from_slice(&rst_frame(id));
            }
        }
        if let Some(k) = self.keep.as_mut()
            && std::mem::take(&mut k.owed)
        {
            self.pending.extend_from_slice(&keepalive_frame());
        }
    }

    /// Counts the intervals; an error once a peer that pings has been silent for two.
    fn tick(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(k) = self.keep.as_mut() else {
            return Ok(());
        };
        while k.timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut k.heard) {
                k.missed = 0;
            } else {
                k.missed = k.missed.saturating_add(1);
            }
            if k.peer_pings && k.missed >= 2 {
                let why = format!(
                    "the peer sent nothing, not even keepalives, for {:?}",
                    k.every * 2
                );
                crate::rarely!(
                    Warn,
                    "multiplexed session closed: {why} (-ping; the peer is gone, or something between drops its frames)"
                );
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            let next = tokio::time::Instant::now() + k.every;
            k.timer.as_mut().reset(next);
            k.owed = true;
        }
        Ok(())
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.keep.is_some() {
            // yamux always reads, so this is where the keepalive's clock is kept; the frame
            // goes out now if the writer is between frames, else with its next write. Only
            // then is anything written from here: small frames waiting to be joined with the
            // next write stay where they are.
            this.tick(cx)?;
            if this.keep.as_ref().is_some_and(|k| k.owed) {
                let before = this.pending.len();
                this.queue_resets();
                if this.pending.len() > before
                    && let Poll::Ready(Err(e)) = this.poll_write_pending(cx)
                {
                    return Poll::Ready(Err(e));
                }
            }
        }
        let start = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(a) = &this.answered
            && buf.filled().len() > start
        {
            a.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(k) = this.keep.as_mut() {
            let new = &buf.filled()[start..];
            if !new.is_empty() {
                k.heard = true;
                let Keepalive {
                    inbound,
                    peer_pings,
                    ..
                } = &mut **k;
                inbound.headers(new, |kind, flags, id| {
                    *peer_pings |= FrameTracker::is_keepalive(kind, flags, id);
                });
            }
        }
        read
    }
}

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
