//! What a plain-TLS connection carries beyond one byte stream (datagrams, or a version-2
//! multiplexed session), said in its first encrypted bytes: a 16-byte request the server
//! answers in kind before anything else. It replaced the ALPN values `mtt-udp` and
//! `mtt-mux2`, which anyone on the path could read in the hello (docs/udp.md, wire format).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::io::BoxIo;

/// Bytes of a request and of its answer.
pub const LEN: usize = 16;

/// Opens both: random bytes, so that no application's first bytes begin with them (a stream
/// of an original client, or a session's first frame: yamux's begin `00`, smux's `01`).
const MAGIC: [u8; 12] = [
    0xd3, 0x5f, 0x9e, 0x27, 0x6b, 0xc1, 0x48, 0xa0, 0x15, 0xe9, 0x7c, 0x32,
];

/// The format's version (byte 12).
const VERSION: u8 = 1;

/// What a connection asks to carry (byte 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A UDP tunnel: datagram frames both ways.
    Datagrams = 1,
    /// A version-2 yamux session: each stream opens with its type byte.
    Session = 2,
}

/// The request for `ask`: MAGIC, version, what, then two zero bytes.
pub fn request(ask: Ask) -> [u8; LEN] {
    frame(ask, 0)
}

/// The server's answer: the request with byte 14 set to 1 (taken) or 0 (refused).
pub fn answer(ask: Ask, taken: bool) -> [u8; LEN] {
    frame(ask, u8::from(taken))
}

fn frame(ask: Ask, taken: u8) -> [u8; LEN] {
    let mut f = [0u8; LEN];
    f[..12].copy_from_slice(&MAGIC);
    f[12] = VERSION;
    f[13] = ask as u8;
    f[14] = taken;
    f
}

/// What `first` (a connection's first bytes) says: `None` when it is no request (or too short
/// to tell: fewer than [`LEN`] bytes that match so far are `Some(Err(true))`, more needed);
/// `Some(Ok(ask))` a request this version knows; `Some(Err(false))` a request it does not.
pub fn parse(first: &[u8]) -> Option<Result<Ask, bool>> {
    let n = first.len().min(MAGIC.len());
    if first[..n] != MAGIC[..n] {
        return None;
    }
    if first.len() < LEN {
        return Some(Err(true));
    }
    match (first[12], first[13]) {
        (VERSION, 1) => Some(Ok(Ask::Datagrams)),
        (VERSION, 2) => Some(Ok(Ask::Session)),
        _ => Some(Err(false)),
    }
}

/// The client's side: sends the request for `ask` and waits (at most `within`) for the
/// answer. `Ok(false)`: the server refused, closed, or answered something else (a server
/// older than the preamble, or one without `-udp` / `-mux`).
pub async fn ask(io: &mut BoxIo, ask: Ask, within: Duration) -> io::Result<bool> {
    io.write_all(&request(ask)).await?;
    io.flush().await?;
    let mut got = [0u8; LEN];
    let read = async {
        let mut n = 0;
        while n < LEN {
            match io.read(&mut got[n..]).await? {
                0 => return Ok::<_, io::Error>(false),
                k => n += k,
            }
        }
        Ok(true)
    };
    match tokio::time::timeout(within, read).await {
        Ok(Ok(true)) => Ok(got == answer(ask, true)),
        Ok(Ok(false)) => Ok(false),
        // Closed without a word (no TLS close_notify, or a reset): refused all the same.
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(false)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer to the tunnel's preamble within {within:?}"),
        )),
    }
}

/// The server's side, for a plain-TLS tunnel that may ask for datagrams: waits up to `window`
/// for the request (a client speaks first within about a round trip if it ever does), takes
/// it and answers it (within `limit`). `Some(true)`: answered, serve datagrams; `Some(false)`:
/// asked, but the connection failed before the answer; `None`: no request, the stream as it
/// was (bytes read put back).
pub async fn take_datagrams(io: BoxIo, window: Duration, limit: Duration) -> (BoxIo, Option<bool>) {
    let asking = request(Ask::Datagrams);
    let (mut io, asked) = super::sniff::starts_with(io, &asking, window).await;
    if !asked {
        return (io, None);
    }
    let answered = async {
        let mut got = [0u8; LEN];
        io.read_exact(&mut got).await?;
        io.write_all(&answer(Ask::Datagrams, true)).await?;
        io.flush().await
    };
    let ok = tokio::time::timeout(limit, answered)
        .await
        .is_ok_and(|r| r.is_ok());
    (io, Some(ok))
}

/// The client's side without waiting: the request is written at once and what follows it
/// may go out beside it; the answer is read (and checked) before the first byte the server
/// sent after it. A refusal is then a read error, in words. For sessions: a new session's
/// first stream costs no round trip more than over the ALPN it replaced.
pub async fn ask_ahead(mut io: BoxIo, ask: Ask) -> io::Result<BoxIo> {
    io.write_all(&request(ask)).await?;
    Ok(Box::new(Answered {
        inner: io,
        ask,
        got: [0u8; LEN],
        n: 0,
    }))
}

/// A stream whose first [`LEN`] bytes must be the answer to `ask`.
struct Answered {
    inner: BoxIo,
    ask: Ask,
    got: [u8; LEN],
    n: usize,
}

impl AsyncRead for Answered {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.n < LEN {
            let mut rb = ReadBuf::new(&mut this.got[this.n..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection instead of answering the preamble",
                )));
            }
            this.n += rb.filled().len();
        }
        if this.got != answer(this.ask, true) {
            // Said once: the next reads say it again.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the server refused what the preamble asked",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Answered {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_told_from_other_first_bytes() {
        for ask in [Ask::Datagrams, Ask::Session] {
            let r = request(ask);
            assert_eq!(parse(&r), Some(Ok(ask)));
            assert_eq!(parse(&r[..5]), Some(Err(true)), "a prefix needs more bytes");
            assert_ne!(answer(ask, true), answer(ask, false));
        }
        // yamux's and smux's first frames, an HTTP request, TLS: not requests.
        for other in [
            &b"\x00\x02\x00\x01\x00\x00\x00\x00"[..],
            b"\x01\x00\x00\x00\x03",
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(parse(other), None);
        }
        let mut unknown = request(Ask::Session);
        unknown[12] = 9;
        assert_eq!(parse(&unknown), Some(Err(false)));
    }
}
