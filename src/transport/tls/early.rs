//! TLS 1.3 early data (0-RTT) at the accepting end: [`ServerTls`] hands a resumed mtt
//! client's first flight up the pipeline while its handshake is still finishing, so the
//! destination is dialled and hears the first bytes one round trip sooner.
//!
//! rustls buffers early data in the connection until the client's Finished; tokio-rustls's
//! server reads nothing before its handshake is done. So the hello is read here
//! ([`hello`]), and a connection whose early data was accepted is driven by hand until the
//! client's Finished comes (reading its early data, writing what the layers above answer),
//! then given to tokio-rustls, handshake done, for the rest of its life.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::{Accepted, Acceptor, ServerConnection};
use std::future::Future;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{Accept, TlsAcceptor};

/// An accepted server-side TLS stream: still in its handshake, reading early data, or done.
// Every connection lives in `Done`; the passing states are boxed so as not to make it larger.
#[allow(clippy::large_enum_variant)]
pub enum ServerTls<S> {
    /// Early data was accepted and the client's Finished has not come yet.
    Early(Box<Early<S>>),
    /// Finished came: tokio-rustls takes over (only flushing is left of its handshake),
    /// with the early data not yet read.
    Handing(Box<(Accept<S>, Vec<u8>)>),
    /// The handshake is done; early data is still to be read before what followed it.
    Rest(Box<(TlsStream<S>, Vec<u8>)>),
    /// The handshake is done.
    Done(TlsStream<S>),
    /// Only while a poll moves it from one state to the next.
    Moving,
}

/// A connection whose early data was accepted, before the client's Finished.
pub struct Early<S> {
    conn: ServerConnection,
    io: S,
    config: Arc<rustls::ServerConfig>,
    /// The handshake's deadline: a client that sent early data and never its Finished is
    /// cut off then, as one that never finished its handshake at all.
    deadline: Pin<Box<Sleep>>,
}

/// The hello of a new connection, read by rustls, with `io` back to go on with.
pub async fn hello<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> io::Result<(Accepted, S)> {
    let mut io = io;
    let mut acceptor = Acceptor::default();
    let accepted = std::future::poll_fn(|cx| {
        loop {
            match acceptor.read_tls(&mut SyncIo { io: &mut io, cx }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => return Poll::Ready(Ok(Ok(accepted))),
                Ok(None) => {}
                Err((e, alert)) => return Poll::Ready(Ok(Err((e, alert)))),
            }
        }
    })
    .await?;
    match accepted {
        Ok(a) => Ok((a, io)),
        Err((e, alert)) => Err(refuse(io, e, alert).await),
    }
}

/// Sends `alert` (best effort) and says `e`.
async fn refuse<S: AsyncWrite + Unpin>(
    mut io: S,
    e: rustls::Error,
    mut alert: rustls::server::AcceptedAlert,
) -> io::Error {
    let mut bytes = Vec::new();
    let _ = alert.write(&mut bytes);
    let _ = tokio::io::AsyncWriteExt::write_all(&mut io, &bytes).await;
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Goes on from `accepted` with `config` until `deadline`: with early data accepted, as soon
/// as the server's flight is out; else once the handshake is done.
pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(
    accepted: Accepted,
    io: S,
    config: Arc<rustls::ServerConfig>,
    deadline: Instant,
    send_limit: usize,
) -> io::Result<ServerTls<S>> {
    let mut conn = match accepted.into_connection(config.clone()) {
        Ok(c) => c,
        Err((e, alert)) => return Err(refuse(io, e, alert).await),
    };
    conn.set_buffer_limit(Some(send_limit));
    // Records that came with the hello (its early data) are read now, not at the next read.
    if let Err(e) = conn.process_new_packets() {
        let mut early = Early::new(conn, io, config, deadline);
        return Err(early.fail(e).await);
    }
    if conn.early_data().is_none() {
        let acceptor = TlsAcceptor::from(config);
        let accept = acceptor.accept_with(io, move |c| *c = conn);
        return match tokio::time::timeout_at(deadline, accept).await {
            Ok(r) => r.map(ServerTls::Done),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        };
    }
    let mut early = Early::new(conn, io, config, deadline);
    // The server's flight goes out now: the client's Finished answers it.
    std::future::poll_fn(|cx| early.write_out(cx)).await?;
    Ok(ServerTls::Early(Box::new(early)))
}

impl<S> ServerTls<S> {
    /// Whether the stream is still reading early data (its handshake not yet done).
    pub fn is_early(&self) -> bool {
        matches!(self, ServerTls::Early(_))
    }

    /// The connection's TLS state, as far as it is known.
    pub fn connection(&self) -> Option<&ServerConnection> {
        match self {
            ServerTls::Early(e) => Some(&e.conn),
            ServerTls::Done(t) => Some(t.get_ref().1),
            _ => None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Early<S> {
    fn new(
        conn: ServerConnection,
        io: S,
        config: Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Self {
        Early {
            conn,
            io,
            config,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Writes out what rustls has to send: ready once all of it is written.
    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut SyncIo {
                io: &mut self.io,
                cx,
            }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads and processes more of the client's records (its early data, its Finished).
    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out after the client's early data",
            )));
        }
        let n = match self.conn.read_tls(&mut SyncIo {
            io: &mut self.io,
            cx,
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed before its TLS handshake was done (after early data)",
            )));
        }
        if let Err(e) = self.conn.process_new_packets() {
            // The alert rustls queued goes out if it can at once.
            let _ = self.write_out(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        Poll::Ready(Ok(()))
    }

    /// A failed first step: the alert goes out, the error is said.
    async fn fail(&mut self, e: rustls::Error) -> io::Error {
        let _ = std::future::poll_fn(|cx| self.write_out(cx)).await;
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Early data not yet read, into `buf`: whether there was any.
    fn read_early(&mut self, buf: &mut ReadBuf<'_>) -> io::Result<bool> {
        let Some(mut early) = self.conn.early_data() else {
            return Ok(false);
        };
        let n = early.read(buf.initialize_unfilled())?;
        buf.advance(n);
        Ok(n > 0)
    }

    /// The early data not yet read, taken out of rustls (before tokio-rustls takes over,
    /// which reads only what follows the handshake).
    fn take_early(&mut self) -> io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        if let Some(mut early) = self.conn.early_data() {
            early.read_to_end(&mut rest)?;
        }
        Ok(rest)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ServerTls<S> {
    /// Moves on from `Early` once its handshake is done, and from `Handing` once
    /// tokio-rustls has flushed: ready when the stream is `Rest` or `Done`, or `Early` still
    /// handshaking (then the caller goes on with it).
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                ServerTls::Done(_) | ServerTls::Rest(_) => return Poll::Ready(Ok(())),
                ServerTls::Handing(h) => {
                    let tls = ready!(Pin::new(&mut h.0).poll(cx))?;
                    let rest = std::mem::take(&mut h.1);
                    *self = if rest.is_empty() {
                        ServerTls::Done(tls)
                    } else {
                        ServerTls::Rest(Box::new((tls, rest)))
                    };
                }
                ServerTls::Early(early) => {
                    if early.conn.is_handshaking() {
                        return Poll::Ready(Ok(()));
                    }
                    let rest = early.take_early()?;
                    let ServerTls::Early(early) = std::mem::replace(self, ServerTls::Moving) else {
                        unreachable!("matched above");
                    };
                    let Early {
                        conn, io, config, ..
                    } = *early;
                    let accept = TlsAcceptor::from(config).accept_with(io, move |c| *c = conn);
                    *self = ServerTls::Handing(Box::new((accept, rest)));
                }
                ServerTls::Moving => return Poll::Ready(Err(moved())),
            }
        }
    }

    /// The stream once done (the state `poll_done` left, unless still in `Early`).
    fn done(&mut self) -> Option<Pin<&mut TlsStream<S>>> {
        match self {
            ServerTls::Done(tls) => Some(Pin::new(tls)),
            ServerTls::Rest(r) => Some(Pin::new(&mut r.0)),
            _ => None,
        }
    }
}

fn moved() -> io::Error {
    io::Error::other("TLS stream used after a failed state change")
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let ServerTls::Early(early) = this {
                // Early data first, in order, then what follows the handshake.
                if early.read_early(buf)? {
                    return Poll::Ready(Ok(()));
                }
                if early.conn.is_handshaking() {
                    // Whatever the layers above wrote goes out while we wait.
                    if let Poll::Ready(Err(e)) = early.write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                    ready!(early.read_more(cx))?;
                    continue;
                }
            }
            ready!(this.poll_done(cx))?;
            if let ServerTls::Rest(r) = this {
                let n = r.1.len().min(buf.remaining());
                buf.put_slice(&r.1[..n]);
                r.1.drain(..n);
                if r.1.is_empty() {
                    let ServerTls::Rest(r) = std::mem::replace(this, ServerTls::Moving) else {
                        unreachable!("matched above");
                    };
                    *this = ServerTls::Done(r.0);
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(tls) = this.done() {
                return tls.poll_read(cx, buf);
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if let ServerTls::Early(early) = this
                && early.conn.is_handshaking()
            {
                // Sent at once (0.5-RTT data: the server's Finished is out).
                let n = early.conn.writer().write(buf)?;
                let out = early.write_out(cx);
                if n > 0 || buf.is_empty() {
                    if let Poll::Ready(Err(e)) = out {
                        return Poll::Ready(Err(e));
                    }
                    return Poll::Ready(Ok(n));
                }
                // rustls's send buffer is full: wait for the socket.
                ready!(out)?;
                continue;
            }
            ready!(this.poll_done(cx))?;
            if let Some(tls) = this.done() {
                return tls.poll_write(cx, buf);
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerTls::Done(tls) => Pin::new(tls).poll_write_vectored(cx, bufs),
            other => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                Pin::new(other).poll_write(cx, buf)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let ServerTls::Early(early) = this
            && early.conn.is_handshaking()
        {
            ready!(early.write_out(cx))?;
            return Pin::new(&mut early.io).poll_flush(cx);
        }
        ready!(this.poll_done(cx))?;
        match this.done() {
            Some(tls) => tls.poll_flush(cx),
            None => Poll::Ready(Err(moved())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The handshake finishes first (the client's Finished is one flight away), so the
        // close is said the usual way; early data meanwhile stays buffered for a read.
        while let ServerTls::Early(early) = this
            && early.conn.is_handshaking()
        {
            ready!(early.write_out(cx))?;
            ready!(early.read_more(cx))?;
        }
        ready!(this.poll_done(cx))?;
        match this.done() {
            Some(tls) => tls.poll_shutdown(cx),
            None => Poll::Ready(Err(moved())),
        }
    }
}

/// Turns an async stream, with the task's context, into a blocking-style one whose pending
/// is `WouldBlock` (what rustls's `read_tls`/`write_tls` take).
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::certs::{CertStore, fingerprint, pem};
    use crate::transport::options::{HelloOptions, TlsClientOptions, Verify};
    use crate::transport::tls::{TlsClient, TlsServer};

    /// A resumed client's first bytes are read by the server before the client's Finished;
    /// what the server writes and its close, both before the Finished has come, reach the
    /// client; what the client writes after the handshake follows, in order.
    #[tokio::test]
    async fn early_data_is_read_before_the_handshake_ends_and_both_ways_flow() {
        let made = pem::self_signed(Some("localhost")).expect("certificate");
        let pin = made.cert_key.fingerprint();
        let limit = Duration::from_secs(10);
        let store = CertStore::new(made.cert_key).expect("store");
        let server = TlsServer::with_extra(store, &[], &[], limit, true).expect("server");
        let opts = TlsClientOptions {
            server_name: "localhost".into(),
            verify: Verify::Pin(fingerprint::parse(&pin).expect("pin")),
            hello: HelloOptions {
                early_data: true,
                ..Default::default()
            },
        };
        let client = TlsClient::new(&opts, &[], limit).expect("client");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let serving = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = l.accept().await.expect("accept");
                let (mut tls, _) = server.negotiate(tcp).await.expect("server handshake");
                let early = tls.is_early();
                let mut first = [0u8; 5];
                tls.read_exact(&mut first).await.expect("first bytes");
                // Answered and closed while (with 0-RTT) the client's Finished is yet to come.
                let still_early = tls.is_early();
                tls.write_all(b"answer").await.expect("answer");
                tls.shutdown().await.expect("close");
                let mut rest = Vec::new();
                tls.read_to_end(&mut rest).await.expect("the rest");
                got.push((early, still_early, first, rest));
            }
            got
        });
        for round in 0..2 {
            assert_eq!(client.zero_rtt_ready(), round == 1, "round {round}");
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut tls = client.connect(tcp).await.expect("client hello");
            let sent = client.finish(&mut tls, b"first").await.expect("handshake");
            assert_eq!(sent, round == 1, "round {round}: sent as early data");
            if !sent {
                tls.write_all(b"first").await.expect("first");
            }
            assert_eq!(tls.get_ref().1.is_early_data_accepted(), round == 1);
            tls.write_all(b"then more").await.expect("more");
            tls.shutdown().await.expect("half-close");
            let mut answer = Vec::new();
            tls.read_to_end(&mut answer).await.expect("answer");
            assert_eq!(answer, b"answer", "round {round}");
        }
        let got = serving.await.expect("server");
        assert_eq!(got[0], (false, false, *b"first", b"then more".to_vec()));
        assert_eq!(got[1], (true, true, *b"first", b"then more".to_vec()));
    }
}
