//! UDP through a tunnel: what marks a tunnel as carrying datagrams (ALPN, WebSocket
//! subprotocol, or a stream's type byte in a version-2 multiplexed session), the framing of
//! datagrams on it (`[u16 big-endian length][payload]`, one frame per datagram, never merged
//! or reordered), and the relay between such a tunnel and a connected UDP socket.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::io::BoxIo;
use crate::metrics::{UdpDrop, get as metrics};

/// ALPN of a plain-TLS tunnel that carries datagrams (the original offers no ALPN).
pub const ALPN_UDP: &[u8] = b"mtt-udp";
/// WebSocket subprotocol of a tunnel that carries datagrams.
pub const SUBPROTOCOL_UDP: &str = "mtt-udp";
/// ALPN of a plain-TLS multiplexed session whose streams open with a type byte.
pub const ALPN_MUX2: &[u8] = b"mtt-mux2";
/// WebSocket subprotocol of such a session (offered as `yamux2, yamux`).
pub const SUBPROTOCOL_YAMUX2: &str = "yamux2";
/// First byte of a stream in a version-2 session: a TCP tunnel.
pub const STREAM_TCP: u8 = 0;
/// First byte of a stream in a version-2 session: datagrams.
pub const STREAM_UDP: u8 = 1;

/// The largest UDP payload (IPv4: 65,535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte stream (a TCP connection).
    Stream,
    /// Datagrams, framed (a UDP association).
    Datagrams,
}

/// The codec of datagram frames.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(MAX_DATAGRAM)
        .new_codec()
}

/// Frames datagrams read from a tunnel.
pub type Reader<R> = FramedRead<R, LengthDelimitedCodec>;
/// Writes datagrams to a tunnel as frames.
pub type Writer<W> = FramedWrite<W, LengthDelimitedCodec>;

/// Counts a datagram that went `up` (towards the destination) or down.
pub fn count(up: bool, len: usize) {
    let m = metrics();
    m.udp_datagram(up, len as u64);
}

/// Milliseconds since `start`, for activity stamps shared between the two directions.
fn stamp(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Relays between a datagram tunnel and a UDP socket connected to the destination, until
/// the tunnel ends, a frame is bad, or nothing moved either way for `idle`. An unreachable
/// destination (ICMP port unreachable) ends nothing: later datagrams may reach it.
pub async fn relay_to_socket(io: BoxIo, sock: UdpSocket, idle: Duration) -> io::Result<()> {
    let _open = metrics().association();
    let (r, w) = tokio::io::split(io);
    let mut rd = FramedRead::new(r, codec());
    let mut wr = FramedWrite::new(w, codec());
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let up = async {
        while let Some(frame) = rd.next().await {
            let frame = frame?;
            last.store(stamp(start), Ordering::Relaxed);
            count(true, frame.len());
            match sock.send(&frame).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
        Ok::<(), io::Error>(())
    };
    let down = async {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let n = match sock.recv(&mut buf).await {
                Ok(n) => n,
                // The destination's port was closed (ICMP): the association lives on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            last.store(stamp(start), Ordering::Relaxed);
            if n > MAX_DATAGRAM {
                dropped(UdpDrop::TooLarge);
                continue;
            }
            count(false, n);
            SinkExt::<&[u8]>::feed(&mut wr, &buf[..n]).await?;
            // More already waiting goes into the same flush (one TLS record, one syscall).
            let mut more = 0;
            while more < 64 {
                match sock.try_recv(&mut buf) {
                    Ok(n) if n > MAX_DATAGRAM => dropped(UdpDrop::TooLarge),
                    Ok(n) => {
                        count(false, n);
                        SinkExt::<&[u8]>::feed(&mut wr, &buf[..n]).await?;
                        more += 1;
                    }
                    Err(_) => break,
                }
            }
            SinkExt::<&[u8]>::flush(&mut wr).await?;
        }
    };
    let quiet = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = start + since + idle;
            tokio::time::sleep_until(deadline).await;
            if start.elapsed() >= Duration::from_millis(last.load(Ordering::Relaxed)) + idle {
                return;
            }
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
        _ = quiet => Ok(()),
    }
}

/// Logs `msg` at WARN the first time only (per flag): a misconfiguration said once, not per
/// datagram or association.
pub fn warn_once(flag: &AtomicBool, msg: std::fmt::Arguments<'_>) {
    if !flag.swap(true, Ordering::Relaxed) {
        log::warn!("{msg}");
    }
}

/// Counts a datagram dropped for `why`.
pub fn dropped(why: UdpDrop) {
    metrics().udp_drop(why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    /// Frames keep datagram boundaries, the largest datagram fits, a larger frame is refused.
    #[tokio::test]
    async fn frames_keep_boundaries_and_refuse_oversize() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut wr = FramedWrite::new(a, codec());
        let mut rd = FramedRead::new(b, codec());
        let sizes = [1usize, 0, 1400, MAX_DATAGRAM];
        for (i, n) in sizes.iter().enumerate() {
            wr.feed(Bytes::from(vec![i as u8; *n])).await.expect("feed");
        }
        SinkExt::<Bytes>::flush(&mut wr).await.expect("flush");
        for (i, n) in sizes.iter().enumerate() {
            let f = rd.next().await.expect("frame").expect("ok");
            assert_eq!(f.len(), *n);
            assert!(f.iter().all(|b| *b == i as u8));
        }
        let mut raw = wr.into_inner();
        raw.write_all(&[0xff, 0xff]).await.expect("write");
        raw.write_all(&[0u8; 64]).await.expect("write");
        assert!(
            rd.next().await.expect("frame").is_err(),
            "65,535 bytes is too large"
        );
    }
}
