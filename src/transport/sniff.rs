//! Which multiplexing, if any, told by the first bytes of a tunnel: an mtt client's first
//! frame is a yamux ping (`00 02 00 01 00 00 00 00`) or opens stream 1 (`00 0x 00 01 00 00 00
//! 01`); an original client's opens stream 3 in smux version 1 (`01 00 00 00 03 00 00 00`); an
//! application's bytes are none of these. With `-mux` on one end only, the server says which
//! flag to change in one WARN line and closes the connection, so multiplexing frames never
//! reach an application or a destination.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::io::{BoxIo, Io, forward_write};
pub use super::mux::Muxing;
use super::mux::muxcool::frame as muxcool;
use super::preamble::{self, Ask};

/// For a `-mux` server: reads the client's first bytes (waiting at most `limit`) and gives
/// the stream back with them unread, with the multiplexing they begin and whether its
/// preamble asked for version 2 (answered here); otherwise logs the mismatch once and returns
/// `None`.
pub async fn expect_mux(mut io: BoxIo, id: &str, limit: Duration) -> Option<(BoxIo, Muxing, bool)> {
    let mut first = [0u8; preamble::LEN];
    let mut n = 0;
    let read = async {
        loop {
            match io.read(&mut first[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => n += k,
            }
            let more = match preamble::parse(&first[..n]) {
                Some(Err(true)) => true,
                Some(_) => false,
                None => n < 8 && first[0] <= 1,
            };
            if !more {
                return true;
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(true) => {}
        Ok(false) => return None,
        Err(_) => {
            log::debug!("{id}: no multiplexed session opened within {limit:?}");
            return None;
        }
    }
    match preamble::parse(&first[..n]) {
        Some(Ok(Ask::Session)) => {
            let answered = async {
                io.write_all(&preamble::answer(Ask::Session, true)).await?;
                io.flush().await
            };
            return match tokio::time::timeout(limit, answered).await {
                Ok(Ok(())) => Some((io, Muxing::Yamux, true)),
                _ => None,
            };
        }
        Some(ask) => {
            if let Ok(Ask::Datagrams) = ask {
                crate::rarely!(
                    Warn,
                    "{id}: a client asked for a UDP tunnel of its own; this server runs with -mux, where UDP rides the client's multiplexed sessions: give the client -mux too"
                );
            } else {
                crate::rarely!(
                    Warn,
                    "{id}: a client's preamble is of a newer version than this server's: update this server"
                );
            }
            let _ = tokio::time::timeout(
                limit,
                io.write_all(&preamble::answer(Ask::Datagrams, false)),
            )
            .await;
            return None;
        }
        None => {}
    }
    if let Some(Some(muxing)) = Muxing::detect(&first[..n]) {
        return Some((Box::new(Rewind::new(io, &first[..n])), muxing, false));
    }
    crate::rarely!(
        Warn,
        "{id}: the client does not multiplex, but this server runs with -mux: add -mux to the client, or remove it here (-mux must be on both ends of a plain-TLS tunnel)"
    );
    None
}

/// Said when a multiplexing client meets a plain-TLS server without `-mux`.
const MUX_ONE_END: &str = "the client multiplexes (-mux), but this server runs without -mux: add -mux here, or remove it from the client (-mux must be on both ends of a plain-TLS tunnel)";

/// Where a tunnel whose first bytes opened a Mux.Cool session is handed back to the Acceptor,
/// which then serves it as a session (a v2ray-plugin client's default, on a server that was
/// given no flag for it).
pub type Handoff = Arc<Mutex<Option<BoxIo>>>;

/// Watches the first read of a plain tunnel (the check is that read, so nothing is relayed
/// when it says no):
/// * a Mux.Cool session's first frame: the stream goes to the [`Handoff`] and the tunnel ends;
/// * on a plain-TLS server without `-mux` (`refuse_sessions`): a yamux or smux session's first
///   frame is refused, and said once;
/// * from a client whose TLS hello offered exactly `http/1.1` (`ws_hello`, as mtt's and
///   v2ray-plugin's WebSocket clients do) at a plain-TLS server: a WebSocket upgrade request is
///   refused, and said once.
pub struct FirstRead {
    inner: Option<BoxIo>,
    /// The connection's number, for the log line (a number, not a string: this wrapper
    /// lives as long as the tunnel).
    id: u64,
    ws_hello: bool,
    refuse_sessions: bool,
    handoff: Handoff,
    checked: bool,
    /// Bytes went to the client before it spoke: no session can begin now.
    wrote: bool,
    /// The beginning read so far, until it says what it is.
    held: Vec<u8>,
}

/// The error a tunnel handed off as a Mux.Cool session ends with.
#[derive(Debug)]
pub struct HandedOff;

impl std::fmt::Display for HandedOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("continued as a Mux.Cool session")
    }
}

impl std::error::Error for HandedOff {}

impl FirstRead {
    /// Watches the first read of `inner` (see the type).
    pub fn new(
        inner: BoxIo,
        id: u64,
        ws_hello: bool,
        refuse_sessions: bool,
        handoff: Handoff,
    ) -> Self {
        FirstRead {
            inner: Some(inner),
            id,
            ws_hello,
            refuse_sessions,
            handoff,
            checked: false,
            wrote: false,
            held: Vec::new(),
        }
    }

    /// Not ours to stop: what was read goes on, the rest of it on the next reads.
    fn pass(&mut self, first: Vec<u8>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = first.len().min(buf.remaining());
        buf.put_slice(&first[..n]);
        if n < first.len()
            && let Some(io) = self.inner.take()
        {
            self.inner = Some(Box::new(Rewind::new(io, &first[n..])));
        }
        Poll::Ready(Ok(()))
    }

    fn inner(&mut self) -> io::Result<&mut BoxIo> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::ConnectionAborted, HandedOff))
    }
}

/// Waits up to `window` for a tunnel's first bytes: the stream with them put back, and whether
/// they open a Mux.Cool session. Nothing within the window (a protocol whose server speaks
/// first), an error or the end: `false`, and the stream as it is.
pub async fn peek_muxcool(mut io: BoxIo, window: Duration) -> (BoxIo, bool) {
    let mut first = Vec::new();
    let read = async {
        let mut chunk = [0u8; 256];
        loop {
            match io.read(&mut chunk).await {
                Ok(n) if n > 0 => first.extend_from_slice(&chunk[..n]),
                _ => return,
            }
            if !muxcool::waiting_for_new(&first) || first.len() >= HOLD_FIRST {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(window, read).await;
    if first.is_empty() {
        return (io, false);
    }
    let is = Muxing::detect(&first) == Some(Some(Muxing::MuxCool));
    (Box::new(Rewind::new(io, &first)), is)
}

/// Reads a connection's first bytes until they show whether it begins with `prefix` (or
/// `within` passes, or it ends): the stream with them put back, and whether it does.
pub async fn starts_with(mut io: BoxIo, prefix: &[u8], within: Duration) -> (BoxIo, bool) {
    let mut first = Vec::with_capacity(prefix.len());
    let read = async {
        let mut chunk = [0u8; 64];
        while first.len() < prefix.len() && prefix.starts_with(&first) {
            let want = (prefix.len() - first.len()).min(chunk.len());
            match io.read(&mut chunk[..want]).await {
                Ok(n) if n > 0 => first.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    let is = first.len() == prefix.len() && first == prefix;
    if first.is_empty() {
        return (io, false);
    }
    (Box::new(Rewind::new(io, &first)), is)
}

/// Whether `first` opens a WebSocket upgrade request.
fn is_ws_upgrade(first: &[u8]) -> bool {
    first.starts_with(b"GET ")
        && first
            .windows(9)
            .any(|w| w.eq_ignore_ascii_case(b"websocket"))
}

/// How much of a tunnel's beginning may be held while Mux.Cool's Ends come before its New.
const HOLD_FIRST: usize = 512;

impl AsyncRead for FirstRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.checked {
            return Pin::new(self.inner()?).poll_read(cx, buf);
        }
        // The first read, and more while it is only Mux.Cool's Ends (held here meanwhile).
        loop {
            let mut chunk = [0u8; 256];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(self.inner()?).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            self.held.extend_from_slice(rb.filled());
            let wait =
                got > 0 && muxcool::waiting_for_new(&self.held) && self.held.len() < HOLD_FIRST;
            if !wait {
                break;
            }
        }
        self.checked = true;
        let first = std::mem::take(&mut self.held);
        let why = match Muxing::detect(&first) {
            Some(Some(Muxing::MuxCool)) if !self.wrote => {
                let Some(io) = self.inner.take() else {
                    return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                };
                if let Ok(mut slot) = self.handoff.lock() {
                    *slot = Some(Box::new(Rewind::new(io, &first)));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    HandedOff,
                )));
            }
            Some(Some(_)) if self.refuse_sessions => MUX_ONE_END,
            _ if self.refuse_sessions
                && first.len() >= preamble::LEN
                && preamble::parse(&first).is_some() =>
            {
                match preamble::parse(&first) {
                    Some(Ok(Ask::Datagrams)) => {
                        "a client asked for a UDP tunnel; this server runs without -udp: add -udp here, or drop it from the client"
                    }
                    _ => MUX_ONE_END,
                }
            }
            _ if self.ws_hello && is_ws_upgrade(&first) => {
                "the client speaks WebSocket (-wss), but this server runs without -wss: add -wss here, or remove it from the client"
            }
            _ => return self.pass(first, buf),
        };
        crate::rarely!(Warn, "#{}: {why}", self.id);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a client of another mode (-mux or -wss) than this server's",
        )))
    }
}

impl AsyncWrite for FirstRead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote |= !buf.is_empty();
        Pin::new(self.inner()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.wrote |= bufs.iter().any(|b| !b.is_empty());
        Pin::new(self.inner()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(i) => Pin::new(i).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    inner: S,
    prefix: Vec<u8>,
    at: usize,
}

impl<S> Rewind<S> {
    /// `inner`, whose next bytes are `prefix`.
    pub fn new(inner: S, prefix: &[u8]) -> Self {
        Rewind {
            inner,
            prefix: prefix.to_vec(),
            at: 0,
        }
    }
}

impl<S: Io> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

forward_write!(impl[S: Io] Rewind<S>, inner);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yamux_opening_is_told_from_application_bytes() {
        // What an mtt client sends first: a window update with SYN for stream 1.
        let syn = [0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(
            crate::transport::mux::yamux::looks_like_yamux(&syn),
            Some(true)
        );
        let ping = [0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_eq!(
            crate::transport::mux::yamux::looks_like_yamux(&ping),
            Some(true)
        );
        assert_eq!(
            crate::transport::mux::yamux::looks_like_yamux(b"GET / HTTP/1.1\r\n"),
            Some(false)
        );
        assert_eq!(
            crate::transport::mux::yamux::looks_like_yamux(b"SSH-2.0-"),
            Some(false)
        );
        assert_eq!(
            crate::transport::mux::yamux::looks_like_yamux(&syn[..5]),
            None
        );
        assert_eq!(Muxing::detect(&syn), Some(Some(Muxing::Yamux)));
        let smux = [1, 0, 0, 0, 3, 0, 0, 0];
        assert_eq!(Muxing::detect(&smux), Some(Some(Muxing::Smux)));
        assert_eq!(Muxing::detect(b"SSH-2.0-"), Some(None));
    }

    #[tokio::test]
    async fn rewind_gives_back_what_was_read() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"world")
            .await
            .expect("write");
        drop(a);
        let mut r = Rewind::new(b, b"hello ");
        let mut all = String::new();
        r.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "hello world");
    }
}
