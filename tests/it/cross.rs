//! A foreign build of mtt against the native one on loopback: another architecture under
//! qemu-user, or Windows (`mtt.exe`) under Wine. Each end foreign in turn in tls, wss, mux and
//! wss+mux, eight transfers at once hashed both ways; SIP003 plugins started as a host starts
//! them (environment only, link names, TCP and UDP); `mtt cert` writing files; `mtt bench`; a
//! mu-server keeping its users file and token; certificate files with Windows line endings
//! reloaded when replaced; a graceful stop. What only Windows has is in `windows`. These
//! need the foreign binary, so plain `cargo test` lists them as ignored;
//! `packaging/test-cross TARGET` builds it and runs them with `MTT_CROSS="RUNNER
//! path/to/mtt"` (`qemu-aarch64 …/mtt`, `wine …/mtt.exe`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// The runner and the foreign binary, from `MTT_CROSS`.
pub(crate) fn cross() -> (PathBuf, PathBuf) {
    let spec = std::env::var("MTT_CROSS").unwrap_or_else(|_| {
        panic!("MTT_CROSS is not set: run these through packaging/test-cross TARGET")
    });
    let mut parts = spec.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(runner), Some(bin), None) => (runner.into(), bin.into()),
        _ => panic!("MTT_CROSS must be 'RUNNER BINARY', not '{spec}'"),
    }
}

/// Whether the foreign binary is a Windows one.
pub(crate) fn windows() -> bool {
    cross().1.extension().is_some_and(|e| e == "exe")
}

/// `path` as the foreign binary names it: Wine's drive `Z:` is the Linux root.
pub(crate) fn foreign_path(path: &Path) -> String {
    let p = path_str(path);
    if windows() {
        format!("Z:{}", p.replace('/', "\\"))
    } else {
        p
    }
}

/// The foreign binary under another name (a copy: Windows users copy `mtt.exe` to
/// `mtt-client.exe`), in `dir`.
fn foreign_named(dir: &Path, name: &str) -> PathBuf {
    let (_, bin) = cross();
    let to = dir.join(match windows() {
        true => format!("{name}.exe"),
        false => name.to_string(),
    });
    std::fs::copy(&bin, &to).expect("copy the foreign binary");
    to
}

/// `program args…` with `env` added, under the runner.
pub(crate) fn spawn_foreign(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let (runner, _) = cross();
    let program = path_str(program);
    let mut all = vec![program.as_str()];
    all.extend_from_slice(args);
    Proc::spawn_env(&runner, &all, env)
}

/// One end of a tunnel: the native binary, or the foreign one under its runner.
pub(crate) fn spawn(foreign: bool, args: &[&str]) -> Proc {
    if foreign {
        spawn_foreign(&cross().1, args, &[])
    } else {
        Proc::spawn(&mtt_bin(), args)
    }
}

/// Eight connections at once through `local` to an echo destination, each of a different
/// size about 1 MiB, each echoed back intact (SHA-256 both ways, half-close).
pub(crate) async fn eight_transfers(local: SocketAddr) {
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let data = random_bytes(1024 * 1024 + i as usize * 977, i);
        tasks.push(tokio::spawn(
            async move { echo_roundtrip(local, &data).await },
        ));
    }
    for t in tasks {
        t.await.expect("a connection through the tunnel failed");
    }
}

/// A server and a client, one of them foreign (`foreign_server` says which), started with
/// `flags` each; returns both and the client's local address.
async fn pair(foreign_server: bool, dest: SocketAddr, flags: &[&str]) -> (Proc, Proc, SocketAddr) {
    let dest = dest.to_string();
    let mut server_args = vec![
        "server",
        "-b",
        "127.0.0.1:0",
        "-d",
        &dest,
        "-n",
        "127.0.0.1",
    ];
    server_args.extend_from_slice(flags);
    let mut server = spawn(foreign_server, &server_args);
    let addr = server.listening_addr().await.to_string();
    let pin = server.pin().await;
    let mut client_args = vec![
        "client",
        "-b",
        "127.0.0.1:0",
        "-s",
        &addr,
        "-n",
        "127.0.0.1",
    ];
    client_args.extend_from_slice(&["-cert-sha256", &pin]);
    client_args.extend_from_slice(flags);
    let mut client = spawn(!foreign_server, &client_args);
    let local = client.listening_addr().await;
    (server, client, local)
}

/// [`pair`] carrying [`eight_transfers`].
async fn carry(foreign_server: bool, flags: &[&str]) {
    bounded(async {
        let echo = echo_server().await;
        let (_server, _client, local) = pair(foreign_server, echo, flags).await;
        eight_transfers(local).await;
    })
    .await;
}

macro_rules! both_ways {
    ($($foreign_server:ident, $foreign_client:ident: $flags:expr;)*) => {$(
        #[tokio::test]
        #[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
        async fn $foreign_server() {
            carry(true, $flags).await;
        }

        #[tokio::test]
        #[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
        async fn $foreign_client() {
            carry(false, $flags).await;
        }
    )*};
}

both_ways! {
    foreign_server_tls, foreign_client_tls: &[];
    foreign_server_wss, foreign_client_wss: &["-wss", "-wss-path", "/cross"];
    foreign_server_mux, foreign_client_mux: &["-mux"];
    foreign_server_wss_mux, foreign_client_wss_mux: &["-wss", "-wss-path", "/cross", "-mux"];
}

#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn version_of_the_foreign_binary() {
    let (runner, bin) = cross();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&runner)
            .arg(&bin)
            .arg("-version")
            .output(),
    )
    .await
    .expect("-version within 60 s")
    .expect("run the runner");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("mtt {}", env!("CARGO_PKG_VERSION")),
        "the foreign binary is of another version"
    );
}

/// The SIP003 variables a host sets for a plugin: listen on `local`, reach `remote`.
pub(crate) fn sip003_env(
    remote: SocketAddr,
    local: SocketAddr,
    options: &str,
) -> Vec<(String, String)> {
    vec![
        ("SS_REMOTE_HOST".into(), remote.ip().to_string()),
        ("SS_REMOTE_PORT".into(), remote.port().to_string()),
        ("SS_LOCAL_HOST".into(), local.ip().to_string()),
        ("SS_LOCAL_PORT".into(), local.port().to_string()),
        ("SS_PLUGIN_OPTIONS".into(), options.into()),
    ]
}

/// A plugin started by path with the environment only (no arguments), as hosts start them.
fn plugin(program: &Path, foreign: bool, env: &[(String, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if foreign {
        spawn_foreign(program, &[], &env)
    } else {
        Proc::spawn_env(program, &[], &env)
    }
}

/// TCP and UDP echo destinations on one port, as SIP003u's server side expects.
async fn tcp_and_udp_echo() -> SocketAddr {
    loop {
        let tcp = echo_server().await;
        if let Ok(udp) = tokio::net::UdpSocket::bind(tcp).await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                    let _ = udp.send_to(&buf[..n], from).await;
                }
            });
            return tcp;
        }
    }
}

/// Datagrams of several sizes sent to `to` until each comes back intact (UDP may lose one).
async fn udp_echoed(to: SocketAddr) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut buf = vec![0u8; 65_536];
    for (i, size) in [1usize, 1200, 8000].into_iter().enumerate() {
        let data = random_bytes(size, 40 + i as u64);
        loop {
            sock.send_to(&data, to).await.expect("send");
            let got = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf));
            if let Ok(r) = got.await {
                let (n, _) = r.expect("recv");
                assert_eq!(sha256(&buf[..n]), sha256(&data), "datagram of {size} bytes");
                break;
            }
        }
    }
}

/// SIP003: each plugin started by its link name with the host's variables only; a foreign
/// `mtt-client` with a native `mtt-server` (tls), then a native client with a foreign server
/// (wss+mux); TCP hashed both ways and UDP datagrams (SIP003u) through each pair.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn sip003_plugins_started_by_a_host() {
    bounded(async {
        let (_links, native_client, native_server) = links();
        let copies = tempfile::tempdir().expect("tmp");
        let foreign_client = foreign_named(copies.path(), "mtt-client");
        let foreign_server = foreign_named(copies.path(), "mtt-server");
        let (_certs, cert, key, fp) = self_signed_files("localhost");
        for (foreign_is_server, mode) in [(false, ""), (true, "wss;wss-path=/sip;mux")] {
            let dest = tcp_and_udp_echo().await;
            let server_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
            let client_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("a");
            let (cert, key) = match foreign_is_server {
                true => (foreign_path(&cert), foreign_path(&key)),
                false => (path_str(&cert), path_str(&key)),
            };
            let server_bin = if foreign_is_server {
                &foreign_server
            } else {
                &native_server
            };
            let client_bin = if foreign_is_server {
                &native_client
            } else {
                &foreign_client
            };
            let with_mode = |o: String| {
                if mode.is_empty() {
                    o
                } else {
                    format!("{o};{mode}")
                }
            };
            let mut server = plugin(
                server_bin,
                foreign_is_server,
                &sip003_env(
                    server_at,
                    dest,
                    &with_mode(format!("cert={cert};key={key}")),
                ),
            );
            let mut client = plugin(
                client_bin,
                !foreign_is_server,
                &sip003_env(
                    server_at,
                    client_at,
                    &with_mode(format!("n=localhost;cert-sha256={fp}")),
                ),
            );
            assert_eq!(server.listening_addr().await, server_at);
            assert_eq!(client.listening_addr().await, client_at);
            eight_transfers(client_at).await;
            udp_echoed(client_at).await;
        }
    })
    .await;
}

/// `mtt cert` of the foreign binary writes a certificate and key (never over existing files)
/// that a native server serves and a native client pins by the printed fingerprint.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn cert_files_written_by_the_foreign_binary_serve() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("new dir");
        let written = |expect_ok: bool| {
            let out = foreign_path(&out);
            async move {
                let mut p = spawn(true, &["cert", "-n", "localhost", "-out", &out]);
                let code = p.exit().await.code();
                let lines = p.all_lines().await;
                assert_eq!(code == Some(0), expect_ok, "{lines:?}");
                lines
            }
        };
        let lines = written(true).await;
        let pin = lines
            .iter()
            .find_map(|l| l.strip_prefix("SHA-256: "))
            .expect("the fingerprint printed")
            .to_string();
        let cert = out.join("localhost.crt");
        let key = out.join("localhost.key");
        assert!(
            std::fs::read_to_string(&cert)
                .expect("crt")
                .contains("BEGIN CERTIFICATE")
        );
        let again = written(false).await;
        assert!(
            again.iter().any(|l| l.contains("localhost.key")),
            "{again:?}"
        );

        let echo = echo_server().await.to_string();
        let (cert, key) = (path_str(&cert), path_str(&key));
        let mut server = Proc::server(&echo, &["-cert", &cert, "-key", &key]);
        let addr = server.listening_addr().await.to_string();
        let mut client = Proc::client_named(&addr, "localhost", &pin, &[]);
        let local = client.listening_addr().await;
        echo_roundtrip(local, &random_bytes(300_000, 7)).await;
    })
    .await;
}

/// A foreign mu-server: a users file with Windows line endings read, its controller's token
/// made into a file beside the users file, users added, replaced and removed through the REST
/// API, each change rewriting the users file
/// whole (over the previous one), and a native client carried through the user's path.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn foreign_mu_server_keeps_its_users_file() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let users = dir.path().join("users.json");
        // A file its operator wrote, with Windows line endings.
        let bob = "[\n  {\n    \"path\": \"/bob\",\n    \"dst\": \"127.0.0.1:9\"\n  }\n]\n";
        std::fs::write(&users, crlf(bob)).expect("users file");
        let mut mu = spawn(
            true,
            &[
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-c",
                "127.0.0.1:0",
                "-n",
                "127.0.0.1",
            ]
            .into_iter()
            .chain(["-users-file", &foreign_path(&users)])
            .collect::<Vec<_>>(),
        );
        let data = mu.listening_addr().await.to_string();
        let pin = mu.pin().await;
        let control = mu.addr_after("controller on ").await;
        mu.wait_line("controller's token is in").await;
        let token = std::fs::read_to_string(dir.path().join("controller.token")).expect("token");
        let auth = format!("Authorization: Bearer {}\r\n", token.trim());
        let echo = echo_server().await;
        let (_, list) = http_request(control, "GET", "/v1/users", &auth, b"").await;
        assert!(list.contains("/bob"), "{list}");
        let saved = || std::fs::read_to_string(&users).expect("users file");
        for dst in [dead_addr(), echo] {
            let body = format!("{{\"dst\":\"{dst}\"}}");
            let (code, text) =
                http_request(control, "PUT", "/v1/users/alice", &auth, body.as_bytes()).await;
            assert_eq!(code, 200, "{text}");
            assert!(saved().contains(&dst.to_string()), "{}", saved());
        }
        let flags = ["-wss", "-wss-path", "/alice"];
        let mut client = Proc::client(&data, &pin, &flags);
        eight_transfers(client.listening_addr().await).await;
        let (code, text) = http_request(control, "DELETE", "/v1/users/alice", &auth, b"").await;
        assert_eq!(code, 200, "{text}");
        assert!(!saved().contains("alice"), "{}", saved());
    })
    .await;
}

/// A stop request (SIGINT; under Wine, Ctrl-C) to a foreign server: it stops accepting,
/// the live tunnel finishes intact, and it exits with status 0.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn a_foreign_server_drains_and_stops() {
    bounded(async {
        let echo = echo_server().await;
        let (mut server, _client, local) = pair(true, echo, &[]).await;
        let live = LiveTunnel::open(local, 9).await;
        server.signal("INT");
        server.wait_line("draining live tunnels").await;
        live.finish("after the stop request").await;
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

/// A tunnel through `local` to an echo destination, up and carrying: its first KiB has come
/// back. [`LiveTunnel::finish`] sends the rest of its 2 MiB, whatever happened meanwhile, and
/// checks that all of it came back (SHA-256, half-close).
pub(crate) struct LiveTunnel {
    stream: tokio::net::TcpStream,
    data: Vec<u8>,
    back: Vec<u8>,
}

const LIVE_HEAD: usize = 1024;

impl LiveTunnel {
    pub(crate) async fn open(local: SocketAddr, seed: u64) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let data = random_bytes(2 * 1024 * 1024, seed);
        let mut stream = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect");
        stream.write_all(&data[..LIVE_HEAD]).await.expect("write");
        let mut back = vec![0u8; LIVE_HEAD];
        stream
            .read_exact(&mut back)
            .await
            .expect("the tunnel is up");
        LiveTunnel { stream, data, back }
    }

    /// Sends the rest and checks the echo; `when` names the moment, for the failure.
    pub(crate) async fn finish(self, when: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let LiveTunnel {
            stream,
            data,
            mut back,
        } = self;
        let (mut r, mut w) = stream.into_split();
        let send = async {
            w.write_all(&data[LIVE_HEAD..]).await.expect("write");
            w.shutdown().await.expect("shutdown");
        };
        let recv = async {
            r.read_to_end(&mut back).await.expect("read");
        };
        tokio::join!(send, recv);
        assert_eq!(sha256(&back), sha256(&data), "the live tunnel {when}");
    }
}

/// `mtt bench` of the foreign binary: its own tunnels on loopback, every byte verified.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn bench_of_the_foreign_binary() {
    bounded(async {
        let args = [
            "bench", "-modes", "tls", "-size", "4", "-streams", "2", "-conns", "10",
        ];
        let mut p = spawn(true, &args);
        assert_eq!(p.exit().await.code(), Some(0), "{:?}", p.all_lines().await);
        let lines = p.all_lines().await;
        assert!(lines.iter().any(|l| l.starts_with("tls ")), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("all transfers verified")),
            "{lines:?}"
        );
    })
    .await;
}

/// `text` with Windows line endings, as Notepad saves it.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\n', "\r\n")
}

/// A foreign server reads certificate files with Windows line endings, and reads them again
/// when they are replaced (the file watch; no signal needed): new tunnels are served with the
/// new certificate, which a client pinned to it accepts.
#[tokio::test]
#[ignore = "needs a foreign binary: packaging/test-cross TARGET runs it"]
async fn foreign_server_reloads_replaced_certificate_files() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = (dir.path().join("s.crt"), dir.path().join("s.key"));
        let write = |name: &str| {
            let ss = mtt::testing::certs::pem::self_signed(Some(name)).expect("cert");
            // Beside, then renamed over: a renewal replaces the files whole.
            for (path, text) in [(&key, &ss.key_pem), (&cert, &ss.cert_pem)] {
                let tmp = path.with_extension("new");
                std::fs::write(&tmp, crlf(text)).expect("write");
                std::fs::rename(&tmp, path).expect("rename");
            }
            ss.cert_key.fingerprint()
        };
        let first = write("localhost");
        let echo = echo_server().await.to_string();
        let (c, k) = (foreign_path(&cert), foreign_path(&key));
        let args = [
            "server",
            "-b",
            "127.0.0.1:0",
            "-d",
            &echo,
            "-cert",
            &c,
            "-key",
            &k,
        ];
        let mut server = spawn(true, &args);
        let addr = server.listening_addr().await.to_string();
        let mut old = Proc::client_named(&addr, "localhost", &first, &[]);
        echo_roundtrip(old.listening_addr().await, &random_bytes(100_000, 1)).await;
        let second = write("localhost");
        server.wait_line("reloaded").await;
        let mut new = Proc::client_named(&addr, "localhost", &second, &[]);
        echo_roundtrip(new.listening_addr().await, &random_bytes(100_000, 2)).await;
    })
    .await;
}
