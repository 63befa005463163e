//! The `mtt` command: dispatch on `argv[0]` (`mtt-client`, `mtt-server`, `mtt-mu-server`) or on
//! a subcommand, then validate, set up and run one role or tool, mapping errors to exit codes.

use std::ffi::OsString;
use std::path::Path;

use argh::FromArgs;
use tokio_util::sync::CancellationToken;

use crate::certs::pem as cert;
use crate::cli::{BenchArgs, CertArgs, ClientArgs, MuServerArgs, ServerArgs, Top};
use crate::config::{ClientConfig, ServerConfig};
use crate::goflag::{self, Parsed};
use crate::sip003;
use crate::{Error, Result, VERSION};

/// What argv asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `mtt client`, `mtt-client`.
    Client,
    /// `mtt server`, `mtt-server`.
    Server,
    /// `mtt mu-server`, `mtt-mu-server`.
    MuServer,
    /// `mtt cert`.
    Cert,
    /// `mtt bench`.
    Bench,
}

/// The outcome of looking at `argv[0]` and the first argument.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Run `Command` with this program name (for messages) and these arguments.
    Run(Command, String, Vec<String>),
    /// Print the top-level help (to stdout when asked for, else to stderr and fail).
    Help { asked: bool },
    /// Print the version.
    Version,
}

/// Decides what to run from argv. Link names win over subcommands, as in busybox.
pub fn dispatch(argv: &[String]) -> Result<Dispatch> {
    let argv0 = argv.first().map(String::as_str).unwrap_or("mtt");
    let base = Path::new(argv0)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(argv0);
    let base = base.strip_suffix(".exe").unwrap_or(base);
    let rest = argv.get(1..).unwrap_or_default();
    let by_link = match base {
        "mtt-client" => Some(Command::Client),
        "mtt-server" => Some(Command::Server),
        "mtt-mu-server" => Some(Command::MuServer),
        _ => None,
    };
    if let Some(cmd) = by_link {
        if matches!(rest, [v] if v == "--version" || v == "-version") {
            return Ok(Dispatch::Version);
        }
        return Ok(Dispatch::Run(cmd, base.to_string(), rest.to_vec()));
    }
    let Some(first) = rest.first() else {
        return Ok(Dispatch::Help { asked: false });
    };
    let cmd = match first.as_str() {
        "client" => Command::Client,
        "server" => Command::Server,
        "mu-server" => Command::MuServer,
        "cert" => Command::Cert,
        "bench" => Command::Bench,
        "-h" | "-help" | "--help" | "help" => return Ok(Dispatch::Help { asked: true }),
        "-version" | "--version" | "version" => return Ok(Dispatch::Version),
        other => {
            return Err(Error::usage(format!(
                "mtt: unknown command '{other}': expected client, server, mu-server, cert or bench (run 'mtt -h')"
            )));
        }
    };
    if matches!(&rest[1..], [v] if v == "--version" || v == "-version") {
        return Ok(Dispatch::Version);
    }
    Ok(Dispatch::Run(
        cmd,
        format!("mtt {first}"),
        rest[1..].to_vec(),
    ))
}

/// The top-level help: argh's list of commands plus the link names.
pub fn top_help() -> String {
    let text = match Top::from_args(&["mtt"], &["--help"]) {
        Err(e) => e.output,
        Ok(_) => String::new(),
    };
    format!(
        "{}\nThe same binary runs as mtt-client{x}, mtt-server{x} and mtt-mu-server{x} through links (or copies) of those names.\nRun 'mtt <command> -h' for the flags of a command.\n",
        goflag::single_dash_help(text.trim_end()).trim_end(),
        x = std::env::consts::EXE_SUFFIX
    )
}

/// Runs the process with its own arguments (as a Windows service, when the service manager
/// started it); returns the exit code.
pub fn entry() -> i32 {
    crate::sys::as_service_or(|| main(std::env::args_os().collect()))
}

/// Runs the process; returns the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let argv: Vec<String> = match args.into_iter().map(OsString::into_string).collect() {
        Ok(v) => v,
        Err(bad) => {
            eprintln!("mtt: argument {bad:?} is not valid UTF-8");
            return 2;
        }
    };
    let (cmd, prog, rest) = match dispatch(&argv) {
        Ok(Dispatch::Run(c, p, r)) => (c, p, r),
        Ok(Dispatch::Help { asked: true }) => {
            crate::say!("{}", top_help().trim_end());
            return 0;
        }
        Ok(Dispatch::Help { asked: false }) => {
            eprint!("{}", top_help());
            return 2;
        }
        Ok(Dispatch::Version) => {
            crate::say!("mtt {VERSION}");
            return 0;
        }
        Err(e) => {
            eprintln!("{}", e.report());
            return e.exit_code();
        }
    };
    match run(cmd, &prog, &rest) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{prog}: {}", e.report());
            e.exit_code()
        }
    }
}

macro_rules! parse_or_help {
    ($ty:ty, $prog:expr, $rest:expr) => {
        match goflag::parse::<$ty>($prog, $rest)? {
            Parsed::Args(a) => a,
            Parsed::Help(h) => {
                crate::say!("{}", h.trim_end());
                return Ok(());
            }
        }
    };
}

/// Plugin mode: the role's arguments from the SIP003 environment instead of argv.
fn plugin_args<T: argh::ArgsInfo + FromArgs>(
    prog: &str,
    rest: &[String],
    env: &sip003::PluginEnv,
    addrs: &[(&str, &str)],
) -> Result<(T, sip003::HostArgs)> {
    let mut host = sip003::host_args(prog, rest)?;
    let mut options = sip003::parse_options(env.options.as_deref().unwrap_or(""))?;
    let server = addrs.iter().any(|(flag, _)| *flag == "d");
    // A configuration made for v2ray-plugin runs with the same meaning (and, as there, no UDP).
    let v2ray = sip003::v2ray::is_v2ray(&options, server);
    if v2ray {
        // acme.sh's certificates are under the home: $HOME, or on Windows %USERPROFILE%.
        let home = std::env::var("HOME")
            .or_else(|_| std::env::var("USERPROFILE"))
            .ok();
        options = sip003::v2ray::translate(&options, server, home.as_deref(), &mut raw_ca)?;
        let said: Vec<String> = options
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect();
        host.read_as = Some(said.join(";"));
    }
    let (mut argv, vpn) = sip003::command_line::<T>(addrs, &options)?;
    host.vpn |= vpn;
    // SIP003u: UDP rides the plugin unless the options say udp=false.
    if !v2ray && !options.iter().any(|(k, _)| k == "udp") {
        argv.push("-udp".into());
    }
    if host.fast_open {
        argv.push("-fast-open".into());
    }
    match goflag::parse::<T>(prog, &argv)? {
        Parsed::Args(a) => Ok((a, host)),
        Parsed::Help(_) => Err(Error::usage("SS_PLUGIN_OPTIONS cannot ask for help")),
    }
}

/// v2ray-plugin's `certRaw` (a CA certificate's base64, for Android) as a PEM file for `-ca`,
/// kept for the life of the process.
fn raw_ca(body: &str) -> Result<String> {
    use std::io::Write;
    static KEPT: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    let mut file = tempfile::Builder::new()
        .prefix("mtt-ca-")
        .suffix(".pem")
        .tempfile()
        .map_err(|e| Error::io("certRaw: write the CA to a file", e))?;
    write!(
        file,
        "-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    )
    .map_err(|e| Error::io("certRaw: write the CA to a file", e))?;
    let path = file.path().display().to_string();
    let _ = KEPT.set(file);
    Ok(path)
}

/// Ties the plugin's life to its host.
fn enter_plugin_mode() {
    log::info!("running as a SIP003 plugin");
    crate::sys::exit_with_parent();
}

fn run(cmd: Command, prog: &str, rest: &[String]) -> Result<()> {
    let plugin = match cmd {
        Command::Client | Command::Server => sip003::from_env(|k| std::env::var(k).ok())?,
        _ => None,
    };
    if matches!(cmd, Command::Client | Command::Server | Command::MuServer) {
        crate::sys::raise_nofile();
    }
    match cmd {
        Command::Client => {
            let (args, vpn) = match &plugin {
                None => (parse_or_help!(ClientArgs, prog, rest), false),
                Some(env) => {
                    let addrs = [("b", env.local.as_str()), ("s", env.remote.as_str())];
                    let (args, host) = plugin_args::<ClientArgs>(prog, rest, env, &addrs)?;
                    crate::logging::init(args.verbose);
                    if let Some(read) = &host.read_as {
                        log::info!(
                            target: crate::logging::NOTICE,
                            "SS_PLUGIN_OPTIONS are v2ray-plugin's: read as {read}"
                        );
                    }
                    enter_plugin_mode();
                    (args, host.vpn)
                }
            };
            crate::logging::init(args.verbose);
            let mut cfg = ClientConfig::from_args(&args)?;
            if vpn {
                crate::sys::check_protect()?;
                // Relative, as Android hosts put it in the plugin's working directory.
                cfg.dial.protect = Some(crate::transport::protect::PROTECT_PATH.into());
            }
            let metrics = crate::config::metrics_addr(&args.metrics)?;
            let scheduling = match cfg.dial.mux {
                Some(_) => Scheduling::Sessions,
                None => Scheduling::Default,
            };
            let plugin = plugin.is_some();
            runtime_for(scheduling)?.block_on(crate::role::client::main(cfg, metrics, plugin))
        }
        Command::Server => {
            let args = match &plugin {
                None => parse_or_help!(ServerArgs, prog, rest),
                Some(env) => {
                    let addrs = [("b", env.remote.as_str()), ("d", env.local.as_str())];
                    let (args, host) = plugin_args::<ServerArgs>(prog, rest, env, &addrs)?;
                    crate::logging::init(args.verbose);
                    if let Some(read) = &host.read_as {
                        log::info!(
                            target: crate::logging::NOTICE,
                            "SS_PLUGIN_OPTIONS are v2ray-plugin's: read as {read}"
                        );
                    }
                    if host.vpn {
                        log::info!(
                            "-V is for clients on Android; the server has nothing to protect"
                        );
                    }
                    enter_plugin_mode();
                    args
                }
            };
            crate::logging::init(args.verbose);
            let cfg = ServerConfig::from_args(&args)?;
            let metrics = crate::config::metrics_addr(&args.metrics)?;
            runtime_for(Scheduling::Sessions)?.block_on(crate::role::server::main(cfg, metrics))
        }
        Command::MuServer => {
            let args = parse_or_help!(MuServerArgs, prog, rest);
            crate::logging::init(args.verbose);
            let cfg = crate::config::MuServerConfig::from_args(&args, |k| std::env::var(k).ok())?;
            runtime_for(Scheduling::Sessions)?.block_on(crate::role::mu_server::main(cfg))
        }
        Command::Cert => {
            let args = parse_or_help!(CertArgs, prog, rest);
            write_cert(&args)
        }
        Command::Bench => {
            let args = parse_or_help!(BenchArgs, prog, rest);
            crate::logging::init_quiet();
            let opts = crate::bench::Options::from_args(&args)?;
            runtime()?.block_on(crate::bench::run(opts, CancellationToken::new()))
        }
    }
}

/// What the async runtime of a process is tuned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduling {
    /// tokio's defaults.
    Default,
    /// A process that carries multiplexed sessions (a client with `-mux`, every server): a
    /// task woken by a session's task goes where any worker can take it (see [`runtime_for`]).
    Sessions,
}

/// The process's runtime. tokio runs the task a worker wakes next on that worker, in a slot
/// no other worker can take (its "LIFO slot"). A session's task runs long while a stream
/// saturates it, and the task it wakes with the answer to a sibling's small exchange waited
/// there for it to yield, although the other worker was idle: measured (`benches/latency.py`,
/// loopback, 2 cores) 0.8–1.3 ms per sibling round trip beside a saturating stream, 0.3–0.6
/// ms with the slot off, at the same throughput but not the same CPU: one multiplexed
/// stream (iperf3, 3 rounds) took 2.1–2.2 CPU seconds per GiB in client and server together,
/// against 1.6–1.9 with the slot on, as each task woken now waits in the run queue and often
/// wakes the other worker's thread to take it. Off in servers too: with it on in the server
/// only, the sibling's median stayed the same and CPU per GiB fell by 5–8 %, but the p99 rose
/// from 3.0 to 3.6–3.8 ms (5 rounds each). Kept on in a client without `-mux`: its UDP
/// associations are woken by its receiving loop, and cost 10–30 % more CPU per datagram
/// when moved between workers. The switch is tokio's, behind `--cfg tokio_unstable` (set in
/// .cargo/config.toml); a build without it keeps the slot.
fn runtime_for(scheduling: Scheduling) -> Result<tokio::runtime::Runtime> {
    builder(scheduling)
        .build()
        .map_err(|e| Error::io("start the async runtime", e))
}

fn builder(scheduling: Scheduling) -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all();
    #[cfg(tokio_unstable)]
    if scheduling == Scheduling::Sessions {
        b.disable_lifo_slot();
    }
    #[cfg(not(tokio_unstable))]
    let _ = scheduling;
    b
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    runtime_for(Scheduling::Default)
}

/// `mtt cert`: writes NAME.crt and NAME.key (mode 0600) and prints the pin.
fn write_cert(args: &CertArgs) -> Result<()> {
    let name = match args.n.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ => {
            return Err(Error::usage(
                "missing -n: the DNS name or IP address the certificate is for, e.g. -n example.com",
            ));
        }
    };
    let dir = Path::new(args.out.as_deref().unwrap_or("."));
    let (cert_path, key_path, fp) = cert::write_self_signed(name, dir)?;
    crate::say!("wrote {} and {}", cert_path.display(), key_path.display());
    crate::say!("SHA-256: {fp}");
    crate::say!(
        "server: mtt server -cert {} -key {} ...",
        cert_path.display(),
        key_path.display()
    );
    crate::say!("client: mtt client -n {name} -cert-sha256 {fp} ...");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn link_names_and_subcommands() {
        let run = |a: &[&str]| match dispatch(&v(a)).unwrap() {
            Dispatch::Run(c, p, r) => (c, p, r),
            other => panic!("{other:?}"),
        };
        assert_eq!(run(&["/usr/bin/mtt-client", "-b", "x"]).0, Command::Client);
        assert_eq!(run(&["mtt-server.exe"]).0, Command::Server);
        assert_eq!(run(&["./mtt-mu-server"]).0, Command::MuServer);
        let (c, p, r) = run(&["/opt/mtt", "client", "-sv"]);
        assert_eq!(
            (c, p.as_str(), r),
            (Command::Client, "mtt client", v(&["-sv"]))
        );
        assert_eq!(run(&["mtt", "bench"]).0, Command::Bench);
        assert_eq!(
            dispatch(&v(&["mtt", "--version"])).unwrap(),
            Dispatch::Version
        );
        assert_eq!(
            dispatch(&v(&["mtt-client", "-version"])).unwrap(),
            Dispatch::Version
        );
        assert_eq!(
            dispatch(&v(&["mtt"])).unwrap(),
            Dispatch::Help { asked: false }
        );
        assert_eq!(
            dispatch(&v(&["mtt", "-h"])).unwrap(),
            Dispatch::Help { asked: true }
        );
        assert!(dispatch(&v(&["mtt", "clinet"])).is_err());
    }

    /// In the runtime of a process that carries sessions, a task woken by a task that keeps
    /// its worker busy (as a session's task does while a stream saturates it) is taken by the
    /// other worker meanwhile; with tokio's LIFO slot it would wait until the busy task yields
    /// (here 2 s).
    #[test]
    fn a_session_carrier_runs_a_woken_task_beside_a_busy_one() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        let rt = builder(Scheduling::Sessions)
            .worker_threads(2)
            .build()
            .expect("runtime");
        let ran = Arc::new(AtomicBool::new(false));
        let took = rt.block_on(async {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let r = ran.clone();
            let waiter = tokio::spawn(async move {
                let _ = ready_tx.send(());
                let _ = go_rx.await;
                r.store(true, Ordering::SeqCst);
            });
            ready_rx.await.expect("the waiting task started");
            let r = ran.clone();
            let busy = tokio::spawn(async move {
                let start = Instant::now();
                let _ = go_tx.send(());
                // Busy without yielding, as long as the woken task has not run.
                while !r.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(2) {
                    std::hint::spin_loop();
                }
                start.elapsed()
            });
            let took = busy.await.expect("busy task");
            waiter.await.expect("waiting task");
            took
        });
        assert!(
            took < Duration::from_secs(2),
            "the woken task waited for the busy one to yield ({took:?})"
        );
    }
}
