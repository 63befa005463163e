//! gRPC tunnels (gun, as Xray and v2fly carry them): against grpcio, Google's gRPC library,
//! as client and as server (tests/grpc_peer/gun.py); mtt to mtt beside WebSocket on one
//! port, with the fallback site over HTTP/2; behind nginx's grpc_pass; a mu-server routing
//! two users' services; and a client that opens streams only to reset them at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn gun_py() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/grpc_peer/gun.py")
}

/// `mtt server -grpc -disable-tls` to `dest` (h2c, as a proxy in front speaks it), and where.
async fn h2c_server(dest: &str) -> (Proc, SocketAddr) {
    let args = [
        "server",
        "-b",
        "127.0.0.1:0",
        "-d",
        dest,
        "-grpc",
        "-disable-tls",
    ];
    let mut server = Proc::spawn(&mtt_bin(), &args);
    let at = server.listening_addr().await;
    (server, at)
}

/// `mtt client -grpc` to 127.0.0.1:`port`, trusting `pki`'s CA for `localhost`; and where it
/// listens.
async fn ca_client(port: impl std::fmt::Display, pki: &Pki) -> (Proc, SocketAddr) {
    let server = format!("127.0.0.1:{port}");
    let ca = path_str(&pki.ca);
    let args = [
        "client",
        "-b",
        "127.0.0.1:0",
        "-s",
        &server,
        "-n",
        "localhost",
        "-ca",
        &ca,
        "-grpc",
    ];
    let mut client = Proc::spawn(&mtt_bin(), &args);
    let local = client.listening_addr().await;
    (client, local)
}

/// `n` connections to `addr` at once, each moving `size` bytes both ways, hashed; then one
/// that half-closes: everything it sent comes back, then the end.
async fn transfers(addr: SocketAddr, n: u64, size: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.expect("connect");
            echo_exact(s, &random_bytes(size, 500 + i)).await
        }));
    }
    for t in tasks {
        t.await.expect("a transfer");
    }
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let data = random_bytes(300_000, 9);
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.expect("write");
        w.shutdown().await.expect("half-close");
    };
    let mut back = Vec::new();
    let (_, read) = tokio::join!(send, r.read_to_end(&mut back));
    read.expect("read to the end");
    assert_eq!(sha256(&back), sha256(&data), "half-closed tunnel");
}

/// grpcio's client: 8 concurrent Tun calls of 4 MiB through an mtt server to an echo
/// destination, each ending its request (half-close) and hashing what comes back; a call
/// cancelled midway; one more after it.
#[tokio::test]
async fn grpcio_calls_through_an_mtt_server() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let pki = pki();
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-grpc",
                "-cert",
                &path_str(&pki.cert),
                "-key",
                &path_str(&pki.key),
            ],
        );
        let at = server.listening_addr().await;
        let out = tokio::process::Command::new("python3")
            .arg(gun_py())
            .args([
                "client",
                &at.to_string(),
                &path_str(&pki.ca),
                "localhost",
                "GunService",
                "8",
                &(4 << 20).to_string(),
            ])
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("grpcio's client in time")
            .expect("python3 (install grpcio: .ci/install-test-deps)");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("ok 8"), "{text}");
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// An mtt client with -grpc at grpcio's server (echoing each Hunk, ending its response when
/// the request ends): 8 tunnels of 2 MiB hashed both ways, and a half-close.
#[tokio::test]
async fn an_mtt_client_at_a_grpcio_server() {
    bounded(async {
        let pki = pki();
        let mut peer = Proc::spawn(
            std::path::Path::new("python3"),
            &[
                &path_str(&gun_py()),
                "server",
                "0",
                &path_str(&pki.cert),
                &path_str(&pki.key),
                "GunService",
            ],
        );
        let line = peer.wait_line("listening ").await;
        let port = line.trim().rsplit(' ').next().expect("port").to_string();
        let (mut client, local) = ca_client(&port, &pki).await;
        transfers(local, 8, 2 << 20).await;
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
    })
    .await;
}

/// One server port with -wss and -grpc takes both kinds of client at once (ALPN chooses);
/// requests that are not tunnels get the fallback site, over HTTP/2 and HTTP/1.1 alike.
#[tokio::test]
async fn grpc_and_websocket_on_one_port_with_the_fallback_over_http2() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_site, site_port) = Nginx::static_site("<h1>a plain web site</h1>\n").await;
        let site = format!("127.0.0.1:{site_port}");
        let mut server = Proc::server(
            &echo,
            &[
                "-wss",
                "-grpc",
                "-grpc-service",
                "/my.pkg/Svc/Up|Multi",
                "-fallback",
                &site,
            ],
        );
        let pin = server.pin().await;
        let at = server.listening_addr().await.to_string();
        let mut grpc = Proc::client(&at, &pin, &["-grpc", "-grpc-service", "/my.pkg/Svc/Up"]);
        let mut wss = Proc::client(&at, &pin, &["-wss"]);
        let (g, w) = (grpc.listening_addr().await, wss.listening_addr().await);
        tokio::join!(transfers(g, 8, 2 << 20), transfers(w, 8, 2 << 20));
        // A browser's requests: the site answers, whichever HTTP version.
        for version in ["--http2", "--http1.1"] {
            let out = std::process::Command::new("curl")
                .args([
                    "-sk",
                    version,
                    "-w",
                    "\n%{http_version}",
                    &format!("https://{at}/"),
                ])
                .bounded_output();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("a plain web site"), "{version}: {text}");
            let spoke = if version == "--http2" { "\n2" } else { "\n1.1" };
            assert!(text.ends_with(spoke), "{version}: {text}");
        }
        // A gRPC call to a service this server does not have is no tunnel either.
        let mut other = Proc::client(&at, &pin, &["-grpc", "-grpc-service", "Other"]);
        let o = other.listening_addr().await;
        let mut s = TcpStream::connect(o).await.expect("connect");
        let _ = s.write_all(b"hello").await;
        let (n, _) = drain(&mut s).await;
        assert_eq!(n, 0, "nothing comes back from a service that is not there");
        let line = other.wait_line("HTTP").await;
        assert!(line.contains("-grpc-service"), "{line}");
        for p in [&mut grpc, &mut wss, &mut other, &mut server] {
            p.signal("TERM");
            assert_eq!(p.exit().await.code(), Some(0));
        }
    })
    .await;
}

/// nginx in front, ending TLS and HTTP/2 and passing calls on with grpc_pass to an mtt
/// server without TLS (h2c): mtt clients reach it as any gRPC service behind nginx.
#[tokio::test]
async fn behind_nginx_grpc_pass() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let pki = pki();
        let (mut server, backend) = h2c_server(&echo).await;
        let port = free_port();
        let _nginx = Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port} ssl http2; ssl_certificate {}; ssl_certificate_key {}; location /GunService/ {{ client_max_body_size 0; grpc_pass grpc://{backend}; grpc_read_timeout 1h; grpc_send_timeout 1h; }} }}",
                path_str(&pki.cert),
                path_str(&pki.key)
            ),
            port,
        )
        .await;
        let (mut client, local) = ca_client(port, &pki).await;
        transfers(local, 8, 2 << 20).await;
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// A mu-server with -grpc routes each user's service (its path) to that user's destination.
#[tokio::test]
async fn a_mu_server_routes_services_to_users() {
    bounded(async {
        let (alice, bob) = (echo_server().await, echo_server().await);
        let dir = tempfile::tempdir().expect("tmp");
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
                "-n",
                "127.0.0.1",
                "-users-file",
                &path_str(&users),
                "-grpc",
                "-verbose",
            ],
        );
        let pin = server.pin().await;
        let at = server.listening_addr().await.to_string();
        for user in ["alice", "bob"] {
            let mut c = Proc::client(&at, &pin, &["-grpc", "-grpc-service", user]);
            let local = c.listening_addr().await;
            transfers(local, 4, 1 << 20).await;
            c.signal("TERM");
            c.exit().await;
        }
        let mut c = Proc::client(&at, &pin, &["-grpc", "-grpc-service", "carol"]);
        let local = c.listening_addr().await;
        let mut s = TcpStream::connect(local).await.expect("connect");
        let _ = s.write_all(b"x").await;
        assert_eq!(drain(&mut s).await.0, 0, "no user carol");
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
        let lines = server.all_lines().await;
        let relayed = (relayed_to(&lines, alice), relayed_to(&lines, bob));
        assert_eq!(relayed, (5, 5), "{lines:#?}");
    })
    .await;
}

/// haproxy in HTTP/2 mode in front, ending TLS (ALPN h2) and passing each call on over h2c
/// to an mtt server without TLS: mtt clients reach it through the proxy.
#[tokio::test]
async fn behind_haproxy_in_http2_mode() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let pki = pki();
        let (mut server, backend) = h2c_server(&echo).await;
        let dir = tempfile::tempdir().expect("tmp");
        // haproxy takes the chain and the key in one file.
        let pem = dir.path().join("site.pem");
        let both = std::fs::read_to_string(&pki.cert).expect("cert")
            + &std::fs::read_to_string(&pki.key).expect("key");
        std::fs::write(&pem, both).expect("pem");
        let front = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\nfrontend f\n  bind 127.0.0.1:{front} ssl crt {} alpn h2\n  default_backend b\nbackend b\n  server s {backend} proto h2\n",
                path_str(&pem)
            ),
        )
        .expect("write haproxy.cfg");
        let haproxy = Proc::spawn(
            std::path::Path::new("haproxy"),
            &["-db", "-f", &path_str(&cfg)],
        );
        wait_listening(format!("127.0.0.1:{front}").parse().expect("addr")).await;
        let (mut client, local) = ca_client(front, &pki).await;
        transfers(local, 8, 2 << 20).await;
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
        haproxy.signal("TERM");
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// A client's HTTP/2 connection whose server stops answering (stopped, as a dead path
/// would look) is given up after two -ping intervals without a PING answered, and a new
/// tunnel then gets a new connection once the server is back.
#[tokio::test]
async fn keepalive_pings_find_a_silent_server() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-grpc"]);
        let pin = server.pin().await;
        let at = server.listening_addr().await.to_string();
        let mut client = Proc::client(&at, &pin, &["-grpc", "-ping", "200ms", "-mux-idle", "1h"]);
        let local = client.listening_addr().await;
        echo_roundtrip(local, b"first").await;
        server.signal("STOP");
        let line = client
            .wait_line("gRPC connection to the server closed")
            .await;
        assert!(line.contains("keepalive PING"), "{line}");
        server.signal("CONT");
        echo_roundtrip(local, b"after").await;
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
        server.signal("TERM");
        server.exit().await;
    })
    .await;
}

/// A server with -grpc alone still serves plain-TLS clients (the original's, mtt's without
/// flags) beside gRPC ones; a client with -grpc at a server without it is told what to do.
#[tokio::test]
async fn grpc_beside_plain_tls_and_a_server_without_it() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-grpc"]);
        let pin = server.pin().await;
        let at = server.listening_addr().await.to_string();
        let mut plain = Proc::client(&at, &pin, &[]);
        let mut grpc = Proc::client(&at, &pin, &["-grpc"]);
        let (p, g) = (plain.listening_addr().await, grpc.listening_addr().await);
        tokio::join!(transfers(p, 4, 1 << 20), transfers(g, 4, 1 << 20));
        let mut without = Proc::server(&echo, &[]);
        let pin2 = without.pin().await;
        let at2 = without.listening_addr().await.to_string();
        let mut lost = Proc::client(&at2, &pin2, &["-grpc"]);
        let l = lost.listening_addr().await;
        let mut s = TcpStream::connect(l).await.expect("connect");
        let _ = s.write_all(b"x").await;
        assert_eq!(drain(&mut s).await.0, 0);
        let line = lost.wait_line("ALPN h2").await;
        assert!(line.contains("run it with -grpc"), "{line}");
        for p in [&mut plain, &mut grpc, &mut lost, &mut server, &mut without] {
            p.signal("TERM");
            assert_eq!(p.exit().await.code(), Some(0));
        }
    })
    .await;
}

/// Many short tunnels at a high rate over a few HTTP/2 connections (web browsing, DNS over
/// TCP): none is refused; only calls reset before their first byte count against the
/// rapid-reset budget (which is 512, then 256 a second).
#[tokio::test]
async fn many_short_tunnels_are_not_taken_for_an_attack() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-grpc"]);
        let pin = server.pin().await;
        let at = server.listening_addr().await.to_string();
        let mut client = Proc::client(&at, &pin, &["-grpc"]);
        let local = client.listening_addr().await;
        let start = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..3000u32 {
            if tasks.len() >= 64 {
                tasks
                    .join_next()
                    .await
                    .expect("task")
                    .expect("a short tunnel");
            }
            tasks.spawn(async move {
                let data = i.to_be_bytes();
                echo_roundtrip(local, &data).await;
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.expect("a short tunnel");
        }
        eprintln!(
            "3000 short tunnels in {:.2} s",
            start.elapsed().as_secs_f64()
        );
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}
