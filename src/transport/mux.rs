//! Layer 4, multiplexing (yamux): many tunnels as streams of one TLS or WebSocket connection.
//!
//! The client keeps a [`MuxPool`] of sessions: a new tunnel takes a stream on a session with
//! room, reserving its slot under one lock, so concurrent arrivals neither overfill a session
//! nor dial a session each; a session that is still being dialled takes reservations too. An
//! idle session is kept for a while to save the next handshake, then closed. A session whose
//! connection failed is dead at once and never given new streams.
//!
//! The server turns each connection into a [`MuxSession`] and takes its streams one by one,
//! refusing (resetting) streams beyond the per-session limit without harming the others.
//! Each yamux connection is driven by exactly one task, as yamux requires.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::io::{BoxIo, Coalesce};

/// Streams one server session carries at once (the original's limit); more are refused.
pub const MAX_STREAMS_PER_SESSION: usize = 16;
/// How long a client keeps a session without streams before closing it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(10);

/// Streams yamux keeps per connection: room for streams that are closing but not yet
/// collected (the limit of live streams is [`MAX_STREAMS_PER_SESSION`], enforced by us).
const YAMUX_STREAMS: usize = 256;
/// yamux guarantees each stream a 256 KiB receive window out of the connection's.
const YAMUX_MIN_WINDOW: usize = 256 * 1024;
/// What a busy stream's window may grow by (yamux doubles it while the sender uses it up
/// within two round trips). Without room above the guaranteed windows, every stream stays at
/// 256 KiB and a fast sender stops for a window update every 256 KiB: measured, that alone
/// held single-stream throughput to about half of plain TLS.
const YAMUX_WINDOW_GROWTH: usize = 32 * 1024 * 1024;

/// yamux settings shared by both ends.
fn config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(YAMUX_STREAMS);
    c.set_max_connection_receive_window(Some(
        YAMUX_STREAMS * YAMUX_MIN_WINDOW + YAMUX_WINDOW_GROWTH,
    ));
    c.set_split_send_size(SPLIT_SEND);
    c
}

/// What a yamux connection runs over: yamux writes each frame's 12-byte header and its body
/// separately, and every write to TLS becomes a record and a syscall; [`Coalesce`] joins them.
type Transport = Compat<Coalesce<BoxIo>>;

fn transport(io: BoxIo) -> Transport {
    Coalesce::new(io).compat()
}

/// Largest data frame yamux sends. A new stream's window is 256 KiB and yamux doubles it only
/// when half of it is used within two of its sampled round trips, which on a fast link it
/// often is not: a 256 KiB frame then fills the whole window and each one waits for the
/// window update of the last (single-stream mux swung between 0.55× and 1.0× of plain TLS
/// from run to run). 64 KiB frames keep four in flight and the update arrives before the
/// sender runs dry: measured with iperf3 through separate processes, 0.9–1.05× every run, at
/// the same CPU per GiB; 16 KiB frames cost more writes to TLS, each one a syscall.
const SPLIT_SEND: usize = 64 * 1024;

fn mux_err(e: yamux::ConnectionError) -> io::Error {
    match e {
        yamux::ConnectionError::Io(e) => e,
        other => io::Error::other(format!("multiplexing: {other}")),
    }
}

/// One stream of a session, as a tokio byte stream. Dropping it releases its slot.
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    _slot: Slot,
}

/// A reserved place in a session; freeing it may start the session's idle timer.
struct Slot {
    count: Arc<Counter>,
}

/// Live streams of a session, with a wake-up for the task that watches it go idle.
#[derive(Default)]
struct Counter {
    open: AtomicUsize,
    idle: Notify,
}

impl Slot {
    fn new(count: Arc<Counter>) -> Self {
        crate::metrics::get().mux_streams.inc();
        Slot { count }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::get().mux_streams.dec();
        if self.count.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.count.idle.notify_one();
        }
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // yamux FIN: our side is done, the peer may still send (half-close).
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------
// Server side.

/// A server-side session: yields the client's streams.
pub struct MuxSession {
    conn: yamux::Connection<Transport>,
    count: Arc<Counter>,
    limit: usize,
    refused: u64,
}

impl MuxSession {
    /// Starts the server end of a session over an established tunnel connection.
    pub fn server(io: BoxIo, limit: usize) -> Self {
        crate::metrics::get().mux_sessions.inc();
        MuxSession {
            conn: yamux::Connection::new(transport(io), config(), yamux::Mode::Server),
            count: Arc::default(),
            limit,
            refused: 0,
        }
    }

    /// The next stream within the limit; `None` when the session has ended. Keep calling it
    /// while streams are open: this is what moves every stream's bytes.
    pub async fn next(&mut self) -> Option<io::Result<MuxStream>> {
        loop {
            let stream = match poll_fn(|cx| self.conn.poll_next_inbound(cx)).await? {
                Ok(s) => s,
                Err(e) => return Some(Err(mux_err(e))),
            };
            if self.count.open.load(Ordering::Acquire) >= self.limit {
                // Dropping an open yamux stream resets it: this stream only is refused.
                self.refused += 1;
                log::info!(
                    "multiplexed stream refused: {} streams already open in this session (limit {})",
                    self.limit,
                    self.limit
                );
                continue;
            }
            self.count.open.fetch_add(1, Ordering::AcqRel);
            return Some(Ok(MuxStream {
                inner: stream.compat(),
                _slot: Slot::new(self.count.clone()),
            }));
        }
    }

    /// Streams refused so far for the limit.
    pub fn refused(&self) -> u64 {
        self.refused
    }
}

impl Drop for MuxSession {
    fn drop(&mut self) {
        crate::metrics::get().mux_sessions.dec();
    }
}

// ---------------------------------------------------------------------------------------
// Client side.

type OpenReply = oneshot::Sender<io::Result<yamux::Stream>>;
type Ready = Result<mpsc::UnboundedSender<OpenReply>, String>;

/// A client session: its driver task owns the yamux connection.
struct Session {
    /// Becomes `Some` once the connection is up (the driver's request channel) or failed.
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

/// Opens one new tunnel connection for a session.
pub type DialFn =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>> + Send + Sync>;

/// The client's sessions.
pub struct MuxPool {
    sessions: Mutex<Vec<Arc<Session>>>,
    max_streams: usize,
    idle: Duration,
    dial: DialFn,
}

impl MuxPool {
    /// A pool whose sessions carry at most `max_streams` streams and close after `idle`
    /// without any; `dial` makes each session's connection.
    pub fn new(max_streams: usize, idle: Duration, dial: DialFn) -> Arc<Self> {
        Arc::new(MuxPool {
            sessions: Mutex::new(Vec::new()),
            max_streams: max_streams.max(1),
            idle,
            dial,
        })
    }

    /// Sessions alive or being dialled (for tests and metrics).
    pub fn sessions(&self) -> usize {
        self.lock().iter().filter(|s| !s.is_dead()).count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Session>>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new stream: on a session with room, else on a new session.
    pub async fn open(self: &Arc<Self>) -> io::Result<MuxStream> {
        // A session can die between the reservation and the open; then try once more, on a
        // session that is alive or a new one.
        let mut last = None;
        for _ in 0..2 {
            match self.try_open().await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("multiplexing: no session")))
    }

    async fn try_open(self: &Arc<Self>) -> io::Result<MuxStream> {
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
        let tx = match state {
            Some(Ok(tx)) => tx,
            Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::ConnectionRefused, e)),
            None => return Err(io::Error::other("multiplexed session failed to start")),
        };
        let (reply, answer) = oneshot::channel();
        if tx.send(reply).is_err() {
            session.dead.store(true, Ordering::Release);
            return Err(io::Error::other("multiplexed session closed"));
        }
        let stream = answer
            .await
            .map_err(|_| io::Error::other("multiplexed session closed"))??;
        let mut inner = stream.compat();
        // yamux announces a stream with its first frame; an empty write sends that frame now,
        // so the server dials the destination even if the application waits for it to speak
        // first (SMTP, SSH banners).
        tokio::io::AsyncWriteExt::write(&mut inner, &[]).await?;
        Ok(MuxStream { inner, _slot: slot })
    }

    /// Dials the session's connection and drives it until it ends.
    async fn connect(self: Arc<Self>, session: Arc<Session>, ready: watch::Sender<Option<Ready>>) {
        let io = match (self.dial)().await {
            Ok(io) => io,
            Err(e) => {
                session.dead.store(true, Ordering::Release);
                let _ = ready.send(Some(Err(e.to_string())));
                return;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = ready.send(Some(Ok(tx)));
        let conn = yamux::Connection::new(transport(io), config(), yamux::Mode::Client);
        let m = crate::metrics::get();
        m.mux_sessions.inc();
        let why = drive(conn, rx, &session, &self).await;
        m.mux_sessions.dec();
        session.dead.store(true, Ordering::Release);
        log::debug!("multiplexed session ended: {why}");
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

/// The single task that owns a client connection: opens requested streams, keeps the
/// connection moving, and closes it after the idle period.
async fn drive(
    mut conn: yamux::Connection<Transport>,
    mut requests: mpsc::UnboundedReceiver<OpenReply>,
    session: &Session,
    pool: &MuxPool,
) -> String {
    let mut waiting: std::collections::VecDeque<OpenReply> = Default::default();
    let idle = tokio::time::sleep(pool.idle);
    tokio::pin!(idle);
    let mut idle_armed = false;
    loop {
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
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.to_string())),
                    Poll::Pending => break,
                }
            }
            match conn.poll_next_inbound(cx) {
                // A client accepts no streams: dropping resets it.
                Poll::Ready(Some(Ok(_))) => cx.waker().wake_by_ref(),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.to_string())),
                Poll::Ready(None) => return Poll::Ready(Err("closed by the server".into())),
                Poll::Pending => {}
            }
            let notified = session.count.idle.notified();
            tokio::pin!(notified);
            if notified.poll(cx).is_ready()
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
                for r in waiting.drain(..) {
                    let _ = r.send(Err(io::Error::other(format!("multiplexed session: {why}"))));
                }
                return why;
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
                    return format!("idle for {:?}", pool.idle);
                }
                idle_armed = false;
            }
        }
    }
}
