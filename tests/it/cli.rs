//! The `mtt` binary as users meet it: argv[0] dispatch through links, Go-style flags, one-line
//! errors that name the flag, end-to-end tunnels between real processes, `mtt cert`,
//! Unix-socket listening, and SIGTERM.

use std::path::Path;
use std::process::Command;

use crate::common::*;

/// Runs mtt to completion, bounded (see [`BoundedOutput`]).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(mtt_bin())
        .args(args)
        .env_remove("RUST_LOG")
        .bounded_output();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn links_dispatch_on_argv0() {
    let dir = tempfile::tempdir().expect("tmp");
    for (link, usage) in [
        ("mtt-client", "Usage: mtt-client"),
        ("mtt-server", "Usage: mtt-server"),
        ("mtt-mu-server", "Usage: mtt-mu-server"),
    ] {
        let path = dir.path().join(link);
        std::os::unix::fs::symlink(mtt_bin(), &path).expect("symlink");
        let out = Command::new(&path).arg("-h").bounded_output();
        assert_eq!(out.status.code(), Some(0), "{link} -h");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.starts_with(usage), "{link}: {stdout}");
        let out = Command::new(&path).arg("--version").bounded_output();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("mtt {}", env!("CARGO_PKG_VERSION"))
        );
    }
    // A link in another directory, called by relative path, still dispatches.
    let out = Command::new("./mtt-server")
        .current_dir(dir.path())
        .arg("-help")
        .bounded_output();
    assert!(String::from_utf8_lossy(&out.stdout).contains("-disable-tls"));
}

#[test]
fn subcommands_help_and_version() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for cmd in ["client", "server", "mu-server", "cert", "bench"] {
        assert!(out.contains(cmd), "top help lists {cmd}");
    }
    let (code, out, _) = run(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("mtt {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    for role in ["client", "server", "mu-server", "cert", "bench"] {
        let (code, out, _) = run(&[role, "-h"]);
        assert_eq!(code, 0, "{role} -h");
        assert_eq!(
            run(&[role, "help"]),
            (0, out.clone(), String::new()),
            "{role} help"
        );
        assert!(out.starts_with(&format!("Usage: mtt {role}")), "{out}");
        // Flags are shown the way the original's users type them.
        assert!(
            !out.contains(" --"),
            "{role}: help shows single-dash flags: {out}"
        );
    }
    let (code, _, err) = run(&[]);
    assert_ne!(code, 0);
    assert!(err.contains("Usage: mtt"));
}

#[test]
fn every_invalid_input_is_one_line_naming_the_flag() {
    let dir = tempfile::tempdir().expect("tmp");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let garbage = path_str(&garbage);
    let dirpath = path_str(dir.path());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "a:1", "-foo"],
            "unknown flag -foo",
        ),
        (vec!["client", "-s", "a:1"], "missing -b"),
        (
            vec!["client", "-b", "-s", "127.0.0.1:1"],
            "-b is missing its value",
        ),
        (
            vec!["server", "-b", "127.0.0.1:0", "-d", "a:1", "-n", "bad name"],
            "-n: 'bad name' is neither a DNS name nor an IP address",
        ),
        (
            vec!["mu-server", "-b", "127.0.0.1:0", "-n", "bad name"],
            "-n: 'bad name' is neither a DNS name nor an IP address",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-mux",
                "-mux-proto",
                "smux",
                "-udp",
            ],
            "-udp and -mux-proto smux exclude each other",
        ),
        (vec!["client", "-b", "127.0.0.1:0"], "missing -s"),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-disable-tls",
                "-no-resume",
            ],
            "-disable-tls makes no TLS hello: drop -tls12, -ech-config, -ech-dns and -no-resume",
        ),
        (
            vec!["server", "-b", "127.0.0.1:0", "-d", "a:1", "-fwmark", "-3"],
            "-fwmark must be a 32-bit mark",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-fwmark",
                "mark",
            ],
            "-fwmark: invalid number 'mark'",
        ),
        (vec!["server", "-b", "127.0.0.1:0"], "missing -d"),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-accept-proxy-protocol",
            ],
            "-accept-proxy-protocol needs -trusted-proxy",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-trusted-proxy",
                "10.0.0.0/33",
            ],
            "-trusted-proxy: '10.0.0.0/33' is not an address or CIDR",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-trusted-proxy",
                "10.0.0.1",
                "-trusted-proxy-header",
                "Via",
            ],
            "-trusted-proxy-header: 'Via' is not X-Forwarded-For, X-Real-IP or Forwarded",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss",
                "-wss-header",
                "Host: x",
            ],
            "-wss-header: Host belongs to the WebSocket handshake and cannot be set; use -wss-host",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss",
                "-wss-header",
                "novalue",
            ],
            "-wss-header must be 'Name: value'",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss",
                "-wss-header",
                "Sec-WebSocket-Protocol: x",
            ],
            "-wss-header: Sec-WebSocket-Protocol belongs to the WebSocket handshake",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss",
                "-wss-host",
                "a.b:443",
            ],
            "-wss-host must be a host name",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss",
                "-wss-path",
                "/ws?ed=x",
            ],
            "-wss-path: ed= must be a number of bytes from 1 to 8192",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss",
                "-mux",
                "-wss-path",
                "/ws?ed=100",
            ],
            "-wss-path ?ed= (early data) and -mux exclude each other",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-users-redis",
                "redis://127.0.0.1:6379/0",
                "-users-file",
                "u.json",
            ],
            "-users-file and -users-redis exclude each other",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-users-redis",
                "http://127.0.0.1:6379",
            ],
            "-users-redis: 'http://127.0.0.1:6379' is not a Redis URL",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-users-redis",
                "redis://a:b:c:d",
            ],
            "-users-redis: 'redis://a:b:c:d' is not a Redis URL",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-users-redis-prefix",
                "x:",
            ],
            "-users-redis-prefix needs -users-redis",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-users-redis",
                "redis://127.0.0.1:6379",
                "-users-redis-resync",
                "0s",
            ],
            "-users-redis-resync must be greater than zero",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-acme",
                "mtt.test",
                "-cert",
                "c",
                "-key",
                "k",
            ],
            "-acme and -cert/-key exclude each other",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-acme-email",
                "a@b.test",
            ],
            "-acme-email needs -acme",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-acme",
                "127.0.0.1",
            ],
            "-acme: '127.0.0.1' is not a DNS name",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-acme",
                "*.mtt.test",
            ],
            "-acme: '*.mtt.test' is not a DNS name",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-acme",
                "mtt.test",
                "-acme-directory",
                "http://127.0.0.1/dir",
            ],
            "-acme-directory: 'http://127.0.0.1/dir' must be an https:// URL",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-acme",
                "mtt.test",
                "-disable-tls",
            ],
            "-acme and -disable-tls exclude each other",
        ),
        (vec!["server", "-d", "a:1"], "missing -b"),
        (
            vec!["client", "-b", "nonsense", "-s", "a:1"],
            "-b: invalid address",
        ),
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "::1:443"],
            "-s: invalid address",
        ),
        (
            vec!["server", "-b", "127.0.0.1:0", "-d", "host:99999"],
            "-d: invalid address",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-timeout",
                "300",
            ],
            "-timeout",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-timeout",
                "5 minutes",
            ],
            "-timeout",
        ),
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "a:1", "-timeout", "0s"],
            "-timeout",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-handshake-timeout",
                "0s",
            ],
            "-handshake-timeout must be greater than zero",
        ),
        (
            vec![
                "mu-server",
                "-b",
                "127.0.0.1:0",
                "-handshake-timeout",
                "soon",
            ],
            "-handshake-timeout",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-mux",
                "-mux-idle",
                "10",
            ],
            "-mux-idle",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-mux-max-stream",
                "17",
            ],
            "-mux-max-stream",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-mux-max-stream",
                "x",
            ],
            "-mux-max-stream",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-mux",
                "-mux-proto",
                "smux2",
            ],
            "-mux-proto must be yamux (mtt servers), smux (mos-tls-tunnel servers) or mux.cool",
        ),
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "a:1", "-sv=maybe"],
            "-sv",
        ),
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "a:1", "-sv", "false"],
            "-sv=false",
        ),
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "a:1", "-timeout"],
            "-timeout needs a value",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-sv",
                "-cert-sha256",
                "ab",
            ],
            "-cert-sha256",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-cert-sha256",
                "abcd",
            ],
            "-cert-sha256",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-ca",
                "/nonexistent/ca.pem",
            ],
            "-ca /nonexistent/ca.pem",
        ),
        (
            vec!["client", "-b", "127.0.0.1:0", "-s", "a:1", "-ca", &garbage],
            "-ca",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-n",
                "bad name!",
            ],
            "-n",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-wss-path",
                "/a b",
            ],
            "-wss-path",
        ),
        (
            vec![
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "a:1",
                "-fallback-dns",
                "dns.example",
            ],
            "-fallback-dns must be an IP address",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-cert",
                "/nonexistent/c.pem",
                "-key",
                "/nonexistent/k.pem",
            ],
            "-cert /nonexistent/c.pem",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-cert",
                &garbage,
                "-key",
                &garbage,
            ],
            "-cert",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-cert",
                &dirpath,
                "-key",
                &dirpath,
            ],
            "-cert",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-cert",
                &garbage,
            ],
            "-cert was given without -key",
        ),
        (
            vec!["server", "-b", "127.0.0.1:0", "-d", "a:1", "-key", &garbage],
            "-key was given without -cert",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-fallback",
                "b:1",
            ],
            "-fallback needs -wss",
        ),
        (
            vec![
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                "a:1",
                "-wss",
                "-fallback",
                "nope",
            ],
            "-fallback: invalid address",
        ),
        (vec!["cert"], "missing -n"),
        (vec!["bench", "-size", "0"], "-size"),
        (vec!["frobnicate"], "unknown command"),
    ];
    for (args, needle) in cases {
        let (code, stdout, stderr) = run(&args);
        assert!(code != 0, "{args:?} must fail");
        assert_eq!(stdout, "", "{args:?}: nothing on stdout");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(needle),
            "{args:?}: expected '{needle}' in {stderr:?}"
        );
    }
}

#[tokio::test]
async fn go_style_command_lines_are_accepted_and_sigterm_exits_cleanly() {
    bounded(async {
        let mut p = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "--b=127.0.0.1:0",
                "-s",
                "127.0.0.1:9",
                "-sv=true",
                "-timeout",
                "1h30m",
                "-mux-max-stream=0x10",
                "-verbose",
                "-n=example.com",
            ],
        );
        p.listening_addr().await;
        p.signal("TERM");
        let status = p.exit().await;
        assert_eq!(status.code(), Some(0), "{:?}", p.seen);
    })
    .await;
}

/// `mtt cert` → `mtt server -cert -key` → `mtt client -cert-sha256`, three real processes.
#[tokio::test]
async fn processes_end_to_end_with_a_pinned_certificate() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let out = path_str(dir.path());
        let (code, stdout, stderr) = run(&["cert", "-n", "localhost", "-out", &out]);
        assert_eq!(code, 0, "{stderr}");
        let pin = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SHA-256: "))
            .expect("pin printed")
            .to_string();
        // Writing again refuses to overwrite.
        let (code, _, stderr) = run(&["cert", "-n", "localhost", "-out", &out]);
        assert_ne!(code, 0);
        assert!(stderr.contains("localhost.key"), "{stderr}");
        let cert = format!("{out}/localhost.crt");
        let key = format!("{out}/localhost.key");

        let echo = echo_server().await;
        let echo_s = echo.to_string();
        let mut server = Proc::spawn(
            &mtt_bin(),
            &[
                "server",
                "-b",
                "127.0.0.1:0",
                "-d",
                &echo_s,
                "-cert",
                &cert,
                "-key",
                &key,
                "-verbose",
            ],
        );
        let server_addr = server.listening_addr().await.to_string();
        let mut client = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &server_addr,
                "-n",
                "localhost",
                "-cert-sha256",
                &pin,
                "-verbose",
            ],
        );
        let client_addr = client.listening_addr().await;
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let data = random_bytes(2 * 1024 * 1024 + i as usize, 100 + i);
            tasks.push(tokio::spawn(async move {
                echo_roundtrip(client_addr, &data).await
            }));
        }
        for t in tasks {
            t.await.expect("transfer");
        }
        client.signal("TERM");
        server.signal("INT");
        assert_eq!(client.exit().await.code(), Some(0));
        assert_eq!(server.exit().await.code(), Some(0));
    })
    .await;
}

#[tokio::test]
async fn self_signed_server_prints_its_pin_once() {
    bounded(async {
        let echo = echo_server().await.to_string();
        let mut server = Proc::server(&echo, &["-verbose"]);
        let warn = server.wait_line("self-signed certificate").await;
        let pin = warn.rsplit(' ').next().expect("pin").to_string();
        assert_eq!(pin.len(), 64, "{warn}");
        let server_addr = server.listening_addr().await.to_string();
        // Without -sv or a pin the client refuses the server, closes the local connection
        // and says why, once.
        let mut refusing = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &server_addr,
                "-verbose",
            ],
        );
        let refusing_addr = refusing.listening_addr().await;
        let mut s = tokio::net::TcpStream::connect(refusing_addr)
            .await
            .expect("connect");
        assert_eq!(drain(&mut s).await.0, 0);
        let why = refusing.wait_line("TLS handshake with server").await;
        assert!(why.contains("UnknownIssuer"), "{why}");
        assert!(
            why.contains("use -ca FILE, or -cert-sha256 PIN"),
            "the first mistake gets its fix: {why}"
        );
        let mut client = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &server_addr,
                "-cert-sha256",
                &pin,
                "-verbose",
            ],
        );
        let client_addr = client.listening_addr().await;
        echo_roundtrip(client_addr, &random_bytes(1 << 20, 42)).await;
        assert_eq!(
            server
                .seen
                .iter()
                .filter(|l| l.contains("self-signed certificate"))
                .count(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn unix_socket_listener_replaces_only_sockets() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tmp");
        let sock = dir.path().join("mtt.sock");
        let sock_s = path_str(&sock);
        let echo = echo_server().await.to_string();
        // A socket file left behind (nobody listens on it) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
        assert!(sock.exists());
        for round in 0..2 {
            let mut server = Proc::spawn(
                &mtt_bin(),
                &[
                    "server",
                    "-bind-unix",
                    "-b",
                    &sock_s,
                    "-d",
                    &echo,
                    "-disable-tls",
                    "-verbose",
                ],
            );
            server.wait_line("server listening on").await;
            let s = tokio::net::UnixStream::connect(&sock)
                .await
                .expect("connect unix");
            echo_over(s, &random_bytes(512 * 1024, round)).await;
            // A second server on the same path is refused while the first one listens.
            let (code, _, stderr) = run(&[
                "server",
                "-bind-unix",
                "-b",
                &sock_s,
                "-d",
                &echo,
                "-disable-tls",
            ]);
            assert_eq!(code, 2, "{stderr}");
            assert!(stderr.contains("another process is listening"), "{stderr}");
            let s = tokio::net::UnixStream::connect(&sock)
                .await
                .expect("the first still answers");
            echo_over(s, &random_bytes(1024, 9)).await;
            server.signal("TERM");
            assert_eq!(server.exit().await.code(), Some(0));
            assert!(!sock.exists(), "the socket file is removed on exit");
        }
        // A regular file in the way is reported and left alone (never a recursive delete).
        let file = dir.path().join("precious");
        std::fs::write(&file, "keep me").expect("write");
        let (code, _, stderr) = run(&[
            "server",
            "-bind-unix",
            "-b",
            &path_str(&file),
            "-d",
            &echo,
            "-disable-tls",
        ]);
        assert_ne!(code, 0);
        assert!(stderr.contains("not a socket"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(&file).expect("still there"),
            "keep me"
        );
    })
    .await;
}

#[test]
fn install_script_into_destdir_and_uninstall() {
    let root = tempfile::tempdir().expect("tmp");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/install.sh");
    let install = || {
        let out = Command::new("sh")
            .arg(script)
            .env("DESTDIR", root.path())
            .env("PREFIX", "/opt/mtt")
            .env("MTT_BIN", mtt_bin())
            .bounded_output();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install();
    install(); // idempotent
    let prefix = root.path().join("opt/mtt");
    let bin = prefix.join("bin");
    for link in ["mtt-client", "mtt-server", "mtt-mu-server"] {
        let out = Command::new(bin.join(link)).arg("-h").bounded_output();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("Usage: {link}")));
        // Its unit starts it from this prefix, not from the packaged /usr/bin.
        let unit = if link == "mtt-mu-server" {
            format!("{link}.service")
        } else {
            format!("{link}@.service")
        };
        let text = std::fs::read_to_string(prefix.join("lib/systemd/system").join(&unit))
            .expect("unit installed");
        assert!(
            text.contains(&format!("ExecStart=/opt/mtt/bin/{link} ")),
            "{unit}: {text}"
        );
    }
    for example in ["client", "server", "mu-server"] {
        let path = prefix.join(format!("share/doc/mtt/examples/{example}-example.env"));
        let text = std::fs::read_to_string(&path).expect("example installed");
        assert!(text.contains("MTT_ARGS="), "{}", path.display());
    }
    let out = Command::new("sh")
        .args([script, "--uninstall"])
        .env("DESTDIR", root.path())
        .env("PREFIX", "/opt/mtt")
        .bounded_output();
    assert!(out.status.success());
    assert_eq!(
        files_under(root.path()),
        Vec::<String>::new(),
        "uninstall leaves nothing"
    );
}

/// Every file or link below `dir`, relative to it (directories themselves are not listed).
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            if entry.file_type().expect("file type").is_dir() {
                todo.push(path);
            } else {
                found.push(path.strip_prefix(dir).expect("below").display().to_string());
            }
        }
    }
    found
}

/// The README's first command, small: tunnels on loopback, verified, with a table.
#[test]
fn bench_runs_end_to_end_and_verifies() {
    let (code, stdout, stderr) = run(&["bench", "-size", "8", "-streams", "4", "-conns", "10"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("direct"), "{stdout}");
    let tls = stdout
        .lines()
        .find(|l| l.starts_with("tls "))
        .expect("a tls row");
    let up: f64 = tls
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(up > 0.0, "{tls}");
    assert!(stdout.contains("verified"), "{stdout}");
    // 8 MiB move in well under a second of CPU: the CPU columns are said to be rough.
    assert!(stdout.contains("take them as rough"), "{stdout}");
    // Not a terminal here: the progress is a line per step, no control characters.
    assert!(
        !stderr.contains('\r') && stderr.contains("single stream up"),
        "{stderr}"
    );
    // The table is the whole output: no certificate warnings from the tunnels it starts.
    assert!(
        !stderr.contains("WARN") && !stderr.contains("self-signed"),
        "{stderr}"
    );
}

/// The systemd units pass `systemd-analyze verify` without a warning, and are hardened.
#[test]
fn systemd_units_verify_and_are_hardened() {
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/systemd");
    let dir = tempfile::tempdir().expect("tmp");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    for link in ["mtt-client", "mtt-server", "mtt-mu-server"] {
        std::os::unix::fs::symlink(mtt_bin(), bin.join(link)).expect("link");
    }
    let mut paths = Vec::new();
    for (file, instance) in [
        ("mtt-server@.service", "mtt-server@main.service"),
        ("mtt-client@.service", "mtt-client@main.service"),
        ("mtt-mu-server.service", "mtt-mu-server.service"),
    ] {
        let text = std::fs::read_to_string(format!("{units}/{file}")).expect("read unit");
        for key in [
            "DynamicUser=yes",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=",
        ] {
            assert!(text.contains(key), "{file} lacks {key}");
        }
        if file != "mtt-client@.service" {
            assert!(
                text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
                "{file}"
            );
            assert!(
                text.contains("CapabilityBoundingSet=CAP_NET_BIND_SERVICE"),
                "{file}"
            );
        }
        assert!(
            text.contains("ExecStart=/usr/bin/mtt-"),
            "{file}: packaged path"
        );
        let local = text.replace("/usr/bin/mtt-", &format!("{}/mtt-", bin.display()));
        let path = dir.path().join(instance);
        std::fs::write(&path, local).expect("write");
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&paths)
        .bounded_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.trim(), "", "no warnings");
}

/// `mtt cert -out DIR` makes DIR (0700) when it does not exist, and refuses a name no
/// client would accept, as the client's -n does.
#[test]
fn cert_makes_its_directory_and_checks_the_name() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("etc/mtt");
    let (code, stdout, stderr) = run(&["cert", "-n", "tunnel.example", "-out", &path_str(&out)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("SHA-256: "), "{stdout}");
    assert!(out.join("tunnel.example.key").exists());
    let mode = std::fs::metadata(&out).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let (code, _, stderr) = run(&["cert", "-n", "bad name!", "-out", &path_str(&out)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("neither a DNS name nor an IP address"),
        "{stderr}"
    );
    assert!(!out.join("bad name!.crt").exists());
    // A second run does not overwrite the pair, and says what to do.
    let key = std::fs::read(out.join("tunnel.example.key")).expect("key");
    let (code, _, stderr) = run(&["cert", "-n", "tunnel.example", "-out", &path_str(&out)]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("exists and is not overwritten: remove it, or choose another -out"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(out.join("tunnel.example.key")).expect("key"),
        key
    );
}

/// `packaging/install.sh` run from another directory finds the binary of its own source tree
/// (target/release/mtt beside the script's packaging/), not one relative to the caller.
#[test]
fn install_script_finds_its_tree_from_anywhere() {
    let tree = tempfile::tempdir().expect("tmp");
    let packaging = tree.path().join("packaging");
    std::fs::create_dir_all(packaging.join("systemd")).expect("mkdir");
    std::fs::create_dir_all(tree.path().join("target/release")).expect("mkdir");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");
    std::fs::copy(format!("{src}/install.sh"), packaging.join("install.sh")).expect("cp");
    for f in std::fs::read_dir(format!("{src}/systemd")).expect("units") {
        let f = f.expect("entry").path();
        std::fs::copy(
            &f,
            packaging.join("systemd").join(f.file_name().expect("name")),
        )
        .expect("cp");
    }
    std::fs::copy(mtt_bin(), tree.path().join("target/release/mtt")).expect("cp binary");
    let root = tempfile::tempdir().expect("tmp");
    let elsewhere = tempfile::tempdir().expect("tmp");
    let out = Command::new("sh")
        .arg(packaging.join("install.sh"))
        .current_dir(elsewhere.path())
        .env("DESTDIR", root.path())
        .env("PREFIX", "/opt/mtt")
        .env_remove("MTT_BIN")
        .bounded_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.path().join("opt/mtt/bin/mtt").exists());
}

/// Output to a reader that has gone (`mtt cert … | head -1`) ends the command quietly, exit 0,
/// never with a panic; the files are written all the same.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tmp");
    for args in [
        vec![
            "cert",
            "-n",
            "h.example",
            "-out",
            dir.path().to_str().expect("utf-8"),
        ],
        vec!["--help"],
        vec!["client", "-h"],
    ] {
        let mut child = Command::new(mtt_bin())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        // The reader goes before the first line is written.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(dir.path().join("h.example.key").exists());
}

/// A client whose -n is not a name of the server's certificate is told the certificate's
/// names and its own -n, in words.
#[tokio::test]
async fn a_wrong_name_is_said_in_names() {
    bounded(async {
        let (_dir, cert, key, _pin) = self_signed_files("tunnel.test");
        let echo = echo_server().await.to_string();
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
            ],
        );
        let addr = server.listening_addr().await.to_string();
        let mut client = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                &addr,
                "-n",
                "wrong.test",
                "-ca",
                &path_str(&cert),
            ],
        );
        let local = client.listening_addr().await;
        let mut s = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect");
        assert_eq!(drain(&mut s).await.0, 0);
        let why = client.wait_line("TLS handshake with server").await;
        assert!(
            why.contains("the certificate is for tunnel.test, -n is wrong.test"),
            "{why}"
        );
        client.signal("KILL");
        client.exit().await;
        server.signal("KILL");
        server.exit().await;
    })
    .await;
}

/// A client whose -s is its own -b is refused at start (it dialled itself on the first
/// connection until it ran out of descriptors).
#[test]
fn a_client_that_would_dial_itself_is_refused() {
    let port = free_port().to_string();
    for (b, s) in [
        (format!("127.0.0.1:{port}"), format!("127.0.0.1:{port}")),
        (format!("127.0.0.1:{port}"), format!("localhost:{port}")),
    ] {
        let (code, _, err) = run(&["client", "-b", &b, "-s", &s, "-sv"]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("is this client's own -b"), "{err}");
    }
}

/// A port in use names the flag it was given with, and the fix.
#[test]
fn a_port_in_use_names_its_flag() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let metrics = format!("127.0.0.1:{port}");
    let (code, _, err) = run(&[
        "server",
        "-b",
        "127.0.0.1:0",
        "-d",
        "127.0.0.1:1",
        "-n",
        "x.test",
        "-metrics",
        &metrics,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("-metrics: listen on") && err.contains("another process holds the port"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "mu-server",
        "-b",
        "127.0.0.1:0",
        "-c",
        &metrics,
        "-c-token",
        "t",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("-c: listen on"), "{err}");
}

/// A `-fallback-dns` server that fails is named as DNS and by its flag (it read "connect to
/// server …: connect timed out").
#[tokio::test]
async fn a_failing_fallback_dns_is_named() {
    bounded(async {
        // Answers every query with SERVFAIL.
        let dns = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dns_addr = dns.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = dns.recv_from(&mut buf).await {
                if n >= 12 {
                    buf[2] |= 0x80;
                    buf[3] = (buf[3] & 0xf0) | 2;
                    let _ = dns.send_to(&buf[..n], from).await;
                }
            }
        });
        let mut client = Proc::spawn(
            &mtt_bin(),
            &[
                "client",
                "-b",
                "127.0.0.1:0",
                "-s",
                "tunnel.test:443",
                "-sv",
                "-fallback-dns",
                &dns_addr,
            ],
        );
        let local = client.listening_addr().await;
        let mut s = tokio::net::TcpStream::connect(local)
            .await
            .expect("connect");
        assert_eq!(drain(&mut s).await.0, 0);
        let line = client.wait_line("through -fallback-dns").await;
        assert!(
            line.contains("tunnel.test") && line.contains(&dns_addr),
            "{line}"
        );
        client.signal("KILL");
        client.exit().await;
    })
    .await;
}
