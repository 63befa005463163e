//! smux version 1 sessions, the original's multiplexing: streams over one connection, with
//! its keepalive (a NOP every 30 s; a session that hears nothing for 70 s is over), driven by
//! the [`engine`](super::engine) of the multiplexers without per-stream flow control.

pub mod frame;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::engine::{self, Body, Event, Frame, SMALL, Wire, read_body};
use crate::transport::datagram::Kind;
use frame::{Cmd, HEADER, Header, MAX_FRAME};

pub use engine::Config;

/// The WebSocket subprotocol of an original client that multiplexes.
pub const SUBPROTOCOL: &str = "smux_on";

/// The server end of an smux session.
pub type SmuxSession = engine::ServerEnd<Smux>;
/// The client end of an smux session (stream ids 3, 5, 7, …, as the original's).
pub type SmuxClient = engine::ClientEnd<Smux>;

/// The original's keepalive (30 s, 70 s) and stream limit (16).
pub const DEFAULT: Config = Config {
    keepalive: Duration::from_secs(30),
    dead_after: Duration::from_secs(70),
    max_streams: super::MAX_STREAMS_PER_SESSION,
    hold: HOLD,
    spare: SPARE,
    stall: STALL,
};

/// What one stream may hold unread: about 80 ms of a 100 Mbit/s upload. More would let 16
/// streams of a session pin 16 times as much.
pub const HOLD: usize = 1 << 20;
/// What the streams of a session may hold beyond their shares, together: a stream may fall
/// 9 MiB behind its sender before its siblings wait (a session holds at most 16 × 1 + 8 MiB).
pub const SPARE: usize = 8 << 20;
/// How long the other streams of a session may wait for one stream's reader.
pub const STALL: Duration = Duration::from_secs(2);

/// smux version 1 frames: an 8-byte header (see [`frame`]), then the payload.
pub struct Smux;

fn control(cmd: Cmd, sid: u32) -> Frame {
    Frame::new(&Header::new(cmd, sid, 0).encode(), Bytes::new())
}

impl Wire for Smux {
    const NAME: &'static str = "smux";
    const FIRST_ID: u32 = 3;
    const ID_STEP: u32 = 2;
    const MAX_DATA: usize = MAX_FRAME;
    const DATAGRAMS: bool = false;
    const TYPED: bool = false;

    fn open(sid: u32, _kind: Kind) -> Frame {
        control(Cmd::Syn, sid)
    }

    fn data(sid: u32, body: Bytes) -> Frame {
        Frame::new(
            &Header::new(Cmd::Psh, sid, body.len() as u16).encode(),
            body,
        )
    }

    fn close(sid: u32) -> Frame {
        control(Cmd::Fin, sid)
    }

    fn keepalive() -> Frame {
        control(Cmd::Nop, 0)
    }

    async fn read<R: AsyncRead + Unpin + Send>(
        r: &mut R,
        small: &mut [u8; SMALL],
    ) -> io::Result<Option<Event>> {
        let mut head = [0u8; HEADER];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let h = Header::parse(&head).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let sid = h.sid;
        Ok(Some(match h.cmd {
            Cmd::Nop => Event::Nop,
            Cmd::Syn => Event::Open {
                sid,
                kind: Kind::Stream,
                body: Body::None,
            },
            Cmd::Fin => Event::Close { sid },
            Cmd::Psh => Event::Data {
                sid,
                body: read_body(r, small, usize::from(h.len)).await?,
            },
        }))
    }

    fn count(up: bool) {
        let g = &crate::metrics::get().smux_sessions;
        if up {
            g.inc();
        } else {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::fingerprint::sha256;
    use crate::transport::mux::Quiet;
    use crate::transport::mux::engine::EMPTY_FRAMES;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn quiet() -> Quiet {
        Quiet {
            first: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            ping: None,
        }
    }

    fn pair(cfg: Config) -> (SmuxClient, SmuxSession) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (
            SmuxClient::new(Box::new(a), cfg),
            SmuxSession::server(Box::new(b), cfg, quiet()),
        )
    }

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Eight streams at once: each sends its data and half-closes; the server reads to the
    /// end, then answers the hash of what it got and closes; both directions arrive intact.
    #[tokio::test]
    async fn streams_carry_data_both_ways_with_half_close() {
        let (client, mut server) = pair(DEFAULT);
        let srv = tokio::spawn(async move {
            while let Some(Ok(mut s)) = server.next().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.expect("read to FIN");
                    let mut reply = sha256(&got).to_vec();
                    reply.extend_from_slice(&got[..got.len().min(100_000)]);
                    s.write_all(&reply).await.expect("reply after FIN");
                    s.shutdown().await.expect("FIN");
                });
            }
        });
        let mut tasks = Vec::new();
        let client = Arc::new(client);
        for i in 0..8u8 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = client.open().await.expect("open");
                let sent = data(300_000 + usize::from(i) * 977, i);
                s.write_all(&sent).await.expect("write");
                s.shutdown().await.expect("half-close");
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.expect("read reply");
                assert_eq!(&back[..32], &sha256(&sent)[..]);
                assert_eq!(&back[32..], &sent[..100_000]);
                s.id()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("stream task"));
        }
        ids.sort_unstable();
        assert_eq!(
            ids,
            vec![3, 5, 7, 9, 11, 13, 15, 17],
            "client ids are odd from 3"
        );
        srv.abort();
    }

    /// With the session full, one more stream is refused alone (its reader sees the end at
    /// once) while the open ones go on.
    #[tokio::test]
    async fn the_stream_beyond_the_limit_is_refused_alone() {
        let cfg = Config {
            max_streams: 4,
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let srv = tokio::spawn(async move {
            while let Some(Ok(mut s)) = server.next().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => s.write_all(&buf[..n]).await.expect("echo"),
                        }
                    }
                });
            }
        });
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut s = client.open().await.expect("open");
            s.write_all(b"ping").await.expect("write");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.expect("echo");
            open.push(s);
        }
        let mut extra = client.open().await.expect("open");
        let mut b = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut b))
            .await
            .expect("refused at once")
            .expect("read");
        assert_eq!(n, 0, "the fifth stream ends without data");
        for s in &mut open {
            s.write_all(b"more").await.expect("write");
            s.read_exact(&mut b).await.expect("the others go on");
            assert_eq!(&b, b"more");
        }
        srv.abort();
    }

    /// A stream whose reader stops is closed once it holds its share and the session's
    /// spare room; another stream of the session keeps flowing meanwhile and after.
    #[tokio::test]
    async fn a_stalled_stream_is_closed_alone() {
        let cfg = Config {
            hold: 64 * 1024,
            spare: 128 * 1024,
            stall: Duration::from_millis(300),
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let (stalled_tx, stalled_rx) = tokio::sync::oneshot::channel();
        let srv = tokio::spawn(async move {
            // The first stream is never read; the second echoes.
            let first = server.next().await.expect("first").expect("ok");
            let _ = stalled_tx.send(first);
            let mut s = server.next().await.expect("second").expect("ok");
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => s.write_all(&buf[..n]).await.expect("echo"),
                    }
                }
            });
            while let Some(Ok(_)) = server.next().await {}
        });
        let mut stalled = client.open().await.expect("open");
        stalled.write_all(b"x").await.expect("write");
        let _held = stalled_rx.await.expect("the server took the stream");
        let mut live = client.open().await.expect("open");
        let chunk = vec![1u8; 16 * 1024];
        // Far more than the hold: the stalled stream is closed, and says so to our writer or
        // reader, within bounded time.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            for _ in 0..64 {
                if stalled.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let mut b = [0u8; 1];
            let _ = stalled.read(&mut b).await;
        })
        .await;
        assert!(ended.is_ok(), "the stalled stream was never closed");
        let mut b = [0u8; 1];
        assert_eq!(stalled.read(&mut b).await.expect("FIN"), 0);
        let sent = data(200_000, 9);
        let mut back = vec![0u8; sent.len()];
        let (mut r, mut w) = tokio::io::split(&mut live);
        let (wrote, read) = tokio::join!(w.write_all(&sent), r.read_exact(&mut back));
        wrote.expect("write");
        read.expect("read");
        assert_eq!(back, sent, "the other stream went on intact");
        srv.abort();
    }

    /// A stream whose reader stops for a while borrows the session's spare room: its sibling
    /// goes on meanwhile, and once its reader comes back, everything it was sent is there
    /// (with no spare room the session would have waited for it, then closed it).
    #[tokio::test]
    async fn a_stream_behind_borrows_the_spare_room() {
        let cfg = Config {
            hold: 64 * 1024,
            spare: 512 * 1024,
            stall: Duration::from_millis(300),
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let srv = tokio::spawn(async move {
            let mut behind = server.next().await.expect("first").expect("ok");
            let mut live = server.next().await.expect("second").expect("ok");
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut live);
                tokio::io::copy(&mut r, &mut w).await.expect("echo");
                w.shutdown().await.expect("FIN");
            });
            tokio::spawn(async move {
                go.await.expect("go");
                let mut got = Vec::new();
                behind.read_to_end(&mut got).await.expect("all of it");
                behind.write_all(&sha256(&got)).await.expect("reply");
                behind.shutdown().await.expect("FIN");
            });
            while let Some(Ok(_)) = server.next().await {}
        });
        let mut behind = client.open().await.expect("open");
        behind.write_all(b"x").await.expect("write");
        let mut live = client.open().await.expect("open");
        // Six times its share, unread, before the sibling's turn.
        let late = data(400_000, 5);
        behind.write_all(&late[1..]).await.expect("write");
        behind.shutdown().await.expect("FIN");
        let sent = data(200_000, 9);
        let (mut r, mut w) = tokio::io::split(&mut live);
        let mut back = Vec::new();
        let (wrote, read) = tokio::join!(
            async {
                w.write_all(&sent).await?;
                w.shutdown().await
            },
            r.read_to_end(&mut back)
        );
        wrote.expect("write");
        read.expect("read");
        assert_eq!(back, sent, "the sibling went on");
        go_tx.send(()).expect("the reader waits");
        let mut hash = Vec::new();
        behind.read_to_end(&mut hash).await.expect("reply");
        let mut whole = b"x".to_vec();
        whole.extend_from_slice(&late[1..]);
        assert_eq!(hash, sha256(&whole).to_vec(), "the late reader got it all");
        srv.abort();
    }

    /// A reader slower than its sender but never stopping is waited for, not cut: the
    /// whole upload arrives intact.
    #[tokio::test]
    async fn a_slow_reader_is_waited_for() {
        let cfg = Config {
            hold: 32 * 1024,
            spare: 0,
            stall: Duration::from_millis(500),
            ..DEFAULT
        };
        let (client, mut server) = pair(cfg);
        let srv = tokio::spawn(async move {
            let mut s = server.next().await.expect("stream").expect("ok");
            let mut got = Vec::new();
            let mut buf = vec![0u8; 8 * 1024];
            loop {
                match s.read(&mut buf).await.expect("read") {
                    0 => break,
                    n => got.extend_from_slice(&buf[..n]),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            s.write_all(&sha256(&got)).await.expect("reply");
            s.shutdown().await.expect("FIN");
            while let Some(Ok(_)) = server.next().await {}
        });
        let mut s = client.open().await.expect("open");
        let sent = data(400_000, 3);
        s.write_all(&sent).await.expect("write");
        s.shutdown().await.expect("FIN");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("reply");
        assert_eq!(back, sha256(&sent).to_vec());
        srv.abort();
    }

    /// What the session still writes once `server` is dropped, up to its end.
    async fn rest_after_end(server: SmuxSession, peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        drop(server);
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut rest))
            .await
            .expect("the session ends")
            .expect("read");
        rest
    }

    /// A refused stream's FIN is said again, once, when data comes on it (the peer may have
    /// missed the first).
    #[tokio::test]
    async fn data_on_a_refused_stream_gets_its_fin_again_once() {
        let cfg = Config {
            max_streams: 1,
            ..DEFAULT
        };
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), cfg, quiet());
        let frame = |cmd, sid, body: &[u8]| {
            let len = u16::try_from(body.len()).expect("small");
            let mut f = Header::new(cmd, sid, len).encode().to_vec();
            f.extend_from_slice(body);
            f
        };
        let next_header = async |peer: &mut tokio::io::DuplexStream| {
            let mut head = [0u8; HEADER];
            tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut head))
                .await
                .expect("a frame in time")
                .expect("read");
            Header::parse(&head).expect("a valid frame")
        };
        peer.write_all(&frame(Cmd::Syn, 3, b""))
            .await
            .expect("write");
        let _first = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("accepted")
            .expect("a stream");
        peer.write_all(&frame(Cmd::Syn, 5, b""))
            .await
            .expect("write");
        assert_eq!(next_header(&mut peer).await, Header::new(Cmd::Fin, 5, 0));
        // As if that FIN had found no stream at the peer: its data comes, and so does the FIN
        // again; more data after that, or data on a stream never opened, gets nothing.
        for _ in 0..2 {
            peer.write_all(&frame(Cmd::Psh, 5, b"ping"))
                .await
                .expect("write");
        }
        peer.write_all(&frame(Cmd::Psh, 7, b"ping"))
            .await
            .expect("write");
        assert_eq!(next_header(&mut peer).await, Header::new(Cmd::Fin, 5, 0));
        // Nothing more for 5 or 7 before the session's end.
        let rest = rest_after_end(server, &mut peer).await;
        let more: Vec<Header> = rest
            .chunks(HEADER)
            .filter_map(|h| Header::parse(h.try_into().ok()?).ok())
            .filter(|h| h.cmd == Cmd::Fin && h.sid != 3)
            .collect();
        assert!(more.is_empty(), "FINs repeated beyond one: {more:?}");
    }

    /// The same for a stream accepted and closed at once (its destination could not be
    /// reached): data on it after its FIN gets the FIN again, once.
    #[tokio::test]
    async fn data_on_a_stream_closed_here_gets_its_fin_again_once() {
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        let syn = Header::new(Cmd::Syn, 3, 0).encode();
        let mut psh = Header::new(Cmd::Psh, 3, 4).encode().to_vec();
        psh.extend_from_slice(b"ping");
        let fin = Header::new(Cmd::Fin, 3, 0).encode();
        peer.write_all(&syn).await.expect("write");
        let stream = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("accepted")
            .expect("a stream");
        drop(stream);
        let mut head = [0u8; HEADER];
        for _ in 0..2 {
            // The FIN of the close, then (after data) the one said again.
            tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut head))
                .await
                .expect("a frame in time")
                .expect("read");
            assert_eq!(head, fin);
            peer.write_all(&psh).await.expect("write");
        }
        let rest = rest_after_end(server, &mut peer).await;
        assert!(
            !rest.chunks(HEADER).any(|h| h == fin),
            "a FIN repeated beyond one: {rest:?}"
        );
    }

    /// An empty data frame is nothing (as xtaci/smux takes it): the data after it arrives,
    /// and the stream ends only at the peer's FIN. A flood of them closes the session.
    #[tokio::test]
    async fn empty_data_frames_are_ignored_and_a_flood_of_them_ends_the_session() {
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        let frame = |cmd, body: &[u8]| {
            let mut f = Header::new(cmd, 3, body.len() as u16).encode().to_vec();
            f.extend_from_slice(body);
            f
        };
        let mut wire = frame(Cmd::Syn, b"");
        for body in [&b"abc"[..], b"", b"def", b""] {
            wire.extend(frame(Cmd::Psh, body));
        }
        wire.extend(frame(Cmd::Fin, b""));
        peer.write_all(&wire).await.expect("write");
        let mut s = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("accepted")
            .expect("a stream")
            .expect("ok");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
            .await
            .expect("FIN in time")
            .expect("read");
        assert_eq!(got, b"abcdef");

        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        let mut wire = frame(Cmd::Syn, b"");
        for _ in 0..=EMPTY_FRAMES {
            wire.extend(frame(Cmd::Psh, b""));
        }
        let feeder = tokio::spawn(async move {
            let _ = peer.write_all(&wire).await;
            let mut sink = Vec::new();
            let _ = peer.read_to_end(&mut sink).await;
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = server.next().await {}
        })
        .await;
        assert!(
            ended.is_ok(),
            "the session outlived a flood of empty frames"
        );
        feeder.abort();
    }

    /// A peer that never speaks is given up after `dead_after`; NOPs go out meanwhile; a frame
    /// of another version ends the session.
    #[tokio::test]
    async fn keepalive_and_bad_frames() {
        let cfg = Config {
            keepalive: Duration::from_millis(50),
            dead_after: Duration::from_millis(300),
            ..DEFAULT
        };
        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let client = SmuxClient::new(Box::new(a), cfg);
        let mut head = [0u8; HEADER];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut head))
            .await
            .expect("a NOP within the keepalive")
            .expect("read");
        assert_eq!(Header::parse(&head), Ok(Header::new(Cmd::Nop, 0, 0)));
        tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .expect("closed after dead_after of silence");

        let (a, mut peer) = tokio::io::duplex(64 * 1024);
        let mut server = SmuxSession::server(Box::new(a), DEFAULT, quiet());
        peer.write_all(&[2, 0, 0, 0, 3, 0, 0, 0])
            .await
            .expect("write");
        let next = tokio::time::timeout(Duration::from_secs(5), server.next())
            .await
            .expect("ended");
        assert!(next.is_none(), "a version-2 frame ends the session");
    }
}
