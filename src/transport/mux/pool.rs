//! The client's pool of sessions (yamux, or smux for the original's servers): a new tunnel
//! takes a stream on a session with room,
//! reserving its slot under one lock, so concurrent arrivals neither overfill a session nor
//! dial a session each; a session that is still being dialled takes reservations too. An
//! idle session is kept for a while to save the next handshake, then closed. A session whose
//! connection failed is dead at once and never given new streams. Each yamux connection is
//! driven by exactly one task, as yamux requires.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use super::reset::Resets;
use super::smux::{self, SmuxClient};
use super::{Counter, MuxStream, Muxing, Slot, Transport, config, mux_err, transport};
use crate::error::Step;
use crate::transport::datagram::{self, Kind};
use crate::transport::io::BoxIo;
use crate::{Error, Result};
use tokio::sync::{Notify, mpsc, oneshot, watch};

type OpenReply = oneshot::Sender<io::Result<yamux::Stream>>;
/// How streams are opened on a session that is up, or why it failed.
type Ready = Result<Opener, Arc<Error>>;

/// How to open a stream on a session.
#[derive(Clone)]
enum Opener {
    /// Ask the yamux driver; whether the session is of version 2.
    Yamux(mpsc::UnboundedSender<OpenReply>, bool),
    /// Open it directly.
    Smux(Arc<SmuxClient>),
}

/// A client session: its driver task owns the yamux connection.
struct Session {
    /// Becomes `Some` once the connection is up (the driver's request channel) or failed.
    ready: watch::Receiver<Option<Ready>>,
    /// Streams open or reserved; changed under the pool lock when reserving.
    count: Arc<Counter>,
    /// Resets the session's writer owes for dropped streams.
    resets: Arc<Resets>,
    dead: AtomicBool,
}

impl Session {
    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

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
    muxing: Muxing,
    /// Keepalive of yamux sessions (`-ping`).
    ping: Option<Duration>,
    dial: DialFn,
}

impl MuxPool {
    /// A pool of sessions speaking `muxing` that carry at most `max_streams` streams and
    /// close after `idle` without any; `dial` makes each session's connection.
    pub fn new(max_streams: usize, idle: Duration, muxing: Muxing, dial: DialFn) -> Arc<Self> {
        Self::with_ping(max_streams, idle, muxing, None, dial)
    }

    /// [`MuxPool::new`] whose yamux sessions send keepalive frames every `ping` and are given
    /// up when a pinging server goes silent for two intervals.
    pub fn with_ping(
        max_streams: usize,
        idle: Duration,
        muxing: Muxing,
        ping: Option<Duration>,
        dial: DialFn,
    ) -> Arc<Self> {
        Arc::new(MuxPool {
            sessions: Mutex::new(Vec::new()),
            max_streams: max_streams.max(1),
            idle,
            muxing,
            ping,
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
        Err(last.unwrap_or_else(|| Error::Runtime("multiplexing: no session".into())))
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
                        resets: Arc::default(),
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
        let closed = || {
            let e = io::Error::new(io::ErrorKind::ConnectionAborted, "session closed");
            Error::tunnel(Step::Mux, "server", e)
        };
        let (tx, v2) = match state {
            Some(Ok(Opener::Yamux(tx, v2))) => (tx, v2),
            Some(Ok(Opener::Smux(client))) => {
                if kind == Kind::Datagrams {
                    let e = io::Error::new(
                        io::ErrorKind::Unsupported,
                        "smux (-mux-proto smux, the original's multiplexing) carries no UDP",
                    );
                    return Err(Error::tunnel(Step::Udp, "server", e));
                }
                let stream = client.open().await.map_err(|e| {
                    session.dead.store(true, Ordering::Release);
                    Error::tunnel(Step::Mux, "server", e)
                })?;
                return Ok(MuxStream::smux(stream, slot));
            }
            Some(Err(e)) => return Err(Error::Shared(e)),
            None => return Err(closed()),
        };
        let (reply, answer) = oneshot::channel();
        if tx.send(reply).is_err() {
            session.dead.store(true, Ordering::Release);
            return Err(closed());
        }
        let stream = answer
            .await
            .map_err(|_| closed())?
            .map_err(|e| Error::tunnel(Step::Mux, "server", e))?;
        let mut stream = MuxStream::new(stream, session.resets.clone(), slot);
        // yamux announces a stream with its first frame; this first write sends that frame
        // now, so the server dials the destination even if the application waits for it to
        // speak first (SMTP, SSH banners). In a version-2 session it is the stream's type.
        let first: &[u8] = match (v2, kind) {
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
        stream
            .announce(first)
            .await
            .map_err(|e| Error::tunnel(Step::Mux, "server", e))?;
        Ok(stream)
    }

    /// Dials the session's connection and drives it until it ends.
    async fn connect(self: Arc<Self>, session: Arc<Session>, ready: watch::Sender<Option<Ready>>) {
        let Dialled { io, v2, rtt } = match (self.dial)().await {
            Ok(x) => x,
            Err(e) => {
                session.dead.store(true, Ordering::Release);
                let _ = ready.send(Some(Err(Arc::new(e))));
                return;
            }
        };
        if self.muxing == Muxing::Smux {
            let client = Arc::new(SmuxClient::new(io, smux::DEFAULT));
            let _ = ready.send(Some(Ok(Opener::Smux(client.clone()))));
            let ended = drive_smux(&client, &session, &self).await;
            session.dead.store(true, Ordering::Release);
            match ended {
                Ok(()) => log::debug!("smux session closed after {:?} idle", self.idle),
                Err(e) => log::debug!("smux session ended: {e}"),
            }
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = ready.send(Some(Ok(Opener::Yamux(tx, v2))));
        let transport = transport(io, session.resets.clone(), self.ping);
        let conn = yamux::Connection::new(transport, config(rtt), yamux::Mode::Client);
        let m = crate::metrics::get();
        m.mux_sessions.inc();
        let ended = drive(conn, rx, &session, &self).await;
        m.mux_sessions.dec();
        session.dead.store(true, Ordering::Release);
        match ended {
            Ok(()) => log::debug!("multiplexed session closed after {:?} idle", self.idle),
            Err(e) => log::debug!("multiplexed session ended: {e}"),
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

/// Watches a client smux session: closes it after the idle period, or notes that the server
/// closed it.
async fn drive_smux(client: &SmuxClient, session: &Session, pool: &MuxPool) -> io::Result<()> {
    let mut idle_at: Option<tokio::time::Instant> = None;
    loop {
        if idle_at.is_none() && session.count.open.load(Ordering::Acquire) == 0 {
            idle_at = Some(tokio::time::Instant::now() + pool.idle);
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86400);
        tokio::select! {
            _ = client.closed() => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "closed by the server"));
            }
            // The last stream went away: the idle period starts (at the top of the loop).
            _ = session.count.idle.notified() => {
                if session.count.open.load(Ordering::Acquire) > 0 {
                    idle_at = None;
                }
            }
            _ = tokio::time::sleep_until(idle_at.unwrap_or(far)), if idle_at.is_some() => {
                if pool.retire_if_idle(session) {
                    client.close();
                    return Ok(());
                }
                idle_at = None;
            }
        }
    }
}

/// The single task that owns a client connection: opens requested streams, keeps the
/// connection moving, and closes it after the idle period.
async fn drive(
    mut conn: yamux::Connection<Transport>,
    mut requests: mpsc::UnboundedReceiver<OpenReply>,
    session: &Session,
    pool: &MuxPool,
) -> io::Result<()> {
    let mut waiting: std::collections::VecDeque<OpenReply> = Default::default();
    let idle = tokio::time::sleep(pool.idle);
    tokio::pin!(idle);
    let mut idle_armed = false;
    loop {
        // Lives for the whole wait, so the last stream's end wakes this task even when nothing
        // else happens on the connection (a stream's yamux part may go before its slot does).
        let notified = session.count.idle.notified();
        tokio::pin!(notified);
        let event = poll_fn(|cx| {
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
            if notified.as_mut().poll(cx).is_ready()
                || (!idle_armed && session.count.open.load(Ordering::Acquire) == 0)
            {
                return Poll::Ready(Ok(true));
            }
            if idle_armed && idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(false));
            }
            Poll::Pending
        })
        .await;
        match event {
            Err(why) => {
                // Each waiter gets the same kind and words; io::Error itself cannot be shared.
                for r in waiting.drain(..) {
                    let _ = r.send(Err(io::Error::new(why.kind(), why.to_string())));
                }
                return Err(why);
            }
            // The last stream went away (or none came yet): start the idle period.
            Ok(true) => {
                if session.count.open.load(Ordering::Acquire) == 0 {
                    idle.as_mut().reset(tokio::time::Instant::now() + pool.idle);
                    idle_armed = true;
                }
            }
            Ok(false) => {
                if pool.retire_if_idle(session) {
                    let _ = poll_fn(|cx| conn.poll_close(cx)).await;
                    return Ok(());
                }
                idle_armed = false;
            }
        }
    }
}
