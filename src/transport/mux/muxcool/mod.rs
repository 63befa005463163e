//! Mux.Cool, v2ray's multiplexing, as v2ray-plugin's clients (`mux=N`, its default) and
//! servers speak it inside their WebSocket: streams over one connection, each opened by a
//! New frame that says whether it carries TCP or UDP (the address in it is not used: a server
//! sends every stream to its own destination), carried by Keep frames, ended by End, driven by
//! the [`engine`](super::engine) of the multiplexers without per-stream flow control. The
//! wire format is in [`frame`] and `docs/multiplexing.md`.
//!
//! Where v2ray's behaviour and this one differ: an End is a half-close here (the other
//! direction goes on until its own End, as TCP's FIN), and one stream whose reader is slow
//! does not stall its siblings (see the engine).

pub mod frame;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::engine::{self, Body, Event, Frame, SMALL, Wire, read_body};
use crate::transport::datagram::Kind;
use frame::{MAX_META, Meta, NET_TCP, NET_UDP, OPT_DATA, OPT_ERROR, Status, head};

pub use engine::Config;

/// The server end of a Mux.Cool session.
pub type MuxCoolSession = engine::ServerEnd<MuxCool>;
/// The client end of a Mux.Cool session (stream ids 1, 2, 3, …, as v2ray's).
pub type MuxCoolClient = engine::ClientEnd<MuxCool>;

/// A keepalive every 30 s; v2ray's clients send none, so a silent peer is not taken as gone
/// (each stream has its idle timeout); memory bounded as smux's. Twice smux's streams at once:
/// v2ray's clients (`mux` up to 16 in v2ray-plugin's strings here) count a stream gone once
/// they sent its End, a server once its destination's side has ended too, and a client at
/// its limit opening a stream in between would be refused.
pub const DEFAULT: Config = Config {
    keepalive: Duration::from_secs(30),
    dead_after: Duration::MAX,
    max_streams: 2 * super::MAX_STREAMS_PER_SESSION,
    hold: super::smux::HOLD,
    spare: super::smux::SPARE,
    stall: super::smux::STALL,
};

/// The largest payload of one frame (v2ray writes 8 KiB and reads up to 64 KiB).
const MAX_DATA: usize = 16 * 1024;

/// Mux.Cool frames.
pub struct MuxCool;

fn frame(sid: u32, status: Status, opt: u8, net: u8, body: Bytes) -> Frame {
    let mut h = Vec::with_capacity(engine::HEAD);
    let data = (status == Status::Keep).then_some(body.len() as u16);
    head(sid as u16, status, opt, net, data, &mut h);
    Frame::new(&h, body)
}

impl Wire for MuxCool {
    const NAME: &'static str = "Mux.Cool";
    const FIRST_ID: u32 = 1;
    const ID_STEP: u32 = 1;
    const MAX_DATA: usize = MAX_DATA;
    const DATAGRAMS: bool = true;
    const TYPED: bool = true;

    fn open(sid: u32, kind: Kind) -> Frame {
        let net = match kind {
            Kind::Stream => NET_TCP,
            Kind::Datagrams => NET_UDP,
        };
        frame(sid, Status::New, 0, net, Bytes::new())
    }

    fn data(sid: u32, body: Bytes) -> Frame {
        frame(sid, Status::Keep, 0, 0, body)
    }

    fn close(sid: u32) -> Frame {
        frame(sid, Status::End, 0, 0, Bytes::new())
    }

    fn refuse(sid: u32) -> Frame {
        frame(sid, Status::End, OPT_ERROR, 0, Bytes::new())
    }

    fn keepalive() -> Frame {
        frame(0, Status::KeepAlive, 0, 0, Bytes::new())
    }

    async fn read<R: AsyncRead + Unpin + Send>(
        r: &mut R,
        small: &mut [u8; SMALL],
    ) -> io::Result<Option<Event>> {
        let mut len = [0u8; 2];
        match r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let meta_len = usize::from(u16::from_be_bytes(len));
        let bad = |e| io::Error::new(io::ErrorKind::InvalidData, e);
        if meta_len > MAX_META {
            return Err(bad(frame::MetaError::Length(meta_len)));
        }
        let mut meta = [0u8; MAX_META];
        r.read_exact(&mut meta[..meta_len]).await?;
        let m = Meta::parse(&meta[..meta_len]).map_err(bad)?;
        let body = if m.opt & OPT_DATA != 0 {
            r.read_exact(&mut len).await?;
            read_body(r, small, usize::from(u16::from_be_bytes(len))).await?
        } else {
            Body::None
        };
        let sid = u32::from(m.sid);
        Ok(Some(match m.status {
            Status::New => Event::Open {
                sid,
                kind: if m.net == NET_UDP {
                    Kind::Datagrams
                } else {
                    Kind::Stream
                },
                body,
            },
            // A Keep without data says nothing.
            Status::Keep if matches!(body, Body::None) => Event::Nop,
            Status::Keep => Event::Data { sid, body },
            // Data riding an End (none of v2ray's do) is dropped with it.
            Status::End => Event::Close { sid },
            Status::KeepAlive => Event::Nop,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::fingerprint::sha256;
    use crate::transport::datagram::{STREAM_TCP, STREAM_UDP};
    use crate::transport::mux::Quiet;
    use crate::transport::mux::engine::EMPTY_FRAMES;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn quiet() -> Quiet {
        Quiet {
            first: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            ping: None,
        }
    }

    fn frame_bytes(f: Frame) -> Vec<u8> {
        let (h, b) = f.parts();
        [h, b].concat()
    }

    /// Streams of both kinds between the two ends: a server's streams begin with the type
    /// byte their New frame made; a byte stream half-closes and is answered after it; a
    /// datagram stream carries each datagram frame as one Keep, and back.
    #[tokio::test]
    async fn byte_and_datagram_streams_both_ways() {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let client = MuxCoolClient::new(Box::new(a), DEFAULT);
        let mut server = MuxCoolSession::server(Box::new(b), DEFAULT, quiet());
        let srv = tokio::spawn(async move {
            while let Some(Ok(mut s)) = server.next().await {
                tokio::spawn(async move {
                    let mut kind = [0u8; 1];
                    s.read_exact(&mut kind).await.expect("type byte");
                    if kind[0] == STREAM_UDP {
                        // Echo two datagram frames as they came.
                        let mut two = [0u8; 2 + 3 + 2 + 5];
                        s.read_exact(&mut two).await.expect("two datagrams");
                        s.write_all(&two).await.expect("echo");
                        return;
                    }
                    assert_eq!(kind[0], STREAM_TCP);
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.expect("read to End");
                    s.write_all(&sha256(&got)).await.expect("reply after End");
                    s.shutdown().await.expect("End");
                });
            }
        });
        let mut s = client.open_kind(Kind::Stream).await.expect("open");
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        s.write_all(&sent).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("reply");
        assert_eq!(back, sha256(&sent));
        let mut u = client.open_kind(Kind::Datagrams).await.expect("open UDP");
        // Two datagram frames, written in pieces that split them.
        let frames = [
            &[0u8, 3, b'o', b'n', b'e'][..],
            &[0, 5, b't', b'h', b'r', b'e', b'e'],
        ]
        .concat();
        for piece in frames.chunks(4) {
            u.write_all(piece).await.expect("write");
        }
        let mut echoed = vec![0u8; frames.len()];
        u.read_exact(&mut echoed).await.expect("echo");
        assert_eq!(echoed, frames);
        srv.abort();
    }

    /// What the server sends back for a stream beyond its limit: End with the error bit; and
    /// a flood of empty Keep frames ends the session.
    #[tokio::test]
    async fn refusals_and_floods() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let cfg = Config {
            max_streams: 1,
            ..DEFAULT
        };
        let mut server = MuxCoolSession::server(Box::new(ours), cfg, quiet());
        peer.write_all(&frame_bytes(MuxCool::open(1, Kind::Stream)))
            .await
            .expect("New 1");
        peer.write_all(&frame_bytes(MuxCool::open(2, Kind::Stream)))
            .await
            .expect("New 2");
        let _first = server.next().await.expect("stream 1").expect("ok");
        let mut refused = [0u8; 6];
        peer.read_exact(&mut refused).await.expect("answer");
        assert_eq!(refused, [0, 4, 0, 2, Status::End as u8, OPT_ERROR]);
        for _ in 0..=EMPTY_FRAMES {
            peer.write_all(&frame_bytes(MuxCool::data(1, Bytes::new())))
                .await
                .expect("empty Keep");
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), server.next()).await;
        assert!(matches!(ended, Ok(None)), "the session ends");
    }
}
