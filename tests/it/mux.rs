//! Multiplexing end to end on real loopback sockets: many streams over few sessions (TLS and
//! WebSocket), half-close per stream, fairness between streams, warm-session reuse, idle
//! close, a killed server replaced, and the server's per-session stream limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::transport::options::{MuxClientOptions, PathMatch, Verify, WsServerOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(30);

/// Relays TCP to `target`, counting connections made and still open.
struct Counting {
    addr: SocketAddr,
    made: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

async fn counting_proxy(target: SocketAddr) -> Counting {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let made = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (m, o) = (made.clone(), open.clone());
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            m.fetch_add(1, Ordering::SeqCst);
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                if let Ok(mut b) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counting { addr, made, open }
}

fn mux_server(dest: SocketAddr, ws: bool) -> mtt::testing::config::ServerConfig {
    let mut c = server_config(
        dest,
        Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        T,
    );
    c.accept.mux = true;
    if ws {
        c.accept.ws = Some(WsServerOptions::new(PathMatch::new("/m"), None));
    }
    c
}

fn mux_client(
    server: SocketAddr,
    verify: Verify,
    ws: bool,
    max_streams: usize,
    idle: Duration,
) -> mtt::testing::config::ClientConfig {
    let mut c = if ws {
        wss_client_config(server, verify, "/m", T)
    } else {
        client_config(server, "127.0.0.1", verify, T)
    };
    c.dial.mux = Some(MuxClientOptions {
        muxing: mtt::testing::transport::mux::Muxing::Yamux,
        max_streams,
        idle,
    });
    c
}

/// A server (self-signed) behind a counting proxy, and a pinned multiplexing client.
async fn mux_tunnel(
    dest: SocketAddr,
    ws: bool,
    max_streams: usize,
    idle: Duration,
) -> (Running, Counting, Running) {
    let server = start_server(mux_server(dest, ws)).await;
    let proxy = counting_proxy(server.addr).await;
    let client = start_client(mux_client(
        proxy.addr,
        pin_of(&server),
        ws,
        max_streams,
        idle,
    ))
    .await;
    (server, proxy, client)
}

#[tokio::test]
async fn many_streams_over_few_sessions_hashed_with_half_close() {
    bounded(async {
        let echo = echo_server().await;
        let replier = reply_after_eof_server().await;
        for ws in [false, true] {
            let (_server, proxy, client) = mux_tunnel(echo, ws, 4, Duration::from_secs(10)).await;
            let mut tasks = Vec::new();
            for i in 0..64u64 {
                let data = random_bytes(512 * 1024 + i as usize * 101, 900 + i);
                tasks.push(tokio::spawn(async move {
                    echo_roundtrip(client.addr, &data).await
                }));
            }
            for t in tasks {
                t.await.expect("stream transfer");
            }
            let sessions = proxy.made.load(Ordering::SeqCst);
            assert!(
                (1..=16).contains(&sessions),
                "ws {ws}: 64 streams by 4 need at most 16 sessions, used {sessions}"
            );

            // Half-close per stream: the reply after EOF arrives, on several streams at once.
            let (_s2, _p2, client) = mux_tunnel(replier, ws, 4, Duration::from_secs(10)).await;
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                tasks.push(tokio::spawn(async move {
                    let data = random_bytes(256 * 1024, i);
                    let mut s = TcpStream::connect(client.addr).await.expect("connect");
                    s.write_all(&data).await.expect("write");
                    s.shutdown().await.expect("half-close");
                    let mut reply = Vec::new();
                    s.read_to_end(&mut reply).await.expect("reply");
                    assert_eq!(reply, sha256(&data));
                }));
            }
            for t in tasks {
                t.await.expect("half-close stream");
            }
        }
    })
    .await;
}

/// First byte picks the behaviour: `E` echo; `D` download without end (until the peer goes).
async fn mode_server() -> SocketAddr {
    serve_dest(|mut s| async move {
        let mut mode = [0u8; 1];
        s.read_exact(&mut mode).await?;
        match mode[0] {
            b'D' => {
                let chunk = vec![0x5a; 64 * 1024];
                loop {
                    s.write_all(&chunk).await?;
                }
            }
            _ => {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            }
        }
    })
    .await
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn a_stalled_or_saturating_stream_does_not_hold_back_its_siblings() {
    bounded(async {
        let dest = mode_server().await;
        let (_server, proxy, client) = mux_tunnel(dest, false, 4, Duration::from_secs(10)).await;
        // The sibling: an echo stream, measured alone first.
        let mut sibling = TcpStream::connect(client.addr).await.expect("connect");
        sibling.write_all(b"E").await.expect("mode");
        let mut alone = Vec::new();
        for _ in 0..20 {
            alone.push(ping(&mut sibling).await);
        }
        // A stalled reader: its download fills its window and stops there.
        let mut stalled = TcpStream::connect(client.addr).await.expect("connect");
        stalled.write_all(b"D").await.expect("mode");
        // A saturating reader: drains a download as fast as it can.
        let mut busy = TcpStream::connect(client.addr).await.expect("connect");
        busy.write_all(b"D").await.expect("mode");
        let drained = Arc::new(AtomicUsize::new(0));
        let d = drained.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = busy.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                d.fetch_add(n, Ordering::Relaxed);
            }
        });
        // Wait until the download is really flowing.
        while drained.load(Ordering::Relaxed) < 16 << 20 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Per round trip, how much of the download went by: what was queued in the session
        // ahead of the echo, plus what came while it travelled. It is the windows' doing, so
        // it is counted in bytes, whatever the machine's speed.
        let mut loaded = Vec::new();
        let mut passed = Vec::new();
        for _ in 0..20 {
            let before = drained.load(Ordering::Relaxed);
            loaded.push(ping(&mut sibling).await);
            passed.push(drained.load(Ordering::Relaxed) - before);
        }
        assert_eq!(proxy.made.load(Ordering::SeqCst), 1, "all three streams share one session");
        let (a, l) = (median(alone), median(loaded));
        // On loopback a stream's window grows to 512 KiB at most (the path's bandwidth-delay
        // product is far below it): measured 0.8 to 1.0 MB per round trip, also with a busy
        // CPU beside; with the windows grown to what the reader takes, as before, 3.2 to 5.7
        // MB and 8 to 20 ms.
        passed.sort_unstable();
        let bulk = passed[passed.len() / 2];
        assert!(
            bulk <= 2 << 20,
            "{bulk} bytes of a saturating download went by per echo round trip (median): that much \
             waits in the session ahead of a sibling's exchange"
        );
        // Time is the machine's: with a busy CPU beside the test this took 7 to 11 ms.
        assert!(
            l < a + Duration::from_millis(25),
            "echo round trip went from {a:?} alone to {l:?} beside a stalled and a saturating stream"
        );
        // The stalled stream is still alive: it reads its data once it wants to.
        let mut b = [0u8; 1024];
        stalled.read_exact(&mut b).await.expect("stalled stream resumes");
        reader.abort();
    })
    .await;
}

#[tokio::test]
async fn warm_sessions_are_reused_and_idle_ones_closed() {
    bounded(async {
        let echo = echo_server().await;
        let idle = Duration::from_millis(400);
        let (_server, proxy, client) = mux_tunnel(echo, false, 4, idle).await;
        echo_roundtrip(client.addr, &random_bytes(64 * 1024, 1)).await;
        echo_roundtrip(client.addr, &random_bytes(64 * 1024, 2)).await;
        assert_eq!(
            proxy.made.load(Ordering::SeqCst),
            1,
            "the second connection reuses the warm session"
        );
        // With no streams left the session closes after its idle time, not before.
        let quiet = Instant::now();
        while proxy.open.load(Ordering::SeqCst) > 0 {
            assert!(
                quiet.elapsed() < Duration::from_secs(10),
                "idle session never closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            quiet.elapsed() >= idle - Duration::from_millis(50),
            "closed after {:?}",
            quiet.elapsed()
        );
        // The next connection dials a new session.
        echo_roundtrip(client.addr, &random_bytes(64 * 1024, 3)).await;
        assert_eq!(proxy.made.load(Ordering::SeqCst), 2);
    })
    .await;
}

#[tokio::test]
async fn a_destination_that_speaks_first_is_heard() {
    bounded(async {
        let dest = paced_server(4, Duration::from_millis(10)).await;
        let (_server, _proxy, client) = mux_tunnel(dest, false, 4, Duration::from_secs(10)).await;
        // The application sends nothing; the destination's bytes still arrive, then EOF.
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        assert_eq!(drain(&mut s).await, (4 * 1024, true));
    })
    .await;
}

#[tokio::test]
async fn unreachable_destination_closes_only_that_stream() {
    bounded(async {
        let (_server, proxy, client) =
            mux_tunnel(dead_addr(), false, 4, Duration::from_secs(10)).await;
        closed_promptly(client.addr).await;
        closed_promptly(client.addr).await;
        assert_eq!(
            proxy.made.load(Ordering::SeqCst),
            1,
            "the session survives refused streams"
        );
    })
    .await;
}

#[tokio::test]
async fn the_17th_stream_is_refused_and_the_16_others_live_on() {
    bounded(async {
        let dest = mode_server().await;
        let (_server, proxy, client) = mux_tunnel(dest, false, 17, Duration::from_secs(10)).await;
        let mut live = Vec::new();
        for _ in 0..16 {
            let mut s = TcpStream::connect(client.addr).await.expect("connect");
            s.write_all(b"E").await.expect("mode");
            ping(&mut s).await;
            live.push(s);
        }
        closed_promptly(client.addr).await;
        assert_eq!(
            proxy.made.load(Ordering::SeqCst),
            1,
            "one session carried all 17"
        );
        for (i, s) in live.into_iter().enumerate() {
            echo_over(s, &random_bytes(64 * 1024, i as u64)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_killed_server_is_replaced_when_it_comes_back() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_dir, cert, key, fp) = self_signed_files("localhost");
        let mut args = [
            "server",
            "-b",
            "127.0.0.1:0",
            "-d",
            &echo,
            "-mux",
            "-cert",
            &path_str(&cert),
            "-key",
            &path_str(&key),
            "-verbose",
        ];
        let mut server = Proc::spawn(&mtt_bin(), &args);
        let listen = server.listening_addr().await;
        let pin = Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin"));
        let client = start_client(mux_client(listen, pin, false, 4, Duration::from_secs(10))).await;
        let mut held = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut held).await;
        // kill -9: the session dies with the process; the held stream is closed promptly.
        server.signal("KILL");
        server.exit().await;
        let start = Instant::now();
        drain(&mut held).await;
        assert!(start.elapsed() < Duration::from_secs(2));
        // While the server is down, connections fail fast instead of queueing on a dead session.
        closed_promptly(client.addr).await;
        // Back on the same port: the next connection gets a new session and works.
        let again = listen.to_string();
        args[2] = &again;
        let mut server = Proc::spawn(&mtt_bin(), &args);
        server.wait_line("server listening on").await;
        echo_roundtrip(client.addr, &random_bytes(256 * 1024, 77)).await;
    })
    .await;
}

/// Drain covers multiplexed streams: SIGTERM while a stream is carrying a long download; the
/// download finishes whole, and the server exits 0 as soon as the stream has ended (the
/// session takes no new streams and closes, instead of waiting for the client to leave).
#[tokio::test]
async fn sigterm_lets_a_multiplexed_stream_finish_then_exits() {
    bounded(async {
        let dest = paced_server(40, Duration::from_millis(25))
            .await
            .to_string();
        let mut server = Proc::server(&dest, &["-mux", "-verbose"]);
        let pin = Verify::Pin(mtt::testing::config::parse_pin(&server.pin().await).expect("pin"));
        let addr = server.listening_addr().await;
        let mut cfg = client_config(addr, "127.0.0.1", pin, Duration::from_secs(30));
        // A client that would keep an idle session for a minute.
        cfg.dial.mux = Some(MuxClientOptions {
            muxing: mtt::testing::transport::mux::Muxing::Yamux,
            max_streams: 4,
            idle: Duration::from_secs(60),
        });
        let client = start_client(cfg).await;
        let mut app = TcpStream::connect(client.addr).await.expect("connect");
        let mut first = [0u8; 1024];
        app.read_exact(&mut first).await.expect("first chunk");
        server.signal("TERM");
        server.wait_line("draining").await;
        let mut rest = Vec::new();
        app.read_to_end(&mut rest).await.expect("the rest");
        // The application closes its side too: the tunnel is over.
        drop(app);
        let ended = std::time::Instant::now();
        assert_eq!(first, [0u8; 1024]);
        assert_eq!(rest.len(), 39 * 1024, "the whole download");
        for (i, chunk) in rest.chunks(1024).enumerate() {
            assert!(chunk.iter().all(|b| *b == (i + 1) as u8), "chunk {}", i + 1);
        }
        assert_eq!(server.exit().await.code(), Some(0));
        assert!(
            ended.elapsed() < Duration::from_secs(3),
            "exited {:?} after the stream ended",
            ended.elapsed()
        );
    })
    .await;
}

/// The destination half-closes, then closes while the client is still sending into the
/// tunnel (as iperf3's server does): the client learns at once, in mux and wss+mux. Ten
/// tunnels a mode; each one's application sees its connection end within 1 s of the close,
/// the client has no tunnel left, and SIGTERM then exits at once (nothing to drain).
#[tokio::test]
async fn a_destination_that_closes_mid_upload_leaves_no_tunnel_on_the_client() {
    bounded(async {
        // Reads 256 KiB, half-closes, reads 64 KiB more, then closes with data unread.
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel();
        let dest = serve_dest(move |mut s| {
            let closed = closed_tx.clone();
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < 256 * 1024 {
                    got += s.read(&mut buf).await?;
                }
                s.shutdown().await?;
                s.read_exact(&mut buf).await?;
                drop(s);
                let _ = closed.send(Instant::now());
                Ok(())
            }
        })
        .await
        .to_string();
        for flags in [vec!["-mux"], vec!["-mux", "-wss"]] {
            let mut sargs = vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &dest,
                "-n",
                "t",
                "-verbose",
            ];
            sargs.extend(&flags);
            let mut server = Proc::spawn(&mtt_bin(), &sargs);
            let saddr = server.listening_addr().await.to_string();
            let mut cargs = vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &saddr,
                "-n",
                "t",
                "-sv",
                "-metrics",
                "127.0.0.1:0",
                "-verbose",
            ];
            cargs.extend(&flags);
            let mut client = Proc::spawn(&mtt_bin(), &cargs);
            let caddr = client.listening_addr().await;
            let metrics = client.addr_after("metrics at http://").await;
            for round in 0..10 {
                let app = TcpStream::connect(caddr).await.expect("connect");
                let (mut rd, mut wr) = app.into_split();
                let uploading = tokio::spawn(async move {
                    let chunk = vec![1u8; 64 * 1024];
                    while wr.write_all(&chunk).await.is_ok() {}
                    Instant::now()
                });
                let mut sink = Vec::new();
                let _ = rd.read_to_end(&mut sink).await;
                let closed = closed_rx.recv().await.expect("destination closed");
                let ended = tokio::time::timeout(Duration::from_secs(3), uploading)
                    .await
                    .unwrap_or_else(|_| panic!("{flags:?} round {round}: the upload never ended"))
                    .expect("uploader");
                let took = ended.saturating_duration_since(closed);
                assert!(
                    took < Duration::from_secs(1),
                    "{flags:?} round {round}: the application learned after {took:?}"
                );
            }
            let left = format!("{flags:?}: tunnels left on the client");
            scrape_until(metrics, Duration::from_secs(1), &left, |t| {
                t.contains("mtt_connections_active 0\n") && t.contains("mtt_mux_streams 0\n")
            })
            .await;
            client.signal("TERM");
            let start = Instant::now();
            assert_eq!(client.exit().await.code(), Some(0));
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{flags:?}: exit took {:?}",
                start.elapsed()
            );
            server.signal("TERM");
            server.exit().await;
        }
    })
    .await;
}

/// `-mux` on one end only: the server says which flag to change in one WARN line (at the
/// default log level), and no yamux framing reaches the application or the destination.
#[tokio::test]
async fn mux_on_one_end_only_is_said_and_no_framing_leaks() {
    bounded(async {
        // What reached the destination, per connection.
        let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel();
        let dest = serve_dest(move |mut s| {
            let got = got_tx.clone();
            async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = got.send(all);
                Ok(())
            }
        })
        .await
        .to_string();
        for server_mux in [true, false] {
            let mut args = vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &dest,
                "-n",
                "127.0.0.1",
            ];
            if server_mux {
                args.push("-mux");
            }
            let mut server = Proc::spawn(&mtt_bin(), &args);
            let fp = server.pin().await;
            let addr = server.listening_addr().await;
            let mut cfg = client_config(
                addr,
                "127.0.0.1",
                Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin")),
                Duration::from_secs(30),
            );
            if !server_mux {
                cfg.dial.mux = Some(MuxClientOptions {
                    muxing: mtt::testing::transport::mux::Muxing::Yamux,
                    max_streams: 4,
                    idle: Duration::from_secs(30),
                });
            }
            let client = start_client(cfg).await;
            let mut app = TcpStream::connect(client.addr).await.expect("connect");
            app.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut back = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut back)).await;
            assert!(
                back.is_empty(),
                "server -mux {server_mux}: the application got {back:?}"
            );
            let line = server.wait_line("-mux must be on both ends").await;
            assert!(line.contains("WARN"), "{line}");
            if !server_mux {
                let seen = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
                    .await
                    .expect("the destination connection ends")
                    .expect("bytes");
                assert!(seen.is_empty(), "the destination got {seen:?}");
            }
            server.signal("TERM");
            server.exit().await;
        }
    })
    .await;
}

/// A `-mux` client at a server without `-mux` says so itself, once, naming the flag (it said
/// nothing at the default level, and the application only saw its connection end).
#[tokio::test]
async fn a_multiplexing_client_at_a_plain_server_says_which_flag() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &[]);
        let pin = server.pin().await;
        let addr = server.listening_addr().await.to_string();
        let mut client = Proc::client(&addr, &pin, &["-mux"]);
        let local = client.listening_addr().await;
        let mut app = TcpStream::connect(local).await.expect("connect");
        let _ = app.write_all(b"hello").await;
        let mut back = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut back)).await;
        assert!(ended.is_ok(), "the application's connection was left open");
        assert!(back.is_empty(), "{back:?}");
        let line = client.wait_line("may run without -mux").await;
        assert!(
            line.contains("WARN") && line.contains("both ends"),
            "{line}"
        );
        assert!(
            line.contains("mtt::transport::mux"),
            "said as its module's line: {line}"
        );
        // The application is done too (its half of the connection stayed open).
        drop(app);
        client.signal("TERM");
        client.exit().await;
        server.signal("TERM");
        server.exit().await;
    })
    .await;
}
