//! The Acceptor's connections that are not one plain tunnel: datagram tunnels, and
//! multiplexed sessions, whose streams (typed by their first byte in version 2) each become a
//! tunnel in a tracked task.

use std::future::Future;

use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Acceptor, Tunnel, UDP_REFUSED};
use crate::transport::datagram::{self, Kind};
use crate::transport::front::{Carry, Upgrade};
use crate::transport::io::BoxIo;
use crate::transport::serve::ConnId;
use crate::transport::sniff::{self, Muxing};

impl<O: Clone + Send + Sync + 'static> Acceptor<O> {
    /// A connection that carries datagrams or a multiplexed session (or, as the caller would
    /// have, one plain tunnel).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn other<H, Fut>(
        &self,
        carry: Carry,
        io: BoxIo,
        id: ConnId,
        up: Upgrade<O>,
        rtt: Option<std::time::Duration>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
        handle: H,
    ) where
        H: Fn(Tunnel<O>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (named, v2) = match carry {
            Carry::Session { muxing, v2 } => (muxing, v2),
            Carry::Grpc => {
                let Some(front) = &self.grpc else { return };
                let peer = id.client.map(|a| a.ip());
                return front
                    .serve(io, &id, self.quiet, peer, &tasks, shutdown, handle)
                    .await;
            }
            Carry::Plain | Carry::Datagrams => {
                let owner = up.owner;
                let tunnel = Tunnel {
                    io,
                    kind: match carry {
                        Carry::Datagrams => Kind::Datagrams,
                        _ => Kind::Stream,
                    },
                    id,
                    owner,
                    shutdown,
                };
                return handle(tunnel).await;
            }
        };
        // Plain TLS names nothing but version 2: the first bytes tell (and catch `-mux` on
        // one end only); so do they on WebSocket when the client named no subprotocol.
        let (io, muxing, asked_v2) = match named {
            Some(m) if !self.sniff => (io, m, false),
            _ => {
                let name = id.to_string();
                match sniff::expect_mux(io, &name, self.quiet.first).await {
                    Some(x) => x,
                    None => return,
                }
            }
        };
        let v2 = muxing.typed(v2 || asked_v2);
        self.session(io, id, up, muxing, v2, rtt, &tasks, shutdown, handle)
            .await
    }

    /// Hands each stream of a session to `handle` in a tracked task, until the session ends,
    /// or (at shutdown) until its last stream has.
    #[allow(clippy::too_many_arguments)]
    async fn session<H, Fut>(
        &self,
        io: BoxIo,
        id: ConnId,
        up: Upgrade<O>,
        muxing: Muxing,
        v2: bool,
        rtt: Option<std::time::Duration>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        handle: H,
    ) where
        H: Fn(Tunnel<O>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        log::debug!("{id}: multiplexed session ({})", muxing.describe(v2));
        let mut session = muxing.server(io, self.quiet, rtt);
        // A session belongs to the owner of its path: revoking the owner closes it.
        let revoked = match (&self.http, &up.owner) {
            (Some(front), Some(owner)) => front.path.revoked(owner),
            _ => None,
        }
        .unwrap_or_default();
        let mut n = 0u64;
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    session.finish().await;
                    return;
                }
                _ = revoked.cancelled() => {
                    log::info!("{id}: multiplexed session closed: user {} removed with kick or over a limit", up.path);
                    return;
                }
                next = session.next() => next,
            };
            let stream = match next {
                None => return,
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    match crate::transport::relay::plain_ending(&e) {
                        Some(why) => log::debug!("{id}: multiplexed session ended: {why}"),
                        None => log::info!("{id}: multiplexed session ended: {e}"),
                    }
                    return;
                }
            };
            n += 1;
            let sid = id.stream(n);
            // Each stream goes to its path's owner now: a removed user's session opens
            // nothing new, a replaced one's goes to the new destination.
            let owner = match (&self.http, &up.owner) {
                (Some(front), Some(current)) => match front.path.reroute(&up.path, current) {
                    Some(owner) => Some(owner),
                    None => {
                        crate::rarely!(
                            Info,
                            "{sid}: refused: user {} was removed or is over a limit",
                            up.path
                        );
                        continue;
                    }
                },
                _ => up.owner.clone(),
            };
            if !v2 {
                tasks.spawn(handle(Tunnel {
                    io: stream,
                    kind: Kind::Stream,
                    id: sid,
                    owner,
                    shutdown: shutdown.clone(),
                }));
                continue;
            }
            // Version 2: the stream's first byte says what it carries; read in its own task,
            // so a slow stream holds back nothing else.
            let (handle, udp, limit) = (handle.clone(), self.udp, self.quiet.first);
            let shutdown = shutdown.clone();
            let mut stream = stream;
            tasks.spawn(async move {
                let mut kind = [0u8; 1];
                // Boxed and gone once read: the timer is not kept in the tunnel's task.
                let read = Box::pin(tokio::time::timeout(limit, stream.read_exact(&mut kind))).await;
                let kind = match read {
                    Ok(Ok(_)) if kind[0] == datagram::STREAM_TCP => Kind::Stream,
                    Ok(Ok(_)) if kind[0] == datagram::STREAM_UDP && udp => Kind::Datagrams,
                    Ok(Ok(_)) if kind[0] == datagram::STREAM_UDP => {
                        datagram::warn_once(
                            &UDP_REFUSED,
                            format_args!("{sid}: a client asked for a UDP tunnel; this server runs without -udp (said once)"),
                        );
                        return;
                    }
                    Ok(Ok(_)) => {
                        log::info!("{sid}: refused: unknown stream type {}", kind[0]);
                        return;
                    }
                    _ => return,
                };
                // Boxed: the type byte's read is done; the tunnel's task keeps only this.
                Box::pin(handle(Tunnel {
                    io: stream,
                    kind,
                    id: sid,
                    owner,
                    shutdown,
                }))
                .await
            });
        }
    }
}
