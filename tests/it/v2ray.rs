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
    v2ray_plugin_as(Path::new("ss-v2ray-plugin"), remote, local, options)
}

/// A plugin (`program`) started as a shadowsocks host starts it.
fn v2ray_plugin_as(program: &Path, remote: SocketAddr, local: SocketAddr, options: &str) -> Proc {
    let (rh, rp) = (remote.ip().to_string(), remote.port().to_string());
    let (lh, lp) = (local.ip().to_string(), local.port().to_string());
    Proc::spawn_env(
        program,
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

/// 16 connections of `size` bytes each at once, opened by `open`, each hashed both ways.
async fn sixteen<F, Fut>(size: usize, open: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = TcpStream> + Send,
{
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let open = open.clone();
        tasks.push(tokio::spawn(async move {
            echo_exact(open().await, &random_bytes(size, 100 + i)).await
        }));
    }
    for t in tasks {
        t.await.expect("transfer");
    }
}

/// 16 connections of 2 MiB each at once to `addr`.
async fn sixteen_at_once(addr: SocketAddr) {
    sixteen(2 << 20, move || async move {
        TcpStream::connect(addr).await.expect("connect")
    })
    .await
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
            until_echo_works(local, None).await;
            sixteen_at_once(local).await;
            plugin.signal("KILL");
            plugin.exit().await;
        }
        // The server said nothing about any of them at its default level.
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
        let lines = server.all_lines().await;
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
        until_echo_works(local, None).await;
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

/// SOCKS5 through `socks` to `echo`: 16 connections of 1 MiB at once, hashed both ways.
async fn sixteen_through_socks(socks: SocketAddr, echo: SocketAddr) {
    until_echo_works(socks, Some(echo)).await;
    sixteen(1 << 20, move || async move {
        socks5(socks, echo).await.expect("socks5")
    })
    .await
}

/// The drop-in, as users switch one end at a time: a shadowsocks configuration written for
/// v2ray-plugin (its option strings, unchanged) with mtt on one end and v2ray-plugin on the
/// other, both ways, with shadowsocks-libev and shadowsocks-rust as hosts.
#[tokio::test]
async fn v2ray_plugin_option_strings_run_mtt_on_either_end() {
    bounded(async {
        let (_links, mtt_client, mtt_server) = links();
        let v2ray = Path::new("/usr/bin/ss-v2ray-plugin");
        let (_certs, cert, key, _) = self_signed_files("localhost");
        let echo = echo_server().await;
        let server_opts = format!(
            "server;tls;host=localhost;path=/v2;cert={};key={}",
            path_str(&cert),
            path_str(&key)
        );
        let client_opts = format!("tls;host=localhost;path=/v2;cert={};mux=4", path_str(&cert));
        for (server_plugin, client_plugin) in [(&*mtt_server, v2ray), (v2ray, &*mtt_client)] {
            let (_s, _l, socks) =
                libev_pair(server_plugin, &server_opts, client_plugin, &client_opts);
            sixteen_through_socks(socks, echo).await;
            let pair = rust_pair(
                server_plugin,
                client_plugin,
                &server_opts,
                &client_opts,
                false,
                None,
            );
            let run = tokio::time::timeout(
                std::time::Duration::from_secs(25),
                sixteen_through_socks(pair.local, echo),
            )
            .await;
            assert!(run.is_ok(), "shadowsocks-rust: {}", pair.logs());
        }
    })
    .await;
}
/// Without `tls`, v2ray-plugin's WebSocket is plain, as behind a TLS-terminating proxy: nginx
/// takes TLS from the client (`tls` in its options) and hands a plain WebSocket to a server
/// whose options have no `tls`, mtt's or v2ray-plugin's, with either client in front.
#[tokio::test]
async fn behind_nginx_terminating_tls_either_end_can_be_mtt() {
    bounded(async {
        let (_links, mtt_client, mtt_server) = links();
        let v2ray = Path::new("/usr/bin/ss-v2ray-plugin");
        let (_certs, cert, key, _) = self_signed_files("localhost");
        let echo = echo_server().await;
        for (server_plugin, client_plugin) in [(&*mtt_server, v2ray), (v2ray, &*mtt_client)] {
            let behind: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
            let mut server = if server_plugin == v2ray {
                v2ray_plugin(behind, echo, "server;path=/ws")
            } else {
                let (rh, rp) = (behind.ip().to_string(), behind.port().to_string());
                let (lh, lp) = (echo.ip().to_string(), echo.port().to_string());
                Proc::spawn_env(
                    server_plugin,
                    &[],
                    &[
                        ("SS_REMOTE_HOST", &rh),
                        ("SS_REMOTE_PORT", &rp),
                        ("SS_LOCAL_HOST", &lh),
                        ("SS_LOCAL_PORT", &lp),
                        ("SS_PLUGIN_OPTIONS", "server;path=/ws"),
                    ],
                )
            };
            wait_listening(behind).await;
            let front = free_port();
            let _nginx = Nginx::start(
                &format!(
                    "server {{ listen 127.0.0.1:{front} ssl; ssl_certificate {}; ssl_certificate_key {}; location /ws {{ proxy_pass http://{behind}; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; proxy_set_header Host $host; proxy_read_timeout 1h; }} }}",
                    path_str(&cert),
                    path_str(&key)
                ),
                front,
            )
            .await;
            let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
            let options = format!("tls;host=localhost;path=/ws;cert={};mux=4", path_str(&cert));
            let at: SocketAddr = format!("127.0.0.1:{front}").parse().expect("a");
            let _client = if client_plugin == v2ray {
                v2ray_plugin(at, local, &options)
            } else {
                let (rh, rp) = (at.ip().to_string(), at.port().to_string());
                let (lh, lp) = (local.ip().to_string(), local.port().to_string());
                Proc::spawn_env(
                    client_plugin,
                    &[],
                    &[
                        ("SS_REMOTE_HOST", &rh),
                        ("SS_REMOTE_PORT", &rp),
                        ("SS_LOCAL_HOST", &lh),
                        ("SS_LOCAL_PORT", &lp),
                        ("SS_PLUGIN_OPTIONS", &options),
                    ],
                )
            };
            until_echo_works(local, None).await;
            sixteen_at_once(local).await;
            server.signal("KILL");
            server.exit().await;
        }
    })
    .await;
}

/// Sessions of the multiplexers without flow control over WebSocket without TLS (behind a
/// TLS-terminating proxy): 16 parallel transfers finish. The WebSocket stream's reading side
/// used to push out pending bytes of a write itself, taking the socket's write wake-up from
/// the session's writer task, which then slept for good.
#[tokio::test]
async fn sessions_over_websocket_without_tls_do_not_stall() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-wss",
                "-disable-tls",
            ],
        );
        let at = server.listening_addr().await.to_string();
        for proto in ["mux.cool", "smux"] {
            let mut client = Proc::spawn(
                &mtt_bin(),
                &[
                    "client",
                    "-b",
                    "127.0.0.1:0",
                    "-s",
                    &at,
                    "-wss",
                    "-disable-tls",
                    "-mux",
                    "-mux-proto",
                    proto,
                    "-mux-max-stream",
                    "4",
                ],
            );
            let local = client.listening_addr().await;
            sixteen_at_once(local).await;
            client.signal("KILL");
            client.exit().await;
        }
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}

/// Behind one stream of a v2ray-plugin client's Mux.Cool session (no per-stream flow control),
/// a destination that reads nothing for a while: the 15 other connections of that session move
/// 2 MiB each both ways meanwhile, and once it reads, the slow one gets all 6 MiB it was sent
/// (an mtt server lets a stream that falls behind borrow the session's spare room; without it
/// the session waited 2 s for that reader, then closed its stream).
#[tokio::test]
async fn a_slow_destination_does_not_hold_up_its_siblings() {
    // v2ray's Mux.Cool client takes the end of a stream's upload as the end of the stream,
    // both ways: the upload is sized, not half-closed.
    const SLOW: usize = 6 << 20;
    bounded(async {
        // A receive buffer this small keeps the kernel from absorbing the slow upload.
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        sock.bind("127.0.0.1:0".parse().expect("a")).expect("bind");
        let dest = sock.listen(64).expect("listen");
        let dest_at = dest.local_addr().expect("addr").to_string();
        let (go_tx, go) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = dest.accept().await {
                let mut go = go.clone();
                tokio::spawn(async move {
                    let mut tag = [0u8; 1];
                    if s.read_exact(&mut tag).await.is_err() {
                        return;
                    }
                    if tag[0] == b'S' {
                        let _ = go.wait_for(|&go| go).await;
                        let mut all = vec![b'S'; SLOW];
                        s.read_exact(&mut all[1..]).await.expect("the slow upload");
                        s.write_all(&sha256(&all)).await.expect("reply");
                    } else {
                        s.write_all(&tag).await.expect("echo");
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                });
            }
        });
        let (_dir, cert, key, _) = self_signed_files("localhost");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &dest_at,
                "-wss",
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
            ],
        );
        let at = server.listening_addr().await;
        let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        let options = format!("tls;host=localhost;cert={};mux=16", path_str(&cert));
        let mut plugin = v2ray_plugin(at, local, &options);
        plugin.wait_line("started").await;
        until_echo_works(local, None).await;
        let mut slow_data = random_bytes(SLOW, 7);
        slow_data[0] = b'S';
        let want = sha256(&slow_data);
        let slow = tokio::spawn(async move {
            let s = TcpStream::connect(local).await.expect("connect");
            let (mut r, mut w) = s.into_split();
            w.write_all(&slow_data).await.expect("upload");
            let mut back = [0u8; 32];
            r.read_exact(&mut back).await.expect("reply");
            back
        });
        let mut siblings = Vec::new();
        for i in 0..15u64 {
            siblings.push(tokio::spawn(async move {
                let mut data = random_bytes(2 << 20, 200 + i);
                data[0] = b'E';
                echo_exact(TcpStream::connect(local).await.expect("c"), &data).await
            }));
        }
        for t in siblings {
            t.await.expect("a sibling moved its 2 MiB both ways");
        }
        assert!(!slow.is_finished(), "the slow upload waits for its reply");
        go_tx.send(true).expect("the slow destination waits");
        let back = slow.await.expect("the slow upload");
        assert_eq!(back, want, "the slow destination got all of it");
        plugin.signal("KILL");
        plugin.exit().await;
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// The sockets of `ss -tne` in state established as (local, peer, mark) triples.
fn marked_sockets() -> Vec<(String, String, Option<String>)> {
    let out = std::process::Command::new("ss")
        .args(["-Htne", "state", "established"])
        .bounded_output();
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mark = f
                .iter()
                .find_map(|w| w.strip_prefix("fwmark:"))
                .map(str::to_string);
            Some((f.get(2)?.to_string(), f.get(3)?.to_string(), mark))
        })
        .collect()
}

/// `fwmark` in a v2ray-plugin option string marks an mtt client's connections to its server,
/// as v2ray-plugin's does; `-fwmark` on an mtt server marks its listener (so what it accepts)
/// and its connections to the destination. Seen as the kernel sees them (`ss -e`). Without
/// CAP_NET_ADMIN (nor CAP_NET_RAW) the client stops at start, saying so.
#[tokio::test]
async fn fwmark_marks_the_tunnels_sockets() {
    bounded(async {
        let (_links, mtt_client, _) = links();
        let echo = echo_server().await;
        let (_dir, cert, key, _) = self_signed_files("localhost");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo.to_string(),
                "-wss",
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
                "-fwmark",
                "0x9",
            ],
        );
        let at = server.listening_addr().await;
        let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        let options = format!("tls;host=localhost;cert={};fwmark=7", path_str(&cert));
        let mut client = v2ray_plugin_as(&mtt_client, at, local, &options);
        until_echo_works(local, None).await;
        let mut s = TcpStream::connect(local).await.expect("connect");
        s.write_all(b"held").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("echo");
        let sockets = marked_sockets();
        let (at_s, echo_s) = (at.to_string(), echo.to_string());
        let to_server: Vec<_> = sockets.iter().filter(|(_, p, _)| *p == at_s).collect();
        let accepted: Vec<_> = sockets.iter().filter(|(l, _, _)| *l == at_s).collect();
        let to_dest: Vec<_> = sockets
            .iter()
            .filter(|(l, p, _)| *p == echo_s && !to_server.iter().any(|(cl, _, _)| cl == l))
            .collect();
        assert!(!to_server.is_empty() && !accepted.is_empty() && !to_dest.is_empty());
        for (l, p, mark) in &to_server {
            assert_eq!(mark.as_deref(), Some("0x7"), "client {l} -> server {p}");
        }
        for (l, p, mark) in accepted.iter().chain(&to_dest) {
            assert_eq!(mark.as_deref(), Some("0x9"), "server's {l} -> {p}");
        }
        drop(s);
        client.signal("TERM");
        client.exit().await;
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));

        // Without the capabilities (dropped from the bounding set), the client says what
        // it needs at start.
        let out = std::process::Command::new("setpriv")
            .args(["--bounding-set=-net_admin,-net_raw", "--"])
            .arg(mtt_bin())
            .args(["client", "-b", "127.0.0.1:0", "-s", &at_s, "-fwmark", "7"])
            .bounded_output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("-fwmark 7") && err.contains("CAP_NET_ADMIN"),
            "{err}"
        );
    })
    .await;
}

/// A mu-server takes v2ray-plugin clients at its users' paths, with and without Mux.Cool, as
/// the one-destination server does: each reaches its own user's destination.
#[tokio::test]
async fn v2ray_plugin_clients_reach_a_mu_servers_users() {
    bounded(async {
        let (alice, bob) = (echo_server().await, echo_server().await);
        let (dir, cert, key, _) = self_signed_files("localhost");
        let users = dir.path().join("users.json");
        std::fs::write(
            &users,
            format!(r#"[{{"path":"/alice","dst":"{alice}"}},{{"path":"/bob","dst":"{bob}"}}]"#),
        )
        .expect("users");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-c-token",
                "t",
                "-users-file",
                &path_str(&users),
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
                "-verbose",
            ],
        );
        let at = server.listening_addr().await;
        for (path, mux) in [("/alice", "8"), ("/bob", "0"), ("/bob", "16")] {
            let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
            let options = format!(
                "tls;host=localhost;path={path};cert={};mux={mux}",
                path_str(&cert)
            );
            let mut plugin = v2ray_plugin(at, local, &options);
            plugin.wait_line("started").await;
            until_echo_works(local, None).await;
            sixteen_at_once(local).await;
            plugin.signal("KILL");
            plugin.exit().await;
        }
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
        let lines = server.all_lines().await;
        // Each user's tunnels went to that user's destination, multiplexed where asked.
        assert!(
            relayed_to(&lines, alice) >= 16 && relayed_to(&lines, bob) >= 32,
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("multiplexed session (Mux.Cool)")),
            "{lines:#?}"
        );
    })
    .await;
}
