//! smux version 1 sessions, the original's multiplexing: streams over one connection, with
//! its keepalive (a NOP every 30 s; a session that hears nothing for 70 s is over). Version 1
//! has no per-stream flow control, so one reader that falls behind would stall every stream
//! of the session for as long as it likes (the original's bug B10). Here each stream may hold
//! a bounded amount of unread data; beyond it the session waits for that stream's reader to
//! catch up (a slow destination slows the sender, as TCP would), but only for a bounded time:
//! a stream whose reader takes nothing for that long is closed alone (FIN, one log line) and
//! the session reads on.
//!
//! Three tasks drive a session: a reader that hands each frame to its stream, a writer that
//! sends what the streams queue (several frames per write), and the keepalive.

pub mod frame;
mod rx;
mod session;
mod stream;

pub use session::{SmuxClient, SmuxSession};
pub use stream::SmuxStream;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender};

use crate::transport::io::BoxIo;
use frame::{Cmd, HEADER, Header};
use rx::Rx;

/// The WebSocket subprotocol of an original client that multiplexes.
pub const SUBPROTOCOL: &str = "smux_on";

/// Keepalive and limits of a session.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// A NOP goes out this often.
    pub keepalive: Duration,
    /// A session that receives no frame for this long is closed.
    pub dead_after: Duration,
    /// Streams open at once; a server refuses (FIN) more, each alone.
    pub max_streams: usize,
    /// Unread bytes one stream may hold before the session waits for its reader.
    pub hold: usize,
    /// How long the session waits for such a reader before closing its stream.
    pub stall: Duration,
}

/// The original's keepalive (30 s, 70 s) and stream limit (16).
pub const DEFAULT: Config = Config {
    keepalive: Duration::from_secs(30),
    dead_after: Duration::from_secs(70),
    max_streams: super::MAX_STREAMS_PER_SESSION,
    hold: HOLD,
    stall: STALL,
};

/// What one stream may hold unread: about 80 ms of a 100 Mbit/s upload. More would let 16
/// streams of a session pin 16 times as much.
pub const HOLD: usize = 1 << 20;
/// How long the other streams of a session may wait for one stream's reader.
pub const STALL: Duration = Duration::from_secs(2);

/// Bytes the writer gathers into one write to the connection.
const WRITE_BATCH: usize = 256 * 1024;
/// Frames waiting for the writer; a stream's write waits while the queue is full.
const QUEUE: usize = 64;
/// Empty data frames a session may send before it is closed: a real peer sends none.
const EMPTY_FRAMES: u32 = 1024;

/// One frame to send.
struct Frame {
    head: [u8; HEADER],
    body: Bytes,
}

impl Frame {
    fn control(cmd: Cmd, sid: u32) -> Self {
        Frame {
            head: Header::new(cmd, sid, 0).encode(),
            body: Bytes::new(),
        }
    }

    fn data(sid: u32, body: Bytes) -> Self {
        Frame {
            head: Header::new(Cmd::Psh, sid, body.len() as u16).encode(),
            body,
        }
    }
}

/// What the session's tasks and streams share.
struct Shared {
    streams: Mutex<HashMap<u32, Arc<Rx>>>,
    out: mpsc::Sender<Frame>,
    closed: CancellationToken,
    /// A stream ended (the session may have become idle).
    idle: Notify,
    cfg: Config,
    /// The last stream id this side opened (client ids: 3, 5, 7, …, as the original's).
    last_id: AtomicU32,
    /// New streams are refused (the server is shutting down).
    refusing: AtomicBool,
    /// Milliseconds since `start` when the last frame arrived.
    last_rx: AtomicU64,
    /// Streams that ended lately, for a FIN said again.
    ended: Mutex<Ended>,
    start: Instant,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Arc<Rx>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_streams(&self) -> usize {
        self.streams().len()
    }

    /// A new stream `sid`; `counted` ones are in the open-streams gauge (a client's pool
    /// counts its own).
    fn register(self: &Arc<Self>, sid: u32, counted: bool) -> SmuxStream {
        let rx = Arc::new(Rx::default());
        self.streams().insert(sid, rx.clone());
        if counted {
            crate::metrics::get().mux_streams.inc();
        }
        SmuxStream {
            sid,
            rx,
            shared: self.clone(),
            out: PollSender::new(self.out.clone()),
            counted,
        }
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

    /// Refuses the peer's stream `sid` (FIN), remembering it.
    async fn refuse(&self, sid: u32) {
        self.ended().add(sid);
        self.control(Cmd::Fin, sid).await;
    }

    fn touch(&self) {
        self.last_rx
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Queues a control frame, waiting for room; `false` once the session is closed.
    async fn control(&self, cmd: Cmd, sid: u32) -> bool {
        tokio::select! {
            r = self.out.send(Frame::control(cmd, sid)) => r.is_ok(),
            _ = self.closed.cancelled() => false,
        }
    }
}

/// Starts the tasks of a session over `io`; `accept` (servers) receives the peer's streams.
fn start(io: BoxIo, cfg: Config, accept: Option<mpsc::Sender<SmuxStream>>) -> Arc<Shared> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        streams: Mutex::default(),
        out: tx,
        closed: CancellationToken::new(),
        idle: Notify::new(),
        cfg,
        last_id: AtomicU32::new(1),
        refusing: AtomicBool::new(false),
        last_rx: AtomicU64::new(0),
        ended: Mutex::default(),
        start: Instant::now(),
    });
    let m = crate::metrics::get();
    m.mux_sessions.inc();
    m.smux_sessions.inc();
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
            Ok(()) => log::debug!("smux session closed"),
            Err(e) => match crate::transport::relay::plain_ending(&e) {
                Some(why) => log::debug!("smux session ended: {why}"),
                None => log::info!("smux session ended: {e}"),
            },
        }
        let streams: Vec<Arc<Rx>> = reader.streams().drain().map(|(_, rx)| rx).collect();
        for rx in streams {
            rx.end(false, Some("the multiplexed session ended"));
        }
        reader.idle.notify_one();
        let m = crate::metrics::get();
        m.mux_sessions.dec();
        m.smux_sessions.dec();
    });
    shared
}

/// Reads frames until the connection ends (`Ok` between frames) or a frame is bad.
async fn read_loop(
    mut r: ReadHalf<BoxIo>,
    shared: &Arc<Shared>,
    accept: Option<mpsc::Sender<SmuxStream>>,
) -> io::Result<()> {
    let mut head = [0u8; HEADER];
    let mut small = [0u8; rx::SMALL];
    let mut empty = 0u32;
    loop {
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let h = Header::parse(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let len = usize::from(h.len);
        // A short body is read into `small` and copied where it is queued; a long one into a
        // buffer of its own, which is queued as it is.
        let body = if len >= rx::SMALL {
            let mut b = BytesMut::zeroed(len);
            r.read_exact(&mut b).await?;
            Some(b)
        } else {
            r.read_exact(&mut small[..len]).await?;
            None
        };
        shared.touch();
        match h.cmd {
            Cmd::Nop => {}
            Cmd::Syn => {
                let Some(accept) = accept.as_ref() else {
                    // A client takes no streams from its server.
                    shared.refuse(h.sid).await;
                    continue;
                };
                let (known, open) = {
                    let s = shared.streams();
                    (s.contains_key(&h.sid), s.len())
                };
                if known {
                    continue;
                }
                if shared.refusing.load(Ordering::Acquire) {
                    shared.refuse(h.sid).await;
                    continue;
                }
                if open >= shared.cfg.max_streams {
                    log::info!(
                        "multiplexed stream refused: {open} streams already open in this session (the limit)"
                    );
                    shared.refuse(h.sid).await;
                    continue;
                }
                let stream = shared.register(h.sid, true);
                if accept.send(stream).await.is_err() {
                    return Ok(());
                }
            }
            Cmd::Psh if len == 0 => {
                // xtaci/smux never sends one and ignores those it gets; so do we, up to a
                // point: a flood of them is a peer wasting our time.
                empty += 1;
                if empty > EMPTY_FRAMES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "more than {EMPTY_FRAMES} empty data frames (no smux peer sends them)"
                        ),
                    ));
                }
            }
            Cmd::Psh => {
                let rx = shared.streams().get(&h.sid).cloned();
                let Some(rx) = rx else {
                    if shared.ended().take(h.sid) {
                        // Data on a stream that ended here: its peer may have missed the
                        // FIN. Say it again, now that the peer's stream certainly exists.
                        shared.control(Cmd::Fin, h.sid).await;
                    }
                    continue;
                };
                let cfg = shared.cfg;
                let held = match body {
                    Some(b) => rx.push_owned(b),
                    None => rx.push_copy(&small[..len]),
                };
                if held > cfg.hold && !rx.drain_to(cfg.hold / 2, cfg.stall).await {
                    log::info!(
                        "multiplexed stream {}: closed: {} KiB waiting and nothing taken for {:?} (smux has no per-stream flow control; the other streams go on)",
                        h.sid,
                        cfg.hold / 1024,
                        cfg.stall
                    );
                    rx.kill("closed: its reader took nothing for too long");
                    shared.forget(h.sid, &rx);
                    if !rx.fin_sent.swap(true, Ordering::AcqRel) {
                        shared.control(Cmd::Fin, h.sid).await;
                    }
                }
            }
            Cmd::Fin => {
                let rx = shared.streams().get(&h.sid).cloned();
                if let Some(rx) = rx {
                    rx.end(true, None);
                }
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
        buf.extend_from_slice(&f.head);
        buf.extend_from_slice(&f.body);
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
            log::debug!("smux session: write failed: {e}");
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

/// Sends a NOP every `keepalive`; closes a session that heard nothing for `dead_after`.
async fn keepalive(shared: Arc<Shared>) {
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
            // A full queue is a busy session: no NOP needed.
            let _ = shared.out.try_send(Frame::control(Cmd::Nop, 0));
            next_nop = Instant::now() + cfg.keepalive;
        }
        let last = Duration::from_millis(shared.last_rx.load(Ordering::Relaxed));
        if shared.start.elapsed() > last + cfg.dead_after {
            log::info!(
                "smux session closed: nothing from the peer for {:?}",
                cfg.dead_after
            );
            shared.closed.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::fingerprint::sha256;
    use crate::transport::mux::Quiet;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn quiet() -> Quiet {
        Quiet {
            first: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            ping: None,
        }
    }

    fn pair(cfg: Config) -> (SmuxClient, SmuxSession) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (
            SmuxClient::new(Box::new(a), cfg),
            SmuxSession::server(Box::new(b), cfg, quiet()),
        )
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Eight streams at once: each sends its data and half-closes; the server reads to the
    /// end, then answers the hash of what it got and closes; both directions arrive intact.
    #[tokio::test]
    async fn streams_carry_data_both_ways_with_half_close() {
        let (client, mut server) = pair(DEFAULT);
        let srv = tokio::spawn(async move {
            while let Some(Ok(mut s)) = server.next().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.expect("read to FIN");
                    let mut reply = sha256(&got).to_vec();
                    reply.extend_from_slice(&got[..got.len().min(100_000)]);
                    s.write_all(&reply).await.expect("reply after FIN");
                    s.shutdown().await.expect("FIN");
                });
            }
        });
        let mut tasks = Vec::new();
        let client = Arc::new(client);
        for i in 0..8u8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = client.open().await.expect("open");
                let sent = data(300_000 + usize::from(i) * 977, i);
                s.write_all(&sent).await.expect("write");
                s.shutdown().await.expect("half-close");
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.expect("read reply");
                assert_eq!(&back[..32], &sha256(&sent)[..]);
                assert_eq!(&back[32..], &sent[..100_000]);
                s.id()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("stream task"));
        }
        ids.sort_unstable();
        assert_eq!(
            ids,
            vec![3, 5, 7, 9, 11, 13, 15, 17],
            "client ids are odd from 3"
        );
        srv.abort();
    }

    /// With the session full, one more stream is refused alone (its reader sees the end at
    /// once) while the open ones go on.
    #[tokio::test]
    async fn the_stream_beyond_the_limit_is_refused_alone() {
        let cfg = Config {
            max_streams: 4,
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let srv = tokio::spawn(async move {
            while let Some(Ok(mut s)) = server.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => s.write_all(&buf[..n]).await.expect("echo"),
                        }
                    }
                });
            }
        });
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut s = client.open().await.expect("open");
            s.write_all(b"ping").await.expect("write");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.expect("echo");
            open.push(s);
        }
        let mut extra = client.open().await.expect("open");
        let mut b = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut b))
            .await
            .expect("refused at once")
            .expect("read");
        assert_eq!(n, 0, "the fifth stream ends without data");
        for s in &mut open {
            s.write_all(b"more").await.expect("write");
            s.read_exact(&mut b).await.expect("the others go on");
            assert_eq!(&b, b"more");
        }
        srv.abort();
    }

    /// A stream whose reader stops is closed once it holds `hold` bytes; another stream of
    /// the session keeps flowing meanwhile and after.
    #[tokio::test]
    async fn a_stalled_stream_is_closed_alone() {
        let cfg = Config {
            hold: 64 * 1024,
            stall: Duration::from_millis(300),
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
        let srv = tokio::spawn(async move {
            // The first stream is never read; the second echoes.
            let first = server.next().await.expect("first").expect("ok");
            let _ = stalled_tx.send(first);
            let mut s = server.next().await.expect("second").expect("ok");
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => s.write_all(&buf[..n]).await.expect("echo"),
                    }
                }
            });
            while let Some(Ok(_)) = server.next().await {}
        });
        let mut stalled = client.open().await.expect("open");
        stalled.write_all(b"x").await.expect("write");
        let _held = stalled_rx.await.expect("the server took the stream");
        let mut live = client.open().await.expect("open");
        let chunk = vec![1u8; 16 * 1024];
        // Far more than the hold: the stalled stream is closed, and says so to our writer or
        // reader, within bounded time.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..64 {
                if stalled.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let mut b = [0u8; 1];
            let _ = stalled.read(&mut b).await;
        })
        .await;
        assert!(ended.is_ok(), "the stalled stream was never closed");
        let mut b = [0u8; 1];
        assert_eq!(stalled.read(&mut b).await.expect("FIN"), 0);
        let sent = data(200_000, 9);
        let mut back = vec![0u8; sent.len()];
        let (mut r, mut w) = tokio::io::split(&mut live);
        let (wrote, read) = tokio::join!(w.write_all(&sent), r.read_exact(&mut back));
        wrote.expect("write");
        read.expect("read");
        assert_eq!(back, sent, "the other stream went on intact");
        srv.abort();
    }

    /// A reader slower than its sender but never stopping is waited for, not cut: the
    /// whole upload arrives intact.
    #[tokio::test]
    async fn a_slow_reader_is_waited_for() {
        let cfg = Config {
            hold: 32 * 1024,
            stall: Duration::from_millis(500),
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let srv = tokio::spawn(async move {
            let mut s = server.next().await.expect("stream").expect("ok");
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8 * 1024];
            loop {
                match s.read(&mut buf).await.expect("read") {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            s.write_all(&sha256(&got)).await.expect("reply");
            s.shutdown().await.expect("FIN");
            while let Some(Ok(_)) = server.next().await {}
        });
        let mut s = client.open().await.expect("open");
        let sent = data(400_000, 3);
        s.write_all(&sent).await.expect("write");
        s.shutdown().await.expect("FIN");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("reply");
        assert_eq!(back, sha256(&sent).to_vec());
        srv.abort();
    }

    /// What the session still writes once `server` is dropped, up to its end.
    async fn rest_after_end(server: SmuxSession, peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        drop(server);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
            .await
            .expect("the session ends")
            .expect("read");
        rest
    }

    /// A refused stream's FIN is said again, once, when data comes on it (the peer may have
    /// missed the first).
    #[tokio::test]
    async fn data_on_a_refused_stream_gets_its_fin_again_once() {
        let cfg = Config {
            max_streams: 1,
            ..DEFAULT
        };
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), cfg, quiet());
        let frame = |cmd, sid, body: &[u8]| {
            let len = u16::try_from(body.len()).expect("small");
            let mut f = Header::new(cmd, sid, len).encode().to_vec();
            f.extend_from_slice(body);
            f
        };
        let next_header = async |peer: &mut tokio::io::DuplexStream| {
            let mut head = [0u8; HEADER];
            tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut head))
                .await
                .expect("a frame in time")
                .expect("read");
            Header::parse(&head).expect("a valid frame")
        };
        peer.write_all(&frame(Cmd::Syn, 3, b""))
            .await
            .expect("write");
        let _first = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("accepted")
            .expect("a stream");
        peer.write_all(&frame(Cmd::Syn, 5, b""))
            .await
            .expect("write");
        assert_eq!(next_header(&mut peer).await, Header::new(Cmd::Fin, 5, 0));
        // As if that FIN had found no stream at the peer: its data comes, and so does the FIN
        // again; more data after that, or data on a stream never opened, gets nothing.
        for _ in 0..2 {
            peer.write_all(&frame(Cmd::Psh, 5, b"ping"))
                .await
                .expect("write");
        }
        peer.write_all(&frame(Cmd::Psh, 7, b"ping"))
            .await
            .expect("write");
        assert_eq!(next_header(&mut peer).await, Header::new(Cmd::Fin, 5, 0));
        // Nothing more for 5 or 7 before the session's end.
        let rest = rest_after_end(server, &mut peer).await;
        let more: Vec<Header> = rest
            .chunks(HEADER)
            .filter_map(|h| Header::parse(h.try_into().ok()?).ok())
            .filter(|h| h.cmd == Cmd::Fin && h.sid != 3)
            .collect();
        assert!(more.is_empty(), "FINs repeated beyond one: {more:?}");
    }

    /// The same for a stream accepted and closed at once (its destination could not be
    /// reached): data on it after its FIN gets the FIN again, once.
    #[tokio::test]
    async fn data_on_a_stream_closed_here_gets_its_fin_again_once() {
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        let syn = Header::new(Cmd::Syn, 3, 0).encode();
        let mut psh = Header::new(Cmd::Psh, 3, 4).encode().to_vec();
        psh.extend_from_slice(b"ping");
        let fin = Header::new(Cmd::Fin, 3, 0).encode();
        peer.write_all(&syn).await.expect("write");
        let stream = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("accepted")
            .expect("a stream");
        drop(stream);
        let mut head = [0u8; HEADER];
        for _ in 0..2 {
            // The FIN of the close, then (after data) the one said again.
            tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut head))
                .await
                .expect("a frame in time")
                .expect("read");
            assert_eq!(head, fin);
            peer.write_all(&psh).await.expect("write");
        }
        let rest = rest_after_end(server, &mut peer).await;
        assert!(
            !rest.chunks(HEADER).any(|h| h == fin),
            "a FIN repeated beyond one: {rest:?}"
        );
    }

    /// An empty data frame is nothing (as xtaci/smux takes it): the data after it arrives,
    /// and the stream ends only at the peer's FIN. A flood of them closes the session.
    #[tokio::test]
    async fn empty_data_frames_are_ignored_and_a_flood_of_them_ends_the_session() {
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        let frame = |cmd, body: &[u8]| {
            let mut f = Header::new(cmd, 3, body.len() as u16).encode().to_vec();
            f.extend_from_slice(body);
            f
        };
        let mut wire = frame(Cmd::Syn, b"");
        for body in [&b"abc"[..], b"", b"def", b""] {
            wire.extend(frame(Cmd::Psh, body));
        }
        wire.extend(frame(Cmd::Fin, b""));
        peer.write_all(&wire).await.expect("write");
        let mut s = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("accepted")
            .expect("a stream")
            .expect("ok");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("FIN in time")
            .expect("read");
        assert_eq!(got, b"abcdef");

        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        let mut wire = frame(Cmd::Syn, b"");
        for _ in 0..=EMPTY_FRAMES {
            wire.extend(frame(Cmd::Psh, b""));
        }
        let feeder = tokio::spawn(async move {
            let _ = peer.write_all(&wire).await;
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink).await;
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = server.next().await {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "the session outlived a flood of empty frames"
        );
        feeder.abort();
    }

    /// A peer that never speaks is given up after `dead_after`; NOPs go out meanwhile; a frame
    /// of another version ends the session.
    #[tokio::test]
    async fn keepalive_and_bad_frames() {
        let cfg = Config {
            keepalive: Duration::from_millis(50),
            dead_after: Duration::from_millis(300),
            ..DEFAULT
        };
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let client = SmuxClient::new(Box::new(a), cfg);
        let mut head = [0u8; HEADER];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut head))
            .await
            .expect("a NOP within the keepalive")
            .expect("read");
        assert_eq!(Header::parse(&head), Ok(Header::new(Cmd::Nop, 0, 0)));
        tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .expect("closed after dead_after of silence");

        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        peer.write_all(&[2, 0, 0, 0, 3, 0, 0, 0])
            .await
            .expect("write");
        let next = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("ended");
        assert!(next.is_none(), "a version-2 frame ends the session");
    }
}
