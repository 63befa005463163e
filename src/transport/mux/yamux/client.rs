//! The client end of a yamux session: one task owns the connection (as yamux requires) and
//! opens the streams asked of it, until the session is closed or fails.

use std::future::{Future, poll_fn};
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use super::reset::Resets;
use super::{Transport, YamuxStream, config, mux_err, transport};
use crate::error::Step;
use crate::transport::datagram::{self, Kind};
use crate::transport::io::BoxIo;
use crate::transport::mux::{BoxFuture, ClientSession, Dialled};
use crate::{Error, Result};

type OpenReply = oneshot::Sender<io::Result<yamux::Stream>>;

/// The client end of a yamux session.
pub struct YamuxClient {
    requests: mpsc::UnboundedSender<OpenReply>,
    /// Whether the server agreed to version 2 (streams open with a type byte).
    v2: bool,
    resets: Arc<Resets>,
    /// Asks the driving task to close the session.
    closing: CancellationToken,
    /// Cancelled once the session has ended.
    ended: CancellationToken,
}

impl YamuxClient {
    /// Starts the session over `dialled` and the task that drives it; `ping`: keepalive
    /// frames this often, and a pinging server silent for two intervals is gone.
    pub fn start(dialled: Dialled, ping: Option<Duration>) -> Arc<dyn ClientSession> {
        let Dialled { io, v2, rtt } = dialled;
        let (requests, rx) = mpsc::unbounded_channel();
        let resets = Arc::new(Resets::default());
        let client = Arc::new(YamuxClient {
            requests,
            v2,
            resets: resets.clone(),
            closing: CancellationToken::new(),
            ended: CancellationToken::new(),
        });
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = yamux::Connection::new(
            transport(io, resets, ping)
                .into_inner()
                .with_answered(answered.clone())
                .compat(),
            config(rtt),
            yamux::Mode::Client,
        );
        let (closing, ended) = (client.closing.clone(), client.ended.clone());
        tokio::spawn(async move {
            let m = crate::metrics::get();
            m.mux_sessions.inc();
            let why = drive(conn, rx, closing).await;
            m.mux_sessions.dec();
            ended.cancel();
            match why {
                Ok(()) => log::debug!("multiplexed session closed"),
                Err(e) if !answered.load(std::sync::atomic::Ordering::Relaxed) => {
                    // A server that does not multiplex closes the connection at its first
                    // frame; one that does always answers something first.
                    refused(&e.to_string());
                }
                Err(e) => log::debug!("multiplexed session ended: {e}"),
            }
        });
        client
    }

    async fn open_stream(&self, kind: Kind) -> Result<BoxIo> {
        let closed = || {
            let e = io::Error::new(io::ErrorKind::ConnectionAborted, "session closed");
            Error::tunnel(Step::Mux, "server", e)
        };
        // yamux announces a stream with its first frame; this first write sends that frame
        // now, so the server dials the destination even if the application waits for it to
        // speak first (SMTP, SSH banners). In a version-2 session it is the stream's type.
        let first: &[u8] = match (self.v2, kind) {
            (true, Kind::Stream) => &[datagram::STREAM_TCP],
            (true, Kind::Datagrams) => &[datagram::STREAM_UDP],
            (false, Kind::Stream) => &[],
            (false, Kind::Datagrams) => {
                let e = io::Error::new(
                    io::ErrorKind::Unsupported,
                    "its multiplexing is of an older mtt (version 1), which carries no UDP",
                );
                return Err(Error::tunnel(Step::Udp, "server", e));
            }
        };
        let (reply, answer) = oneshot::channel();
        self.requests.send(reply).map_err(|_| closed())?;
        let stream = answer
            .await
            .map_err(|_| closed())?
            .map_err(|e| Error::tunnel(Step::Mux, "server", e))?;
        let mut stream = YamuxStream::new(stream, self.resets.clone());
        stream
            .announce(first)
            .await
            .map_err(|e| Error::tunnel(Step::Mux, "server", e))?;
        Ok(Box::new(stream))
    }
}

impl ClientSession for YamuxClient {
    fn open(&self, kind: Kind) -> BoxFuture<'_, Result<BoxIo>> {
        Box::pin(self.open_stream(kind))
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.ended.cancelled())
    }

    fn close(&self) {
        self.closing.cancel();
    }
}

impl Drop for YamuxClient {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

/// The single task that owns a client connection: opens requested streams and keeps the
/// connection moving until it fails, the server closes it, or `closing` (then it is closed).
async fn drive(
    mut conn: yamux::Connection<Transport>,
    mut requests: mpsc::UnboundedReceiver<OpenReply>,
    closing: CancellationToken,
) -> io::Result<()> {
    let mut waiting: std::collections::VecDeque<OpenReply> = Default::default();
    let close = closing.cancelled();
    tokio::pin!(close);
    let ended = poll_fn(|cx| {
        while let Poll::Ready(Some(r)) = requests.poll_recv(cx) {
            waiting.push_back(r);
        }
        while !waiting.is_empty() {
            match conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(s)) => {
                    if let Some(r) = waiting.pop_front() {
                        let _ = r.send(Ok(s));
                    }
                }
                Poll::Ready(Err(yamux::ConnectionError::TooManyStreams)) => {
                    if let Some(r) = waiting.pop_front() {
                        let _ = r.send(Err(io::Error::other("multiplexing: too many streams")));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(mux_err(e))),
                Poll::Pending => break,
            }
        }
        match conn.poll_next_inbound(cx) {
            // A client accepts no streams: dropping resets it.
            Poll::Ready(Some(Ok(_))) => cx.waker().wake_by_ref(),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(mux_err(e))),
            Poll::Ready(None) => {
                let closed =
                    io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the server");
                return Poll::Ready(Err(closed));
            }
            Poll::Pending => {}
        }
        if close.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    })
    .await;
    match ended {
        Ok(()) => {
            let _ = poll_fn(|cx| conn.poll_close(cx)).await;
            Ok(())
        }
        Err(why) => {
            // Each waiter gets the same kind and words; io::Error itself cannot be shared.
            for r in waiting.drain(..) {
                let _ = r.send(Err(io::Error::new(why.kind(), why.to_string())));
            }
            Err(why)
        }
    }
}

/// Says (at most once a second) that the server closed a session before a word: `how`.
fn refused(how: &str) {
    crate::rarely!(
        Warn,
        "the server closed the multiplexed session without a word ({how}): it may run without -mux, which must be on both ends of a plain-TLS tunnel (or it speaks another -mux-proto, or is older than this client)"
    );
}
