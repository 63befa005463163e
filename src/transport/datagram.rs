//! What marks a tunnel as carrying datagrams rather than a byte stream (ALPN, WebSocket
//! subprotocol, or a stream's type byte in a version-2 multiplexed session), and the counting
//! of datagrams every end shares. How datagrams travel is [`super::udp`].

use std::sync::atomic::{AtomicBool, Ordering};

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

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte stream (a TCP connection).
    Stream,
    /// Datagrams, framed (a UDP association).
    Datagrams,
}

/// Counts `datagrams` of `bytes` in all that went `up` (towards the destination) or down.
pub fn count(up: bool, datagrams: usize, bytes: usize) {
    metrics().udp_datagrams(up, datagrams as u64, bytes as u64);
}

/// Counts a batch of datagrams that went `up` or down.
pub fn count_batch(up: bool, batch: &[&[u8]]) {
    count(up, batch.len(), batch.iter().map(|d| d.len()).sum());
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
