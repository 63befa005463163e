//! UDP through a tunnel: what marks a tunnel as carrying datagrams (ALPN, WebSocket
//! subprotocol, or a stream's type byte in a version-2 multiplexed session), the framing of
//! datagrams on it (`[u16 big-endian length][payload]`, one frame per datagram, never merged
//! or reordered), and the relay between such a tunnel and a connected UDP socket.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

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

/// Appends `d` to `out` as one frame: its length (big-endian u16), then its bytes. The one
/// place frames are made, on both ends. `d` is at most [`MAX_DATAGRAM`] bytes.
pub fn frame_into(out: &mut bytes::BytesMut, d: &[u8]) {
    use bytes::BufMut;
    debug_assert!(d.len() <= MAX_DATAGRAM);
    out.put_u16(d.len() as u16);
    out.put_slice(d);
}

/// Reads datagram frames from a tunnel in batches: every frame that one read completed, so
/// that they can go on in one call.
pub struct FrameReader<R> {
    io: R,
    buf: bytes::BytesMut,
    /// Bytes at the front of `buf` that the last batch handed out.
    used: usize,
    /// Room asked of `buf` before the next read.
    room: usize,
}

/// Room asked of the buffer before a read, at first: a tunnel that carries a few small
/// datagrams (DNS) never holds more.
const FIRST_ROOM: usize = 2 * 1024;
/// The most asked before a read: reached by doubling while reads fill all they are given.
const READ_ROOM: usize = 64 * 1024;

impl<R: tokio::io::AsyncRead + Unpin> FrameReader<R> {
    /// A reader that allocates nothing until the first read.
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: bytes::BytesMut::new(),
            used: 0,
            room: FIRST_ROOM,
        }
    }

    /// The memory its buffer holds now.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
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
            self.buf.reserve(self.room);
            let room = self.buf.capacity() - self.buf.len();
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == room {
                // Data comes faster than this reads: ask for more next time.
                self.room = (self.room * 2).min(READ_ROOM);
            }
            if n == 0 {
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
    let (r, mut w) = tokio::io::split(io);
    let mut rd = FrameReader::new(r);
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
        // Frames for the tunnel, made from what waits on the socket; allocated when the
        // first datagram comes, and let go after a burst that made it large.
        let mut out = BytesMut::new();
        loop {
            sock.readable().await?;
            let (n, bytes) = take_waiting(&sock, &mut out)?;
            if n == 0 {
                continue;
            }
            last.store(stamp(start), Ordering::Relaxed);
            count(false, n, bytes);
            // One TLS record, one syscall for all of them.
            w.write_all(&out).await?;
            w.flush().await?;
            if out.capacity() > KEEP_OUT {
                out = BytesMut::new();
            } else {
                out.clear();
            }
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

/// Frames kept for the next round of a relay's downward direction; a burst's larger buffer
/// is let go.
const KEEP_OUT: usize = 64 * 1024;

thread_local! {
    /// Where datagrams from destinations are received, one worker thread's for all its
    /// associations: a datagram's room (64 KiB) is needed only while it is taken.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_DATAGRAM + 1]);
}

/// Takes the datagrams waiting on `sock` (up to [`MAX_SEGMENTS`]) into `out` as frames;
/// (datagrams, bytes). A port the destination closed (ICMP) ends nothing; an oversized
/// datagram is dropped and counted.
fn take_waiting(sock: &Socket, out: &mut BytesMut) -> io::Result<(usize, usize)> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let (mut n, mut bytes) = (0, 0);
        while n < MAX_SEGMENTS {
            match sock.try_recv(&mut buf) {
                Ok(k) if k > MAX_DATAGRAM => dropped(UdpDrop::TooLarge),
                Ok(k) => {
                    frame_into(out, &buf[..k]);
                    n += 1;
                    bytes += k;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok((n, bytes))
    })
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

    /// Frames keep datagram boundaries and order, many come in one batch, the largest
    /// datagram fits, a longer frame and a frame cut short by the end are refused.
    #[tokio::test]
    async fn frames_keep_boundaries_and_refuse_oversize() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut rd = FrameReader::new(b);
        assert_eq!(rd.capacity(), 0, "nothing allocated before the first read");
        let sizes = [1usize, 0, 1400, 1400, MAX_DATAGRAM];
        let mut wire = BytesMut::new();
        for (i, n) in sizes.iter().enumerate() {
            frame_into(&mut wire, &vec![i as u8; *n]);
        }
        a.write_all(&wire).await.expect("write");
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

        a.write_all(&[0xff, 0xff]).await.expect("write");
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

    /// A tunnel of a few small datagrams holds a small buffer; one that streams grows its
    /// reads up to their limit.
    #[tokio::test]
    async fn the_read_buffer_grows_only_with_the_traffic() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut rd = FrameReader::new(b);
        let mut wire = BytesMut::new();
        frame_into(&mut wire, &[7; 60]);
        a.write_all(&wire).await.expect("write");
        {
            let mut out: [&[u8]; 64] = [&[]; 64];
            assert_eq!(rd.next_batch(&mut out).await.expect("batch"), 1);
        }
        assert!(rd.capacity() <= FIRST_ROOM, "{}", rd.capacity());
        wire.clear();
        for _ in 0..400 {
            frame_into(&mut wire, &[1; 1400]);
        }
        a.write_all(&wire).await.expect("write");
        let mut seen = 0;
        while seen < 400 {
            let mut out: [&[u8]; 64] = [&[]; 64];
            seen += rd.next_batch(&mut out).await.expect("batch");
        }
        assert!(rd.capacity() > FIRST_ROOM, "the reads grew with the stream");
        assert!(
            rd.capacity() <= 2 * READ_ROOM + MAX_DATAGRAM,
            "{}",
            rd.capacity()
        );
    }
}
