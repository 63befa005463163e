//! UDP through the tunnel (`-udp`): in every transport, associations per source address,
//! every size from 1 to 65,507 bytes echoed intact to its own sender; idle expiry,
//! `-udp-max-assoc` eviction, and a server without `-udp` refusing UDP while TCP goes on.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use mtt::config::UdpConfig;
use mtt::transport::Listener;
use mtt::transport::options::{CertSource, MuxClientOptions, PathMatch, Verify, WsServerOptions};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// Echoes every datagram to its sender, and every TCP byte on the same port.
async fn udp_echo() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = sock.local_addr().expect("addr");
    let tcp = TcpListener::bind(addr).await.expect("bind TCP beside");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// An in-process client with `-udp`: TCP and UDP on the same port.
async fn start_udp_client(mut cfg: mtt::config::ClientConfig, udp: UdpConfig) -> Running {
    cfg.udp = Some(udp);
    let client = mtt::role::client::Client::new(cfg).expect("client");
    let l = Listener::Tcp(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    let sock = l.bind_udp_beside().expect("udp beside");
    let addr = sock.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(client.serve(l, Some(sock), shutdown.clone()));
    Running {
        addr,
        fingerprint: None,
        shutdown,
        done,
    }
}

/// Sends `data` from `sock` to `to` and waits for it to come back whole; a datagram lost on
/// the way (UDP may lose) is sent again, up to three times.
async fn round_trip(sock: &UdpSocket, to: SocketAddr, data: &[u8]) {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..4 {
        sock.send_to(data, to).await.expect("send");
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
        {
            let (n, _) = r.expect("recv");
            assert_eq!(n, data.len(), "a datagram came back at another size");
            assert!(buf[..n] == *data, "a datagram came back changed");
            return;
        }
    }
    panic!("{} bytes never came back", data.len());
}

/// The sizes each association sends: 1 byte to the largest UDP payload.
fn sizes() -> Vec<usize> {
    let mut s = vec![
        1, 2, 7, 12, 100, 512, 1200, 1400, 1472, 1500, 4096, 8192, 9000, 16_384,
    ];
    s.extend([32_768, 40_000, 50_000, 60_000, 65_000, 65_507]);
    while s.len() < 40 {
        s.push(1 + (s.len() * 1637) % 65_507);
    }
    s
}

/// Eight associations at once, 40 datagrams each, from 1 to 65,507 bytes, each echoed to
/// its own sender, in every transport.
#[tokio::test]
async fn datagrams_of_every_size_in_every_transport() {
    bounded(async {
        let echo = udp_echo().await;
        for (name, ws, mux) in [
            ("tls", false, false),
            ("wss", true, false),
            ("mux", false, true),
            ("wss+mux", true, true),
        ] {
            let mut scfg = server_config(
                echo,
                Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
                T,
            );
            scfg.accept.udp = true;
            scfg.accept.mux = mux;
            if ws {
                scfg.accept.ws = Some(WsServerOptions {
                    path: PathMatch::new("/u"),
                    fallback: None,
                });
            }
            let server = start_server(scfg).await;
            let mut ccfg = if ws {
                wss_client_config(server.addr, pin_of(&server), "/u", T)
            } else {
                client_config(server.addr, "127.0.0.1", pin_of(&server), T)
            };
            if mux {
                ccfg.dial.mux = Some(MuxClientOptions {
                    max_streams: 4,
                    idle: Duration::from_secs(10),
                });
            }
            let client = start_udp_client(
                ccfg,
                UdpConfig {
                    timeout: T,
                    max_assoc: 64,
                },
            )
            .await;
            let mut tasks = Vec::new();
            for a in 0..8u64 {
                let to = client.addr;
                tasks.push(tokio::spawn(async move {
                    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                    for (i, n) in sizes().into_iter().enumerate() {
                        round_trip(&sock, to, &random_bytes(n, a * 100 + i as u64)).await;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            // TCP goes on beside it, on the same port.
            echo_roundtrip(client.addr, &random_bytes(256 * 1024, 9)).await;
        }
    })
    .await;
}

/// Through the processes: an idle association is closed after -udp-timeout, -udp-max-assoc
/// drops the longest idle one, and what comes later is served by new associations.
#[tokio::test]
async fn idle_associations_expire_and_the_oldest_is_dropped_at_the_limit() {
    bounded(async {
        let echo = udp_echo().await.to_string();
        let mut server = Proc::server(&echo, &["-udp", "-verbose"]);
        let fp = server.pin().await;
        let saddr = server.listening_addr().await.to_string();
        let mut client = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &saddr,
                "-n",
                "127.0.0.1",
                "-cert-sha256",
                &fp,
                "-udp",
                "-udp-timeout",
                "300ms",
                "-udp-max-assoc",
                "2",
                "-metrics",
                "127.0.0.1:0",
                "-verbose",
            ],
        );
        let caddr = client.listening_addr().await;
        let metrics = client.addr_after("metrics at http://").await;
        let socks = [
            UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
        ];
        round_trip(&socks[0], caddr, b"one").await;
        round_trip(&socks[1], caddr, b"two").await;
        // A third source, with two associations open: the longest idle (the first) goes.
        round_trip(&socks[2], caddr, b"three").await;
        let line = client.wait_line("-udp-max-assoc 2 reached").await;
        let first = socks[0].local_addr().expect("addr").to_string();
        assert!(line.contains(&first), "{line}");
        // Then quiet: every association closes after 300 ms.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = scrape(metrics).await;
            if text.contains("mtt_udp_associations 0\n") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "associations still open:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A returning source gets a new association.
        round_trip(&socks[0], caddr, b"again").await;
        let text = scrape(metrics).await;
        assert!(
            text.contains("mtt_udp_datagrams_total{direction=\"up\"} 4\n"),
            "{text}"
        );
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
        server.signal("TERM");
        server.exit().await;
    })
    .await;
}

/// A server without -udp refuses UDP tunnels (saying so once) and carries TCP as before, in
/// plain TLS and in a multiplexed session.
#[tokio::test]
async fn a_server_without_udp_refuses_it_and_tcp_goes_on() {
    bounded(async {
        let echo = echo_server().await.to_string();
        for flags in [vec![], vec!["-mux"]] {
            let mut server = Proc::server(&echo, &flags);
            let fp = server.pin().await;
            let addr = server.listening_addr().await;
            let mut ccfg = client_config(
                addr,
                "127.0.0.1",
                Verify::Pin(mtt::config::parse_pin(&fp).expect("pin")),
                T,
            );
            if flags.contains(&"-mux") {
                ccfg.dial.mux = Some(MuxClientOptions {
                    max_streams: 4,
                    idle: Duration::from_secs(10),
                });
            }
            let client = start_udp_client(
                ccfg,
                UdpConfig {
                    timeout: T,
                    max_assoc: 8,
                },
            )
            .await;
            let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            for _ in 0..3 {
                sock.send_to(b"anyone?", client.addr).await.expect("send");
            }
            let mut buf = [0u8; 64];
            let got =
                tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
            assert!(
                got.is_err(),
                "{flags:?}: an answer through a server without -udp"
            );
            let line = server.wait_line("this server runs without -udp").await;
            assert!(line.contains("WARN"), "{line}");
            echo_roundtrip(client.addr, &random_bytes(64 * 1024, 1)).await;
            server.signal("TERM");
            server.exit().await;
            let said = server
                .seen
                .iter()
                .filter(|l| l.contains("without -udp"))
                .count();
            assert_eq!(said, 1, "{flags:?}: said once: {:?}", server.seen);
        }
    })
    .await;
}
