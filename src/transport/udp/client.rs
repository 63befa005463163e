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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameReader, MAX_DATAGRAM};
use super::queue::{Bucket, Queue};
use super::socket::{MAX_SEGMENTS, RecvBatch, Socket};
use super::{idle_watch, stamp};
use crate::config::UdpConfig;
use crate::metrics::UdpDrop;
use crate::transport::Dialer;
use crate::transport::datagram::{self, Kind};

/// Room a round's frames for one association start with, at most.
const BATCH_ROOM: usize = 96 * 1024;
/// And at first.
const FIRST_ROOM: usize = 2 * 1024;

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
        frame::frame_into(&mut a.pending, d);
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
                    } => datagram::warn_once(&REFUSED, format_args!("{} (said once)", e.report())),
                    _ => {
                        crate::rarely!(Warn, "UDP from {src}: {}", e.report());
                    }
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
                self.last.store(stamp(self.start), Ordering::Relaxed);
                datagram::count_batch(false, &batch[..n]);
                self.sock.send_all(&batch[..n], Some(src)).await?;
            }
        };
        let quiet = idle_watch(self.start, &self.last, self.idle);
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
            for _ in 0..frame::frames_in(&c) {
                datagram::dropped(UdpDrop::NoTunnel);
            }
        }
    }
}
