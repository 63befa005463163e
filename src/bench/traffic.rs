//! The traffic of `mtt bench`: a destination that sends and checks a known pattern, and
//! transfers through a tunnel whose bytes are hashed on arrival in both directions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use xxhash_rust::xxh3::Xxh3;

use super::{BLOCK, STEP_LIMIT};
use crate::error::IoContext;
use crate::{Error, Result};

/// A deterministic pseudo-random block; streams repeat it.
pub(super) fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn expected_hash(block: &[u8], n: u64) -> u64 {
    let mut h = Xxh3::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        h.update(&block[..k]);
        left -= k as u64;
    }
    h.digest()
}

/// Connects, sends `up` bytes while receiving `down` bytes, checks both hashes; returns the
/// time from connect to the last byte.
pub(super) async fn transfer(
    addr: SocketAddr,
    up: u64,
    down: u64,
    block: Arc<Vec<u8>>,
) -> Result<Duration> {
    let work = async {
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (mut r, mut w) = s.split();
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&up.to_le_bytes());
        header[8..].copy_from_slice(&down.to_le_bytes());
        let send = async {
            w.write_all(&header).await?;
            send_pattern(&mut w, &block, up).await?;
            w.shutdown().await
        };
        let recv = async {
            let h = recv_hashed(&mut r, down).await?;
            let mut trailer = [0u8; 8];
            r.read_exact(&mut trailer).await?;
            Ok((h, u64::from_le_bytes(trailer)))
        };
        let ((), (down_hash, up_hash)) = tokio::try_join!(send, recv)?;
        let elapsed = start.elapsed();
        if down_hash != expected_hash(&block, down) || up_hash != expected_hash(&block, up) {
            return Err(std::io::Error::other(
                "data corrupted in transit: hash mismatch",
            ));
        }
        Ok(elapsed)
    };
    match tokio::time::timeout(STEP_LIMIT, work).await {
        Ok(r) => r.context(|| format!("bench transfer via {addr}")),
        Err(_) => Err(Error::runtime(format!(
            "bench transfer via {addr} took longer than {STEP_LIMIT:?}"
        ))),
    }
}

/// Writes `n` bytes of the repeated pattern.
async fn send_pattern<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    block: &[u8],
    n: u64,
) -> std::io::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len() as u64) as usize;
        w.write_all(&block[..k]).await?;
        left -= k as u64;
    }
    Ok(())
}

/// Reads exactly `n` bytes, returning their xxh3.
async fn recv_hashed<R: AsyncReadExt + Unpin>(r: &mut R, n: u64) -> std::io::Result<u64> {
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        let got = r.read(&mut buf[..k]).await?;
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "transfer cut short",
            ));
        }
        h.update(&buf[..got]);
        left -= got as u64;
    }
    Ok(h.digest())
}

/// Serves the bench protocol: 16-byte header (up, down), then `down` bytes of the pattern
/// followed by the xxh3 of the `up` bytes received.
pub(super) async fn destination(l: TcpListener, block: Arc<Vec<u8>>) {
    while let Ok((mut s, _)) = l.accept().await {
        let block = block.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let work = async {
                let mut header = [0u8; 16];
                s.read_exact(&mut header).await?;
                let up = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
                let down = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
                let (mut r, mut w) = s.split();
                let recv = recv_hashed(&mut r, up);
                let send = send_pattern(&mut w, &block, down);
                let (hash, ()) = tokio::try_join!(recv, send)?;
                w.write_all(&hash.to_le_bytes()).await?;
                w.shutdown().await
            };
            if let Err(e) = work.await {
                log::warn!("bench destination: {e}");
            }
        });
    }
}
