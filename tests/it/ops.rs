//! Operations: hot reload of certificates (and the mu-server's users file) on SIGHUP without
//! touching live tunnels, and a bad new file keeping the old one.

use std::time::Duration;

use crate::common::*;
use mtt::testing::certs::CertSource;
use mtt::testing::transport::options::Verify;
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);

fn pin(fp: &str) -> Verify {
    Verify::Pin(mtt::testing::config::parse_pin(fp).expect("pin"))
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_handshakes_only() {
    bounded(async {
        let echo = echo_server().await;
        let (dir, cert, key, fp_a) = self_signed_files("localhost");
        let server = mtt::testing::role::server::Server::new(server_config(
            echo,
            Some(CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            T,
        ))
        .expect("server");
        let reloader = server.reloader();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("a");
        tokio::spawn(server.run(
            mtt::testing::transport::Listener::from(l),
            tokio_util::sync::CancellationToken::new(),
        ));
        let old_client = start_client(client_config(addr, "localhost", pin(&fp_a), T)).await;
        let mut live = TcpStream::connect(old_client.addr).await.expect("connect");
        ping(&mut live).await;

        // New files in place, then reload.
        let (_d2, cert_b, key_b, fp_b) = self_signed_files("localhost");
        std::fs::copy(&cert_b, &cert).expect("copy");
        std::fs::copy(&key_b, &key).expect("copy");
        reloader.reload().await;
        let new_client = start_client(client_config(addr, "localhost", pin(&fp_b), T)).await;
        echo_roundtrip(new_client.addr, &random_bytes(64 * 1024, 1)).await;
        // A client that never met the server and pins the old certificate is refused. (The old
        // client may still resume its TLS session: resumption is not a new certificate check.)
        let fresh_old = start_client(client_config(addr, "localhost", pin(&fp_a), T)).await;
        closed_promptly(fresh_old.addr).await;
        ping(&mut live).await; // the tunnel opened before the reload flows on

        // A broken file keeps the current certificate.
        std::fs::write(&cert, "garbage").expect("write");
        reloader.reload().await;
        echo_roundtrip(new_client.addr, &random_bytes(64 * 1024, 2)).await;
        drop(dir);
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads_a_running_server() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_dir, cert, key, _fp_a) = self_signed_files("localhost");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
                "-verbose",
            ],
        );
        let addr = server.listening_addr().await;
        let (_d2, cert_b, key_b, fp_b) = self_signed_files("localhost");
        std::fs::copy(&cert_b, &cert).expect("copy");
        std::fs::copy(&key_b, &key).expect("copy");
        server.signal("HUP");
        let line = server.wait_line("reloaded -cert/-key").await;
        assert!(line.contains(&fp_b), "{line}");
        let client = start_client(client_config(addr, "localhost", pin(&fp_b), T)).await;
        echo_roundtrip(client.addr, &random_bytes(64 * 1024, 3)).await;
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// A renewal that re-points the files (as certbot does with its `live/` symlinks) is picked
/// up without a signal; a tunnel opened before it flows on.
#[tokio::test]
async fn changed_certificate_files_are_reloaded_without_a_signal() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_dir, cert_a, key_a, fp_a) = self_signed_files("localhost");
        let (_d2, cert_b, key_b, fp_b) = self_signed_files("localhost");
        let live = tempfile::tempdir().expect("tmp");
        let (cert, key) = (
            live.path().join("fullchain.pem"),
            live.path().join("privkey.pem"),
        );
        std::os::unix::fs::symlink(&cert_a, &cert).expect("link");
        std::os::unix::fs::symlink(&key_a, &key).expect("link");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
                "-verbose",
            ],
        );
        let addr = server.listening_addr().await;
        let old = start_client(client_config(addr, "localhost", pin(&fp_a), T)).await;
        let mut tunnel = TcpStream::connect(old.addr).await.expect("connect");
        ping(&mut tunnel).await;
        server.wait_line("watching").await;
        // Re-point each link the way a renewal does: a new link renamed over the old one.
        for (link, target) in [(&cert, &cert_b), (&key, &key_b)] {
            let tmp = link.with_extension("new");
            std::os::unix::fs::symlink(target, &tmp).expect("link");
            std::fs::rename(&tmp, link).expect("rename");
        }
        let line = server.wait_line("reloaded -cert/-key").await;
        assert!(line.contains(&fp_b), "{line}");
        let new = start_client(client_config(addr, "localhost", pin(&fp_b), T)).await;
        echo_roundtrip(new.addr, &random_bytes(64 * 1024, 4)).await;
        ping(&mut tunnel).await;
        server.signal("TERM");
        drop(tunnel);
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// A renewal that writes the key well after the certificate (further apart than the watch's
/// settling time) is read as a pair once both are in place, without an ERROR in between.
#[tokio::test]
async fn a_certificate_and_key_renewed_seconds_apart_are_read_as_a_pair() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_dir, cert_a, key_a, _fp_a) = self_signed_files("localhost");
        let (_d2, cert_b, key_b, fp_b) = self_signed_files("localhost");
        let live = tempfile::tempdir().expect("tmp");
        let (cert, key) = (live.path().join("cert.pem"), live.path().join("key.pem"));
        std::fs::copy(&cert_a, &cert).expect("copy");
        std::fs::copy(&key_a, &key).expect("copy");
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-cert",
                &path_str(&cert),
                "-key",
                &path_str(&key),
                "-verbose",
            ],
        );
        let addr = server.listening_addr().await;
        server.wait_line("watching").await;
        std::fs::copy(&cert_b, &cert).expect("new certificate");
        // The server has read the new certificate with the old key, and waits for the key.
        server.wait_line("waiting up to").await;
        std::fs::copy(&key_b, &key).expect("new key");
        let line = server.wait_line("reloaded -cert/-key").await;
        assert!(line.contains(&fp_b), "{line}");
        let new = start_client(client_config(addr, "localhost", pin(&fp_b), T)).await;
        echo_roundtrip(new.addr, &random_bytes(16 * 1024, 5)).await;
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
        let mut lines = server.seen.clone();
        while let Some(l) = server.next_line().await {
            lines.push(l);
        }
        assert!(
            !lines.iter().any(|l| l.contains("ERROR")),
            "a half-renewed pair is no error: {lines:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn sighup_rereads_the_users_file() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("users.json");
        std::fs::write(&file, r#"[{"path":"/a","dst":"127.0.0.1:1"}]"#).expect("write");
        let mut p = Proc::spawn(
            &mtt_bin(),
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-users-file",
                &path_str(&file),
                "-verbose",
            ],
        );
        p.wait_line("1 user(s)").await;
        std::fs::write(
            &file,
            r#"[{"path":"/a","dst":"127.0.0.1:1"},{"path":"/b","dst":"127.0.0.1:2"}]"#,
        )
        .expect("write");
        p.signal("HUP");
        p.wait_line("reloaded -users-file: 2 user(s)").await;
        std::fs::write(&file, "not json").expect("write");
        p.signal("HUP");
        let err = p.wait_line("keeping the current users").await;
        assert!(err.contains("users"), "{err}");
        p.signal("TERM");
        assert_eq!(p.exit().await.code(), Some(0));
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_live_tunnels_then_gives_up_after_drain_timeout() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let start_server =
            |drain: &str| Proc::server(&echo, &["-drain-timeout", drain, "-verbose"]);
        // Default-length drain: a transfer under way when SIGTERM arrives completes, and new
        // connections are refused meanwhile.
        let mut server = start_server("30s");
        let fp = server.pin().await;
        let addr = server.listening_addr().await;
        let client = start_client(client_config(addr, "127.0.0.1", pin(&fp), T)).await;
        let mut live = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut live).await;
        server.signal("TERM");
        server.wait_line("live connection(s) for up to").await;
        // No new tunnel while draining (the port may be taken by another test's socket).
        let fresh = start_client(client_config(addr, "127.0.0.1", pin(&fp), T)).await;
        assert!(
            !still_tunnels(fresh.addr).await,
            "no new connections while draining"
        );
        echo_over(live, &random_bytes(2 << 20, 5)).await;
        assert_eq!(server.exit().await.code(), Some(0));

        // A short drain: a silent tunnel is cut when it runs out.
        let mut server = start_server("300ms");
        let fp = server.pin().await;
        let addr = server.listening_addr().await;
        let client = start_client(client_config(addr, "127.0.0.1", pin(&fp), T)).await;
        let mut silent = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut silent).await;
        let start = std::time::Instant::now();
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert_eq!(drain(&mut silent).await.0, 0);
    })
    .await;
}

/// Checks the exposition's shape and returns the value of the sample `name`.
fn sample(text: &str, name: &str) -> f64 {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (n, v) = line.rsplit_once(' ').expect("name value");
        assert!(v.parse::<f64>().is_ok(), "bad value in {line}");
        assert!(n.starts_with("mtt_"), "{line}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .expect("number")
}

#[tokio::test]
async fn metrics_endpoints_count_traffic() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-mux", "-metrics", "127.0.0.1:0", "-verbose"]);
        let fp = server.pin().await;
        let addr = server.listening_addr().await;
        let metrics = server.addr_after("metrics at http://").await;
        let before = scrape(metrics).await;
        assert_eq!(sample(&before, "mtt_connections_accepted_total"), 0.0);
        let mut cfg = client_config(addr, "127.0.0.1", pin(&fp), T);
        cfg.dial.mux = Some(mtt::testing::transport::options::MuxClientOptions {
            muxing: mtt::testing::transport::mux::Muxing::Yamux,
            max_streams: 4,
            idle: Duration::from_secs(10),
        });
        let client = start_client(cfg).await;
        let mut held = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut held).await;
        for i in 0..3u64 {
            echo_roundtrip(client.addr, &random_bytes(100_000, i)).await;
        }
        // The relay counts after the poll that moved the bytes: the last of them may be
        // counted just after the client saw its echo end.
        let after = scrape_until(metrics, T, "300,000 bytes each way counted", |t| {
            sample(t, "mtt_bytes_total{direction=\"up\"}") >= 300_000.0
                && sample(t, "mtt_bytes_total{direction=\"down\"}") >= 300_000.0
        })
        .await;
        assert_eq!(
            sample(&after, "mtt_connections_accepted_total"),
            1.0,
            "one session carried it all"
        );
        assert_eq!(sample(&after, "mtt_mux_sessions"), 1.0);
        assert!(
            sample(&after, "mtt_mux_streams") >= 1.0,
            "the held stream is open"
        );
        assert!(sample(&after, "mtt_bytes_total{direction=\"up\"}") >= 300_000.0);
        assert!(sample(&after, "mtt_bytes_total{direction=\"down\"}") >= 300_000.0);
        assert_eq!(sample(&after, "mtt_handshake_seconds_count"), 1.0);
        drop(held);
        server.signal("TERM");
    })
    .await;
}

/// -max-conns refuses beyond the limit cleanly; the open file limit is raised at start.
#[tokio::test]
async fn max_conns_refuses_cleanly_and_the_file_limit_is_raised() {
    bounded(async {
        let echo = echo_server().await.to_string();
        // Started with a soft limit below the hard one, as on most systems.
        let bin = path_str(&mtt_bin());
        let mut server = Proc::spawn(
            std::path::Path::new("sh"),
            &[
                "-c",
                "ulimit -Sn 256 && exec \"$0\" \"$@\"",
                &bin,
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-n",
                "127.0.0.1",
                "-max-conns",
                "2",
                "-verbose",
            ],
        );
        let fp = server.pin().await;
        let addr = server.listening_addr().await;
        let pid = server.child.id().expect("pid");
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("nofile");
        let nums: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.parse::<u64>().is_ok() || *w == "unlimited")
            .collect();
        assert_eq!(nums.len(), 2, "{line}");
        assert_eq!(
            nums[0], nums[1],
            "soft limit raised to the hard limit: {line}"
        );

        let client = start_client(client_config(addr, "127.0.0.1", pin(&fp), T)).await;
        let mut a = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut a).await;
        let mut b = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut b).await;
        closed_promptly(client.addr).await;
        server.wait_line("-max-conns 2 reached").await;
        ping(&mut a).await;
        drop(b);
        // A place is free again once a tunnel ends.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = TcpStream::connect(client.addr).await.expect("connect");
            let ok = tokio::time::timeout(Duration::from_secs(2), async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                c.write_all(b"ping").await.ok()?;
                let mut r = [0u8; 4];
                c.read_exact(&mut r).await.ok()
            })
            .await
            .ok()
            .flatten()
            .is_some();
            if ok {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no place came free");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// `-cert`/`-key` given as relative paths are watched too: files copied over them are
/// reloaded without a signal.
#[tokio::test]
async fn relative_certificate_paths_are_watched() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let (_d1, cert_a, key_a, _fp_a) = self_signed_files("localhost");
        let (_d2, cert_b, key_b, fp_b) = self_signed_files("localhost");
        let work = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(work.path().join("reload")).expect("mkdir");
        std::fs::copy(&cert_a, work.path().join("reload/server.crt")).expect("cp");
        std::fs::copy(&key_a, work.path().join("reload/server.key")).expect("cp");
        let mut server = Proc::spawn_in(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo,
                "-cert",
                "reload/server.crt",
                "-key",
                "reload/server.key",
                "-verbose",
            ],
            work.path(),
        );
        server.listening_addr().await;
        server.wait_line("watching").await;
        std::fs::copy(&cert_b, work.path().join("reload/server.crt")).expect("cp");
        std::fs::copy(&key_b, work.path().join("reload/server.key")).expect("cp");
        let line = server.wait_line("reloaded -cert/-key").await;
        assert!(line.contains(&fp_b), "{line}");
        server.signal("TERM");
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// At the default log level a server says where it listens (one INFO line) and, under a
/// burst of refusals at -max-conns, one WARN line with their count, not one per connection.
#[tokio::test]
async fn the_default_level_shows_listening_and_rate_limited_refusals() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-max-conns", "1"]);
        let fp = server.pin().await;
        let addr = server.listening_addr().await;
        let client = start_client(client_config(addr, "127.0.0.1", pin(&fp), T)).await;
        let mut held = TcpStream::connect(client.addr).await.expect("connect");
        ping(&mut held).await;
        for _ in 0..10 {
            closed_promptly(client.addr).await;
        }
        server.wait_line("-max-conns 1 reached").await;
        server.signal("TERM");
        drop(held);
        server.exit().await;
        // Every line it printed is in by now.
        while let Ok(Some(l)) =
            tokio::time::timeout(Duration::from_secs(1), server.next_line()).await
        {
            server.seen.push(l);
        }
        let refusals: Vec<&String> = server
            .seen
            .iter()
            .filter(|l| l.contains("-max-conns"))
            .collect();
        assert!((1..=2).contains(&refusals.len()), "{refusals:?}");
        assert!(refusals.iter().all(|l| l.contains("WARN")), "{refusals:?}");
        assert!(
            server
                .seen
                .iter()
                .any(|l| l.contains("INFO") && l.contains("listening on"))
        );
        assert!(
            !server.seen.iter().any(|l| l.contains("DEBUG")),
            "{:?}",
            server.seen
        );
    })
    .await;
}

/// Normal endings are said in plain words at DEBUG: a client that goes away without TLS
/// close_notify is not an error, and no line sends the reader to a documentation URL.
#[tokio::test]
async fn normal_endings_are_debug_lines_in_plain_words() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-verbose"]);
        let addr = server.listening_addr().await;
        let tls = mtt::testing::transport::tls::TlsClient::new(
            &mtt::testing::transport::options::TlsClientOptions {
                server_name: "127.0.0.1".into(),
                verify: Verify::Insecure,
                hello: Default::default(),
            },
            &[],
            Duration::from_secs(10),
        )
        .expect("tls");
        let mut s = tls
            .connect(TcpStream::connect(addr).await.expect("connect"))
            .await
            .expect("handshake");
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.write_all(b"ping").await.expect("write");
            s.flush().await.expect("flush");
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.expect("echo");
        }
        // Gone without close_notify.
        drop(s);
        let line = server
            .wait_line("closed: the peer closed without TLS close_notify")
            .await;
        assert!(line.contains("DEBUG"), "{line}");
        server.signal("TERM");
        server.exit().await;
        assert!(
            !server.seen.iter().any(|l| l.contains("docs.rs")),
            "{:?}",
            server.seen
        );
        assert!(
            !server.seen.iter().any(|l| l.contains("tunnel ended")),
            "{:?}",
            server.seen
        );
    })
    .await;
}

/// SIGHUP does not kill the client (it has nothing to re-read); SIGTERM still ends it with 0.
#[tokio::test]
async fn sighup_leaves_the_client_running() {
    bounded(async {
        let echo = echo_server().await;
        let server = start_server(server_config(
            echo,
            Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
            T,
        ))
        .await;
        let fp = server.fingerprint.clone().expect("fp");
        let saddr = server.addr.to_string();
        let mut client = Proc::client(&saddr, &fp, &[]);
        let caddr = client.listening_addr().await;
        client.signal("HUP");
        client
            .wait_line("SIGHUP: the client has nothing to re-read")
            .await;
        echo_roundtrip(caddr, &random_bytes(64 * 1024, 1)).await;
        client.signal("TERM");
        assert_eq!(client.exit().await.code(), Some(0));
    })
    .await;
}

/// Byte counters move while a tunnel is open, not only when it closes: 10 MB through a live
/// tunnel are on the server's /metrics before the tunnel ends.
#[tokio::test]
async fn byte_counters_move_while_the_tunnel_is_open() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-metrics", "127.0.0.1:0"]);
        let fp = server.pin().await;
        let addr = server.listening_addr().await;
        let metrics = server.addr_after("metrics at http://").await;
        let client = start_client(client_config(addr, "127.0.0.1", pin(&fp), T)).await;
        let mut s = TcpStream::connect(client.addr).await.expect("connect");
        let data = random_bytes(10 << 20, 7);
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut r, mut w) = s.split();
            let mut back = vec![0u8; data.len()];
            let (wrote, read) = tokio::join!(w.write_all(&data), r.read_exact(&mut back));
            wrote.expect("write");
            read.expect("read");
            assert!(back == data, "echo");
        }
        // Still open: the counters already hold the 10 MB each way.
        let text = scrape(metrics).await;
        let n = |dir: &str| sample_of(&text, &format!("mtt_bytes_total{{direction=\"{dir}\"}}"));
        assert!(
            n("up") >= data.len() as u64 && n("down") >= data.len() as u64,
            "{text}"
        );
        ping(&mut s).await;
        server.signal("TERM");
        drop(s);
        server.exit().await;
    })
    .await;
}
