//! Layer 3, WebSocket (RFC 6455): the client's upgrade ([`handshake`]), the frame codec
//! ([`frame`]) and [`WsStream`], which carries a byte stream over binary frames with no task
//! and no pipe: it is itself `AsyncRead + AsyncWrite`.
//!
//! Reading concatenates the payloads of data frames (binary, text, continuation) and ignores
//! message boundaries; pings are answered; a Close frame ends the read side (EOF). Writing
//! sends each write as one binary frame. Shutting down sends Close 1000 and leaves the
//! transport open, so the peer can still send until it closes too (half-close, as TCP).

pub mod frame;
pub mod handshake;
mod read;
mod stream;
mod write;

pub use frame::{encode_header, parse_header};
pub use handshake::{accept_key, client, upgrade_request};
pub use stream::WsStream;

/// Which end of the connection we are: clients mask what they send, servers do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends masked frames, expects unmasked ones.
    Client,
    /// Sends unmasked frames, requires masked ones.
    Server,
}
