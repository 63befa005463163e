//! The shadowsocks hosts as users run them (shadowsocks-libev's `ss-server`/`ss-local`,
//! shadowsocks-rust's `ssserver`/`sslocal`) with any plugins, and SOCKS5 through them.

use super::*;
use std::time::Instant;

/// Retries a small echo through `addr` until it works (plugins say nothing when ready).
pub async fn until_echo_works(addr: SocketAddr, socks_to: Option<SocketAddr>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = async {
            let mut s = match socks_to {
                Some(dest) => socks5(addr, dest).await?,
                None => TcpStream::connect(addr).await?,
            };
            s.write_all(b"ready?").await?;
            let mut b = [0u8; 6];
            s.read_exact(&mut b).await?;
            // Through to the echo destination and back, unchanged.
            if &b != b"ready?" {
                return Err(std::io::Error::other(format!("echo came back as {b:?}")));
            }
            Ok::<_, std::io::Error>(())
        };
        if tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tunnel through {addr} never worked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SOCKS5 CONNECT (no authentication) to an IPv4 destination.
pub async fn socks5(proxy: SocketAddr, dest: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await?;
    if r != [5, 0] {
        return Err(std::io::Error::other(format!(
            "SOCKS5 method refused: {r:?}"
        )));
    }
    let std::net::IpAddr::V4(ip) = dest.ip() else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&ip.octets());
    req.extend_from_slice(&dest.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!(
            "SOCKS5 connect failed: {}",
            reply[1]
        )));
    }
    Ok(s)
}

/// shadowsocks-rust's `ssserver` and `sslocal` with `mtt-server` and `mtt-client` as
/// plugins; with `tcp_and_udp`, its plugin mode asks for SIP003u.
pub struct RustPair {
    _server: tokio::process::Child,
    _local: tokio::process::Child,
    /// sslocal's listening address (SOCKS5, or the tunnel with `forward`).
    pub local: SocketAddr,
    /// What ssserver and sslocal (and the plugins they start) printed.
    pub logs: tempfile::TempDir,
}

impl RustPair {
    /// Both hosts' output so far, for a failure's message.
    pub fn logs(&self) -> String {
        ["ssserver", "sslocal"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(self.logs.path().join(n)).unwrap_or_default();
                format!("--- {n} (with its plugin):\n{text}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A file for a host's output in `dir`.
pub fn log_file(dir: &tempfile::TempDir, name: &str) -> std::fs::File {
    std::fs::File::create(dir.path().join(name)).expect("log file")
}

pub fn rust_pair(
    server_bin: &Path,
    client_bin: &Path,
    server_opts: &str,
    client_opts: &str,
    udp: bool,
    forward: Option<SocketAddr>,
) -> RustPair {
    let ss = format!("127.0.0.1:{}", free_port());
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let common = ["-k", "mtt-test-secret", "-m", "chacha20-ietf-poly1305"];
    let mode: &[&str] = if udp {
        &["-U", "--plugin-mode", "tcp_and_udp"]
    } else {
        &[]
    };
    let logs = tempfile::tempdir().expect("tempdir");
    let mut server = tokio::process::Command::new("ssserver");
    server
        .args(["-s", &ss])
        .args(common)
        .args([
            "--plugin",
            &path_str(server_bin),
            "--plugin-opts",
            server_opts,
        ])
        .args(mode)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(log_file(&logs, "ssserver"))
        .kill_on_drop(true);
    let server = server
        .spawn()
        .expect("ssserver (bash .ci/install-test-deps installs shadowsocks-rust)");
    let mut sslocal = tokio::process::Command::new("sslocal");
    sslocal
        .args(["-b", &local.to_string(), "-s", &ss])
        .args(common)
        .args([
            "--plugin",
            &path_str(client_bin),
            "--plugin-opts",
            client_opts,
        ])
        .args(mode)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(log_file(&logs, "sslocal"))
        .kill_on_drop(true);
    if let Some(f) = forward {
        sslocal.args(["--protocol", "tunnel", "-f", &f.to_string()]);
    }
    let local_child = sslocal.spawn().expect("sslocal");
    RustPair {
        _server: server,
        _local: local_child,
        local,
        logs,
    }
}

/// shadowsocks-libev's `ss-server` and `ss-local` with these plugins and options; returns
/// them (killed when dropped) and ss-local's SOCKS5 address.
pub fn libev_pair(
    server_plugin: &Path,
    server_opts: &str,
    client_plugin: &Path,
    client_opts: &str,
) -> (tokio::process::Child, tokio::process::Child, SocketAddr) {
    let ss_port = free_port().to_string();
    let socks: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let common = ["-k", "mtt-test-secret", "-m", "chacha20-ietf-poly1305"];
    let spawn = |program: &str, addr: &[&str], plugin: &Path, opts: &str| {
        tokio::process::Command::new(program)
            .args(addr)
            .args(common)
            .args(["--plugin", &path_str(plugin), "--plugin-opts", opts])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} (bash .ci/install-test-deps installs shadowsocks-libev): {e}")
            })
    };
    let server = spawn(
        "ss-server",
        &["-s", "127.0.0.1", "-p", &ss_port],
        server_plugin,
        server_opts,
    );
    let socks_port = socks.port().to_string();
    let local = spawn(
        "ss-local",
        &[
            "-s",
            "127.0.0.1",
            "-p",
            &ss_port,
            "-b",
            "127.0.0.1",
            "-l",
            &socks_port,
        ],
        client_plugin,
        client_opts,
    );
    (server, local, socks)
}

/// `mtt-client` and `mtt-server` links to the binary, as a plugin host finds them.
pub fn links() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tmp");
    let client = dir.path().join("mtt-client");
    let server = dir.path().join("mtt-server");
    std::os::unix::fs::symlink(mtt_bin(), &client).expect("link");
    std::os::unix::fs::symlink(mtt_bin(), &server).expect("link");
    (dir, client, server)
}

/// dnsmasq (Debian's dnsmasq-base) answering on 127.0.0.1 at a free port with only what
/// `records` say (its own options: `--address=…`, `--dns-rr=…`); killed when dropped.
pub async fn dnsmasq(records: &[&str]) -> (tokio::process::Child, u16) {
    let port = free_port();
    let child = tokio::process::Command::new("dnsmasq")
        .args([
            "--no-daemon",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=root",
            "--pid-file=",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            &format!("--port={port}"),
        ])
        .args(records)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq (install dnsmasq-base)");
    // dnsmasq answers on TCP too; its TCP port accepting means it is up.
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port))).await;
    (child, port)
}
