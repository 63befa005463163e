//! The two ends of a session as the multiplexer seam knows them: [`ServerEnd`] (yields the
//! client's streams) and [`ClientEnd`] (opens streams).

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::stream::Stream;
use super::{Config, Shared, Wire, start};
use crate::error::Step;
use crate::transport::datagram::Kind;
use crate::transport::io::BoxIo;
use crate::transport::mux::{BoxFuture, ClientSession, Quiet, ServerSession};

/// The server end of a session: yields the client's streams, refusing those beyond the limit
/// alone; closes a session that carries no stream for too long; winds down on shutdown.
pub struct ServerEnd<W: Wire> {
    shared: Arc<Shared<W>>,
    accept: mpsc::Receiver<Stream<W>>,
    quiet: Quiet,
    carried: u64,
}

impl<W: Wire> ServerEnd<W> {
    /// Starts the server end over an established tunnel connection.
    pub fn server(io: BoxIo, cfg: Config, quiet: Quiet) -> Self {
        let (tx, accept) = mpsc::channel(cfg.max_streams.max(1));
        ServerEnd {
            shared: start(io, cfg, Some(tx)),
            accept,
            quiet,
            carried: 0,
        }
    }

    /// The next stream; `None` when the session has ended or stayed without streams for
    /// longer than [`Quiet`] allows (then it is closed).
    pub async fn next(&mut self) -> Option<io::Result<Stream<W>>> {
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
                    log::debug!("{} session closed: no stream for {quiet:?}", W::NAME);
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

impl<W: Wire> Drop for ServerEnd<W> {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

/// The client end of a session: opens streams (ids as the wire numbers them).
pub struct ClientEnd<W: Wire> {
    shared: Arc<Shared<W>>,
}

impl<W: Wire> ClientEnd<W> {
    /// Starts the client end over an established tunnel connection.
    pub fn new(io: BoxIo, cfg: Config) -> Self {
        ClientEnd {
            shared: start(io, cfg, None),
        }
    }

    /// Opens a stream carrying a byte stream: its open frame is queued before this returns.
    #[cfg(test)]
    pub async fn open(&self) -> io::Result<Stream<W>> {
        self.open_kind(Kind::Stream).await
    }

    /// Opens a stream carrying `kind`.
    pub async fn open_kind(&self, kind: Kind) -> io::Result<Stream<W>> {
        let sid = self
            .shared
            .last_id
            .fetch_add(W::ID_STEP, Ordering::AcqRel)
            .wrapping_add(W::ID_STEP);
        let stream = self.shared.register(sid, kind, false);
        if !self.shared.send(W::open(sid, kind)).await {
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

impl<W: Wire> Drop for ClientEnd<W> {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

impl<W: Wire> ServerSession for ServerEnd<W> {
    fn next(&mut self) -> BoxFuture<'_, Option<io::Result<BoxIo>>> {
        Box::pin(async move { Some(ServerEnd::next(self).await?.map(|s| Box::new(s) as BoxIo)) })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(ServerEnd::finish(*self))
    }
}

impl<W: Wire> ClientSession for ClientEnd<W> {
    fn open(&self, kind: Kind) -> BoxFuture<'_, crate::Result<BoxIo>> {
        Box::pin(async move {
            if kind == Kind::Datagrams && !W::DATAGRAMS {
                let e = io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{} carries no UDP", W::NAME),
                );
                return Err(crate::Error::tunnel(Step::Udp, "server", e));
            }
            let stream = ClientEnd::open_kind(self, kind)
                .await
                .map_err(|e| crate::Error::tunnel(Step::Mux, "server", e))?;
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn closed(&self) -> BoxFuture<'_, ()> {
        Box::pin(ClientEnd::closed(self))
    }

    fn close(&self) {
        ClientEnd::close(self)
    }
}
