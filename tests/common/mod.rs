//! Test helpers: certificates made with rcgen, loopback destinations (echo, reply-after-EOF,
//! paced download), in-process mtt server and client on 127.0.0.1:0, hashing and deadlines.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mtt::addr::HostPort;
pub use mtt::certs::CertSource;
use mtt::config::{ClientConfig, Listen, ServerConfig};
use mtt::role::client::Client;
use mtt::role::server::Server;
use mtt::transport::Listener;
use mtt::transport::options::{
    AcceptOptions, DEFAULT_TIMEOUTS, DialOptions, PathMatch, TlsClientOptions, Verify,
    WsClientOptions, WsServerOptions, normalize_path,
};
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Every test body runs under this bound.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Runs `fut` with [`LIMIT`], failing the test when it is exceeded.
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("test exceeded its time limit")
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    mtt::certs::fingerprint::sha256(data)
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn hp(s: impl ToString) -> HostPort {
    HostPort::parse("test", &s.to_string(), true).expect("address")
}

/// A CA and a leaf it signed for `localhost` and 127.0.0.1, written as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mtt test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("p");
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    let write = |name: &str, data: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).expect("write");
        p
    };
    let ca = write("ca.crt", ca_cert.pem());
    let cert = write("server.crt", format!("{}{}", leaf.pem(), ca_cert.pem()));
    let key = write("server.key", leaf_key.serialize_pem());
    Pki { dir, ca, cert, key }
}

/// Echoes every byte; on EOF from the peer, finishes writing and shuts down its side.
pub async fn echo_server() -> SocketAddr {
    serve_dest(|mut s| async move {
        let (mut r, mut w) = s.split();
        tokio::io::copy(&mut r, &mut w).await?;
        w.shutdown().await
    })
    .await
}

/// Reads to EOF, only then replies with the SHA-256 of what it read, then closes.
pub async fn reply_after_eof_server() -> SocketAddr {
    serve_dest(|mut s| async move {
        let mut all = Vec::new();
        s.read_to_end(&mut all).await?;
        s.write_all(&sha256(&all)).await?;
        s.shutdown().await
    })
    .await
}

/// Sends `chunks` chunks of 1 KiB, one every `every`, then closes; never reads.
pub async fn paced_server(chunks: usize, every: Duration) -> SocketAddr {
    serve_dest(move |mut s| async move {
        let mut tick = tokio::time::interval(every);
        for i in 0..chunks {
            tick.tick().await;
            s.write_all(&[i as u8; 1024]).await?;
        }
        s.shutdown().await
    })
    .await
}

/// Accepts forever, running `f` on each connection.
pub async fn serve_dest<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(f(s));
        }
    });
    addr
}

/// A running in-process server.
pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: Option<String>,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

pub fn server_config(dest: SocketAddr, tls: Option<CertSource>, timeout: Duration) -> ServerConfig {
    ServerConfig {
        proxy_protocol: false,
        listen: Listen::Tcp(hp("127.0.0.1:0")),
        dest: hp(dest),
        accept: AcceptOptions {
            trusted: Default::default(),
            tls,
            ws: None,
            mux: false,
            timeouts: DEFAULT_TIMEOUTS,
            session_idle: timeout,
            udp: false,
        },
        fast_open: false,
        fallback_dns: None,
        drain: Duration::from_secs(30),
        max_conns: 0,
        timeout,
        udp_timeout: Duration::from_secs(60),
    }
}

pub async fn start_server(cfg: ServerConfig) -> Running {
    let server = Server::new(cfg).expect("server");
    let fingerprint = server.fingerprint();
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let run = server.run(Listener::Tcp(l), shutdown.clone());
    let done = tokio::spawn(async move { run.await.expect("server ran") });
    Running {
        addr,
        fingerprint,
        shutdown,
        done,
    }
}

pub fn client_config(
    server: SocketAddr,
    name: &str,
    verify: Verify,
    timeout: Duration,
) -> ClientConfig {
    ClientConfig {
        listen: hp("127.0.0.1:0"),
        dial: DialOptions {
            server: hp(server),
            tls: TlsClientOptions {
                server_name: name.into(),
                verify,
            },
            ws: None,
            mux: None,
            fast_open: false,
            fallback_dns: None,
            protect: None,
            timeouts: DEFAULT_TIMEOUTS,
        },
        drain: Duration::from_secs(30),
        max_conns: 0,
        timeout,
        udp: None,
    }
}

pub async fn start_client(cfg: ClientConfig) -> Running {
    let client = Client::new(cfg).expect("client");
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let done = tokio::spawn(client.run(Listener::Tcp(l), shutdown.clone()));
    Running {
        addr,
        fingerprint: None,
        shutdown,
        done,
    }
}

pub fn pin_of(r: &Running) -> Verify {
    Verify::Pin(mtt::config::parse_pin(r.fingerprint.as_deref().expect("tls")).expect("pin"))
}

/// A self-signed server → echo, and a client pinned to it; returns the client's address.
pub async fn tunnel_to(dest: SocketAddr, timeout: Duration) -> (Running, Running) {
    let server = start_server(server_config(
        dest,
        Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        timeout,
    ))
    .await;
    let client = start_client(client_config(
        server.addr,
        "127.0.0.1",
        pin_of(&server),
        timeout,
    ))
    .await;
    (server, client)
}

/// Sends `data` through `addr` to an echo destination while reading the echo, half-closes,
/// and checks that exactly `data` came back.
pub async fn echo_roundtrip(addr: SocketAddr, data: &[u8]) {
    let s = TcpStream::connect(addr).await.expect("connect");
    echo_over(s, data).await;
}

/// The echo check of [`echo_roundtrip`] over any stream.
pub async fn echo_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(s: S, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
    };
    let recv = async {
        let mut back = Vec::with_capacity(data.len());
        r.read_to_end(&mut back).await.expect("read");
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert_eq!(back.len(), data.len(), "echo length");
    assert_eq!(sha256(&back), sha256(data), "echo content");
}

/// Reads until EOF or error; returns (bytes read, whether it ended by EOF).
pub async fn drain(s: &mut TcpStream) -> (usize, bool) {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await {
            Ok(0) => return (n, true),
            Ok(k) => n += k,
            Err(_) => return (n, false),
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// A spawned `mtt` (or other) process whose stderr/stdout lines are collected as they come.
pub struct Proc {
    pub child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

pub fn mtt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mtt"))
}

impl Proc {
    /// Spawns `program args…`, reading stdout and stderr line by line.
    pub fn spawn(program: &Path, args: &[&str]) -> Proc {
        Self::spawn_env(program, args, &[])
    }

    /// `mtt server -b 127.0.0.1:0 -d DEST -n 127.0.0.1 EXTRA…` (a self-signed certificate for
    /// 127.0.0.1, a port of its choosing).
    pub fn server(dest: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["server", "-b", "127.0.0.1:0", "-d", dest, "-n", "127.0.0.1"];
        args.extend_from_slice(extra);
        Self::spawn(&mtt_bin(), &args)
    }

    /// `mtt client -b 127.0.0.1:0 -s SERVER -n 127.0.0.1 -cert-sha256 PIN EXTRA…`.
    pub fn client(server: &str, pin: &str, extra: &[&str]) -> Proc {
        let mut args = vec![
            "client",
            "-b",
            "127.0.0.1:0",
            "-s",
            server,
            "-n",
            "127.0.0.1",
        ];
        args.extend_from_slice(&["-cert-sha256", pin]);
        args.extend_from_slice(extra);
        Self::spawn(&mtt_bin(), &args)
    }

    /// [`Proc::spawn`] with these variables added to the child's environment.
    pub fn spawn_env(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Self::spawn_opts(program, args, env, None)
    }

    /// [`Proc::spawn`] in the working directory `dir`.
    pub fn spawn_in(program: &Path, args: &[&str], dir: &Path) -> Proc {
        Self::spawn_opts(program, args, &[], Some(dir))
    }

    /// [`Proc::spawn`] with these variables added, in the working directory `dir` if given.
    pub fn spawn_opts(
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        dir: Option<&Path>,
    ) -> Proc {
        let mut cmd = tokio::process::Command::new(program);
        // Whatever a process keeps in its state directory (a mu-server's made token) stays
        // in the build's scratch space, unless the test says where.
        cmd.env(
            "XDG_STATE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("state"),
        );
        cmd.envs(env.iter().copied());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for pipe in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut r = tokio::io::BufReader::new(pipe).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a line containing `needle`; returns it.
    pub async fn wait_line(&mut self, needle: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Ok(None) => panic!(
                    "process ended before printing '{needle}'; output: {:?}",
                    self.seen
                ),
                Err(_) => panic!(
                    "no line with '{needle}' within 20 s; output: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// The next line the process prints (`None` once both pipes are closed).
    pub async fn next_line(&mut self) -> Option<String> {
        self.lines.recv().await
    }

    /// The SHA-256 pin a self-signed server prints in its warning line.
    pub async fn pin(&mut self) -> String {
        let line = self.wait_line("self-signed").await;
        line.rsplit(' ').next().expect("pin").to_string()
    }

    /// The address in a "listening on ADDR," line.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        self.addr_after("listening on ").await
    }

    /// The address that follows `needle` in the first line containing it ("controller on ",
    /// "metrics at http://"): what a process bound when given port 0.
    pub async fn addr_after(&mut self, needle: &str) -> SocketAddr {
        let line = self.wait_line(needle).await;
        let rest = line.split(needle).nth(1).expect("addr");
        let addr = rest.split([',', ' ', '/']).next().expect("addr");
        addr.parse()
            .unwrap_or_else(|e| panic!("bad address in '{line}': {e}"))
    }

    /// Sends a signal (`TERM`, `HUP`, `KILL`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let signal: nix::sys::signal::Signal = format!("SIG{sig}").parse().expect("signal name");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .unwrap_or_else(|e| panic!("kill -{sig} {pid}: {e}"));
    }

    /// Waits (bounded) for the exit status.
    pub async fn exit(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("process did not exit within 20 s")
            .expect("wait")
    }
}

/// A WebSocket server (self-signed) → `dest`, and a pinned client; paths as users give them.
pub async fn wss_tunnel_to(
    dest: SocketAddr,
    timeout: Duration,
    server_path: &str,
    client_path: &str,
) -> (Running, Running) {
    let mut scfg = server_config(
        dest,
        Some(CertSource::SelfSigned(Some("127.0.0.1".into()))),
        timeout,
    );
    scfg.accept.ws = Some(WsServerOptions::new(PathMatch::new(server_path), None));
    let server = start_server(scfg).await;
    let client = start_client(wss_client_config(
        server.addr,
        pin_of(&server),
        client_path,
        timeout,
    ))
    .await;
    (server, client)
}

pub fn wss_client_config(
    server: SocketAddr,
    verify: Verify,
    path: &str,
    timeout: Duration,
) -> ClientConfig {
    let mut c = client_config(server, "127.0.0.1", verify, timeout);
    c.dial.ws = Some(WsClientOptions {
        path: normalize_path(path),
        host: "127.0.0.1".into(),
        ..Default::default()
    });
    c
}

/// Connects once `addr` accepts, retrying for up to 10 s (for servers that cannot say when
/// they are ready, such as nginx).
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port, bound and released: only for programs that must be told a port
/// (nginx, dnsmasq, openssl, shadowsocks hosts' SS_* ports). mtt itself is started on port 0
/// and asked what it bound ([`Proc::listening_addr`], [`Proc::addr_after`]).
pub fn free_port() -> u16 {
    dead_addr().port()
}

/// A loopback address nobody listens on (bound, noted, released).
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A self-signed certificate for `name` written to PEM files: (dir, cert, key, SHA-256).
pub fn self_signed_files(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let ss = mtt::certs::pem::self_signed(Some(name)).expect("cert");
    let cert = dir.path().join("c.pem");
    let key = dir.path().join("k.pem");
    std::fs::write(&cert, &ss.cert_pem).expect("write cert");
    std::fs::write(&key, &ss.key_pem).expect("write key");
    (dir, cert, key, ss.cert_key.fingerprint())
}

/// Asserts that the connection to `addr` is closed by the other side within 2 s, unused.
pub async fn closed_promptly(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let start = std::time::Instant::now();
    assert_eq!(drain(&mut s).await.0, 0);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

/// nginx from Debian, run in the foreground with its own configuration in a temp dir.
pub struct Nginx {
    pub dir: tempfile::TempDir,
    site: Option<tempfile::TempDir>,
    child: std::process::Child,
}

impl Nginx {
    /// Starts nginx with `http_block` (the inside of `http { }`); waits until `port` accepts.
    pub async fn start(http_block: &str, port: u16) -> Nginx {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\nevents {{ worker_connections 512; }}\nhttp {{\naccess_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\nfastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n{http_block}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = std::process::Command::new("nginx")
            .args(["-c", &path_str(&path), "-p", &path_str(dir.path())])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start nginx (install the nginx package)");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port))).await;
        Nginx {
            dir,
            site: None,
            child,
        }
    }

    /// nginx serving `index_html` as a static site on a free loopback port; returns it and
    /// the port (the site's files live in nginx's temp dir).
    pub async fn static_site(index_html: &str) -> (Nginx, u16) {
        let port = free_port();
        let site = tempfile::tempdir().expect("tmp");
        std::fs::write(site.path().join("index.html"), index_html).expect("write");
        let mut nginx = Nginx::start(
            &format!(
                "server {{ listen 127.0.0.1:{port}; root {}; }}",
                site.path().display()
            ),
            port,
        )
        .await;
        nginx.site = Some(site);
        (nginx, port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Like [`echo_over`] without the half-close, for peers that close both ways on EOF
/// (shadowsocks): writes `data` while reading exactly as many bytes back.
pub async fn echo_exact<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(s: S, data: &[u8]) {
    let (mut r, mut w) = tokio::io::split(s);
    let send = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.expect("write");
        }
    };
    let recv = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.expect("read echo");
        back
    };
    let ((), back) = tokio::join!(send, recv);
    assert_eq!(sha256(&back), sha256(data), "echo content");
}

/// Writes `ping` and reads the echo; returns the round trip.
pub async fn ping(s: &mut TcpStream) -> Duration {
    let start = std::time::Instant::now();
    s.write_all(b"ping").await.expect("ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.expect("pong");
    assert_eq!(&b, b"ping");
    start.elapsed()
}

/// Whether `addr` still carries tunnels: a connection that echoes `ping` (through an echo
/// destination). A refused connection, or one to whatever else took the port since, is not.
pub async fn still_tunnels(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let attempt = async {
        s.write_all(b"ping").await.ok()?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.ok()?;
        (&b == b"ping").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Some(()))
    )
}

/// Descriptors open in process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What process `pid`'s descriptors are, one per line, for a failure's message: the target,
/// and for a TCP socket its local and remote address and state (from `/proc/<pid>/net/tcp*`).
pub fn describe_fds(pid: u32) -> String {
    let mut tcp = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let state = format!("local {} remote {} state {}", f[1], f[2], f[3]);
                tcp.insert(f[9].to_string(), state);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("? ({e})"));
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|i| tcp.get(i));
            let name = e.file_name().to_string_lossy().into_owned();
            match inode {
                Some(state) => out.push(format!("{name} -> {target} ({state})")),
                None => out.push(format!("{name} -> {target}")),
            }
        }
    }
    out.sort();
    out.join("\n")
}

/// The descriptors a process had before a test's load: how many, and what they were.
pub struct Baseline {
    count: usize,
    seen: String,
}

impl Baseline {
    pub fn of(pid: u32) -> Self {
        Baseline {
            count: open_fds(pid),
            seen: describe_fds(pid),
        }
    }
}

/// Waits (bounded) until `pid` has at most the baseline's descriptors open.
pub async fn back_to(pid: u32, base: &Baseline, who: &str, within: Duration) {
    let start = std::time::Instant::now();
    loop {
        let now = open_fds(pid);
        if now <= base.count {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{who}: {now} descriptors open, baseline {}:\n{}\nat the baseline:\n{}",
            base.count,
            describe_fds(pid),
            base.seen
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a helper program may run before it is killed and the test fails.
pub const CHILD_LIMIT: Duration = Duration::from_secs(30);

/// The Debian package that brings `program`, for the message when it is missing.
fn package_of(program: &std::ffi::OsStr) -> String {
    let name = Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.as_str() {
        "ss-server" | "ss-local" => "shadowsocks-libev".into(),
        "dnsmasq" => "dnsmasq-base".into(),
        "systemd-analyze" => "systemd".into(),
        "ip" | "tc" => "iproute2".into(),
        "nft" => "nftables".into(),
        other => other.into(),
    }
}

fn spawn_failed(program: &std::ffi::OsStr, e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::NotFound {
        panic!(
            "{} is not installed: run `bash .ci/install-test-deps` (Debian package {})",
            program.to_string_lossy(),
            package_of(program)
        );
    }
    panic!("start {}: {e}", program.to_string_lossy());
}

/// `output()` of a child process, bounded by [`CHILD_LIMIT`]: a program that hangs is killed
/// and fails the test instead of hanging it; a missing one names its package.
pub trait BoundedOutput {
    /// Runs to completion within [`CHILD_LIMIT`], with no standard input.
    fn bounded_output(&mut self) -> std::process::Output;
}

impl BoundedOutput for std::process::Command {
    fn bounded_output(&mut self) -> std::process::Output {
        use std::io::Read;
        let program = self.get_program().to_owned();
        let mut child = self
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| spawn_failed(&program, e));
        let pipe = |mut p: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        };
        let out = pipe(Box::new(child.stdout.take().expect("stdout")));
        let err = pipe(Box::new(child.stderr.take().expect("stderr")));
        let deadline = std::time::Instant::now() + CHILD_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} ran longer than {CHILD_LIMIT:?}",
                    program.to_string_lossy()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        std::process::Output {
            status,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        }
    }
}

/// The async form of [`BoundedOutput`], for tests on the runtime.
pub trait BoundedOutputAsync {
    /// Runs to completion within [`CHILD_LIMIT`], with no standard input.
    fn bounded_output(&mut self) -> impl Future<Output = std::process::Output>;
}

impl BoundedOutputAsync for tokio::process::Command {
    async fn bounded_output(&mut self) -> std::process::Output {
        let program = self.as_std().get_program().to_owned();
        let child = self
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| spawn_failed(&program, e));
        tokio::time::timeout(CHILD_LIMIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} ran longer than {CHILD_LIMIT:?}",
                    program.to_string_lossy()
                )
            })
            .expect("wait")
    }
}

/// One HTTP/1.1 request over plain HTTP, `headers` as lines each ending in CRLF; returns
/// (status, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(&raw).expect("HTTP response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("partial response: {}", String::from_utf8_lossy(&raw)),
    };
    (
        resp.code.unwrap_or(0),
        String::from_utf8_lossy(&raw[len..]).into_owned(),
    )
}

/// Reads an HTTP message head, byte by byte (nothing after it is taken), through its blank
/// line: what came, with the error if the stream failed or ended first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> (Vec<u8>, std::io::Result<()>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if let Err(e) = s.read_exact(&mut b).await {
            return (head, Err(e));
        }
        head.push(b[0]);
    }
    (head, Ok(()))
}

/// GET /metrics over plain HTTP.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("http");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Scrapes `/metrics` at `addr` until `ok` holds of the text (every 20 ms, for at most
/// `within`; `what` says in the failure what was awaited); returns that text.
pub async fn scrape_until(
    addr: SocketAddr,
    within: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}, not within {within:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of sample `name` (with its labels, as printed) in OpenMetrics `text`; 0 when
/// it is not there.
pub fn sample_of(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One tunnel through `client` to an echo destination: says hello, stays silent for `quiet`
/// (the subject of the test, not a wait for something), then says bye; whether the bye came
/// back.
pub async fn survives_silence(client: SocketAddr, quiet: Duration) -> bool {
    let mut s = TcpStream::connect(client).await.expect("connect");
    let mut b = [0u8; 5];
    s.write_all(b"hello").await.expect("write");
    s.read_exact(&mut b).await.expect("hello echoed");
    tokio::time::sleep(quiet).await;
    if s.write_all(b"bye!!").await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut b)).await,
        Ok(Ok(_)) if &b == b"bye!!"
    )
}
