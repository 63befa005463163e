//! The client's pool of sessions, of whichever multiplexer: a new tunnel takes a stream on a
//! session with room, reserving its slot under one lock, so concurrent arrivals neither
//! overfill a session nor dial a session each; a session that is still being dialled takes
//! reservations too. An idle session is kept for a while to save the next handshake, then
//! closed. A session whose connection failed is dead at once and never given new streams.
//! One watch loop per session, the same for every multiplexer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::{ClientSession, Counter, MuxStream, Muxing, Slot};
use crate::error::Step;
use crate::transport::datagram::Kind;
use crate::transport::io::BoxIo;
use crate::{Error, Result};

/// The session once it is up, or why it failed.
type Ready = Result<Arc<dyn ClientSession>, Arc<Error>>;

/// A client session, as the pool keeps it.
struct Session {
    /// Becomes `Some` once the connection is up (the session) or failed.
    ready: watch::Receiver<Option<Ready>>,
    /// Streams open or reserved; changed under the pool lock when reserving.
    count: Arc<Counter>,
    dead: AtomicBool,
}

impl Session {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// Starts the client end of a session over a dialled connection.
pub type StartFn =
    Box<dyn Fn(Dialled) -> super::BoxFuture<'static, Result<Arc<dyn ClientSession>>> + Send + Sync>;

/// Opens one new tunnel connection for a session.
pub type DialFn =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Dialled>> + Send>> + Send + Sync>;

/// A connection dialled to the server.
pub struct Dialled {
    /// The connection, ready for the layer above.
    pub io: BoxIo,
    /// Whether the server agreed to multiplexing version 2 (streams open with a type byte;
    /// datagrams allowed).
    pub v2: bool,
    /// The round trip to the server, where measured (it sizes a session's windows).
    pub rtt: Option<Duration>,
}

/// The client's sessions.
pub struct MuxPool {
    sessions: Mutex<Vec<Arc<Session>>>,
    max_streams: usize,
    idle: Duration,
    start: StartFn,
    dial: DialFn,
}

impl MuxPool {
    /// A pool of sessions speaking `muxing` that carry at most `max_streams` streams and
    /// close after `idle` without any; `dial` makes each session's connection. Sessions with a
    /// keepalive send it every `ping` and are given up when a pinging server goes silent for
    /// two intervals.
    pub fn with_ping(
        max_streams: usize,
        idle: Duration,
        muxing: Muxing,
        ping: Option<Duration>,
        dial: DialFn,
    ) -> Arc<Self> {
        let start: StartFn = Box::new(move |dialled| {
            let client = muxing.client(dialled, ping);
            Box::pin(async move { Ok(client) })
        });
        Self::new(max_streams, idle, start, dial)
    }

    /// A pool of sessions that `start` starts over the connections `dial` makes, each
    /// carrying at most `max_streams` streams and closed after `idle` without any.
    pub fn new(max_streams: usize, idle: Duration, start: StartFn, dial: DialFn) -> Arc<Self> {
        Arc::new(MuxPool {
            sessions: Mutex::new(Vec::new()),
            max_streams: max_streams.max(1),
            idle,
            start,
            dial,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Session>>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new stream: on a session with room, else on a new session. A failed dial is the
    /// error of every stream that waited for it, cause and all.
    pub async fn open(self: &Arc<Self>, kind: Kind) -> Result<MuxStream> {
        // A session can die between the reservation and the open; then try once more, on a
        // session that is alive or a new one.
        let mut last = None;
        for _ in 0..2 {
            match self.try_open(kind).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::runtime("multiplexing: no session")))
    }

    async fn try_open(self: &Arc<Self>, kind: Kind) -> Result<MuxStream> {
        let mut announce = None;
        let (session, fresh) = {
            let mut list = self.lock();
            list.retain(|s| !s.is_dead());
            let found = list
                .iter()
                .find(|s| s.count.open.load(Ordering::Acquire) < self.max_streams)
                .cloned();
            match found {
                Some(s) => {
                    s.count.open.fetch_add(1, Ordering::AcqRel);
                    (s, false)
                }
                None => {
                    let (ready_tx, ready) = watch::channel(None);
                    announce = Some(ready_tx);
                    let s = Arc::new(Session {
                        ready,
                        count: Arc::new(Counter {
                            open: AtomicUsize::new(1),
                            idle: Notify::new(),
                        }),
                        dead: AtomicBool::new(false),
                    });
                    list.push(s.clone());
                    (s, true)
                }
            }
        };
        // From here the slot is ours; the guard gives it back on every early return.
        let slot = Slot::new(session.count.clone());
        if let (true, Some(ready_tx)) = (fresh, announce) {
            let pool = self.clone();
            let s = session.clone();
            tokio::spawn(async move { pool.connect(s, ready_tx).await });
        }
        let mut ready = session.ready.clone();
        let state = ready
            .wait_for(Option::is_some)
            .await
            .map(|v| v.clone())
            .unwrap_or(None);
        let client = match state {
            Some(Ok(client)) => client,
            Some(Err(e)) => return Err(Error::Shared(e)),
            None => {
                let e = io::Error::new(io::ErrorKind::ConnectionAborted, "session closed");
                return Err(Error::tunnel(Step::Mux, "server", e));
            }
        };
        match client.open(kind).await {
            Ok(io) => Ok(MuxStream::new(io, slot)),
            Err(e) => {
                // A session that cannot open a stream takes no more (a refusal of UDP by its
                // kind of multiplexing is no fault of the session's).
                if !matches!(
                    &e,
                    Error::Tunnel {
                        step: Step::Udp,
                        ..
                    }
                ) {
                    session.dead.store(true, Ordering::Release);
                }
                Err(e)
            }
        }
    }

    /// Dials the session's connection, starts the session, and watches it until it ends:
    /// closes it after the idle period, or notes that the server closed it.
    async fn connect(self: Arc<Self>, session: Arc<Session>, ready: watch::Sender<Option<Ready>>) {
        let dialled = match (self.dial)().await {
            Ok(x) => x,
            Err(e) => {
                session.dead.store(true, Ordering::Release);
                let _ = ready.send(Some(Err(Arc::new(e))));
                return;
            }
        };
        let client = match (self.start)(dialled).await {
            Ok(c) => c,
            Err(e) => {
                session.dead.store(true, Ordering::Release);
                let _ = ready.send(Some(Err(Arc::new(e))));
                return;
            }
        };
        let _ = ready.send(Some(Ok(client.clone())));
        let idle = watch_idle(client.as_ref(), &session, &self).await;
        session.dead.store(true, Ordering::Release);
        if idle {
            log::debug!("multiplexed session closed after {:?} idle", self.idle);
        }
    }

    /// Marks `session` dead if it has no streams, under the lock that reservations take.
    fn retire_if_idle(&self, session: &Session) -> bool {
        let _list = self.lock();
        if session.count.open.load(Ordering::Acquire) == 0 {
            session.dead.store(true, Ordering::Release);
            true
        } else {
            false
        }
    }
}

/// Watches a client session: closes it after the idle period (`true`), or returns when it
/// has ended otherwise (`false`).
async fn watch_idle(client: &dyn ClientSession, session: &Session, pool: &MuxPool) -> bool {
    let mut idle_at: Option<tokio::time::Instant> = None;
    let closed = client.closed();
    tokio::pin!(closed);
    loop {
        if idle_at.is_none() && session.count.open.load(Ordering::Acquire) == 0 {
            idle_at = Some(tokio::time::Instant::now() + pool.idle);
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86400);
        tokio::select! {
            _ = &mut closed => return false,
            // The last stream went away: the idle period starts (at the top of the loop).
            _ = session.count.idle.notified() => {
                if session.count.open.load(Ordering::Acquire) > 0 {
                    idle_at = None;
                }
            }
            _ = tokio::time::sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                if pool.retire_if_idle(session) {
                    client.close();
                    return true;
                }
                idle_at = None;
            }
        }
    }
}
