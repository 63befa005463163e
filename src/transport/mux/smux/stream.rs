//! One stream of an smux session: what it reads comes from its receive queue ([`super::rx`]),
//! what it writes goes to the session's writer as data frames of at most 64 KiB.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::frame::{Cmd, MAX_FRAME};
use super::rx::Rx;
use super::{Frame, Shared};

/// One stream of an smux session, as a tokio byte stream. Shutting it down sends FIN (the
/// peer may go on sending: half-close); dropping it sends FIN if that has not been done.
pub struct SmuxStream {
    pub(super) sid: u32,
    pub(super) rx: Arc<Rx>,
    pub(super) shared: Arc<Shared>,
    pub(super) out: PollSender<Frame>,
    pub(super) counted: bool,
}

impl SmuxStream {
    /// The stream's id in its session.
    #[cfg(test)]
    pub fn id(&self) -> u32 {
        self.sid
    }

    fn broken(&self) -> Option<io::Error> {
        if let Some(why) = self.rx.broken() {
            return Some(io::Error::new(io::ErrorKind::ConnectionReset, why));
        }
        if self.shared.closed.is_cancelled() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the multiplexed session ended",
            ));
        }
        None
    }
}

impl AsyncRead for SmuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.rx.poll_read(cx, buf)
    }
}

impl AsyncWrite for SmuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.rx.fin_sent.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if let Some(e) = self.broken() {
            return Poll::Ready(Err(e));
        }
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the multiplexed session ended");
        if ready!(self.out.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(gone()));
        }
        let n = buf.len().min(MAX_FRAME);
        let sid = self.sid;
        let frame = Frame::data(sid, Bytes::copy_from_slice(&buf[..n]));
        if self.out.send_item(frame).is_err() {
            return Poll::Ready(Err(gone()));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session's writer sends what is queued as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rx.fin_sent.load(Ordering::Acquire) || self.broken().is_some() {
            return Poll::Ready(Ok(()));
        }
        if ready!(self.out.poll_reserve(cx)).is_err() {
            return Poll::Ready(Ok(()));
        }
        let fin = Frame::control(Cmd::Fin, self.sid);
        let _ = self.out.send_item(fin);
        self.rx.fin_sent.store(true, Ordering::Release);
        Poll::Ready(Ok(()))
    }
}

impl Drop for SmuxStream {
    fn drop(&mut self) {
        if self.counted {
            crate::metrics::get().mux_streams.dec();
        }
        self.rx.kill("the stream was dropped");
        self.rx.drained.notify_one();
        self.shared.forget(self.sid, &self.rx);
        if self.rx.fin_sent.swap(true, Ordering::AcqRel) || self.shared.closed.is_cancelled() {
            return;
        }
        let fin = Frame::control(Cmd::Fin, self.sid);
        if let Err(mpsc::error::TrySendError::Full(fin)) = self.shared.out.try_send(fin) {
            // The queue is full: the FIN goes when there is room, without holding anyone up.
            let shared = self.shared.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    tokio::select! {
                        _ = shared.out.send(fin) => {}
                        _ = shared.closed.cancelled() => {}
                    }
                });
            }
        }
    }
}
