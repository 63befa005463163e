//! One tunnel as one gRPC call on an HTTP/2 stream: its bytes go out as gun messages, each no
//! larger than the send window HTTP/2 has granted (so nothing waits in a buffer of h2's for
//! room), and come in as DATA frames decoded straight into the reader's buffer, each frame's
//! window given back once it is taken. HTTP/2's per-stream flow control is the tunnel's: a
//! reader that stops holds back its own stream only.
//!
//! Half-close: a client ends its request (END_STREAM), a server its response (trailers with
//! `grpc-status: 0`); the other direction goes on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::message::{self, Decoder};

/// The most data one message carries (a message also fits in what the window allows).
const MAX_WRITE: usize = 256 * 1024;

/// What is being read.
enum Recv {
    /// A client waits for the response's head.
    Response(h2::client::ResponseFuture),
    /// The body's DATA frames.
    Body(RecvStream),
    /// A client's body has ended: the trailers say how the call ended.
    Trailers(RecvStream),
    /// End of stream.
    Done,
}

/// A tunnel on one HTTP/2 stream, either end.
pub struct GrpcStream {
    send: SendStream<Bytes>,
    recv: Recv,
    server: bool,
    dec: Decoder,
    /// What is left of the DATA frame being read.
    chunk: Bytes,
    /// Where messages are put together (its memory comes back once h2 has sent them).
    wbuf: BytesMut,
    ended: bool,
    /// An error met while reading ahead, for the next read.
    failed: Option<io::Error>,
    /// A server's count of calls the client reset before sending a byte (rapid reset).
    abandoned: Option<Arc<AtomicU32>>,
}

/// An HTTP/2 error in the words of a tunnel: I/O errors as they are, a reset as a reset.
pub fn io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    let kind = if e.is_reset() || e.is_go_away() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::InvalidData
    };
    io::Error::new(kind, format!("HTTP/2: {e}"))
}

impl GrpcStream {
    /// The client end: the request went out as `send`; its response is `response`.
    pub fn client(send: SendStream<Bytes>, response: h2::client::ResponseFuture) -> Self {
        Self::new(send, Recv::Response(response), false)
    }

    /// The client end once the response's head has come: its body is `body`.
    pub fn answered(send: SendStream<Bytes>, body: RecvStream) -> Self {
        Self::new(send, Recv::Body(body), false)
    }

    /// The server end: the response's head has been sent (`send` carries its body); the
    /// request's body is `recv`; a reset before the client's first byte is counted in
    /// `abandoned`.
    pub fn server(send: SendStream<Bytes>, recv: RecvStream, abandoned: Arc<AtomicU32>) -> Self {
        let mut s = Self::new(send, Recv::Body(recv), true);
        s.abandoned = Some(abandoned);
        s
    }

    fn new(send: SendStream<Bytes>, recv: Recv, server: bool) -> Self {
        GrpcStream {
            send,
            recv,
            server,
            dec: Decoder::default(),
            chunk: Bytes::new(),
            wbuf: BytesMut::new(),
            ended: false,
            failed: None,
            abandoned: None,
        }
    }

    /// Copies what the current frame holds for the reader; whether anything was.
    fn drain_chunk(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        let before = buf.filled().len();
        while !self.chunk.is_empty() && buf.remaining() > 0 {
            let (used, data) = self.dec.step(&self.chunk, buf.remaining())?;
            if let Some(r) = data {
                buf.put_slice(&self.chunk[r]);
            }
            self.chunk.advance(used);
        }
        Ok(buf.filled().len() > before)
    }
}

/// Why a response's head is not that of a tunnel, if it is not.
pub fn refused(status: http::StatusCode, headers: &HeaderMap) -> Option<String> {
    if let Some(s) = status_of(headers).filter(|s| *s != 0) {
        return Some(call_failed(s, headers));
    }
    if status != http::StatusCode::OK {
        return Some(format!(
            "the server answered HTTP {} where a gRPC tunnel was asked for (is -grpc and the same -grpc-service on both ends?)",
            status.as_u16()
        ));
    }
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    (!grpc).then(|| {
        "the server's answer is not gRPC (no application/grpc content type): a web server, not a tunnel, at this address".to_string()
    })
}

/// The `grpc-status` of a response head or trailers.
fn status_of(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

fn call_failed(status: u32, h: &HeaderMap) -> String {
    let msg = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    format!(
        "the server ended the gRPC call with status {status}{}{msg}",
        if msg.is_empty() { "" } else { ": " }
    )
}

impl AsyncRead for GrpcStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        // Frames already here are all taken while there is room: fewer, larger reads for
        // the relay behind (each a write to the destination).
        let mut got = false;
        loop {
            got |= this.drain_chunk(buf)?;
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Err(e));
            }
            match this.poll_next(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                // Data for the reader now; the error is the next read's.
                Poll::Ready(Err(e)) if got => {
                    this.failed = Some(e);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if got => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl GrpcStream {
    /// Moves the reading side on: `true` once it may have more for the reader (a frame in
    /// `chunk`, or the response's head taken), `false` at the end of the stream.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        match &mut self.recv {
            Recv::Response(fut) => {
                let resp = ready!(Pin::new(fut).poll(cx)).map_err(io_error)?;
                if let Some(why) = refused(resp.status(), resp.headers()) {
                    self.recv = Recv::Done;
                    let e = io::Error::new(io::ErrorKind::ConnectionRefused, why);
                    return Poll::Ready(Err(e));
                }
                self.recv = Recv::Body(resp.into_body());
            }
            Recv::Body(body) => match ready!(body.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: the peer may send as much again (what is held here is at most
                    // this one frame).
                    let _ = body.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        self.abandoned = None;
                    }
                    self.chunk = data;
                }
                Some(Err(e)) => {
                    if e.is_reset()
                        && let Some(count) = self.abandoned.take()
                    {
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                    return Poll::Ready(Err(io_error(e)));
                }
                None => {
                    let Recv::Body(body) = std::mem::replace(&mut self.recv, Recv::Done) else {
                        unreachable!("matched above");
                    };
                    if !self.dec.at_boundary() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the gRPC stream ended inside a message",
                        )));
                    }
                    if !self.server {
                        self.recv = Recv::Trailers(body);
                    }
                }
            },
            Recv::Trailers(body) => {
                let trailers = ready!(body.poll_trailers(cx)).map_err(io_error)?;
                self.recv = Recv::Done;
                if let Some(s) = trailers.as_ref().and_then(status_of).filter(|s| *s != 0) {
                    let h = trailers.unwrap_or_default();
                    let e = io::Error::new(io::ErrorKind::ConnectionReset, call_failed(s, &h));
                    return Poll::Ready(Err(e));
                }
            }
            Recv::Done => return Poll::Ready(Ok(false)),
        }
        Poll::Ready(Ok(true))
    }
}

impl AsyncWrite for GrpcStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the tunnel's sending side was closed",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let want = buf.len().min(MAX_WRITE);
        // A message goes out only within the window granted: h2 then buffers nothing.
        this.send.reserve_capacity(want + message::OVERHEAD);
        let mut room = this.send.capacity();
        while room <= message::OVERHEAD {
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) => room = n,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the gRPC stream was closed",
                    )));
                }
            }
        }
        let n = want.min(room - message::OVERHEAD);
        message::encode(&buf[..n], &mut this.wbuf);
        let msg = this.wbuf.split().freeze();
        this.send.send_data(msg, false).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What was handed to h2 fits its window: its connection task sends it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.ended {
            this.ended = true;
            let r = if this.server {
                let mut t = HeaderMap::new();
                t.insert("grpc-status", http::HeaderValue::from_static("0"));
                this.send.send_trailers(t)
            } else {
                this.send.send_data(Bytes::new(), true)
            };
            r.map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
