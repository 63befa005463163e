//! UDP through the tunnel (`-udp`): in every transport, associations per source address,
//! every size from 1 to 65,507 bytes echoed intact to its own sender; idle expiry,
//! `-udp-max-assoc` eviction, and a server without `-udp` refusing UDP while TCP goes on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::config::UdpConfig;
use mtt::testing::transport::Listener;
use mtt::testing::transport::options::{MuxClientOptions, PathMatch, Verify, WsServerOptions};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// Echoes every datagram to its sender, and every TCP byte on the same port.
pub async fn udp_echo() -> SocketAddr {
    // A UDP port whose TCP twin is free too (another test may hold that one).
    let mut tries = 0;
    let (sock, tcp, addr) = loop {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (sock, tcp, addr),
            Err(e) => {
                tries += 1;
                assert!(tries < 20, "no port free for both UDP and TCP: {e}");
            }
        }
    };
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

/// gRPC on a server: the default service.
fn grpc_server() -> mtt::testing::transport::options::GrpcServerOptions<()> {
    use mtt::testing::transport::grpc::{DEFAULT_SERVICE, Service};
    let calls = Service::parse(DEFAULT_SERVICE).expect("service");
    mtt::testing::transport::options::GrpcServerOptions {
        services: PathMatch::Exact(calls.path.clone()),
        calls,
        fallback: None,
    }
}

/// gRPC on a client to 127.0.0.1.
fn grpc_client() -> mtt::testing::transport::options::GrpcClientOptions {
    use mtt::testing::transport::grpc::{DEFAULT_SERVICE, Service};
    mtt::testing::transport::options::GrpcClientOptions {
        service: Service::parse(DEFAULT_SERVICE).expect("service"),
        authority: "127.0.0.1".into(),
        max_streams: 100,
        idle: Duration::from_secs(10),
    }
}

/// An in-process client with `-udp`: TCP and UDP on the same port.
async fn start_udp_client(mut cfg: mtt::testing::config::ClientConfig, udp: UdpConfig) -> Running {
    cfg.udp = Some(udp);
    let client = mtt::testing::role::client::Client::new(cfg).expect("client");
    // A TCP port whose UDP twin is free too (other tests hold UDP ports of their own).
    let mut tries = 0;
    let (l, sock) = loop {
        let l = Listener::from(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        match l.bind_udp_beside() {
            Ok(sock) => break (l, sock),
            Err(e) => {
                tries += 1;
                assert!(tries < 20, "no port free for both TCP and UDP: {e}");
            }
        }
    };
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
        // The four transports at once (each its own server and client).
        let mut modes = Vec::new();
        for (name, ws, mux, grpc) in [
            ("tls", false, false, false),
            ("wss", true, false, false),
            ("mux", false, true, false),
            ("wss+mux", true, true, false),
            ("grpc", false, false, true),
        ] {
            modes.push(tokio::spawn(async move {
                let mut scfg = server_config(
                    echo,
                    Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
                    T,
                );
                scfg.accept.udp = true;
                scfg.accept.mux = mux;
                if ws {
                    scfg.accept.ws = Some(WsServerOptions::new(PathMatch::new("/u"), None));
                }
                if grpc {
                    scfg.accept.grpc = Some(grpc_server());
                }
                let server = start_server(scfg).await;
                let mut ccfg = if ws {
                    wss_client_config(server.addr, pin_of(&server), "/u", T)
                } else {
                    client_config(server.addr, "127.0.0.1", pin_of(&server), T)
                };
                if mux {
                    ccfg.dial.mux = Some(MuxClientOptions {
                        muxing: mtt::testing::transport::mux::Muxing::Yamux,
                        max_streams: 4,
                        idle: Duration::from_secs(10),
                    });
                }
                if grpc {
                    ccfg.dial.grpc = Some(grpc_client());
                }
                let client = start_udp_client(
                    ccfg,
                    UdpConfig {
                        timeout: T,
                        max_assoc: 64,
                        assoc_rate: mtt::testing::config::UDP_ASSOC_RATE,
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
                (server, client)
            }));
        }
        for m in modes {
            drop(m.await.expect("mode"));
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
        let started = server.wait_line("server listening on").await;
        assert!(
            started.contains("(TCP and UDP)"),
            "the startup line says UDP: {started}"
        );
        let saddr = started
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .expect("address")
            .to_string();
        let mut client = Proc::client(
            &saddr,
            &fp,
            &[
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
        scrape_until(
            metrics,
            Duration::from_secs(5),
            "associations still open",
            |t| t.contains("mtt_udp_associations 0\n"),
        )
        .await;
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

/// A flood of datagrams from new source addresses dials tunnels at `-udp-assoc-rate` only:
/// the rest are dropped and counted, and said at WARN rarely, not once each.
#[tokio::test]
async fn new_associations_are_rate_limited() {
    bounded(async {
        // The destination learns of each association by its source address.
        let dest = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let dest_addr = dest.local_addr().expect("addr").to_string();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = dest.recv_from(&mut buf).await {
                let _ = seen_tx.send(from);
            }
        });
        let mut server = Proc::server(&dest_addr, &["-udp"]);
        let fp = server.pin().await;
        let saddr = server.listening_addr().await.to_string();
        let mut client = Proc::client(
            &saddr,
            &fp,
            &["-udp", "-udp-assoc-rate", "20", "-metrics", "127.0.0.1:0"],
        );
        let caddr = client.listening_addr().await;
        let metrics = client.addr_after("metrics at http://").await;
        const SOURCES: u64 = 300;
        let start = std::time::Instant::now();
        let mut socks = Vec::new();
        for _ in 0..SOURCES {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            s.send_to(b"x", caddr).await.expect("send");
            socks.push(s);
        }
        let text = scrape_until(
            metrics,
            Duration::from_secs(10),
            "every datagram taken or dropped",
            |t| {
                sample_of(t, "mtt_udp_datagrams_total{direction=\"up\"}")
                    + sample_of(t, "mtt_udp_dropped_total{reason=\"rate_limited\"}")
                    == SOURCES
            },
        )
        .await;
        let elapsed = start.elapsed().as_secs_f64();
        let taken = sample_of(&text, "mtt_udp_datagrams_total{direction=\"up\"}");
        // The burst the bucket holds, and what it earned meanwhile.
        let allowed = 20 + (20.0 * elapsed).ceil() as u64;
        assert!(
            taken >= 20 && taken <= allowed,
            "{taken} associations in {elapsed:.2} s (at most {allowed})"
        );
        let mut sources = std::collections::HashSet::new();
        while (sources.len() as u64) < taken {
            let from = tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .expect("each taken datagram arrives")
                .expect("destination");
            sources.insert(from);
        }
        let line = client.wait_line("-udp-assoc-rate").await;
        assert!(
            line.contains("WARN") && line.contains("loopback or a trusted network"),
            "{line}"
        );
        let said = client
            .seen
            .iter()
            .filter(|l| l.contains("-udp-assoc-rate"))
            .count();
        assert!(said <= 1 + elapsed.ceil() as usize, "{said} lines");
        client.signal("TERM");
        client.exit().await;
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
        for flags in [vec![], vec!["-mux"], vec!["-grpc"]] {
            let mut server = Proc::server(&echo, &flags);
            let fp = server.pin().await;
            let addr = server.listening_addr().await;
            let mut ccfg = client_config(
                addr,
                "127.0.0.1",
                Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin")),
                T,
            );
            if flags.contains(&"-mux") {
                ccfg.dial.mux = Some(MuxClientOptions {
                    muxing: mtt::testing::transport::mux::Muxing::Yamux,
                    max_streams: 4,
                    idle: Duration::from_secs(10),
                });
            }
            if flags.contains(&"-grpc") {
                ccfg.dial.grpc = Some(grpc_client());
            }
            let client = start_udp_client(
                ccfg,
                UdpConfig {
                    timeout: T,
                    max_assoc: 8,
                    assoc_rate: mtt::testing::config::UDP_ASSOC_RATE,
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

/// A bad frame (over 65,507 bytes, or cut short) closes that association only; one that
/// meets an unreachable destination (ICMP port unreachable) lives on; the process too.
#[tokio::test]
async fn bad_frames_close_one_association_and_icmp_ends_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let dead = {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            s.local_addr().expect("addr")
        };
        let echo = udp_echo().await;
        for (dest, flags) in [
            (dead, vec!["-udp", "-metrics", "127.0.0.1:0"]),
            (echo, vec!["-udp"]),
        ] {
            let d = dest.to_string();
            let mut server = Proc::server(&d, &flags);
            let fp = server.pin().await;
            let addr = server.listening_addr().await;
            let pin = Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin"));
            if dest == dead {
                // Datagrams to a closed port: ICMP comes back; the association stays.
                let metrics = server.addr_after("metrics at http://").await;
                let client = start_udp_client(
                    client_config(addr, "127.0.0.1", pin, T),
                    UdpConfig {
                        timeout: T,
                        max_assoc: 8,
                        assoc_rate: mtt::testing::config::UDP_ASSOC_RATE,
                    },
                )
                .await;
                let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    sock.send_to(b"hello?", client.addr).await.expect("send");
                    let text = scrape(metrics).await;
                    let ups = sample_of(&text, "mtt_udp_datagrams_total{direction=\"up\"}");
                    if ups >= 5 {
                        assert!(text.contains("mtt_udp_associations 1\n"), "{text}");
                        break;
                    }
                    assert!(Instant::now() < deadline, "{text}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else {
                // A live association beside the bad ones.
                let client = start_udp_client(
                    client_config(addr, "127.0.0.1", pin, T),
                    UdpConfig {
                        timeout: T,
                        max_assoc: 8,
                        assoc_rate: mtt::testing::config::UDP_ASSOC_RATE,
                    },
                )
                .await;
                let good = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                round_trip(&good, client.addr, b"before").await;
                let tls = mtt::testing::transport::tls::TlsClient::new(
                    &mtt::testing::transport::options::TlsClientOptions {
                        server_name: "127.0.0.1".into(),
                        verify: Verify::Insecure,
                        hello: Default::default(),
                    },
                    &[b"mtt-udp"],
                    Duration::from_secs(10),
                )
                .expect("tls");
                for bad in [&[0xff, 0xff, 1, 2, 3][..], &[0, 100, 1, 2, 3][..]] {
                    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    let mut s = tls.connect(tcp).await.expect("handshake");
                    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mtt-udp"[..]));
                    s.write_all(bad).await.expect("write");
                    if bad[0] == 0 {
                        // Cut short: the length says 100, five bytes come, then the end.
                        s.shutdown().await.expect("shutdown");
                    }
                    s.flush().await.expect("flush");
                    let mut rest = Vec::new();
                    let closed =
                        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
                            .await;
                    assert!(closed.is_ok(), "a bad frame left its association open");
                }
                round_trip(&good, client.addr, b"after").await;
            }
            server.signal("TERM");
            assert_eq!(server.exit().await.code(), Some(0));
        }
    })
    .await;
}

/// The mu-server with -udp: a user's datagrams go to that user's destination.
#[tokio::test]
async fn mu_server_users_carry_udp_to_their_destination() {
    bounded(async {
        let echo = udp_echo().await;
        let mut cfg = mu_config();
        cfg.udp = true;
        let server = mtt::testing::role::mu_server::MuServer::start(cfg).await.expect("mu-server");
        let pin = Verify::Pin(mtt::testing::config::parse_pin(&server.fingerprint().expect("fp")).expect("pin"));
        let token = server.token().to_string();
        let data = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let control = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (daddr, caddr) = (data.local_addr().expect("a"), control.local_addr().expect("a"));
        tokio::spawn(server.run(Listener::from(data), control, CancellationToken::new()));
        let body = format!(r#"{{"dst":"{echo}"}}"#);
        let put = format!(
            "PUT /v1/users/u HTTP/1.1\r\nHost: {caddr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut s = tokio::net::TcpStream::connect(caddr).await.expect("controller");
        tokio::io::AsyncWriteExt::write_all(&mut s, put.as_bytes()).await.expect("put");
        let mut reply = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut reply).await.expect("reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        for mux in [false, true] {
            let mut ccfg = wss_client_config(daddr, pin.clone(), "/u", T);
            if mux {
                ccfg.dial.mux = Some(MuxClientOptions { muxing: mtt::testing::transport::mux::Muxing::Yamux, max_streams: 4, idle: Duration::from_secs(10) });
            }
            let client = start_udp_client(ccfg, UdpConfig { timeout: T, max_assoc: 8, assoc_rate: mtt::testing::config::UDP_ASSOC_RATE }).await;
            let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            for n in [1usize, 1400, 65_507] {
                round_trip(&sock, client.addr, &random_bytes(n, n as u64)).await;
            }
        }
    })
    .await;
}

/// A mu-server configuration on loopback with a token and no users file.
fn mu_config() -> mtt::testing::config::MuServerConfig {
    mtt::testing::config::MuServerConfig {
        listen: mtt::testing::config::Listen::Tcp(hp("127.0.0.1:0")),
        controller: hp("127.0.0.1:0"),
        token: Some("t".into()),
        token_file: std::path::PathBuf::from("unused.token"),
        users_file: None,
        users_redis: None,
        trusted: Default::default(),
        proxy_protocol: false,
        tls: Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        fallback: None,
        early_data: true,
        mux: false,
        grpc: false,
        timeouts: mtt::testing::transport::options::DEFAULT_TIMEOUTS,
        fast_open: false,
        fwmark: None,
        drain: T,
        max_conns: 0,
        timeout: T,
        udp: false,
        udp_timeout: T,
    }
}

/// TCP bulk and UDP echo share one multiplexed session: the datagram round trip under the
/// bulk load stays near its quiet value (per-stream windows: a saturating stream does not
/// queue the datagrams' stream behind it).
#[tokio::test]
async fn udp_beside_a_saturating_tcp_stream_in_one_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let echo = udp_echo().await;
        let mut scfg = server_config(
            echo,
            Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
            T,
        );
        scfg.accept.udp = true;
        scfg.accept.mux = true;
        let server = start_server(scfg).await;
        let mut ccfg = client_config(server.addr, "127.0.0.1", pin_of(&server), T);
        ccfg.dial.mux = Some(MuxClientOptions {
            muxing: mtt::testing::transport::mux::Muxing::Yamux,
            max_streams: 8,
            idle: Duration::from_secs(10),
        });
        let client = start_udp_client(
            ccfg,
            UdpConfig {
                timeout: T,
                max_assoc: 8,
                assoc_rate: mtt::testing::config::UDP_ASSOC_RATE,
            },
        )
        .await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let mut quiet = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            round_trip(&sock, client.addr, b"ping").await;
            quiet.push(t.elapsed());
        }
        // A TCP stream of the same session pushes as fast as it can (the echo returns it).
        let mut bulk = tokio::net::TcpStream::connect(client.addr)
            .await
            .expect("connect");
        let stop = CancellationToken::new();
        let pushing = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = bulk.split();
                let chunk = vec![5u8; 256 * 1024];
                let mut sink = vec![0u8; 256 * 1024];
                let write = async {
                    while !stop.is_cancelled() {
                        if w.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                };
                let read = async { while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {} };
                tokio::select! { _ = write => {}, _ = read => {}, _ = stop.cancelled() => {} }
            })
        };
        let mut loaded = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            round_trip(&sock, client.addr, b"ping").await;
            loaded.push(t.elapsed());
        }
        stop.cancel();
        let _ = pushing.await;
        let (q, l) = (median(quiet), median(loaded));
        assert!(
            l < q + Duration::from_millis(50),
            "UDP round trip {q:?} quiet, {l:?} beside the bulk"
        );
    })
    .await;
}

/// A `-wss -udp` client at a WebSocket server without `-udp` says what a plain-TLS client
/// says, in the same words (it said "WebSocket upgrade failed: server answered HTTP 400").
#[tokio::test]
async fn a_websocket_client_is_told_the_server_carries_no_udp() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-wss"]);
        let pin = server.pin().await;
        let addr = server.listening_addr().await.to_string();
        let mut client = Proc::client(&addr, &pin, &["-wss", "-udp"]);
        let local = client.listening_addr().await;
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        sock.send_to(b"anyone?", local).await.expect("send");
        let line = client.wait_line("does not carry UDP").await;
        assert!(line.contains("run it with -udp"), "{line}");
        client.signal("KILL");
        client.exit().await;
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}

/// Clients from before the preamble named UDP tunnels and version-2 sessions in ALPN
/// (`mtt-udp`, `mtt-mux2`): servers still answer them (until 0.3, docs/tls.md), and such a
/// UDP tunnel carries datagrams both ways.
#[tokio::test]
async fn clients_of_the_alpn_form_are_still_served() {
    bounded(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = udp_echo().await.to_string();
        let old = |alpn: &'static [u8]| {
            mtt::testing::transport::tls::TlsClient::new(
                &mtt::testing::transport::options::TlsClientOptions {
                    server_name: "127.0.0.1".into(),
                    verify: Verify::Insecure,
                    hello: Default::default(),
                },
                &[alpn],
                Duration::from_secs(10),
            )
            .expect("tls")
        };
        let mut server = Proc::server(&echo, &["-udp"]);
        let addr = server.listening_addr().await;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut s = old(b"mtt-udp").connect(tcp).await.expect("handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mtt-udp"[..]));
        for d in [&b"one"[..], &[7u8; 1200][..]] {
            let mut frame = (d.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(d);
            s.write_all(&frame).await.expect("write");
            s.flush().await.expect("flush");
            let mut back = vec![0u8; frame.len()];
            tokio::time::timeout(T, s.read_exact(&mut back))
                .await
                .expect("the echo in time")
                .expect("read");
            assert_eq!(back, frame, "the datagram came back other than sent");
        }
        server.signal("KILL");
        server.exit().await;
        let mut server = Proc::server(&echo, &["-mux"]);
        let addr = server.listening_addr().await;
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let s = old(b"mtt-mux2").connect(tcp).await.expect("handshake");
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"mtt-mux2"[..]));
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}
