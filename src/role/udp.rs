//! The client's UDP side (`-udp`, SIP003u): datagrams to its address become associations,
//! one per source address (full-cone: what the destination answers goes back to that
//! source), each carried by a tunnel of its own that is marked as carrying datagrams.
//! A slow or failed association drops its own datagrams only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::UdpConfig;
use crate::metrics::UdpDrop;
use crate::transport::Dialer;
use crate::transport::datagram::{self, FrameReader, Kind, MAX_DATAGRAM};
use crate::transport::udp::{MAX_SEGMENTS, RecvBatch, Socket};

/// Framed bytes waiting for one association's tunnel (enough to ride out the tunnel's writer
/// being off the CPU for some milliseconds at 1.5 Gbit/s); datagrams beyond are dropped (and
/// counted). Only bytes limit the queue: however many rounds of receiving a stalled writer
/// misses, it finds what they brought in one buffer and writes it in one go.
const QUEUE_BYTES: usize = 4 << 20;
/// Framed bytes waiting for all associations together.
const TOTAL_QUEUE_BYTES: usize = 64 << 20;
/// Room a round's frames for one association start with, at most.
const BATCH_ROOM: usize = 96 * 1024;
/// And at first.
const FIRST_ROOM: usize = 2 * 1024;

/// The frames waiting for one association's tunnel: appended by the receiving loop once a
/// round, taken all at once by the association's writer. A round's buffer is handed over
/// whole (no copy) unless the last one waiting has room for it; written buffers come back
/// for later rounds, so nothing is allocated or copied twice per round.
struct Queue {
    inner: Mutex<Waiting>,
    /// Rung when frames were appended.
    ready: Notify,
    /// Bytes waiting here, readable without the lock.
    own: AtomicUsize,
    /// Bytes waiting for all associations together.
    all: Arc<AtomicUsize>,
}

#[derive(Default)]
struct Waiting {
    chunks: Vec<BytesMut>,
    /// Emptied buffers, for the receiving loop to fill again.
    spare: Vec<BytesMut>,
    /// The association has ended: nothing more is taken.
    closed: bool,
}

/// Emptied buffers kept per association: one is what a writer that keeps up needs (the
/// receiving loop fills one while the writer writes the other); more would hold memory for
/// every association that once saw a burst.
const SPARE_BUFFERS: usize = 1;

impl Queue {
    fn new(all: Arc<AtomicUsize>) -> Self {
        Queue {
            inner: Mutex::new(Waiting::default()),
            ready: Notify::new(),
            own: AtomicUsize::new(0),
            all,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `more` bytes would overfill this queue or all of them together.
    fn full_for(&self, more: usize) -> bool {
        self.own.load(Ordering::Relaxed) + more > QUEUE_BYTES
            || self.all.load(Ordering::Relaxed) + more > TOTAL_QUEUE_BYTES
    }

    /// Appends `frames`, which is left empty (a spare buffer where one is at hand). `Err` if
    /// the association has ended: the frames stay in `frames`.
    fn append(&self, frames: &mut BytesMut) -> Result<(), ()> {
        let len = frames.len();
        {
            let mut w = self.lock();
            if w.closed {
                return Err(());
            }
            match w.chunks.last_mut() {
                Some(last) if last.capacity() - last.len() >= len => {
                    last.extend_from_slice(frames);
                    frames.clear();
                }
                _ => {
                    let next = w.spare.pop().unwrap_or_default();
                    w.chunks.push(std::mem::replace(frames, next));
                }
            }
            self.own.fetch_add(len, Ordering::Relaxed);
            self.all.fetch_add(len, Ordering::Relaxed);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Everything waiting, in order, into `out` (empty if nothing).
    fn take(&self, out: &mut Vec<BytesMut>) {
        std::mem::swap(&mut self.lock().chunks, out);
        self.forget(out.iter().map(|c| c.len()).sum());
    }

    /// Buffers written out, to be filled again.
    fn give_back(&self, written: &mut Vec<BytesMut>) {
        let mut w = self.lock();
        for mut c in written.drain(..) {
            if w.spare.len() == SPARE_BUFFERS {
                break;
            }
            c.clear();
            w.spare.push(c);
        }
        written.clear();
    }

    /// Takes nothing more; what waits is returned (no longer held against the limits).
    fn close(&self) -> Vec<BytesMut> {
        let mut left = Vec::new();
        {
            let mut w = self.lock();
            w.closed = true;
            w.spare.clear();
            std::mem::swap(&mut w.chunks, &mut left);
        }
        self.forget(left.iter().map(|c| c.len()).sum());
        left
    }

    fn forget(&self, n: usize) {
        self.own.fetch_sub(n, Ordering::Relaxed);
        self.all.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A token bucket: `rate` a second, as many at once; a rate of 0 allows everything.
struct Bucket {
    rate: u32,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket {
            rate,
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    /// Takes a token if one is there.
    fn take(&mut self) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let rate = f64::from(self.rate);
        let earned = now.duration_since(self.at).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One association: the frames gathered for it in this round of receiving, where they go,
/// when it last moved, and its stop switch.
struct Assoc {
    pending: BytesMut,
    pending_n: u32,
    /// Room a round's frames start with: small for an association of a few datagrams
    /// (DNS), growing to [`BATCH_ROOM`] with the rounds it sees.
    room: usize,
    queue: Arc<Queue>,
    last: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Assoc {
    /// Hands what this round gathered to the association's task; `Err` if it has ended (the
    /// round's datagrams are counted as dropped).
    fn hand_over(&mut self) -> Result<(), ()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = std::mem::take(&mut self.pending_n);
        // Rounds as large as this one get room for it from the start.
        self.room = self
            .room
            .max(self.pending.len().next_power_of_two())
            .min(BATCH_ROOM);
        if self.queue.append(&mut self.pending).is_err() {
            self.pending.clear();
            for _ in 0..n {
                datagram::dropped(UdpDrop::NoTunnel);
            }
            return Err(());
        }
        Ok(())
    }
}

/// The client's UDP listener and its associations.
pub struct UdpSide {
    sock: Arc<Socket>,
    dialer: Arc<Dialer>,
    cfg: UdpConfig,
    /// Bytes waiting for all associations' tunnels.
    queued: Arc<AtomicUsize>,
    /// New associations allowed (`-udp-assoc-rate`).
    new_assocs: Mutex<Bucket>,
}

impl UdpSide {
    /// Serves datagrams arriving on `sock` through tunnels from `dialer`.
    pub fn new(sock: Socket, dialer: Arc<Dialer>, cfg: UdpConfig) -> Self {
        UdpSide {
            sock: Arc::new(sock),
            dialer,
            new_assocs: Mutex::new(Bucket::new(cfg.assoc_rate)),
            cfg,
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs until `shutdown`; then every association ends. Each round takes every datagram
    /// already waiting (up to [`MAX_SEGMENTS`], in one call), frames each into its association's batch,
    /// and then hands each batch over whole: one wake-up and one write per association and
    /// round, not per datagram.
    pub async fn run(self, shutdown: CancellationToken) {
        let start = Instant::now();
        let mut assocs: HashMap<SocketAddr, Assoc> = HashMap::new();
        let mut touched: Vec<SocketAddr> = Vec::new();
        let mut batch = RecvBatch::new(MAX_DATAGRAM + 1);
        loop {
            let got = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.sock.recv_batch(&mut batch) => r,
            };
            match got {
                Ok(_) => {
                    let now = start.elapsed().as_millis() as u64;
                    let (mut n, mut bytes) = (0, 0);
                    for (d, src) in batch.iter() {
                        if self.take(&mut assocs, &mut touched, d, src, start, now) {
                            n += 1;
                            bytes += d.len();
                        }
                    }
                    datagram::count(true, n, bytes);
                }
                Err(e) => log::debug!("UDP receive: {e}"),
            }
            for src in touched.drain(..) {
                if let Some(a) = assocs.get_mut(&src)
                    && a.hand_over().is_err()
                {
                    assocs.remove(&src);
                }
            }
        }
        for a in assocs.values() {
            a.stop.cancel();
        }
    }

    /// Frames one datagram from `src` into its association's batch, starting the association
    /// if it has none; `now` is this round's activity stamp. Whether it was taken (else it was
    /// dropped, and counted so).
    fn take(
        &self,
        assocs: &mut HashMap<SocketAddr, Assoc>,
        touched: &mut Vec<SocketAddr>,
        d: &[u8],
        src: SocketAddr,
        start: Instant,
        now: u64,
    ) -> bool {
        if d.len() > MAX_DATAGRAM {
            datagram::dropped(UdpDrop::TooLarge);
            return false;
        }
        if assocs.get(&src).is_none_or(|a| a.stop.is_cancelled()) {
            if !self
                .new_assocs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                datagram::dropped(UdpDrop::RateLimited);
                crate::rarely!(
                    Warn,
                    "UDP: more than {} new associations a second (-udp-assoc-rate): datagrams from new sources such as {src} dropped; the -b of a -udp client belongs on loopback or a trusted network",
                    self.cfg.assoc_rate
                );
                return false;
            }
            self.make_room(assocs, src);
            let stop = CancellationToken::new();
            assocs.insert(src, self.associate(src, start, stop));
        }
        let Some(a) = assocs.get_mut(&src) else {
            return false;
        };
        if a.queue.full_for(a.pending.len() + d.len() + 2) {
            datagram::dropped(UdpDrop::QueueFull);
            return false;
        }
        if a.pending.is_empty() {
            a.last.store(now, Ordering::Relaxed);
            touched.push(src);
            // Room for what this association's rounds bring, not grown by copying.
            a.pending.reserve(a.room.max(d.len() + 2));
        }
        datagram::frame_into(&mut a.pending, d);
        a.pending_n += 1;
        true
    }

    /// Below `-udp-max-assoc`: ended associations are forgotten, then the longest idle one
    /// is dropped if still needed.
    fn make_room(&self, assocs: &mut HashMap<SocketAddr, Assoc>, for_src: SocketAddr) {
        if assocs.len() < self.cfg.max_assoc {
            return;
        }
        assocs.retain(|_, a| !a.stop.is_cancelled());
        if assocs.len() < self.cfg.max_assoc {
            return;
        }
        let oldest = assocs
            .iter()
            .min_by_key(|(_, a)| a.last.load(Ordering::Relaxed))
            .map(|(k, _)| *k);
        if let Some(k) = oldest
            && let Some(a) = assocs.remove(&k)
        {
            a.stop.cancel();
            crate::rarely!(
                Warn,
                "UDP: -udp-max-assoc {} reached: dropped the association of {k}, the longest idle, for {for_src}",
                self.cfg.max_assoc
            );
        }
    }

    /// Starts the association of `src`: its tunnel is dialled in its own task, datagrams
    /// queue meanwhile.
    fn associate(&self, src: SocketAddr, start: Instant, stop: CancellationToken) -> Assoc {
        let queue = Arc::new(Queue::new(self.queued.clone()));
        let last = Arc::new(AtomicU64::new(start.elapsed().as_millis() as u64));
        let job = Association {
            src,
            sock: self.sock.clone(),
            dialer: self.dialer.clone(),
            idle: self.cfg.timeout,
            last: last.clone(),
            queue: queue.clone(),
            start,
            stop: stop.clone(),
        };
        tokio::spawn(job.run());
        Assoc {
            pending: BytesMut::new(),
            pending_n: 0,
            room: FIRST_ROOM,
            queue,
            last,
            stop,
        }
    }
}

/// The task of one association.
struct Association {
    src: SocketAddr,
    sock: Arc<Socket>,
    dialer: Arc<Dialer>,
    idle: std::time::Duration,
    last: Arc<AtomicU64>,
    queue: Arc<Queue>,
    start: Instant,
    stop: CancellationToken,
}

impl Association {
    async fn run(self) {
        let src = self.src;
        let tunnel = tokio::select! {
            _ = self.stop.cancelled() => return,
            t = self.dialer.dial(Kind::Datagrams) => t,
        };
        let tunnel = match tunnel {
            Ok(t) => t,
            Err(e) => {
                // A server that does not carry UDP is said once; other failures (a server
                // down) at most once a second.
                static REFUSED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                match &e {
                    crate::Error::Tunnel {
                        step: crate::error::Step::Udp,
                        ..
                    } => datagram::warn_once(&REFUSED, format_args!("{e} (said once)")),
                    _ => warn_rarely(format_args!("UDP from {src}: {e}")),
                }
                self.stop.cancel();
                self.discard();
                return;
            }
        };
        log::debug!("UDP from {src}: association open");
        let _open = crate::metrics::get().association();
        let (r, mut wr) = tokio::io::split(tunnel);
        let mut rd = FrameReader::new(r);
        let up = self.send_up(&mut wr);
        let down = async {
            loop {
                let mut batch: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
                let n = rd.next_batch(&mut batch).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                self.last
                    .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
                datagram::count_batch(false, &batch[..n]);
                self.sock.send_all(&batch[..n], Some(src)).await?;
            }
        };
        let quiet = async {
            loop {
                let last = std::time::Duration::from_millis(self.last.load(Ordering::Relaxed));
                tokio::time::sleep_until(self.start + last + self.idle).await;
                if self.start.elapsed() >= last + self.idle {
                    return;
                }
            }
        };
        let plain = |e: std::io::Error| {
            crate::transport::relay::plain_ending(&e).unwrap_or_else(|| e.to_string())
        };
        let why = tokio::select! {
            r = up => r.err().map(plain),
            r = down => r.err().map(plain),
            _ = quiet => Some(format!("idle for {:?}", self.idle)),
            _ = self.stop.cancelled() => Some("stopped".into()),
        };
        self.stop.cancel();
        self.discard();
        log::debug!(
            "UDP from {src}: association closed{}",
            why.map(|w| format!(": {w}")).unwrap_or_default()
        );
    }
}

impl Association {
    /// Writes what the receiving loop queues to the tunnel, each time all that waits; flushes
    /// once nothing more waits. Ends only by error.
    async fn send_up<W: tokio::io::AsyncWrite + Unpin>(&self, wr: &mut W) -> std::io::Result<()> {
        let mut written = false;
        let mut chunks = Vec::new();
        loop {
            self.queue.take(&mut chunks);
            if !chunks.is_empty() {
                for c in &chunks {
                    wr.write_all(c).await?;
                }
                self.queue.give_back(&mut chunks);
                written = true;
            } else if std::mem::take(&mut written) {
                wr.flush().await?;
            } else {
                self.queue.ready.notified().await;
            }
        }
    }

    /// Takes no more frames and drops those waiting (counted, and no longer held against the
    /// queue limits).
    fn discard(&self) {
        for c in self.queue.close() {
            for _ in 0..datagram::frames_in(&c) {
                datagram::dropped(UdpDrop::NoTunnel);
            }
        }
    }
}

/// A failed association logs at WARN at most once a second: a datagram flood towards an
/// unreachable server must not flood the log.
fn warn_rarely(msg: std::fmt::Arguments<'_>) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if LAST.swap(now, Ordering::Relaxed) != now {
        log::warn!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// The bucket allows its rate at once, then its rate a second; 0 is no limit.
    #[tokio::test(start_paused = true)]
    async fn new_associations_are_allowed_at_the_rate() {
        let mut b = Bucket::new(10);
        assert_eq!(
            (0..100).filter(|_| b.take()).count(),
            10,
            "a burst of the rate"
        );
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            (0..100).filter(|_| b.take()).count(),
            5,
            "half a second: half the rate"
        );
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            (0..100).filter(|_| b.take()).count(),
            10,
            "never more than the rate saved"
        );
        let mut free = Bucket::new(0);
        assert!((0..10_000).all(|_| free.take()));
    }

    /// Frames a tunnel's writer has not taken yet are limited by bytes only: a thousand rounds
    /// of one small datagram each wait whole, in order, and come out in one take; the
    /// association's own limit holds; a closed queue returns what waited and takes no more.
    #[test]
    fn a_stalled_writer_finds_every_round_in_one_buffer() {
        let all = Arc::new(AtomicUsize::new(0));
        let q = Queue::new(all.clone());
        let mut round = BytesMut::new();
        for i in 0..1000u16 {
            round.reserve(BATCH_ROOM);
            round.put_u16(2);
            round.put_u16(i);
            q.append(&mut round).expect("open");
            assert!(round.is_empty(), "the round's frames were handed over");
        }
        assert_eq!(all.load(Ordering::Relaxed), 4000);
        let mut b = Vec::new();
        q.take(&mut b);
        assert_eq!(b.len(), 1, "small rounds went into the room of the first");
        assert_eq!(datagram::frames_in(&b[0]), 1000);
        assert!(
            b[0].chunks(4)
                .enumerate()
                .all(|(i, f)| f[2..] == (i as u16).to_be_bytes())
        );
        assert_eq!(
            all.load(Ordering::Relaxed),
            0,
            "taken bytes no longer count"
        );
        q.give_back(&mut b);
        q.take(&mut b);
        assert!(b.is_empty());

        assert!(!q.full_for(QUEUE_BYTES));
        round.put_slice(&vec![0; QUEUE_BYTES - 10]);
        q.append(&mut round).expect("open");
        assert!(q.full_for(11), "the association's limit");
        assert!(!q.full_for(10));

        round.put_slice(&[0, 1, 7]);
        let left = q.close();
        assert_eq!(
            left.iter().map(|c| c.len()).sum::<usize>(),
            QUEUE_BYTES - 10
        );
        assert!(q.append(&mut round).is_err(), "closed");
        assert_eq!(
            &round[..],
            &[0, 1, 7],
            "refused frames stay with the caller"
        );
        assert_eq!(all.load(Ordering::Relaxed), 0);
    }
}
