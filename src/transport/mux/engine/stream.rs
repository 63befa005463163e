//! One stream of a session: what it reads comes from its receive queue ([`super::rx`]), what
//! it writes goes to the session's writer as data frames of at most the wire's size; a
//! datagram stream's writes (frames of the tunnel's datagram format) go one datagram a frame.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::rx::Rx;
use super::{Frame, Shared, Wire};

/// One stream of a session, as a tokio byte stream. Shutting it down sends the wire's close
/// (the peer may go on sending: half-close); dropping it does if that has not been done.
pub struct Stream<W: Wire> {
    sid: u32,
    rx: Arc<Rx>,
    shared: Arc<Shared<W>>,
    out: PollSender<Frame>,
    counted: bool,
    /// A datagram stream's datagram frame written so far (its length, then its bytes).
    packet: Option<BytesMut>,
}

impl<W: Wire> Stream<W> {
    pub(super) fn new(
        sid: u32,
        rx: Arc<Rx>,
        shared: Arc<Shared<W>>,
        out: PollSender<Frame>,
        counted: bool,
    ) -> Self {
        let packet = rx.packets().then(BytesMut::new);
        Stream {
            sid,
            rx,
            shared,
            out,
            counted,
            packet,
        }
    }

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

impl<W: Wire> AsyncRead for Stream<W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.rx.poll_read(cx, buf)
    }
}

impl<W: Wire> AsyncWrite for Stream<W> {
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
        let sid = self.sid;
        let Some(packet) = self.packet.as_mut() else {
            let n = buf.len().min(W::MAX_DATA);
            let frame = W::data(sid, Bytes::copy_from_slice(&buf[..n]));
            if self.out.send_item(frame).is_err() {
                return Poll::Ready(Err(gone()));
            }
            return Poll::Ready(Ok(n));
        };
        // A datagram stream: take bytes up to the end of the datagram frame being written;
        // once it is whole, its datagram goes as one frame.
        let want = if packet.len() < 2 {
            2 - packet.len()
        } else {
            2 + usize::from(u16::from_be_bytes([packet[0], packet[1]])) - packet.len()
        };
        let n = want.min(buf.len());
        packet.extend_from_slice(&buf[..n]);
        let whole = packet.len() >= 2
            && packet.len() == 2 + usize::from(u16::from_be_bytes([packet[0], packet[1]]));
        if !whole {
            self.out.abort_send();
            return Poll::Ready(Ok(n));
        }
        let mut datagram = std::mem::take(packet);
        datagram.advance(2);
        if self.out.send_item(W::data(sid, datagram.freeze())).is_err() {
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
        let close = W::close(self.sid);
        let _ = self.out.send_item(close);
        self.rx.fin_sent.store(true, Ordering::Release);
        Poll::Ready(Ok(()))
    }
}

impl<W: Wire> Drop for Stream<W> {
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
        let fin = W::close(self.sid);
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
