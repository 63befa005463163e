//! Life behind CDNs: the client's upgrade request as a CDN sees it (`-wss-host`,
//! `-wss-header`), and early data (`-wss-path …?ed=N`, as Xray sends it) captured byte for
//! byte and carried end to end through an mtt server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// What a capturing WebSocket server saw: the SNI and the request head.
struct Seen {
    sni: Option<String>,
    head: String,
    /// When the request head arrived, measured from when the client accepted its application.
    at: Instant,
}

/// A TLS server (self-signed for 127.0.0.1) that records the first request head it gets and
/// answers 404. Returns its address, its pin, and where the capture arrives.
async fn capture() -> (SocketAddr, String, tokio::sync::oneshot::Receiver<Seen>) {
    let ss = mtt::testing::certs::pem::self_signed(Some("127.0.0.1")).expect("cert");
    let pin = ss.cert_key.fingerprint();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(ss.cert_key.chain, ss.cert_key.key)
    .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("tls");
        let sni = tls.get_ref().1.server_name().map(str::to_string);
        let (head, _) = read_head(&mut tls).await;
        let at = Instant::now();
        let _ = tls
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = tx.send(Seen {
            sni,
            head: String::from_utf8_lossy(&head).into_owned(),
            at,
        });
    });
    (addr, pin, rx)
}

/// `mtt client -n tunnel.test -wss …` pinned to the capture's certificate.
fn client(server: SocketAddr, pin: &str, extra: &[&str]) -> Proc {
    let server = server.to_string();
    let mut args = vec![
        "client",
        "-b",
        "127.0.0.1:0",
        "-s",
        &server,
        "-n",
        "tunnel.test",
        "-cert-sha256",
        pin,
        "-wss",
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&mtt_bin(), &args)
}

/// `-wss-host` and `-wss-header` shape the upgrade exactly as asked; the SNI stays `-n`; the
/// rest of the request is the original client's.
#[tokio::test]
async fn the_upgrade_carries_the_host_and_headers_asked_for() {
    bounded(async {
        let (addr, pin, seen) = capture().await;
        let mut c = client(
            addr,
            &pin,
            &[
                "-wss-path",
                "/ws",
                "-wss-host",
                "cdn.example.net",
                "-wss-header",
                "X-Token: abc 123",
                "-wss-header",
                "User-Agent: Mozilla/5.0",
            ],
        );
        let local = c.listening_addr().await;
        let _app = TcpStream::connect(local).await.expect("connect");
        let seen = seen.await.expect("captured");
        assert_eq!(seen.sni.as_deref(), Some("tunnel.test"));
        let lines: Vec<&str> = seen.head.split("\r\n").collect();
        assert_eq!(lines[0], "GET /ws HTTP/1.1");
        assert_eq!(lines[1], "Host: cdn.example.net");
        assert_eq!(lines[2], "User-Agent: Mozilla/5.0");
        assert_eq!(lines[3], "Connection: Upgrade");
        assert!(lines[4].starts_with("Sec-WebSocket-Key: "));
        assert_eq!(lines[5], "Sec-WebSocket-Protocol: smux_off");
        assert_eq!(lines[6], "Sec-WebSocket-Version: 13");
        assert_eq!(lines[7], "Upgrade: websocket");
        assert_eq!(lines[8], "X-Token: abc 123");
        assert_eq!(lines[9..], ["", ""]);
    })
    .await
}

/// With `?ed=2048` a first write of up to 2048 bytes rides the upgrade, base64url without
/// padding in `Sec-WebSocket-Protocol`, and the path says so (`?ed=2048`, as given: an mtt
/// server takes early data only from requests that say so, or where its operator does).
#[tokio::test]
async fn early_data_rides_the_upgrade_request() {
    bounded(async {
        let (addr, pin, seen) = capture().await;
        let mut c = client(addr, &pin, &["-wss-path", "/ws?ed=2048"]);
        let local = c.listening_addr().await;
        let mut app = TcpStream::connect(local).await.expect("connect");
        let first: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
        app.write_all(&first).await.expect("write");
        let seen = seen.await.expect("captured");
        use base64::Engine;
        let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&first);
        assert!(
            seen.head.starts_with("GET /ws?ed=2048 HTTP/1.1\r\n"),
            "{}",
            seen.head
        );
        assert!(
            seen.head
                .contains(&format!("\r\nSec-WebSocket-Protocol: {want}\r\n")),
            "{}",
            seen.head
        );
    })
    .await
}

/// Sends an upgrade request for `path` offering the single subprotocol `protocol` to a
/// `-disable-tls` server; the status code, and what the tunnel then brings back within 2 s.
async fn upgrade_with(addr: SocketAddr, path: &str, protocol: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let (head, read) = read_head(&mut s).await;
    read.expect("response head");
    let code = String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status");
    let mut back = Vec::new();
    if code == 101 {
        // The echo of the early data comes back as one unmasked binary frame.
        let mut h = [0u8; 2];
        if tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut h))
            .await
            .is_ok()
        {
            back = vec![0u8; usize::from(h[1] & 0x7f)];
            s.read_exact(&mut back).await.expect("payload");
        }
    }
    (code, back)
}

/// Early data is taken only where someone said so: from a request whose path carries `?ed=`
/// (mtt's clients), or at a server whose own `-wss-path` has `?ed=N` (its operator says its
/// Xray clients send it unmarked); otherwise a lone base64 subprotocol (`chat` decodes) is
/// refused, never guessed into the stream; `-early-data off` refuses it all; 8,192 bytes
/// are the most.
#[tokio::test]
async fn early_data_is_taken_only_where_it_was_said() {
    bounded(async {
        use base64::Engine;
        let b64 = |d: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
        let echo = echo_server().await.to_string();
        let start = |extra: &'static [&'static str]| {
            let echo = echo.clone();
            async move {
                let mut args = vec!["-wss", "-disable-tls"];
                args.extend_from_slice(extra);
                let mut p = Proc::server(&echo, &args);
                let a = p.listening_addr().await;
                (p, a)
            }
        };
        let (_plain, plain) = start(&["-wss-path", "/ws"]).await;
        let (_xray, xray) = start(&["-wss-path", "/ws?ed=64"]).await;
        let (_off, off) = start(&["-wss-path", "/ws", "-early-data", "off"]).await;
        let hello = b64(b"hello");
        assert_eq!(upgrade_with(plain, "/ws", "chat").await.0, 400, "unmarked");
        assert_eq!(upgrade_with(plain, "/ws", &hello).await.0, 400, "unmarked");
        assert_eq!(
            upgrade_with(plain, "/ws?ed=2048", &hello).await,
            (101, b"hello".to_vec())
        );
        assert_eq!(
            upgrade_with(xray, "/ws", &hello).await,
            (101, b"hello".to_vec())
        );
        assert_eq!(
            upgrade_with(xray, "/ws", &b64(&[1; 65])).await.0,
            400,
            "over ?ed=64"
        );
        assert_eq!(
            upgrade_with(off, "/ws?ed=2048", &hello).await.0,
            400,
            "-early-data off"
        );
        // Not base64 at all: an unknown subprotocol, a plain stream as before.
        assert_eq!(upgrade_with(plain, "/ws", "v10.stomp").await.0, 101);
        assert_eq!(
            upgrade_with(plain, "/ws?ed=9000", &b64(&[2; 8193])).await.0,
            400,
            "over 8192"
        );
        let (code, back) = upgrade_with(plain, "/ws?ed=8192", &b64(&[3; 100])).await;
        assert_eq!((code, back.len()), (101, 100));
    })
    .await
}

/// A client with early data that writes nothing is upgraded after the bounded wait (100 ms),
/// with its ordinary subprotocol.
#[tokio::test]
async fn a_silent_application_is_upgraded_after_the_bounded_wait() {
    bounded(async {
        let (addr, pin, seen) = capture().await;
        let mut c = client(addr, &pin, &["-wss-path", "/ws?ed=512"]);
        let local = c.listening_addr().await;
        let start = Instant::now();
        let _app = TcpStream::connect(local).await.expect("connect");
        let seen = seen.await.expect("captured");
        let waited = seen.at - start;
        assert!(
            seen.head
                .contains("\r\nSec-WebSocket-Protocol: smux_off\r\n"),
            "{}",
            seen.head
        );
        assert!(
            waited >= Duration::from_millis(90),
            "upgraded after {waited:?}"
        );
        assert!(waited < Duration::from_secs(3), "upgraded after {waited:?}");
    })
    .await
}

/// Early data end to end through an mtt server: a destination that answers only once it has
/// its first bytes gets them at once; a first write larger than N follows the upgrade
/// whole; a server-speaks-first destination is heard by a client that writes nothing.
#[tokio::test]
async fn early_data_is_carried_end_to_end() {
    bounded(async {
        let echo = echo_server().await;
        let mut server = Proc::server(&echo.to_string(), &["-wss", "-wss-path", "/ws"]);
        let pin = server.pin().await;
        let addr = server.listening_addr().await.to_string();
        let mut c = Proc::client(&addr, &pin, &["-wss", "-wss-path", "/ws?ed=1024"]);
        let local = c.listening_addr().await;
        // Small first write (rides the upgrade), then more, hashed both ways.
        let mut s = TcpStream::connect(local).await.expect("connect");
        let first = random_bytes(700, 3);
        s.write_all(&first).await.expect("write");
        let mut back = vec![0u8; first.len()];
        s.read_exact(&mut back)
            .await
            .expect("echo of the early data");
        assert_eq!(back, first);
        echo_over(s, &random_bytes(1 << 20, 4)).await;
        // A first write larger than N (64 KiB chunks) is not truncated.
        echo_roundtrip(local, &random_bytes(300_000, 5)).await;

        // Server speaks first: a banner reaches a client that never writes.
        let banner = serve_dest(|mut s| async move { s.write_all(b"220 ready\r\n").await }).await;
        let mut server2 = Proc::server(&banner.to_string(), &["-wss"]);
        let pin2 = server2.pin().await;
        let addr2 = server2.listening_addr().await.to_string();
        let mut c2 = Proc::client(&addr2, &pin2, &["-wss", "-wss-path", "/?ed=2048"]);
        let local2 = c2.listening_addr().await;
        let mut s2 = TcpStream::connect(local2).await.expect("connect");
        let mut got = [0u8; 11];
        s2.read_exact(&mut got).await.expect("banner");
        assert_eq!(&got, b"220 ready\r\n");
    })
    .await
}

/// A destination that expects a PROXY v2 header (parsed with the proxy-header crate), reports
/// the client address and user path it names, then echoes.
async fn proxy_dest() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(SocketAddr, Option<String>)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let addr = serve_dest(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let (src, path, used) = loop {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
                match proxy_header::ProxyHeader::parse(&buf, Default::default()) {
                    Ok((h, used)) => {
                        let src = h.proxied_address().expect("proxied").source;
                        let path = h.tlvs().find_map(|t| match t {
                            Ok(proxy_header::Tlv::Custom(0xE0, v)) => {
                                Some(String::from_utf8_lossy(&v).into_owned())
                            }
                            _ => None,
                        });
                        break (src, path, used);
                    }
                    Err(proxy_header::Error::BufferTooShort) => continue,
                    Err(e) => panic!("the destination got no PROXY v2 header: {e}"),
                }
            };
            let _ = tx.send((src, path));
            s.write_all(&buf[used..]).await?;
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
    })
    .await;
    (addr, rx)
}

/// The loopback address a trusted proxy connects from in these tests (clients use 127.0.0.1).
const PROXY_IP: &str = "127.0.0.3";

/// nginx in front (TLS ended there, `X-Forwarded-For` appended, connecting from 127.0.0.3):
/// a server trusting 127.0.0.3 logs the client's own address and hands it to the destination
/// in a PROXY v2 header; one that does not trust it sees nginx; a client's forged
/// `X-Forwarded-For` is never believed, nor its own `Forwarded` or `X-Real-IP` (nginx passes
/// them on untouched: only the header it writes is read).
#[tokio::test]
async fn forwarding_headers_of_a_trusted_proxy_name_the_client() {
    bounded(async {
        let (dest, mut seen) = proxy_dest().await;
        let dest_s = dest.to_string();
        let start = |trust: &'static str| {
            let dest_s = dest_s.clone();
            async move {
                let mut s = Proc::spawn(
                    &mtt_bin(),
                    &[
                        "server", "-b", "127.0.0.1:0", "-d", &dest_s, "-wss", "-disable-tls",
                        "-trusted-proxy", trust, "-proxy-protocol", "-verbose",
                    ],
                );
                let addr = s.listening_addr().await;
                (s, addr)
            }
        };
        let (mut trusting, trusting_addr) = start(PROXY_IP).await;
        let (_other, other_addr) = start("127.0.0.9/32").await;
        let (_dir, cert, key, pin) = self_signed_files("127.0.0.1");
        let port = free_port();
        let location = |path: &str, to: SocketAddr| {
            format!(
                "location {path} {{ proxy_pass http://{to}/; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_bind {PROXY_IP}; }}"
            )
        };
        let _nginx = Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; {} {} }}",
                path_str(&cert),
                path_str(&key),
                location("/trusting", trusting_addr),
                location("/other", other_addr),
            ),
            port,
        )
        .await;
        let nginx = format!("127.0.0.1:{port}");
        for (path, want, forged) in [
            ("/trusting", "127.0.0.1", None),
            ("/other", PROXY_IP, None),
            ("/trusting", "127.0.0.1", Some("X-Forwarded-For: 198.51.100.1")),
            ("/trusting", "127.0.0.1", Some("Forwarded: for=6.6.6.6")),
            ("/trusting", "127.0.0.1", Some("X-Real-IP: 6.6.6.7")),
        ] {
            let mut extra = vec!["-wss", "-wss-path", path];
            if let Some(h) = forged {
                extra.extend_from_slice(&["-wss-header", h]);
            }
            let mut c = Proc::client(&nginx, &pin, &extra);
            let local = c.listening_addr().await;
            echo_roundtrip(local, &random_bytes(100_000, 7)).await;
            let (src, path_tlv) = seen.recv().await.expect("a header");
            assert_eq!(src.ip().to_string(), want, "{path} forged {forged:?}");
            assert_eq!(path_tlv, None, "the server sends no user path");
        }
        let line = trusting.wait_line("127.0.0.1 via 127.0.0.3:").await;
        assert!(line.contains("accepted") || line.contains("relaying"), "{line}");
    })
    .await
}

/// haproxy in front in TCP mode with `send-proxy-v2`: a server with
/// `-accept-proxy-protocol` trusting it takes the client's address and port from the header
/// (TLS follows it); a direct client, not trusted, is served without one.
#[tokio::test]
async fn a_proxy_header_from_a_trusted_proxy_names_the_client() {
    bounded(async {
        let (dest, mut seen) = proxy_dest().await;
        let port = free_port();
        let mut server = Proc::server(
            &dest.to_string(),
            &[
                "-trusted-proxy",
                PROXY_IP,
                "-accept-proxy-protocol",
                "-proxy-protocol",
                "-b",
                &format!("127.0.0.1:{port}"),
            ],
        );
        let pin = server.pin().await;
        server.listening_addr().await;
        let front = free_port();
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 127.0.0.1:{front}\n  default_backend b\nbackend b\n  server s 127.0.0.1:{port} send-proxy-v2 source {PROXY_IP}\n"
            ),
        )
        .expect("write haproxy.cfg");
        let haproxy = Proc::spawn(Path::new("haproxy"), &["-db", "-f", &path_str(&cfg)]);
        wait_listening(format!("127.0.0.1:{front}").parse().expect("addr")).await;

        let mut c = Proc::client(&format!("127.0.0.1:{front}"), &pin, &[]);
        let local = c.listening_addr().await;
        let app = TcpStream::connect(local).await.expect("connect");
        let app_port = app.local_addr().expect("addr").port();
        echo_over(app, &random_bytes(200_000, 8)).await;
        let (src, _) = seen.recv().await.expect("header");
        assert_eq!(src.ip().to_string(), "127.0.0.1");
        assert_ne!(src.port(), 0, "the PROXY header carries the client's port");
        assert_ne!(src.port(), app_port, "the mtt client's port, not the application's");

        let mut direct = Proc::client(&format!("127.0.0.1:{port}"), &pin, &[]);
        let local = direct.listening_addr().await;
        echo_roundtrip(local, &random_bytes(50_000, 9)).await;
        let (src, _) = seen.recv().await.expect("header");
        assert_eq!(src.ip().to_string(), "127.0.0.1");
        haproxy.signal("TERM");
    })
    .await
}

/// The mu-server behind nginx (trusted): its PROXY v2 header to a user's destination names
/// the real client and the user's path (TLV 0xE0), and its per-user view lists the real
/// client of the live tunnel, not the proxy.
#[tokio::test]
async fn the_mu_server_names_the_user_and_its_real_client() {
    bounded(async {
        let (dest, mut seen) = proxy_dest().await;
        let dir = tempfile::tempdir().expect("tmp");
        let users = dir.path().join("users.json");
        std::fs::write(&users, format!(r#"[{{"path":"/alice","dst":"{dest}"}}]"#)).expect("users");
        let mut mu = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server", "-b", "127.0.0.1:0", "-c", "127.0.0.1:0", "-c-token", "t",
                "-disable-tls", "-users-file", &path_str(&users), "-proxy-protocol",
                "-trusted-proxy", PROXY_IP,
            ],
        );
        let data = mu.listening_addr().await;
        let control = mu.addr_after("controller on ").await;
        let (_certs, cert, key, pin) = self_signed_files("127.0.0.1");
        let port = free_port();
        let _nginx = Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; location / {{ proxy_pass http://{data}; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_bind {PROXY_IP}; }} }}",
                path_str(&cert),
                path_str(&key),
            ),
            port,
        )
        .await;
        let mut c = Proc::client(
            &format!("127.0.0.1:{port}"),
            &pin,
            &["-wss", "-wss-path", "/alice"],
        );
        let local = c.listening_addr().await;
        let mut live = TcpStream::connect(local).await.expect("connect");
        let mut b = [0u8; 4];
        live.write_all(b"ping").await.expect("write");
        live.read_exact(&mut b).await.expect("echo");
        let (src, path) = seen.recv().await.expect("header");
        assert_eq!(src.ip().to_string(), "127.0.0.1");
        assert_eq!(path.as_deref(), Some("/alice"));
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "-H", "Authorization: Bearer t"])
            .arg(format!("http://{control}/v1/users"))
            .bounded_output();
        let list: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("users JSON");
        assert_eq!(list[0]["clients"], serde_json::json!(["127.0.0.1"]), "{list}");
        echo_over(live, &random_bytes(100_000, 10)).await;
    })
    .await
}

/// nginx in front closes WebSocket connections quiet for 2 s (`proxy_read_timeout`): tunnels
/// and a multiplexed session silent for 5 s survive with `-ping 500ms` on both ends, and are
/// closed with `-ping 0` (which is what proves the pings did it).
#[tokio::test]
async fn pings_keep_quiet_tunnels_alive_through_a_proxy_idle_timer() {
    bounded(async {
        let echo = echo_server().await;
        let (_dir, cert, key, pin) = self_signed_files("127.0.0.1");
        let start_server = |ping: &'static str| {
            let echo = echo.to_string();
            async move {
                let mut s = Proc::server(&echo, &["-wss", "-disable-tls", "-ping", ping]);
                let a = s.listening_addr().await;
                (s, a)
            }
        };
        let (_with, with_addr) = start_server("500ms").await;
        let (_without, without_addr) = start_server("0").await;
        let port = free_port();
        let location = |path: &str, to: SocketAddr| {
            format!(
                "location {path} {{ proxy_pass http://{to}/; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection upgrade; proxy_read_timeout 2s; proxy_send_timeout 2s; }}"
            )
        };
        let _nginx = Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; {} {} }}",
                path_str(&cert),
                path_str(&key),
                location("/with", with_addr),
                location("/without", without_addr),
            ),
            port,
        )
        .await;
        let nginx = format!("127.0.0.1:{port}");
        let mut clients = Vec::new();
        for (path, ping, mux) in [
            ("/with", "500ms", false),
            ("/with", "500ms", true),
            ("/without", "0", false),
            ("/without", "0", true),
        ] {
            let mut extra = vec!["-wss", "-wss-path", path, "-ping", ping];
            if mux {
                extra.push("-mux");
            }
            let mut c = Proc::client(&nginx, &pin, &extra);
            let local = c.listening_addr().await;
            clients.push((c, local, ping != "0", mux));
        }
        let checks = clients.iter().map(|(_, local, pinged, mux)| async move {
            let survived = survives_silence(*local, Duration::from_secs(5)).await;
            assert_eq!(survived, *pinged, "pinged={pinged} mux={mux}");
        });
        futures_util::future::join_all(checks).await;
    })
    .await
}

/// A TCP relay the test can freeze: everything on the connections open at that moment stops
/// moving and nothing is closed (a peer whose packets are all dropped); later connections go
/// through.
struct Freezer {
    addr: SocketAddr,
    epoch: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
}

impl Freezer {
    async fn to(target: SocketAddr) -> Freezer {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let epoch = Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let e = epoch.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let f = e.lock().expect("lock").clone();
                tokio::spawn(async move {
                    let Ok(mut out) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = f.cancelled() => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Freezer { addr, epoch }
    }

    fn freeze(&self) {
        let mut e = self.epoch.lock().expect("lock");
        e.cancel();
        *e = tokio_util::sync::CancellationToken::new();
    }
}

/// A server that vanishes (its packets dropped: the relay to it freezes) is noticed by a
/// client with `-ping 500ms` within about two intervals: the tunnel is closed; a multiplexed
/// client opens its next stream on a fresh session.
#[tokio::test]
async fn a_vanished_server_is_noticed_within_two_pings() {
    bounded(async {
        let echo = echo_server().await;
        let mut server = Proc::server(&echo.to_string(), &["-wss", "-ping", "0"]);
        let pin = server.pin().await;
        let addr = server.listening_addr().await;
        let relay = Freezer::to(addr).await;
        let mut c = Proc::client(
            &relay.addr.to_string(),
            &pin,
            &["-wss", "-ping", "500ms", "-verbose"],
        );
        let local = c.listening_addr().await;
        let mut s = TcpStream::connect(local).await.expect("connect");
        let mut b = [0u8; 2];
        s.write_all(b"hi").await.expect("write");
        s.read_exact(&mut b).await.expect("echo");
        relay.freeze();
        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), drain(&mut s)).await;
        let took = start.elapsed();
        assert!(
            ended.is_ok(),
            "the tunnel to a vanished server was not closed"
        );
        assert!(took < Duration::from_secs(3), "noticed after {took:?}");
        c.wait_line("did not answer WebSocket pings").await;

        // Multiplexed: the session whose server vanished is dropped; the next stream goes to
        // a fresh session (the server is reachable again through new connections).
        let mut m = Proc::client(
            &relay.addr.to_string(),
            &pin,
            &["-wss", "-mux", "-ping", "500ms", "-verbose"],
        );
        let local = m.listening_addr().await;
        echo_roundtrip(local, b"first").await;
        relay.freeze();
        m.wait_line("did not answer WebSocket pings").await;
        echo_roundtrip(local, &random_bytes(100_000, 11)).await;
    })
    .await
}

/// Plain TLS multiplexed sessions keep alive with yamux-level keepalive frames: a quiet
/// tunnel outlives many intervals (also toward a server that sends none, as older mtt
/// servers); a server that vanishes is noticed within about two intervals and the next
/// stream goes to a fresh session.
#[tokio::test]
async fn plain_multiplexed_sessions_keep_alive_and_notice_a_vanished_server() {
    bounded(async {
        let echo = echo_server().await;
        for server_ping in ["300ms", "0"] {
            let mut server = Proc::server(&echo.to_string(), &["-mux", "-ping", server_ping]);
            let pin = server.pin().await;
            let addr = server.listening_addr().await;
            let relay = Freezer::to(addr).await;
            let mut c = Proc::client(
                &relay.addr.to_string(),
                &pin,
                &["-mux", "-ping", "300ms", "-verbose"],
            );
            let local = c.listening_addr().await;
            assert!(survives_silence(local, Duration::from_millis(1500)).await);
            if server_ping == "0" {
                continue;
            }
            relay.freeze();
            let start = Instant::now();
            c.wait_line("not even keepalives").await;
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{:?}",
                start.elapsed()
            );
            echo_roundtrip(local, &random_bytes(100_000, 12)).await;
        }
    })
    .await
}
