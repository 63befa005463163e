//! Plumbing shared by the roles: the accept loop that numbers connections, spawns one task per
//! connection, backs off on resource errors, and drains live tunnels on shutdown.

pub mod api;
pub mod client;
pub mod mu_server;
pub mod server;

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::{Listener, Stream};

/// Bounds of an accept loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long live connections may finish after shutdown.
    pub drain: Duration,
    /// Connections at once (0: no limit).
    pub max_conns: usize,
}

/// Identifies one accepted connection in logs: `#7 127.0.0.1:50432`.
#[derive(Debug, Clone)]
pub struct ConnId {
    /// Sequence number within the process.
    pub id: u64,
    /// Peer address.
    pub peer: String,
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{} {}", self.id, self.peer)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Accepts until `shutdown` fires, running `handle` for each connection in its own task; then
/// stops accepting (the listener is closed) and waits up to `drain` for live
/// connections.
pub async fn serve<F, Fut>(
    listener: Listener,
    shutdown: CancellationToken,
    limits: Limits,
    handle: F,
) where
    F: Fn(Stream, ConnId) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let id = ConnId {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    peer,
                };
                let m = crate::metrics::get();
                if limits.max_conns > 0 && tracker.len() >= limits.max_conns {
                    // Closing at once is the clean refusal: the peer sees EOF, nothing hangs.
                    m.fail("limit");
                    log::info!("{id}: refused: -max-conns {} reached", limits.max_conns);
                    drop(stream);
                    continue;
                }
                log::debug!("{id}: accepted");
                m.accepted.inc();
                m.active.inc();
                let work = handle(stream, id);
                tracker.spawn(async move {
                    work.await;
                    m.active.dec();
                });
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

/// What SIGHUP re-reads: the certificate files, and the mu-server's users file.
#[derive(Clone)]
pub struct Reloader {
    pub(crate) acceptor: std::sync::Arc<crate::transport::Acceptor>,
    pub(crate) users: Option<std::sync::Arc<crate::users::Users>>,
}

impl Reloader {
    /// The certificate files worth watching for changes, if there are any.
    pub fn cert_files(&self) -> Option<[std::path::PathBuf; 2]> {
        self.acceptor.cert_files()
    }

    /// Re-reads only `-cert`/`-key` (what a change on disk calls for).
    pub fn reload_cert(&self) {
        match self.acceptor.reload() {
            Ok(Some(fp)) => log::warn!("reloaded -cert/-key: new handshakes present SHA-256 {fp}"),
            Ok(None) => log::info!("reload: no -cert/-key files to re-read"),
            Err(e) => log::error!("reload: {e}; keeping the current certificate"),
        }
    }

    /// Re-reads what can be; a bad file keeps what was loaded and says why, once.
    pub async fn reload(&self) {
        self.reload_cert();
        if let Some(users) = &self.users {
            match users.reload_file().await {
                Ok(Some(n)) => log::warn!("reloaded -users-file: {n} user(s)"),
                Ok(None) => {}
                Err(e) => log::error!("reload: {e}; keeping the current users"),
            }
        }
    }
}

/// Logs how a relay ended, once per connection.
pub(crate) fn log_relay_end(id: &ConnId, res: io::Result<crate::transport::Transferred>) {
    if let Ok(t) = &res {
        crate::metrics::get().add_bytes(t.a_to_b, t.b_to_a);
    }
    match res {
        Ok(t) => log::debug!(
            "{id}: closed ({} bytes up, {} bytes down)",
            t.a_to_b,
            t.b_to_a
        ),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => log::debug!("{id}: closed: {e}"),
        Err(e) => log::info!("{id}: tunnel ended: {e}"),
    }
}
