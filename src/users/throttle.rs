//! A user's tunnel as the relay sees it: each read and write is counted as the user's (reads
//! up, writes down) as it happens, so a quota reached ends the tunnel within one read; reads
//! and writes wait on the user's rate (one token bucket per user on this server, read afresh
//! each time, so an edited rate applies to open tunnels); once the user's tunnels are to
//! end (a kick, a limit), nothing more moves.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_util::sync::CancellationToken;

use super::user::Shared;
use crate::transport::io::Io;

/// A tunnel's stream under its user's rate.
pub struct Throttled<S> {
    inner: S,
    user: Arc<Shared>,
    /// Fires when the user's tunnels are to end.
    ends: CancellationToken,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Io> Throttled<S> {
    /// `inner`, a tunnel of the user `user` that ends when `ends` fires.
    pub fn new(inner: S, user: Arc<Shared>, ends: CancellationToken) -> Self {
        Throttled {
            inner,
            user,
            ends,
            sleep: None,
        }
    }

    /// Ready when the bucket lets bytes move; an error once the tunnel is to end.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.ends.is_cancelled() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "its user was removed with kick or reached a limit",
                )));
            }
            let rate = self.user.rate();
            if rate == 0 {
                return Poll::Ready(Ok(()));
            }
            let Some(wait) = self.user.bucket().wait(rate) else {
                return Poll::Ready(Ok(()));
            };
            let at = tokio::time::Instant::now() + wait;
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            if let Some(s) = &mut self.sleep {
                ready!(s.as_mut().poll(cx));
            }
        }
    }

    fn moved(&self, up: usize, down: usize) {
        if self.user.rate() > 0 {
            self.user.bucket().spend(up + down);
        }
        self.user.count(up as u64, down as u64);
    }
}

impl<S: Io> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_turn(cx))?;
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.moved(buf.filled().len() - before, 0);
        Poll::Ready(Ok(()))
    }
}

impl<S: Io> AsyncWrite for Throttled<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_turn(cx))?;
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.moved(0, n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
