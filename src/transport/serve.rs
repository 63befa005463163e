//! The one accept loop of every listener: numbers connections, runs each in a tracked task
//! within `-max-conns`, backs off on resource errors, and drains tracked tasks on shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::listen::{Listener, Stream};
use crate::metrics::Failure;

/// Bounds of an accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long live connections may finish after shutdown.
    pub drain: Duration,
    /// Connections at once (0: no limit).
    pub max_conns: usize,
}

/// Identifies one accepted connection (or one stream of it) in logs: `#7 127.0.0.1:50432`,
/// `#7 127.0.0.1:50432/3`.
#[derive(Debug, Clone)]
pub struct ConnId {
    /// Sequence number within the process.
    pub id: u64,
    /// Peer address (the real client's, behind a trusted proxy), and the stream number within
    /// a multiplexed session.
    pub peer: String,
    /// The client's address: the TCP peer, or who a trusted proxy said it is (port 0 when
    /// the proxy named no port). `None` on a Unix socket.
    pub client: Option<SocketAddr>,
    /// The address the client reached (our listener's).
    pub local: Option<SocketAddr>,
}

impl ConnId {
    /// The id of the `n`th stream of this connection's session.
    pub fn stream(&self, n: u64) -> ConnId {
        ConnId {
            id: self.id,
            peer: format!("{}/{n}", self.peer),
            client: self.client,
            local: self.local,
        }
    }

    /// Takes `client` as the real client, behind the peer seen so far (a trusted proxy).
    pub fn behind_proxy(&mut self, client: SocketAddr) {
        if self.client == Some(client) {
            return;
        }
        let shown = if client.port() == 0 {
            client.ip().to_string()
        } else {
            client.to_string()
        };
        self.peer = format!("{shown} via {}", self.peer);
        self.client = Some(client);
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {}", self.id, self.peer)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One open connection, counted until its task ends (or is dropped).
struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts until `shutdown` fires, running `handle` for each connection in a task of one
/// tracker (which `handle` may use for tasks of its own, such as the streams of a session,
/// so that drain waits for them too); then closes the listener and waits up to
/// `limits.drain` for the tracked tasks.
pub async fn accept_loop<F, Fut>(
    listener: Listener,
    shutdown: CancellationToken,
    limits: Limits,
    handle: F,
) where
    F: Fn(Stream, ConnId, TaskTracker) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    // Connections, not tasks: the streams of a session are tracked but count as one.
    let conns = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let local = match &stream {
                    tokio_util::either::Either::Left(tcp) => {
                        tcp.local_addr().ok().map(super::listen::unmapped)
                    }
                    tokio_util::either::Either::Right(_) => None,
                };
                let id = ConnId {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    client: peer.parse().ok(),
                    peer,
                    local,
                };
                if limits.max_conns > 0 && conns.load(Ordering::Acquire) >= limits.max_conns {
                    // Closing at once is the clean refusal: the peer sees EOF, nothing hangs.
                    crate::metrics::get().fail(Failure::Limit);
                    log::debug!("{id}: refused: -max-conns {} reached", limits.max_conns);
                    crate::rarely!(
                        Warn,
                        "refused a connection: -max-conns {} reached (raise it, or add servers)",
                        limits.max_conns
                    );
                    drop(stream);
                    continue;
                }
                log::debug!("{id}: accepted");
                let work = handle(stream, id, tracker.clone());
                conns.fetch_add(1, Ordering::AcqRel);
                // A guard, not an `async` block around `work`: such a block keeps `work`
                // twice in every connection's task (as captured and as awaited).
                let counted = Counted(conns.clone());
                tracker.spawn(futures_util::FutureExt::map(work, move |()| drop(counted)));
            }
            Err(e) if is_transient(&e) => log::debug!("accept: {e}"),
            Err(e) => {
                // Out of descriptors or memory: wait for connections to finish instead of
                // spinning on a listener that stays readable.
                log::error!(
                    "accept on {}: {e}; retrying in 100ms",
                    listener.local_addr()
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    let drain = limits.drain;
    tracker.close();
    if !tracker.is_empty() {
        log::info!(
            "draining {} live connection(s) for up to {drain:?}",
            tracker.len()
        );
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            log::warn!(
                "{} connection(s) still open after {drain:?}; closing them",
                tracker.len()
            );
        }
    }
}

/// Errors about one incoming connection that leave the listener healthy.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
