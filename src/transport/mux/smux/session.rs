//! The two ends of an smux session as the multiplexer seam knows them: [`SmuxSession`]
//! (servers: yields the client's streams) and [`SmuxClient`] (opens streams).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::frame::Cmd;
use super::stream::SmuxStream;
use super::{Config, Shared, start};
use crate::error::Step;
use crate::transport::datagram::Kind;
use crate::transport::io::BoxIo;
use crate::transport::mux::{BoxFuture, ClientSession, Quiet, ServerSession};

/// The server end of an smux session: yields the client's streams, refusing those beyond the
/// limit alone; closes a session that carries no stream for too long; winds down on shutdown.
pub struct SmuxSession {
    shared: Arc<Shared>,
    accept: mpsc::Receiver<SmuxStream>,
    quiet: Quiet,
    carried: u64,
}

impl SmuxSession {
    /// Starts the server end over an established tunnel connection.
    pub fn server(io: BoxIo, cfg: Config, quiet: Quiet) -> Self {
        let (tx, accept) = mpsc::channel(cfg.max_streams.max(1));
        SmuxSession {
            shared: start(io, cfg, Some(tx)),
            accept,
            quiet,
            carried: 0,
        }
    }

    /// The next stream; `None` when the session has ended or stayed without streams for
    /// longer than [`Quiet`] allows (then it is closed).
    pub async fn next(&mut self) -> Option<io::Result<SmuxStream>> {
        loop {
            let quiet = if self.carried == 0 {
                self.quiet.first
            } else {
                self.quiet.idle
            };
            let idle = self.shared.open_streams() == 0;
            tokio::select! {
                s = self.accept.recv() => match s {
                    Some(s) => {
                        self.carried += 1;
                        return Some(Ok(s));
                    }
                    None => return None,
                },
                _ = self.shared.closed.cancelled() => return None,
                // A stream ended: look again whether the session is idle.
                _ = self.shared.idle.notified() => continue,
                _ = tokio::time::sleep(quiet), if idle => {
                    if self.shared.open_streams() > 0 {
                        continue;
                    }
                    log::debug!("smux session closed: no stream for {quiet:?}");
                    self.shared.closed.cancel();
                    return None;
                }
            }
        }
    }

    /// For shutdown: refuses new streams, lets the open ones finish, then closes the session.
    pub async fn finish(mut self) {
        self.shared.refusing.store(true, Ordering::Release);
        self.accept.close();
        while let Ok(s) = self.accept.try_recv() {
            drop(s);
        }
        while self.shared.open_streams() > 0 {
            tokio::select! {
                _ = self.shared.idle.notified() => {}
                _ = self.shared.closed.cancelled() => return,
            }
        }
        self.shared.closed.cancel();
    }
}

impl Drop for SmuxSession {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

/// The client end of an smux session: opens streams (ids 3, 5, 7, …, as the original's).
pub struct SmuxClient {
    shared: Arc<Shared>,
}

impl SmuxClient {
    /// Starts the client end over an established tunnel connection.
    pub fn new(io: BoxIo, cfg: Config) -> Self {
        SmuxClient {
            shared: start(io, cfg, None),
        }
    }

    /// Opens a stream: its SYN is queued before this returns.
    pub async fn open(&self) -> io::Result<SmuxStream> {
        let sid = self.shared.last_id.fetch_add(2, Ordering::AcqRel) + 2;
        let stream = self.shared.register(sid, false);
        if !self.shared.control(Cmd::Syn, sid).await {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the multiplexed session ended",
            ));
        }
        Ok(stream)
    }

    /// Waits until the session has ended.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// Closes the session (what is queued is still sent).
    pub fn close(&self) {
        self.shared.closed.cancel();
    }
}

impl Drop for SmuxClient {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

impl ServerSession for SmuxSession {
    fn next(&mut self) -> BoxFuture<'_, Option<io::Result<BoxIo>>> {
        Box::pin(async move { Some(SmuxSession::next(self).await?.map(|s| Box::new(s) as BoxIo)) })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(SmuxSession::finish(*self))
    }
}

impl ClientSession for SmuxClient {
    fn open(&self, kind: Kind) -> BoxFuture<'_, crate::Result<BoxIo>> {
        Box::pin(async move {
            if kind == Kind::Datagrams {
                let e = io::Error::new(
                    io::ErrorKind::Unsupported,
                    "smux (-mux-proto smux, the original's multiplexing) carries no UDP",
                );
                return Err(crate::Error::tunnel(Step::Udp, "server", e));
            }
            let stream = SmuxClient::open(self)
                .await
                .map_err(|e| crate::Error::tunnel(Step::Mux, "server", e))?;
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(SmuxClient::closed(self))
    }

    fn close(&self) {
        SmuxClient::close(self)
    }
}
