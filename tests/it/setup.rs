//! Connection setup, counted in round trips: a relay written here delays every byte by
//! [`D`] each way between client and server, and the time from an application's first write
//! to the destination's first byte is measured in units of that round trip, per mode, for a
//! tunnel on a fresh connection and one on a warm session. The counts are README's table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One-way delay of the relay: a round trip is 2 × D.
const D: Duration = Duration::from_millis(50);

/// Copies `from` to `to`, each chunk written `D` after it was read (order kept).
async fn delayed(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + D, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due.into()).await;
        if to.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    reader.abort();
}

/// A relay to `to` that delays both directions by `D`.
async fn delaying_relay(to: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = s.set_nodelay(true);
                let _ = up.set_nodelay(true);
                let (cr, cw) = s.into_split();
                let (ur, uw) = up.into_split();
                tokio::join!(delayed(cr, uw), delayed(ur, cw));
            });
        }
    });
    addr
}

/// A destination that says when each connection's first byte came.
async fn first_byte_dest() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Instant>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_dest(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            let _ = tx.send(Instant::now());
            s.write_all(&b).await?;
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.map(|_| ())
        }
    })
    .await;
    (addr, rx)
}

/// Round trips from a write to the client until the destination's first byte, for the first
/// tunnel (a fresh connection) and a second one while the first is still open.
async fn count(server_flags: &[&str], client_flags: &[&str]) -> (f64, f64) {
    let (dest, mut firsts) = first_byte_dest().await;
    let mut server = Proc::server(&dest.to_string(), server_flags);
    let pin = server.pin().await;
    let addr = server.listening_addr().await;
    let relay = delaying_relay(addr).await.to_string();
    let mut client = Proc::client(&relay, &pin, client_flags);
    let local = client.listening_addr().await;
    let (first, _keep) = one(local, &mut firsts).await;
    let (second, _keep2) = one(local, &mut firsts).await;
    client.signal("KILL");
    client.exit().await;
    server.signal("KILL");
    server.exit().await;
    (first, second)
}

/// A mode's name, server flags, client flags, and the round trips expected for the first
/// tunnel and for one beside it.
type Mode<'a> = (&'a str, &'a [&'a str], &'a [&'a str], f64, f64);

/// One tunnel through the client at `local`: round trips from its first write to the
/// destination's first byte (the connection is returned, to stay open).
async fn one(
    local: SocketAddr,
    firsts: &mut tokio::sync::mpsc::UnboundedReceiver<Instant>,
) -> (f64, TcpStream) {
    let mut s = TcpStream::connect(local).await.expect("connect");
    let start = Instant::now();
    s.write_all(b"x").await.expect("write");
    let at = tokio::time::timeout(Duration::from_secs(10), firsts.recv())
        .await
        .expect("the first byte in time")
        .expect("dest");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("echo");
    ((at - start).as_secs_f64() / (2 * D).as_secs_f64(), s)
}

/// The counts per mode, each within a quarter of a round trip of what the design says (the
/// loopback's own time and the processes' are a few ms): a regression adds a whole one.
#[tokio::test]
async fn round_trips_to_the_first_byte() {
    bounded(async {
        // (mode, server flags, client flags, first tunnel, a tunnel beside it), above TCP
        // (the relay accepts at once: TCP's own handshake, 1 more everywhere, is not
        // counted): TLS 1.3 1 + the data's half; WebSocket's upgrade 1 more (with early data
        // `?ed=`, none); a session's preamble none (its frames go out beside it); a tunnel
        // on a warm session 0.5. The second tunnel resumes with 0-RTT: its first bytes (or
        // its upgrade request) ride the hello, one round trip fewer, unless either end has
        // `-early-data off`.
        let wss: &[&str] = &["-wss", "-wss-path", "/t"];
        let ed: &[&str] = &["-wss", "-wss-path", "/t?ed=2048"];
        let off: &[&str] = &["-early-data", "off"];
        let wss_off: &[&str] = &["-wss", "-wss-path", "/t", "-early-data", "off"];
        let expected: [Mode; 8] = [
            ("tls", &[], &[], 1.5, 0.5),
            ("tls, client -early-data off", &[], off, 1.5, 1.5),
            ("tls, server -early-data off", off, &[], 1.5, 1.5),
            ("wss", wss, wss, 2.5, 1.5),
            ("wss, server -early-data off", wss_off, wss, 2.5, 2.5),
            ("wss ?ed=", wss, ed, 1.5, 0.5),
            ("tls+mux", &["-mux"], &["-mux"], 1.5, 0.5),
            ("grpc", &["-grpc"], &["-grpc"], 1.5, 0.5),
        ];
        let mut table = String::new();
        for (name, server, client, first, warm) in expected {
            let (f, w) = count(server, client).await;
            table += &format!("| {name} | {f:.2} | {w:.2} |\n");
            // Never fewer than the design's count; more only by the processes' own time
            // (debug builds: up to a few tens of ms), never by a round trip.
            let near = |got: f64, want: f64| got > want - 0.1 && got < want + 0.45;
            assert!(
                near(f, first) && near(w, warm),
                "{name}: {f:.2} and {w:.2} round trips, expected {first} and {warm}"
            );
        }
        eprintln!("{table}");
    })
    .await;
}

/// A case of resumption: its name, flags of both ends, of the server, of the client, and
/// what the handshakes after the first are.
type Resuming<'a> = (
    &'a str,
    &'a [&'a str],
    &'a [&'a str],
    &'a [&'a str],
    Handshake,
);

/// Sessions resume between mtt ends: after a tunnel's full handshake the next ones resume
/// (the server's `-verbose` line says so: no certificate sent or checked again), in plain
/// TLS and over WebSocket, and so do 16 opened at once once the client holds tickets for
/// them (it keeps 32 a server; rustls's own store keeps 8), each with its first bytes as
/// early data (0-RTT); with `-early-data off` at either end they resume without it; with
/// `-no-resume` every handshake is a full one.
#[tokio::test]
async fn sessions_resume_between_mtt_ends_and_not_with_no_resume() {
    bounded(async {
        let echo = echo_server().await;
        let wss: &[&str] = &["-wss", "-wss-path", "/t"];
        let off: &[&str] = &["-early-data", "off"];
        // (mode, flags of both, of the server, of the client, what tunnels after the first do)
        let cases: [Resuming; 6] = [
            ("tls", &[], &[], &[], Handshake::ZeroRtt),
            ("wss", wss, &[], &[], Handshake::ZeroRtt),
            (
                "tls, client -early-data off",
                &[],
                &[],
                off,
                Handshake::Resumed,
            ),
            (
                "tls, server -early-data off",
                &[],
                off,
                &[],
                Handshake::Resumed,
            ),
            (
                "wss, server -early-data off",
                wss,
                off,
                &[],
                Handshake::Resumed,
            ),
            ("tls -no-resume", &[], &[], &["-no-resume"], Handshake::Full),
        ];
        for (mode, flags, server_only, client_only, after) in cases {
            let no_resume = after == Handshake::Full;
            let mut server_flags = vec!["-verbose"];
            server_flags.extend_from_slice(flags);
            let mut client_flags = server_flags.clone();
            server_flags.extend_from_slice(server_only);
            client_flags.extend_from_slice(client_only);
            let mut server = Proc::server(&echo.to_string(), &server_flags);
            let pin = server.pin().await;
            let addr = server.listening_addr().await.to_string();
            let mut client = Proc::client(&addr, &pin, &client_flags);
            let local = client.listening_addr().await;
            let (one_by_one, at_once) = if no_resume { (4, 0) } else { (16, 16) };
            for i in 0..one_by_one {
                echo_roundtrip(local, &random_bytes(16 * 1024, i)).await;
            }
            let burst: Vec<_> = (0..at_once)
                .map(|i| {
                    tokio::spawn(async move {
                        echo_roundtrip(local, &random_bytes(16 * 1024, 100 + i)).await
                    })
                })
                .collect();
            for t in burst {
                t.await.expect("tunnel");
            }
            client.signal("KILL");
            client.exit().await;
            let resumed = server.resumptions().await;
            assert_eq!(
                resumed.len() as u64,
                one_by_one + at_once,
                "{mode}: {resumed:?}"
            );
            let mut want = vec![after; resumed.len()];
            want[0] = Handshake::Full;
            assert_eq!(resumed, want, "{mode}");
        }
    })
    .await;
}
