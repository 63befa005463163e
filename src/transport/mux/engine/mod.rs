//! The session engine of the multiplexers without per-stream flow control (smux version 1,
//! the original's; Mux.Cool, v2ray's): streams over one connection, their frames told apart
//! by a [`Wire`] of each multiplexer's own. Without flow control one reader that falls behind
//! would stall every stream of the session for as long as it likes (the original's bug B10).
//! Here each stream may hold a share of unread data, charged in bytes of memory ([`rx`]), and
//! a stream that falls behind may borrow beyond it from the session's spare room, so a burst
//! to a slow destination costs its siblings nothing. Once that room is spent too, the session
//! waits for the reader of the stream past its share (a slow destination slows the sender,
//! as TCP would), but only for a bounded time: a stream whose reader does not give back
//! enough in that time is closed alone (one log line) and the session reads on. A session
//! holds at most `max_streams × hold + spare`, plus one frame.
//!
//! Three tasks drive a session: a reader that hands each frame to its stream, a writer that
//! sends what the streams queue (several frames per write), and the keepalive.

mod rx;
mod session;
mod stream;
mod wire;

pub use session::{ClientEnd, ServerEnd};
pub use stream::Stream;
pub use wire::{Body, Event, Frame, HEAD, Wire, read_body};

use std::collections::{HashMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender};

use crate::transport::datagram::{self, Kind};
use crate::transport::io::BoxIo;
pub use rx::SMALL;
use rx::{Overdraft, Rx};

/// Keepalive and limits of a session.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A NOP goes out this often.
    pub keepalive: Duration,
    /// A session that receives no frame for this long is closed (`Duration::MAX`: never, for
    /// peers that send no keepalive).
    pub dead_after: Duration,
    /// Streams open at once; a server refuses (FIN) more, each alone.
    pub max_streams: usize,
    /// Unread bytes one stream may hold as its own share.
    pub hold: usize,
    /// Unread bytes the streams of a session may hold beyond their shares, in total, before
    /// the session waits for the reader of a stream over its share.
    pub spare: usize,
    /// How long the session waits for such a reader before closing its stream.
    pub stall: Duration,
}

/// Bytes the writer gathers into one write to the connection.
const WRITE_BATCH: usize = 256 * 1024;
/// Frames waiting for the writer; a stream's write waits while the queue is full.
const QUEUE: usize = 64;
/// Empty data frames a session may send before it is closed: a real peer sends none.
pub(crate) const EMPTY_FRAMES: u32 = 1024;

/// What the session's tasks and streams share.
struct Shared<W> {
    streams: Mutex<HashMap<u32, Arc<Rx>>>,
    out: mpsc::Sender<Frame>,
    closed: CancellationToken,
    /// A stream ended (the session may have become idle).
    idle: Notify,
    cfg: Config,
    /// The last stream id this side opened.
    last_id: AtomicU32,
    /// New streams are refused (the server is shutting down).
    refusing: AtomicBool,
    /// Milliseconds since `start` when the last frame arrived.
    last_rx: AtomicU64,
    /// Streams that ended lately, for a FIN said again.
    ended: Mutex<Ended>,
    /// What the streams hold beyond their shares.
    overdraft: Arc<Overdraft>,
    start: Instant,
    wire: PhantomData<W>,
}

impl<W: Wire> Shared<W> {
    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Arc<Rx>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_streams(&self) -> usize {
        self.streams().len()
    }

    /// A new stream `sid` carrying `kind`; `counted` ones are in the open-streams gauge (a
    /// client's pool counts its own); a server's begin with their type byte if the wire says
    /// so.
    fn register(self: &Arc<Self>, sid: u32, kind: Kind, counted: bool) -> Stream<W> {
        let rx = Arc::new(Rx::new(kind == Kind::Datagrams, self.overdraft.clone()));
        if counted && W::TYPED {
            rx.push_raw(&[match kind {
                Kind::Stream => datagram::STREAM_TCP,
                Kind::Datagrams => datagram::STREAM_UDP,
            }]);
        }
        self.streams().insert(sid, rx.clone());
        if counted {
            crate::metrics::get().mux_streams.inc();
        }
        Stream::new(
            sid,
            rx,
            self.clone(),
            PollSender::new(self.out.clone()),
            counted,
        )
    }

    /// Forgets `sid` if it is still `rx`'s; wakes whoever waits for the session to go idle.
    fn forget(&self, sid: u32, rx: &Arc<Rx>) {
        let mut streams = self.streams();
        let gone = streams.get(&sid).is_some_and(|r| Arc::ptr_eq(r, rx));
        if gone {
            streams.remove(&sid);
        }
        drop(streams);
        if gone {
            self.ended().add(sid);
        }
        self.idle.notify_one();
    }

    fn ended(&self) -> MutexGuard<'_, Ended> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses the peer's stream `sid`, remembering it.
    async fn refuse(&self, sid: u32) {
        self.ended().add(sid);
        self.send(W::refuse(sid)).await;
    }

    fn touch(&self) {
        self.last_rx
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Queues a frame, waiting for room; `false` once the session is closed.
    async fn send(&self, frame: Frame) -> bool {
        tokio::select! {
            r = self.out.send(frame) => r.is_ok(),
            _ = self.closed.cancelled() => false,
        }
    }
}

/// Starts the tasks of a session over `io`; `accept` (servers) receives the peer's streams.
fn start<W: Wire>(
    io: BoxIo,
    cfg: Config,
    accept: Option<mpsc::Sender<Stream<W>>>,
) -> Arc<Shared<W>> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        streams: Mutex::default(),
        out: tx,
        closed: CancellationToken::new(),
        idle: Notify::new(),
        cfg,
        last_id: AtomicU32::new(W::FIRST_ID.wrapping_sub(W::ID_STEP)),
        refusing: AtomicBool::new(false),
        last_rx: AtomicU64::new(0),
        ended: Mutex::default(),
        overdraft: Arc::new(Overdraft::new(cfg.hold)),
        start: Instant::now(),
        wire: PhantomData,
    });
    crate::metrics::get().mux_sessions.inc();
    W::count(true);
    let (r, w) = tokio::io::split(io);
    tokio::spawn(write_loop(w, rx, shared.closed.clone()));
    tokio::spawn(keepalive(shared.clone()));
    let reader = shared.clone();
    tokio::spawn(async move {
        let ended = tokio::select! {
            r = read_loop(r, &reader, accept) => r,
            _ = reader.closed.cancelled() => Ok(()),
        };
        reader.closed.cancel();
        match ended {
            Ok(()) => log::debug!("{} session closed", W::NAME),
            Err(e) => match crate::transport::relay::plain_ending(&e) {
                Some(why) => log::debug!("{} session ended: {why}", W::NAME),
                None => log::info!("{} session ended: {e}", W::NAME),
            },
        }
        let streams: Vec<Arc<Rx>> = reader.streams().drain().map(|(_, rx)| rx).collect();
        for rx in streams {
            rx.end(false, Some("the multiplexed session ended"));
        }
        reader.idle.notify_one();
        crate::metrics::get().mux_sessions.dec();
        W::count(false);
    });
    shared
}

/// Reads frames until the connection ends (`Ok` between frames) or a frame is bad.
async fn read_loop<W: Wire>(
    mut r: ReadHalf<BoxIo>,
    shared: &Arc<Shared<W>>,
    accept: Option<mpsc::Sender<Stream<W>>>,
) -> io::Result<()> {
    let mut small = [0u8; SMALL];
    let mut empty = 0u32;
    loop {
        let Some(event) = W::read(&mut r, &mut small).await? else {
            return Ok(());
        };
        shared.touch();
        let (sid, body) = match event {
            Event::Nop => continue,
            Event::Close { sid } => {
                let rx = shared.streams().get(&sid).cloned();
                if let Some(rx) = rx {
                    rx.end(true, None);
                }
                continue;
            }
            Event::Open { sid, kind, body } => {
                let Some(accept) = accept.as_ref() else {
                    // A client takes no streams from its server.
                    shared.refuse(sid).await;
                    continue;
                };
                let (known, open) = {
                    let s = shared.streams();
                    (s.contains_key(&sid), s.len())
                };
                if known {
                    continue;
                }
                if shared.refusing.load(Ordering::Acquire) {
                    shared.refuse(sid).await;
                    continue;
                }
                if open >= shared.cfg.max_streams {
                    log::info!(
                        "multiplexed stream refused: {open} streams already open in this session (the limit)"
                    );
                    shared.refuse(sid).await;
                    continue;
                }
                let stream = shared.register(sid, kind, true);
                if accept.send(stream).await.is_err() {
                    return Ok(());
                }
                if body.len() == 0 {
                    continue;
                }
                (sid, body)
            }
            Event::Data { sid, body } if body.len() == 0 => {
                // Real peers send none (xtaci/smux ignores those it gets; so do we, up to a
                // point): a flood of them is a peer wasting our time.
                let _ = sid;
                empty += 1;
                if empty > EMPTY_FRAMES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "more than {EMPTY_FRAMES} empty data frames (no {} peer sends them)",
                            W::NAME
                        ),
                    ));
                }
                continue;
            }
            Event::Data { sid, body } => (sid, body),
        };
        let rx = shared.streams().get(&sid).cloned();
        let Some(rx) = rx else {
            if shared.ended().take(sid) {
                // Data on a stream that ended here: its peer may have missed the close. Say
                // it again, now that the peer's stream certainly exists.
                shared.send(W::close(sid)).await;
            }
            continue;
        };
        let cfg = shared.cfg;
        let held = match body {
            Body::Owned(b) => rx.push_owned(b),
            Body::Small(n) => rx.push_copy(&small[..n]),
            Body::None => continue,
        };
        let over = shared.overdraft.over();
        if held <= cfg.hold || over <= cfg.spare {
            continue;
        }
        // This stream is past its share and the session's spare room is spent: it gives
        // back the session's excess and half a share before the session reads on.
        let to = held
            .saturating_sub(over - cfg.spare + cfg.hold / 2)
            .max(cfg.hold / 2);
        if !rx.drain_to(to, cfg.stall).await {
            log::info!(
                "multiplexed stream {sid}: closed: {} KiB waiting and too little taken for {:?} ({} has no per-stream flow control; the other streams go on)",
                held / 1024,
                cfg.stall,
                W::NAME
            );
            rx.kill("closed: its reader took nothing for too long");
            shared.forget(sid, &rx);
            if !rx.fin_sent.swap(true, Ordering::AcqRel) {
                shared.send(W::refuse(sid)).await;
            }
        }
    }
}

/// The streams of a session that ended lately (refused, or closed here), whose FIN may have
/// gone unheard: xtaci/smux adds a stream it opens to its table only after its SYN is written,
/// so a FIN that comes back quickly enough (a refusal, a destination that cannot be reached)
/// finds no stream and is dropped, and that stream would wait for ever. The first data frame
/// on such a stream proves the peer has it now; it gets its FIN again, once.
#[derive(Default)]
struct Ended(VecDeque<u32>);

impl Ended {
    /// Remembered at most; a peer that sends on older ones gets no repeat for them.
    const KEEP: usize = 64;

    fn add(&mut self, sid: u32) {
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back(sid);
    }

    /// Whether `sid` was remembered (and is forgotten now).
    fn take(&mut self, sid: u32) -> bool {
        match self.0.iter().position(|&s| s == sid) {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }
}

/// Sends queued frames, several per write, until the session closes; then what is still
/// queued (FINs), and closes the connection.
async fn write_loop(
    mut w: WriteHalf<BoxIo>,
    mut rx: mpsc::Receiver<Frame>,
    closed: CancellationToken,
) {
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    let push = |buf: &mut Vec<u8>, f: Frame| {
        let (head, body) = f.parts();
        buf.extend_from_slice(head);
        buf.extend_from_slice(body);
    };
    loop {
        let f = tokio::select! {
            f = rx.recv() => f,
            _ = closed.cancelled() => None,
        };
        let Some(f) = f else { break };
        push(&mut buf, f);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => push(&mut buf, f),
                Err(_) => break,
            }
        }
        let wrote = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        if let Err(e) = wrote.await {
            log::debug!("multiplexed session: write failed: {e}");
            closed.cancel();
            return;
        }
        buf.clear();
    }
    closed.cancel();
    while let Ok(f) = rx.try_recv() {
        push(&mut buf, f);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        w.write_all(&buf).await?;
        w.shutdown().await
    })
    .await;
}

/// Sends a keepalive every `keepalive`; closes a session that heard nothing for `dead_after`.
async fn keepalive<W: Wire>(shared: Arc<Shared<W>>) {
    let cfg = shared.cfg;
    let check = cfg
        .keepalive
        .min(cfg.dead_after / 2)
        .max(Duration::from_millis(10));
    let mut next_nop = Instant::now() + cfg.keepalive;
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = tokio::time::sleep(check) => {}
        }
        if Instant::now() >= next_nop {
            // A full queue is a busy session: no keepalive needed.
            let _ = shared.out.try_send(W::keepalive());
            next_nop = Instant::now() + cfg.keepalive;
        }
        let last = Duration::from_millis(shared.last_rx.load(Ordering::Relaxed));
        if last
            .checked_add(cfg.dead_after)
            .is_some_and(|dead| shared.start.elapsed() > dead)
        {
            log::info!(
                "{} session closed: nothing from the peer for {:?}",
                W::NAME,
                cfg.dead_after
            );
            shared.closed.cancel();
            return;
        }
    }
}
