//! Layer 3, WebSocket (RFC 6455): the client's upgrade request, byte-exact with the original
//! client's, and [`WsStream`], which carries a byte stream over binary frames with no task
//! and no pipe: it is itself `AsyncRead + AsyncWrite`.
//!
//! Reading concatenates the payloads of data frames (binary, text, continuation) and ignores
//! message boundaries; pings are answered; a Close frame ends the read side (EOF). Writing
//! sends each write as one binary frame. Shutting down sends Close 1000 and leaves the
//! transport open, so the peer can still send until it closes too (half-close, as TCP).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::io::{Io, RELAY_BUFFER, pool};

/// The GUID of RFC 6455 §1.3, hashed with the client's key into the accept key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Frames announcing more than this are refused before anything is read of them.
pub const MAX_FRAME: u64 = 64 << 20;
/// Largest payload of a data frame we send: a whole relay write, so each is one frame and
/// one write to the TLS layer (which takes it whole, see `tls::SEND_BUFFER`). Measured with
/// `mtt bench`: 16 KiB frames cost 40% more CPU than 64 KiB ones, and 64 KiB frames (four
/// TLS writes, each a syscall, per relay write) held wss to 0.8–0.95× of plain TLS, where
/// whole relay writes give 0.95–1.05×.
const MAX_WRITE: usize = RELAY_BUFFER;
/// Read buffer for frame headers and control payloads; data payloads are read straight into
/// the caller's buffer.
const READ_BUFFER: usize = 256;
/// The longest frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_HEADER: usize = 14;
/// Largest upgrade response head accepted by the client.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Which end of the connection we are: clients mask what they send, servers do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends masked frames, expects unmasked ones.
    Client,
    /// Sends unmasked frames, requires masked ones.
    Server,
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut input = Vec::with_capacity(key.len() + GUID.len());
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(GUID.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    BASE64.encode(digest.as_ref())
}

/// The upgrade request the original mos-tls-tunnel client sends (gorilla/websocket 1.4.1):
/// same header order and spelling, so an original server, and anything that learned its
/// shape, sees the same bytes.
pub fn upgrade_request(host: &str, path: &str, key: &str, protocol: &str) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: {protocol}\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
    )
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key() -> io::Result<String> {
    let mut raw = [0u8; 16];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| io::Error::other("no system randomness"))?;
    Ok(BASE64.encode(raw))
}

/// Runs the client side of the upgrade over `io`: sends the request, waits for 101 with the
/// right accept key, and returns the stream (with any bytes that followed the response).
pub async fn client<S: Io>(
    mut io: S,
    host: &str,
    path: &str,
    protocol: &str,
) -> io::Result<WsStream<S>> {
    let key = new_key()?;
    io.write_all(upgrade_request(host, path, &key, protocol).as_bytes())
        .await?;
    io.flush().await?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the WebSocket upgrade response",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&head) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if head.len() < MAX_RESPONSE_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(bad_upgrade("response head larger than 16 KiB".into()));
            }
            Err(e) => return Err(bad_upgrade(format!("malformed HTTP response: {e}"))),
        };
        let code = resp.code.unwrap_or(0);
        if code != 101 {
            return Err(bad_upgrade(format!(
                "server answered HTTP {code} {}",
                resp.reason.unwrap_or("")
            )));
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect::<Vec<_>>()
        };
        if !header("upgrade")
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case("websocket"))
        {
            return Err(bad_upgrade("101 without 'Upgrade: websocket'".into()));
        }
        if !has_token(&header("connection"), "upgrade") {
            return Err(bad_upgrade("101 without 'Connection: upgrade'".into()));
        }
        if header("sec-websocket-accept").first().map(|v| v.trim()) != Some(&accept_key(&key)) {
            return Err(bad_upgrade("wrong Sec-WebSocket-Accept".into()));
        }
        return Ok(WsStream::new(io, Role::Client, &head[len..]));
    }
}

fn bad_upgrade(why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("WebSocket upgrade failed: {why}"),
    )
}

/// Whether comma-separated header values contain `token` (case-insensitive).
pub fn has_token(values: &[String], token: &str) -> bool {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Final fragment.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, when masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
}

fn protocol_error(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WebSocket protocol error: {why}"),
    )
}

/// Parses a frame header at the start of `b`: `Ok(None)` when more bytes are needed,
/// `Ok(Some((header, length of the header)))`, or an error for frames this end must refuse.
pub fn parse_header(b: &[u8], role: Role) -> io::Result<Option<(Header, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
        return Err(protocol_error(
            "reserved bits set (no extension was agreed)",
        ));
    }
    let opcode = b[0] & 0x0f;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(protocol_error(&format!("unknown opcode {opcode:#x}")));
    }
    let masked = b[1] & 0x80 != 0;
    match role {
        Role::Server if !masked => return Err(protocol_error("client frame not masked")),
        Role::Client if masked => return Err(protocol_error("server frame masked")),
        _ => {}
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 => match b.get(2..4) {
            None => return Ok(None),
            Some(x) => (u64::from(u16::from_be_bytes([x[0], x[1]])), 4),
        },
        127 => match b.get(2..10) {
            None => return Ok(None),
            Some(x) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(x);
                (u64::from_be_bytes(a), 10)
            }
        },
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && (!fin || len > 125) {
        return Err(protocol_error("fragmented or oversized control frame"));
    }
    if len > MAX_FRAME {
        return Err(protocol_error(&format!(
            "frame of {len} bytes exceeds the {MAX_FRAME}-byte limit"
        )));
    }
    let mask = if masked {
        match b.get(at..at + 4) {
            None => return Ok(None),
            Some(m) => {
                at += 4;
                Some([m[0], m[1], m[2], m[3]])
            }
        }
    } else {
        None
    };
    Ok(Some((
        Header {
            fin,
            opcode,
            mask,
            len,
        },
        at,
    )))
}

/// Encodes a final frame header; returns the bytes and their length.
pub fn encode_header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut h = [0u8; 14];
    h[0] = 0x80 | opcode;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut at = if len < 126 {
        h[1] = mask_bit | len as u8;
        2
    } else if len <= u16::MAX as usize {
        h[1] = mask_bit | 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        h[1] = mask_bit | 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(m) = mask {
        h[at..at + 4].copy_from_slice(&m);
        at += 4;
    }
    (h, at)
}

/// The mask as seen from `offset` bytes into the payload.
fn rotated(mask: [u8; 4], offset: u64) -> [u8; 4] {
    let r = (offset % 4) as usize;
    [
        mask[r],
        mask[(r + 1) % 4],
        mask[(r + 2) % 4],
        mask[(r + 3) % 4],
    ]
}

/// XORs `data` with `mask`, as if `data` started `offset` bytes into the payload.
fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    fastwebsockets::unmask(data, rotated(mask, offset));
}

/// `dst = src ^ mask`, eight bytes at a time: masking a client frame while building it.
fn masked_copy(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    let m = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let mut word = [0u8; 8];
        word.copy_from_slice(sc);
        dc.copy_from_slice(&(u64::from_ne_bytes(word) ^ m).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the mask restarts at its first byte.
    for (i, (db, sb)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *db = sb ^ mask[i % 4];
    }
}

enum Rx {
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
    io: S,
    role: Role,
    rbuf: Box<[u8]>,
    rpos: usize,
    rend: usize,
    rx: Rx,
    /// Frame bytes accepted but not yet written (a partial data frame, pongs, the Close):
    /// `wbuf[wpos..wend]`. A buffer from the per-thread pool, held only while bytes are
    /// pending, so a quiet stream holds none; building a frame in it is one pass.
    wbuf: Vec<u8>,
    wpos: usize,
    wend: usize,
    close_sent: bool,
    masks: Masks,
    /// An error met after a read had already filled bytes: those bytes are returned first,
    /// the error on the next read (a read that fails must not also deliver data).
    read_err: Option<io::Error>,
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
            close_sent: false,
            masks: Masks::default(),
            read_err: None,
        }
    }

    fn mask(&mut self) -> io::Result<Option<[u8; 4]>> {
        match self.role {
            Role::Server => Ok(None),
            Role::Client => self.masks.next().map(Some),
        }
    }

    /// Room for `n` more pending output bytes.
    fn out(&mut self, n: usize) -> &mut [u8] {
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
    fn queue(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.queue_parts(opcode, &[payload])
    }

    /// Appends a frame whose payload is `parts` joined, masking while copying.
    fn queue_parts(&mut self, opcode: u8, parts: &[&[u8]]) -> io::Result<()> {
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

    /// Writes out pending frame bytes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wend {
            let pending = &self.wbuf[self.wpos..self.wend];
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wpos = 0;
        self.wend = 0;
        if !self.wbuf.is_empty() {
            pool::give(std::mem::take(&mut self.wbuf).into_boxed_slice());
        }
        Poll::Ready(Ok(()))
    }

    /// Reads more bytes into the header buffer, up to `want` buffered in all, so payload bytes
    /// are not read here only to be copied out again; `Ok(0)` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
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
        // Owed pongs go out whenever the stream is polled; waiting for them is not a reason
        // to stop reading.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
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

impl<S: Io> WsStream<S> {
    /// Reads frames into `buf` until it is full, the stream ends, or the transport has
    /// nothing more for now (Pending, with whatever was filled kept in `buf`).
    fn poll_read_frames(
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
                            this.queue(OP_PONG, &payload[..len])?;
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

impl<S: Io> WsStream<S> {
    /// Sends the bytes of `bufs` (up to [`MAX_WRITE`]) as one binary frame.
    fn poll_write_parts(
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

/// Slices of one vectored write gathered into a frame.
const MAX_PARTS: usize = 8;

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

/// Client masking keys from the system's CSPRNG, drawn 64 at a time.
#[derive(Default)]
struct Masks {
    pool: Vec<u8>,
}

impl Masks {
    fn next(&mut self) -> io::Result<[u8; 4]> {
        if self.pool.len() < 4 {
            self.pool.resize(256, 0);
            SystemRandom::new()
                .fill(&mut self.pool)
                .map_err(|_| io::Error::other("no system randomness"))?;
        }
        let at = self.pool.len() - 4;
        let m = [
            self.pool[at],
            self.pool[at + 1],
            self.pool[at + 2],
            self.pool[at + 3],
        ];
        self.pool.truncate(at);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn accept_key_of_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn headers_round_trip() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let (h, hl) = encode_header(OP_BINARY, len, mask);
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let (p, n) = parse_header(&h[..hl], role).unwrap().unwrap();
                assert_eq!(
                    (p.len, p.mask, p.opcode, p.fin, n),
                    (len as u64, mask, OP_BINARY, true, hl)
                );
                // Every strict prefix asks for more bytes.
                for cut in 0..hl {
                    assert_eq!(parse_header(&h[..cut], role).unwrap(), None);
                }
            }
        }
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let err = |b: &[u8], role| parse_header(b, role).unwrap_err().to_string();
        assert!(err(&[0x82, 0x05], Role::Server).contains("not masked"));
        assert!(err(&[0x82, 0x85, 0, 0, 0, 0], Role::Client).contains("masked"));
        assert!(err(&[0xC2, 0x00], Role::Client).contains("reserved"));
        assert!(err(&[0x83, 0x00], Role::Client).contains("opcode"));
        assert!(err(&[0x09, 0x00], Role::Client).contains("control"));
        assert!(err(&[0x89, 126, 0, 200], Role::Client).contains("control"));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(err(&huge, Role::Client).contains("limit"));
    }

    #[test]
    fn masking_with_offsets_matches_masking_at_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mask = [9, 8, 7, 6];
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        let mut parts = data.clone();
        let (a, b) = parts.split_at_mut(333);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 333);
        assert_eq!(whole, parts);
    }

    #[test]
    fn masked_copy_matches_masking_in_place() {
        for len in [0usize, 1, 7, 8, 9, 63, 64, 1000] {
            let src: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let mask = [0xde, 0xad, 0xbe, 0xef];
            let mut want = src.clone();
            apply_mask(&mut want, mask, 0);
            let mut got = vec![0u8; len];
            masked_copy(&mut got, &src, mask);
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    fn request_matches_the_original_client_byte_for_byte() {
        let req = upgrade_request("example.com", "/ws", "dGhlIHNhbXBsZSBub25jZQ==", "smux_off");
        assert_eq!(
            req,
            "GET /ws HTTP/1.1\r\n\
             Host: example.com\r\n\
             User-Agent: Go-http-client/1.1\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Protocol: smux_off\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Upgrade: websocket\r\n\r\n"
        );
        assert!(upgrade_request("::1", "/", "k", "smux_off").contains("Host: [::1]\r\n"));
    }
}
