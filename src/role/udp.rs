//! The client's UDP side (`-udp`, SIP003u): datagrams to its address become associations,
//! one per source address (full-cone: what the destination answers goes back to that
//! source), each carried by a tunnel of its own that is marked as carrying datagrams.
//! A slow or failed association drops its own datagrams only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::config::UdpConfig;
use crate::metrics::UdpDrop;
use crate::transport::Dialer;
use crate::transport::datagram::{self, Kind, MAX_DATAGRAM};

/// Datagrams waiting for one association's tunnel; more are dropped (and counted).
const QUEUE: usize = 512;

/// One association: where its datagrams go, when it last moved, and its stop switch.
struct Assoc {
    tx: mpsc::Sender<Bytes>,
    last: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// The client's UDP listener and its associations.
pub struct UdpSide {
    sock: Arc<UdpSocket>,
    dialer: Arc<Dialer>,
    cfg: UdpConfig,
}

impl UdpSide {
    /// Serves datagrams arriving on `sock` through tunnels from `dialer`.
    pub fn new(sock: UdpSocket, dialer: Arc<Dialer>, cfg: UdpConfig) -> Self {
        UdpSide {
            sock: Arc::new(sock),
            dialer,
            cfg,
        }
    }

    /// Runs until `shutdown`; then every association ends.
    pub async fn run(self, shutdown: CancellationToken) {
        let start = Instant::now();
        let mut assocs: HashMap<SocketAddr, Assoc> = HashMap::new();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (n, src) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        log::debug!("UDP receive: {e}");
                        continue;
                    }
                },
            };
            if n > MAX_DATAGRAM {
                datagram::dropped(UdpDrop::TooLarge);
                continue;
            }
            let now = start.elapsed().as_millis() as u64;
            if assocs.get(&src).is_none_or(|a| a.stop.is_cancelled()) {
                self.make_room(&mut assocs, src);
                let assoc = self.associate(src, start, shutdown.child_token());
                assocs.insert(src, assoc);
            }
            let Some(a) = assocs.get(&src) else { continue };
            a.last.store(now, Ordering::Relaxed);
            match a.tx.try_send(Bytes::copy_from_slice(&buf[..n])) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => datagram::dropped(UdpDrop::QueueFull),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    datagram::dropped(UdpDrop::NoTunnel);
                    assocs.remove(&src);
                }
            }
        }
        for a in assocs.values() {
            a.stop.cancel();
        }
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
        let (tx, rx) = mpsc::channel(QUEUE);
        let last = Arc::new(AtomicU64::new(start.elapsed().as_millis() as u64));
        let job = Association {
            src,
            sock: self.sock.clone(),
            dialer: self.dialer.clone(),
            idle: self.cfg.timeout,
            last: last.clone(),
            start,
            stop: stop.clone(),
        };
        tokio::spawn(job.run(rx));
        Assoc { tx, last, stop }
    }
}

/// The task of one association.
struct Association {
    src: SocketAddr,
    sock: Arc<UdpSocket>,
    dialer: Arc<Dialer>,
    idle: std::time::Duration,
    last: Arc<AtomicU64>,
    start: Instant,
    stop: CancellationToken,
}

impl Association {
    async fn run(self, mut rx: mpsc::Receiver<Bytes>) {
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
                while rx.try_recv().is_ok() {
                    datagram::dropped(UdpDrop::NoTunnel);
                }
                return;
            }
        };
        log::debug!("UDP from {src}: association open");
        let _open = crate::metrics::get().association();
        let (r, w) = tokio::io::split(tunnel);
        let mut rd = FramedRead::new(r, datagram::codec());
        let mut wr = FramedWrite::new(w, datagram::codec());
        let up = async {
            while let Some(d) = rx.recv().await {
                datagram::count(true, d.len());
                wr.feed(d).await?;
                // What is already queued goes into the same flush.
                while let Ok(d) = rx.try_recv() {
                    datagram::count(true, d.len());
                    wr.feed(d).await?;
                }
                SinkExt::<Bytes>::flush(&mut wr).await?;
            }
            Ok::<(), std::io::Error>(())
        };
        let down = async {
            while let Some(frame) = rd.next().await {
                let frame = frame?;
                self.last
                    .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
                datagram::count(false, frame.len());
                self.sock.send_to(&frame, src).await?;
            }
            Ok::<(), std::io::Error>(())
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
        log::debug!(
            "UDP from {src}: association closed{}",
            why.map(|w| format!(": {w}")).unwrap_or_default()
        );
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
