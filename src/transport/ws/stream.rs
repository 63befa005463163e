//! [`WsStream`]: one WebSocket connection as a byte stream. This file holds its state and
//! buffers and the `AsyncRead`/`AsyncWrite` entry points; reading frames is in `read.rs`,
//! writing them in `write.rs`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Role;
use super::frame::{Masks, OP_CLOSE, OP_PONG, encode_header, masked_copy, rotated};
use crate::transport::io::Io;
use crate::transport::pool;

/// Read buffer for frame headers and control payloads; data payloads are read straight into
/// the caller's buffer.
const READ_BUFFER: usize = 256;

pub(super) enum Rx {
    Header,
    Data {
        left: u64,
        mask: Option<[u8; 4]>,
        offset: u64,
    },
    Control {
        opcode: u8,
        mask: Option<[u8; 4]>,
        len: usize,
        got: usize,
        payload: [u8; 125],
    },
    Eof,
}

/// A WebSocket connection seen as a byte stream.
pub struct WsStream<S> {
    pub(super) io: S,
    pub(super) role: Role,
    pub(super) rbuf: Box<[u8]>,
    pub(super) rpos: usize,
    pub(super) rend: usize,
    pub(super) rx: Rx,
    /// Frame bytes accepted but not yet written (a partial data frame, pongs, the Close):
    /// `wbuf[wpos..wend]`. A buffer from the per-thread pool, held only while bytes are
    /// pending, so a quiet stream holds none; building a frame in it is one pass.
    pub(super) wbuf: Vec<u8>,
    pub(super) wpos: usize,
    pub(super) wend: usize,
    /// The pending bytes were queued by the reading side (a pong, a keepalive ping), not by
    /// a write: the reading side may push them out itself.
    pub(super) reader_owns: bool,
    pub(super) close_sent: bool,
    /// The answer to the newest ping, not yet queued: a peer that floods pings and never
    /// reads gets one pong, not one each (RFC 6455 §5.5.3 allows answering only the last),
    /// so what it can make us hold stays bounded.
    pub(super) pong: Option<([u8; 125], usize)>,
    pub(super) masks: Masks,
    /// An error met after a read had already filled bytes: those bytes are returned first,
    /// the error on the next read (a read that fails must not also deliver data).
    pub(super) read_err: Option<io::Error>,
    /// Whether anything arrived since the keepalive last looked.
    pub(super) heard: bool,
    /// Pings every interval (`-ping`); boxed, so a stream without them stays small.
    keepalive: Option<Box<Keepalive>>,
}

/// Pings sent every `every`; a peer silent for two intervals in a row is taken as gone.
struct Keepalive {
    every: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    missed: u8,
}

impl<S: Io> WsStream<S> {
    /// Wraps an upgraded connection; `already_read` holds bytes read past the HTTP head.
    pub fn new(io: S, role: Role, already_read: &[u8]) -> Self {
        let mut rbuf = vec![0u8; READ_BUFFER.max(already_read.len())].into_boxed_slice();
        rbuf[..already_read.len()].copy_from_slice(already_read);
        WsStream {
            io,
            role,
            rbuf,
            rpos: 0,
            rend: already_read.len(),
            rx: Rx::Header,
            wbuf: Vec::new(),
            wpos: 0,
            wend: 0,
            reader_owns: false,
            close_sent: false,
            pong: None,
            masks: Masks::default(),
            read_err: None,
            heard: false,
            keepalive: None,
        }
    }

    /// Sends a ping every `every` (keeping proxies with idle timers from closing a quiet
    /// connection) and ends the stream with an error once nothing at all has arrived for two
    /// intervals in a row (a peer that vanished). Pings go out while the stream is read,
    /// which a relay always does.
    pub fn keepalive(mut self, every: Option<std::time::Duration>) -> Self {
        self.keepalive = every.map(|every| {
            Box::new(Keepalive {
                every,
                timer: Box::pin(tokio::time::sleep(every)),
                missed: 0,
            })
        });
        self
    }

    /// Sends the pings due; an error when the peer has been silent too long.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(k) = self.keepalive.as_mut() else {
            return Ok(());
        };
        let mut due = false;
        while k.timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.heard) {
                k.missed = 0;
            } else {
                k.missed += 1;
            }
            if k.missed >= 2 {
                let why = format!(
                    "the peer did not answer WebSocket pings for {:?}",
                    k.every * 2
                );
                crate::rarely!(
                    Warn,
                    "WebSocket tunnel closed: {why} (-ping; the peer is gone, or something between drops pings)"
                );
                return Err(io::Error::new(io::ErrorKind::TimedOut, why));
            }
            let next = tokio::time::Instant::now() + k.every;
            k.timer.as_mut().reset(next);
            due = true;
        }
        if due && !self.close_sent {
            self.queue(super::frame::OP_PING, b"mtt")?;
        }
        Ok(())
    }

    pub(super) fn mask(&mut self) -> io::Result<Option<[u8; 4]>> {
        match self.role {
            Role::Server => Ok(None),
            Role::Client => self.masks.next().map(Some),
        }
    }

    /// Room for `n` more pending output bytes.
    pub(super) fn out(&mut self, n: usize) -> &mut [u8] {
        if self.wpos == self.wend {
            self.wpos = 0;
            self.wend = 0;
        }
        let end = self.wend + n;
        if self.wbuf.is_empty() {
            self.wbuf = pool::take().into_vec();
        }
        if self.wbuf.len() < end {
            self.wbuf.resize(end, 0);
        }
        let start = self.wend;
        self.wend = end;
        &mut self.wbuf[start..end]
    }

    /// Appends a whole frame to the pending output.
    pub(super) fn queue(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.queue_parts(opcode, &[payload])
    }

    /// Appends a frame whose payload is `parts` joined, masking while copying.
    pub(super) fn queue_parts(&mut self, opcode: u8, parts: &[&[u8]]) -> io::Result<()> {
        let mask = self.mask()?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let (h, hl) = encode_header(opcode, len, mask);
        let out = self.out(hl + len);
        out[..hl].copy_from_slice(&h[..hl]);
        let mut at = hl;
        for p in parts {
            let dst = &mut out[at..at + p.len()];
            match mask {
                Some(m) => masked_copy(dst, p, rotated(m, (at - hl) as u64)),
                None => dst.copy_from_slice(p),
            }
            at += p.len();
        }
        Ok(())
    }

    /// Writes out pending frame bytes, then the pong owed, if any.
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.wpos < self.wend {
                let pending = &self.wbuf[self.wpos..self.wend];
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.wpos += n;
            }
            match self.pong.take() {
                Some((payload, len)) if !self.close_sent => self.queue(OP_PONG, &payload[..len])?,
                _ => break,
            }
        }
        self.wpos = 0;
        self.wend = 0;
        self.reader_owns = false;
        if !self.wbuf.is_empty() {
            pool::give(std::mem::take(&mut self.wbuf).into_boxed_slice());
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more bytes into the header buffer, up to `want` buffered in all, so payload bytes
    /// are not read here only to be copied out again; `Ok(0)` at EOF.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        } else if self.rpos + want > self.rbuf.len() {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        let end = (self.rpos + want).clamp(self.rend + 1, self.rbuf.len());
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..end]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.rend += n;
        self.heard |= n > 0;
        Poll::Ready(Ok(n))
    }
}

impl<S: Io> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let ours = this.wpos == this.wend || this.reader_owns;
        if let Err(e) = this.poll_keepalive(cx) {
            return Poll::Ready(Err(e));
        }
        // Owed pongs (and pings) go out whenever the stream is polled; waiting for them is
        // not a reason to stop reading. Not while a write's bytes are pending: that is the
        // writing side's to finish, and polling the socket's write side from here would take
        // its wake-up from a task that writes (a session's reader and writer are two tasks),
        // which would then never be woken; the owed pong goes out with that write.
        if ours {
            this.reader_owns = true;
            if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        // Fill as much of `buf` as is there, across frames: what arrived with a header and
        // the payload after it go out to the caller together, not as a tiny read of their
        // own (each read is a write, and a syscall, for a relay).
        if let Some(e) = this.read_err.take() {
            return Poll::Ready(Err(e));
        }
        let start = buf.filled().len();
        match this.poll_read_frames(cx, buf) {
            Poll::Pending if buf.filled().len() > start => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) if buf.filled().len() > start => {
                this.read_err = Some(e);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: Io> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_parts(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_parts(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_drain(cx))?;
            this.queue(OP_CLOSE, &1000u16.to_be_bytes())?;
            this.close_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{OP_BINARY, encode_header};
    use super::*;
    use crate::transport::relay::RELAY_BUFFER;

    /// Frames already received come out of one read together, header-adjacent payload
    /// included: a relay makes one write of them, not a tiny one per frame.
    #[tokio::test]
    async fn one_read_returns_every_frame_that_has_arrived() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server_side, client_io) = tokio::io::duplex(1 << 20);
        let mut client = WsStream::new(client_io, Role::Client, &[]);
        let mut sent = Vec::new();
        for (i, len) in [1000usize, 70_000, 3].into_iter().enumerate() {
            let payload = vec![i as u8 + 1; len];
            let (h, hl) = encode_header(OP_BINARY, len, None);
            server_side.write_all(&h[..hl]).await.expect("header");
            server_side.write_all(&payload).await.expect("payload");
            sent.extend_from_slice(&payload);
        }
        let mut buf = vec![0u8; 256 * 1024];
        let n = client.read(&mut buf).await.expect("read");
        assert_eq!(n, sent.len(), "one read, every frame");
        assert_eq!(&buf[..n], &sent[..]);
    }

    /// Data followed by a broken frame: the data is read first, then the error; no read both
    /// fills the buffer and fails (found by the ws_stream fuzz target with tokio's
    /// read_to_end, which checks exactly that).
    #[tokio::test]
    async fn data_before_an_error_is_delivered_then_the_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut server_side, client_io) = tokio::io::duplex(1 << 16);
        let mut client = WsStream::new(client_io, Role::Client, &[]);
        let (h, hl) = encode_header(OP_BINARY, 5, None);
        server_side.write_all(&h[..hl]).await.expect("header");
        server_side.write_all(b"hello").await.expect("payload");
        server_side
            .write_all(&[0xC2, 0x00])
            .await
            .expect("reserved bits set");
        let mut out = Vec::new();
        let err = client
            .read_to_end(&mut out)
            .await
            .expect_err("a protocol error");
        assert!(err.to_string().contains("reserved"), "{err}");
        assert_eq!(out, b"hello");
    }

    /// A whole relay write goes out as one frame (one write to TLS, not four), unmasked
    /// correctly at the other end; once written, the client holds no write buffer, so a
    /// quiet stream costs none.
    #[tokio::test]
    async fn a_relay_write_is_one_frame_and_leaves_no_buffer_behind() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server_io, client_io) = tokio::io::duplex(1 << 20);
        let mut client = WsStream::new(client_io, Role::Client, &[]);
        let mut server = WsStream::new(server_io, Role::Server, &[]);
        let data: Vec<u8> = (0..RELAY_BUFFER).map(|i| (i * 31 % 251) as u8).collect();
        for round in 0..2 {
            let n = client.write(&data).await.expect("write");
            assert_eq!(
                n, RELAY_BUFFER,
                "round {round}: the whole write in one frame"
            );
            assert!(client.wbuf.is_empty(), "round {round}: write buffer kept");
            client.flush().await.expect("flush");
            // The frame arrived whole: one header announcing all of it.
            let mut head = [0u8; 14];
            server.io.read_exact(&mut head[..2]).await.expect("header");
            assert_eq!(head[1], 0x80 | 127, "masked, 64-bit length");
            server
                .io
                .read_exact(&mut head[2..14])
                .await
                .expect("length and mask");
            let len = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
            assert_eq!(len, RELAY_BUFFER as u64);
            let mut body = vec![0u8; RELAY_BUFFER];
            server.io.read_exact(&mut body).await.expect("payload");
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= head[10 + i % 4];
            }
            assert!(body == data, "round {round}: payload unmasked differs");
        }
    }

    /// A peer that floods pings and reads nothing: the stream keeps reading (data after the
    /// pings arrives) and holds at most one pong, not one per ping.
    #[tokio::test]
    async fn a_ping_flood_leaves_one_pong_pending() {
        use super::super::frame::OP_PING;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server_io, mut peer) = tokio::io::duplex(4096);
        let mut server = WsStream::new(server_io, Role::Server, &[]);
        let writer = tokio::spawn(async move {
            let mut frames = Vec::new();
            for i in 0..5000u32 {
                let (h, hl) = encode_header(OP_PING, 125, Some([1, 2, 3, 4]));
                frames.extend_from_slice(&h[..hl]);
                frames.extend_from_slice(&[(i % 251) as u8; 125]);
            }
            let (h, hl) = encode_header(OP_BINARY, 3, Some([0, 0, 0, 0]));
            frames.extend_from_slice(&h[..hl]);
            frames.extend_from_slice(b"end");
            // The peer writes and never reads what comes back.
            peer.write_all(&frames).await.expect("write");
            peer
        });
        let mut got = [0u8; 3];
        server
            .read_exact(&mut got)
            .await
            .expect("data after the pings");
        assert_eq!(&got, b"end");
        let held = server.wend - server.wpos;
        assert!(held <= 2 + 125, "{held} bytes of pongs held");
        drop(writer.await.expect("writer"));
    }

    /// With keepalive, a quiet stream pings every interval and a peer that answers keeps it
    /// open for as long as it likes; a peer that answers nothing ends it after two intervals.
    #[tokio::test(start_paused = true)]
    async fn keepalive_pings_and_gives_up_on_a_silent_peer() {
        use std::time::Duration;
        use tokio::io::AsyncReadExt;
        let every = Duration::from_secs(1);
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let mut client = WsStream::new(client_io, Role::Client, &[]).keepalive(Some(every));
        let mut server = WsStream::new(server_io, Role::Server, &[]);
        // The server reads (and so answers pings); the client stays open for 20 intervals.
        let serving = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = server.read(&mut buf).await;
            (n.map_err(|e| e.kind()), server)
        });
        let mut buf = [0u8; 64];
        let quiet = tokio::time::timeout(every * 20, client.read(&mut buf)).await;
        assert!(quiet.is_err(), "a peer that answers keeps the stream open");
        serving.abort();

        // A peer that reads nothing and answers nothing: the stream ends after two intervals.
        let (client_io, _silent) = tokio::io::duplex(1 << 16);
        let mut client = WsStream::new(client_io, Role::Client, &[]).keepalive(Some(every));
        let start = tokio::time::Instant::now();
        let err = client
            .read(&mut buf)
            .await
            .expect_err("a silent peer ends the stream");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(
            took >= every * 2 && took <= every * 3,
            "gave up after {took:?}"
        );
    }
}
