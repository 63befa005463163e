//! What the engine asks of each multiplexer ([`Wire`]): how its frames are written
//! ([`Frame`]), and what each frame read means ([`Event`]).

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::rx::SMALL;
use crate::transport::datagram::Kind;

/// What one multiplexer's frames are: how each is written, and what each read one means.
pub trait Wire: Send + Sync + 'static {
    /// The multiplexer's name in logs.
    const NAME: &'static str;
    /// The first stream id a client opens, and the step to the next.
    const FIRST_ID: u32;
    /// See [`Wire::FIRST_ID`].
    const ID_STEP: u32;
    /// The largest payload of one data frame.
    const MAX_DATA: usize;
    /// Whether streams may carry datagrams (UDP).
    const DATAGRAMS: bool;
    /// Whether a server's streams begin with a byte saying what they carry (as yamux version
    /// 2's do), made from what the peer's open frame said.
    const TYPED: bool;

    /// Opens stream `sid` carrying `kind`.
    fn open(sid: u32, kind: Kind) -> Frame;
    /// Payload for stream `sid` (for a datagram stream: one datagram).
    fn data(sid: u32, body: Bytes) -> Frame;
    /// This side is done sending on `sid`.
    fn close(sid: u32) -> Frame;
    /// The peer's stream `sid` is refused, or closed here for a reason.
    fn refuse(sid: u32) -> Frame {
        Self::close(sid)
    }
    /// A keepalive.
    fn keepalive() -> Frame;
    /// Reads the next frame: `Ok(None)` at a clean end between frames. A payload shorter
    /// than [`SMALL`] is read into `small`.
    fn read<R: AsyncRead + Unpin + Send>(
        r: &mut R,
        small: &mut [u8; SMALL],
    ) -> impl Future<Output = io::Result<Option<Event>>> + Send;
    /// A session starts, or (`false`) ends: for the multiplexer's own gauges.
    fn count(_up: bool) {}
}

/// What one frame read means.
#[derive(Debug)]
pub enum Event {
    /// The peer opens stream `sid` carrying `kind`, with its first payload if any.
    Open {
        /// The stream.
        sid: u32,
        /// What it carries.
        kind: Kind,
        /// Its first payload.
        body: Body,
    },
    /// Payload for stream `sid` (an empty one is counted: no real peer sends many).
    Data {
        /// The stream.
        sid: u32,
        /// The payload.
        body: Body,
    },
    /// The peer is done sending on `sid`.
    Close {
        /// The stream.
        sid: u32,
    },
    /// A keepalive, or anything else that only shows the peer is there.
    Nop,
}

/// A frame's payload as read.
#[derive(Debug)]
pub enum Body {
    /// None.
    None,
    /// In the first `n` bytes of the reader's small buffer.
    Small(usize),
    /// In a buffer of its own.
    Owned(BytesMut),
}

impl Body {
    pub(super) fn len(&self) -> usize {
        match self {
            Body::None => 0,
            Body::Small(n) => *n,
            Body::Owned(b) => b.len(),
        }
    }
}

/// Reads a payload of `len` bytes: into `small` when short, else into a buffer of its own.
pub async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    small: &mut [u8; SMALL],
    len: usize,
) -> io::Result<Body> {
    use tokio::io::AsyncReadExt;
    if len >= SMALL {
        let mut b = BytesMut::zeroed(len);
        r.read_exact(&mut b).await?;
        Ok(Body::Owned(b))
    } else {
        r.read_exact(&mut small[..len]).await?;
        Ok(Body::Small(len))
    }
}

/// One frame to send: a short head (up to 16 bytes) and a payload.
pub struct Frame {
    head: [u8; HEAD],
    head_len: u8,
    body: Bytes,
}

/// The longest head a frame may have.
pub const HEAD: usize = 16;

impl Frame {
    /// A frame of `head` then `body`.
    pub fn new(head: &[u8], body: Bytes) -> Self {
        let mut h = [0u8; HEAD];
        h[..head.len()].copy_from_slice(head);
        Frame {
            head: h,
            head_len: head.len() as u8,
            body,
        }
    }

    /// Its bytes: the head, then the payload.
    pub fn parts(&self) -> (&[u8], &[u8]) {
        (&self.head[..usize::from(self.head_len)], &self.body)
    }
}
