//! Writing a [`WsStream`]: each write becomes one binary frame, sent with one vectored write
//! by servers and built masked in one pass by clients.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::Role;
use super::frame::{OP_BINARY, encode_header};
use super::stream::WsStream;
use crate::transport::io::Io;
use crate::transport::relay::RELAY_BUFFER;

/// Largest payload of a data frame we send: a whole relay write, so each is one frame and
/// one write to the TLS layer (which takes it whole, see `tls::SEND_BUFFER`). Measured with
/// `mtt bench`: 16 KiB frames cost 40% more CPU than 64 KiB ones, and 64 KiB frames (four
/// TLS writes, each a syscall, per relay write) held wss to 0.8–0.95× of plain TLS, where
/// whole relay writes give 0.95–1.05×.
const MAX_WRITE: usize = RELAY_BUFFER;
/// Slices of one vectored write gathered into a frame.
const MAX_PARTS: usize = 8;

impl<S: Io> WsStream<S> {
    /// Sends the bytes of `bufs` (up to [`MAX_WRITE`]) as one binary frame.
    pub(super) fn poll_write_parts(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "WebSocket already closed for writing",
            )));
        }
        ready!(self.poll_drain(cx))?;
        // What is queued from here on is a write's.
        self.reader_owns = false;
        let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        let (mut k, mut n) = (0, 0);
        for b in bufs {
            if k == MAX_PARTS || n == MAX_WRITE {
                break;
            }
            let take = b.len().min(MAX_WRITE - n);
            if take > 0 {
                parts[k] = &b[..take];
                k += 1;
                n += take;
            }
        }
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let parts = &parts[..k];
        match self.role {
            Role::Server => {
                // Header and payload in one vectored write; only what the transport did not
                // take is copied, to be written before anything else.
                let (h, hl) = encode_header(OP_BINARY, n, None);
                let mut iov = [io::IoSlice::new(&[]); MAX_PARTS + 1];
                iov[0] = io::IoSlice::new(&h[..hl]);
                for (slot, p) in iov[1..].iter_mut().zip(parts) {
                    *slot = io::IoSlice::new(p);
                }
                let w = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..=k]))?;
                if w == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                if w < hl + n {
                    let out = self.out(hl + n - w);
                    let mut skip = w;
                    let mut at = 0;
                    for chunk in std::iter::once(&h[..hl]).chain(parts.iter().copied()) {
                        let from = skip.min(chunk.len());
                        skip -= from;
                        let rest = &chunk[from..];
                        out[at..at + rest.len()].copy_from_slice(rest);
                        at += rest.len();
                    }
                }
            }
            Role::Client => {
                // Masking needs a copy anyway: build the frame, then write what goes.
                self.queue_parts(OP_BINARY, parts)?;
                if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(n))
    }
}
