//! The server end of a yamux session: yields the client's streams, refusing (resetting) those
//! beyond the per-session limit without harming the others; closes a session that carries
//! no stream for too long; winds down on shutdown. Each yamux connection is driven by the one
//! task that takes its streams, as yamux requires.

use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::reset::Resets;
use super::{Transport, YamuxStream, config, mux_err, transport};
use crate::transport::io::BoxIo;
use crate::transport::mux::{BoxFuture, Counter, MuxStream, Quiet, ServerSession, Slot};

/// A server-side session: yields the client's streams.
pub struct YamuxSession {
    conn: yamux::Connection<Transport>,
    count: Arc<Counter>,
    pub(super) resets: Arc<Resets>,
    limit: usize,
    quiet: Quiet,
    /// Streams taken so far.
    carried: u64,
}

impl YamuxSession {
    /// Starts the server end of a session over an established tunnel connection whose round
    /// trip, where known, is `rtt`.
    pub fn server(io: BoxIo, limit: usize, quiet: Quiet, rtt: Option<Duration>) -> Self {
        crate::metrics::get().mux_sessions.inc();
        let resets = Arc::new(Resets::default());
        YamuxSession {
            conn: yamux::Connection::new(
                transport(io, resets.clone(), quiet.ping),
                config(rtt),
                yamux::Mode::Server,
            ),
            count: Arc::default(),
            resets,
            limit,
            quiet,
            carried: 0,
        }
    }

    /// The next stream within the limit; `None` when the session has ended. Keep calling it
    /// (or [`YamuxSession::finish`]) while streams are open: this is what moves every stream's
    /// bytes.
    /// A session quiet for longer than [`Quiet`] allows is closed and ends (`None`).
    pub async fn next(&mut self) -> Option<io::Result<MuxStream<YamuxStream>>> {
        let mut deadline: Option<Instant> = None;
        loop {
            if self.count.open.load(Ordering::Acquire) == 0 {
                let quiet = if self.carried == 0 {
                    self.quiet.first
                } else {
                    self.quiet.idle
                };
                deadline.get_or_insert_with(|| Instant::now() + quiet);
            } else {
                deadline = None;
            }
            let far = Instant::now() + Duration::from_secs(86400);
            let next = tokio::select! {
                next = poll_fn(|cx| self.conn.poll_next_inbound(cx)) => next,
                // The last stream ended: the quiet period starts now.
                _ = self.count.idle.notified() => continue,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    if self.count.open.load(Ordering::Acquire) > 0 {
                        continue;
                    }
                    let _ = poll_fn(|cx| self.conn.poll_close(cx)).await;
                    // Said once the close is on its way to the client, not before.
                    log::debug!(
                        "multiplexed session closed: no stream for {:?}",
                        if self.carried == 0 { self.quiet.first } else { self.quiet.idle }
                    );
                    return None;
                }
            };
            let stream = match next? {
                Ok(s) => s,
                Err(e) => return Some(Err(mux_err(e))),
            };
            if self.count.open.load(Ordering::Acquire) >= self.limit {
                // Dropping an open yamux stream resets it: this stream only is refused.
                log::info!(
                    "multiplexed stream refused: {} streams already open in this session (the limit)",
                    self.limit
                );
                continue;
            }
            self.count.open.fetch_add(1, Ordering::AcqRel);
            self.carried += 1;
            let slot = Slot::new(self.count.clone());
            let stream = YamuxStream::new(stream, self.resets.clone());
            return Some(Ok(MuxStream::new(stream, slot)));
        }
    }

    /// For shutdown: keeps the open streams moving and refuses new ones until the last one
    /// has ended, then closes the session, so the client opens its next streams elsewhere.
    pub async fn finish(mut self) {
        loop {
            if self.count.open.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                next = poll_fn(|cx| self.conn.poll_next_inbound(cx)) => match next {
                    // Reset: this server takes no new streams while it shuts down.
                    Some(Ok(refused)) => drop(refused),
                    Some(Err(_)) | None => return,
                },
                // A stream ended; the loop looks whether it was the last.
                _ = self.count.idle.notified() => {}
            }
        }
        let _ = poll_fn(|cx| self.conn.poll_close(cx)).await;
    }
}

impl Drop for YamuxSession {
    fn drop(&mut self) {
        crate::metrics::get().mux_sessions.dec();
    }
}

impl ServerSession for YamuxSession {
    fn next(&mut self) -> BoxFuture<'_, Option<io::Result<BoxIo>>> {
        Box::pin(async move {
            Some(
                YamuxSession::next(self)
                    .await?
                    .map(|s| Box::new(s) as BoxIo),
            )
        })
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(YamuxSession::finish(*self))
    }
}
