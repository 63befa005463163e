//! UDP in one place: the socket ([`socket`]: batched receive and send), the framing of
//! datagrams on a tunnel ([`frame`]), the client's associations ([`client`]: one per source
//! address, each with its queue and tunnel), the server's relay to a destination ([`relay`]),
//! and the idle watchdog both ends share. How a tunnel is marked as carrying datagrams is
//! [`super::datagram`].

pub mod client;
pub mod frame;
mod queue;
pub mod relay;
pub mod socket;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use client::UdpSide;
pub use frame::{FrameReader, MAX_DATAGRAM};
pub use relay::{connect_dest, relay_to_socket};
pub use socket::{Socket, widen_receive_buffer};

/// Milliseconds since `start`: the activity stamps that both directions of an association
/// write and its watchdog reads.
pub fn stamp(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Returns once nothing has moved for `idle`: `last` holds the latest activity, in
/// milliseconds since `start` ([`stamp`]).
pub async fn idle_watch(start: Instant, last: &AtomicU64, idle: Duration) {
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        tokio::time::sleep_until(start + since + idle).await;
        if start.elapsed() >= Duration::from_millis(last.load(Ordering::Relaxed)) + idle {
            return;
        }
    }
}
