//! SIP003 plugin mode: the binary started with `SS_*` variables as shadowsocks starts it,
//! errors for bad environments and options, stopping with the host, and real
//! shadowsocks-libev (`ss-server`, `ss-local`) carrying SOCKS5 traffic through mtt in every
//! mode.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn plugin(
    program: &Path,
    remote: SocketAddr,
    local: SocketAddr,
    options: &str,
    args: &[&str],
) -> tokio::process::Child {
    tokio::process::Command::new(program)
        .args(args)
        .env("SS_REMOTE_HOST", remote.ip().to_string())
        .env("SS_REMOTE_PORT", remote.port().to_string())
        .env("SS_LOCAL_HOST", local.ip().to_string())
        .env("SS_LOCAL_PORT", local.port().to_string())
        .env("SS_PLUGIN_OPTIONS", options)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start plugin")
}

#[tokio::test]
async fn plugins_started_with_the_sip003_environment_carry_traffic() {
    bounded(async {
        let (_links, client_bin, server_bin) = links();
        let (_certs, cert, key, fp) = self_signed_files("localhost");
        let echo = echo_server().await;
        let server_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        let client_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        // The server listens on SS_REMOTE and forwards to SS_LOCAL; the client the reverse.
        let _server = plugin(
            &server_bin,
            server_at,
            echo,
            &format!(
                "cert={};key={};wss;wss-path=/a\\;b;mux",
                path_str(&cert),
                path_str(&key)
            ),
            &[],
        );
        let _client = plugin(
            &client_bin,
            server_at,
            client_at,
            &format!("n=localhost;cert-sha256={fp};wss;wss-path=/a\\;b;mux=true;mux-max-stream=2"),
            &["-fast-open"],
        );
        until_echo_works(client_at, None).await;
        let mut tasks = Vec::new();
        for i in 0..6u64 {
            let data = random_bytes(512 * 1024, i);
            tasks.push(tokio::spawn(async move {
                echo_roundtrip(client_at, &data).await
            }));
        }
        for t in tasks {
            t.await.expect("transfer");
        }
    })
    .await;
}

async fn plugin_error(env: &[(&str, &str)], args: &[&str]) -> String {
    let (_links, client_bin, _) = links();
    let mut cmd = tokio::process::Command::new(&client_bin);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("plugin exits")
        .expect("run");
    assert!(!out.status.success(), "{env:?} must fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[tokio::test]
async fn bad_environments_and_options_are_one_clear_line() {
    bounded(async {
        let full = [
            ("SS_REMOTE_HOST", "127.0.0.1"),
            ("SS_REMOTE_PORT", "1"),
            ("SS_LOCAL_HOST", "127.0.0.1"),
            ("SS_LOCAL_PORT", "0"),
        ];
        let err = plugin_error(&[("SS_REMOTE_HOST", "127.0.0.1")], &[]).await;
        assert!(err.contains("SS_LOCAL_PORT"), "{err}");
        let mut with = full.to_vec();
        with.push(("SS_PLUGIN_OPTIONS", "wss;path=/old;n=x"));
        let err = plugin_error(&with, &[]).await;
        // 'path' is v2ray-plugin's (without 'tls': no TLS), 'n' mtt's TLS name: not meant.
        assert!(
            err.contains("'path'") && err.contains("'n'") && err.contains("wss-path"),
            "{err}"
        );
        let mut with = full.to_vec();
        with.push(("SS_PLUGIN_OPTIONS", "mux-max-stream=17"));
        assert!(plugin_error(&with, &[]).await.contains("-mux-max-stream"));
        let mut with = full.to_vec();
        with.push(("SS_PLUGIN_OPTIONS", "sv=perhaps"));
        assert!(plugin_error(&with, &[]).await.contains("sv"));
        let err = plugin_error(&full, &["-b", "127.0.0.1:9"]).await;
        assert!(err.contains("SIP003"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn the_plugin_stops_when_its_host_dies() {
    bounded(async {
        let (_links, client_bin, _) = links();
        let local = format!("127.0.0.1:{}", free_port());
        // A host that starts the plugin and is then killed without a chance to clean up.
        let script = format!(
            "SS_REMOTE_HOST=127.0.0.1 SS_REMOTE_PORT=1 SS_LOCAL_HOST=127.0.0.1 SS_LOCAL_PORT={} SS_PLUGIN_OPTIONS=sv {} & echo $!; wait",
            local.rsplit(':').next().expect("port"),
            client_bin.display()
        );
        let mut host = tokio::process::Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sh");
        let mut out = host.stdout.take().expect("stdout");
        let mut pid = String::new();
        let mut b = [0u8; 1];
        while !pid.ends_with('\n') {
            assert_eq!(out.read(&mut b).await.expect("read pid"), 1);
            pid.push(b[0] as char);
        }
        let pid = pid.trim().to_string();
        wait_listening(local.parse().expect("addr")).await;
        host.start_kill().expect("kill host");
        host.wait().await.expect("host gone");
        let gone = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z")
        {
            assert!(gone.elapsed() < Duration::from_secs(10), "plugin {pid} outlived its host");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// ss-server with `mtt-server`, ss-local with `mtt-client`, a SOCKS5 client through both to a
/// local echo: the command lines of the README's SIP003 section.
#[tokio::test]
async fn real_shadowsocks_libev_in_every_mode() {
    bounded(async {
        let (_links, client_bin, server_bin) = links();
        let (_certs, cert, key, fp) = self_signed_files("localhost");
        let echo = echo_server().await;
        let modes = [
            ("tls", "", ""),
            ("wss", "wss;wss-path=/s\\;s", "wss;wss-path=/s\\;s"),
            ("mux", "mux", "mux"),
            ("wss+mux", "wss;mux;wss-path=/m", "wss;mux;wss-path=/m"),
        ];
        for (name, server_extra, client_extra) in modes {
            let server_opts = format!(
                "cert={};key={};{server_extra}",
                path_str(&cert),
                path_str(&key)
            );
            let client_opts = format!("n=localhost;cert-sha256={fp};{client_extra}");
            let (_ss_server, _ss_local, socks) =
                libev_pair(&server_bin, &server_opts, &client_bin, &client_opts);
            until_echo_works(socks, Some(echo)).await;
            let mut tasks = Vec::new();
            for i in 0..4u64 {
                tasks.push(tokio::spawn(async move {
                    // shadowsocks closes both ways on EOF: no half-close on this path.
                    let s = socks5(socks, echo).await.expect("socks5");
                    echo_exact(s, &random_bytes(1024 * 1024 + i as usize, 40 + i)).await;
                }));
            }
            for t in tasks {
                t.await.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    })
    .await;
}

/// A protect server as Android hosts run it: receives each socket over `protect_path`
/// (SCM_RIGHTS), checks that it is not connected yet, answers one byte.
fn protect_server(dir: &Path) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let listener = std::os::unix::net::UnixListener::bind(dir.join("protect_path"))
        .expect("bind protect_path");
    let protected = Arc::new(AtomicUsize::new(0));
    let already_connected = Arc::new(AtomicUsize::new(0));
    let (p, c) = (protected.clone(), already_connected.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut byte = [0u8; 1];
            let mut iov = [std::io::IoSliceMut::new(&mut byte)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let Ok(msg) = nix::sys::socket::recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                nix::sys::socket::MsgFlags::empty(),
            ) else {
                continue;
            };
            let mut fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for cmsg in cmsgs {
                    if let nix::sys::socket::ControlMessageOwned::ScmRights(f) = cmsg {
                        fds.extend(f);
                    }
                }
            }
            for fd in fds {
                let peer = nix::sys::socket::getpeername::<nix::sys::socket::SockaddrStorage>(fd);
                if peer != Err(nix::errno::Errno::ENOTCONN) {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                p.fetch_add(1, Ordering::SeqCst);
                let _ = nix::unistd::close(fd);
            }
            let _ = conn.write_all(&[0]);
        }
    });
    (protected, already_connected)
}

#[tokio::test]
async fn android_vpn_protect_hands_over_every_socket_before_it_connects() {
    bounded(async {
        let (_links, client_bin, _) = links();
        let echo = echo_server().await;
        let (server, _) = tunnel_to(echo, Duration::from_secs(30)).await;
        let fp = server.fingerprint.clone().expect("fp");
        let work = tempfile::tempdir().expect("tmp");
        let (protected, already_connected) = protect_server(work.path());
        let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        for how in [("", vec!["-V"]), (";__android_vpn", vec![])] {
            let local: SocketAddr = if how.1.is_empty() {
                format!("127.0.0.1:{}", free_port()).parse().expect("a")
            } else {
                local
            };
            let mut cmd = tokio::process::Command::new(&client_bin);
            cmd.args(&how.1)
                .current_dir(work.path())
                .env("SS_REMOTE_HOST", "127.0.0.1")
                .env("SS_REMOTE_PORT", server.addr.port().to_string())
                .env("SS_LOCAL_HOST", "127.0.0.1")
                .env("SS_LOCAL_PORT", local.port().to_string())
                .env(
                    "SS_PLUGIN_OPTIONS",
                    format!("n=127.0.0.1;cert-sha256={fp}{}", how.0),
                )
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            let _client = cmd.spawn().expect("plugin");
            until_echo_works(local, None).await;
            let before = protected.load(Ordering::SeqCst);
            for i in 0..3u64 {
                echo_roundtrip(local, &random_bytes(128 * 1024, i)).await;
            }
            assert_eq!(
                protected.load(Ordering::SeqCst) - before,
                3,
                "one protected socket per dial"
            );
        }
        assert_eq!(
            already_connected.load(Ordering::SeqCst),
            0,
            "sockets arrive before they connect"
        );
        // Without a protect server the dial is refused, not made unprotected.
        std::fs::remove_file(work.path().join("protect_path")).expect("rm");
        let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        let _client = tokio::process::Command::new(&client_bin)
            .arg("-V")
            .current_dir(work.path())
            .env("SS_REMOTE_HOST", "127.0.0.1")
            .env("SS_REMOTE_PORT", server.addr.port().to_string())
            .env("SS_LOCAL_HOST", "127.0.0.1")
            .env("SS_LOCAL_PORT", local.port().to_string())
            .env("SS_PLUGIN_OPTIONS", format!("n=127.0.0.1;cert-sha256={fp}"))
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("plugin");
        wait_listening(local).await;
        closed_promptly(local).await;
    })
    .await;
}

/// The SIP003 command lines with shadowsocks-rust as the host, TCP in every mode (SOCKS5 to
/// a local echo, hashed both ways).
#[tokio::test]
async fn real_shadowsocks_rust_in_every_mode() {
    bounded(async {
        let (_links, client_bin, server_bin) = links();
        let (_certs, cert, key, fp) = self_signed_files("localhost");
        let echo = echo_server().await;
        for (name, extra) in [
            ("tls", ""),
            ("wss", "wss;wss-path=/r"),
            ("mux", "mux"),
            ("wss+mux", "wss;mux"),
            ("grpc", "grpc"),
        ] {
            let server_opts = format!("cert={};key={};{extra}", path_str(&cert), path_str(&key));
            let client_opts = format!("n=localhost;cert-sha256={fp};{extra}");
            let pair = rust_pair(
                &server_bin,
                &client_bin,
                &server_opts,
                &client_opts,
                false,
                None,
            );
            until_echo_works(pair.local, Some(echo)).await;
            let s = socks5(pair.local, echo)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            echo_exact(s, &random_bytes(512 * 1024, 7)).await;
        }
    })
    .await;
}

/// A UDP echo: every datagram back to its sender.
async fn udp_echo() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = sock.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Sends `data` to `to` until it comes back (the plugins say nothing when they are ready,
/// and UDP may lose a datagram), checking what returns; `pair`'s output is the failure's.
async fn udp_until_echoed(
    sock: &tokio::net::UdpSocket,
    to: SocketAddr,
    data: &[u8],
    expect: &[u8],
    pair: &RustPair,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 65_536];
    loop {
        sock.send_to(data, to).await.expect("send");
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
        {
            let (n, _) = r.expect("recv");
            assert!(
                buf[..n] == *expect,
                "a datagram came back changed ({n} bytes)"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no echo of {} bytes through {to}\n{}",
            data.len(),
            pair.logs()
        );
    }
}

/// SIP003u with shadowsocks-rust as the host (`--plugin-mode tcp_and_udp`): its tunnel
/// protocol and a SOCKS5 UDP ASSOCIATE carry datagrams through mtt, hashed both ways, in
/// tls, wss+mux and grpc.
#[tokio::test]
async fn shadowsocks_rust_carries_udp_through_mtt() {
    bounded(async {
        let (_links, client_bin, server_bin) = links();
        let (_certs, cert, key, fp) = self_signed_files("localhost");
        let echo = udp_echo().await;
        for (name, extra) in [
            ("tls", ""),
            ("wss+mux", "wss;mux;wss-path=/u"),
            ("grpc", "grpc;grpc-service=/a.b/Up"),
        ] {
            let server_opts = format!("cert={};key={};{extra}", path_str(&cert), path_str(&key));
            let client_opts = format!("n=localhost;cert-sha256={fp};{extra}");
            // sslocal's tunnel protocol: datagrams to its port go to the echo.
            let pair = rust_pair(
                &server_bin,
                &client_bin,
                &server_opts,
                &client_opts,
                true,
                Some(echo),
            );
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            for (i, n) in [1usize, 100, 1400, 8000, 30_000].into_iter().enumerate() {
                let data = random_bytes(n, 90 + i as u64);
                udp_until_echoed(&sock, pair.local, &data, &data, &pair).await;
            }
            drop(pair);
            // SOCKS5 UDP ASSOCIATE, as applications use it.
            let pair = rust_pair(
                &server_bin,
                &client_bin,
                &server_opts,
                &client_opts,
                true,
                None,
            );
            // sslocal says nothing when it is ready: greet until it answers (bounded).
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut ctl = loop {
                assert!(
                    Instant::now() < deadline,
                    "{name}: sslocal never answered SOCKS5"
                );
                if let Ok(mut s) = TcpStream::connect(pair.local).await {
                    s.write_all(&[5, 1, 0]).await.expect("greeting");
                    let mut r = [0u8; 2];
                    if s.read_exact(&mut r).await.is_ok() && r == [5, 0] {
                        break s;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            ctl.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .expect("associate");
            let mut reply = [0u8; 10];
            ctl.read_exact(&mut reply).await.expect("associate reply");
            assert_eq!(reply[1], 0, "{name}: UDP ASSOCIATE refused");
            let relay = SocketAddr::from((
                [reply[4], reply[5], reply[6], reply[7]],
                u16::from_be_bytes([reply[8], reply[9]]),
            ));
            let relay = if relay.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], relay.port()))
            } else {
                relay
            };
            let ip = match echo.ip() {
                std::net::IpAddr::V4(v4) => v4.octets(),
                std::net::IpAddr::V6(_) => unreachable!("the echo is on 127.0.0.1"),
            };
            let mut header = vec![0u8, 0, 0, 1];
            header.extend_from_slice(&ip);
            header.extend_from_slice(&echo.port().to_be_bytes());
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            for (i, n) in [1usize, 1400, 20_000].into_iter().enumerate() {
                let mut packet = header.clone();
                let data = random_bytes(n, 95 + i as u64);
                packet.extend_from_slice(&data);
                // The answer comes back with the same SOCKS5 header.
                udp_until_echoed(&sock, relay, &packet, &packet, &pair).await;
            }
            drop(ctl);
        }
    })
    .await;
}

/// A host in `tcp_and_udp` mode sending datagrams to a plugin told `udp=false` hears one
/// warning that says which option drops them (it would lose them without a word).
#[tokio::test]
async fn datagrams_to_a_plugin_without_udp_are_said_once() {
    bounded(async {
        let (_links, client_bin, _) = links();
        let client_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
        let (port, local_port) = (free_port().to_string(), client_at.port().to_string());
        let mut client = Proc::spawn_env(
            &client_bin,
            &[],
            &[
                ("SS_REMOTE_HOST", "127.0.0.1"),
                ("SS_REMOTE_PORT", &port),
                ("SS_LOCAL_HOST", "127.0.0.1"),
                ("SS_LOCAL_PORT", &local_port),
                ("SS_PLUGIN_OPTIONS", "udp=false;sv"),
            ],
        );
        client.wait_line("listening on").await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        sock.send_to(b"datagram", client_at).await.expect("send");
        let line = client.wait_line("udp=false").await;
        assert!(line.contains("WARN") && line.contains("dropped"), "{line}");
        // Said once: the port is closed now, and later datagrams are refused by the kernel.
        sock.connect(client_at).await.expect("connect");
        let refused = async {
            loop {
                let _ = sock.send(b"again").await;
                let mut b = [0u8; 8];
                if let Ok(Err(e)) =
                    tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut b)).await
                {
                    return e.kind();
                }
            }
        };
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), refused)
                .await
                .expect("refused"),
            std::io::ErrorKind::ConnectionRefused
        );
        assert_eq!(
            client
                .seen
                .iter()
                .filter(|l| l.contains("udp=false"))
                .count(),
            1
        );
    })
    .await;
}
