//! Plain TLS mode end to end, in process, on real loopback sockets: hashed data both ways,
//! half-close, idle timeout, unreachable server, certificate policies, graceful shutdown.

use std::time::{Duration, Instant};

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::transport::Dialer;
use mtt::testing::transport::options::Verify;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);

#[tokio::test]
async fn many_parallel_connections_hashed_both_ways() {
    bounded(async {
        let echo = echo_server().await;
        let (_server, client) = tunnel_to(echo, T).await;
        let mut tasks = Vec::new();
        for i in 0..24u64 {
            let data = random_bytes(3 * 1024 * 1024 + i as usize * 4099, i);
            tasks.push(tokio::spawn(async move {
                echo_roundtrip(client.addr, &data).await
            }));
        }
        for t in tasks {
            t.await.expect("transfer task");
        }
    })
    .await;
}

#[tokio::test]
async fn reply_after_half_close_arrives() {
    bounded(async {
        let dest = reply_after_eof_server().await;
        let (_server, client) = tunnel_to(dest, T).await;
        let data = random_bytes(5 * 1024 * 1024, 7);
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        s.write_all(&data).await.expect("write");
        s.shutdown().await.expect("half-close");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.expect("read reply");
        assert_eq!(
            reply,
            sha256(&data),
            "the reply sent after EOF must arrive intact"
        );
    })
    .await;
}

#[tokio::test]
async fn one_way_download_longer_than_timeout_is_not_cut() {
    bounded(async {
        // 12 chunks, one per 100 ms: 1.2 s of download through a 400 ms idle timeout.
        let dest = paced_server(12, Duration::from_millis(100)).await;
        let (_server, client) = tunnel_to(dest, Duration::from_millis(400)).await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        let start = Instant::now();
        let (n, eof) = drain(&mut s).await;
        assert!(eof, "download must end with a clean EOF");
        assert_eq!(n, 12 * 1024, "every paced chunk must arrive");
        assert!(start.elapsed() >= Duration::from_millis(1000));
    })
    .await;
}

#[tokio::test]
async fn silent_tunnel_is_closed_after_timeout() {
    bounded(async {
        let echo = echo_server().await;
        let idle = Duration::from_millis(300);
        let (_server, client) = tunnel_to(echo, idle).await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        // Prove the tunnel works, then stay silent.
        s.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("echo");
        let start = Instant::now();
        let (n, _) = drain(&mut s).await;
        let waited = start.elapsed();
        assert_eq!(n, 0);
        assert!(waited >= idle, "closed too early: {waited:?}");
        assert!(waited < idle * 10, "closed too late: {waited:?}");
    })
    .await;
}

#[tokio::test]
async fn unreachable_server_closes_local_connection_promptly() {
    bounded(async {
        let client =
            start_client(client_config(dead_addr(), "127.0.0.1", Verify::Insecure, T)).await;
        closed_promptly(client.addr).await;
    })
    .await;
}

#[tokio::test]
async fn unreachable_destination_closes_client_promptly() {
    bounded(async {
        let (_server, client) = tunnel_to(dead_addr(), T).await;
        closed_promptly(client.addr).await;
    })
    .await;
}

async fn dial_err(cfg: mtt::testing::config::ClientConfig) -> Option<String> {
    match Dialer::new(&cfg.dial)
        .expect("dialer")
        .dial(mtt::testing::transport::datagram::Kind::Stream)
        .await
    {
        Ok(_) => None,
        Err(e) => Some(e.report().to_string()),
    }
}

#[tokio::test]
async fn certificate_policies() {
    bounded(async {
        let echo = echo_server().await;
        let self_signed = start_server(server_config(
            echo,
            Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
            T,
        ))
        .await;
        let addr = self_signed.addr;
        // Web PKI roots: a self-signed certificate is refused.
        let err = dial_err(client_config(addr, "127.0.0.1", Verify::WebPki, T))
            .await
            .expect("self-signed must be refused without -sv");
        assert!(err.contains("TLS handshake"), "{err}");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        // -sv accepts it.
        assert_eq!(
            dial_err(client_config(addr, "127.0.0.1", Verify::Insecure, T)).await,
            None
        );
        // The right pin accepts it.
        assert_eq!(
            dial_err(client_config(addr, "127.0.0.1", pin_of(&self_signed), T)).await,
            None
        );
        // A wrong pin is refused, and the error shows the real fingerprint.
        let err = dial_err(client_config(addr, "127.0.0.1", Verify::Pin([7; 32]), T))
            .await
            .expect("wrong pin must be refused");
        let fp = self_signed.fingerprint.clone().expect("fp");
        let want = "07".repeat(32);
        assert!(
            err.contains(&format!(
                "the server's certificate has SHA-256 {fp}, -cert-sha256 expects {want}"
            )),
            "{err}"
        );
        assert!(
            !err.contains("OtherError") && !err.contains("PinMismatch"),
            "{err}"
        );

        // A server with a CA-signed certificate from files.
        let pki = crate::common::pki();
        let ca_signed = start_server(server_config(
            echo,
            Some(CertSource::Files {
                cert: pki.cert.clone(),
                key: pki.key.clone(),
            }),
            T,
        ))
        .await;
        let ca = Verify::Ca(pki.ca.clone());
        assert_eq!(
            dial_err(client_config(ca_signed.addr, "localhost", ca.clone(), T)).await,
            None
        );
        assert_eq!(
            dial_err(client_config(ca_signed.addr, "127.0.0.1", ca.clone(), T)).await,
            None
        );
        // Right CA, wrong name.
        let err = dial_err(client_config(ca_signed.addr, "example.com", ca.clone(), T))
            .await
            .expect("name mismatch must be refused");
        assert!(err.to_lowercase().contains("certificate"), "{err}");
        // -ca with another CA refuses.
        let other = crate::common::pki();
        let err = dial_err(client_config(
            ca_signed.addr,
            "localhost",
            Verify::Ca(other.ca.clone()),
            T,
        ))
        .await;
        assert!(
            err.is_some(),
            "a certificate from another CA must be refused"
        );
        // And the tunnel through the CA-verified server carries data.
        let client = start_client(client_config(ca_signed.addr, "localhost", ca, T)).await;
        echo_roundtrip(client.addr, &random_bytes(1 << 20, 3)).await;
    })
    .await;
}

#[tokio::test]
async fn self_signed_certificate_as_ca_file() {
    bounded(async {
        let (_dir, cert, key, _) = self_signed_files("localhost");
        let echo = echo_server().await;
        let server = start_server(server_config(
            echo,
            Some(CertSource::Files {
                cert: cert.clone(),
                key,
            }),
            T,
        ))
        .await;
        let client =
            start_client(client_config(server.addr, "localhost", Verify::Ca(cert), T)).await;
        echo_roundtrip(client.addr, &random_bytes(256 * 1024, 9)).await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_live_tunnels_finish() {
    bounded(async {
        let echo = echo_server().await;
        let (server, client) = tunnel_to(echo, T).await;
        let mut live = TcpStream::connect(client.addr).await.expect("connect");
        // An echo proves the tunnel is established end to end before the shutdown.
        live.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        live.read_exact(&mut b).await.expect("echo");
        server.shutdown.cancel();
        client.shutdown.cancel();
        // New connections find no tunnel once the listener is dropped (the port may even be
        // taken by another test's socket since).
        let mut stopped = false;
        for _ in 0..100 {
            if !still_tunnels(client.addr).await {
                stopped = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(stopped, "client listener must close on shutdown");
        // The live tunnel still carries data both ways, including its half-close.
        echo_over(live, &random_bytes(2 << 20, 11)).await;
        // Both roles return once their last tunnel is done.
        server.done.await.expect("server task");
        client.done.await.expect("client task");
    })
    .await;
}

#[tokio::test]
async fn disable_tls_server_speaks_plain_tcp() {
    bounded(async {
        let echo = echo_server().await;
        let server = start_server(server_config(echo, None, T)).await;
        assert!(server.fingerprint.is_none());
        echo_roundtrip(server.addr, &random_bytes(1 << 20, 5)).await;
    })
    .await;
}

/// A server killed in the middle of a tunnel leaves one WARN on the client, in words that say
/// the server's side broke off; an application that simply closes leaves none (at the
/// default level).
#[tokio::test]
async fn a_server_killed_mid_tunnel_is_one_warning_on_the_client() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &[]);
        let pin = server.pin().await;
        let addr = server.listening_addr().await.to_string();
        let mut client = Proc::client(&addr, &pin, &[]);
        let local = client.listening_addr().await;
        // An application that closes normally: nothing said.
        echo_roundtrip(local, &random_bytes(4096, 7)).await;
        let mut app = TcpStream::connect(local).await.expect("connect");
        app.write_all(b"ping").await.expect("write");
        let mut back = [0u8; 4];
        app.read_exact(&mut back).await.expect("echo");
        server.signal("KILL");
        let _ = server.exit().await;
        let line = client.wait_line("broke off").await;
        assert!(
            line.contains("WARN") && line.contains("server's side"),
            "{line}"
        );
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut rest)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_))),
            "the application's connection ends: {n:?}"
        );
        assert_eq!(
            client.seen.iter().filter(|l| l.contains("WARN")).count(),
            1,
            "{:?}",
            client.seen
        );
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
    })
    .await;
}

/// A storm of new tunnels to a server that never finishes a handshake: the client sets up at
/// most DIALS_IN_FLIGHT connections at once (each a descriptor and a TLS state), says so
/// once, and the rest wait instead of opening more.
#[tokio::test]
async fn a_dial_storm_keeps_a_bounded_number_of_connections_in_flight() {
    const LIMIT: usize = 256;
    bounded(async {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
                count_tx.send_replace(held.len());
            }
        });
        let mut client = Proc::client(
            &addr,
            &"0".repeat(64),
            &["-handshake-timeout", "60s", "-drain-timeout", "1s"],
        );
        let local = client.listening_addr().await;
        let mut apps = Vec::new();
        for _ in 0..LIMIT + 44 {
            apps.push(TcpStream::connect(local).await.expect("connect"));
        }
        let line = client.wait_line("being set up at once").await;
        assert!(line.contains(&LIMIT.to_string()), "{line}");
        count.wait_for(|n| *n >= LIMIT).await.expect("count");
        // A window to see that no 257th connection follows (the others wait for a slot).
        let more =
            tokio::time::timeout(Duration::from_millis(300), count.wait_for(|n| *n > LIMIT)).await;
        assert!(more.is_err(), "more than {LIMIT} connections in flight");
        drop(apps);
        held.abort();
        client.signal("TERM");
        let _ = client.exit().await;
    })
    .await;
}
