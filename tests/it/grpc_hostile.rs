//! Hostile HTTP/2 at a `-grpc` server: streams opened only to be reset (rapid reset,
//! CVE-2023-44487), a stream whose destination never reads, header blocks without end
//! (CONTINUATION flood) and floods of PING and SETTINGS frames from a peer that reads
//! nothing back. Each costs the server bounded memory and work, the hostile connection is
//! closed where it must be, and other clients go on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use mtt::testing::transport::grpc;
use mtt::testing::transport::options::{TlsClientOptions, Verify};

/// TLS to `addr` offering only `h2`, the server's certificate not checked.
async fn h2_tls(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = mtt::testing::transport::tls::TlsClient::new(
        &TlsClientOptions {
            server_name: "127.0.0.1".into(),
            verify: Verify::Insecure,
            hello: Default::default(),
        },
        &[b"h2"],
        Duration::from_secs(10),
    )
    .expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let s = tls.connect(tcp).await.expect("handshake");
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 agreed");
    s
}

/// An HTTP/2 client connection to `addr` (driven in a task of its own).
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(h2_tls(addr).await)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn tun_request() -> http::Request<()> {
    http::Request::post("https://127.0.0.1/GunService/Tun")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request")
}

/// An echo destination that counts its connections; `stall_first`: it reads nothing from
/// the first one.
async fn counting_dest(count: Arc<AtomicUsize>, stall_first: bool) -> SocketAddr {
    serve_dest(move |mut s| {
        let n = count.fetch_add(1, Ordering::AcqRel);
        async move {
            if n == 0 && stall_first {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.map(|_| ())
        }
    })
    .await
}

/// `count` once it has not moved for 100 ms (a bounded poll: 10 s at most).
async fn settled(count: &AtomicUsize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = count.load(Ordering::Acquire);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = count.load(Ordering::Acquire);
        if now == last || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn mem_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("memory field")
}

/// A gRPC tunnel through `server` still works: a message there and back.
async fn still_serves(server: SocketAddr) {
    let send = h2_client(server).await;
    let mut send = send.ready().await.expect("ready");
    let (resp, mut stream) = send.send_request(tun_request(), false).expect("call");
    let mut msg = BytesMut::new();
    grpc::encode(b"still here", &mut msg);
    stream.send_data(msg.freeze(), false).expect("send");
    let resp = resp.await.expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut dec = grpc::Decoder::default();
    let mut got = Vec::new();
    while got.len() < 10 {
        let chunk = body.data().await.expect("data").expect("chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let (used, data) = dec.step(rest, 1 << 20).expect("message");
            if let Some(r) = data {
                got.extend_from_slice(&rest[r]);
            }
            rest = &rest[used..];
        }
    }
    assert_eq!(got, b"still here");
}

/// The HPACK block of a tunnel call (static-table names, literal values, nothing indexed).
fn call_headers() -> Vec<u8> {
    let mut h = vec![0x83, 0x87]; // :method POST, :scheme https
    let lit = |h: &mut Vec<u8>, name_index: &[u8], value: &[u8]| {
        h.extend_from_slice(name_index);
        h.push(value.len() as u8);
        h.extend_from_slice(value);
    };
    lit(&mut h, &[0x04], b"/GunService/Tun"); // :path
    lit(&mut h, &[0x01], b"127.0.0.1"); // :authority
    lit(&mut h, &[0x0f, 0x10], b"application/grpc"); // content-type (31)
    h
}

/// Opens streams on a raw HTTP/2 connection to `at` and resets them, 64 at a time: at once
/// (HEADERS and RST_STREAM back to back, as the attack sends them), or (`answered`) once the
/// server has answered each. Returns the streams opened and the seconds it took before the
/// server's GOAWAY; panics if none comes.
async fn open_and_reset(at: SocketAddr, answered: bool) -> (u32, f64) {
    let (mut r, mut w) = tokio::io::split(h2_tls(at).await);
    let heard = Arc::new(AtomicUsize::new(0));
    let counted = heard.clone();
    // The server's frames are read as they come: its answers (HEADERS, RST_STREAM) counted,
    // a GOAWAY (type 7) the end.
    let reader = tokio::spawn(async move {
        let mut head = [0u8; 9];
        loop {
            if r.read_exact(&mut head).await.is_err() {
                return false;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).await.is_err() {
                return false;
            }
            match head[3] {
                1 | 3 => {
                    counted.fetch_add(1, Ordering::AcqRel);
                }
                7 => return true,
                _ => {}
            }
        }
    });
    w.write_all(PREFACE).await.expect("preface");
    w.write_all(&frame(4, 0, 0, &[])).await.expect("settings");
    let block = call_headers();
    let start = std::time::Instant::now();
    let mut opened = 0u32;
    while opened < 100_000 && !reader.is_finished() {
        let first = opened;
        let mut opens = Vec::new();
        let mut resets = Vec::new();
        for _ in 0..64 {
            let sid = 2 * opened + 1;
            opens.extend(frame(1, 0x4, sid, &block)); // END_HEADERS
            resets.extend(frame(3, 0, sid, &8u32.to_be_bytes())); // RST_STREAM CANCEL
            opened += 1;
        }
        if answered {
            if w.write_all(&opens).await.is_err() {
                break;
            }
            let want = opened as usize;
            let waited = tokio::time::timeout(Duration::from_secs(5), async {
                while heard.load(Ordering::Acquire) < want && !reader.is_finished() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "no answer to streams {first}..{opened}");
            opens.clear();
        }
        opens.extend(resets);
        if w.write_all(&opens).await.is_err() {
            break;
        }
    }
    let took = start.elapsed().as_secs_f64();
    let goaway = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the connection ends")
        .expect("reader");
    assert!(goaway, "no GOAWAY after {opened} reset streams");
    (opened, took)
}

/// A client that opens streams only to reset them: reset before the server took them, h2's
/// own guard ends the connection; reset once answered, each call would dial the destination,
/// so the server takes at most a burst and a rate's worth, refuses the rest and then ends
/// the connection (GOAWAY), saying so at most once a second; others are served.
#[tokio::test]
async fn rapid_reset_is_bounded_and_ends_the_connection() {
    bounded(async {
        let count = Arc::new(AtomicUsize::new(0));
        let dest = counting_dest(count.clone(), false).await;
        let mut server = Proc::server(&dest.to_string(), &["-grpc"]);
        let at = server.listening_addr().await;
        for answered in [false, true] {
            let before = count.load(Ordering::Acquire);
            let (opened, took) = open_and_reset(at, answered).await;
            // The tunnels the server did start reach the destination: counted once the count
            // has held still.
            let dialled = settled(&count).await - before;
            eprintln!(
                "rapid reset (answered: {answered}): {opened} streams in {took:.2} s, {dialled} dials, then GOAWAY"
            );
            let allowed = 512.0 + 256.0 * (took + 0.3) + 128.0;
            assert!(
                (dialled as f64) < allowed,
                "{dialled} destination dials for {opened} reset streams in {took:.2} s"
            );
            still_serves(at).await;
        }
        let log = server.wait_line("rapid reset?").await;
        assert!(log.contains("WARN"), "{log}");
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// A stream whose destination never reads holds at most its window here: the sender stalls
/// once the window and the sockets' buffers are full; the server's memory grows by about the
/// window, not by what is sent; another call on the same connection goes on.
#[tokio::test]
async fn a_stream_that_is_never_read_holds_its_window() {
    bounded(async {
        let count = Arc::new(AtomicUsize::new(0));
        let dest = counting_dest(count, true).await;
        let mut server = Proc::server(&dest.to_string(), &["-grpc"]);
        let at = server.listening_addr().await;
        let pid = server.child.id().expect("pid");
        let send = h2_client(at).await;
        let mut s = send.clone().ready().await.expect("ready");
        let (_resp, mut stream) = s.send_request(tun_request(), false).expect("call");
        let before = mem_kib(pid, "VmRSS:");
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        // Push until no window is granted for a while.
        loop {
            stream.reserve_capacity(chunk.len() + 16);
            let room = tokio::time::timeout(
                Duration::from_millis(500),
                std::future::poll_fn(|cx| stream.poll_capacity(cx)),
            )
            .await;
            let room = match room {
                Ok(Some(Ok(n))) => n,
                Ok(_) => panic!("the stream was closed"),
                Err(_) => break,
            };
            let n = room.saturating_sub(16).min(chunk.len());
            if n == 0 {
                continue;
            }
            let mut msg = BytesMut::new();
            grpc::encode(&chunk[..n], &mut msg);
            stream.send_data(msg.freeze(), false).expect("send");
            sent += n;
            assert!(sent < 256 << 20, "256 MiB sent and never stalled");
        }
        let grew = mem_kib(pid, "VmHWM:").saturating_sub(before);
        eprintln!(
            "never read: {} KiB sent before the stall, server RSS peaked {grew} KiB higher",
            sent / 1024
        );
        let window = grpc::STREAM_WINDOW as u64 / 1024;
        assert!(
            grew < window + 4 * 1024,
            "{grew} KiB for one unread stream (window {window} KiB)"
        );
        still_serves(at).await;
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}

/// Writes raw HTTP/2 frames: the preface, then each frame's 9-byte head and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Sends `flood` (after the preface and an empty SETTINGS) from a peer that reads nothing,
/// as long as the server takes it; returns how much it took, and whether it closed the
/// connection. The server's memory must not grow by more than `max_kib`.
async fn flood(
    at: SocketAddr,
    pid: u32,
    flood: &[u8],
    rounds: usize,
    max_kib: u64,
) -> (usize, bool) {
    let mut s = h2_tls(at).await;
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(4, 0, 0, &[])).await.expect("settings");
    let before = mem_kib(pid, "VmRSS:");
    let mut took = 0;
    let mut closed = false;
    for _ in 0..rounds {
        match tokio::time::timeout(Duration::from_millis(500), s.write_all(flood)).await {
            Ok(Ok(())) => took += flood.len(),
            Ok(Err(_)) => {
                closed = true;
                break;
            }
            // The server stopped reading: it waits for us to read its answers.
            Err(_) => break,
        }
    }
    let grew = mem_kib(pid, "VmHWM:").saturating_sub(before);
    eprintln!(
        "flood: {} KiB taken, closed: {closed}, server RSS peaked {grew} KiB higher",
        took / 1024
    );
    assert!(grew < max_kib, "{grew} KiB for a flood");
    if !closed {
        // Reading now: the connection ends with a GOAWAY or an error, or drains.
        let mut b = vec![0u8; 1 << 16];
        let end = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        closed = end.unwrap_or(false);
    }
    (took, closed)
}

/// A header block that never ends (CONTINUATION frames past the header-list limit) closes
/// the connection; floods of PINGs and SETTINGS from a peer that reads nothing stop being
/// read (the answers wait for the peer), costing bounded memory; others are served.
#[tokio::test]
async fn continuation_ping_and_settings_floods_are_bounded() {
    bounded(async {
        let echo = echo_server().await;
        let mut server = Proc::server(&echo.to_string(), &["-grpc"]);
        let at = server.listening_addr().await;
        let pid = server.child.id().expect("pid");
        // HEADERS without END_HEADERS (a literal header, not indexed), then CONTINUATIONs
        // of the same literal's bytes, forever.
        let mut block = frame(1, 0x0, 1, b"\x00\x03x-a\x7f\x81\x7faaaaaaaa");
        for _ in 0..64 {
            block.extend(frame(9, 0, 1, &[b'a'; 1024]));
        }
        let (took, closed) = flood(at, pid, &block, 4096, 8 * 1024).await;
        assert!(
            closed,
            "the connection survived {} KiB of header block",
            took / 1024
        );
        assert!(took < 64 << 20, "{} KiB of header block taken", took / 1024);
        let mut pings = Vec::new();
        for i in 0..1024u64 {
            pings.extend(frame(6, 0, 0, &i.to_be_bytes()));
        }
        flood(at, pid, &pings, 4096, 8 * 1024).await;
        let settings = frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]).repeat(1024);
        flood(at, pid, &settings, 4096, 8 * 1024).await;
        still_serves(at).await;
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}

/// More streams at once than a connection may have (128): the ones beyond are refused
/// (RST_STREAM) without a dial, the others are tunnels; the connection goes on.
#[tokio::test]
async fn streams_beyond_the_limit_are_refused_without_a_dial() {
    bounded(async {
        let count = Arc::new(AtomicUsize::new(0));
        let dest = counting_dest(count.clone(), false).await;
        let mut server = Proc::server(&dest.to_string(), &["-grpc"]);
        let at = server.listening_addr().await;
        let (mut r, mut w) = tokio::io::split(h2_tls(at).await);
        w.write_all(PREFACE).await.expect("preface");
        w.write_all(&frame(4, 0, 0, &[])).await.expect("settings");
        // Wait for the server's SETTINGS before opening, as a client does.
        let mut head = [0u8; 9];
        r.read_exact(&mut head).await.expect("settings");
        assert_eq!(head[3], 4, "the server speaks first with SETTINGS");
        let mut body = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        r.read_exact(&mut body).await.expect("settings");
        w.write_all(&frame(4, 1, 0, &[])).await.expect("ack");
        let limit = grpc::MAX_STREAMS as usize;
        let block = call_headers();
        let mut opens = Vec::new();
        for i in 0..limit + 12 {
            opens.extend(frame(1, 0x4, 2 * i as u32 + 1, &block));
        }
        w.write_all(&opens).await.expect("opens");
        let (mut answered, mut refused) = (0, 0);
        while answered + refused < limit + 12 {
            r.read_exact(&mut head).await.expect("a frame");
            let mut body = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
            r.read_exact(&mut body).await.expect("its payload");
            match head[3] {
                1 => answered += 1,
                3 => refused += 1,
                7 => panic!("GOAWAY for {} streams", limit + 12),
                _ => {}
            }
        }
        assert_eq!((answered, refused), (limit, 12));
        assert_eq!(settled(&count).await, limit, "a dial per stream taken");
        still_serves(at).await;
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}
