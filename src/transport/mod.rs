//! The pipeline, in wire order: TCP → TLS → optional WebSocket or HTTP/2 (gRPC) → optional
//! multiplexing (HTTP/2's own streams for gRPC).
//! This module is the only place that knows the order and which layers are optional; roles see
//! only [`Dialer`], [`Acceptor`], [`Tunnel`], [`BoxIo`] and [`relay`], built from the option
//! types of [`options`].

pub mod accept;
pub mod datagram;
pub mod dial;
pub mod dns;
pub mod fallback;
pub mod front;
pub mod grpc;
pub mod hello;
pub mod io;
pub mod listen;
pub mod mux;
pub mod options;
pub mod origin;
pub mod pool;
pub mod preamble;
pub mod protect;
pub mod relay;
pub mod serve;
pub mod sniff;
pub mod tcp;
pub mod tickets;
pub mod tls;
pub mod udp;
pub mod ws;

pub use accept::{Acceptor, Tunnel};
pub use dial::Dialer;
pub use io::BoxIo;
pub use listen::{Listener, Stream};
pub use relay::{Transferred, relay};
pub use serve::{ConnId, Limits};

/// ALPN of the WebSocket modes: HTTP/1.1 only, never h2 (the upgrade needs HTTP/1.1).
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
