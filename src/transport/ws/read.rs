//! Reading a [`WsStream`]: frames parsed from the transport, data payloads read straight into
//! the caller's buffer, pings answered, Close taken as EOF.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::ReadBuf;

use super::frame::{OP_CLOSE, OP_PING, apply_mask, parse_header};
use super::stream::{Rx, WsStream};
use crate::transport::io::Io;

/// The longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;

impl<S: Io> WsStream<S> {
    /// Reads frames into `buf` until it is full, the stream ends, or the transport has
    /// nothing more for now (Pending, with whatever was filled kept in `buf`).
    pub(super) fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        loop {
            match &mut this.rx {
                Rx::Eof => return Poll::Ready(Ok(())),
                Rx::Header => match parse_header(&this.rbuf[this.rpos..this.rend], this.role)? {
                    Some((h, n)) => {
                        this.rpos += n;
                        this.rx = if h.opcode >= OP_CLOSE {
                            Rx::Control {
                                opcode: h.opcode,
                                mask: h.mask,
                                len: h.len as usize,
                                got: 0,
                                payload: [0; 125],
                            }
                        } else {
                            Rx::Data {
                                left: h.len,
                                mask: h.mask,
                                offset: 0,
                            }
                        };
                    }
                    None => {
                        if ready!(this.poll_fill(cx, MAX_HEADER))? == 0 {
                            if this.rpos == this.rend {
                                // The peer closed without a Close frame: an EOF all the same.
                                this.rx = Rx::Eof;
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed inside a WebSocket frame header",
                            )));
                        }
                    }
                },
                Rx::Data { left, mask, offset } => {
                    if *left == 0 {
                        this.rx = Rx::Header;
                        continue;
                    }
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let want = (*left).min(buf.remaining() as u64) as usize;
                    let n = if this.rpos < this.rend {
                        let n = want.min(this.rend - this.rpos);
                        let dst = &mut buf.initialize_unfilled_to(n)[..n];
                        dst.copy_from_slice(&this.rbuf[this.rpos..this.rpos + n]);
                        this.rpos += n;
                        if let Some(m) = mask {
                            apply_mask(dst, *m, *offset);
                        }
                        n
                    } else {
                        // Payload straight into the caller's buffer: no copy of our own.
                        let dst = buf.initialize_unfilled_to(want);
                        let mut sub = ReadBuf::new(dst);
                        ready!(Pin::new(&mut this.io).poll_read(cx, &mut sub))?;
                        let n = sub.filled().len();
                        this.heard = true;
                        if n == 0 {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed inside a WebSocket frame",
                            )));
                        }
                        if let Some(m) = mask {
                            apply_mask(&mut dst[..n], *m, *offset);
                        }
                        n
                    };
                    buf.advance(n);
                    *left -= n as u64;
                    *offset += n as u64;
                }
                Rx::Control {
                    opcode,
                    mask,
                    len,
                    got,
                    payload,
                } => {
                    if *got < *len {
                        if this.rpos == this.rend {
                            let need = *len - *got;
                            if ready!(this.poll_fill(cx, need))? == 0 {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "connection closed inside a WebSocket control frame",
                                )));
                            }
                            continue;
                        }
                        let n = (*len - *got).min(this.rend - this.rpos);
                        payload[*got..*got + n]
                            .copy_from_slice(&this.rbuf[this.rpos..this.rpos + n]);
                        this.rpos += n;
                        *got += n;
                        continue;
                    }
                    let (opcode, len, mut payload) = (*opcode, *len, *payload);
                    if let Some(m) = *mask {
                        apply_mask(&mut payload[..len], m, 0);
                    }
                    match opcode {
                        OP_PING if !this.close_sent => {
                            // Replaces an older pong still waiting for the transport.
                            this.pong = Some((payload, len));
                            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                                return Poll::Ready(Err(e));
                            }
                            this.rx = Rx::Header;
                        }
                        OP_CLOSE => {
                            // The peer will send no more; our own Close follows when our side
                            // is shut down, so replies still flow (half-close).
                            this.rx = Rx::Eof;
                            return Poll::Ready(Ok(()));
                        }
                        _ => this.rx = Rx::Header,
                    }
                }
            }
        }
    }
}
