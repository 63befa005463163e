//! A user's tunnel as the relay sees it: reads and writes wait on the user's rate (one token
//! bucket per user on this server, read afresh each time, so an edited rate applies to open
//! tunnels), and datagram tunnels, which no relay tally counts, are counted here.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::user::Shared;
use crate::transport::io::Io;

/// A tunnel's stream under its user's rate.
pub struct Throttled<S> {
    inner: S,
    user: Arc<Shared>,
    /// Count the bytes into the user (datagram tunnels).
    count: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Io> Throttled<S> {
    /// `inner` under `user`'s rate; with `count`, its bytes counted as the user's (reads
    /// are up, writes down).
    pub fn new(inner: S, user: Arc<Shared>, count: bool) -> Self {
        Throttled {
            inner,
            user,
            count,
            sleep: None,
        }
    }

    /// Ready when the bucket lets bytes move.
    fn poll_turn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let rate = self.user.rate();
            if rate == 0 {
                return Poll::Ready(());
            }
            let Some(wait) = self.user.bucket().wait(rate) else {
                return Poll::Ready(());
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
        if self.count {
            self.user.count(up as u64, down as u64);
        }
    }
}

impl<S: Io> AsyncRead for Throttled<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_turn(cx));
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
        ready!(this.poll_turn(cx));
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
