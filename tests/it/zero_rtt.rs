//! TLS 0-RTT between mtt ends under attack: a relay written here copies a resumed client's
//! first flight (its hello and the early data riding it) and sends it to the server again,
//! after the real one and ahead of it. What the destination then receives is what
//! docs/tls.md promises about replays.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The server's handshake timeout in these tests: what bounds a tunnel whose client sent
/// early data and never finished its handshake.
const HANDSHAKE: Duration = Duration::from_secs(2);

/// One connection the destination served: its first bytes, when it came and when it ended.
#[derive(Debug)]
struct Served {
    first: Vec<u8>,
    opened: Instant,
    closed: Instant,
}

/// A destination that answers each connection's first `n` bytes with themselves, then
/// reads until the end, and reports each connection once it is over.
async fn recording_dest(n: usize) -> (SocketAddr, mpsc::UnboundedReceiver<Served>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_dest(move |mut s| {
        let tx = tx.clone();
        async move {
            let opened = Instant::now();
            let mut first = vec![0u8; n];
            let got = s.read_exact(&mut first).await;
            if got.is_ok() {
                let _ = s.write_all(&first).await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            }
            let _ = tx.send(Served {
                first,
                opened,
                closed: Instant::now(),
            });
            Ok(())
        }
    })
    .await;
    (addr, rx)
}

/// Reads a client's first flight from `s`: TLS records up to and including the first
/// application-data record (its early data, which follows the hello).
async fn first_flight(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await.expect("read the first flight");
        assert!(n > 0, "the client closed within its first flight");
        got.extend_from_slice(&buf[..n]);
        // Walk the whole records read so far.
        let mut at = 0;
        while at + 5 <= got.len() {
            let len = u16::from_be_bytes([got[at + 3], got[at + 4]]) as usize;
            if at + 5 + len > got.len() {
                break;
            }
            if got[at] == 23 {
                assert_eq!(at + 5 + len, got.len(), "bytes after the early data");
                return got;
            }
            at += 5 + len;
        }
    }
}

/// How the relay treats the first flight of the connection it is told to watch.
#[derive(Clone, Copy, PartialEq)]
enum Replay {
    /// Forwards it, then sends a copy on a connection of its own once the tunnel is done.
    After,
    /// Sends a copy first, on a connection of its own, then forwards the real one.
    Ahead,
}

/// A relay to `server` that passes every connection through, except the `watch`-th (from
/// 0), whose first flight it copies and replays as `how` says; the replay's connection is
/// read until the server ends it, and how long that took is sent on the channel.
async fn replaying_relay(
    server: SocketAddr,
    watch: usize,
    how: Replay,
) -> (SocketAddr, mpsc::UnboundedReceiver<Duration>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut c, _)) = l.accept().await {
            let tx = tx.clone();
            let watched = n == watch;
            n += 1;
            tokio::spawn(async move {
                let mut up = TcpStream::connect(server).await.expect("server");
                if watched {
                    let flight = first_flight(&mut c).await;
                    // The copy, on a connection of its own: sent, and answered (the server
                    // has read its hello), then read until the server closes it.
                    let copy = async || {
                        let mut r = TcpStream::connect(server).await.expect("server");
                        let start = Instant::now();
                        r.write_all(&flight).await.expect("replay");
                        let mut answer = [0u8; 1];
                        let _ = r.read(&mut answer).await;
                        (r, start)
                    };
                    let until_closed = |(mut r, start): (TcpStream, Instant)| async move {
                        let mut sink = Vec::new();
                        let _ = r.read_to_end(&mut sink).await;
                        let _ = tx.send(start.elapsed());
                    };
                    if how == Replay::Ahead {
                        // As a path that held the real flight back: the copy first.
                        let ahead = tokio::spawn(until_closed(copy().await));
                        up.write_all(&flight).await.expect("forward");
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                        let _ = ahead.await;
                    } else {
                        up.write_all(&flight).await.expect("forward");
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                        until_closed(copy().await).await;
                    }
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
                }
            });
        }
    });
    (addr, rx)
}

/// A tunnel through the client at `local`: writes `data`, checks the echo, closes.
async fn tunnel(local: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(local).await.expect("connect");
    s.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).await.expect("echo");
    assert_eq!(sha256(&back), sha256(data), "echo");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("end");
}

/// A first write that fits in one early-data record.
const FIRST: usize = 1000;

/// A server with a short handshake timeout, its destination, and a client through a relay
/// that replays the third connection's first flight as `how` says (the first connection
/// is a full handshake, the second resumes and leaves tickets enough).
struct Setup {
    server: Proc,
    client: Proc,
    local: SocketAddr,
    served: mpsc::UnboundedReceiver<Served>,
    replays: mpsc::UnboundedReceiver<Duration>,
}

async fn setup(how: Replay) -> Setup {
    let (dest, served) = recording_dest(FIRST).await;
    let timeout = format!("{}s", HANDSHAKE.as_secs());
    let mut server = Proc::server(
        &dest.to_string(),
        &["-verbose", "-handshake-timeout", &timeout],
    );
    let pin = server.pin().await;
    let addr = server.listening_addr().await;
    let (relay, replays) = replaying_relay(addr, 2, how).await;
    let mut client = Proc::client(&relay.to_string(), &pin, &[]);
    let local = client.listening_addr().await;
    Setup {
        server,
        client,
        local,
        served,
        replays,
    }
}

impl Setup {
    /// The next connection the destination served.
    async fn next_served(&mut self) -> Served {
        tokio::time::timeout(Duration::from_secs(10), self.served.recv())
            .await
            .expect("a destination connection in time")
            .expect("dest")
    }

    /// The server's handshakes, once it and the client are stopped.
    async fn stop(mut self) -> Vec<Handshake> {
        self.client.signal("KILL");
        self.client.exit().await;
        self.server.resumptions().await
    }
}

/// A first flight replayed after the real one is refused its early data: the session it
/// resumes was taken once, by the real one. The server treats it as a new client's
/// handshake, which never finishes: nothing reaches the destination, and the server drops
/// the connection at its handshake timeout.
#[tokio::test]
async fn a_replayed_first_flight_reaches_no_destination() {
    bounded(async {
        let mut s = setup(Replay::After).await;
        for i in 0..3 {
            tunnel(s.local, &random_bytes(FIRST, i)).await;
            let served = s.next_served().await;
            assert_eq!(served.first, random_bytes(FIRST, i), "tunnel {i}");
        }
        let took = tokio::time::timeout(HANDSHAKE * 3, s.replays.recv())
            .await
            .expect("the replay's connection ends")
            .expect("relay");
        assert!(
            took < HANDSHAKE + Duration::from_secs(1),
            "the replay's connection lasted {took:?}"
        );
        // Nothing more reached the destination.
        assert!(
            s.served.try_recv().is_err(),
            "the replayed early data reached the destination"
        );
        let handshakes = s.stop().await;
        assert_eq!(
            handshakes,
            [Handshake::Full, Handshake::ZeroRtt, Handshake::ZeroRtt],
            "the replay's handshake never finished, so it is not logged"
        );
    })
    .await;
}

/// The one thing a replay can do, documented in docs/tls.md: a copy of the first flight
/// that reaches the server *before* the real one takes the session, and its early data is
/// delivered; that tunnel never finishes its handshake, and ends at the server's handshake
/// timeout. The real client is then refused early data and sends its first bytes again
/// after the handshake: the destination receives them twice, on two connections, never
/// more, and only one of them lives on.
#[tokio::test]
async fn a_first_flight_replayed_ahead_is_delivered_once_more_and_cut_at_the_handshake_timeout() {
    bounded(async {
        let mut s = setup(Replay::Ahead).await;
        for i in 0..2 {
            tunnel(s.local, &random_bytes(FIRST, i)).await;
            assert_eq!(s.next_served().await.first, random_bytes(FIRST, i));
        }
        let data = random_bytes(FIRST, 2);
        tunnel(s.local, &data).await;
        let mut twice = [s.next_served().await, s.next_served().await];
        twice.sort_by_key(|d| d.opened);
        for d in &twice {
            assert_eq!(d.first, data, "the first bytes, each time");
        }
        // The copy's tunnel (opened first) was cut at the handshake timeout.
        let copy = &twice[0];
        let lived = copy.closed - copy.opened;
        assert!(
            lived < HANDSHAKE + Duration::from_secs(1),
            "the replayed tunnel lived {lived:?}"
        );
        let took = tokio::time::timeout(HANDSHAKE * 3, s.replays.recv())
            .await
            .expect("the replay's connection ends")
            .expect("relay");
        assert!(
            took >= HANDSHAKE - Duration::from_millis(100)
                && took < HANDSHAKE + Duration::from_secs(1),
            "the copy's connection lasted {took:?}"
        );
        assert!(s.served.try_recv().is_err(), "a third delivery");
        let handshakes = s.stop().await;
        // The copy's hello resumed with early data (logged then: its Finished never came);
        // the real one found its session gone: a full handshake, without early data.
        assert_eq!(
            handshakes,
            [
                Handshake::Full,
                Handshake::ZeroRtt,
                Handshake::ZeroRtt,
                Handshake::Full
            ],
        );
    })
    .await;
}

/// A server that lost its sessions (restarted; or restarted with `-early-data off`)
/// declines a resumed client's early data: the handshake becomes a full one, the client
/// sends its first bytes again after it, and the tunnel works. The first write here is
/// 64 KiB, so the client's early data is as large as it ever sends (a declined flight the
/// server cannot skip would fail the handshake).
#[tokio::test]
async fn a_restarted_server_declines_early_data_and_the_tunnel_works() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_dir, cert, key, pin) = self_signed_files("127.0.0.1");
        let (cert, key) = (path_str(&cert), path_str(&key));
        let server = |listen: &str, extra: &[&str]| {
            let mut args = vec![
                "server", "-b", listen, "-d", &echo, "-cert", &cert, "-key", &key, "-verbose",
            ];
            args.extend_from_slice(extra);
            Proc::spawn(&mtt_bin(), &args)
        };
        for restarted in [&[][..], &["-early-data", "off"][..]] {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut before = server(&addr, &[]);
            before.wait_line("server listening on").await;
            let mut client = Proc::client(&addr, &pin, &[]);
            let local = client.listening_addr().await;
            for seed in 0..2 {
                tunnel(local, &random_bytes(64 * 1024, seed)).await;
            }
            let handshakes = before.resumptions().await;
            assert_eq!(handshakes, [Handshake::Full, Handshake::ZeroRtt]);
            // Back on the same port, its sessions gone.
            let mut after = server(&addr, restarted);
            after.wait_line("server listening on").await;
            for seed in 2..4 {
                tunnel(local, &random_bytes(64 * 1024, seed)).await;
            }
            let next = if restarted.is_empty() {
                Handshake::ZeroRtt
            } else {
                Handshake::Resumed
            };
            let handshakes = after.resumptions().await;
            assert_eq!(
                handshakes,
                [Handshake::Full, next],
                "restarted with {restarted:?}"
            );
            client.signal("KILL");
            client.exit().await;
        }
    })
    .await;
}
