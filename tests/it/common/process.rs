//! Processes: mtt and the real peers, spawned with their output read line by line and every run bounded in time.

use super::*;

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
        Self::client_named(server, "127.0.0.1", pin, extra)
    }

    /// `mtt client -b 127.0.0.1:0 -s SERVER -n NAME -cert-sha256 PIN EXTRA…`.
    pub fn client_named(server: &str, name: &str, pin: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["client", "-b", "127.0.0.1:0", "-s", server, "-n", name];
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

    /// Every line the process printed, once it has exited: those seen and the rest.
    pub async fn all_lines(&mut self) -> Vec<String> {
        let mut lines = self.seen.clone();
        while let Some(l) = self.next_line().await {
            lines.push(l);
        }
        lines
    }

    /// Ends the process and tells, for each TLS handshake it logged (`-verbose`), in order,
    /// whether it resumed a session, and with early data.
    pub async fn resumptions(&mut self) -> Vec<Handshake> {
        self.signal("KILL");
        self.exit().await;
        self.all_lines()
            .await
            .iter()
            .filter(|l| l.contains(": TLS TLSv1_3"))
            .map(|l| {
                if l.ends_with(" resumed") {
                    Handshake::Resumed
                } else if l.ends_with(" resumed 0-RTT") {
                    Handshake::ZeroRtt
                } else {
                    Handshake::Full
                }
            })
            .collect()
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
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                while let Ok(l) = self.lines.try_recv() {
                    self.seen.push(l);
                }
                panic!(
                    "process did not exit within 20 s; its lines: {:?}",
                    self.seen
                )
            }
        }
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
        "ss-v2ray-plugin" => "shadowsocks-v2ray-plugin".into(),
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

/// Builds the Go program `tests/<dir>/main.go` with `go` into the test target directory as
/// `<dir>` (GOPATH mode, offline), with `env` added; `hint` says what to install when it fails.
pub fn go_build(go: &Path, dir: &str, env: &[(&str, &str)], hint: &str) -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let bin = tmp.join(dir);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/{dir}/main.go"));
    let out = std::process::Command::new(go)
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOCACHE", tmp.join(format!("gocache-{dir}")))
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: {hint}", go.display()));
    assert!(
        out.status.success(),
        "building tests/{dir} failed ({hint}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// What kind of TLS 1.3 handshake a server logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake: the certificate sent and checked.
    Full,
    /// A session resumed.
    Resumed,
    /// A session resumed, with the client's first bytes as early data.
    ZeroRtt,
}
