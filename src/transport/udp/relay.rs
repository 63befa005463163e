//! The server's end of a datagram tunnel: the destination's socket (resolved as TCP
//! destinations are), and the relay between the tunnel and it, until either ends or both
//! fall quiet.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::frame::{FrameReader, MAX_DATAGRAM, frame_into};
use super::socket::{MAX_SEGMENTS, Socket};
use super::{idle_watch, stamp};
use crate::metrics::UdpDrop;
use crate::transport::datagram::{count, count_batch, dropped};
use crate::transport::io::BoxIo;

/// Relays between a datagram tunnel and a UDP socket connected to the destination, until
/// the tunnel ends, a frame is bad, or nothing moved either way for `idle`. An unreachable
/// destination (ICMP port unreachable) ends nothing: later datagrams may reach it.
pub async fn relay_to_socket(io: BoxIo, sock: Socket, idle: Duration) -> io::Result<()> {
    let _open = crate::metrics::get().association();
    let (r, mut w) = tokio::io::split(io);
    let mut rd = FrameReader::new(r);
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let up = async {
        loop {
            let mut batch: [&[u8]; MAX_SEGMENTS] = [&[]; MAX_SEGMENTS];
            let n = rd.next_batch(&mut batch).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            last.store(stamp(start), Ordering::Relaxed);
            count_batch(true, &batch[..n]);
            sock.send_all(&batch[..n], None).await?;
        }
    };
    let down = async {
        // Frames for the tunnel, made from what waits on the socket; allocated when the
        // first datagram comes, and let go after a burst that made it large.
        let mut out = BytesMut::new();
        loop {
            sock.readable().await?;
            let (n, bytes) = take_waiting(&sock, &mut out)?;
            if n == 0 {
                continue;
            }
            last.store(stamp(start), Ordering::Relaxed);
            count(false, n, bytes);
            // One TLS record, one syscall for all of them.
            w.write_all(&out).await?;
            w.flush().await?;
            if out.capacity() > KEEP_OUT {
                out = BytesMut::new();
            } else {
                out.clear();
            }
        }
    };
    let quiet = idle_watch(start, &last, idle);
    tokio::select! {
        r = up => r,
        r = down => r,
        _ = quiet => Ok(()),
    }
}

/// Frames kept for the next round of a relay's downward direction; a burst's larger buffer
/// is let go.
const KEEP_OUT: usize = 64 * 1024;

thread_local! {
    /// Where datagrams from destinations are received, one worker thread's for all its
    /// associations: a datagram's room (64 KiB) is needed only while it is taken.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_DATAGRAM + 1]);
}

/// Takes the datagrams waiting on `sock` (up to [`MAX_SEGMENTS`]) into `out` as frames;
/// (datagrams, bytes). A port the destination closed (ICMP) ends nothing; an oversized
/// datagram is dropped and counted.
fn take_waiting(sock: &Socket, out: &mut BytesMut) -> io::Result<(usize, usize)> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let (mut n, mut bytes) = (0, 0);
        while n < MAX_SEGMENTS {
            match sock.try_recv(&mut buf) {
                Ok(k) if k > MAX_DATAGRAM => dropped(UdpDrop::TooLarge),
                Ok(k) => {
                    frame_into(out, &buf[..k]);
                    n += 1;
                    bytes += k;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok((n, bytes))
    })
}

/// A socket connected to `dest`: its first address, resolved through `dns` when given (as
/// the server's TCP destinations are).
pub async fn connect_dest(
    dest: &crate::addr::HostPort,
    dns: Option<&crate::transport::dns::Dns>,
) -> io::Result<Socket> {
    let addr = match dns {
        Some(dns) => dns.resolve(dest).await?,
        None => dest.resolve().await?,
    }
    .into_iter()
    .next()
    .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    Socket::connected(addr)
}
