//! What goes on the wire and how ends that misbehave are handled: SNI and ALPN in the
//! ClientHello, IPv6 and host-name addresses, and handshakes that never finish.

use std::time::{Duration, Instant};

use crate::common::*;
use mtt::testing::addr::HostPort;
use mtt::testing::certs::CertSource;
use mtt::testing::transport::options::Verify;
use mtt::testing::transport::{Dialer, Listener, tcp};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(30);

/// Accepts one TLS connection far enough to read its ClientHello; returns (SNI, ALPN list).
async fn client_hello_of(
    cfg: mtt::testing::config::ClientConfig,
    l: TcpListener,
) -> (Option<String>, Vec<Vec<u8>>) {
    let dialer = Dialer::new(&cfg.dial).expect("dialer");
    let dial = tokio::spawn(async move {
        dialer
            .dial(mtt::testing::transport::datagram::Kind::Stream)
            .await
            .is_ok()
    });
    let (tcp, _) = l.accept().await.expect("accept");
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .expect("client hello");
    let hello = start.client_hello();
    let sni = hello.server_name().map(str::to_string);
    let alpn = hello
        .alpn()
        .map(|a| a.map(<[u8]>::to_vec).collect())
        .unwrap_or_default();
    drop(start);
    assert!(
        !dial.await.expect("dial task"),
        "handshake cannot succeed against a dropped server"
    );
    (sni, alpn)
}

#[tokio::test]
async fn sni_is_the_server_name_and_absent_for_ip_literals_alpn_a_browsers_or_none() {
    bounded(async {
        for (s_host, n, want) in [
            ("localhost", None, Some("localhost")),
            ("localhost", Some("tunnel.example"), Some("tunnel.example")),
            ("127.0.0.1", None, None),
            ("localhost", Some("127.0.0.1"), None),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = l.local_addr().expect("addr").port();
            let mut cfg = client_config(l.local_addr().expect("addr"), "x", Verify::Insecure, T);
            cfg.dial.server =
                HostPort::parse("s", &format!("{s_host}:{port}"), false).expect("addr");
            cfg.dial.tls.server_name = n.unwrap_or(s_host).to_string();
            let (sni, alpn) = client_hello_of(cfg.clone(), l).await;
            assert_eq!(sni.as_deref(), want, "-s {s_host} -n {n:?}");
            assert_eq!(
                alpn,
                [b"h2".to_vec(), b"http/1.1".to_vec()],
                "plain TLS offers a browser's ALPN"
            );
            // -alpn none: none, as the original.
            cfg.dial.tls.hello.alpn = Some(Vec::new());
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            cfg.dial.server = HostPort::parse(
                "s",
                &format!("{s_host}:{}", l.local_addr().expect("addr").port()),
                false,
            )
            .expect("addr");
            let (_, alpn) = client_hello_of(cfg, l).await;
            assert!(alpn.is_empty(), "-alpn none still offers {alpn:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn ipv6_listen_and_dial_and_host_names_resolved_at_dial_time() {
    bounded(async {
        let echo = echo_server().await;
        // Server on [::1].
        let server = mtt::testing::role::server::Server::new(server_config(
            echo,
            Some(CertSource::SelfSigned(Some("::1".into()))),
            T,
        ))
        .expect("server");
        let pin = mtt::testing::config::parse_pin(&server.fingerprint().expect("fp")).expect("pin");
        let l6 = tcp::bind_tcp_with(&HostPort::parse("b", "[::1]:0", true).expect("addr"), false)
            .await
            .expect("bind [::1]");
        let server_port = l6.local_addr().expect("addr").port();
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(server.run(Listener::from(l6), stop.clone()));
        // Client on [::1] dialling [::1]:port.
        let mut cfg = client_config(
            "127.0.0.1:1".parse().expect("a"),
            "::1",
            Verify::Pin(pin),
            T,
        );
        cfg.dial.server =
            HostPort::parse("s", &format!("[::1]:{server_port}"), false).expect("addr");
        let client = mtt::testing::role::client::Client::new(cfg.clone()).expect("client");
        let cl = tcp::bind_tcp_with(&HostPort::parse("b", "[::1]:0", true).expect("addr"), false)
            .await
            .expect("bind");
        let caddr = cl.local_addr().expect("addr");
        tokio::spawn(client.run(Listener::from(cl), stop.clone()));
        assert!(caddr.is_ipv6());
        echo_roundtrip(caddr, &random_bytes(1 << 20, 6)).await;
        // A host name is resolved when dialled: "localhost" to a server on 127.0.0.1.
        let v4 = start_server(server_config(echo, Some(CertSource::SelfSigned(None)), T)).await;
        let mut by_name = client_config(v4.addr, "localhost", pin_of(&v4), T);
        by_name.dial.server =
            HostPort::parse("s", &format!("localhost:{}", v4.addr.port()), false).expect("addr");
        let client = start_client(by_name).await;
        echo_roundtrip(client.addr, &random_bytes(1 << 20, 7)).await;
        // An empty listen host serves both families.
        let any = tcp::bind_tcp_with(&HostPort::parse("b", ":0", true).expect("addr"), false)
            .await
            .expect("bind all");
        let port = any.local_addr().expect("addr").port();
        let (a, b) = tokio::join!(any.accept(), async {
            (
                TcpStream::connect(("127.0.0.1", port)).await.expect("v4"),
                TcpStream::connect(("::1", port)).await.expect("v6"),
            )
        });
        a.expect("accept");
        drop(b);
    })
    .await;
}

/// The handshake limit of these tests: short, so that waiting for it costs little; the
/// default (10 s) is the same code with another value.
const HANDSHAKE: Duration = Duration::from_millis(400);

#[tokio::test]
async fn handshakes_that_never_finish_are_cut_at_the_handshake_timeout() {
    bounded(async {
        let echo = echo_server().await;
        let mut scfg = server_config(
            echo,
            Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
            T,
        );
        scfg.accept.timeouts.handshake = HANDSHAKE;
        let server = start_server(scfg).await;
        // A peer that connects to the server and never sends a ClientHello.
        let silent_client = async {
            let mut s = TcpStream::connect(server.addr).await.expect("connect");
            let start = Instant::now();
            drain(&mut s).await;
            start.elapsed()
        };
        // A "server" that accepts TCP and never answers the ClientHello.
        let mute = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut ccfg = client_config(mute.local_addr().expect("a"), "x", Verify::Insecure, T);
        ccfg.dial.timeouts.handshake = HANDSHAKE;
        let client = start_client(ccfg).await;
        let stalled_server = async {
            let mut app = TcpStream::connect(client.addr).await.expect("connect");
            let (_held, _) = mute.accept().await.expect("accept");
            let start = Instant::now();
            drain(&mut app).await;
            start.elapsed()
        };
        let (a, b) = tokio::join!(silent_client, stalled_server);
        for (who, took) in [("server", a), ("client", b)] {
            assert!(took >= HANDSHAKE, "{who} gave up too early: {took:?}");
            assert!(
                took < HANDSHAKE + Duration::from_secs(2),
                "{who} waited too long: {took:?}"
            );
        }
    })
    .await;
}

/// Tunnel sockets find dead peers: keepalive and TCP_USER_TIMEOUT, read back from the socket.
#[tokio::test]
async fn tunnel_sockets_have_nodelay_keepalive_and_user_timeout() {
    bounded(async {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = HostPort::parse("s", &l.local_addr().expect("a").to_string(), false).expect("a");
        // Made a Listener (tuned) before anything connects: on Linux a connection takes
        // the listener's options when it arrives, not when it is accepted.
        let l = Listener::from(l);
        let (dialled, accepted) = tokio::join!(tcp::connect(&addr, T), async {
            l.accept().await.expect("accept")
        });
        let dialled = dialled.expect("connect");
        let tokio_util::either::Either::Left(accepted) = accepted.0 else {
            panic!("tcp")
        };
        for s in [&dialled, &accepted] {
            let sock = socket2::SockRef::from(s);
            assert!(s.nodelay().expect("nodelay"));
            assert!(sock.keepalive().expect("keepalive"));
            assert_eq!(
                sock.tcp_keepalive_time().expect("time"),
                Duration::from_secs(15)
            );
            assert_eq!(
                sock.tcp_keepalive_interval().expect("interval"),
                Duration::from_secs(5)
            );
            assert_eq!(sock.tcp_keepalive_retries().expect("retries"), 3);
            assert_eq!(
                sock.tcp_user_timeout().expect("user timeout"),
                Some(Duration::from_secs(30))
            );
        }
    })
    .await;
}

/// `-fast-open`: TCP_FASTOPEN on listeners, TCP_FASTOPEN_CONNECT on dials, read back from
/// the sockets, and a tunnel through both still carries data.
#[tokio::test]
async fn fast_open_sets_the_socket_options_and_tunnels_still_work() {
    bounded(async {
        let l = tcp::bind_tcp_with(&HostPort::parse("b", "127.0.0.1:0", true).expect("a"), true)
            .await
            .expect("bind");
        assert_eq!(
            mtt::testing::sys::tcp_fastopen_listener(&l).expect("getsockopt"),
            256
        );
        let plain = tcp::bind_tcp_with(
            &HostPort::parse("b", "127.0.0.1:0", true).expect("a"),
            false,
        )
        .await
        .expect("bind");
        assert_eq!(
            mtt::testing::sys::tcp_fastopen_listener(&plain).expect("getsockopt"),
            0
        );
        let addr = HostPort::parse("s", &l.local_addr().expect("a").to_string(), false).expect("a");
        let opts = tcp::DialOpts {
            fast_open: true,
            dns: None,
            protect: None,
            mark: None,
        };
        let (dialled, _) = tokio::join!(tcp::connect_with(&addr, T, &opts), l.accept());
        let dialled = dialled.expect("connect");
        let marked = tcp::DialOpts {
            mark: Some(0x5a),
            ..opts.clone()
        };
        let (m, _) = tokio::join!(tcp::connect_with(&addr, T, &marked), l.accept());
        // Whether this process may mark sockets at all (CAP_NET_ADMIN).
        let may = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket")
            .set_mark(1)
            .is_ok();
        if may {
            let m = m.expect("a marked dial");
            assert_eq!(socket2::SockRef::from(&m).mark().expect("SO_MARK"), 0x5a);
        } else {
            let e = m.expect_err("marks need CAP_NET_ADMIN").to_string();
            assert!(e.contains("CAP_NET_ADMIN"), "{e}");
        }
        let on =
            nix::sys::socket::getsockopt(&dialled, nix::sys::socket::sockopt::TcpFastOpenConnect)
                .expect("getsockopt");
        assert!(on, "TCP_FASTOPEN_CONNECT on the dialled socket");

        // A tunnel with -fast-open on both ends.
        let echo = echo_server().await;
        let mut scfg = server_config(echo, Some(CertSource::SelfSigned(None)), T);
        scfg.fast_open = true;
        let server = mtt::testing::role::server::Server::new(scfg).expect("server");
        let pin = mtt::testing::config::parse_pin(&server.fingerprint().expect("fp")).expect("pin");
        let sl = tcp::bind_tcp_with(&HostPort::parse("b", "127.0.0.1:0", true).expect("a"), true)
            .await
            .expect("bind");
        let saddr = sl.local_addr().expect("a");
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(server.run(Listener::from(sl), stop.clone()));
        let mut ccfg = client_config(saddr, "x", Verify::Pin(pin), T);
        ccfg.dial.fast_open = true;
        let client = start_client(ccfg).await;
        echo_roundtrip(client.addr, &random_bytes(1 << 20, 8)).await;
    })
    .await;
}

/// `-fallback-dns`: the server's host name is resolved through the given DNS server (dnsmasq
/// on loopback, from Debian), not the system's, which does not know the name.
#[tokio::test]
async fn fallback_dns_resolves_through_the_given_server() {
    bounded(async {
        let (mut dnsmasq, dns_port) = dnsmasq(&["--address=/tunnel.mtt-test/127.0.0.1"]).await;
        let echo = echo_server().await;
        let server = start_server(server_config(echo, Some(CertSource::SelfSigned(None)), T)).await;
        let by_name = |dns: Option<std::net::SocketAddr>| {
            let mut c = client_config(server.addr, "x", pin_of(&server), T);
            c.dial.server = HostPort::parse(
                "s",
                &format!("tunnel.mtt-test:{}", server.addr.port()),
                false,
            )
            .expect("addr");
            c.dial.fallback_dns = dns;
            c
        };
        let client = start_client(by_name(Some(([127, 0, 0, 1], dns_port).into()))).await;
        echo_roundtrip(client.addr, &random_bytes(256 * 1024, 3)).await;
        // Without it the system resolver does not know the name: the connection just closes.
        let plain = start_client(by_name(None)).await;
        closed_promptly(plain.addr).await;
        // The server resolves its destination (-d) by name the same way.
        let mut scfg = server_config(echo, Some(CertSource::SelfSigned(None)), T);
        scfg.dest =
            HostPort::parse("d", &format!("tunnel.mtt-test:{}", echo.port()), false).expect("addr");
        scfg.fallback_dns = Some(([127, 0, 0, 1], dns_port).into());
        let named = start_server(scfg).await;
        let client = start_client(client_config(named.addr, "x", pin_of(&named), T)).await;
        echo_roundtrip(client.addr, &random_bytes(128 * 1024, 4)).await;
        dnsmasq.start_kill().expect("kill");
    })
    .await;
}

/// An IPv4 client of a dual-stack listener is shown as the IPv4 address it is, not as
/// `::ffff:127.0.0.1`.
#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_shown_as_ipv4() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                ":0",
                "-d",
                &echo,
                "-n",
                "127.0.0.1",
                "-verbose",
            ],
        );
        let port = server.listening_addr().await.port();
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let line = server.wait_line(": accepted").await;
        assert!(
            line.contains(" 127.0.0.1:") && !line.contains("::ffff:"),
            "{line}"
        );
        drop(s);
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}
