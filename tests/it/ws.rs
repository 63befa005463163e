//! WebSocket mode end to end on real loopback sockets: hashed tunnels, half-close and idle
//! timeout, path rules, the byte-exact upgrade request, subprotocols, frames from a raw peer,
//! the 404 page and `-fallback`, and nginx in front both ways.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::transport::options::PathMatch;
use mtt::testing::transport::options::{TlsClientOptions, Verify, WsServerOptions};
use mtt::testing::transport::tls::TlsClient;
use mtt::testing::transport::ws::{self, Role, encode_header, parse_header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn wss_many_parallel_connections_hashed_both_ways() {
    bounded(async {
        let echo = echo_server().await;
        let (_server, client) = wss_tunnel_to(echo, T, "/tunnel", "/tunnel").await;
        let mut tasks = Vec::new();
        for i in 0..24u64 {
            let data = random_bytes(2 * 1024 * 1024 + i as usize * 7919, 300 + i);
            tasks.push(tokio::spawn(async move {
                echo_roundtrip(client.addr, &data).await
            }));
        }
        for t in tasks {
            t.await.expect("transfer");
        }
    })
    .await;
}

#[tokio::test]
async fn wss_reply_after_half_close_arrives() {
    bounded(async {
        let dest = reply_after_eof_server().await;
        let (_server, client) = wss_tunnel_to(dest, T, "/", "/").await;
        let data = random_bytes(3 * 1024 * 1024, 12);
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        s.write_all(&data).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.expect("reply");
        assert_eq!(reply, sha256(&data));
    })
    .await;
}

#[tokio::test]
async fn wss_idle_timeout_counts_both_directions() {
    bounded(async {
        let dest = paced_server(10, Duration::from_millis(100)).await;
        let (_s1, client) = wss_tunnel_to(dest, Duration::from_millis(350), "/", "/").await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        let (n, eof) = drain(&mut s).await;
        assert!(eof && n == 10 * 1024, "one-way download cut: {n} bytes");

        let echo = echo_server().await;
        let idle = Duration::from_millis(300);
        let (_s2, client) = wss_tunnel_to(echo, idle, "/", "/").await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("echo");
        let start = Instant::now();
        drain(&mut s).await;
        let waited = start.elapsed();
        assert!(waited >= idle && waited < idle * 10, "{waited:?}");
    })
    .await;
}

#[tokio::test]
async fn paths_with_and_without_leading_slash_are_equivalent() {
    bounded(async {
        let echo = echo_server().await;
        for (server_path, client_path) in
            [("right", "/right"), ("/right", "right"), ("right", "right")]
        {
            let (_s, client) = wss_tunnel_to(echo, T, server_path, client_path).await;
            echo_roundtrip(client.addr, &random_bytes(64 * 1024, 1)).await;
        }
        // A wrong path never reaches the destination: the client's connection just closes.
        let (_s, client) = wss_tunnel_to(echo, T, "/right", "/wrong").await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        let start = Instant::now();
        assert_eq!(drain(&mut s).await.0, 0);
        assert!(start.elapsed() < Duration::from_secs(2));
    })
    .await;
}

/// A TLS connection to an mtt server that accepts anything (the tests inspect the server).
async fn tls_to(addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = TlsClient::new(
        &TlsClientOptions {
            server_name: "127.0.0.1".into(),
            verify: Verify::Insecure,
            hello: Default::default(),
        },
        &[b"http/1.1"],
        std::time::Duration::from_secs(10),
    )
    .expect("tls");
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tls.connect(tcp).await.expect("handshake")
}

/// Sends `request` and reads the response head (and whatever followed it in the same reads).
async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    request: &str,
) -> (u16, String, Vec<u8>) {
    s.write_all(request.as_bytes())
        .await
        .expect("write request");
    s.flush().await.expect("flush");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.expect("read response");
        assert!(
            n > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(&buf).expect("valid HTTP") {
            let head = String::from_utf8_lossy(&buf[..len]).into_owned();
            return (resp.code.unwrap_or(0), head, buf[len..].to_vec());
        }
    }
}

fn upgrade_with(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn subprotocols_versions_and_methods() {
    bounded(async {
        let echo = echo_server().await;
        let (server, _client) = wss_tunnel_to(echo, T, "/t", "/t").await;
        let cases = [
            (
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: smux_on\r\n",
                101,
                "Sec-Websocket-Protocol: smux_on",
            ),
            (
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: smux_off\r\n",
                101,
                "Sec-Websocket-Protocol: smux_off",
            ),
            (
                "Sec-WebSocket-Version: 13\r\n",
                101,
                "Sec-Websocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            ),
            (
                "Sec-WebSocket-Version: 8\r\n",
                426,
                "Sec-Websocket-Version: 13",
            ),
        ];
        for (extra, want, needle) in cases {
            let mut s = tls_to(server.addr).await;
            let (code, head, rest) = http_exchange(&mut s, &upgrade_with("/t", extra)).await;
            assert_eq!(code, want, "{extra}: {head}");
            let text = format!("{head}{}", String::from_utf8_lossy(&rest));
            assert!(
                text.contains(needle),
                "{extra}: expected {needle} in {text}"
            );
        }
        let mut s = tls_to(server.addr).await;
        let post = upgrade_with("/t", "Sec-WebSocket-Version: 13\r\n").replacen("GET", "POST", 1);
        assert_eq!(http_exchange(&mut s, &post).await.0, 405);
    })
    .await;
}

#[tokio::test]
async fn not_tunnel_requests_get_a_plain_404_and_the_server_keeps_serving() {
    bounded(async {
        let echo = echo_server().await;
        let (server, client) = wss_tunnel_to(echo, T, "/t", "/t").await;
        let url = |p: &str| format!("https://127.0.0.1:{}{p}", server.addr.port());
        for path in ["/", "/t", "/wrong", "/favicon.ico"] {
            // curl as a browser would: ALPN offers h2 and http/1.1, no upgrade headers.
            let out = tokio::process::Command::new("curl")
                .args([
                    "-sk",
                    "-m",
                    "10",
                    "-w",
                    "\n%{http_code} %{http_version}",
                    &url(path),
                ])
                .bounded_output()
                .await;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.ends_with("\n404 1.1"), "{path}: {text}");
            assert!(text.contains("<h1>Not Found</h1>"), "{path}: {text}");
            assert!(!text.contains("404 page not found"), "no Go-style body");
        }
        // Keep-alive before an upgrade: a 404 then a tunnel on the same connection.
        let mut s = tls_to(server.addr).await;
        let (code, _, rest) = http_exchange(&mut s, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert_eq!(code, 404);
        // Read the rest of the 404 page away.
        let mut page = rest;
        while !String::from_utf8_lossy(&page).contains("</html>") {
            let mut c = [0u8; 512];
            let n = s.read(&mut c).await.expect("body");
            assert!(n > 0);
            page.extend_from_slice(&c[..n]);
        }
        let (code, _, _) =
            http_exchange(&mut s, &upgrade_with("/t", "Sec-WebSocket-Version: 13\r\n")).await;
        assert_eq!(code, 101);
        echo_roundtrip(client.addr, &random_bytes(256 * 1024, 2)).await;
    })
    .await;
}

fn masked_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let (mut h, hl) = encode_header(opcode, payload.len(), Some(mask));
    if !fin {
        h[0] &= 0x7f;
    }
    let mut f = h[..hl].to_vec();
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one server frame: (opcode, payload).
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let Some((h, n)) = parse_header(buf, Role::Client).expect("valid frame") {
            let len = h.len as usize;
            if buf.len() >= n + len {
                let payload = buf[n..n + len].to_vec();
                buf.drain(..n + len);
                return (h.opcode, payload);
            }
        }
        let mut c = [0u8; 8192];
        let k = s.read(&mut c).await.expect("read frame");
        assert!(k > 0, "connection closed while waiting for a frame");
        buf.extend_from_slice(&c[..k]);
    }
}

#[tokio::test]
async fn frames_from_a_raw_peer_ping_text_fragments_and_close() {
    bounded(async {
        let echo = echo_server().await;
        let (server, _client) = wss_tunnel_to(echo, T, "/", "/").await;
        let mut s = tls_to(server.addr).await;
        let (code, _, mut buf) =
            http_exchange(&mut s, &upgrade_with("/", "Sec-WebSocket-Version: 13\r\n")).await;
        assert_eq!(code, 101);
        let m = [0x11, 0x22, 0x33, 0x44];
        // A ping is answered with a pong carrying the same payload.
        s.write_all(&masked_frame(0x9, true, b"hi", m))
            .await
            .expect("ping");
        assert_eq!(read_frame(&mut s, &mut buf).await, (0xA, b"hi".to_vec()));
        // Text, a fragmented binary message and a ping between its fragments: the
        // destination sees the payloads concatenated.
        let mut wire = masked_frame(0x1, true, b"text;", m);
        wire.extend(masked_frame(0x2, false, b"frag1;", m));
        wire.extend(masked_frame(0x9, true, b"", m));
        wire.extend(masked_frame(0x0, true, b"frag2", m));
        s.write_all(&wire).await.expect("frames");
        let mut echoed = Vec::new();
        while echoed.len() < b"text;frag1;frag2".len() {
            let (op, p) = read_frame(&mut s, &mut buf).await;
            match op {
                0x2 => echoed.extend(p),
                0xA => {}
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
        assert_eq!(echoed, b"text;frag1;frag2");
        // Close 1000: the destination sees EOF, and the server closes in turn with 1000.
        s.write_all(&masked_frame(0x8, true, &1000u16.to_be_bytes(), m))
            .await
            .expect("close");
        assert_eq!(
            read_frame(&mut s, &mut buf).await,
            (0x8, 1000u16.to_be_bytes().to_vec())
        );
    })
    .await;
}

#[tokio::test]
async fn bad_frames_close_only_their_own_connection() {
    bounded(async {
        let echo = echo_server().await;
        let (server, client) = wss_tunnel_to(echo, T, "/", "/").await;
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        let bad: [(&str, Vec<u8>); 3] = [
            ("absurd length", huge),
            ("unmasked client frame", vec![0x82, 0x03, b'a', b'b', b'c']),
            (
                "reserved bits",
                masked_frame(0x2, true, b"x", [1, 2, 3, 4])
                    .into_iter()
                    .enumerate()
                    .map(|(i, b)| if i == 0 { b | 0x40 } else { b })
                    .collect(),
            ),
        ];
        for (what, frame) in bad {
            let mut s = tls_to(server.addr).await;
            let (code, _, _) =
                http_exchange(&mut s, &upgrade_with("/", "Sec-WebSocket-Version: 13\r\n")).await;
            assert_eq!(code, 101);
            s.write_all(&frame).await.expect("write");
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
            assert!(
                closed.is_ok(),
                "{what}: the server must close the connection"
            );
        }
        echo_roundtrip(client.addr, &random_bytes(128 * 1024, 4)).await;
    })
    .await;
}

/// A TLS server that records the client's request head and answers with `response`.
async fn fake_ws_server(
    response: impl Fn(&str) -> String + Send + 'static,
) -> (
    SocketAddr,
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let ss = mtt::testing::certs::pem::self_signed(Some("127.0.0.1")).expect("cert");
    let fp = ss.cert_key.fingerprint();
    let mut cfg = rustls::ServerConfig::builder_with_provider(mtt::testing::certs::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(ss.cert_key.chain, ss.cert_key.key)
        .expect("cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = Vec::new();
            let mut c = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut c).await {
                    Ok(1) => head.push(c[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            // Whatever the client sends before our answer, within 300 ms.
            let mut early = vec![0u8; 64];
            let n = tokio::time::timeout(Duration::from_millis(300), tls.read(&mut early))
                .await
                .map(|r| r.unwrap_or(0))
                .unwrap_or(0);
            let _ = tls.write_all(response(&head).as_bytes()).await;
            let _ = tls.flush().await;
            // After the answer: what the client sends (a frame, if it was a 101).
            let mut after = vec![0u8; 256];
            let m = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut after))
                .await
                .map(|r| r.unwrap_or(0))
                .unwrap_or(0);
            early.truncate(n);
            after.truncate(m);
            let mut seen = early;
            seen.extend_from_slice(&after);
            let _ = tx.send((head, seen));
        }
    });
    (addr, fp, rx)
}

fn key_of(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key")
        .to_string()
}

#[tokio::test]
async fn upgrade_request_is_byte_exact_and_data_waits_for_101() {
    bounded(async {
        let (addr, fp, mut seen) = fake_ws_server(|head| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                ws::accept_key(&key_of(head))
            )
        })
        .await;
        let mut cfg = wss_client_config(addr, Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin")), "my/path", T);
        cfg.dial.ws.as_mut().expect("ws").host = "tunnel.example".into();
        let client = start_client(cfg).await;
        let mut app = TcpStream::connect(client.addr).await.expect("connect");
        app.write_all(b"EARLY").await.expect("write");
        let (head, after) = seen.recv().await.expect("request seen");
        let key = key_of(&head);
        assert_eq!(
            head,
            format!(
                "GET /my/path HTTP/1.1\r\nHost: tunnel.example\r\nUser-Agent: Go-http-client/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: smux_off\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
            )
        );
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(&key).expect("base64 key");
        assert_eq!(raw.len(), 16);
        // Nothing before the 101; then the app's bytes in one masked binary frame.
        let (h, n) = parse_header(&after, Role::Server).expect("frame").expect("complete");
        assert_eq!((h.opcode, h.len), (0x2, 5), "the first bytes after 101 are the app's frame");
        let mask = h.mask.expect("client frames are masked");
        let payload: Vec<u8> = after[n..n + 5].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(payload, b"EARLY");
    })
    .await;
}

#[tokio::test]
async fn failed_upgrades_close_the_local_connection_at_once_and_say_why() {
    bounded(async {
        for (response, why) in [
            ("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(), "HTTP 404"),
            ("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_string(), "HTTP 400"),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_string(),
                "Sec-WebSocket-Accept",
            ),
        ] {
            let resp = response.clone();
            let (addr, fp, _seen) = fake_ws_server(move |_| resp.clone()).await;
            let cfg = wss_client_config(addr, Verify::Pin(mtt::testing::config::parse_pin(&fp).expect("pin")), "/", T);
            let err = match mtt::testing::transport::Dialer::new(&cfg.dial).expect("dialer").dial(mtt::testing::transport::datagram::Kind::Stream).await {
                Ok(_) => panic!("{response}: the upgrade must fail"),
                Err(e) => e.report().to_string(),
            };
            assert!(err.contains(why), "{err}");
            let client = start_client(cfg).await;
            let mut app = TcpStream::connect(client.addr).await.expect("connect");
            let start = Instant::now();
            assert_eq!(drain(&mut app).await.0, 0);
            assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        }
    })
    .await;
}

fn wss_server_config(
    dest: SocketAddr,
    path: &str,
    fallback: Option<SocketAddr>,
    tls: bool,
) -> mtt::testing::config::ServerConfig {
    let mut c = server_config(
        dest,
        tls.then(|| CertSource::SelfSigned(Some("127.0.0.1".into()))),
        T,
    );
    c.accept.ws = Some(WsServerOptions::new(PathMatch::new(path), fallback.map(hp)));
    c
}

#[tokio::test]
async fn fallback_forwards_other_requests_to_a_real_web_server() {
    bounded(async {
        let (nginx, web_port) = Nginx::static_site(
            "<h1>a real site</h1>
",
        )
        .await;
        let echo = echo_server().await;
        let server = start_server(wss_server_config(
            echo,
            "/tunnel",
            Some(SocketAddr::from(([127, 0, 0, 1], web_port))),
            true,
        ))
        .await;
        let curl = |path: &str| {
            let url = format!("https://127.0.0.1:{}{path}", server.addr.port());
            async move {
                let out = tokio::process::Command::new("curl")
                    .args(["-sk", "-m", "10", "-w", "\n%{http_code}", &url])
                    .bounded_output()
                    .await;
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        for path in ["/", "/index.html"] {
            let got = curl(path).await;
            assert!(
                got.contains("<h1>a real site</h1>") && got.ends_with("\n200"),
                "{path}: {got}"
            );
        }
        // Everything that is not a tunnel, even a plain GET of the tunnel path, is the site's.
        for path in ["/missing", "/tunnel"] {
            let got = curl(path).await;
            assert!(
                got.ends_with("\n404") && got.contains("nginx"),
                "the site's own 404: {got}"
            );
        }
        // The tunnel path still tunnels.
        let client = start_client(wss_client_config(
            server.addr,
            pin_of(&server),
            "/tunnel",
            T,
        ))
        .await;
        echo_roundtrip(client.addr, &random_bytes(512 * 1024, 5)).await;
        drop(nginx);
    })
    .await;
}

/// nginx terminates TLS and proxies WebSocket to `mtt server -wss -disable-tls`, or proxies to
/// `mtt server -wss` over TLS: the README's two snippets, with a client verifying nginx's
/// certificate through -ca.
#[tokio::test]
async fn behind_nginx_both_ways() {
    bounded(async {
        let pki = crate::common::pki();
        let dest = reply_after_eof_server().await;
        let echo = echo_server().await;
        for upstream_tls in [false, true] {
            let server = start_server(wss_server_config(echo, "/tunnel", None, upstream_tls)).await;
            let half = start_server(wss_server_config(dest, "/half", None, upstream_tls)).await;
            let scheme = if upstream_tls { "https" } else { "http" };
            let port = free_port();
            let location = |path: &str, to: SocketAddr| {
                format!(
                    "location {path} {{ proxy_pass {scheme}://{to}; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; proxy_set_header Host $host; proxy_read_timeout 1h; proxy_send_timeout 1h; }}"
                )
            };
            let nginx = Nginx::start(
                &format!(
                    "server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; {} {} }}",
                    pki.cert.display(),
                    pki.key.display(),
                    location("/tunnel", server.addr),
                    location("/half", half.addr),
                ),
                port,
            )
            .await;
            let front = SocketAddr::from(([127, 0, 0, 1], port));
            let mut cfg = wss_client_config(front, Verify::Ca(pki.ca.clone()), "/tunnel", T);
            cfg.dial.tls.server_name = "localhost".into();
            cfg.dial.ws.as_mut().expect("ws").host = "localhost".into();
            let client = start_client(cfg.clone()).await;
            let mut tasks = Vec::new();
            for i in 0..8u64 {
                let data = random_bytes(1024 * 1024 + i as usize, 500 + i);
                tasks.push(tokio::spawn(async move { echo_roundtrip(client.addr, &data).await }));
            }
            for t in tasks {
                t.await.expect("transfer through nginx");
            }
            // Half-close through nginx: the reply after EOF arrives.
            cfg.dial.ws.as_mut().expect("ws").path = "/half".into();
            let half_client = start_client(cfg).await;
            let data = random_bytes(1024 * 1024, 9);
            let mut s = TcpStream::connect(half_client.addr).await.expect("connect");
            s.write_all(&data).await.expect("write");
            s.shutdown().await.expect("half-close");
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).await.expect("reply");
            assert_eq!(reply, sha256(&data), "upstream tls {upstream_tls}: {}", nginx.error_log());
        }
    })
    .await;
}

#[tokio::test]
async fn oversized_and_slow_request_heads_are_cut() {
    bounded(async {
        let echo = echo_server().await;
        let mut scfg = server_config(
            echo,
            Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
            T,
        );
        let head_limit = Duration::from_millis(400);
        scfg.accept.timeouts.handshake = head_limit;
        scfg.accept.ws = Some(WsServerOptions::new(PathMatch::new("/t"), None));
        let server = start_server(scfg).await;
        let client = start_client(wss_client_config(server.addr, pin_of(&server), "/t", T)).await;
        // A 20 KiB header: 431, connection closed.
        let mut s = tls_to(server.addr).await;
        let big = format!(
            "GET /t HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        );
        let (code, _, _) = http_exchange(&mut s, &big).await;
        assert_eq!(code, 431);
        // A head that never completes: closed after the header timeout (the handshake one).
        let mut slow = tls_to(server.addr).await;
        slow.write_all(b"GET /t HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        slow.flush().await.expect("flush");
        let start = Instant::now();
        let mut rest = Vec::new();
        let _ = slow.read_to_end(&mut rest).await;
        let took = start.elapsed();
        assert!(
            took >= head_limit && took < head_limit + Duration::from_secs(2),
            "{took:?}"
        );
        // Meanwhile and after, tunnels work.
        echo_roundtrip(client.addr, &random_bytes(64 * 1024, 3)).await;
    })
    .await;
}
