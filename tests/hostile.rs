//! Hostile input against a server process: random bytes, a truncated TLS hello, slowloris
//! (hundreds of connections that never finish a handshake), TLS followed by garbage for the
//! HTTP front and for a multiplexed session. None crashes the server, slows a live tunnel, or
//! leaks a descriptor; each is closed within its timeout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mtt::transport::options::{TlsClientOptions, Verify};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);

async fn tls_to(addr: std::net::SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tls = mtt::transport::tls::TlsClient::new(
        &TlsClientOptions {
            server_name: "127.0.0.1".into(),
            verify: Verify::Insecure,
        },
        &[],
        std::time::Duration::from_secs(10),
    )
    .expect("tls");
    tls.connect(TcpStream::connect(addr).await.expect("connect"))
        .await
        .expect("handshake")
}

async fn closed_within(mut s: impl tokio::io::AsyncRead + Unpin, limit: Duration, what: &str) {
    let mut sink = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut sink)).await;
    assert!(r.is_ok(), "{what}: still open after {limit:?}");
}

#[tokio::test]
async fn hostile_peers_are_closed_and_cost_nothing_lasting() {
    bounded(async {
        let echo = echo_server().await.to_string();
        for flags in [vec![], vec!["-wss"], vec!["-mux"]] {
            let mut args = vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-n",
                "127.0.0.1",
                "-verbose",
                "-handshake-timeout",
                "500ms",
            ];
            args.extend(&flags);
            let mut server = Proc::spawn(&mtt_bin(), &args);
            let fp = server.pin().await;
            let addr = server.listening_addr().await;
            let pid = server.child.id().expect("pid");
            let baseline = open_fds(pid);
            let mut cfg = client_config(
                addr,
                "127.0.0.1",
                Verify::Pin(mtt::config::parse_pin(&fp).expect("pin")),
                T,
            );
            if flags.contains(&"-wss") {
                cfg = wss_client_config(addr, cfg.dial.tls.verify.clone(), "/", T);
            }
            if flags.contains(&"-mux") {
                cfg.dial.mux = Some(mtt::transport::options::MuxClientOptions {
                    max_streams: 4,
                    // Short, so the session closes soon after the last stream (the descriptor
                    // check below waits for that).
                    idle: Duration::from_millis(300),
                });
            }
            let client = start_client(cfg).await;
            let mut live = TcpStream::connect(client.addr).await.expect("connect");
            let quiet = ping(&mut live).await;

            // Slowloris: 300 connections that never send a byte.
            let mut idle = Vec::new();
            for _ in 0..300 {
                idle.push(TcpStream::connect(addr).await.expect("connect"));
            }
            // Random bytes where a ClientHello belongs.
            let mut junk = TcpStream::connect(addr).await.expect("connect");
            let mut noise = vec![0u8; 4096];
            rand::rng().fill_bytes(&mut noise);
            noise[0] = 0x47; // not a TLS record type
            junk.write_all(&noise).await.expect("write");
            closed_within(junk, Duration::from_secs(2), "random bytes").await;
            // A truncated hello: a record header announcing more than ever comes.
            let mut cut = TcpStream::connect(addr).await.expect("connect");
            cut.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await
                .expect("write");
            // TLS, then garbage for whatever layer follows.
            let mut garbage = tls_to(addr).await;
            let mut bytes = vec![0u8; 64 * 1024];
            rand::rng().fill_bytes(&mut bytes);
            bytes[..4].copy_from_slice(b"\x00\x07\xff\xff");
            let _ = garbage.write_all(&bytes).await;
            let _ = garbage.flush().await;
            if flags.is_empty() {
                // Plain TLS carries any bytes: the garbage is just data for the destination.
                drop(garbage);
            } else {
                // The HTTP front answers 400 and closes; a mux session dies on bad frames.
                closed_within(garbage, Duration::from_secs(12), "garbage after TLS").await;
            }

            // Meanwhile the live tunnel is as quick as before.
            let mut worst = Duration::ZERO;
            for _ in 0..10 {
                worst = worst.max(ping(&mut live).await);
            }
            assert!(
                worst < quiet + Duration::from_millis(100),
                "{flags:?}: {quiet:?} → {worst:?}"
            );

            // The handshake timeout (-handshake-timeout 500ms) ends the silent ones.
            let start = Instant::now();
            for s in idle {
                closed_within(s, Duration::from_secs(5), "slowloris").await;
            }
            closed_within(cut, Duration::from_secs(5), "truncated hello").await;
            assert!(start.elapsed() < Duration::from_secs(5));
            echo_roundtrip(client.addr, &random_bytes(256 * 1024, 1)).await;
            drop(live);
            let deadline = Instant::now() + Duration::from_secs(20);
            while open_fds(pid) > baseline {
                assert!(
                    Instant::now() < deadline,
                    "{flags:?}: {} fds, baseline {baseline}",
                    open_fds(pid)
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            server.signal("TERM");
            assert_eq!(server.exit().await.code(), Some(0), "{flags:?}");
        }
    })
    .await;
}
