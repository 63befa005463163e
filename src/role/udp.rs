//! The client's UDP side (`-udp`, SIP003u): datagrams to its address become associations,
//! one per source address (full-cone: what the destination answers goes back to that
//! source), each carried by a tunnel of its own that is marked as carrying datagrams.
//! A slow or failed association drops its own datagrams only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::UdpConfig;
use crate::metrics::UdpDrop;
use crate::transport::Dialer;
use crate::transport::datagram::{self, FrameReader, Kind, MAX_DATAGRAM};
use crate::transport::udp::{MAX_SEGMENTS, RecvBatch, Socket};

/// Framed bytes waiting for one association's tunnel (enough to ride out the tunnel's writer
/// being off the CPU for some milliseconds at 1.5 Gbit/s); datagrams beyond are dropped (and
/// counted).
const QUEUE_BYTES: usize = 4 << 20;
/// Framed bytes waiting for all associations together.
const TOTAL_QUEUE_BYTES: usize = 64 << 20;
/// Room a new batch starts with.
const BATCH_ROOM: usize = 96 * 1024;
/// Batches waiting for one association's tunnel.
const QUEUE_BATCHES: usize = 256;

/// Bytes framed and handed to one association's task but not yet written, and the same for
/// all associations together.
struct Backlog {
    own: AtomicUsize,
    all: Arc<AtomicUsize>,
}

impl Backlog {
    fn add(&self, n: usize) {
        self.own.fetch_add(n, Ordering::Relaxed);
        self.all.fetch_add(n, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.own.fetch_sub(n, Ordering::Relaxed);
        self.all.fetch_sub(n, Ordering::Relaxed);
    }

    /// Whether `more` bytes would overfill either.
    fn full_for(&self, more: usize) -> bool {
        self.own.load(Ordering::Relaxed) + more > QUEUE_BYTES
            || self.all.load(Ordering::Relaxed) + more > TOTAL_QUEUE_BYTES
    }
}

/// One association: the frames gathered for it in this round of receiving, where they go,
/// when it last moved, and its stop switch.
struct Assoc {
    pending: BytesMut,
    pending_n: u32,
    tx: mpsc::Sender<BytesMut>,
    queued: Arc<Backlog>,
    last: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Assoc {
    /// Hands what this round gathered to the association's task.
    fn hand_over(&mut self) -> Result<(), ()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = self.pending.split();
        let n = std::mem::take(&mut self.pending_n);
        let len = batch.len();
        self.queued.add(len);
        match self.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.sub(len);
                let (why, closed) = match e {
                    mpsc::error::TrySendError::Full(_) => (UdpDrop::QueueFull, false),
                    mpsc::error::TrySendError::Closed(_) => (UdpDrop::NoTunnel, true),
                };
                for _ in 0..n {
                    datagram::dropped(why);
                }
                if closed { Err(()) } else { Ok(()) }
            }
        }
    }
}

/// The client's UDP listener and its associations.
pub struct UdpSide {
    sock: Arc<Socket>,
    dialer: Arc<Dialer>,
    cfg: UdpConfig,
    /// Bytes waiting for all associations' tunnels.
    queued: Arc<AtomicUsize>,
}

impl UdpSide {
    /// Serves datagrams arriving on `sock` through tunnels from `dialer`.
    pub fn new(sock: Socket, dialer: Arc<Dialer>, cfg: UdpConfig) -> Self {
        UdpSide {
            sock: Arc::new(sock),
            dialer,
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
                    for (d, src) in batch.iter() {
                        self.take(&mut assocs, &mut touched, d, src, start);
                    }
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
    /// if it has none.
    fn take(
        &self,
        assocs: &mut HashMap<SocketAddr, Assoc>,
        touched: &mut Vec<SocketAddr>,
        d: &[u8],
        src: SocketAddr,
        start: Instant,
    ) {
        if d.len() > MAX_DATAGRAM {
            datagram::dropped(UdpDrop::TooLarge);
            return;
        }
        if assocs.get(&src).is_none_or(|a| a.stop.is_cancelled()) {
            self.make_room(assocs, src);
            let stop = CancellationToken::new();
            assocs.insert(src, self.associate(src, start, stop));
        }
        let Some(a) = assocs.get_mut(&src) else {
            return;
        };
        if a.queued.full_for(a.pending.len() + d.len() + 2) {
            datagram::dropped(UdpDrop::QueueFull);
            return;
        }
        a.last
            .store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        datagram::count(true, d.len());
        if a.pending.is_empty() {
            touched.push(src);
            // Room for a round's worth of typical datagrams at once, not grown by copying.
            a.pending.reserve(BATCH_ROOM.max(d.len() + 2));
        }
        a.pending.put_u16(d.len() as u16);
        a.pending.put_slice(d);
        a.pending_n += 1;
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
            log::info!(
                "UDP: -udp-max-assoc {} reached: dropped the association of {k}, the longest idle, for {for_src}",
                self.cfg.max_assoc
            );
        }
    }

    /// Starts the association of `src`: its tunnel is dialled in its own task, datagrams
    /// queue meanwhile.
    fn associate(&self, src: SocketAddr, start: Instant, stop: CancellationToken) -> Assoc {
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let queued = Arc::new(Backlog {
            own: AtomicUsize::new(0),
            all: self.queued.clone(),
        });
        let last = Arc::new(AtomicU64::new(start.elapsed().as_millis() as u64));
        let job = Association {
            src,
            sock: self.sock.clone(),
            dialer: self.dialer.clone(),
            idle: self.cfg.timeout,
            last: last.clone(),
            queued: queued.clone(),
            start,
            stop: stop.clone(),
        };
        tokio::spawn(job.run(rx));
        Assoc {
            pending: BytesMut::new(),
            pending_n: 0,
            tx,
            queued,
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
    queued: Arc<Backlog>,
    start: Instant,
    stop: CancellationToken,
}

impl Association {
    async fn run(self, mut rx: mpsc::Receiver<BytesMut>) {
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
                self.discard(&mut rx);
                return;
            }
        };
        log::debug!("UDP from {src}: association open");
        let _open = crate::metrics::get().association();
        let (r, mut wr) = tokio::io::split(tunnel);
        let mut rd = FrameReader::new(r);
        let up = async {
            while let Some(b) = rx.recv().await {
                self.queued.sub(b.len());
                wr.write_all(&b).await?;
                // What is already queued goes into the same flush.
                while let Ok(b) = rx.try_recv() {
                    self.queued.sub(b.len());
                    wr.write_all(&b).await?;
                }
                wr.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let down = async {
            loop {
                let mut batch: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
                let n = rd.next_batch(&mut batch).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                self.last
                    .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
                for d in &batch[..n] {
                    datagram::count(false, d.len());
                }
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
        self.discard(&mut rx);
        log::debug!(
            "UDP from {src}: association closed{}",
            why.map(|w| format!(": {w}")).unwrap_or_default()
        );
    }
}

impl Association {
    /// Takes no more batches and drops those waiting (counted, and no longer held against the
    /// queue limits).
    fn discard(&self, rx: &mut mpsc::Receiver<BytesMut>) {
        rx.close();
        while let Ok(b) = rx.try_recv() {
            self.queued.sub(b.len());
            for _ in 0..datagram::frames_in(&b) {
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
