//! UDP through a tunnel: what marks a tunnel as carrying datagrams (ALPN, WebSocket
//! subprotocol, or a stream's type byte in a version-2 multiplexed session), the framing of
//! datagrams on it (`[u16 big-endian length][payload]`, one frame per datagram, never merged
//! or reordered), and the relay between such a tunnel and a connected UDP socket.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::time::Instant;
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};

use super::io::BoxIo;
use super::udp::{MAX_SEGMENTS, Socket};
use crate::metrics::{UdpDrop, get as metrics};

/// ALPN of a plain-TLS tunnel that carries datagrams (the original offers no ALPN).
pub const ALPN_UDP: &[u8] = b"mtt-udp";
/// WebSocket subprotocol of a tunnel that carries datagrams.
pub const SUBPROTOCOL_UDP: &str = "mtt-udp";
/// ALPN of a plain-TLS multiplexed session whose streams open with a type byte.
pub const ALPN_MUX2: &[u8] = b"mtt-mux2";
/// WebSocket subprotocol of such a session (offered as `yamux2, yamux`).
pub const SUBPROTOCOL_YAMUX2: &str = "yamux2";
/// First byte of a stream in a version-2 session: a TCP tunnel.
pub const STREAM_TCP: u8 = 0;
/// First byte of a stream in a version-2 session: datagrams.
pub const STREAM_UDP: u8 = 1;

/// The largest UDP payload (IPv4: 65,535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte stream (a TCP connection).
    Stream,
    /// Datagrams, framed (a UDP association).
    Datagrams,
}

/// The codec of datagram frames.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(MAX_DATAGRAM)
        .new_codec()
}

/// Writes datagrams to a tunnel as frames.
pub type Writer<W> = FramedWrite<W, LengthDelimitedCodec>;

/// Reads datagram frames from a tunnel in batches: every frame that one read completed, so
/// that they can go on in one call.
pub struct FrameReader<R> {
    io: R,
    buf: bytes::BytesMut,
    /// Bytes at the front of `buf` that the last batch handed out.
    used: usize,
}

/// Room asked of the buffer before each read.
const READ_ROOM: usize = 64 * 1024;

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: bytes::BytesMut::with_capacity(READ_ROOM),
            used: 0,
        }
    }

    /// Up to `out.len()` datagrams, in order, once at least one is complete; `Ok(0)` when the
    /// tunnel ended between frames. A frame longer than [`MAX_DATAGRAM`] or cut off by the end
    /// of the tunnel is an error.
    pub async fn next_batch<'a>(&'a mut self, out: &mut [&'a [u8]]) -> io::Result<usize> {
        use bytes::Buf;
        use tokio::io::AsyncReadExt;
        self.buf.advance(std::mem::take(&mut self.used));
        loop {
            let (n, used) = split_frames(&self.buf, out.len())?;
            if n > 0 {
                self.used = used;
                let mut at = 0;
                for slot in out.iter_mut().take(n) {
                    let len = usize::from(u16::from_be_bytes([self.buf[at], self.buf[at + 1]]));
                    *slot = &self.buf[at + 2..at + 2 + len];
                    at += 2 + len;
                }
                return Ok(n);
            }
            self.buf.reserve(READ_ROOM);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(0)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tunnel ended inside a datagram frame",
                    ))
                };
            }
        }
    }
}

/// How many whole frames `buf` holds (a batch this side framed itself).
pub fn frames_in(buf: &[u8]) -> usize {
    split_frames(buf, usize::MAX).map(|(n, _)| n).unwrap_or(0)
}

/// How many complete frames (at most `max`) start `buf`, and how many bytes they take.
fn split_frames(buf: &[u8], max: usize) -> io::Result<(usize, usize)> {
    let (mut n, mut at) = (0, 0);
    while n < max && buf.len() >= at + 2 {
        let len = usize::from(u16::from_be_bytes([buf[at], buf[at + 1]]));
        if len > MAX_DATAGRAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a datagram frame of {len} bytes (at most {MAX_DATAGRAM})"),
            ));
        }
        if buf.len() < at + 2 + len {
            break;
        }
        at += 2 + len;
        n += 1;
    }
    Ok((n, at))
}

/// Counts `datagrams` of `bytes` in all that went `up` (towards the destination) or down.
pub fn count(up: bool, datagrams: usize, bytes: usize) {
    metrics().udp_datagrams(up, datagrams as u64, bytes as u64);
}

/// Counts a batch of datagrams that went `up` or down.
pub fn count_batch(up: bool, batch: &[&[u8]]) {
    count(up, batch.len(), batch.iter().map(|d| d.len()).sum());
}

/// Milliseconds since `start`, for activity stamps shared between the two directions.
fn stamp(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relays between a datagram tunnel and a UDP socket connected to the destination, until
/// the tunnel ends, a frame is bad, or nothing moved either way for `idle`. An unreachable
/// destination (ICMP port unreachable) ends nothing: later datagrams may reach it.
pub async fn relay_to_socket(io: BoxIo, sock: Socket, idle: Duration) -> io::Result<()> {
    let _open = metrics().association();
    let (r, w) = tokio::io::split(io);
    let mut rd = FrameReader::new(r);
    let mut wr = FramedWrite::new(w, codec());
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let up = async {
        loop {
            let mut batch: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
            let n = rd.next_batch(&mut batch).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            last.store(stamp(start), Ordering::Relaxed);
            count_batch(true, &batch[..n]);
            sock.send_all(&batch[..n], None).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let n = match sock.recv(&mut buf).await {
                Ok(n) => n,
                // The destination's port was closed (ICMP): the association lives on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            last.store(stamp(start), Ordering::Relaxed);
            if n > MAX_DATAGRAM {
                dropped(UdpDrop::TooLarge);
                continue;
            }
            count(false, 1, n);
            SinkExt::<&[u8]>::feed(&mut wr, &buf[..n]).await?;
            // More already waiting goes into the same flush (one TLS record, one syscall).
            let mut more = 0;
            while more < 64 {
                match sock.try_recv(&mut buf) {
                    Ok(n) if n > MAX_DATAGRAM => dropped(UdpDrop::TooLarge),
                    Ok(n) => {
                        count(false, 1, n);
                        SinkExt::<&[u8]>::feed(&mut wr, &buf[..n]).await?;
                        more += 1;
                    }
                    Err(_) => break,
                }
            }
            SinkExt::<&[u8]>::flush(&mut wr).await?;
        }
    };
    let quiet = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            tokio::time::sleep_until(deadline).await;
            if start.elapsed() >= Duration::from_millis(last.load(Ordering::Relaxed)) + idle {
                return;
            }
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
        _ = quiet => Ok(()),
    }
}

/// Logs `msg` at WARN the first time only (per flag): a misconfiguration said once, not per
/// datagram or association.
pub fn warn_once(flag: &AtomicBool, msg: std::fmt::Arguments<'_>) {
    if !flag.swap(true, Ordering::Relaxed) {
        log::warn!("{msg}");
    }
}

/// Counts a datagram dropped for `why`.
pub fn dropped(why: UdpDrop) {
    metrics().udp_drop(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    /// Frames keep datagram boundaries and order, many come in one batch, the largest
    /// datagram fits, a longer frame and a frame cut short by the end are refused.
    #[tokio::test]
    async fn frames_keep_boundaries_and_refuse_oversize() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut wr = FramedWrite::new(a, codec());
        let mut rd = FrameReader::new(b);
        let sizes = [1usize, 0, 1400, 1400, MAX_DATAGRAM];
        for (i, n) in sizes.iter().enumerate() {
            wr.feed(Bytes::from(vec![i as u8; *n])).await.expect("feed");
        }
        SinkExt::<Bytes>::flush(&mut wr).await.expect("flush");
        let mut seen = 0;
        let mut batches = 0;
        while seen < sizes.len() {
            let mut out: [&[u8]; 64] = [&[]; 64];
            let n = rd.next_batch(&mut out).await.expect("batch");
            assert!(n > 0, "the tunnel has not ended");
            for d in &out[..n] {
                assert_eq!(d.len(), sizes[seen]);
                assert!(d.iter().all(|b| *b == seen as u8));
                seen += 1;
            }
            batches += 1;
        }
        assert!(batches < sizes.len(), "frames came one per batch");

        let mut raw = wr.into_inner();
        raw.write_all(&[0xff, 0xff]).await.expect("write");
        let mut out: [&[u8]; 64] = [&[]; 64];
        let e = rd
            .next_batch(&mut out)
            .await
            .expect_err("65,535 bytes is too large");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        let (a, b) = tokio::io::duplex(1 << 10);
        let mut rd = FrameReader::new(b);
        let mut a = a;
        a.write_all(&[0, 5, 1, 2]).await.expect("write");
        drop(a);
        let mut out: [&[u8]; 64] = [&[]; 64];
        let e = rd.next_batch(&mut out).await.expect_err("cut short");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let (a, b) = tokio::io::duplex(1 << 10);
        drop(a);
        let mut rd = FrameReader::new(b);
        assert_eq!(rd.next_batch(&mut out).await.expect("clean end"), 0);
    }
}
