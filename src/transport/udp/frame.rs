//! The framing of datagrams on a tunnel: `[u16 big-endian length][payload]`, one frame per
//! datagram, never merged or reordered; one maker ([`frame_into`]) and one reader
//! ([`FrameReader`]) for both ends.

use std::io;

/// The largest UDP payload (IPv4: 65,535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

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
    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;

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
