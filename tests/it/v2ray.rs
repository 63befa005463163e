//! v2ray-plugin, the WebSocket plugin most shadowsocks users run (Debian's
//! `shadowsocks-v2ray-plugin`, v2ray core 4.34), as the real peer on either end: its clients
//! at an mtt server that was given no flag for them, with and without its Mux.Cool
//! multiplexing (`mux=N`, its default being 1), and an mtt client speaking Mux.Cool to its
//! server, which takes nothing else. Many connections at once, hashed both ways.

use std::net::SocketAddr;
use std::path::Path;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `ss-v2ray-plugin` started as a shadowsocks host starts it; its lines are read as they come.
fn v2ray_plugin(remote: SocketAddr, local: SocketAddr, options: &str) -> Proc {
    let (rh, rp) = (remote.ip().to_string(), remote.port().to_string());
    let (lh, lp) = (local.ip().to_string(), local.port().to_string());
    Proc::spawn_env(
        Path::new("ss-v2ray-plugin"),
        &[],
        &[
            ("SS_REMOTE_HOST", &rh),
            ("SS_REMOTE_PORT", &rp),
            ("SS_LOCAL_HOST", &lh),
            ("SS_LOCAL_PORT", &lp),
            ("SS_PLUGIN_OPTIONS", options),
        ],
    )
}

/// Sends `data` and reads back as many bytes while sending (no half-close: v2ray's Mux.Cool
/// ends a stream both ways at its client's first End), then checks them.
async fn echo_exact(addr: SocketAddr, data: &[u8]) {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.expect("write");
        }
    };
    let recv = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.expect("read the echo");
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert_eq!(sha256(&back), sha256(data), "echo content");
}

/// Until a small echo through `addr` works (the plugin says nothing when it is ready for
/// traffic beyond its start line).
async fn until_ready(addr: SocketAddr) {
    for _ in 0..200 {
        let try_once = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ready?").await.ok()?;
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await.ok()?;
            (&b == b"ready?").then_some(())
        };
        if tokio::time::timeout(std::time::Duration::from_secs(2), try_once)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing came through {addr}");
}

/// 16 connections of 2 MiB each at once, each hashed both ways.
async fn sixteen_at_once(addr: SocketAddr) {
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        tasks.push(tokio::spawn(async move {
            echo_exact(addr, &random_bytes(2 << 20, 100 + i)).await
        }));
    }
    for t in tasks {
        t.await.expect("transfer");
    }
}

#[tokio::test]
async fn v2ray_plugin_clients_with_and_without_mux_reach_an_mtt_server() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_dir, cert, key, _) = self_signed_files("localhost");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-wss",
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
            ],
        );
        let at = server.listening_addr().await;
        for mux in ["0", "1", "8"] {
            let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
            let options = format!("tls;host=localhost;cert={};mux={mux}", path_str(&cert));
            let mut plugin = v2ray_plugin(at, local, &options);
            plugin.wait_line("started").await;
            until_ready(local).await;
            sixteen_at_once(local).await;
            plugin.signal("KILL");
            plugin.exit().await;
        }
        // The server said nothing about any of them at its default level.
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
        let mut lines = server.seen.clone();
        while let Some(l) = server.next_line().await {
            lines.push(l);
        }
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("WARN") && !l.contains("self-signed")),
            "{lines:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_mtt_client_speaks_mux_cool_to_a_v2ray_plugin_server() {
    bounded(async {
        let echo = echo_server().await;
        let (_dir, cert, key, pin) = self_signed_files("localhost");
        let at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        let options = format!(
            "server;tls;host=localhost;cert={};key={}",
            path_str(&cert),
            path_str(&key)
        );
        let mut plugin = v2ray_plugin(at, echo, &options);
        plugin.wait_line("started").await;
        let mut client = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &at.to_string(),
                "-n",
                "localhost",
                "-cert-sha256",
                &pin,
                "-wss",
                "-mux",
                "-mux-proto",
                "mux.cool",
                "-mux-max-stream",
                "8",
            ],
        );
        let local = client.listening_addr().await;
        until_ready(local).await;
        sixteen_at_once(local).await;
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
        plugin.signal("KILL");
        plugin.exit().await;
    })
    .await;
}

/// Between mtt ends, Mux.Cool half-closes as TCP does (v2ray's own ends both ways at once),
/// on plain TLS and WebSocket alike.
#[tokio::test]
async fn mux_cool_between_mtt_ends_carries_half_closes() {
    bounded(async {
        let echo = echo_server().await.to_string();
        for ws in [false, true] {
            let extra: &[&str] = if ws { &["-wss"] } else { &[] };
            let mut server = Proc::server(&echo, extra);
            let pin = server.pin().await;
            let addr = server.listening_addr().await.to_string();
            let mut args = vec!["-mux", "-mux-proto", "mux.cool"];
            args.extend_from_slice(extra);
            let mut client = Proc::client(&addr, &pin, &args);
            let local = client.listening_addr().await;
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                tasks.push(tokio::spawn(async move {
                    echo_roundtrip(local, &random_bytes(1 << 20, 200 + i)).await
                }));
            }
            for t in tasks {
                t.await.expect("transfer");
            }
            let line = server
                .seen
                .iter()
                .any(|l| l.contains("WARN") && !l.contains("self-signed"));
            assert!(!line, "{:?}", server.seen);
            client.signal("KILL");
            client.exit().await;
            server.signal("KILL");
            server.exit().await;
        }
    })
    .await;
}
